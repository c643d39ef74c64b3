"""QLoRA on CPU: the base held in 4-bit NF4 by bitsandbytes, a LoRA adapter trained on it through the same TRL job,
the adapter reloaded by peft on the float base, --merge into the float base reloaded un-quantized, and a plan that
says the base's precision and sizes it as bitsandbytes holds it."""

import json
import math

import pytest
from helpers import chat_records, stats_mismatches, write_jsonl

from llmforge.artifacts import Artifact
from llmforge.stages import sft
from llmforge.train.posttrain import LoraSettings

pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.usefixtures("one_thread")

IDS = [[1, 7, 12, 30, 5, 9]]


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("qlora-data") / "chat.jsonl", chat_records(16))


def small(**lora) -> sft.Config:
    return sft.Config(batch_size=4, max_length=96, max_steps=4, learning_rate=1e-3, save_steps=100,
                      lora=LoraSettings(qlora=True, **lora))  # fmt: skip


def test_qlora_trains_on_a_4bit_base_and_the_adapter_reloads_and_merges_on_the_float_base(
    tmp_path, tiny_model, chat_data, capfd
):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = sft.run(tiny_model, chat_data, tmp_path / "adapter", small())
    artifact = Artifact.open(adapter)
    stats = artifact.stats
    assert artifact.kind == "adapter" and artifact.config["lora"]["qlora"] is True
    assert math.isfinite(stats["loss_first"]) and stats["loss_final"] < stats["loss_first"]
    # the 4-bit weights count by their values (two to a byte in storage), so the total is the float model's
    assert (
        stats["total_parameters"]
        == Artifact.open(tiny_model).stats["parameters"] + stats["trainable_parameters"]
    )
    assert artifact.verify() == [] and stats_mismatches(adapter) == []
    assert "held in 4-bit NF4 with double quantization" in capfd.readouterr().err

    ids = torch.tensor(IDS)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        plain = base(ids).logits
        on_base = PeftModel.from_pretrained(base, adapter)(ids).logits  # peft: the adapter on the float base
    assert on_base.isfinite().all() and not torch.allclose(on_base, plain, atol=1e-4)

    merged = sft.run(tiny_model, chat_data, tmp_path / "merged", small(merge=True))
    assert "merging the adapter into the base reloaded un-quantized" in capfd.readouterr().err
    assert Artifact.open(merged).kind == "model" and not (merged / "adapter_config.json").exists()
    assert "quantization_config" not in json.loads(
        (merged / "config.json").read_text()
    )  # a plain float model
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert model.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, on_base, rtol=1e-4, atol=1e-4)  # same run, folded in
    tokenizer = AutoTokenizer.from_pretrained(merged)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)  # fmt: skip
    generated = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert prompt["input_ids"].shape[1] < generated.shape[1] <= prompt["input_ids"].shape[1] + 3


def test_the_plan_says_4bit_and_sizes_the_base_as_bitsandbytes_holds_it(tmp_path, tiny_model, chat_data):
    from typer.testing import CliRunner

    from llmforge.cli import app
    from llmforge.model.loading import resolve_model
    from llmforge.train.posttrain_plan import training_memory, weight_header
    from llmforge.train.trl_job import load_policy

    result = CliRunner().invoke(app, ["sft", str(tiny_model), str(chat_data), "-o", str(tmp_path / "out"),
                                      "--qlora", "--merge", "--dry-run"])  # fmt: skip
    assert result.exit_code == 0 and result.stdout == "", result.output
    printed = " ".join(result.stderr.split())
    for expected in ("QLoRA rank 16", "4-bit NF4 with double quantization (bitsandbytes), compute dtype float32",
                     "the adapter merged into the base reloaded un-quantized, float32", "frozen base"):  # fmt: skip
        assert expected in printed, expected
    assert not (tmp_path / "out").exists()

    header = weight_header(tiny_model)
    qlora, lora = (training_memory(config, header, 0, tiny_model)["frozen"]
                   for config in (small(), sft.Config(lora=LoraSettings(enabled=True))))  # fmt: skip
    model, _ = load_policy(resolve_model(tiny_model, "sft"), small())  # the base as training holds it
    assert abs(qlora / model.get_memory_footprint() - 1) < 0.1
    assert qlora < 0.3 * lora


def test_the_plan_sizes_a_mixture_of_experts_4bit_base_as_bitsandbytes_holds_it(tmp_path, tiny_tokenizer_dir):
    """bitsandbytes quantizes linear layers; transformers 5 holds a mixture of experts' experts as fused 3-D
    tensors, which it leaves in their dtype: the plan counts them so, not as the matrices the checkpoint stores."""
    import torch

    from llmforge.data.tokenizer import load_tokenizer
    from llmforge.model.llama import build_config, build_model, special_ids_of
    from llmforge.model.loading import resolve_model, save_model_payload
    from llmforge.train.posttrain_plan import training_memory, weight_header
    from llmforge.train.trl_job import load_policy

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    base = tmp_path / "moe"
    save_model_payload(build_model(build_config("tiny", len(tokenizer), special_ids_of(tokenizer), arch="qwen3",
                                                num_experts=4)), tokenizer, base)  # fmt: skip
    model, _ = load_policy(resolve_model(base, "sft"), small())
    experts = model.model.layers[0].mlp.experts
    assert all(parameter.dtype == torch.float32 for parameter in experts.parameters())  # not 4-bit
    planned = training_memory(small(), weight_header(base), 0, base)["frozen"]
    assert abs(planned / model.get_memory_footprint() - 1) < 0.1
