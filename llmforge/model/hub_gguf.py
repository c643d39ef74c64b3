"""GGUF files on the Hugging Face Hub, named as llama.cpp's `-hf` names them: `org/name:TAG` picks the repository's
file of that type (`bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M`). Without a tag, a repository with GGUF files and no
config.json gives its only GGUF, or its Q4_K_M (llama.cpp's default) among several.

Offline (the default) the file comes from the local Hugging Face cache (`hf download org/name FILE` put it there);
with `llmforge --online` only the chosen file (all its parts, for a split GGUF) is downloaded. Vision projectors
(`mmproj-*`) are never the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llmforge.errors import InputError
from llmforge.model.gguf import later_part, part_names

REFERENCE = re.compile(r"^(?P<hub_id>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<tag>[\w.-]+)$")
DEFAULT_TAG = "Q4_K_M"


@dataclass
class HubGGUF:
    file: Path  # the model file (a split GGUF's first part) in the local Hugging Face cache
    hub_id: str
    name: str  # its path inside the repository
    commit: str
    revision: str | None = None


def reference(text: str) -> tuple[str, str] | None:
    """(hub id, tag) when `text` is `org/name:TAG`."""
    found = REFERENCE.match(text)
    return (found["hub_id"], found["tag"]) if found else None


def is_gguf_repository(names: list[str]) -> bool:
    """A repository of GGUF files rather than a transformers model (which may carry a GGUF beside its weights)."""
    return "config.json" not in names and bool(_models(names))


def pick(names: list[str], tag: str | None, hub_id: str, where: str) -> list[str]:
    """The files to fetch for `tag` among a repository's `names`: the model file first, then its other parts."""
    models = _models(names)
    if not models:
        raise InputError(f"{where}: no .gguf file")
    matching = [n for n in models if _has_tag(n, tag or DEFAULT_TAG)]
    if tag is None and len(models) == 1:
        matching = models
    if len(matching) != 1:
        listed = ", ".join(Path(n).name for n in models[:12]) + (", ..." if len(models) > 12 else "")
        if tag is None:
            problem = f"{len(models)} GGUF files and none is {DEFAULT_TAG}; name one as {hub_id}:TAG"
        elif matching:
            problem = f"{len(matching)} GGUF files are {tag}: {', '.join(matching)}"
        else:
            problem = f"no GGUF file is {tag}"
        raise InputError(f"{where}: {problem} (it has {listed})")
    return part_names(matching[0])


def find(text: str, revision: str | None = None, online: bool = False) -> HubGGUF | None:
    """The GGUF `text` names on the Hub (`org/name:TAG`, or `org/name` whose cached copy is a GGUF repository);
    None when it names no GGUF."""
    from llmforge.model.importing import HUB_ID
    from llmforge.model.loading import cached_snapshot

    tagged = reference(text)
    hub_id, tag = tagged if tagged else (text, None)
    if not HUB_ID.match(hub_id):
        return None
    if online and tagged:
        return download(hub_id, tag, revision)
    snapshot = cached_snapshot(hub_id, revision)
    if snapshot is None:
        if not tagged:
            return None
        at = f" at {revision}" if revision else ""
        raise InputError(f"{text}: no copy{at} in the local Hugging Face cache; `hf download {hub_id} --include "
                         f"'*{tag}*'` on a machine with a network, or `llmforge --online ...`, fetches it")  # fmt: skip
    names = _files(snapshot)
    if not tagged and not is_gguf_repository(names):
        return None
    where = f"{hub_id}@{snapshot.name[:12]} in the local Hugging Face cache"
    wanted = pick(names, tag, hub_id, where)
    missing = [n for n in wanted if not (snapshot / n).is_file()]
    if missing:
        raise InputError(f"{where}: {', '.join(missing)} missing (a download cut short?)")
    from llmforge.console import log

    log(
        f"{text}: {wanted[0]} from the local Hugging Face cache's copy, commit {snapshot.name[:12]} (offline)"
    )
    return HubGGUF(snapshot / wanted[0], hub_id, wanted[0], snapshot.name, revision)


def names_a_gguf(text: str) -> bool:
    """Whether `text` names a GGUF on the Hub (`org/name:TAG`, or a cached repository of GGUF files), without
    choosing the file."""
    from llmforge.model.loading import cached_snapshot

    if reference(text):
        return True
    snapshot = cached_snapshot(text)
    return snapshot is not None and is_gguf_repository(_files(snapshot))


def _files(snapshot: Path) -> list[str]:
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def download(hub_id: str, tag: str | None, revision: str | None, info=None) -> HubGGUF:
    """The GGUF file for `tag` (and its other parts) downloaded from the Hub into the local cache. `info`: the
    repository's record, where the caller has fetched it already."""
    from huggingface_hub import hf_hub_download

    from llmforge.console import log
    from llmforge.model.importing import check_downloaded, model_info

    info = info or model_info(hub_id, revision)
    names = sorted(s.rfilename for s in info.siblings or [])
    wanted = pick(names, tag, hub_id, f"{hub_id}@{info.sha[:12]}")
    log(f"downloading {', '.join(wanted)} from {hub_id} at commit {info.sha[:12]}")
    paths = [Path(hf_hub_download(hub_id, name, revision=revision or "main")) for name in wanted]
    return HubGGUF(check_downloaded(paths[0], hub_id, info.sha), hub_id, wanted[0], info.sha, revision)


def _models(names: list[str]) -> list[str]:
    """The model files among a repository's: .gguf, no vision projector, a split GGUF by its first part."""
    bases = ((name, Path(name).name) for name in names)
    return [name for name, base in bases
            if base.endswith(".gguf") and not base.lower().startswith("mmproj") and not later_part(base)]  # fmt: skip


def _has_tag(name: str, tag: str) -> bool:
    """Whether a file name carries `tag` as a whole word ("Q4_K" is not in "Q4_K_M"), ignoring case."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(tag)}(?![A-Za-z0-9_])", Path(name).name, re.I) is not None
