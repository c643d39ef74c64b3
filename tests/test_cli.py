"""The command-line surface, pinned: every option spelling the stage commands had before they were generated from
their declarations still parses to the same config key and value, the canonical names and their aliases work,
every command's help renders, `llmforge defaults` works for every stage, and shell completion is offered.
"""

from __future__ import annotations

import importlib
import json

import pytest
import typer
import yaml
from helpers import llmforge
from typer.exceptions import TyperException
from typer.testing import CliRunner

from llmforge import registry
from llmforge.cli import app

# Positional arguments (and required options) that let each command's line parse; nothing runs.
POSITIONAL = {
    "crawl-filter": ["in.jsonl", "-o", "out"],
    "dedup": ["in.jsonl", "-o", "out"],
    "quality annotate": ["docs", "--model", "m", "-o", "out"],
    "quality train": ["docs", "--negative", "neg", "-o", "out"],
    "quality filter": ["docs", "--classifier", "cls", "-o", "out"],
    "tokenize train": ["docs", "-o", "out"],
    "tokenize encode": ["docs", "-o", "out"],
    "pretrain": ["tokens", "-o", "out"],
    "sft": ["model", "data.jsonl", "-o", "out"],
    "dpo": ["model", "data.jsonl", "-o", "out"],
    "reward": ["model", "data.jsonl", "-o", "out"],
    "grpo": ["model", "data.jsonl", "-o", "out"],
    "eval": ["model", "-o", "out"],
    "quantize": ["model", "--data", "tokens", "-o", "out"],
    "serve": ["model"],
    "import": ["model.gguf", "-o", "out"],
}
POSTTRAIN = [
    (["--lora"], "lora.enabled", True),
    (["--qlora"], "lora.qlora", True),
    (["--merge"], "lora.merge", True),
    (["--rank", "8"], "lora.rank", 8),
    (["--epochs", "1.5"], "epochs", 1.5),
    (["--max-steps", "10"], "max_steps", 10),
    (["--lr", "0.001"], "learning_rate", 0.001),
    (["--learning-rate", "0.002"], "learning_rate", 0.002),
    (["--batch-size", "16"], "batch_size", 16),
    (["--max-length", "256"], "max_length", 256),
    (["--zero", "2"], "zero", 2),
    (["--offload", "cpu"], "offload", "cpu"),
    (["--nproc", "2"], "nproc", 2),
    (["--hostfile", "hosts"], "hostfile", "hosts"),
    (["--chat-template", "chat.jinja"], "chat_template", "chat.jinja"),
]
OLD_SPELLINGS = {
    "crawl-filter": [
        (["--languages", "en,de"], "language.languages", ["en", "de"]),
        (["--languages", "all"], "language.languages", []),
        (["--min-confidence", "0.5"], "language.min_confidence", 0.5),
        (["--lid-model", "lid.bin"], "language.fasttext_model", "lid.bin"),
        (["--pii", "drop"], "pii.mode", "drop"),
        (["--text-field", "body"], "input.text_field", "body"),
        (["--input-format", "jsonl"], "input.format", "jsonl"),
        (["--task-mb", "64"], "input.task_mb", 64.0),
        (["--workers", "3"], "executor.workers", 3),
        (["--executor", "slurm"], "executor.kind", "slurm"),
    ],
    "dedup": [
        (["--shingle", "7"], "minhash.ngram", 7),
        (["--buckets", "4"], "minhash.buckets", 4),
        (["--hashes-per-bucket", "5"], "minhash.hashes_per_bucket", 5),
        (["--threshold", "0.7"], "minhash.threshold", 0.7),
        (["--decontamination-ngram", "8"], "decontamination.ngram", 8),
        (["--text-field", "body"], "input.text_field", "body"),
        (["--task-mb", "0"], "input.task_mb", 0.0),
        (["--workers", "2"], "executor.workers", 2),
        (["--executor", "ray"], "executor.kind", "ray"),
    ],
    "quality annotate": [
        (["--sample", "50"], "sample", 50),
        (["--seed", "3"], "seed", 3),
        (["--max-tokens", "0"], "max_tokens", 0),
        (["--max-document-tokens", "512"], "max_document_tokens", 512),
        (["--batch-size", "4"], "batch_size", 4),
        (["--text-field", "body"], "input.text_field", "body"),
        (["--input-format", "parquet"], "input.format", "parquet"),
    ],
    "quality train": [
        (["--holdout", "0.2"], "holdout", 0.2),
        (["--max-documents", "100"], "max_documents", 100),
        (["--positive-min", "4"], "positive_min", 4),
        (["--seed", "1"], "seed", 1),
        (["--text-field", "body"], "input.text_field", "body"),
        (["--input-format", "text"], "input.format", "text"),
    ],
    "quality filter": [
        (["--keep", "0.2"], "keep", 0.2),
        ([], "keep", 0.1),  # neither rule given: DCLM's top 10%
        (["--threshold", "0.7"], "threshold", 0.7),
        (["--threshold", "0.7"], "keep", None),
        (["--label", "good"], "label", "good"),
        (["--task-mb", "32"], "input.task_mb", 32.0),
        (["--text-field", "body"], "input.text_field", "body"),
        (["--input-format", "jsonl"], "input.format", "jsonl"),
        (["--workers", "2"], "executor.workers", 2),
        (["--executor", "ray"], "executor.kind", "ray"),
    ],
    "tokenize train": [
        (["--vocab-size", "512"], "vocab_size", 512),
        (["--algorithm", "unigram"], "algorithm", "unigram"),
        (["--sample-bytes", "1000"], "sample_bytes", 1000),
        (["--fim-tokens"], "fim_tokens", True),
    ],
    "tokenize encode": [
        (["--target-tokens", "1000"], "target_tokens", 1000),
        (["--val-fraction", "0.1"], "val_fraction", 0.1),
        (["--workers", "2"], "workers", 2),
        (["--encoder", "tokenizers"], "encoder", "tokenizers"),
        (["--special-tokens", "control"], "special_tokens", "control"),
        (["--fim-rate", "0.5"], "fim_rate", 0.5),
    ],
    "pretrain": [
        (["--preset", "tiny"], "model.preset", "tiny"),
        (["--arch", "qwen3"], "model.arch", "qwen3"),
        (["--init-from", "base"], "init_from", "base"),
        (["--seq-len", "128"], "seq_len", 128),
        (["--batch-tokens", "4096"], "batch_tokens", 4096),
        (["--micro-batch-size", "4"], "micro_batch_size", 4),
        (["--train-tokens", "10000"], "train_tokens", 10000),
        (["--lr", "0.001"], "optim.lr", 0.001),
        (["--schedule", "wsd"], "optim.schedule", "wsd"),
        (["--precision", "fp32"], "precision", "fp32"),
        (["--zero", "2"], "distributed.zero", 2),
        (["--offload", "cpu"], "distributed.offload", "cpu"),
        (["--deepspeed", "ds.json"], "distributed.deepspeed", "ds.json"),
        (["--nproc", "2"], "distributed.nproc", 2),
        (["--hostfile", "hosts"], "distributed.hostfile", "hosts"),
        (["--checkpoint-every", "10"], "checkpoint.every", 10),
        (["--activation-checkpointing"], "activation_checkpointing", True),
        (["--compile"], "compile", True),
        (["--no-compile"], "compile", False),
        (["--attention", "flex_attention"], "model.attention", "flex_attention"),
        (["--kernels", "liger"], "kernels", "liger"),
        (["--kernels", "none"], "kernels", "none"),
        (["--kernels", "swiglu,rms_norm"], "kernels", "rms_norm,swiglu"),
        (["--kernels", "rms_norm,swiglu,fused_linear_cross_entropy"], "kernels", "liger"),
    ],
    "sft": [*POSTTRAIN, (["--packing"], "packing", True)],
    "dpo": [
        *POSTTRAIN,
        (["--loss", "ipo"], "loss", "ipo"),
        (["--beta", "0.2"], "beta", 0.2),
        (["--sft-weight", "1"], "sft_weight", 1.0),
    ],
    "reward": [*POSTTRAIN, (["--center-rewards", "0.01"], "center_rewards", 0.01)],
    "grpo": [
        *POSTTRAIN,
        (["--reward", "math:1.0", "--reward", "format:0.5"], "rewards", ["math:1.0", "format:0.5"]),
        (["--num-generations", "4"], "num_generations", 4),
        (["--kl-beta", "0.1"], "kl_beta", 0.1),
        (["--clip-epsilon", "0.3"], "clip_epsilon", 0.3),
        (["--temperature", "0.7"], "temperature", 0.7),
        (["--max-completion-length", "64"], "max_completion_length", 64),
        (["--use-vllm"], "use_vllm", True),
    ],
    "eval": [
        (["--tasks", "arc_easy, hellaswag"], "tasks", ["arc_easy", "hellaswag"]),
        (["--include", "tasks/a,tasks/b"], "include", ["tasks/a", "tasks/b"]),
        (["--perplexity", "a.jsonl", "--perplexity", "b.jsonl"], "perplexity", ["a.jsonl", "b.jsonl"]),
        (["--limit", "0.5"], "limit", 0.5),
        (["--limit", "20"], "limit", 20),
        (["--num-fewshot", "3"], "num_fewshot", 3),
        (["--chat-template"], "apply_chat_template", True),
        (["--no-chat-template"], "apply_chat_template", False),
        (["--apply-chat-template"], "apply_chat_template", True),
        (["--no-apply-chat-template"], "apply_chat_template", False),
        (["--apply-chat-template", "--fewshot-as-multiturn"], "fewshot_as_multiturn", True),
        (["--apply-chat-template", "--no-fewshot-as-multiturn"], "fewshot_as_multiturn", False),
        (["--system-instruction", "Be brief."], "system_instruction", "Be brief."),
        (
            ["--gen-kwargs", "temperature=0.7,until=['\\n', ',']", "--gen-kwargs", "do_sample=True"],
            "gen_kwargs",
            {"temperature": 0.7, "until": ["\n", ","], "do_sample": True},
        ),
        (["--gen-kwargs", '{"max_gen_toks": 64}'], "gen_kwargs", {"max_gen_toks": 64}),
        (["--allow-code-execution"], "allow_code_execution", True),
        (["--backend", "hf"], "backend", "hf"),
        (["--batch-size", "auto"], "batch_size", "auto"),
        (["--batch-size", "4"], "batch_size", 4),
        (["--device", "cpu"], "device", "cpu"),
        (["--log-samples"], "log_samples", True),
    ],
    "quantize": [
        (["--method", "w8a8"], "method", "w8a8"),
        (["--algorithm", "rtn"], "algorithm", "rtn"),
        (["--calibration-samples", "16"], "calibration_samples", 16),
        (["--seq-len", "128"], "seq_len", 128),
        (["--eval-tokens", "1000"], "eval_tokens", 1000),
    ],
    "serve": [
        (["--host", "0.0.0.0"], "host", "0.0.0.0"),
        (["--port", "9000"], "port", 9000),
        (["--api-key", "secret"], "api_key", "secret"),
        (["--backend", "embedded"], "backend", "embedded"),
        (["--served-model-name", "mine"], "served_model_name", "mine"),
        (["--adapter", "a=ad1", "--adapter", "b=ad2"], "adapters", ["a=ad1", "b=ad2"]),
        (["--max-model-len", "512"], "max_model_len", 512),
        (["--max-batch-size", "4"], "max_batch_size", 4),
        (["--tensor-parallel-size", "2"], "tensor_parallel_size", 2),
        (["--kv-cache-gib", "2"], "kv_cache_gib", 2.0),
    ],
    "import": [
        (["--dtype", "bf16"], "dtype", "bf16"),
        (["--revision", "v1"], "revision", "v1"),
        (["--hub-id", "org/name"], "hub_id", "org/name"),
        (["--trust-remote-code"], "trust_remote_code", True),
    ],
}

# Options that set no config key, or every stage has: their spellings must stay.
COMMON = ["--output", "-o", "--config", "-c", "--set", "--force", "--update"]
OTHER_OPTIONS = {
    "crawl-filter": COMMON,
    "dedup": [*COMMON, "--decontaminate"],
    "quality annotate": [*COMMON, "--model"],
    "quality train": [*COMMON, "--negative"],
    "quality filter": [*COMMON, "--classifier"],
    "tokenize train": COMMON,
    "tokenize encode": [*COMMON, "--tokenizer", "--model"],
    "pretrain": [*COMMON, "--dry-run"],
    "sft": [*COMMON, "--dry-run"],
    "dpo": [*COMMON, "--dry-run"],
    "reward": [*COMMON, "--dry-run"],
    "grpo": [*COMMON, "--dry-run"],
    "eval": [*COMMON, "--compare"],
    "quantize": [*COMMON, "--data"],
    "serve": ["--config", "-c", "--set"],
    "import": COMMON,
}
# The canonical spellings: per-device batch --micro-batch-size, sequence length --seq-len (the old ones are aliases)
CANONICAL = {
    "sft": [(["--micro-batch-size", "16"], "batch_size", 16), (["--seq-len", "256"], "max_length", 256)],
    "dpo": [(["--micro-batch-size", "16"], "batch_size", 16), (["--seq-len", "256"], "max_length", 256)],
    "reward": [(["--micro-batch-size", "16"], "batch_size", 16), (["--seq-len", "256"], "max_length", 256)],
    "grpo": [(["--micro-batch-size", "16"], "batch_size", 16), (["--seq-len", "256"], "max_length", 256)],
    "serve": [(["--seq-len", "512"], "max_model_len", 512)],
}


def click_command(name: str):
    command = typer.main.get_command(app)
    for part in name.split():
        command = command.commands[part]
    return command


def stage_function(name: str):
    stage = registry.stage(name)
    return getattr(importlib.import_module(f"llmforge.stages.{stage.module}"), stage.function)


def parse(name: str, argv: list[str]):
    """The config the command `name` would run with for `argv` (parsed by click as on the command line)."""
    context = click_command(name).make_context(name, [*POSITIONAL[name], *argv])
    return stage_function(name).config_from(dict(context.params))


def value_at(config, key: str):
    value = config.model_dump()
    for part in key.split("."):
        value = value[part]
    return value


@pytest.fixture(autouse=True)
def no_api_key_in_the_environment(monkeypatch):
    monkeypatch.delenv("LLMFORGE_API_KEY", raising=False)


def test_the_pinned_commands_are_the_registered_stages():
    assert (
        sorted(OLD_SPELLINGS)
        == sorted(POSITIONAL)
        == sorted(OTHER_OPTIONS)
        == sorted(s.name for s in registry.STAGES)
    )


@pytest.mark.parametrize("name", sorted(OLD_SPELLINGS))
def test_every_old_spelling_sets_the_same_key_and_value(name):
    for argv, key, expected in [*OLD_SPELLINGS[name], *CANONICAL.get(name, [])]:
        value = value_at(parse(name, argv), key)
        assert value == expected and type(value) is type(expected), (name, argv, value)
    options = {o for param in click_command(name).params for o in (*param.opts, *param.secondary_opts)}
    spelled = {word for argv, _, _ in OLD_SPELLINGS[name] for word in argv if word.startswith("-")}
    assert spelled | set(OTHER_OPTIONS[name]) <= options, (spelled | set(OTHER_OPTIONS[name])) - options
    for option in OTHER_OPTIONS[name]:  # the options of no config key still parse
        argv = [] if option in ("--force", "--update", "--dry-run", "--compare") else [option, "x"]
        if option in ("--output", "-o", "--config", "-c", "--data"):
            continue  # given in POSITIONAL, or a file read when the command runs (below)
        click_command(name).make_context(name, [*POSITIONAL[name], *argv])


def test_chat_template_is_a_file_when_training_and_a_switch_in_eval():
    """sft/dpo/grpo --chat-template FILE: the template to train with; eval --chat-template: lm-eval's
    --apply-chat-template (render the task's prompts with the model's own template), taking no value."""
    for name in ("sft", "dpo", "reward", "grpo"):
        assert parse(name, ["--chat-template", "t.jinja"]).chat_template == "t.jinja"
        with pytest.raises(TyperException, match="'--chat-template' requires an argument"):
            parse(name, ["--chat-template"])
    [switch] = [p for p in click_command("eval").params if "--chat-template" in p.opts]
    assert switch.is_flag and switch.name == "apply_chat_template"
    assert parse("eval", ["--chat-template"]).apply_chat_template is True
    # eval takes several models: a file after its --chat-template is one more model argument, never a template
    context = click_command("eval").make_context("eval", ["model", "--chat-template", "t.jinja"])
    assert context.params["models"] == ["model", "t.jinja"]


def test_flags_given_override_the_yaml_file_and_set_overrides_flags(tmp_path):
    settings = tmp_path / "sft.yaml"
    settings.write_text("batch_size: 4\nmax_length: 128\nlora: {rank: 4}\n")
    config = parse("sft", ["-c", str(settings)])
    assert (config.batch_size, config.max_length, config.lora.rank, config.epochs) == (4, 128, 4, 2.0)
    config = parse("sft", ["--config", str(settings), "--batch-size", "2", "--set", "max_length=64"])
    assert (config.batch_size, config.max_length, config.lora.rank) == (2, 64, 4)
    # a repeatable flag not given keeps the file's list
    rewards = tmp_path / "grpo.yaml"
    rewards.write_text("rewards: ['exact:1.0']\n")
    assert parse("grpo", ["-c", str(rewards)]).rewards == ["exact:1.0"]
    assert parse("serve", []).api_key is None


def test_a_bad_value_is_named_by_its_config_key_whichever_spelling_gave_it():
    """Through the real command: typer parses, the generated command resolves the config, the stage never runs."""
    runner = CliRunner()
    post = ["m", "d.jsonl", "--output", "out"]
    for argv, named in (
        (["sft", *post, "--micro-batch-size", "0"], "config batch_size"),
        (["dpo", *post, "--batch-size", "0"], "config batch_size"),
        (["grpo", *post, "--seq-len", "4"], "config max_length"),
        (["grpo", *post, "--max-length", "4"], "config max_length"),
        (["serve", "m", "--seq-len", "0"], "config max_model_len"),
        (["serve", "m", "--max-model-len", "0"], "config max_model_len"),
        (["crawl-filter", "in.jsonl", "-o", "out", "--workers", "-1"], "config executor.workers"),
        (["tokenize", "encode", "docs", "-o", "out", "--val-fraction", "2"], "config val_fraction"),
        (["eval", "m", "-o", "out", "--fewshot-as-multiturn"], "config fewshot_as_multiturn"),
        (["eval", "m", "-o", "out", "--gen-kwargs", "temperature"], "config gen_kwargs"),
    ):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2 and named in result.stderr, (argv, result.output)


def test_the_api_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LLMFORGE_API_KEY", "from-env")
    assert parse("serve", []).api_key == "from-env"
    assert parse("serve", ["--api-key", "given"]).api_key == "given"


def test_estimate_micro_batch_size_and_its_alias():
    runner = CliRunner()
    results = [runner.invoke(app, ["estimate", "tiny", "--json", option, "4"]) for option in
               ("--micro-batch-size", "--micro-batch")]  # fmt: skip
    default = runner.invoke(app, ["estimate", "tiny", "--json"])
    assert all(r.exit_code == 0 for r in (*results, default)), [r.output for r in results]
    assert json.loads(results[0].stdout) == json.loads(results[1].stdout) != json.loads(default.stdout)


def test_every_command_help_renders():
    runner = CliRunner()
    names = [s.name for s in registry.STAGES] + [
        "tokenize",
        "show",
        "lineage",
        "card",
        "estimate",
        "defaults",
        "chat",
        "doctor",
    ]
    for name in names:
        result = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0 and "Usage: " in result.stdout, (name, result.output)
    sft = runner.invoke(app, ["sft", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--micro-batch-size,--batch-size" in sft and "--seq-len,--max-length" in sft
    assert "config key batch_size" in sft and "Reads: model, adapter, files, documents" in sft


def test_defaults_prints_a_valid_config_for_every_stage():
    runner = CliRunner()
    for name in [s.name for s in registry.STAGES] + ["tokenize"]:
        result = runner.invoke(app, ["defaults", name])
        assert result.exit_code == 0, (name, result.output)
        if name == "tokenize":
            assert result.stdout.count("# --- tokenize ") == 2
            continue
        # the printed YAML loads back into the stage's config unchanged
        model = stage_function(name).config_model
        assert model.model_validate(yaml.safe_load(result.stdout)) == model()
    unknown = runner.invoke(app, ["defaults", "nope"])
    assert unknown.exit_code == 2 and "unknown stage 'nope'" in unknown.stderr


def test_shell_completion_is_offered(tmp_path):
    assert "--install-completion" in llmforge("--help").stdout
    # typer detects the user's shell from the process tree, which a test runner need not have (it said "Shell not
    # supported" once under pytest -n 2); its own test switch takes the shell as given instead
    script = llmforge(
        "--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    ).stdout
    assert "complete" in script and "_LLMFORGE_COMPLETE" in script

    def complete(words: str) -> list[str]:
        env = {
            "_LLMFORGE_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
        }
        return llmforge(env=env).stdout.split()

    assert complete("llmforge cr") == ["crawl-filter"]
    assert complete("llmforge tokenize e") == ["encode"]
    assert "--micro-batch-size" in complete("llmforge sft --mi")


def test_registry_feeds_the_messages_and_the_checks():
    from llmforge.evaluation import contamination
    from llmforge.model import loading

    assert registry.made_by("tokens") == "`llmforge tokenize encode`"
    assert registry.made_by("adapter") == "`llmforge sft`, `llmforge dpo` or `llmforge grpo` with --lora"
    assert registry.POSTTRAIN_STAGES == ("sft", "dpo", "reward", "grpo") == contamination.POSTTRAIN_STAGES
    assert registry.FROM_A_MODEL == ("sft", "dpo", "reward", "grpo", "quantize")
    assert loading.MODEL_KINDS is registry.MODEL_KINDS
    for stage in registry.STAGES:  # every kind a stage reads is one some stage writes, or files / a hub id
        assert set(stage.reads) <= {*registry.KINDS, "raw", "hub"}, stage.name
        assert set(stage.writes) <= set(registry.KINDS), stage.name


def test_doctor_says_what_this_machine_runs_and_fails_on_a_broken_core(tmp_path):
    cache = tmp_path / "hf"
    (cache / "models--Org--Tiny").mkdir(parents=True)
    env = {"HF_HUB_CACHE": str(cache), "LLMFORGE_VLLM_PYTHON": str(tmp_path / "nowhere" / "python")}
    report = json.loads(llmforge("doctor", "--json", env=env).stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["broken"] == [] and checks["torch import"]["status"] == "ok"
    assert {"python", "cpu", "memory", "disk", "gpu", "flex attention", "llmcompressor", "slurm"} <= set(
        checks
    )
    assert checks["vllm"]["status"] == "missing" and "nowhere/python does not run" in checks["vllm"]["detail"]
    assert checks["models"]["detail"] == f"1 cached in {cache}: Org/Tiny"
    # a torch wheel that no longer imports: named, and the command fails
    shadow = tmp_path / "shadow" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('broken wheel')\n")
    broken = llmforge("doctor", env={"PYTHONPATH": str(shadow.parent)}, check=False)
    assert broken.returncode == 1
    assert broken.stderr.strip().endswith(
        "error: broken: torch import; reinstall with `make install` (see README)"
    )
