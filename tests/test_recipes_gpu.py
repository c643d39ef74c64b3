"""recipes/gpu: every config loads through its stage's own config model, and the plans print with --dry-run on
this CPU machine, with tiny stand-ins for the corpus and the base model (only what a stand-in cannot match is
overridden). The GPU runs themselves are in bench/RESULTS.md."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest
from helpers import chat_records, grpo_records, sentences, tokens_artifact, write_jsonl

from llmforge.config import load_config
from llmforge.stages import crawl_filter, dedup, grpo, pretrain, sft, tokenize
from llmforge.train.pretrain_plan import accumulation_steps

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "gpu"
CONFIGS = {
    "crawl-filter.yaml": crawl_filter.Config,
    "dedup.yaml": dedup.Config,
    "tokenizer.yaml": tokenize.TrainConfig,
    "encode.yaml": tokenize.EncodeConfig,
    "pretrain-125m.yaml": pretrain.Config,
    "sft-lora.yaml": sft.Config,
    "grpo-lora.yaml": grpo.Config,
}


def recipe(name: str):
    return load_config(CONFIGS[name], RECIPES / name)


def test_every_recipe_config_loads_and_says_what_the_readme_says():
    assert sorted(p.name for p in RECIPES.glob("*.yaml")) == sorted(CONFIGS)
    for name in CONFIGS:
        recipe(name)  # unknown or mistyped keys are errors
    assert recipe("crawl-filter.yaml").input.format == "parquet"
    tokenizer, run = recipe("tokenizer.yaml"), recipe("pretrain-125m.yaml")
    assert run.model.vocab_size == tokenizer.vocab_size <= 65536  # uint16 shards
    assert (run.model.preset, run.seq_len, run.precision, run.compile) == ("125m", 2048, "bf16", True)
    assert (run.distributed.zero, run.distributed.nproc) == (2, 8)
    # the batch in tokens divides over 8 GPUs: 2048 x 16 x 8 x accumulation 2
    assert accumulation_steps(run, 8) == 2
    assert recipe("encode.yaml").target_tokens >= run.train_tokens
    for name in ("sft-lora.yaml", "grpo-lora.yaml"):
        post = recipe(name)
        assert post.lora.enabled and (post.zero, post.nproc) == (2, 8)
    rl = recipe("grpo-lora.yaml")
    assert not rl.use_vllm  # the Makefile turns it on where vLLM and a GPU are there
    assert (rl.batch_size * rl.gradient_accumulation * rl.nproc) % rl.num_generations == 0


def test_makefile_chains_the_stages_with_these_configs(tmp_path):
    """`make -n` lists the commands a run would execute, in order, each with its recipe config."""
    data = [write_jsonl(tmp_path / name, []) for name in ("sft.jsonl", "grpo.jsonl")]
    result = subprocess.run(["make", "-n", "-C", str(RECIPES), "all", "FINEWEB=/data/fw", "BASE=/models/base",
                             f"WORK={tmp_path}/work", f"SFT_DATA={data[0]}", f"GRPO_DATA={data[1]}",
                             "USE_VLLM=false", "WORKERS=4"], capture_output=True, text=True, check=True)  # fmt: skip
    commands = re.sub(r"\\\n\s*", " ", result.stdout)  # continued lines joined
    lines = [line for line in commands.splitlines() if line.startswith("llmforge")]
    stages = [line.split()[1] for line in lines]
    assert stages == ["crawl-filter", "dedup", "tokenize", "tokenize", "pretrain", "sft", "grpo"]
    for line, config in zip(lines, ["crawl-filter", "dedup", "tokenizer", "encode", "pretrain-125m",
                                    "sft-lora", "grpo-lora"], strict=True):  # fmt: skip
        assert f"--config {RECIPES}/{config}.yaml" in line
    assert "--nproc 8" in lines[4] and "use_vllm=false" in lines[6]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, tiny_tokenizer_dir, tiny_model):
    root = tmp_path_factory.mktemp("gpu-recipe")
    return {
        "tokens": tokens_artifact(root / "tokens", tiny_tokenizer_dir, sentences(2000)),
        "model": tiny_model,
        "sft": write_jsonl(root / "sft.jsonl", chat_records(32)),
        "grpo": write_jsonl(root / "grpo.jsonl", grpo_records(32)),
    }


def test_plans_print_with_dry_run(tmp_path, stand_ins):
    """The commands the Makefile runs, with --dry-run: inputs checked, plan printed, nothing trained or written
    (in process: the same typer app, without a fresh interpreter each time)."""
    from typer.testing import CliRunner

    from llmforge.cli import app

    def plan(*args) -> str:
        result = CliRunner().invoke(app, [*map(str, args), "--dry-run"])
        assert result.exit_code == 0 and result.stdout == "", result.output
        return result.stderr

    # the stand-in tokenizer has 512 tokens, not the 32,768 the recipe pins
    printed = plan("pretrain", stand_ins["tokens"], "-o", tmp_path / "base", "--config", RECIPES / "pretrain-125m.yaml",
                   "--set", "model.vocab_size=null")  # fmt: skip
    for expected in ("pretraining plan", "llama 125m", "ZeRO-2", "bf16", "accumulation 2 x 8 processes",
                     "524,288 tokens", "5,000", "peak lr 0.0006", "warmup 200"):  # fmt: skip
        assert expected in printed, expected
    printed = plan("sft", stand_ins["model"], stand_ins["sft"], "-o", tmp_path / "sft", "--config",
                   RECIPES / "sft-lora.yaml")  # fmt: skip
    for expected in ("sft plan", "LoRA rank 16, alpha 32", "an adapter artifact", "32 messages records",
                     "128 = 8 per device x accumulation 2 x 8 processes", "DeepSpeed ZeRO-2",
                     "8 processes under torchrun"):  # fmt: skip
        assert expected in printed, expected
    printed = plan("grpo", stand_ins["model"], stand_ins["grpo"], "-o", tmp_path / "grpo", "--config",
                   RECIPES / "grpo-lora.yaml")  # fmt: skip
    for expected in ("grpo plan", "500 (max_steps)", "math:1.0, format:0.2", "groups of 8, up to 512 tokens",
                     "transformers generate", "DeepSpeed ZeRO-2"):  # fmt: skip
        assert expected in printed, expected
    assert not list(tmp_path.iterdir())  # a plan writes nothing


def test_plan_counts_the_lora_parameters_peft_adds(tiny_model, tiny_tokenizer_dir, tmp_path):
    """The plan's trainable count is what the run trains: on a dense model, on a mixture of experts (whose fused
    expert tensors peft adapts its own way) and for a reward model's new head."""
    from peft import LoraConfig, get_peft_model

    from llmforge.data.tokenizer import load_tokenizer
    from llmforge.model.llama import build_config, build_model, special_ids_of
    from llmforge.model.loading import load_model, resolve_model, save_model_payload
    from llmforge.stages import sft
    from llmforge.train.posttrain import LoraSettings
    from llmforge.train.posttrain_plan import lora_parameters, weight_shapes

    shapes = weight_shapes(tiny_model)
    model = load_model(resolve_model(tiny_model, "sft"))
    assert sum(math.prod(s) for s in shapes.values()) == sum(p.numel() for p in model.parameters())
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    moe = tmp_path / "moe"
    save_model_payload(build_model(build_config("tiny", len(tokenizer), special_ids_of(tokenizer), arch="qwen3",
                                                num_experts=4)), tokenizer, moe)  # fmt: skip
    counted = {}
    for base, targets in (
        (tiny_model, "all-linear"),
        (tiny_model, ["q_proj", "v_proj"]),
        (moe, "all-linear"),
    ):
        peft = get_peft_model(load_model(resolve_model(base, "sft")),
                              LoraConfig(r=8, target_modules=targets, task_type="CAUSAL_LM"))  # fmt: skip
        trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
        config = sft.Config(lora=LoraSettings(enabled=True, rank=8, target_modules=targets, dropout=0.0))
        counted[base.name, str(targets)] = lora_parameters(resolve_model(base, "sft"), config)
        assert counted[base.name, str(targets)] == trainable
    # a reward model trains its new head (hidden x 1) whole beside the same adapter
    config = sft.Config(lora=LoraSettings(enabled=True, rank=8))
    assert lora_parameters(resolve_model(tiny_model, "sft"), config, score_head=True) == (
        counted[tiny_model.name, "all-linear"] + 128
    )
