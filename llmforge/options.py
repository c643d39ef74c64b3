"""How a stage's typer command is built from its declaration, and the error handling every command shares.

A stage module declares each flag once, as a `Flag` naming the config key it sets, and writes a short command
function with its positional arguments (and any option of its own, typer-annotated as usual) plus whichever of
`output`, `config`, `force` and `dry_run` it needs:

    FLAGS = (Flag("minhash.threshold"), Flag("minhash.ngram", "--shingle"), Flag("executor.workers"))

    @stage_command(FLAGS)
    def command(inputs: Annotated[list[str], typer.Argument(help="...")], output: Path, config: Config,
                force: bool = False) -> None:
        run(inputs, output, config, force=force)

`stage_command` hands typer a function whose signature holds those parameters, with `output` as -o/--output,
`config` as --config/-c and --set, `force` as --force (and --update beside it) and `dry_run` as --dry-run, then one option per flag whose
help is the config field's description, default and key. When it runs, the flags given (None: not given) and --set
override the YAML file, and the function receives the resolved config.
"""

from __future__ import annotations

import functools
import inspect
import os
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel

from llmforge.artifacts import UPDATE
from llmforge.config import StageConfig, field_info, load_config
from llmforge.console import error
from llmforge.errors import InputError, LLMForgeError

ConfigFile = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file of settings (see `llmforge defaults STAGE`).")
]
# Beside --force wherever it is offered: what a Makefile wants after a config changed (see artifacts.run_stage).
Update = Annotated[
    bool,
    typer.Option(
        "--update",
        help="Replace a different or unreadable artifact, discard partial work of other settings, resume partial "
        "work of these settings (for Makefiles).",
    ),
]
Sets = Annotated[
    list[str] | None, typer.Option("--set", help="Override one setting: key=value (dotted keys; repeatable).")
]
# The options of the parameters a command function may ask for by name (a typer annotation of its own wins).
COMMON_OPTIONS = {
    "output": typer.Option("--output", "-o", help="Output artifact directory."),
    "force": typer.Option(
        "--force",
        help="Replace a different or unreadable artifact and discard any partial work (start over).",
    ),
    "dry_run": typer.Option(
        "--dry-run", help="Check the inputs and settings and print the plan; train nothing."
    ),
}


class Flag:
    """A command-line option that sets one config key.

    `names`: the option's spellings, the canonical one first (default: --LAST-PART-OF-KEY); `convert`: turns the
    given value into the config's (e.g. split_list for "en,de"); `type`: what typer parses (default: from the
    field's type, str when converted); `envvar`: an environment variable read when the flag is not given.
    """

    def __init__(self, key: str, *names: str, convert: Callable[[Any], Any] | None = None, type: Any = None,
                 envvar: str | None = None) -> None:  # fmt: skip
        self.key = key
        self.names = names or ("--" + key.split(".")[-1].replace("_", "-"),)
        self.convert = convert
        self.type = type
        self.envvar = envvar
        # the Python name typer gives the value: the canonical spelling's (--lid-model -> lid_model)
        self.param = self.names[0].split("/")[0].lstrip("-").replace("-", "_")

    def annotation(self, config: type[BaseModel]) -> Any:
        """`Annotated[type | None, typer.Option(...)]`, its help documented from the config field."""
        info = field_info(config, self.key)
        default = info.get_default(call_default_factory=True)
        if isinstance(default, list | tuple):
            default = ",".join(str(v) for v in default) or "none"
        # parentheses, not brackets: typer's rich markup would swallow "[default: ...]" as a style tag
        help_text = f"{info.description or ''} (default: {default}; config key {self.key})".strip()
        option = typer.Option(*self.names, help=help_text, show_default=False, envvar=self.envvar)
        parsed = self.type or (str if self.convert else cli_type(info.annotation))
        # flags default to None ("not given") so that a YAML file's value is kept unless the flag is used
        return Annotated[parsed | None, option]

    def value(self, given: Any) -> Any:
        """The config value for what the command line gave; None: not given (a repeatable flag given no times)."""
        if given is None or (isinstance(given, list | tuple) and not given):
            return None
        return self.convert(given) if self.convert is not None else given


def cli_type(annotation: Any) -> Any:
    """What typer parses for a config field: bool, int, float, str, or list[str] (a repeatable option)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
    else:
        args = [annotation]
    if len(args) == 1 and get_origin(args[0]) is Literal:
        values = get_args(args[0])
        return int if all(isinstance(v, int) for v in values) else str
    if len(args) == 1 and get_origin(args[0]) is list:
        return list[str]
    if args == [bool]:
        return bool
    if args and all(arg in (int, float) for arg in args):
        return float if float in args else int
    return str


def split_list(value: str | None) -> list[str] | None:
    """'en,de' -> ['en', 'de']; None stays None (flag not given)."""
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def stage_command(flags: Iterable[Flag] = ()) -> Callable[[Callable], Callable]:
    """Build a stage's typer command from its command function and its flags (see the module docstring)."""
    flags = tuple(flags)

    def build(func: Callable) -> Callable:
        written = inspect.signature(func, eval_str=True).parameters
        config_model = written["config"].annotation
        assert isinstance(config_model, type) and issubclass(config_model, StageConfig), func
        keyword = inspect.Parameter.KEYWORD_ONLY
        params = []
        for param in written.values():
            if param.name == "config":
                params += [inspect.Parameter("config_file", keyword, default=None, annotation=ConfigFile),
                           inspect.Parameter("sets", keyword, default=None, annotation=Sets)]  # fmt: skip
            elif param.name in COMMON_OPTIONS and get_origin(param.annotation) is not Annotated:
                option = Annotated[param.annotation, COMMON_OPTIONS[param.name]]
                params.append(param.replace(kind=keyword, annotation=option))
                if param.name == "force":
                    params.append(inspect.Parameter("update", keyword, default=False, annotation=Update))
            else:
                params.append(param.replace(kind=keyword))
        for flag in flags:
            assert flag.param not in {p.name for p in params}, f"{func.__module__}: {flag.param} twice"
            params.append(
                inspect.Parameter(flag.param, keyword, default=None, annotation=flag.annotation(config_model))
            )

        def config_from(values: dict[str, Any]) -> StageConfig:
            """The resolved config for the parsed command line `values`: defaults < --config < flags < --set."""
            given = {flag.key: flag.value(values[flag.param]) for flag in flags}
            return load_config(config_model, values["config_file"], values["sets"], given)

        @handle_errors
        def command(**values: Any) -> Any:
            config = config_from(values)
            for name in ("config_file", "sets", *(flag.param for flag in flags)):
                del values[name]
            if values.pop("update", False):
                if values["force"]:
                    raise InputError("--force starts over and --update resumes what it can: give one of them")
                values["force"] = UPDATE
            return func(**values, config=config)

        for attribute in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(command, attribute, getattr(func, attribute))
        del command.__wrapped__  # typer reads the signature below, not the hand-written one
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {param.name: param.annotation for param in params}
        command.config_model = config_model
        command.flags = flags
        command.config_from = config_from
        return command

    return build


def handle_errors(func):
    """One clear line and the right exit code instead of a traceback (LLMFORGE_DEBUG=1 shows the traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except LLMForgeError as exc:
            if os.environ.get("LLMFORGE_DEBUG"):
                raise
            error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            error("interrupted; re-run the same command to resume")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as exc:  # the work failed: say what, keep the partial state for a resume
            if os.environ.get("LLMFORGE_DEBUG"):
                raise
            error(f"{type(exc).__name__}: {exc} (LLMFORGE_DEBUG=1 shows the traceback)")
            raise typer.Exit(1) from None

    return wrapper


# -- shared by sft, dpo and grpo: their positional arguments, and the flags that follow each stage's own ----------
TrainedModel = Annotated[
    str, typer.Argument(help="The model to train: a model or adapter artifact, or a Hugging Face directory.")
]
TrainingData = Annotated[
    str,
    typer.Argument(
        help="The dataset: a JSONL or Parquet file (or a folder or glob of them), or a documents artifact."
    ),
]
# sft and dpo: a held-out set measured during training (grpo has none)
EVAL_FLAGS = (Flag("eval_fraction"), Flag("eval_data"), Flag("eval_steps"))
POSTTRAIN_FLAGS = (
    Flag("lora.enabled", "--lora"),
    Flag("lora.qlora", "--qlora"),
    Flag("lora.merge", "--merge"),
    Flag("lora.rank", "--rank"),
    Flag("epochs"),
    Flag("max_steps"),
    Flag("learning_rate", "--lr", "--learning-rate"),
    Flag("batch_size", "--micro-batch-size", "--batch-size"),
    Flag("max_length", "--seq-len", "--max-length"),
    Flag("chat_template", "--chat-template"),
    Flag("zero"),
    Flag("offload"),
    Flag("nproc"),
    Flag("hostfile"),
)
