"""Score models with lm-eval, offline: benchmarks, the bundled tasks, perplexity; compare reports side by side.

`llmforge eval MODEL... -o OUT` evaluates model, adapter and quantized-model artifacts (or Hugging Face directories)
with lm-eval's Hugging Face backend (or vLLM: lm-eval's vllm model where vLLM is importable, else its
local-completions model against a vLLM server run from vLLM's own environment), and GGUFs (gguf artifacts, .gguf
files) with local-completions against `llmforge serve` on llama.cpp, and writes an eval-report
artifact: lm-eval's full results (scores with standard errors, n-shot, task versions, hashes and configs) in
OUT/results.json, the headline scores in the manifest, and a contamination check read from the model's lineage.
`llmforge eval --compare REPORT...` prints existing reports side by side without evaluating anything.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import typer
from pydantic import AliasChoices, Field, ValidationInfo, field_validator

from llmforge import machine
from llmforge.config import StageConfig, runtime_field
from llmforge.errors import InputError
from llmforge.evaluation.models import REPORT_KIND, check_vllm_models, open_lm, open_models, resolve_backend
from llmforge.evaluation.perplexity import perplexity_tasks
from llmforge.files import write_json
from llmforge.options import Flag, split_list, stage_command

STAGE = "eval"
KIND = REPORT_KIND
BUNDLED_TAG = "llmforge"  # the tag of the bundled tasks in llmforge/resources/tasks


class ContaminationSettings(StageConfig):
    enabled: bool = Field(
        True,
        description="Read the model's lineage: was each task in a dedup artifact's decontamination set, and do its "
        "items share n-grams with the training documents",
    )
    ngram: int = Field(
        13, ge=1, description="Words per n-gram of the overlap check (13, as dedup's decontamination)"
    )
    keep_numbers: bool = Field(
        False,
        description="Match numbers as written (as dedup's decontamination.keep_numbers) instead of as 0",
    )
    cache: bool = runtime_field(
        True,
        description="Keep the training data's n-grams in $LLMFORGE_CACHE/contamination (default "
        "~/.cache/llmforge/contamination), built once per training data and n-gram settings; false: rescan the "
        "training data at every eval",
    )
    workers: int = runtime_field(
        0, ge=0, description="Processes that build a missing n-gram index (0: every core)"
    )


class Config(StageConfig):
    tasks: list[str] = Field(
        default_factory=list,
        description="lm-eval task, group or tag names (globs too), task YAML files or task directories (as "
        "paths: ./dir/); empty = the bundled tasks (tag llmforge), or none when --perplexity is given",
    )
    include: list[str] = Field(
        default_factory=list,
        description="More directories of task YAMLs to look task names up in (lm-eval's include_path)",
    )
    perplexity: list[str] = Field(
        default_factory=list,
        description="Measure perplexity and bits per byte on: a tokens artifact (its val split), a documents "
        "artifact, or text files (.txt: one document per file; .jsonl: a 'text' per line)",
    )
    perplexity_documents: int = Field(
        1000, ge=1, description="Documents per perplexity source at most (the first ones)"
    )
    num_fewshot: int | None = Field(
        None,
        ge=0,
        description="Few-shot examples per prompt; none = each task's default (0 for bundled tasks)",
    )
    limit: int | float | None = Field(
        None,
        gt=0,
        description="Items per task: a count, or a fraction below 1 (quick checks only: not comparable scores)",
    )
    apply_chat_template: bool = Field(
        False,
        validation_alias=AliasChoices("apply_chat_template", "chat_template"),
        description="Render prompts in the tokenizer's chat template (lm-eval's apply_chat_template); off unless "
        "asked, as in lm-eval: ask for it for chat-tuned models",
    )
    fewshot_as_multiturn: bool | None = Field(
        None,
        description="With the chat template: few-shot examples as separate user/assistant turns; none = on exactly "
        "when the chat template is (lm-eval's CLI)",
    )
    system_instruction: str | None = Field(None, description="System message put before every prompt")
    gen_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Generation settings of the generating tasks, over each task's own (lm-eval's gen_kwargs: "
        "key=value pairs such as 'temperature=0.7,do_sample=True,max_gen_toks=64', repeatable, or a JSON object); "
        "empty = the tasks' own",
    )
    backend: Literal["auto", "hf", "vllm"] = Field(
        "auto",
        description="lm-eval backend: hf (transformers), vllm (GPU, or vLLM's CPU build; from .venv-vllm when not "
        "importable here), auto = vllm when importable here and a GPU is seen; a GGUF is scored on llama.cpp "
        "(`llmforge serve`) whatever this says",
    )
    dtype: str = Field("auto", description="Weights dtype while evaluating (auto = the checkpoint's)")
    max_length: int | None = Field(None, gt=0, description="Context length in tokens; none = the model's")
    bootstrap_iters: int = Field(
        1000,
        ge=0,
        description="Bootstrap resamples for the stderr of non-mean metrics such as perplexity (lm-eval's CLI: "
        "100000, minutes on a CPU; 0 = none)",
    )
    seed: int = Field(1234, description="Seed of lm-eval's python, numpy, torch and few-shot sampling")
    log_samples: bool = Field(
        False, description="Also keep every prompt, reply and score in OUT/samples/TASK.jsonl"
    )
    contamination: ContaminationSettings = Field(
        default_factory=ContaminationSettings, description="The lineage contamination check"
    )
    allow_code_execution: bool = runtime_field(
        False,
        description="Run tasks that execute the code the model writes (HumanEval, MBPP: lm-eval's unsafe_code, "
        "confirm_run_unsafe_code); only in a sandbox",
    )
    batch_size: int | Literal["auto"] = runtime_field(
        16, description="Requests per forward pass; 'auto' lets lm-eval find the largest that fits"
    )
    device: str | None = runtime_field(None, description="cpu, cuda, cuda:1, ...; none = cuda when available")

    @field_validator("gen_kwargs", mode="before")
    @classmethod
    def _parse_gen_kwargs(cls, value: Any) -> Any:
        return parse_gen_kwargs(value) if isinstance(value, str | list | tuple) else value

    @field_validator("fewshot_as_multiturn")
    @classmethod
    def _multiturn_needs_the_template(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value and not info.data.get("apply_chat_template"):
            raise ValueError("few-shot turns need the chat template (--apply-chat-template), as in lm-eval")
        return value

    @property
    def multiturn(self) -> bool:
        """Few-shot examples as turns: on with the chat template unless turned off (lm-eval's CLI rule)."""
        return self.apply_chat_template and self.fewshot_as_multiturn is not False


def parse_gen_kwargs(value: str | list[str] | tuple[str, ...]) -> dict[str, Any]:
    """lm-eval's gen_kwargs as its CLI reads them: a JSON object, or key=value pairs (comma-separated, or one per
    item of a list) whose values are Python literals where they parse ('temperature=0.7,until=["\\n"]')."""
    from lm_eval._cli.utils import key_val_to_dict, try_parse_json

    merged: dict[str, Any] = {}
    for item in [value] if isinstance(value, str) else value:
        parsed = try_parse_json(item)
        merged.update(parsed if isinstance(parsed, dict) else key_val_to_dict(item))
    return merged


class ContaminationCheck(TypedDict, total=False):
    in_decontamination_set: bool  # the task's items were among dedup's decontamination benchmarks
    items_overlapping: int  # items sharing an n-gram with the training documents


class Summary(TypedDict, total=False):
    backend: str
    chat_template: bool
    scores: dict[str, dict[str, float]]  # task -> {"metric,filter": value}
    contamination: dict[str, ContaminationCheck]  # by task, when the lineage was checked


class Stats(Summary, total=False):
    """What eval writes in its manifest's stats (read by `llmforge card`): one model's Summary, or for several
    models only `models`, by label."""

    models: dict[str, Summary]


# ---------------------------------------------------------------------------------------------------------------
# The stage


def run(models: list[str], out: str | Path, config: Config | None = None, force: bool = False) -> Path:
    """Evaluate models into an eval-report artifact; returns its path."""
    import tempfile

    from llmforge.artifacts import run_stage
    from llmforge.evaluation.tasks import select_tasks

    config = config or Config()
    if not os.environ.get("LLMFORGE_DEBUG"):  # lm-eval's info and warnings drown our log; errors still show
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    sources = open_models(models)
    backend = resolve_backend(config.backend)
    if backend == "vllm":
        check_vllm_models(sources)
    with tempfile.TemporaryDirectory(prefix="llmforge-eval-") as scratch:
        inline, perplexity_refs = perplexity_tasks(
            config.perplexity, config.perplexity_documents, Path(scratch)
        )
        default = [] if config.perplexity else [BUNDLED_TAG]
        taskset = select_tasks(config.tasks or default, config.include, inline)
        check_code_execution(taskset.unsafe_tasks(), config.allow_code_execution)
        loaded = taskset.load()  # every task is built (its data read) now, before any model is loaded
        tasks = taskset.leaf_tasks(loaded)
        check_code_execution([n for n, t in tasks.items() if getattr(t, "UNSAFE_CODE", False)],
                             config.allow_code_execution)  # fmt: skip
        inputs = []
        for label, source in zip(models, sources, strict=True):
            ref = source.ref()
            ref.detail.update(role="model", label=label)
            inputs.append(ref)
        inputs += task_inputs(taskset, tasks) + perplexity_refs
        body = _Evaluation(models, sources, backend, taskset, loaded, tasks, config)
        return run_stage(STAGE, KIND, config, inputs, out, body, force=force)


def check_code_execution(unsafe: list[str], allowed: bool) -> None:
    """Tasks that run model-written code (lm-eval's unsafe_code) only with --allow-code-execution."""
    if unsafe and not allowed:
        names = ", ".join(unsafe)
        raise InputError(f"task{'s' if len(unsafe) > 1 else ''} {names} execute{'' if len(unsafe) > 1 else 's'} the "
                         "code the model writes (lm-eval's unsafe_code); run in a sandbox and confirm with "
                         "--allow-code-execution")  # fmt: skip
    if unsafe:
        os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")  # what the `evaluate` library's code_eval asks for


def task_inputs(taskset, tasks: dict[str, Any]) -> list:
    """Local task files as raw inputs (one per directory), so editing a task's data makes a new report."""
    from llmforge.artifacts import raw_input

    by_directory: dict[Path, list[str]] = {}
    for name in tasks:
        for path in taskset.task_files(name):
            by_directory.setdefault(path.parent, []).append(str(path))
    refs = []
    for directory, files in sorted(by_directory.items()):
        ref = raw_input(directory, sorted(set(files)))
        ref.detail["role"] = "tasks"
        refs.append(ref)
    return refs


class _Evaluation:
    """The body run under run_stage: each model in turn, results kept per model so a re-run resumes."""

    def __init__(self, labels, sources, backend, taskset, loaded, tasks, config: Config):
        self.labels, self.sources, self.backend = labels, sources, backend
        self.taskset, self.loaded, self.tasks, self.config = taskset, loaded, tasks, config
        # the contamination check covers benchmarks, not our perplexity sources (held-out text)
        inline = {entry["task"] for entry in taskset.entries if isinstance(entry, dict)}
        self.benchmarks = {name: task for name, task in tasks.items() if name not in inline}

    def __call__(self, ctx) -> None:
        import shutil

        from llmforge.console import console, log
        from llmforge.evaluation.report import ModelResults, comparison_table, results_table

        done = ctx.work / "checkpoints"
        done.mkdir(exist_ok=True)
        evaluated = []
        for number, (label, source) in enumerate(zip(self.labels, self.sources, strict=True)):
            saved = done / f"model-{number}.json"
            if saved.is_file():
                log(f"[cyan]resuming:[/] {label} was evaluated before the interruption")
                results = json.loads(saved.read_text())
            else:
                results = self.evaluate(ctx, number, label, source)
                write_json(saved, results, ensure_ascii=False)
            evaluated.append(ModelResults(label=label, results=results))
            console.print(results_table(evaluated[-1]))
        if len(evaluated) > 1:
            console.print(comparison_table(evaluated, title="eval: side by side (Δ against the first model)"))
        for model in evaluated:
            show_contamination(model)

        payload = evaluated[0].results if len(evaluated) == 1 else {"models": [m.results for m in evaluated]}
        write_json(ctx.work / "results.json", payload, ensure_ascii=False)
        shutil.rmtree(done)
        if len(evaluated) == 1:
            ctx.stats.update(self.summary(evaluated[0].results))
        else:
            ctx.stats["models"] = {m.label: self.summary(m.results) for m in evaluated}

    def evaluate(self, ctx, number: int, label: str, source) -> dict[str, Any]:
        import gc
        from dataclasses import asdict

        from lm_eval import simple_evaluate
        from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker
        from lm_eval.utils import handle_non_serializable, hash_string

        from llmforge.console import log

        config = self.config
        contamination = None
        if config.contamination.enabled:
            from llmforge.evaluation.contamination import check

            files = {name: self.taskset.task_files(name) for name in self.benchmarks}
            contamination = check(
                source,
                self.benchmarks,
                files,
                config.contamination.ngram,
                keep_numbers=config.contamination.keep_numbers,
                cache=config.contamination.cache,
                workers=config.contamination.workers,
            )
        backend = "llama.cpp" if source.kind == "gguf" else self.backend
        log(f"evaluating {label} with lm-eval ({backend} backend) on {', '.join(self.tasks)}")
        use_template, multiturn = config.apply_chat_template, config.multiturn
        with open_lm(source, backend, config) as (lm, arguments):
            template = lm.chat_template(True) if use_template else None
            if use_template and not template:
                raise InputError(
                    f"{source.path}: --apply-chat-template asked for, but its tokenizer has no chat template"
                )
            show_prompt_format(label, source, config)
            tracker = GeneralConfigTracker()
            top = self.loaded if number == 0 else self.taskset.load()
            results = simple_evaluate(
                model=lm,
                tasks=top,
                task_manager=self.taskset.local,
                num_fewshot=config.num_fewshot,
                limit=config.limit,
                bootstrap_iters=config.bootstrap_iters,
                log_samples=True,  # lm-eval's task hashes are computed from the samples
                system_instruction=config.system_instruction,
                apply_chat_template=use_template,
                fewshot_as_multiturn=multiturn,
                gen_kwargs=config.gen_kwargs or None,
                confirm_run_unsafe_code=config.allow_code_execution,
                random_seed=config.seed,
                numpy_random_seed=config.seed,
                torch_random_seed=config.seed,
                fewshot_random_seed=config.seed,
            )
        # What lm-eval's own CLI adds when it saves results (EvaluationTracker.save_results_aggregated).
        samples = results.pop("samples", {})
        results["task_hashes"] = {
            task: hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in rows))
            for task, rows in samples.items()
        }
        tracker.log_experiment_args(model_source=backend, model_args=arguments,
                                    system_instruction=config.system_instruction,
                                    chat_template=template,
                                    fewshot_as_multiturn=multiturn)  # fmt: skip
        tracker.log_end_time()
        results.update(asdict(tracker))
        results["config"].update(model=backend, model_args=arguments)
        results["llmforge"] = {"model": label, "path": str(source.path), "kind": source.kind,
                               "fingerprint": source.fingerprint, "backend": backend,
                               "chat_template": use_template, "contamination": contamination}  # fmt: skip
        if config.log_samples:
            folder = ctx.work / "samples" / str(number) if len(self.labels) > 1 else ctx.work / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            for task, rows in samples.items():
                text = "".join(
                    json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n" for r in rows
                )
                (folder / f"{task}.jsonl").write_text(text)
        del lm
        gc.collect()
        machine.empty_cache()
        return json.loads(json.dumps(results, default=handle_non_serializable))

    def summary(self, results: dict[str, Any]) -> dict[str, Any]:
        from llmforge.evaluation.report import headline

        meta = results["llmforge"]
        summary: dict[str, Any] = {"backend": meta["backend"], "chat_template": meta["chat_template"],
                                   "scores": headline(results)}  # fmt: skip
        contamination = meta.get("contamination") or {}
        for task, found in contamination.get("tasks", {}).items():
            checks = {}
            if contamination["dedup"]:
                checks["in_decontamination_set"] = found["in_decontamination_set"]
            if contamination["training_documents"]:
                checks["items_overlapping"] = found["items_overlapping"]
            if checks:
                summary.setdefault("contamination", {})[task] = checks
        return summary


def chat_tuned_by(source) -> list[str]:
    """The post-training stages (sft, dpo, grpo) in a model's lineage, or ["its name"] when an outside model's name
    says instruct or chat (lm-eval's own hint)."""
    from llmforge.evaluation.contamination import lineage
    from llmforge.registry import POSTTRAIN_STAGES

    chain = list(lineage(source))
    stages = [a.stage for a in chain if a.stage in POSTTRAIN_STAGES]
    if stages:
        return list(dict.fromkeys(stages))
    names = [Path(str((source.base or source).path)).name]
    # an imported model: the name of the checkpoint it came from
    for imported in (a for a in chain if a.stage == "import"):
        origin = imported.extra.get("source", {})
        names += [origin.get("hub_id") or "", Path(str(origin.get("path", ""))).name,
                  str((origin.get("metadata") or {}).get("general.name", ""))]  # fmt: skip
    text = " ".join(names).lower()
    return ["its name"] if any(word in text for word in ("instruct", "chat")) else []


def show_prompt_format(label: str, source, config: Config) -> None:
    """Say how a model's prompts are written; warn when a chat-tuned model is scored without its chat template
    (lm-eval's default, which llmforge keeps)."""
    from rich.markup import escape

    from llmforge.console import log, warn

    if config.apply_chat_template:
        turns = "few-shot examples as turns" if config.multiturn else "few-shot examples in one turn"
        log(f"{escape(label)}: prompts in its chat template ({turns})")
        return
    tuned = chat_tuned_by(source)
    if not tuned:
        log(f"{escape(label)}: plain prompts, no chat template (lm-eval's default)")
        return
    why = "its name says so" if tuned == ["its name"] else f"{', '.join(tuned)} in its lineage"
    warn(f"{label} is chat-tuned ({why}) but is scored on plain prompts (lm-eval's default): add "
         "--apply-chat-template to score it in chat turns")  # fmt: skip


def show_contamination(model) -> None:
    from llmforge.console import log, warn
    from llmforge.evaluation.report import contamination_lines

    for line in contamination_lines(model):
        if "contamination:" in line:
            warn(line)
        else:
            log(line)


# ---------------------------------------------------------------------------------------------------------------
# Comparing reports


def compare(reports: list[str]) -> list:
    """Print eval reports side by side (deltas against the first model); returns the models compared."""
    from llmforge.console import console, warn
    from llmforge.evaluation.report import comparability_warnings, comparison_table, model_results

    if not reports:
        raise InputError("--compare needs eval-report artifacts (made by `llmforge eval`)")
    models = [model for report in reports for model in model_results(report)]
    console.print(comparison_table(models, title="eval: side by side (Δ against the first model)"))
    for line in comparability_warnings(models):
        warn(line)
    for model in models:
        show_contamination(model)
    return models


FLAGS = (
    Flag("tasks", convert=split_list),
    Flag("include", convert=split_list),
    Flag("perplexity"),
    # a whole number is a count of items, a fraction a share of each task (lm-eval's rule)
    Flag("limit", type=float, convert=lambda limit: int(limit) if limit >= 1 else limit),
    Flag("num_fewshot"),
    Flag(
        "apply_chat_template",
        "--apply-chat-template/--no-apply-chat-template",
        "--chat-template/--no-chat-template",
    ),
    Flag("fewshot_as_multiturn", "--fewshot-as-multiturn/--no-fewshot-as-multiturn"),
    Flag("system_instruction"),
    Flag("gen_kwargs", type=list[str]),  # repeatable; the config parses each as lm-eval does
    Flag("allow_code_execution", "--allow-code-execution"),
    Flag("backend"),
    Flag("batch_size"),
    Flag("device"),
    Flag("log_samples", "--log-samples"),
)


@stage_command(FLAGS)
def command(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="Model, adapter, quantized-model or gguf artifacts, Hugging Face directories, .gguf files or Hub ids "
            "(org/name:TAG for a GGUF) (with --compare: eval reports).",
            show_default=False,
        ),
    ] = None,
    output: Path | None = None,
    compare_reports: Annotated[
        bool,
        typer.Option("--compare", help="Print existing eval reports side by side instead of evaluating."),
    ] = False,
    *,
    config: Config,
    force: bool = False,
) -> None:
    if compare_reports:
        compare(models or [])
        return
    if output is None:
        raise InputError("eval needs an output directory: -o OUT (or --compare to compare existing reports)")
    run(models or [], output, config, force=force)
