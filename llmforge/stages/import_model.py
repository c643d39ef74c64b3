"""Import an external model (a Hugging Face directory, a GGUF file, or a Hub id: from the local Hugging Face cache,
or downloaded with --online) as a model artifact.

The output is a standard Hugging Face directory (safetensors, config, tokenizer, chat template, generation config)
whose manifest names the source and the fingerprint of its files' contents, so every later artifact traces back to
the exact checkpoint; a Hub import records the commit its revision resolved to. GGUF weights are dequantized by
transformers; a gguf artifact (`quantize --method gguf-*`) is its input, so lineage goes on through quantize. Models that need their own code (`trust_remote_code`) are refused unless --trust-remote-code.
Every stage also takes plain Hugging Face directories as they are: import is for lineage, formats and the Hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import Field

from llmforge.config import StageConfig, runtime_field
from llmforge.errors import InputError
from llmforge.model.importing import Dtype
from llmforge.options import Flag, stage_command

STAGE = "import"


class Config(StageConfig):
    dtype: Dtype = Field(
        "source",
        description="Weights as stored: source (the source's dtype; float32 for GGUF, dequantized), bf16 or fp32",
    )
    revision: str | None = Field(
        None, description="Hub ids: a branch, tag or commit (none = main); the resolved commit is recorded"
    )
    hub_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$",
        description="The Hub id a local source is a copy of (org/name), recorded as the card's base_model",
    )
    trust_remote_code: bool = runtime_field(
        False, description="Run the model repository's own Python code (needed when config.json has auto_map)"
    )


def run(source: str | Path, out: str | Path, config: Config | None = None, force: bool = False) -> Path:
    """Import `source` into the model artifact `out`; returns its path."""
    from llmforge.artifacts import run_stage
    from llmforge.model.importing import locate

    config = config or Config()
    found = locate(source, revision=config.revision, trust_remote_code=config.trust_remote_code)
    if config.hub_id:
        if found.kind == "hub" and found.hub_id != config.hub_id:
            raise InputError(f"--hub-id {config.hub_id}: the source is the Hub model {found.hub_id} itself")
        found.hub_id = config.hub_id

    def body(ctx) -> None:
        from llmforge.data.tokenizer import tokenizer_fingerprint
        from llmforge.model.importing import convert

        ctx.stats.update(convert(found, ctx.work, config.dtype, config.trust_remote_code))
        ctx.extra["source"] = found.record()
        ctx.extra["tokenizer_fingerprint"] = tokenizer_fingerprint(ctx.work)

    return run_stage(STAGE, "model", config, [found.ref()], out, body, force=force,
                     title=f"import {found.description}: {out}")  # fmt: skip


FLAGS = (
    Flag("dtype"),
    Flag("revision"),
    Flag("hub_id"),
    Flag("trust_remote_code"),
)


@stage_command(FLAGS)
def command(
    source: Annotated[
        str,
        typer.Argument(
            help="A Hugging Face model directory, a .gguf file (or a gguf artifact from quantize), or a Hub id "
            "(org/name; org/name:TAG picks the repository's GGUF of that type): cached, or with --online."
        ),
    ],
    output: Path,
    config: Config,
    force: bool = False,
) -> None:
    run(source, output, config, force=force)
