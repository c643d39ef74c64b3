"""Writing an artifact under the contract: one writer per output (a lock), outputs checked against inputs, the
payload staged in `OUT.partial/`, the manifest written last, one rename into place; resume, --force and --update."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llmforge import __version__, machine
from llmforge.artifacts.inputs import InputRef
from llmforge.artifacts.manifest import (
    LIBRARIES,
    MANIFEST,
    SCHEMA,
    STAGING_MARK,
    UNHASHED_DIRS,
    Artifact,
    staging_path,
)
from llmforge.config import fingerprinted
from llmforge.console import emit, log, stdout_to_stderr, summary_table
from llmforge.errors import InputError
from llmforge.files import canonical_hash, sha256_file, write_json
from llmforge.locks import hold_output


@dataclass
class StageContext:
    """What a stage's body gets: its config, inputs and the staging directory to fill."""

    stage: str
    kind: str
    config: BaseModel
    inputs: list[InputRef]
    out: Path  # where the artifact will be once finished
    work: Path  # the staging directory: write the payload here
    fingerprint: str
    resumed: bool  # the staging directory held partial work of this same fingerprint
    stats: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(
        default_factory=dict
    )  # stage-specific manifest fields (tokenizer, base model...)


def fingerprint_of(stage: str, config: BaseModel, inputs: list[InputRef]) -> str:
    return canonical_hash(
        {
            "schema": SCHEMA,
            "stage": stage,
            "config": fingerprinted(config),
            "inputs": [i.fingerprint for i in inputs],
        }
    )


def _what_changed(old: dict[str, Any], stage: str, config: BaseModel, inputs: list[InputRef]) -> str:
    changes = []
    if old.get("stage") != stage:
        changes.append(f"it was made by `llmforge {old.get('stage')}`, not `{stage}`")
    before = {k: v for k, v in _flat(old.get("config", {}))}
    after = {k: v for k, v in _flat(fingerprinted(config))}
    for key in sorted(set(before) | set(after)):
        if key in before and key in after and before[key] == after[key]:
            continue
        # a runtime field present in the old manifest but not fingerprinted now is not a change
        if key not in after and key in _runtime_keys(config):
            continue
        changes.append(f"config.{key}: {before.get(key, '(unset)')!r} -> {after.get(key, '(unset)')!r}")
    old_inputs = [i.get("fingerprint") for i in old.get("inputs", [])]
    new_inputs = [i.fingerprint for i in inputs]
    if old_inputs != new_inputs:
        if len(old_inputs) != len(new_inputs):
            changes.append(f"{len(old_inputs)} inputs before, {len(new_inputs)} now")
        for old_entry, new in zip(old.get("inputs", []), inputs, strict=False):
            if old_entry.get("fingerprint") != new.fingerprint:
                changes.append(f"input {new.path} changed (fingerprint {old_entry.get('fingerprint', '')[:12]} -> "
                               f"{new.fingerprint[:12]})")  # fmt: skip
    return "; ".join(changes) or "fingerprint differs"


def _runtime_keys(config: BaseModel) -> set[str]:
    full = {k for k, _ in _flat(config.model_dump(mode="json"))}
    return full - {k for k, _ in _flat(fingerprinted(config))}


def _flat(data: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def list_files(root: Path) -> list[dict[str, Any]]:
    entries = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or rel.parts[0] in UNHASHED_DIRS or rel.as_posix() in (MANIFEST, STAGING_MARK):
            continue
        entries.append({"path": rel.as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return entries


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "llmforge": __version__}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return versions


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_output(out: Path, inputs: list[InputRef]) -> None:
    """Refuse an output that would overwrite, hold or sit inside an input (paths resolved, symlinks followed), or
    that lies inside an artifact (a finished one must not change) or another run's staging directory."""
    target = out.resolve()
    for ref in inputs:
        for source in _local_paths(ref):
            if target == source:
                problem = f"is also an input ({ref.path})"
            elif source in target.parents:
                problem = f"lies inside the input {ref.path}"
            elif target in source.parents:
                problem = f"holds the input {ref.path}"
            else:
                continue
            raise InputError(f"{out}: the output {problem}; write it elsewhere")
    for parent in target.parents:
        if (parent / MANIFEST).is_file():
            raise InputError(f"{out}: inside the artifact {parent}, which must not change; write the output "
                             "elsewhere")  # fmt: skip
        if (parent / STAGING_MARK).is_file():
            raise InputError(f"{out}: inside {parent}, the staging directory of another run; write the output "
                             "elsewhere")  # fmt: skip


def _local_paths(ref: InputRef) -> list[Path]:
    """The local files or directories an input reads (a raw input's pattern expanded), resolved."""
    text = str(ref.path)
    if ref.kind == "hub" or ("://" in text and not text.startswith("file://")):
        return []
    text = text.removeprefix("file://")
    matches = glob.glob(text, recursive=True) if glob.has_magic(text) and not os.path.exists(text) else [text]
    return [Path(match).resolve() for match in matches if os.path.exists(match)]


def _check_writable(out: Path) -> None:
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"{out}: cannot create the output's parent directory ({exc.strerror or exc})"
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{out}: output directory {parent} is not writable")


def run_stage(
    stage: str,
    kind: str,
    config: BaseModel,
    inputs: list[InputRef],
    out: str | Path,
    body: Callable[[StageContext], None],
    force: bool | str = False,
    title: str | None = None,
) -> Path:
    """Run a stage under the artifact contract and print the output path on stdout.

    - an output equal to, inside or above an input, or inside an artifact: refused;
    - a complete artifact with the same fingerprint in `out`: nothing to do, exit 0;
    - another run writing `out` (it holds `out.lock`): refused, naming it;
    - a different artifact (or other files, or an unreadable manifest) in `out`: refused, naming what changed,
      unless `force`;
    - partial work of the same fingerprint in `out.partial`: handed to the body as `resumed=True`; `force`
      discards any partial work instead, and `force=UPDATE` (--update, what a Makefile wants) discards only
      partial work of other settings or of unknown origin, and resumes its own;
    - the body fills `ctx.work`; the manifest is written last and the directory renamed into place.
    """
    out = Path(out)
    fingerprint = fingerprint_of(stage, config, inputs)
    check_output(out, inputs)
    if _up_to_date(out, fingerprint, kind):  # a reader's question: no lock needed
        return out
    _check_writable(out)
    with hold_output(out):
        if _up_to_date(out, fingerprint, kind):  # finished by a run that ended while we looked
            return out
        return _run_locked(stage, kind, config, inputs, out, fingerprint, body, force, title)


def holds(out: str | Path, fingerprint: str) -> bool:
    """`out` holds a finished, readable artifact of this fingerprint (anything else, a damaged manifest included,
    is for run_stage to refuse or, with --force, replace)."""
    try:
        return Artifact.open(out).fingerprint == fingerprint
    except InputError:
        return False


def _up_to_date(out: Path, fingerprint: str, kind: str) -> bool:
    if not holds(out, fingerprint):
        return False
    log(f"[green]up to date:[/] {out} ({kind}, fingerprint {fingerprint[:12]})")
    emit(out)
    return True


def _run_locked(stage: str, kind: str, config: BaseModel, inputs: list[InputRef], out: Path, fingerprint: str,
                body: Callable[[StageContext], None], force: bool, title: str | None) -> Path:  # fmt: skip
    staging = staging_path(out)
    if (out / MANIFEST).is_file():
        try:
            existing = Artifact.open(out)
        except InputError as exc:
            if not force:
                raise InputError(f"{exc}; use --force to replace it") from None
            log(f"[yellow]replacing[/] {out}: its manifest cannot be read")
        else:
            if not force:
                changed = _what_changed(existing.manifest, stage, config, inputs)
                raise InputError(
                    f"{out} holds a different {existing.kind} artifact ({changed}); use --force to replace it"
                )
    elif out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise InputError(
            f"{out} exists and is not an llmforge artifact; choose another output or use --force"
        )

    resumed = False
    mark = staging / STAGING_MARK
    if staging.exists() and force is True:
        log(f"[yellow]discarding[/] the partial work in {staging} (--force)")
        _remove(staging)
    elif _finished(staging, fingerprint):  # killed after the manifest was written, before the rename
        log(f"[cyan]finishing[/] the interrupted run in {staging}: its work was complete")
        _move_into_place(staging, out)
        emit(out)
        return out
    elif staging.exists():
        previous = _read_mark(mark)
        if previous is None and staging.is_dir() and not any(staging.iterdir()):
            staging.rmdir()  # created by a run killed before it wrote its mark: nothing to keep
        elif previous is None and not force:
            raise InputError(f"{staging} holds partial work of unknown origin (its {STAGING_MARK} is missing or "
                             "unreadable); use --force to discard it")  # fmt: skip
        elif previous is not None and previous.get("fingerprint") == fingerprint:
            resumed = True
            log(f"[cyan]resuming[/] the interrupted run in {staging}")
        elif force:  # --update: partial work that is not this run's
            log(
                f"[yellow]discarding[/] the partial work in {staging}: other settings or unknown origin (--update)"
            )
            _remove(staging)
        else:
            raise InputError(
                f"{staging} holds an interrupted run with other settings or inputs "
                f"(started {previous.get('started', 'at an unknown time')}); use --force to discard it"
            )
    try:
        staging.mkdir(parents=True, exist_ok=True)
        if not resumed:
            write_json(mark, {"fingerprint": fingerprint, "stage": stage, "started": _now()})
    except OSError as exc:
        raise InputError(f"{out}: cannot write the output ({exc.strerror or exc})") from None

    started = _now()
    clock = time.perf_counter()
    ctx = StageContext(stage=stage, kind=kind, config=config, inputs=inputs, out=out, work=staging,
                       fingerprint=fingerprint, resumed=resumed)  # fmt: skip
    # stdout is for the output path alone, and libraries log there (DeepSpeed's accelerator notice, via accelerate)
    with stdout_to_stderr():
        body(ctx)

    manifest = {
        "schema": SCHEMA,
        "kind": kind,
        "stage": stage,
        "llmforge_version": __version__,
        "fingerprint": fingerprint,
        "inputs": [i.entry(out) for i in inputs],
        "config": config.model_dump(mode="json"),
        "provenance": {
            "argv": sys.argv,
            "started": started,
            "finished": _now(),
            "seconds": round(time.perf_counter() - clock, 3),
            "host": socket.gethostname(),
            "device": machine.describe(),
            "versions": library_versions(),
        },
        "stats": ctx.stats,
        "extra": ctx.extra,
        "files": list_files(staging),
    }
    write_json(staging / MANIFEST, manifest, default=str)
    mark.unlink(missing_ok=True)
    _move_into_place(staging, out)

    summary_table(title or f"{stage}: {out}", ctx.stats)
    emit(out)
    return out


def _read_mark(mark: Path) -> dict[str, Any] | None:
    """The staging directory's record of the run that made it; None when missing or unreadable."""
    try:
        previous = json.loads(mark.read_text())
    except (OSError, ValueError):
        return None
    return previous if isinstance(previous, dict) and isinstance(previous.get("fingerprint"), str) else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _finished(staging: Path, fingerprint: str) -> bool:
    """The staging directory holds a complete artifact of this fingerprint (its manifest is written last)."""
    try:
        return json.loads((staging / MANIFEST).read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):
        return False


def _move_into_place(staging: Path, out: Path) -> None:
    (staging / STAGING_MARK).unlink(missing_ok=True)
    if out.exists():  # --force over an old artifact: swap it out, then delete it
        old = Path(str(out) + f".old-{os.getpid()}")
        os.replace(out, old)
        os.replace(staging, out)
        try:
            _remove(old)
        except OSError:
            pass
    else:
        os.replace(staging, out)
