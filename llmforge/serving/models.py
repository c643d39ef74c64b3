"""What a server serves: the model artifact, or an adapter on its base, plus more adapters selectable by name.

Every served name maps to an artifact with a fingerprint, so an answer can be traced back through lineage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.errors import InputError
from llmforge.model.loading import ModelSource, resolve_model

STAGE = "serve"


@dataclass
class ServedModel:
    name: str  # what clients put in "model"
    source: ModelSource
    # the peft adapter answering for this name (adapter0, adapter1, ...: peft names are module names, which a
    # served name such as "sft-llama3.1" cannot be); None = the base model
    adapter: str | None = None

    @property
    def fingerprint(self) -> str:
        return self.source.fingerprint

    @property
    def chat_template(self) -> str | None:
        """An adapter's own chat template (trained with `--chat-template`, or a default its base lacked); None: the
        base tokenizer's."""
        file = Path(self.source.path) / "chat_template.jinja"
        return file.read_text() if self.adapter is not None and file.is_file() else None

    def can_chat(self, tokenizer) -> bool:
        """Whether it has a chat template to render conversations with: its own, or its tokenizer's."""
        return self.chat_template is not None or getattr(tokenizer, "chat_template", None) is not None

    def card(self) -> dict[str, Any]:
        """The /v1/models entry: OpenAI's fields plus where the model comes from."""
        entry = {"id": self.name, "object": "model", "created": 0, "owned_by": "llmforge",
                 "fingerprint": self.fingerprint, "kind": self.source.kind, "artifact": str(self.source.path)}  # fmt: skip
        if self.adapter is not None:
            entry["base_fingerprint"] = self.source.base.fingerprint
        return entry


@dataclass
class ServingPlan:
    base: ModelSource  # the weights loaded once
    models: list[ServedModel]

    @property
    def base_model(self) -> ServedModel:
        return next(m for m in self.models if m.adapter is None)

    @property
    def adapters(self) -> list[ServedModel]:
        return [m for m in self.models if m.adapter is not None]

    def by_name(self) -> dict[str, ServedModel]:
        return {m.name: m for m in self.models}


def default_name(source: ModelSource) -> str:
    if source.kind == "hub":
        return source.path
    path = Path(source.path)
    if (
        path.is_file()
    ):  # a .gguf file (a Hub cache's link to a blob: the link's name): without .gguf or -00001-of-N
        from llmforge.model.gguf import SPLIT_PART

        return SPLIT_PART.sub("", path.name).removesuffix(".gguf")
    return path.resolve().name


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """`name=PATH` pairs from `--adapter` (a bare PATH is named after its directory, even one with "=" in it, as
    sweeps name them: runs/lr=1e-4)."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or Path(spec).is_dir():
            name, path = Path(spec).resolve().name, spec
        if not name or not path:
            raise InputError(f"--adapter {spec!r}: expected NAME=PATH")
        if name in adapters:
            raise InputError(f"--adapter {spec!r}: the name {name!r} is given twice")
        adapters[name] = path
    return adapters


def plan(model: str | Path, served_name: str | None, adapters: dict[str, str]) -> ServingPlan:
    """Resolve the model argument and the extra adapters; check that every adapter fits the served base."""
    source = resolve_model(model, STAGE, gguf=True)
    if source.kind == "gguf" and adapters:
        raise InputError(f"--adapter: LoRA adapters are served on a transformers model, and {model} is a GGUF; serve "
                         "the model it was quantized from, or quantize each adapter (merged) to its own GGUF")  # fmt: skip
    if source.is_adapter:  # the adapter first: it is what was asked for; its base is served beside it
        base = source.base
        name = served_name or default_name(source)
        models = [ServedModel(name, source, adapter="adapter0"), ServedModel(default_name(base), base)]
    else:
        base = source
        models = [ServedModel(served_name or default_name(source), source)]
    for name, path in adapters.items():
        adapter = resolve_model(path, STAGE)
        if not adapter.is_adapter:
            raise InputError(f"--adapter {name}={path}: not an adapter ({adapter.kind}); serve it on its own")
        if adapter.base.fingerprint != base.fingerprint:
            raise InputError(
                f"--adapter {name}={path}: trained on {adapter.base.path} (fingerprint "
                f"{adapter.base.fingerprint[:12]}), not on the served base {base.path} ({base.fingerprint[:12]})"
            )
        models.append(ServedModel(name, adapter, adapter=f"adapter{len(models) - 1}"))
    names = [m.name for m in models]
    for name in names:
        if names.count(name) > 1:
            raise InputError(f"two served models would be called {name!r}; rename one with NAME=PATH")
    from llmforge.data.tokenizer import same_vocabulary
    from llmforge.model.loading import tokenizer_dir

    expected = base.tokenizer_fingerprint
    for served in models:
        found = served.source.tokenizer_fingerprint
        # an adapter may carry its own chat template (each served model renders with its own), not its own vocabulary
        vocabulary = same_vocabulary(tokenizer_dir(served.source), tokenizer_dir(base))
        if expected and found and found != expected and not vocabulary:
            raise InputError(
                f"{served.source.path}: its tokenizer differs from the base model's ({base.path})"
            )
    return ServingPlan(base=base, models=models)


def adapter_rank(source: ModelSource) -> int:
    config = json.loads((Path(source.path) / "adapter_config.json").read_text())
    return int(config.get("r", 8))


def load(serving: ServingPlan, dtype: str = "auto"):
    """The base model with every adapter attached under its served name (peft multi-adapter)."""
    from llmforge.model.loading import load_model, load_tokenizer

    model = load_model(serving.base, dtype=dtype)
    adapters = serving.adapters
    if adapters:
        from peft import PeftModel

        first, *others = adapters
        model = PeftModel.from_pretrained(model, first.source.path, adapter_name=first.adapter)
        for served in others:
            model.load_adapter(served.source.path, adapter_name=served.adapter)
    model.eval()
    return model, load_tokenizer(serving.base)
