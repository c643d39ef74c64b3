"""The `llmforge` command: one subcommand per stage, registered from llmforge.registry, plus helpers to inspect
artifacts, estimate a run and chat with a model.

Each stage module builds its own command from its flags (llmforge.options.stage_command) and imports nothing heavy
at module level, so `llmforge --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from llmforge import __version__
from llmforge.console import TABLE_ITEMS, console, error, format_value
from llmforge.errors import InputError, LLMForgeError
from llmforge.options import handle_errors

app = typer.Typer(
    name="llmforge",
    help="From a raw web crawl to a served language model. Each stage reads artifacts and writes one; "
    "stdout carries only the output path, so stages compose in the shell and in Make.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def version_callback(value: bool) -> None:
    if value:
        print(f"llmforge {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    online: Annotated[
        bool, typer.Option("--online", help="Allow downloads from the Hugging Face Hub (offline by default).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    if not online:
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(name, "1")
    os.environ["LLMFORGE_ONLINE"] = "1" if online else "0"


# ---------------------------------------------------------------------------------------------------------------
# Stages, as llmforge.registry declares them; "tokenize train" is the subcommand train of the group tokenize.


def _register_stages() -> None:
    import importlib

    from llmforge.registry import STAGES

    groups: dict[str, typer.Typer] = {}
    for stage in STAGES:
        module = importlib.import_module(f"llmforge.stages.{stage.module}")
        function = getattr(module, stage.function)
        group, _, name = stage.name.rpartition(" ")
        if group and group not in groups:
            groups[group] = typer.Typer(
                help=" ".join((module.__doc__ or "").strip().split("\n\n")[0].split()), no_args_is_help=True
            )
            app.add_typer(groups[group], name=group)
        reads = ", ".join("files" if kind == "raw" else kind for kind in stage.reads)
        epilog = f"Reads: {reads}. Writes: {', '.join(stage.writes) or 'no artifact'}."
        register = (groups[group] if group else app).command
        register(name, help=stage.summary, epilog=epilog, no_args_is_help=True)(function)


# ---------------------------------------------------------------------------------------------------------------
# Helpers


@app.command(no_args_is_help=True)
@handle_errors
def show(
    artifact: Annotated[Path, typer.Argument(help="An artifact directory.")],
    verify: Annotated[bool, typer.Option(help="Re-hash every file and compare with the manifest.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the raw manifest on stdout.")] = False,
) -> None:
    """Summarise an artifact's manifest: kind, stage, fingerprint, inputs, config and stats."""
    from rich.table import Table

    from llmforge.artifacts import Artifact
    from llmforge.console import flatten

    art = Artifact.open(artifact)
    if json_:
        import json

        print(json.dumps(art.manifest, indent=2))
        return
    m = art.manifest
    prov = m.get("provenance", {})
    table = Table(title=str(artifact), show_header=False, title_justify="left")
    table.add_column(style="cyan")
    table.add_column()
    table.add_row("kind", art.kind)
    table.add_row("stage", f"llmforge {art.stage} (v{m.get('llmforge_version')})")
    table.add_row("fingerprint", art.fingerprint)
    table.add_row("made", f"{prov.get('finished', '?')} on {prov.get('host', '?')}, {prov.get('device', '?')}, "
                  f"{prov.get('seconds', '?')} s")  # fmt: skip
    for entry in m.get("inputs", []):
        table.add_row("input", f"{entry['path']} ({entry['kind']}, {entry['fingerprint'][:12]})")
    for key, value in flatten(m.get("config", {}), "config."):
        table.add_row(key, format_value(value, max_items=TABLE_ITEMS))
    for key, value in flatten(m.get("stats", {}), "stats."):
        table.add_row(key, format_value(value, max_items=TABLE_ITEMS))
    files = m.get("files", [])
    table.add_row("files", f"{len(files)} files, {format_value(sum(f['bytes'] for f in files))} bytes")
    console.print(table)
    if verify:
        problems = art.verify()
        for problem in problems:
            error(f"{artifact}/{problem}")
        if problems:
            raise InputError(f"{artifact}: {len(problems)} file(s) do not match the manifest")
        console.print(f"[green]verified[/] {len(files)} files")


@app.command(no_args_is_help=True)
@handle_errors
def lineage(artifact: Annotated[Path, typer.Argument(help="An artifact directory.")]) -> None:
    """Print the tree of an artifact's parents, back to the raw inputs."""
    from rich.tree import Tree

    from llmforge.artifacts import Artifact

    def label(art: Artifact) -> str:
        return f"[bold]{art.kind}[/] {art.path} [dim]({art.stage}, {art.fingerprint[:12]})[/]"

    def grow(tree: Tree, art: Artifact, depth: int) -> None:
        for entry, parent in art.parents():
            if parent is not None and depth < 50:
                grow(tree.add(label(parent)), parent, depth + 1)
            elif entry["kind"] in ("raw", "hub"):
                detail = f", {entry['files']} files, {entry['bytes']:,} bytes" if "files" in entry else ""
                tree.add(
                    f"[bold]{entry['kind']}[/] {entry['path']} [dim]({entry['fingerprint'][:12]}{detail})[/]"
                )
            else:
                tree.add(
                    f"[red]missing[/] {entry['kind']} {entry['path']} [dim]({entry['fingerprint'][:12]})[/]"
                )

    root = Artifact.open(artifact)
    tree = Tree(label(root))
    grow(tree, root, 0)
    console.print(tree)


@app.command(no_args_is_help=True)
@handle_errors
def card(
    artifact: Annotated[Path, typer.Argument(help="A documents, tokenizer, tokens, model, adapter, quantized-model or gguf artifact.")],
    eval_: Annotated[list[Path] | None, typer.Option("--eval", help="An eval report of this model or one before it in its chain (repeatable; default: the reports next to it).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the card to this file and print its path (default: the card on stdout).")] = None,
    license_: Annotated[str | None, typer.Option("--license", help="A Hub license id for the card's front matter (default: the license an imported model's GGUF records; else omitted).")] = None,
) -> None:  # fmt: skip
    """Write a Markdown data card or model card from lineage: data, filters, dedup, training, eval scores."""
    from llmforge.artifacts import MANIFEST
    from llmforge.card import make_card
    from llmforge.files import write_text

    text = make_card(artifact, eval_, license_)
    if output is None:
        sys.stdout.write(text)
        return
    if output.is_dir():
        raise InputError(f"{output}: a directory; -o takes the card's file name")
    # artifacts do not change once their manifest is written
    if (output.resolve().parent / MANIFEST).is_file():
        raise InputError(f"{output}: inside the artifact {output.resolve().parent}, which must not change; "
                         "write the card elsewhere")  # fmt: skip
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_text(output, text)
    except OSError as exc:
        raise InputError(f"{output}: cannot write the card ({exc.strerror or exc})") from None
    print(output)


@app.command()
@handle_errors
def estimate(
    model: Annotated[str | None, typer.Argument(help="A preset (tiny ... 7b), a model artifact or a Hugging Face model directory.")] = None,
    params: Annotated[str | None, typer.Option(help="A parameter count instead of a model, e.g. 7B.")] = None,
    vocab: Annotated[int, typer.Option(help="Vocabulary of a preset or explicit dimensions.")] = 32000,
    hidden: Annotated[int | None, typer.Option(help="Explicit width (overrides the model's).")] = None,
    layers: Annotated[int | None, typer.Option(help="Explicit layer count.")] = None,
    heads: Annotated[int | None, typer.Option(help="Explicit attention heads.")] = None,
    kv_heads: Annotated[int | None, typer.Option(help="Explicit key/value heads (default: heads).")] = None,
    intermediate: Annotated[int | None, typer.Option(help="Explicit SwiGLU width.")] = None,
    tied: Annotated[bool | None, typer.Option("--tied/--untied", help="Shared input/output embeddings.")] = None,
    experts: Annotated[int | None, typer.Option(help="Mixture of experts: experts per layer, each --intermediate wide (0 = dense).")] = None,
    experts_per_token: Annotated[int | None, typer.Option(help="Mixture of experts: experts each token is routed to (default 2).")] = None,
    tokens: Annotated[str | None, typer.Option(help="Training tokens, e.g. 300B (default: Chinchilla, 20 per parameter).")] = None,
    seq_len: Annotated[int, typer.Option(help="Sequence length for FLOPs/token, activations and KV cache.")] = 2048,
    gpus: Annotated[int, typer.Option(help="Devices the training is spread over.")] = 1,
    zero: Annotated[int, typer.Option(help="The ZeRO stage you plan to use (all four are shown).")] = 0,
    precision: Annotated[str, typer.Option(help="bf16 (mixed, 16 bytes/param with Adam), fp16, bf16-autocast or fp32.")] = "bf16",
    offload: Annotated[str | None, typer.Option(help="cpu: optimizer states (ZeRO-3: weights too) in CPU memory.")] = None,
    micro_batch_size: Annotated[int, typer.Option("--micro-batch-size", "--micro-batch", help="Sequences per device per pass, for activations.")] = 1,
    checkpointing: Annotated[bool, typer.Option(help="Activation checkpointing, for activations.")] = False,
    gpu: Annotated[str | None, typer.Option(help="GPU model for its peak FLOP/s, e.g. H100, A100.")] = None,
    peak_tflops: Annotated[float | None, typer.Option(help="Peak TFLOP/s per device instead of --gpu.")] = None,
    mfu: Annotated[float, typer.Option(help="Model FLOPs utilisation to expect.")] = 0.4,
    price: Annotated[float | None, typer.Option(help="Price per GPU-hour, for the cost.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON on stdout.")] = False,
) -> None:  # fmt: skip
    """Parameters, memory per device by ZeRO stage, FLOPs (6ND), Chinchilla tokens, KV cache, GPU-hours and cost."""
    import json

    from rich.table import Table

    from llmforge.model import estimate as math

    shape = math.resolve_shape(model, vocab, hidden, layers, heads, kv_heads, intermediate, tied,
                               num_experts=experts, experts_per_token=experts_per_token)  # fmt: skip
    count = math.parse_count(params, "--params") if params is not None else None
    result = math.estimate(params=count, shape=shape, tokens=math.parse_count(tokens, "--tokens") if tokens else None,
                           devices=gpus, zero=zero, precision=precision, offload=offload, seq_len=seq_len,
                           micro_batch=micro_batch_size, checkpointing=checkpointing, gpu=gpu, peak_tflops=peak_tflops,
                           mfu=mfu, price_per_gpu_hour=price)  # fmt: skip
    if json_:
        print(json.dumps(result.as_dict(), indent=2))
        return
    title = f"estimate: {model or params or 'explicit dimensions'}"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="cyan")
    table.add_column()
    for what, value in math.report_rows(result):
        table.add_row(what, value)
    console.print(table)


@app.command(no_args_is_help=True)
@handle_errors
def defaults(stage: Annotated[str, typer.Argument(help="A stage name, e.g. dedup.")]) -> None:
    """Print a stage's default config as commented YAML (a starting point for --config)."""
    import importlib

    from llmforge.config import defaults_yaml
    from llmforge.registry import STAGES

    # `defaults tokenize` prints both of its subcommands' configs
    chosen = [s for s in STAGES if stage in (s.name, s.name.split(" ")[0])]
    if not chosen:
        raise InputError(f"unknown stage {stage!r}; stages: {', '.join(s.name for s in STAGES)}")
    for entry in chosen:
        function = getattr(importlib.import_module(f"llmforge.stages.{entry.module}"), entry.function)
        if len(chosen) > 1:
            print(f"# --- {entry.name} ---")
        print(defaults_yaml(function.config_model))


@app.command()
@handle_errors
def chat(
    model: Annotated[str | None, typer.Argument(help="A model, adapter, quantized-model or gguf artifact, a Hugging Face directory, a .gguf file, or a Hub id (org/name; org/name:TAG for a GGUF).")] = None,
    url: Annotated[str | None, typer.Option(help="Base URL of a running server instead, e.g. http://127.0.0.1:8000/v1.")] = None,
    served: Annotated[str | None, typer.Option("--model", help="With --url: the served model name (default: the first).")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="LLMFORGE_API_KEY", help="With --url: the server's API key.")] = None,
    system: Annotated[str | None, typer.Option(help="A system prompt.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Tokens per answer at most (default: the generation config's).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (default: the generation config's).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible answers.")] = None,
) -> None:  # fmt: skip
    """Chat in the terminal with a model artifact or a running server; answers stream to stdout (/reset, /exit)."""
    from llmforge.serving.chat import Settings, repl

    settings = Settings(max_tokens=max_tokens, temperature=temperature, seed=seed)
    repl(model, url, served, api_key, system, settings)


@app.command()
@handle_errors
def doctor(
    json_: Annotated[bool, typer.Option("--json", help="Print the checks as JSON on stdout.")] = False,
) -> None:
    """Check what this machine can run: core libraries, CPU/GPU (bf16, NCCL), kernels, vLLM, optional pieces, caches."""
    import json

    from rich.table import Table

    from llmforge.doctor import checks, report

    found = checks()
    summary = report(found)
    if json_:
        print(json.dumps(summary, indent=2))
    else:
        styles = {"ok": "green", "missing": "yellow", "broken": "bold red", "info": "dim"}
        table = Table(title="llmforge doctor", title_justify="left")
        for column in ("area", "check", "status", "detail"):
            table.add_column(column, style="cyan" if column == "area" else None)
        for check in found:
            table.add_row(check.area, check.name, f"[{styles[check.status]}]{check.status}[/]", check.detail)
        console.print(table)
    if summary["broken"]:
        raise LLMForgeError(
            f"broken: {', '.join(summary['broken'])}; reinstall with `make install` (see README)"
        )


_register_stages()


def main() -> None:
    app(prog_name="llmforge")


if __name__ == "__main__":
    sys.exit(main())
