"""tokenize -> pretrain as a user runs them, with DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes (gloo): ZeRO-2
under torchrun (--nproc 2), ZeRO-3 under the deepspeed launcher from a hostfile (--hostfile, one node)."""

import pytest
from helpers import documents_artifact, llmforge, one_node_hostfile, sentences

from llmforge.artifacts import Artifact
from llmforge.files import read_jsonl
from llmforge.stages.pretrain import Config, run
from llmforge.train.data import PackedWindows

STEPS = 10
FLAGS = ["--preset", "tiny", "--seq-len", "32", "--batch-tokens", "256", "--micro-batch-size", "4",
         "--train-tokens", str(256 * STEPS), "--lr", "3e-3", "--set", "eval.every=5", "--set", "eval.batches=2",
         "--set", "logging.every=1", "--set", "checkpoint.every=5", "--set", "optim.warmup_steps=2"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def losses(out) -> list[float]:
    return [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]


@pytest.mark.slow
def test_tokenize_then_pretrain_with_zero_2_and_3_on_two_processes(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    docs = documents_artifact(tmp_path / "docs", [" ".join(sentences(5, seed=n)) for n in range(400)])
    llmforge("tokenize", "train", f"web={docs}", "-o", tmp_path / "tok", "--vocab-size", "512")
    llmforge("tokenize", "encode", f"web={docs}", "--tokenizer", tmp_path / "tok", "-o", tmp_path / "tokens",
             "--val-fraction", "0.1")  # fmt: skip
    tokens = tmp_path / "tokens"

    zero2 = llmforge("pretrain", tokens, "-o", tmp_path / "zero2", "--zero", "2", "--nproc", "2", *FLAGS)
    assert zero2.stdout == f"{tmp_path / 'zero2'}\n"  # stdout: the artifact path only, workers log to stderr
    assert "torch.distributed.run --nnodes 1 --nproc-per-node 2" in zero2.stderr
    assert "pretraining plan" in zero2.stderr and "accumulation 1 x 2 processes" in zero2.stderr
    hosts, ssh = one_node_hostfile(tmp_path)
    zero3 = llmforge(
        "pretrain", tokens, "-o", tmp_path / "zero3", "--zero", "3", "--hostfile", hosts, *FLAGS, env=ssh
    )
    assert zero3.stdout == f"{tmp_path / 'zero3'}\n"
    assert f"deepspeed.launcher.runner --hostfile {hosts}" in zero3.stderr
    assert "accumulation 1 x 2 processes" in zero3.stderr  # the hostfile's slots

    for out, stage in ((tmp_path / "zero2", 2), (tmp_path / "zero3", 3)):
        artifact = Artifact.open(out)
        assert artifact.stats["processes"] == 2 and artifact.stats["zero"] == stage
        assert artifact.stats["loss_final"] < artifact.stats["loss_first"] - 0.8
        assert artifact.extra["tokenizer_fingerprint"] == Artifact.open(tokens).extra["tokenizer_fingerprint"]
        assert [i["path"] for i in artifact.manifest["inputs"]] == [str(tokens.resolve())]
        model = AutoModelForCausalLM.from_pretrained(out)
        tokenizer = AutoTokenizer.from_pretrained(out)
        prompt = tokenizer("training runs on", return_tensors="pt")
        generated = model.generate(**prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        assert generated.shape[1] == prompt["input_ids"].shape[1] + 5
        # the saved weights are the trained ones (ZeRO-3: gathered from both processes): they reproduce the
        # validation loss measured in training, over the same 2 x 8 windows
        batch = PackedWindows(tokens, "val", 32).gather(range(16))
        model.config.use_cache = False
        with torch.no_grad():
            logits = model(
                torch.from_numpy(batch.input_ids), position_ids=torch.from_numpy(batch.position_ids)
            ).logits
        loss = torch.nn.functional.cross_entropy(
            logits.view(-1, logits.size(-1)), torch.from_numpy(batch.targets).view(-1)
        )
        assert loss.item() == pytest.approx(artifact.stats["val_loss_final"], abs=1e-4)
        # DeepSpeed's ZeRO shards stay behind as resume state only
        assert any(p.name.startswith(("zero_pp", "bf16_zero")) for p in (out / "checkpoints").rglob("*.pt"))
        assert not any(f["path"].startswith("checkpoints/") for f in artifact.manifest["files"])

    # Two processes with ZeRO-2 or ZeRO-3 train the same model as one process: same batches, same updates.
    settings = Config.model_validate({
        "model": {"preset": "tiny"}, "seq_len": 32, "batch_tokens": 256, "micro_batch_size": 4,
        "train_tokens": 256 * STEPS, "optim": {"lr": 3e-3, "warmup_steps": 2},
        "eval": {"every": 5, "batches": 2}, "logging": {"every": 1}, "checkpoint": {"every": 5},
    })  # fmt: skip
    single = run(tokens, tmp_path / "single", settings)
    assert losses(tmp_path / "zero2") == pytest.approx(losses(single), abs=2e-3)
    assert losses(tmp_path / "zero3") == pytest.approx(losses(single), abs=2e-3)

    # continued pretraining under several processes: ZeRO-3 on two processes starts from the init model's weights
    # (loaded, then sharded across both) and follows one process doing the same, step for step
    resumed = ["--seq-len", "32", "--batch-tokens", "256", "--micro-batch-size", "4", "--train-tokens", "768",
               "--lr", "1e-3", "--set", "eval.every=0", "--set", "logging.every=1", "--set", "checkpoint.every=0",
               "--init-from", single]  # fmt: skip
    llmforge("pretrain", tokens, "-o", tmp_path / "continued-1", *resumed)
    llmforge("pretrain", tokens, "-o", tmp_path / "continued-2", "--zero", "3", "--nproc", "2", *resumed)
    assert losses(tmp_path / "continued-2") == pytest.approx(losses(tmp_path / "continued-1"), abs=2e-3)
    assert (
        losses(tmp_path / "continued-2")[0] < losses(single)[0] - 0.8
    )  # the init model's loss, not a random one
    assert Artifact.open(tmp_path / "continued-2").stats["processes"] == 2

    # bad input through the CLI: one line, exit 2, nothing written
    bad = llmforge("pretrain", tokens, "-o", tmp_path / "bad", *FLAGS, "--batch-tokens", "300", check=False)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "batch_tokens 300 is not a multiple of seq_len x micro_batch_size x processes" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
