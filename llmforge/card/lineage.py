"""Walking lineage for a card: the data behind an artifact, the chain of models behind a model, the eval reports
beside them, and what a model is (parameters, config.json) read from its files without loading weights."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from llmforge.artifacts import MANIFEST, STAGING_SUFFIX, Artifact
from llmforge.card.markdown import lookup
from llmforge.card.stages import stats_of
from llmforge.registry import DATA_KINDS, FROM_A_MODEL, MODEL_KINDS


def data_lineage(artifact: Artifact) -> list[Artifact]:
    """The data artifacts behind `artifact` (itself included), parents before children, each once."""
    order: list[Artifact] = []
    seen: set[str] = set()

    def visit(current: Artifact, depth: int) -> None:
        if current.fingerprint in seen or depth > 100:
            return
        seen.add(current.fingerprint)
        for _, parent in current.parents():
            if parent is not None and parent.kind in DATA_KINDS:
                visit(parent, depth + 1)
        order.append(current)

    visit(artifact, 0)
    return order


def model_chain(artifact: Artifact) -> tuple[list[Artifact], dict[str, Any] | None]:
    """The models from the first (pretrained or external) to `artifact`, following each stage's model input;
    and the manifest entry of an external starting point (a hub id, a Hugging Face directory, a missing artifact)."""
    chain, current, start = [artifact], artifact, None
    while current.stage in FROM_A_MODEL and current.manifest.get("inputs") and len(chain) < 100:
        entry, parent = current.parents()[0]
        if parent is None:
            start = entry
            break
        if parent.kind not in MODEL_KINDS:
            break
        chain.append(parent)
        current = parent
    return chain[::-1], start


def _find(base: Artifact, entry: dict[str, Any]) -> Artifact | None:
    """The artifact a manifest entry (such as extra.base_model) names, when it is still on disk."""
    for candidate in (
        (Path(base.path) / entry["relpath"]).resolve() if entry.get("relpath") else None,
        entry.get("path"),
    ):
        if candidate and (Path(candidate) / MANIFEST).is_file():
            return Artifact.open(candidate)
    return None


def safetensors_parameters(directory: Path, pattern: str = "*.safetensors") -> int | None:
    """Parameters stored in a directory's safetensors files, read from their headers (no weights loaded)."""
    files = sorted(Path(directory).glob(pattern))
    if not files:
        return None
    total = 0
    for file in files:
        with open(file, "rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            header = json.loads(handle.read(size))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def parameters(artifact: Artifact, depth: int = 0) -> int | None:
    """A model's parameter count: its safetensors for a model, its base's for an adapter or a quantized model
    (packed quantized weights do not count parameters)."""
    if artifact.kind in ("model", "reward-model"):
        found = safetensors_parameters(artifact.path, "model*.safetensors")
        if found is None and artifact.stage == "pretrain":
            found = stats_of(artifact).get("parameters")
        return found
    base = artifact.extra.get("base_model")
    parent = _find(artifact, base) if base and depth < 20 else None
    if parent is None:
        outside = _outside_model(base)
        return safetensors_parameters(outside, "model*.safetensors") if outside is not None else None
    return parameters(parent, depth + 1)


def hf_config(artifact: Artifact, depth: int = 0) -> dict[str, Any] | None:
    """The model's config.json (an adapter's is its base's)."""
    file = Path(artifact.path) / "config.json"
    if file.is_file():
        return json.loads(file.read_text())
    base = artifact.extra.get("base_model")
    parent = _find(artifact, base) if base and depth < 20 else None
    if parent is None:
        outside = _outside_model(base)
        return json.loads((outside / "config.json").read_text()) if outside is not None else None
    return hf_config(parent, depth + 1)


def _outside_model(entry: dict[str, Any] | None) -> Path | None:
    """The directory of a base model that is no artifact (a Hugging Face directory, or a Hub id's copy in the local
    cache), when it is still there with its config.json."""
    if not entry:
        return None
    if entry.get("kind") == "hub":
        from llmforge.model.loading import cached_snapshot

        directory = cached_snapshot(entry["path"])
    else:
        directory = Path(entry["path"])
    return directory if directory is not None and (directory / "config.json").is_file() else None


def find_reports(chain: list[Artifact]) -> list[Artifact]:
    """Eval reports next to any model of the chain (same parent directory) that evaluate one of them."""
    wanted = {a.fingerprint for a in chain}
    found: dict[str, Artifact] = {}
    for directory in dict.fromkeys(Path(a.path).resolve().parent for a in chain):
        try:
            siblings = sorted(directory.iterdir())
        except OSError:
            continue
        for sibling in siblings:
            manifest = sibling / MANIFEST
            if sibling.name.endswith(STAGING_SUFFIX) or not manifest.is_file():
                continue
            try:
                data = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if data.get("kind") != "eval-report" or not any(
                e.get("fingerprint") in wanted for e in evaluated_models(data.get("inputs", []))
            ):
                continue
            found.setdefault(data["fingerprint"], Artifact.open(sibling))
    return sorted(found.values(), key=lambda r: str(lookup(r.manifest, "provenance.finished", "")))


def evaluated_models(inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries of an eval report's inputs that are the models it evaluated."""
    return [
        e for e in inputs if e.get("role") == "model" or (not e.get("role") and e.get("kind") in MODEL_KINDS)
    ]
