"""pretrain -> sft -> dpo -> grpo as a user runs them: subprocesses, files on disk, lineage intact, the adapter
path and the merged path both loadable by transformers."""

import pytest
from helpers import (
    chat_records,
    chat_texts,
    grpo_records,
    llmforge,
    one_node_hostfile,
    preference_records,
    sentences,
    tokens_artifact,
    train_tiny_tokenizer,
    write_jsonl,
)

from llmforge.artifacts import Artifact


@pytest.mark.slow
def test_pretrain_sft_dpo_grpo(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the data stages have their own e2e; here a tokenizer and token shards are made in process
    tokenizer_dir = train_tiny_tokenizer(tmp_path / "tok")
    tokens = tokens_artifact(tmp_path / "tokens", tokenizer_dir, sentences(600) + chat_texts(300))
    base = llmforge("pretrain", tokens, "-o", tmp_path / "base", "--preset", "tiny", "--seq-len", "64",
                    "--batch-tokens", "512", "--micro-batch-size", "8", "--train-tokens", "2048").stdout.strip()  # fmt: skip

    chats = write_jsonl(tmp_path / "chat.jsonl", chat_records(16))
    common = ["--max-length", "64", "--batch-size", "4", "--max-steps", "2"]
    sft = llmforge("sft", base, chats, "-o", tmp_path / "sft", "--lora", "--lr", "1e-3", *common)
    assert sft.stdout == f"{tmp_path / 'sft'}\n"  # stdout carries only the output path
    again = llmforge("sft", base, chats, "-o", tmp_path / "sft", "--lora", "--lr", "1e-3", *common)
    assert again.stdout == sft.stdout and "up to date" in again.stderr

    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_records(16))
    dpo = llmforge("dpo", tmp_path / "sft", pairs, "-o", tmp_path / "dpo", "--lora", "--lr", "5e-4", *common)
    assert "reward" in dpo.stderr and "accuracy_final" in dpo.stderr

    prompts = write_jsonl(tmp_path / "prompts.jsonl", grpo_records(8))
    grpo = llmforge("grpo", tmp_path / "dpo", prompts, "-o", tmp_path / "grpo", "--lora", "--merge",
                    "--reward", "math:1.0", "--reward", "format:0.2", "--num-generations", "4",
                    "--max-completion-length", "8", "--lr", "1e-4", *common)  # fmt: skip
    assert "rewards.math.mean_final" in grpo.stderr and "kl" in grpo.stderr

    # lineage: grpo <- dpo adapter <- sft adapter <- pretrained model <- tokens <- documents
    merged = Artifact.open(tmp_path / "grpo")
    kinds = [(a.stage, a.kind) for a in merged.ancestors()]
    for step in [
        ("dpo", "adapter"),
        ("sft", "adapter"),
        ("pretrain", "model"),
        ("tokenize", "tokens"),
    ]:
        assert step in kinds, kinds
    assert merged.kind == "model" and merged.verify() == []
    tokenizer_fingerprint = Artifact.open(base).extra["tokenizer_fingerprint"]
    for name in ("sft", "dpo", "grpo"):
        assert Artifact.open(tmp_path / name).extra["tokenizer_fingerprint"] == tokenizer_fingerprint
    assert (
        Artifact.open(tmp_path / "dpo").extra["base_model"]["fingerprint"] == Artifact.open(base).fingerprint
    )
    tree = llmforge("lineage", tmp_path / "grpo").stderr
    assert "missing" not in tree and "adapter" in tree and "tokens" in tree

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "grpo")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 1 + 2?"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)  # fmt: skip
    for path in (
        tmp_path / "dpo",
        tmp_path / "grpo",
    ):  # the adapter (applied on its base) and the merged model
        model = AutoModelForCausalLM.from_pretrained(path)
        assert (
            model.generate(**prompt, max_new_tokens=2, do_sample=False).shape[1]
            > prompt["input_ids"].shape[1]
        )
    assert hasattr(AutoModelForCausalLM.from_pretrained(tmp_path / "dpo"), "peft_config")
    assert not (tmp_path / "grpo" / "adapter_config.json").exists()


@pytest.mark.slow
def test_sft_on_the_nodes_of_a_hostfile(tmp_path, tiny_model):
    """Post-training takes pretrain's multi-node path: the deepspeed launcher from a hostfile (one node, two
    processes, plain DDP), the same worker entry point, the artifact written once by the user's process."""
    from transformers import AutoModelForCausalLM

    hosts, ssh = one_node_hostfile(tmp_path)
    chats = write_jsonl(tmp_path / "chat.jsonl", chat_records(16))
    command = ["sft", tiny_model, chats, "--lora", "--batch-size", "2", "--max-length", "64", "--max-steps", "2",
               "--set", f"hostfile={hosts}"]  # fmt: skip
    plan = llmforge(*command, "-o", tmp_path / "plan", "--dry-run")
    assert "4 = 2 per device x accumulation 1 x 2 processes" in plan.stderr
    assert f"2 processes from {hosts} under the deepspeed launcher" in plan.stderr
    sft = llmforge(*command, "-o", tmp_path / "sft", env=ssh)
    assert sft.stdout == f"{tmp_path / 'sft'}\n"
    assert f"deepspeed.launcher.runner --hostfile {hosts}" in sft.stderr and "dist_world_size=2" in sft.stderr
    artifact = Artifact.open(tmp_path / "sft")
    assert artifact.kind == "adapter" and artifact.stats["steps"] == 2 and artifact.verify() == []
    assert artifact.config["hostfile"] == str(hosts)
    assert hasattr(AutoModelForCausalLM.from_pretrained(tmp_path / "sft"), "peft_config")
