"""The artifact contract: every stage reads artifacts and writes exactly one.

An artifact is a directory whose `artifact.json` manifest is written last. A stage writes its payload into
`OUT.partial/`, writes the manifest there, then renames the directory to `OUT`: a crashed stage never leaves
something that looks finished, and a re-run with the same fingerprint finds its partial work and resumes.
"""

from __future__ import annotations

import glob
import hashlib
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
from llmforge.config import fingerprinted
from llmforge.console import emit, log, summary_table
from llmforge.errors import InputError
from llmforge.files import write_json
from llmforge.locks import hold_output
from llmforge.registry import made_by

SCHEMA = "llmforge.artifact/1"
UPDATE = "update"  # run_stage(force=UPDATE): replace what changed, resume what did not (--update)
MANIFEST = "artifact.json"
STAGING_SUFFIX = ".partial"
STAGING_MARK = "staging.json"
# Resume state lives in these folders of an artifact; they are kept but not hashed into `files`.
UNHASHED_DIRS = ("checkpoints", "logs")

LIBRARIES = (
    "torch", "transformers", "tokenizers", "datatrove", "deepspeed", "trl", "peft",
    "lm_eval", "vllm", "llmcompressor", "torchao", "accelerate",
)  # fmt: skip


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def canonical_hash(value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Reading artifacts


@dataclass
class Artifact:
    """A finished artifact on disk: its directory and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config", {})

    @property
    def stats(self) -> dict[str, Any]:
        return self.manifest.get("stats", {})

    @property
    def extra(self) -> dict[str, Any]:
        return self.manifest.get("extra", {})

    def ref(self) -> InputRef:
        return InputRef(path=self.path, kind=self.kind, fingerprint=self.fingerprint, stage=self.stage)

    def verify(self) -> list[str]:
        """What differs from the manifest (empty when intact): listed files missing, resized, re-hashed or replaced
        by a symbolic link, and files the manifest does not list (resume state under checkpoints/ and logs/
        aside). The payload is what the manifest lists; anything else in the directory is a problem to report."""
        problems = []
        listed = set()
        for entry in self.manifest.get("files", []):
            listed.add(entry["path"])
            file = self.path / entry["path"]
            if self._linked(entry["path"]):
                problems.append(
                    f"{entry['path']}: a symbolic link (to {file.resolve()}), not the file listed"
                )
            elif not file.is_file():
                problems.append(f"{entry['path']}: missing")
            elif file.stat().st_size != entry["bytes"]:
                problems.append(
                    f"{entry['path']}: {file.stat().st_size} bytes, manifest says {entry['bytes']}"
                )
            elif sha256_file(file) != entry["sha256"]:
                problems.append(f"{entry['path']}: sha256 differs from the manifest")
        for relative, is_link in _tree(self.path):
            if relative in listed:
                continue
            if is_link:
                problems.append(f"{relative}: a symbolic link (to {os.readlink(self.path / relative)}), not listed "
                                "in the manifest")  # fmt: skip
            elif relative != MANIFEST and relative.split("/")[0] not in UNHASHED_DIRS:
                problems.append(f"{relative}: not listed in the manifest")
        return problems

    def _linked(self, relative: str) -> bool:
        """The file, or a folder on its way down from the artifact's directory, is a symbolic link."""
        return (self.path / relative).resolve() != self.path.resolve() / relative

    def check_sizes(self, wanted: Callable[[str], bool]) -> list[Path]:
        """Cheap integrity check before reading: each manifest file that `wanted(relative path)` selects must be
        present with its recorded size (a stat, no hashing) and be no symbolic link; the first mismatch is an
        InputError naming the file. Returns those files, in manifest order: stages read what the manifest lists,
        never whatever else lies in the directory. `llmforge show --verify` re-hashes everything."""
        files = []
        for entry in self.manifest.get("files", []):
            if not wanted(entry["path"]):
                continue
            file = self.path / entry["path"]
            if self._linked(entry["path"]):
                raise InputError(f"{file}: a symbolic link, not the file {self.path / MANIFEST} lists "
                                 f"(`llmforge show --verify {self.path}` checks every file)")  # fmt: skip
            if not file.is_file():
                raise InputError(f"{file}: missing; {self.path / MANIFEST} lists it")
            size = file.stat().st_size
            if size != entry["bytes"]:
                raise InputError(f"{file}: {size:,} bytes, {MANIFEST} says {entry['bytes']:,}; the file is truncated "
                                 f"or corrupt (`llmforge show --verify {self.path}` checks every file)")  # fmt: skip
            files.append(file)
        return files

    def parents(self) -> list[tuple[dict[str, Any], Artifact | None]]:
        """Each input entry with its artifact when it can be found (relative path first, so trees can move)."""
        found = []
        for entry in self.manifest.get("inputs", []):
            parent = None
            if entry.get("kind") not in (None, "raw", "hub"):
                for candidate in _candidates(self.path, entry):
                    if (candidate / MANIFEST).is_file():
                        parent = Artifact.open(candidate)
                        break
            found.append((entry, parent))
        return found

    def ancestors(self) -> Iterable[Artifact]:
        """Every artifact reachable through lineage, nearest first, each once."""
        seen, queue = {self.fingerprint}, [self]
        while queue:
            current = queue.pop(0)
            for _, parent in current.parents():
                if parent is not None and parent.fingerprint not in seen:
                    seen.add(parent.fingerprint)
                    queue.append(parent)
                    yield parent

    @classmethod
    def open(cls, path: str | Path) -> Artifact:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            staging = staging_path(path)
            if staging.exists():
                raise InputError(f"{path}: not an llmforge artifact yet: an unfinished run is in {staging}; "
                                 "re-run its stage to resume")  # fmt: skip
            if not path.exists():
                raise InputError(f"{path}: no such file or directory")
            raise InputError(f"{path}: not an llmforge artifact, it has no {MANIFEST}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{manifest_path}: unreadable manifest ({exc})") from None
        if not isinstance(manifest, dict) or not str(manifest.get("schema", "")).startswith(
            "llmforge.artifact/"
        ):
            raise InputError(f"{manifest_path}: not an llmforge manifest (no 'schema: llmforge.artifact/N')")
        if manifest["schema"] != SCHEMA:
            raise InputError(
                f"{manifest_path}: schema {manifest['schema']} is not supported (this is {SCHEMA})"
            )
        missing = [key for key in ("kind", "stage", "fingerprint") if not isinstance(manifest.get(key), str)]
        if missing:
            raise InputError(f"{manifest_path}: no {', '.join(missing)}; the manifest is damaged")
        _check_file_entries(manifest_path, manifest.get("files", []))
        return cls(path=path, manifest=manifest)


def _check_file_entries(manifest_path: Path, entries: Any) -> None:
    """Every `files` entry names a file inside the artifact, checked before anything stats or hashes it: a
    tampered manifest must not send `verify` or a reader to ../../etc/passwd or an absolute path."""
    if not isinstance(entries, list):
        raise InputError(f"{manifest_path}: 'files' is not a list")
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)):  # fmt: skip
            raise InputError(f"{manifest_path}: a 'files' entry needs path, bytes and sha256: {entry!r:.200}")
        path = entry["path"]
        parts = path.split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InputError(f"{manifest_path}: 'files' lists {path!r}, not a relative path inside the "
                             "artifact; the manifest is damaged or tampered with")  # fmt: skip


def _tree(root: Path) -> Iterable[tuple[str, bool]]:
    """(relative posix path, is a symbolic link) of every file and link under `root`, links not followed."""
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            if path.is_symlink() or name in files:
                yield path.relative_to(root).as_posix(), path.is_symlink()


def _candidates(base: Path, entry: dict[str, Any]) -> list[Path]:
    candidates = []
    if entry.get("relpath"):
        candidates.append((base / entry["relpath"]).resolve())
    candidates.append(Path(entry["path"]))
    return candidates


def describe_kind(kind: str) -> str:
    article = "an" if kind[0] in "aeiou" else "a"
    return f"{article} {kind} artifact"


def open_artifact(path: str | Path, stage: str, expect: Iterable[str]) -> Artifact:
    """Open an input artifact and check its kind: "pretrain needs a tokens artifact made by ...; X is a ..."."""
    expect = tuple(expect)
    artifact = Artifact.open(path)
    if artifact.kind not in expect:
        wanted = " or ".join(describe_kind(k) for k in expect)
        makers = " / ".join(made_by(k) for k in expect)
        raise InputError(
            f"{stage} needs {wanted} made by {makers}; {path} is {describe_kind(artifact.kind)} "
            f"(made by `llmforge {artifact.stage}`)"
        )
    return artifact


# ---------------------------------------------------------------------------------------------------------------
# Inputs: artifacts, or raw files that start a lineage


@dataclass
class InputRef:
    """One input of a stage, as recorded in the manifest's `inputs`."""

    path: Path | str
    kind: str  # an artifact kind, "raw" for files outside llmforge, "hub" for a model hub id
    fingerprint: str
    stage: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def entry(self, out: Path) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": str(self.path), "kind": self.kind, "fingerprint": self.fingerprint}
        if self.kind not in ("raw", "hub"):
            entry["path"] = str(Path(self.path).resolve())
            entry["relpath"] = os.path.relpath(Path(self.path).resolve(), Path(out).resolve())
        if self.stage:
            entry["stage"] = self.stage
        entry.update(self.detail)
        return entry


def expand_paths(patterns: Iterable[str | Path]) -> list[str]:
    """Local files from paths, globs and directories (recursively); other fsspec URLs pass through untouched."""
    found: list[str] = []
    for pattern in patterns:
        text = str(pattern)
        if "://" in text and not text.startswith("file://"):
            found.append(text)
            continue
        text = text.removeprefix("file://")
        matches = sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text]
        if not matches and os.path.exists(text):  # a name with [ ] * ? in it, meant literally
            matches = [text]
        if not matches:
            raise InputError(f"{text}: no file matches this pattern")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                found.extend(
                    str(p) for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")
                )
            elif path.is_file():
                found.append(str(path))
            else:
                raise InputError(f"{match}: no such file or directory")
    return found


def raw_input(pattern: str | Path, files: list[str] | None = None) -> InputRef:
    """A raw input (files outside llmforge) fingerprinted by content, so lineage ends at the exact bytes."""
    files = files if files is not None else expand_paths([pattern])
    digest = hashlib.sha256()
    total = 0
    for name in files:
        if "://" in name:
            import fsspec

            info = fsspec.filesystem(name.split("://")[0]).info(name)
            digest.update(f"{name}:{info.get('size')}:{info.get('ETag') or info.get('mtime')}".encode())
            total += int(info.get("size") or 0)
            continue
        digest.update(os.path.basename(name).encode() + b"\0" + sha256_file(Path(name)).encode())
        total += os.path.getsize(name)
    detail = {"files": len(files), "bytes": total}
    return InputRef(path=str(pattern), kind="raw", fingerprint=digest.hexdigest(), detail=detail)


# ---------------------------------------------------------------------------------------------------------------
# Writing artifacts


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


def staging_path(out: Path) -> Path:
    return Path(str(out) + STAGING_SUFFIX)


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
