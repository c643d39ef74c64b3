"""A stage's inputs: artifacts, or raw files (and Hub ids) that start a lineage, fingerprinted by content."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge.errors import InputError
from llmforge.files import sha256_file

# the role of a post-training stage's held-out records (--eval-data): measured, not trained on, so eval's
# contamination check does not read them as training data
EVAL_DATA = "eval data"


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
