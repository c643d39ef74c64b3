"""Model artifacts <-> transformers: find what a path holds, load it, save a trained model as an artifact payload.

A model input can be a model, adapter or quantized-model artifact, a plain local Hugging Face directory, or a hub
id: one the local Hugging Face cache holds (`hf download` on a machine with a network, then offline here), or any
with `llmforge --online`. Adapters resolve to their base model through the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.artifacts import MANIFEST, Artifact, InputRef, describe_kind
from llmforge.data.tokenizer import tokenizer_fingerprint
from llmforge.errors import InputError
from llmforge.files import model_file_sha256
from llmforge.model import hub_gguf
from llmforge.model.gguf import fingerprint as gguf_fingerprint
from llmforge.registry import MODEL_KINDS

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)
# A tokenizer's other files: SentencePiece models, GPT-2 style vocabularies and added tokens (models that ship
# no tokenizer.json load from these)
TOKENIZER_SIDE_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "tekken.json")


@dataclass
class ModelSource:
    """Where a model comes from and how to load it."""

    path: str  # local directory, hub id, or a .gguf file (kind gguf, no artifact)
    kind: str  # model | adapter | quantized-model | gguf | hf-dir | hub
    fingerprint: str
    artifact: Artifact | None = None
    base: ModelSource | None = None  # adapters: the model they apply to

    @property
    def is_adapter(self) -> bool:
        return self.kind == "adapter" or (
            self.kind == "hf-dir" and (Path(self.path) / "adapter_config.json").is_file()
        )

    def ref(self) -> InputRef:
        kind = {"hf-dir": "raw"}.get(self.kind, self.kind)
        stage = self.artifact.stage if self.artifact else None
        return InputRef(path=self.path, kind=kind, fingerprint=self.fingerprint, stage=stage)

    @property
    def tokenizer_fingerprint(self) -> str | None:
        if self.artifact is not None and "tokenizer_fingerprint" in self.artifact.extra:
            return self.artifact.extra["tokenizer_fingerprint"]
        if self.kind != "hub" and (Path(self.path) / "tokenizer.json").is_file():
            return tokenizer_fingerprint(self.path)
        return None


def hash_directory(path: Path) -> str:
    """Content fingerprint of a plain directory (a Hugging Face model not made by llmforge)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + model_file_sha256(file).encode())
    return digest.hexdigest()


def resolve_model(
    path_or_id: str | Path, stage: str, gguf: bool = False, reward: bool = False
) -> ModelSource:
    """What a model argument points at; errors say what was expected. `gguf`: the stage also runs a gguf artifact
    or a .gguf file (serve, with llama.cpp); `reward`: it also takes a reward-model artifact (reward, to train one
    further)."""
    text = str(path_or_id)
    path = Path(text)
    if (path / MANIFEST).is_file():
        artifact = Artifact.open(path)
        if artifact.kind == "gguf" and gguf:
            return _gguf_source(artifact, stage)
        if artifact.kind == "gguf":
            raise InputError(f"{path}: a GGUF file for llama.cpp, Ollama or LM Studio (made by `llmforge "
                             f"quantize`); {stage} loads models through transformers: `llmforge import {path} -o "
                             "DIR` takes it back as a model (dequantized)")  # fmt: skip
        if artifact.kind not in MODEL_KINDS and not (reward and artifact.kind == "reward-model"):
            raise InputError(
                f"{stage} needs a model, adapter or quantized-model artifact; {path} is "
                f"{describe_kind(artifact.kind)} (made by `llmforge {artifact.stage}`)"
            )
        source = ModelSource(
            path=str(path), kind=artifact.kind, fingerprint=artifact.fingerprint, artifact=artifact
        )
        check_model_files(path, adapter=artifact.kind == "adapter")
        check_weights(source)
        if artifact.kind == "adapter":
            source.base = _adapter_base(artifact, stage)
        return source
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            check_model_files(path, adapter=True)
            base_id = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
            source = ModelSource(path=str(path), kind="hf-dir", fingerprint=hash_directory(path))
            check_weights(source)
            source.base = resolve_model(base_id, stage)
            return source
        if not (path / "config.json").is_file():
            raise InputError(
                f"{path}: neither an llmforge artifact nor a Hugging Face model (no config.json)"
            )
        check_model_files(path, adapter=False)
        source = ModelSource(path=str(path), kind="hf-dir", fingerprint=hash_directory(path))
        check_weights(source)
        return source
    # `eval M --chat-template T.jinja`: eval's --chat-template is a switch, so the file arrives as a second model
    if path.suffix in (".jinja", ".j2"):
        raise InputError(f"{path}: a chat template file, not a model (eval's --chat-template takes no file: it turns "
                         "the tokenizer's own template on; put another template in the model's chat_template.jinja)")  # fmt: skip
    if path.is_file() and path.suffix == ".gguf":
        # a GGUF made elsewhere (llama.cpp's tools, a Hub download): serve rebuilds its tokenizer from it
        if gguf:
            return ModelSource(path=str(path), kind="gguf", fingerprint=gguf_fingerprint(path))
        raise InputError(f"{path}: a GGUF file; {stage} loads models through transformers: `llmforge import {path} "
                         "-o DIR` takes it back as a model (dequantized)")  # fmt: skip
    if path.exists():
        raise InputError(f"{path}: a model must be a directory")
    if text.startswith((".", "/")) or text.count("/") != 1:
        raise InputError(f"{text}: no such model directory")
    if not gguf and hub_gguf.names_a_gguf(text):
        raise InputError(f"{text}: a GGUF on the Hub; {stage} loads models through transformers: `llmforge import "
                         f"{text} -o DIR` takes it as a model (dequantized)")  # fmt: skip
    if gguf and (found := hub_gguf.find(text, online=os.environ.get("LLMFORGE_ONLINE") == "1")):
        return ModelSource(path=str(found.file), kind="gguf", fingerprint=gguf_fingerprint(found.file))
    identity = f"hub:{text}"
    if os.environ.get("LLMFORGE_ONLINE") != "1":
        snapshot = cached_snapshot(text)
        if snapshot is None:
            raise InputError(f"{text}: no such model directory, and no copy in the local Hugging Face cache; "
                             "`llmforge --online` downloads hub ids")  # fmt: skip
        from llmforge.console import log

        log(f"{text}: the local Hugging Face cache's copy, commit {snapshot.name[:12]} (offline)")
        identity += f"@{snapshot.name}"  # a newer download of the model is another input
    return ModelSource(path=text, kind="hub", fingerprint=hashlib.sha256(identity.encode()).hexdigest())


def _gguf_source(artifact: Artifact, stage: str) -> ModelSource:
    """A gguf artifact as a model source: model.gguf, with the original tokenizer and generation config beside it."""
    if not (artifact.path / "tokenizer_config.json").is_file():
        raise InputError(f"{artifact.path}: this GGUF was made without its tokenizer beside it (llmforge before "
                         f"2026-12-05), which {stage} reads; make it again with `llmforge quantize ... --force`")  # fmt: skip
    source = ModelSource(
        path=str(artifact.path), kind="gguf", fingerprint=artifact.fingerprint, artifact=artifact
    )
    check_weights(source)
    return source


def cached_snapshot(hub_id: str, revision: str | None = None) -> Path | None:
    """The local Hugging Face cache's copy of `hub_id` at `revision` (a branch or tag it has seen, or a full
    commit; none: main), or None; transformers loads it offline from there. Read from the cache's layout
    (models--ORG--NAME/refs/REVISION naming snapshots/COMMIT) rather than by snapshot_download, which refuses a
    snapshot its cached file listing says is partial, as every `hf download --include ...` leaves it; what a stage
    needs from it is checked by the stage."""
    import re

    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=hub_id, repo_type="model")
    ref = storage / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else revision
    if commit is None or not re.fullmatch(r"[0-9a-f]{40}", commit):
        return None
    snapshot = storage / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def check_model_files(path: Path, adapter: bool) -> None:
    """The configuration transformers (or peft) needs is there and names a model type, checked before anything
    loads it (transformers would fail later with an error that names no file)."""
    name = "adapter_config.json" if adapter else "config.json"
    file = path / name
    if not file.is_file():
        what = "a peft adapter" if adapter else "a Hugging Face model"
        raise InputError(f"{path}: not {what} directory (no {name})")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{file}: the model's configuration cannot be read ({exc})") from None
    key = "peft_type" if adapter else "model_type"
    if not isinstance(config, dict) or not config.get(key):
        raise InputError(f"{file}: no '{key}' in the model's configuration; it is not a transformers "
                         f"{'adapter' if adapter else 'model'} config")  # fmt: skip


def check_weights(source: ModelSource) -> None:
    """Cheap checks of a model's weight files before anything loads them: every safetensors header parses and
    fits its file (safe_open reads the header only), and an artifact's weight files have the sizes its manifest
    records. A flipped byte inside the tensor data passes both; `llmforge show --verify` re-hashes every file."""
    from safetensors import SafetensorError, safe_open

    directory = Path(source.path)
    for weights in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(weights), "numpy"):
                pass
        except (SafetensorError, OSError) as exc:
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"{weights}: the weights cannot be read, the file is truncated or corrupt "
                             f"({detail})") from None  # fmt: skip
    if source.artifact is not None:
        source.artifact.check_sizes(lambda name: name.endswith(WEIGHT_SUFFIXES))


def _adapter_base(adapter: Artifact, stage: str) -> ModelSource:
    base = adapter.extra.get("base_model")
    if not base:
        raise InputError(f"{adapter.path}: adapter manifest does not name its base model")
    for candidate in (
        (adapter.path / base["relpath"]).resolve() if base.get("relpath") else None,
        base["path"],
    ):
        if candidate is not None and Path(candidate).exists():
            source = resolve_model(candidate, stage)
            if source.fingerprint != base["fingerprint"]:
                raise InputError(
                    f"{adapter.path}: its base model {candidate} has changed since the adapter was trained "
                    f"(fingerprint {base['fingerprint'][:12]} -> {source.fingerprint[:12]})"
                )
            return source
    if base.get("kind") == "hub":
        return resolve_model(base["path"], stage)
    raise InputError(f"{adapter.path}: its base model {base['path']} is missing")


def base_model_entry(source: ModelSource, out: Path) -> dict[str, Any]:
    """What an adapter artifact records about its base (manifest `extra.base_model`)."""
    entry = {"path": str(Path(source.path).resolve()) if source.kind != "hub" else source.path,
             "kind": source.kind, "fingerprint": source.fingerprint}  # fmt: skip
    if source.kind != "hub":
        entry["relpath"] = os.path.relpath(Path(source.path).resolve(), Path(out).resolve())
    return entry


def local_path(source: ModelSource) -> str:
    """Where a model's files are: its directory; for a Hub id, the local cache's snapshot once it holds the
    config and the tokenizer (the id itself before: online, transformers fills a snapshot file by file)."""
    if source.kind == "hub":
        snapshot = cached_snapshot(source.path)
        if (
            snapshot is not None
            and (snapshot / "config.json").is_file()
            and any((snapshot / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
        ):
            return str(snapshot)
        return source.path
    return source.path


def tokenizer_dir(source: ModelSource) -> str:
    """Adapters carry their tokenizer too; fall back to the base when an outside adapter does not."""
    if source.kind != "hub" and (Path(source.path) / "tokenizer.json").is_file():
        return source.path
    if source.base is not None:
        return tokenizer_dir(source.base)
    return local_path(source)


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir(source))


def load_model(source: ModelSource, dtype: Any = "auto", device: str | None = None, merge: bool = False,
               trainable_adapter: bool = False, score_head: bool = False):  # fmt: skip
    """A transformers causal LM for `source`; adapters are applied on their base (and merged if `merge`).
    `score_head`: the same decoder under a one-output score head instead of the LM head (a reward model:
    AutoModelForSequenceClassification, num_labels 1; the head starts random unless the checkpoint has one)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if source.is_adapter:
        from peft import PeftConfig, PeftModel

        base = load_model(source.base, dtype=dtype, device=device, score_head=score_head)
        settings = PeftConfig.from_pretrained(source.path)
        if score_head:  # a causal LM's adapter on the decoder under a score head: peft's task-free wrapper
            settings.task_type = None
        model = PeftModel.from_pretrained(base, source.path, config=settings, is_trainable=trainable_adapter)
        return model.merge_and_unload() if merge else model
    from safetensors import SafetensorError

    try:
        if score_head:
            with quiet_new_head():
                model = AutoModelForSequenceClassification.from_pretrained(
                    source.path, dtype=dtype, num_labels=1
                )
        else:
            model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype)
    except (OSError, SafetensorError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{source.path}: cannot load the model ({detail})") from None
    if device:
        model.to(device)
    return model


@contextlib.contextmanager
def quiet_new_head():
    """transformers reports the score head a causal LM's checkpoint lacks (and the LM head it leaves unused) as a
    load problem; for a reward model started from a language model that is the plan, not news."""
    import transformers

    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.utils.logging.set_verbosity(verbosity)


def save_model_payload(model, tokenizer, directory: Path, generation: dict[str, Any] | None = None) -> None:
    """Write a Hugging Face directory: config, safetensors, tokenizer with chat template, generation config."""
    from transformers import GenerationConfig

    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    if not hasattr(model, "peft_config"):
        stop_ids = [tokenizer.eos_token_id]
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end not in stop_ids:
            stop_ids.append(im_end)
        settings = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": stop_ids,
                    "pad_token_id": tokenizer.pad_token_id, "do_sample": True, "temperature": 0.7,
                    "top_p": 0.9, "max_new_tokens": 256}  # fmt: skip
        settings.update(generation or {})
        GenerationConfig(**settings).save_pretrained(directory)
