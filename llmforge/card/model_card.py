"""The model card: Hugging Face front matter, what the model is and how to load it, each stage of its training
chain, eval scores, and the card of the data it was trained on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmforge.artifacts import Artifact
from llmforge.card.data_card import data_card
from llmforge.card.evaluation import eval_reports, evaluation
from llmforge.card.front_matter import dataset_names, model_card_data, with_front_matter
from llmforge.card.lineage import hf_config, model_chain, parameters, safetensors_parameters
from llmforge.card.markdown import Markdown, fmt, lineage_table, lookup, name_of, show_path
from llmforge.card.stages import stats_of
from llmforge.card.training import STAGE_ROWS, data_input, generic_rows
from llmforge.registry import DATA_KINDS, MODEL_KINDS, POSTTRAIN_STAGES


def model_card(artifact: Artifact, evals: list[str | Path] | None, license: str | None) -> str:
    """The Markdown model card of a model, adapter or quantized-model artifact, with the Hub's front matter."""
    from huggingface_hub import ModelCard

    chain, start = model_chain(artifact)
    md = Markdown()
    config = hf_config(artifact) or {}
    count = parameters(artifact)
    datasets = training_data(chain)
    base = base_model(artifact, chain, start)

    name = name_of(artifact)
    md.heading(1, name)
    arch = config.get("model_type", "unknown")
    an = "An" if arch[:1] in ("a", "e", "i", "o", "u") else "A"  # "An unknown model", "A llama model"
    size = f" of {fmt(count)} parameters" if count else ""
    if artifact.kind == "adapter":
        lora = safetensors_parameters(artifact.path, "adapter_model*.safetensors")
        what = f"A LoRA adapter ({fmt(lora)} parameters) for {an.lower()} {arch} model{size}"
    elif artifact.kind == "gguf":
        what = f"{an} {arch} model{size} as a GGUF file ({artifact.extra.get('method')}) for llama.cpp"
    else:
        kind = {"quantized-model": "quantized model", "reward-model": "reward model"}.get(
            artifact.kind, "model"
        )
        what = f"{an} {arch} {kind}{size}"
    md.para(f"{what}, made by llmforge: " + " → ".join(a.stage for a in chain)
            + (f", starting from `{start['path']}`" if start else "") + ".")  # fmt: skip

    md.heading(2, "Model details")
    md.pairs(model_details(artifact, config, count, base))
    md.heading(2, "How to use")
    if artifact.kind == "gguf":
        how_to_use_gguf(md, artifact)
    else:
        how_to_use(md, artifact)

    md.heading(2, "Training")
    md.para("Chain: " + " → ".join(f"{a.stage} (`{name_of(a)}`)" for a in chain)
            + (f", from `{start['path']}` ({start.get('kind')})" if start else ""))  # fmt: skip
    previous: Artifact | None = None
    for step in chain:
        md.heading(3, f"{step.stage} → `{name_of(step)}` ({step.kind})")
        md.pairs(STAGE_ROWS.get(step.stage, generic_rows)(step, previous))
        previous = step

    md.heading(2, "Evaluation")
    evaluation(md, artifact, chain, evals)

    md.heading(2, "Training data")
    training_data_section(md, chain, datasets)

    md.heading(2, "Provenance")
    lineage_table(md, chain)
    versions = lookup(artifact.manifest, "provenance.versions", {})
    md.para("Made with " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "." if versions else "")
    data = model_card_data(artifact, chain, start, config, dataset_names(datasets), license,
                           eval_reports(chain, evals))  # fmt: skip
    return with_front_matter(data, md.text(), ModelCard)


def how_to_use(md: Markdown, artifact: Artifact) -> None:
    if artifact.kind == "reward-model":
        md.para("```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
                f'model = AutoModelForSequenceClassification.from_pretrained("{show_path(artifact.path)}")\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{show_path(artifact.path)}")\n'
                "score = model(**tokenizer.apply_chat_template(chat, return_dict=True, return_tensors=\"pt\")).logits[0, 0]\n```")  # fmt: skip
        md.para(f"Or as a reward for reinforcement learning: `llmforge grpo POLICY prompts.jsonl --reward "
                f"{show_path(artifact.path)}`.")  # fmt: skip
        return
    md.para("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{show_path(artifact.path)}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{show_path(artifact.path)}")\n```')  # fmt: skip
    if artifact.kind == "adapter":
        md.para("transformers applies the adapter to its base model when peft is installed.")
    md.para(f"Or `llmforge chat {show_path(artifact.path)}`, `llmforge serve {show_path(artifact.path)}`.")


def how_to_use_gguf(md: Markdown, artifact: Artifact) -> None:
    gguf = f"{show_path(artifact.path)}/model.gguf"
    md.para(f"```sh\nllama-server -m {gguf}      # llama.cpp's OpenAI-compatible server\n"
            f"llama-cli -m {gguf} -cnv    # a chat in the terminal\n```")  # fmt: skip
    md.para("The chat template and special tokens are in the file. In Ollama: a Modelfile with "
            f"`FROM ./model.gguf`. `llmforge serve {show_path(artifact.path)}` serves it with llama.cpp behind "
            f"llmforge's API; `llmforge import {show_path(artifact.path)} -o DIR` takes it back as a transformers "
            "model (dequantized).")  # fmt: skip


def base_model(artifact: Artifact, chain: list[Artifact], start: dict[str, Any] | None) -> str | None:
    """What the model was made from: an adapter's base, else the model before it in the chain or the external
    start (a hub id or a directory); none for a model pretrained here."""
    if artifact.kind == "adapter" and artifact.extra.get("base_model"):
        entry = artifact.extra["base_model"]
        return entry["path"] if entry.get("kind") == "hub" else Path(entry["path"]).name
    if len(chain) > 1:
        return name_of(chain[-2])
    if start is not None:
        return start["path"] if start.get("kind") == "hub" else Path(start["path"]).name
    return None


def model_details(artifact: Artifact, config: dict[str, Any], count: int | None, base: str | None) -> list:
    rows: list[tuple[str, Any]] = [
        ("architecture", ", ".join(config.get("architectures", [])) or None),
        (
            "base model parameters" if artifact.kind == "adapter" else "parameters",
            fmt(count) if count else "unknown",
        ),
    ]
    if artifact.kind == "adapter":
        lora = safetensors_parameters(artifact.path, "adapter_model*.safetensors")
        adapter = json.loads((Path(artifact.path) / "adapter_config.json").read_text()) \
            if (Path(artifact.path) / "adapter_config.json").is_file() else {}  # fmt: skip
        rows += [("adapter", f"LoRA rank {adapter.get('r', '?')}, alpha {adapter.get('lora_alpha', '?')}, "
                             f"{fmt(lora)} parameters"), ("base model", f"`{base}`" if base else None)]  # fmt: skip
    if artifact.kind in ("quantized-model", "gguf"):
        rows += [("quantization", f"{artifact.extra.get('method')} ({artifact.extra.get('format')})"),
                 ("quantized from", f"`{base}`" if base else None)]  # fmt: skip
    for label, key in (("layers", "num_hidden_layers"), ("hidden size", "hidden_size"),
                       ("attention heads", "num_attention_heads"), ("key/value heads", "num_key_value_heads"),
                       ("MLP width", "intermediate_size"), ("vocabulary", "vocab_size"),
                       ("context (positions)", "max_position_embeddings"), ("tied embeddings", "tie_word_embeddings"),
                       ("weights dtype", "dtype")):  # fmt: skip
        rows.append((label, config.get(key)))
    theta = lookup(config, "rope_parameters.rope_theta", config.get("rope_theta"))
    rows.append(("RoPE theta", theta))
    template = Path(artifact.path) / "chat_template.jinja"
    if artifact.kind == "gguf":
        rows.append(("chat template", "in model.gguf (tokenizer.chat_template), when the model had one"))
    else:
        rows.append(("chat template", "yes (chat_template.jinja)" if template.is_file() else None))
    rows.append(("tokenizer fingerprint", f"`{artifact.extra.get('tokenizer_fingerprint', '?')[:16]}`"))
    rows.append(("fingerprint", f"`{artifact.fingerprint}`"))
    return rows


def training_data(chain: list[Artifact]) -> list[tuple[Artifact, dict[str, Any], Artifact | None]]:
    """(training stage, input entry, data artifact or None for raw files) for every training stage's data."""
    found = []
    for step in chain:
        data = data_input(step)
        if data is not None and not (data[1] is not None and data[1].kind in MODEL_KINDS):
            found.append((step, *data))
    return found


def training_data_section(md: Markdown, chain: list[Artifact], datasets: list) -> None:
    """Every training stage's data in a table, then the data card of each data artifact among them."""
    if not datasets:
        md.para("No training data recorded in the lineage.")
        return
    md.table(["stage", "data", "kind", "size", "fingerprint"],
             [[step.stage, f"`{show_path(data.path) if data is not None else entry['path']}`",
               data.kind if data is not None else entry.get("kind"), data_size(step, entry, data),
               f"`{entry['fingerprint'][:12]}`"] for step, entry, data in datasets])  # fmt: skip
    shown: set[str] = set()
    for step, _, data in datasets:
        if data is not None and data.kind in DATA_KINDS and data.fingerprint not in shown:
            shown.add(data.fingerprint)
            data_card(md, data, level=3, title=f"{step.stage} data: `{name_of(data)}`")


def data_size(step: Artifact, entry: dict[str, Any], data: Artifact | None) -> str:
    if data is not None and data.kind == "tokens":
        return f"{fmt(stats_of(data).get('tokens'))} tokens"
    if data is not None:
        return f"{fmt(stats_of(data).get('documents'))} documents"
    records = stats_of(step).get("records") if step.stage in POSTTRAIN_STAGES else None
    size = f"{fmt(entry['bytes'])} bytes" if "bytes" in entry else ""
    return ", ".join(t for t in (f"{fmt(records)} records" if records is not None else "", size) if t) or "–"
