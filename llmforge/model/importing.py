"""Bring an external model into a standard Hugging Face directory, with what its manifest needs to trace it.

Sources: a local Hugging Face directory, a `.gguf` file (or a directory holding exactly one, or a split GGUF's
parts; transformers dequantizes it), or a Hub id (`org/name`, a `revision`; the resolved commit is recorded;
`org/name:TAG` a repository's GGUF, see hub_gguf.py): offline from the local Hugging Face cache, online downloaded.
A directory inside that cache (`models--org--name/snapshots/COMMIT`) is recorded with its Hub id and commit too.
The output is a plain directory every library loads: config.json, safetensors, tokenizer
files, chat template, generation config.

`locate` finds the source and fingerprints its files' contents, so that lineage ends at the exact checkpoint;
`convert` loads and writes it. Models whose config or tokenizer names custom code (`auto_map`) are refused unless the
caller allows remote code explicitly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from llmforge.artifacts import MANIFEST, Artifact, InputRef
from llmforge.console import log, warn
from llmforge.errors import InputError, LLMForgeError
from llmforge.files import model_file_sha256
from llmforge.model import gguf, hub_gguf
from llmforge.model.gguf import FILE_NAME as GGUF_FILE

Dtype = Literal["source", "bf16", "fp32"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a model needs from a Hub repository besides its weights: configs, tokenizer files, the chat template.
HUB_FILES = ["*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]
WEIGHTS = re.compile(r"^model(-\d+-of-\d+)?\.safetensors(\.index\.json)?$")
LEGACY_WEIGHTS = re.compile(r"^pytorch_model(-\d+-of-\d+)?\.bin(\.index\.json)?$")
# A snapshot in the Hugging Face cache: HF_HUB_CACHE/models--ORG--NAME/snapshots/COMMIT ("--" is not allowed in names)
CACHED_SNAPSHOT = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/([0-9a-f]{40})$")
GGUF_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "pad_token": "padding_token_id",
                       "unk_token": "unknown_token_id"}  # fmt: skip
GGUF_CONTROL, GGUF_USER_DEFINED = 3, 4  # llama.cpp's token types (tokenizer.ggml.token_type)


@dataclass
class Source:
    """An external model found on disk (downloaded first for a Hub id), not yet converted."""

    description: str  # what the user named: a path, or org/name@revision
    kind: str  # hf-dir | gguf | hub
    path: Path  # the directory, or the .gguf file
    fingerprint: str  # sha256 over the source files' contents
    files: int
    bytes: int
    hub_id: str | None = None
    revision: str | None = None  # as asked
    commit: str | None = None  # as resolved on the Hub
    metadata: dict[str, Any] | None = None  # a GGUF file's general.* fields (name, organization, license...)
    # the gguf artifact (`quantize --method gguf-*`) the file is in, for lineage
    artifact: Artifact | None = None

    def ref(self) -> InputRef:
        """The import's input in the manifest: a raw file/directory, the Hub repository at its commit, or the gguf
        artifact the file belongs to (so lineage walks on through quantize)."""
        if self.artifact is not None:
            return self.artifact.ref()
        detail: dict[str, Any] = {"files": self.files, "bytes": self.bytes, "format": self.kind}
        if self.hub_id:
            detail.update(hub_id=self.hub_id, revision=self.revision, commit=self.commit)
        path = self.hub_id if self.kind == "hub" else str(Path(self.path).resolve())
        return InputRef(path=path, kind="hub" if self.kind == "hub" else "raw", fingerprint=self.fingerprint,
                        detail=detail)  # fmt: skip

    def record(self) -> dict[str, Any]:
        """What the manifest's `extra.source` holds (the card reads `hub_id` for `base_model`)."""
        record = {
            name: value for name, value in asdict(replace(self, artifact=None)).items() if name != "artifact"
        }
        record["path"] = str(Path(self.path).resolve()) if self.kind != "hub" else str(self.path)
        return record


def online() -> bool:
    return os.environ.get("LLMFORGE_ONLINE") == "1"


def locate(source: str | Path, revision: str | None = None, allow_online: bool | None = None,
           trust_remote_code: bool = False) -> Source:  # fmt: skip
    """Find what `source` names and fingerprint it; Hub ids are downloaded (online only)."""
    allow_online = online() if allow_online is None else allow_online
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise InputError(f"{path}: a model file must be .gguf; other models are Hugging Face directories")
        if revision:
            raise InputError(f"--revision {revision}: only for Hub ids; {path} is a local file")
        parts = gguf.split_parts(path)
        metadata = gguf_metadata(path)
        hub_id = metadata.get("source.huggingface.repository") or metadata.get("base_model.0.repo_url")
        hub_id = str(hub_id).removeprefix("https://huggingface.co/") if hub_id else None
        return Source(description=text, kind="gguf", path=path, fingerprint=gguf.fingerprint(path), files=len(parts),
                      bytes=sum(p.stat().st_size for p in parts), hub_id=hub_id, metadata=metadata)  # fmt: skip
    if path.is_dir():
        if revision:
            raise InputError(f"--revision {revision}: only for Hub ids; {path} is a local directory")
        if (path / MANIFEST).is_file():
            artifact = Artifact.open(path)
            if artifact.kind == "gguf":  # quantize's GGUF, taken back as a model (dequantized)
                source = locate(path / GGUF_FILE)
                source.artifact = artifact
                return source
            raise InputError(f"{path}: already an llmforge artifact; every stage takes it as it is")
        if not (path / "config.json").is_file():
            ggufs = [g for g in sorted(path.glob("*.gguf")) if not gguf.later_part(g.name)]
            if len(ggufs) == 1:
                return locate(ggufs[0])
            found = f"{len(ggufs)} .gguf files; name one" if ggufs else "no config.json and no .gguf file"
            raise InputError(f"{path}: not a Hugging Face model directory ({found})")
        check_remote_code(path, trust_remote_code, text)
        if cached := CACHED_SNAPSHOT.search(path.resolve().as_posix()):
            org, name, commit = cached.groups()
            return _directory_source(path, text, "hf-dir", hub_id=f"{org}/{name}", commit=commit)
        return _directory_source(path, text, "hf-dir")
    if not text.startswith((".", "/", "~")) and (found := hub_gguf.find(text, revision, allow_online)):
        return _hub_gguf_source(found, text)
    if text.startswith((".", "/", "~")) or not HUB_ID.match(text):
        raise InputError(f"{text}: no such file or directory")
    if not allow_online:
        from llmforge.model.loading import cached_snapshot

        snapshot = cached_snapshot(text, revision)
        if snapshot is None:
            at = f" at {revision}" if revision else ""
            raise InputError(f"{text}: no such directory, and no copy{at} in the local Hugging Face cache; to "
                             "download it, run `llmforge --online import ...` (offline by default)")  # fmt: skip
        return _cached(text, revision, snapshot, trust_remote_code)
    return _download(text, revision, trust_remote_code)


def _directory_source(
    path: Path, description: str, kind: str, names: list[str] | None = None, **hub: Any
) -> Source:
    """Fingerprint a directory (or the named files in it) by relative paths and contents; symlinks are followed."""
    if names is None:
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                       if p.is_file() and not p.name.startswith("."))  # fmt: skip
    digest, total = hashlib.sha256(), 0
    for name in names:
        digest.update(name.encode() + b"\0" + model_file_sha256(path / name).encode())
        total += (path / name).stat().st_size
    return Source(description=description, kind=kind, path=path, fingerprint=digest.hexdigest(), files=len(names),
                  bytes=total, **hub)  # fmt: skip


def model_info(hub_id: str, revision: str | None):
    """The Hub's record of a repository at `revision` (its commit, its files); errors in one line."""
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return HfApi().model_info(hub_id, revision=revision)
    except RepositoryNotFoundError:
        raise InputError(f"{hub_id}: no such model on the Hugging Face Hub (or it is private: log in with "
                         "`hf auth login`)") from None  # fmt: skip
    except RevisionNotFoundError:
        raise InputError(f"{hub_id}: no revision {revision!r} (a branch, tag or commit)") from None
    except HfHubHTTPError as exc:
        raise InputError(f"{hub_id}: the Hub refused ({exc})") from None
    except (OSError, httpx.TransportError) as exc:  # no network, a proxy, HF_HUB_OFFLINE=1
        raise LLMForgeError(f"{hub_id}: cannot reach the Hugging Face Hub ({exc})") from None


def _download(hub_id: str, revision: str | None, trust_remote_code: bool) -> Source:
    """Resolve `revision` to a commit, check for remote code, then download that commit's model files."""
    from huggingface_hub import hf_hub_download, snapshot_download

    info = model_info(hub_id, revision)
    commit = info.sha
    names = sorted(s.rfilename for s in info.siblings or [])
    if hub_gguf.is_gguf_repository(names):  # its only GGUF, or its Q4_K_M
        return _hub_gguf_source(hub_gguf.download(hub_id, None, revision, info), hub_id)
    if "config.json" not in names:
        raise InputError(f"{hub_id}@{commit[:12]}: no config.json; not a transformers model repository")
    for name in ("config.json", "tokenizer_config.json"):  # read before any code or weights are fetched
        if name in names:
            config_dir = Path(hf_hub_download(hub_id, name, revision=commit)).parent
    check_remote_code(config_dir, trust_remote_code, hub_id)
    wanted = _model_files(names, f"{hub_id}@{commit[:12]}", trust_remote_code)
    log(f"downloading {hub_id} at commit {commit[:12]}" + (f" ({revision})" if revision else ""))
    directory = Path(snapshot_download(hub_id, revision=revision or "main", allow_patterns=wanted))
    return _hub_source(check_downloaded(directory, hub_id, commit), hub_id, revision, commit, wanted)


def check_downloaded(path: Path, hub_id: str, commit: str) -> Path:
    """Downloads name the revision, not the commit it resolved to, so that the cache records the name (refs/main,
    as `hf download` does) and later offline runs find the copy by it; the files must still be that commit's."""
    if f"/snapshots/{commit}/" not in f"{path.as_posix()}/":
        raise LLMForgeError(f"{hub_id}: the repository moved past commit {commit[:12]} during the download; run "
                            "the command again")  # fmt: skip
    return path


def _cached(hub_id: str, revision: str | None, snapshot: Path, trust_remote_code: bool) -> Source:
    """A Hub id offline: its snapshot in the local Hugging Face cache, recorded as the download would be."""
    commit = snapshot.name
    names = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    where = f"{hub_id}@{commit[:12]} in the local Hugging Face cache"
    if "config.json" not in names:
        raise InputError(f"{where}: no config.json; not a transformers model, or not downloaded whole")
    check_remote_code(snapshot, trust_remote_code, hub_id)
    wanted = _model_files(names, where, trust_remote_code)
    log(f"{hub_id} at commit {commit[:12]}" + (f" ({revision})" if revision else "") + ": the local Hugging Face "
        "cache's copy (offline)")  # fmt: skip
    return _hub_source(snapshot, hub_id, revision, commit, wanted)


def _hub_gguf_source(found, description: str) -> Source:
    """A GGUF file from a Hub repository: the file's source, recorded with the repository and commit."""
    return replace(locate(found.file), description=description, hub_id=found.hub_id, revision=found.revision,
                   commit=found.commit)  # fmt: skip


def _hub_source(directory: Path, hub_id: str, revision: str | None, commit: str, wanted: list[str]) -> Source:
    """A Hub repository's snapshot at `commit`, downloaded or cached: the same files give the same fingerprint."""
    description = f"{hub_id}@{revision}" if revision else hub_id
    return _directory_source(directory, description, "hub", sorted(set(wanted)), hub_id=hub_id, revision=revision,
                             commit=commit)  # fmt: skip


def _model_files(names: list[str], where: str, trust_remote_code: bool) -> list[str]:
    """Of a repository's files, the weights transformers loads (not the other copies some repositories carry:
    consolidated.safetensors, original/...) and the configuration and tokenizer files beside them."""
    from fnmatch import fnmatch

    weights = [n for n in names if WEIGHTS.match(n)] or [n for n in names if LEGACY_WEIGHTS.match(n)]
    if not weights:
        raise InputError(f"{where}: no model*.safetensors or pytorch_model*.bin weights")
    patterns = HUB_FILES + (["*.py"] if trust_remote_code else [])
    return weights + [n for n in names if "/" not in n and any(fnmatch(n, p) for p in patterns)]


def check_remote_code(directory: Path, allowed: bool, name: str) -> None:
    """Custom modelling or tokenizer code (an `auto_map`) runs on load: only when the user allowed it."""
    for file in ("config.json", "tokenizer_config.json"):
        try:
            auto_map = json.loads((directory / file).read_text()).get("auto_map")
        except (OSError, ValueError, AttributeError):
            continue
        if not auto_map:
            continue
        if not allowed:
            raise InputError(f"{name}: its {file} loads custom code from the repository (auto_map: "
                             f"{', '.join(sorted(auto_map))}); read that code, then pass --trust-remote-code "
                             "to run it")  # fmt: skip
        warn(f"{name}: running the model's own code ({file} auto_map), as --trust-remote-code allows")


def convert(
    source: Source, out: Path, dtype: Dtype = "source", trust_remote_code: bool = False
) -> dict[str, Any]:
    """Load `source` with transformers and write it to `out` as a Hugging Face directory; returns its stats."""
    import torch

    from llmforge.model.loading import save_model_payload

    torch_dtype = {"source": "auto", "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    if source.kind == "gguf":
        model, tokenizer = _load_gguf(source.path, torch_dtype, own_tokenizer(source))
    else:
        model, tokenizer = _load_directory(source, torch_dtype, trust_remote_code)
    if tokenizer.chat_template is None:
        log("the model has no chat template (a base model?); chat fine-tuning will state the default it uses")
    save_model_payload(model, tokenizer, out)
    # the source's own sampling settings win over ours (a gguf artifact keeps its model's beside the file)
    settings = own_tokenizer(source) if source.kind == "gguf" else Path(source.path)
    if settings is not None and (settings / "generation_config.json").is_file():
        from transformers import GenerationConfig

        GenerationConfig.from_pretrained(settings).save_pretrained(out)
    config = model.config
    return {
        "format": source.kind,
        "architecture": (config.architectures or [type(model).__name__])[0],
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(model.dtype).removeprefix("torch."),
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "vocab_size": len(tokenizer),
        "context": getattr(config, "max_position_embeddings", None),
        "chat_template": tokenizer.chat_template is not None,
        "weights_bytes": sum(f.stat().st_size for f in out.glob("*.safetensors")),
    }


def _load_directory(source: Source, dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=dtype, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"{source.description}: transformers cannot load it as a causal LM ({detail})"
        ) from None
    return model, tokenizer


def own_tokenizer(source: Source) -> Path | None:
    """The directory holding a gguf artifact's original tokenizer (quantize copies it beside model.gguf), if any."""
    directory = Path(source.path).parent
    found = source.artifact is not None and (directory / "tokenizer_config.json").is_file()
    return directory if found else None


def _load_gguf(file: Path, dtype, tokenizer_dir: Path | None = None):
    """A GGUF checkpoint dequantized by transformers, made saveable: save_pretrained refuses a model that carries
    the GGUF quantization marker, and the weights are plain tensors by now, so the marker goes. The tokenizer is
    the original one from `tokenizer_dir` when given, else transformers' rebuild from the GGUF's vocabulary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"dequantizing {file.name} with transformers")
    if tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        tokenizer = gguf_tokenizer(file)
    with _transformers_reads(file), tempfile.TemporaryDirectory(prefix="llmforge-gguf-") as scratch:
        whole, parts = file, len(gguf.split_parts(file))
        if parts > 1:  # transformers reads one file: the parts merged first
            whole = Path(scratch) / "merged.gguf"
            log(f"merging {file.name}'s {parts} parts into one file for transformers")
            gguf.merge_parts(file, whole)
        model = AutoModelForCausalLM.from_pretrained(whole.parent, gguf_file=whole.name)
    if tokenizer_dir is None:  # GGUF does not carry it; transformers' default warns on long texts
        context = getattr(model.config, "max_position_embeddings", None)
        tokenizer.model_max_length = context or tokenizer.model_max_length
    return _saveable(model, dtype), tokenizer


def gguf_tokenizer(file: Path):
    """transformers' rebuild of the tokenizer from a GGUF's vocabulary, mended: the file's special tokens, its
    control and user-defined tokens, the byte-level decoder and split regex (see the two helpers)."""
    from transformers import AutoTokenizer

    with _transformers_reads(file):
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    fields = _gguf_reader(file).fields  # parsed once: about 1.5 s for a 49k vocabulary
    _fix_gguf_special_tokens(tokenizer, fields)
    tokenizer = _byte_level_tokenizer(tokenizer, fields)
    # GGUF does not carry this setting; transformers' default for it warns on every decode
    tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def cached_gguf_tokenizer(file: Path, fingerprint: str) -> tuple[Any, Path | None]:
    """gguf_tokenizer, kept in $LLMFORGE_CACHE/gguf-tokenizers: a rebuild takes seconds (about 10 for a 49k
    vocabulary), and serve, chat and eval of a file rebuild it at every start. Keyed by the file's content
    (`fingerprint`: its sha256) and the versions of the code that rebuilds it. Also the directory it is saved in, for
    tools that load a tokenizer by path (None where the cache cannot be written: then it is rebuilt every time)."""
    from importlib.metadata import version

    from transformers import AutoTokenizer

    from llmforge.files import cache_dir, canonical_hash, discard_directory, publish_directory

    key = {"format": 1, "gguf": fingerprint, "transformers": version("transformers"),
           "tokenizers": version("tokenizers")}  # fmt: skip
    root = cache_dir("gguf-tokenizers")
    final = root / canonical_hash(key)[:32]
    if final.is_dir():
        try:
            tokenizer = AutoTokenizer.from_pretrained(final)
            log(f"{file.name}'s tokenizer: rebuilt from its vocabulary before, cached in {final}")
            return tokenizer, final
        except (OSError, ValueError) as exc:  # a damaged entry: set aside and rebuilt
            warn(f"{final}: the cached tokenizer does not load ({exc}); rebuilding it")
            discard_directory(final)
    log(f"rebuilding the tokenizer from {file.name}'s vocabulary")
    tokenizer = gguf_tokenizer(file)
    staging = root / f"{final.name}.building-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        # whole before it appears under the key, so no reader sees half of it
        tokenizer.save_pretrained(staging)
        publish_directory(staging, final)
    except OSError as exc:
        if staging.is_dir():
            discard_directory(staging)
        warn(f"the tokenizer cache {root} cannot be written ({exc.strerror}); {file.name}'s tokenizer is rebuilt "
             "at every start")  # fmt: skip
        return tokenizer, None
    return tokenizer, final


@contextlib.contextmanager
def _transformers_reads(file: Path):
    try:
        yield
    except (OSError, ValueError, KeyError, NotImplementedError, ImportError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{file}: transformers cannot load this GGUF file ({detail})") from None


def _saveable(model, dtype):
    model.hf_quantizer = None
    del model.config.quantization_config
    if dtype != "auto":  # dequantized weights are float32
        model.to(dtype)
    return model.eval()


def _byte_level_tokenizer(tokenizer, fields):
    """transformers rebuilds a GGUF's byte-level BPE vocabulary with a SentencePiece-style decoder that drops the
    first space of every decoded text, and splits with GPT-2's regex: the decoder becomes the byte-level one, and a
    vocabulary llama.cpp knows as Qwen 2's (which llmforge's own tokenizers are) splits with that regex again."""
    import tempfile

    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer

    from llmforge.data.tokenizer import split_pre_tokenizer
    from llmforge.model.gguf import byte_level

    field = fields.get("tokenizer.ggml.pre")
    pre = bytes(field.parts[-1]).decode() if field is not None else None
    with tempfile.TemporaryDirectory(prefix="llmforge-tokenizer-") as scratch:
        tokenizer.save_pretrained(scratch)
        saved = Path(scratch) / "tokenizer.json"
        text = saved.read_text(encoding="utf-8")
        if byte_level(text) == text:
            return tokenizer  # not a byte-level vocabulary: left as transformers made it
        fixed = json.loads(byte_level(text))
        if pre == "qwen2":
            splitter = Tokenizer(models.BPE())
            splitter.pre_tokenizer = split_pre_tokenizer()
            fixed["pre_tokenizer"] = json.loads(splitter.to_str())["pre_tokenizer"]
        saved.write_text(json.dumps(fixed, ensure_ascii=False), encoding="utf-8")
        return AutoTokenizer.from_pretrained(scratch)


def gguf_metadata(file: Path) -> dict[str, Any]:
    """The `general.*` fields of a GGUF file: what it says about itself (name, organization, license, source)."""
    reader = _gguf_reader(file)
    found = {}
    for key, field in reader.fields.items():
        if key.startswith("general.") and key != "general.quantization_version":
            try:
                found[key.removeprefix("general.")] = field.contents()
            except (ValueError, IndexError):  # a field gguf cannot decode: not worth failing the import for
                continue
    return found


def _gguf_reader(file: Path):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise InputError(f"{file}: reading GGUF files needs the gguf package: pip install gguf") from None
    try:
        return GGUFReader(file)
    except (ValueError, OSError) as exc:
        raise InputError(f"{file}: not a readable GGUF file ({exc})") from None


def _fix_gguf_special_tokens(tokenizer, fields) -> None:
    """Take the special tokens from the GGUF metadata: transformers' GGUF tokenizer converter can name the BOS
    token as EOS (transformers 5.17 does for GPT-2-style vocabularies: SmolLM2's EOS would be <|im_start|>), and
    it leaves out the added tokens, so `<think>` or `<tool_call>` would be split into text pieces: the GGUF's
    control tokens come back as special tokens and its user-defined ones as added tokens, with their own ids."""
    from tokenizers import AddedToken

    types, tokens = fields.get("tokenizer.ggml.token_type"), fields.get("tokenizer.ggml.tokens")
    if types is not None and tokens is not None:
        kinds = [int(types.parts[i][0]) for i in types.data]
        added = {kind: [AddedToken(bytes(tokens.parts[tokens.data[i]]).decode("utf-8", errors="replace"),
                                   special=kind == GGUF_CONTROL, normalized=False)
                        for i, found in enumerate(kinds) if found == kind]
                 for kind in (GGUF_CONTROL, GGUF_USER_DEFINED)}  # fmt: skip
        tokenizer.add_tokens(added[GGUF_CONTROL], special_tokens=True)
        tokenizer.add_tokens(added[GGUF_USER_DEFINED])
    for attribute, key in GGUF_SPECIAL_TOKENS.items():
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is None:
            continue
        token = tokenizer.convert_ids_to_tokens(int(field.contents()))
        if getattr(tokenizer, attribute) != token:
            setattr(tokenizer, attribute, token)
