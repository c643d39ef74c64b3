"""What every stage command shares: common options, flags documented from config fields, error handling."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from llmforge.config import field_info
from llmforge.console import error
from llmforge.errors import LLMForgeError

Output = Annotated[Path, typer.Option("--output", "-o", help="Output artifact directory.")]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file of settings (see `llmforge defaults STAGE`).")
]
Sets = Annotated[
    list[str] | None, typer.Option("--set", help="Override one setting: key=value (dotted keys; repeatable).")
]
Force = Annotated[
    bool, typer.Option("--force", help="Replace a different artifact (or discard other partial work).")
]
DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Check the inputs and settings and print the plan; train nothing.")
]


def flag(config: type[BaseModel], key: str, *names: str, **kwargs: Any) -> Any:
    """A typer option for config field `key` whose help shows the field's description and default.

    Flags default to None ("not given") so that a YAML file's value is kept unless the flag is used.
    """
    info = field_info(config, key)
    default = info.get_default(call_default_factory=True)
    if isinstance(default, list | tuple):
        default = ",".join(str(v) for v in default) or "none"
    names = names or ("--" + key.split(".")[-1].replace("_", "-"),)
    # parentheses, not brackets: typer's rich markup would swallow "[default: ...]" as a style tag
    help_text = f"{info.description or ''} (default: {default}; config key {key})".strip()
    return typer.Option(*names, help=help_text, show_default=False, **kwargs)


def split_list(value: str | None) -> list[str] | None:
    """'en,de' -> ['en', 'de']; None stays None (flag not given)."""
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


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
