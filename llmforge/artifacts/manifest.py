"""Reading artifacts: the manifest, its checks (files inside the artifact, sizes, hashes), lineage."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.artifacts.inputs import InputRef
from llmforge.errors import InputError
from llmforge.files import sha256_file
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


def staging_path(out: Path) -> Path:
    return Path(str(out) + STAGING_SUFFIX)
