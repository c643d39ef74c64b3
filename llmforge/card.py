"""Data and model cards generated from lineage: which raw data, what each filter removed, dedup and
decontamination, the tokenizer and the mixture, the training chain with its settings and final losses, eval scores.

Every figure comes from a manifest (or a model's own config.json and safetensors header); nothing is re-measured,
so a card is exactly as true as the artifacts it describes. Cards are Markdown; model cards open with the YAML
front matter the Hugging Face Hub reads.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llmforge.artifacts import MANIFEST, STAGING_SUFFIX, Artifact, describe_kind
from llmforge.errors import InputError

DATA_KINDS = ("documents", "tokenizer", "tokens")
MODEL_KINDS = ("model", "adapter", "quantized-model")
FROM_A_MODEL = ("sft", "dpo", "grpo", "quantize")  # stages whose first input is the model they start from
POSTTRAIN = ("sft", "dpo", "grpo")
CHINCHILLA_TOKENS_PER_PARAMETER = 20


def make_card(path: str | Path, evals: list[str | Path] | None = None, license: str | None = None) -> str:
    """The Markdown card of the artifact at `path`: a data card or a model card, by its kind."""
    artifact = Artifact.open(path)
    if artifact.kind in DATA_KINDS:
        if evals:
            raise InputError(f"--eval is for model cards; {path} is {describe_kind(artifact.kind)}")
        writer = Markdown()
        data_card(writer, artifact, level=1)
        return writer.text()
    if artifact.kind in MODEL_KINDS:
        return model_card(artifact, evals, license)
    raise InputError(
        f"{path} is {describe_kind(artifact.kind)}; cards describe data (documents, tokenizer, tokens) and models "
        "(model, adapter, quantized-model)"
        + (": give an eval report to its model's card with --eval" if artifact.kind == "eval-report" else "")
    )


# ---------------------------------------------------------------------------------------------------------------
# Markdown


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1e6:
            return f"{value:.3g}"
        return f"{int(value):,}" if value.is_integer() else f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items()) or "none"
    return str(value)


def _cell(value: Any) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Markdown:
    """A card being written: headings shift by the level it is nested at."""

    def __init__(self) -> None:
        self.blocks: list[str] = []

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(f"{'#' * min(level, 6)} {text}")

    def para(self, text: str) -> None:
        if text:
            self.blocks.append(text)

    def bullets(self, items: Iterable[str]) -> None:
        lines = [f"- {item}" for item in items if item]
        if lines:
            self.blocks.append("\n".join(lines))

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        if not rows:
            return
        align = []
        for column in range(len(header)):
            values = [row[column] for row in rows if row[column] is not None]
            align.append("---:" if values and all(_is_number(v) for v in values) else "---")
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        self.blocks.append("\n".join(lines))

    def pairs(self, rows: list[tuple[str, Any]]) -> None:
        """A two-column table of settings or facts (rows whose value is None are left out)."""
        self.table(["", ""], [[name, value] for name, value in rows if value is not None])

    def text(self) -> str:
        return "\n\n".join(self.blocks) + "\n"


def show_path(path: str | Path) -> str:
    """Paths under the working directory relative to it (as the user typed them), others absolute."""
    absolute = Path(path).resolve()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def name_of(artifact: Artifact) -> str:
    return Path(artifact.path).resolve().name


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def _share(value: float | None) -> str:
    return f"{100 * value:.3g}%" if isinstance(value, int | float) else "?"


def _get(data: dict[str, Any], dotted: str, default: Any = None) -> Any:
    for key in dotted.split("."):
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


# ---------------------------------------------------------------------------------------------------------------
# Lineage


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
    if artifact.kind == "model":
        found = safetensors_parameters(artifact.path, "model*.safetensors")
        return found if found is not None else artifact.stats.get("parameters")
    base = artifact.extra.get("base_model")
    parent = _find(artifact, base) if base and depth < 20 else None
    return parameters(parent, depth + 1) if parent is not None else None


def hf_config(artifact: Artifact, depth: int = 0) -> dict[str, Any] | None:
    """The model's config.json (an adapter's is its base's)."""
    file = Path(artifact.path) / "config.json"
    if file.is_file():
        return json.loads(file.read_text())
    base = artifact.extra.get("base_model")
    parent = _find(artifact, base) if base and depth < 20 else None
    return hf_config(parent, depth + 1) if parent is not None else None


# ---------------------------------------------------------------------------------------------------------------
# Data card


def data_card(md: Markdown, artifact: Artifact, level: int, title: str | None = None) -> None:
    """The data card of a documents, tokenizer or tokens artifact, its headings starting at `level`."""
    lineage = data_lineage(artifact)
    md.heading(level, title or f"Data card: {name_of(artifact)}")
    md.para(data_summary(artifact, lineage))
    md.pairs([
        ("artifact", f"`{show_path(artifact.path)}`"),
        ("kind", f"{artifact.kind} (made by `llmforge {artifact.stage}`)"),
        ("fingerprint", f"`{artifact.fingerprint}`"),
        ("finished", _get(artifact.manifest, "provenance.finished")),
    ])  # fmt: skip

    raw, others, missing = [], [], []
    for current in lineage:
        for entry, parent in current.parents():
            if parent is not None:
                if parent.kind not in DATA_KINDS:
                    others.append(f"`{show_path(parent.path)}` ({parent.kind}, `{parent.fingerprint[:12]}`), "
                                  f"read by {current.stage}")  # fmt: skip
            elif entry.get("kind") in ("raw", "hub"):
                if entry.get("role") != "benchmark":  # benchmarks are listed under decontamination
                    raw.append([f"`{entry['path']}`", entry["kind"], current.stage, entry.get("files"),
                                entry.get("bytes"), f"`{entry['fingerprint'][:16]}`"])  # fmt: skip
            else:
                missing.append(f"`{entry['path']}` ({entry.get('kind')}, `{entry['fingerprint'][:12]}`)")
    md.heading(level + 1, "Raw inputs")
    md.table(["path", "kind", "read by", "files", "bytes", "content fingerprint"], raw)
    if not raw:
        md.para("None recorded.")
    md.bullets([f"other input: {o}" for o in others] + [f"missing from disk: {m}" for m in missing])

    md.heading(level + 1, "Processing")
    for number, current in enumerate(lineage, 1):
        md.heading(level + 2, f"{number}. {current.stage} → `{name_of(current)}` ({current.kind})")
        DATA_SECTIONS.get(current.stage, generic_section)(md, current, level + 3)

    md.heading(level + 1, "Lineage")
    md.table(["artifact", "stage", "fingerprint", "finished", "device", "seconds"],
             [[f"`{show_path(a.path)}`", a.stage, f"`{a.fingerprint[:12]}`", _get(a.manifest, "provenance.finished"),
               _get(a.manifest, "provenance.device"), _get(a.manifest, "provenance.seconds")] for a in lineage])  # fmt: skip


def data_summary(artifact: Artifact, lineage: list[Artifact]) -> str:
    """One paragraph: what the artifact holds and the document funnel that led to it."""
    s = artifact.stats
    if artifact.kind == "tokens":
        what = (f"{fmt(s.get('tokens'))} training tokens in {fmt(s.get('documents'))} documents and "
                f"{fmt(s.get('val_tokens'))} validation tokens, from {len(s.get('sources', {})) or '?'} "
                f"source(s) ({', '.join(s.get('sources', {})) or '?'})")  # fmt: skip
    elif artifact.kind == "tokenizer":
        what = f"a {s.get('algorithm', '?')} tokenizer with {fmt(s.get('vocab_size'))} tokens"
    else:
        what = f"{fmt(s.get('documents'))} documents"
    funnel = []
    for current in lineage:
        if current.kind == "documents" and "input" in current.stats and "documents" in current.stats:
            funnel.append(f"{current.stage} {fmt(_get(current.stats, 'input.documents'))} → "
                          f"{fmt(current.stats['documents'])}")  # fmt: skip
    text = f"`{name_of(artifact)}` holds {what}."
    if funnel:
        text += " Documents through each stage: " + "; ".join(funnel) + "."
    return text


def crawl_filter_section(md: Markdown, artifact: Artifact, level: int) -> None:
    c, s = artifact.config, artifact.stats
    read = s.get("input", {})
    languages = _get(c, "language.languages") or []
    url = c.get("url_filter", {})
    if url.get("enabled", True):
        url_text = (f"bundled blocklists {'on' if url.get('bundled_lists') else 'off'}, "
                    f"{len(url.get('extra_domains', []))} extra domain(s), {len(url.get('extra_urls', []))} extra "
                    f"URL(s), {len(url.get('banned_words', []))} banned word(s)")  # fmt: skip
    else:
        url_text = "off"
    rules = {"gopher_repetition": "Gopher repetition", "gopher_quality": "Gopher quality", "c4": "C4",
             "fineweb": "FineWeb"}  # fmt: skip
    on = [label for key, label in rules.items() if _get(c, f"{key}.enabled", True)]
    off = [label for key, label in rules.items() if not _get(c, f"{key}.enabled", True)]
    pii = c.get("pii", {})
    md.bullets([
        f"read {fmt(read.get('files'))} file(s): {fmt(read.get('records'))} records, {fmt(read.get('documents'))} "
        "documents",
        "languages kept: " + (", ".join(languages) if languages else "all")
        + f" (min confidence {fmt(_get(c, 'language.min_confidence'))}"
        + (f", fastText model `{_get(c, 'language.fasttext_model')}`)" if _get(c, "language.fasttext_model") else ")"),
        f"URL filter: {url_text}",
        "quality rules: " + (", ".join(on) or "none") + (f" (off: {', '.join(off)})" if off else "")
        + (f"; Gopher minimum {fmt(_get(c, 'gopher_quality.min_doc_words'))} words" if "Gopher quality" in on else ""),
        f"PII: {pii.get('mode', '?')}" + (f" ({', '.join(pii.get('kinds', []))})" if pii.get("mode") != "off" else ""),
    ])  # fmt: skip
    rows = []
    for name, row in s.get("filters", {}).items():
        rows.append([name, row.get("in"), row.get("out"), row.get("removed"), row.get("reasons") or None])
    md.table(["filter", "documents in", "out", "removed", "removed by rule"], rows)
    kept = s.get("documents")
    md.bullets([
        f"kept {fmt(kept)} of {fmt(read.get('documents'))} documents ({_pct(kept or 0, read.get('documents') or 0)}), "
        f"removed {fmt(s.get('removed'))}",
        ("languages detected (documents reaching the language filter): " + fmt(s["languages_detected"]))
        if s.get("languages_detected") else "",
        ("PII redacted: " + f"{fmt(s['pii_redacted'].get('documents'))} document(s); "
         + fmt({k: v for k, v in s["pii_redacted"].items() if k != "documents"})) if s.get("pii_redacted") else "",
        f"samples of the removed documents, per filter: `{show_path(Path(artifact.path) / 'removed')}`"
        if (Path(artifact.path) / "removed").is_dir() else "",
    ])  # fmt: skip


def dedup_section(md: Markdown, artifact: Artifact, level: int) -> None:
    c, s = artifact.config, artifact.stats
    minhash = c.get("minhash", {})
    decontamination = artifact.extra.get("decontamination", {})
    details = {
        "decontamination": f"{_get(c, 'decontamination.ngram')}-gram overlap with benchmark items",
        "exact": "identical text",
        "minhash": (f"MinHash LSH: Jaccard ≥ {fmt(minhash.get('threshold'))} on {fmt(minhash.get('ngram'))}-gram "
                    f"shingles, {fmt(_get(s, 'minhash.buckets'))} bands × {fmt(_get(s, 'minhash.hashes_per_bucket'))} hashes "
                    f"(P(candidate) at the threshold {fmt(_get(s, 'minhash.p_candidate_at_threshold'))}); "
                    f"{fmt(_get(s, 'minhash.clusters'))} clusters, {fmt(_get(s, 'minhash.candidate_pairs'))} "
                    "candidate pairs"),
    }  # fmt: skip
    read = s.get("input", {})
    md.bullets([f"read {fmt(read.get('documents'))} documents"
                + (f" from {fmt(read.get('artifact_files'))} artifact file(s)" if read.get("artifact_files") else "")
                + (f" and {fmt(read.get('raw_files'))} raw file(s)" if read.get("raw_files") else "")])  # fmt: skip
    rows = [[name, s[name].get("in"), s[name].get("out"), s[name].get("removed"), details[name]]
            for name in ("decontamination", "exact", "minhash") if name in s]  # fmt: skip
    md.table(["step", "documents in", "out", "removed", "how"], rows)
    off = [label for key, label in (("exact", "exact dedup"), ("minhash.enabled", "near-dup dedup"))
           if not _get(c, key, True)]  # fmt: skip
    kept = s.get("documents")
    md.bullets([f"kept {fmt(kept)} of {fmt(read.get('documents'))} documents "
                f"({_pct(kept or 0, read.get('documents') or 0)}), removed {fmt(s.get('removed'))}",
                "off: " + ", ".join(off) if off else ""])  # fmt: skip

    md.heading(level, "Decontamination")
    benchmarks = decontamination.get("benchmarks", [])
    if not benchmarks:
        md.para("Not decontaminated: no benchmark was given (`llmforge dedup --decontaminate FILE`).")
        return
    md.para(f"Documents sharing any {decontamination.get('ngram')}-gram (words, normalised) with a benchmark item "
            f"were removed: {fmt(decontamination.get('documents_removed'))} document(s).")  # fmt: skip
    md.table(["benchmark", "items", "items found in the corpus", "ids found", "sha256"],
             [[f"`{show_path(b['path'])}`", b.get("items"), len(b.get("items_hit", [])),
               ", ".join(map(str, b.get("items_hit", [])[:20])) + (" ..." if len(b.get("items_hit", [])) > 20 else ""),
               f"`{b.get('sha256', '')[:16]}`"] for b in benchmarks])  # fmt: skip
    short = _get(s, "decontamination.items_too_short")
    if short:
        md.para(f"Note: {fmt(short)} benchmark item(s) have fewer than {decontamination.get('ngram')} words and "
                "cannot be matched by n-gram overlap; they are not checked.")  # fmt: skip


def tokenize_train_section(md: Markdown, artifact: Artifact, level: int) -> None:
    c, s = artifact.config, artifact.stats
    sources = s.get("sources", {})
    md.bullets([
        f"algorithm {s.get('algorithm', c.get('algorithm'))}, vocabulary {fmt(s.get('vocab_size'))} tokens "
        f"(asked {fmt(c.get('vocab_size'))}), min frequency {fmt(c.get('min_frequency'))}, seed {fmt(c.get('seed'))}",
        f"trained on a sample of {fmt(sum(v.get('sample_bytes', 0) for v in sources.values()))} bytes",
    ])  # fmt: skip
    md.table(["source", "weight", "documents", "bytes", "sample bytes", "passes"],
             [[name, (c.get("weights") or {}).get(name), row.get("documents"), row.get("bytes"),
               row.get("sample_bytes"), row.get("passes")] for name, row in sources.items()])  # fmt: skip
    fertility = []
    if "held_out" in s:
        fertility.append(
            ["all", *(s["held_out"].get(k) for k in ("documents", "bytes_per_token", "tokens_per_word"))]
        )
    for language, row in s.get("held_out_by_language", {}).items():
        fertility.append(
            [language, *(row.get(k) for k in ("documents", "bytes_per_token", "tokens_per_word"))]
        )
    if fertility:
        md.para("Fertility on held-out documents (not in the training sample):")
        md.table(["held out", "documents", "bytes/token", "tokens/word"], fertility)


def tokenize_encode_section(md: Markdown, artifact: Artifact, level: int) -> None:
    c, s = artifact.config, artifact.stats
    tokenizers = [p for e, p in artifact.parents() if p is not None and p.kind in ("tokenizer", *MODEL_KINDS)]
    sources = s.get("sources", {})
    val_documents = s.get("val_documents")
    md.bullets([
        "tokenizer: " + (", ".join(f"`{name_of(t)}` ({t.kind})" for t in tokenizers) or "?")
        + f", fingerprint `{artifact.extra.get('tokenizer_fingerprint', '?')[:12]}`",
        f"{fmt(s.get('tokens'))} training tokens in {fmt(s.get('documents'))} documents, {fmt(s.get('shards'))} "
        f"shard(s) of {s.get('dtype', '?')}",
        f"validation split: {_share(c.get('val_fraction'))} of each source's documents held out → "
        f"{fmt(s.get('val_tokens'))} tokens" + (f" in {fmt(val_documents)} documents" if val_documents is not None else ""),
        "mixture: " + (f"target {fmt(c['target_tokens'])} training tokens" if c.get("target_tokens")
                       else "every source at its natural size or weight, no target"),
    ])  # fmt: skip
    md.table(["source", "weight", "share", "tokens", "natural tokens", "passes", "max repeats", "documents",
              "val tokens"],
             [[name, row.get("weight"), row.get("share"), row.get("tokens"), row.get("natural_tokens"),
               row.get("passes"), row.get("max_repeats"), row.get("documents"), row.get("val_tokens")]
              for name, row in sources.items()])  # fmt: skip


def generic_section(md: Markdown, artifact: Artifact, level: int) -> None:
    from llmforge.console import flatten

    md.bullets([f"{key}: {fmt(value)}" for key, value in flatten(artifact.stats)] or ["no stats recorded"])


DATA_SECTIONS = {
    "crawl-filter": crawl_filter_section,
    "dedup": dedup_section,
    "tokenize train": tokenize_train_section,
    "tokenize encode": tokenize_encode_section,
}


# ---------------------------------------------------------------------------------------------------------------
# Model card


def model_card(artifact: Artifact, evals: list[str | Path] | None, license: str | None) -> str:
    chain, start = model_chain(artifact)
    md = Markdown()
    config = hf_config(artifact) or {}
    count = parameters(artifact)
    datasets = training_data(chain)
    base = base_model(artifact, chain, start)

    md.blocks.append(front_matter(artifact, chain, config, base, datasets, license))
    name = name_of(artifact)
    md.heading(1, name)
    arch = config.get("model_type", "unknown")
    size = f" of {fmt(count)} parameters" if count else ""
    if artifact.kind == "adapter":
        lora = safetensors_parameters(artifact.path, "adapter_model*.safetensors")
        what = f"A LoRA adapter ({fmt(lora)} parameters) for a {arch} model{size}"
    else:
        what = f"A {arch} {'quantized model' if artifact.kind == 'quantized-model' else 'model'}{size}"
    md.para(f"{what}, made by llmforge: " + " → ".join(a.stage for a in chain)
            + (f", starting from `{start['path']}`" if start else "") + ".")  # fmt: skip

    md.heading(2, "Model details")
    md.pairs(model_details(artifact, config, count, base))
    md.heading(2, "How to use")
    md.para("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{show_path(artifact.path)}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{show_path(artifact.path)}")\n```')  # fmt: skip
    if artifact.kind == "adapter":
        md.para("transformers applies the adapter to its base model when peft is installed.")
    md.para(f"Or `llmforge chat {show_path(artifact.path)}`, `llmforge serve {show_path(artifact.path)}`.")

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
    md.table(["artifact", "stage", "fingerprint", "finished", "device", "seconds"],
             [[f"`{show_path(a.path)}`", a.stage, f"`{a.fingerprint[:12]}`", _get(a.manifest, "provenance.finished"),
               _get(a.manifest, "provenance.device"), _get(a.manifest, "provenance.seconds")] for a in chain])  # fmt: skip
    versions = _get(artifact.manifest, "provenance.versions", {})
    md.para("Made with " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "." if versions else "")
    return md.text()


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


def front_matter(artifact: Artifact, chain: list[Artifact], config: dict[str, Any], base: str | None,
                 datasets: list[tuple[Artifact, dict[str, Any], Artifact | None]], license: str | None) -> str:  # fmt: skip
    import yaml

    tags = ["llmforge"]
    if config.get("model_type"):
        tags.append(config["model_type"])
    tags += [a.stage for a in chain if a.stage not in tags]
    if any(_get(a.config, "lora.enabled") for a in chain if a.stage in POSTTRAIN):
        tags.append("lora")
    if artifact.kind == "quantized-model":
        tags += [t for t in (artifact.extra.get("method"), artifact.extra.get("format")) if t]
    front: dict[str, Any] = {}
    if license:
        front["license"] = license
    front["library_name"] = "peft" if artifact.kind == "adapter" else "transformers"
    front["pipeline_tag"] = "text-generation"
    front["tags"] = tags
    if base:
        front["base_model"] = base
        relation = {"adapter": "adapter", "quantized-model": "quantized"}.get(artifact.kind, "finetune")
        front["base_model_relation"] = relation
    names = []
    for _, entry, data in datasets:
        label = name_of(data) if data is not None else Path(str(entry["path"])).name
        if label not in names:
            names.append(label)
    if names:
        front["datasets"] = names
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---"


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
    if artifact.kind == "quantized-model":
        rows += [("quantization", f"{artifact.extra.get('method')} ({artifact.extra.get('format')})"),
                 ("quantized from", f"`{base}`" if base else None)]  # fmt: skip
    for label, key in (("layers", "num_hidden_layers"), ("hidden size", "hidden_size"),
                       ("attention heads", "num_attention_heads"), ("key/value heads", "num_key_value_heads"),
                       ("MLP width", "intermediate_size"), ("vocabulary", "vocab_size"),
                       ("context (positions)", "max_position_embeddings"), ("tied embeddings", "tie_word_embeddings"),
                       ("weights dtype", "dtype")):  # fmt: skip
        rows.append((label, config.get(key)))
    theta = _get(config, "rope_parameters.rope_theta", config.get("rope_theta"))
    rows.append(("RoPE theta", theta))
    template = Path(artifact.path) / "chat_template.jinja"
    rows.append(("chat template", "yes (chat_template.jinja)" if template.is_file() else None))
    rows.append(("tokenizer fingerprint", f"`{artifact.extra.get('tokenizer_fingerprint', '?')[:16]}`"))
    rows.append(("fingerprint", f"`{artifact.fingerprint}`"))
    return rows


def _data_input(step: Artifact) -> tuple[dict[str, Any], Artifact | None] | None:
    """The data a training stage read (pretrain: its tokens; post-training: its dataset)."""
    parents = step.parents()
    if step.stage == "pretrain":
        return next(((e, p) for e, p in parents if e.get("kind") == "tokens"), None)
    if step.stage in POSTTRAIN and len(parents) > 1:
        return parents[1]
    return None


def _data_label(found: tuple[dict[str, Any], Artifact | None] | None) -> str | None:
    if found is None:
        return None
    entry, data = found
    if data is not None:
        return f"`{name_of(data)}` ({data.kind})"
    detail = f", {fmt(entry['files'])} file(s), {fmt(entry['bytes'])} bytes" if "files" in entry else ""
    return f"`{entry['path']}` ({entry.get('kind')}{detail})"


def _from_to(stats: dict[str, Any], start: str, end: str) -> str | None:
    if start not in stats and end not in stats:
        return None
    return f"{fmt(stats.get(start))} → {fmt(stats.get(end))}"


def pretrain_rows(step: Artifact, previous: Artifact | None) -> list:
    c, s = step.config, step.stats
    found = _data_input(step)
    data = found[1] if found else None
    available = data.stats.get("tokens") if data is not None and data.kind == "tokens" else None
    seen = s.get("tokens")
    passes = (
        f" ({seen / available:.2f} passes over {fmt(available)} training tokens)"
        if seen and available
        else ""
    )
    per_param = s.get("tokens_per_parameter")
    o = c.get("optim", {})
    warmup = o.get("warmup_steps")
    return [
        ("data", _data_label(found)),
        ("model", f"preset {_get(c, 'model.preset')}, {_get(c, 'model.arch')}" if _get(c, "model.preset") else None),
        ("tokens seen", f"{fmt(seen)}{passes}" if seen is not None else None),
        ("tokens per parameter", f"{fmt(per_param)} (Chinchilla-optimal ≈ {CHINCHILLA_TOKENS_PER_PARAMETER})"
         if per_param is not None else None),
        ("steps", s.get("steps")),
        ("batch", f"{fmt(s.get('batch_tokens', c.get('batch_tokens')))} tokens (sequences of {fmt(c.get('seq_len'))}, "
                  f"micro-batch {fmt(c.get('micro_batch_size'))})" if c.get("seq_len") else None),
        ("learning rate", f"{fmt(o.get('lr'))} peak, {o.get('schedule')} schedule, warmup "
                          + (f"{fmt(warmup)} step(s)" if warmup is not None else f"{fmt(o.get('warmup_fraction'))} of steps")
                          + f", min {fmt(o.get('min_lr_ratio'))} × peak" if o else None),
        ("optimizer", f"AdamW betas {fmt(o.get('betas'))}, weight decay {fmt(o.get('weight_decay'))}, "
                      f"grad clip {fmt(o.get('grad_clip'))}" if o else None),
        ("precision", c.get("precision")),
        ("distributed", f"ZeRO-{s.get('zero', _get(c, 'distributed.zero'))}, {fmt(s.get('processes'))} process(es)"
                        + (", CPU offload" if _get(c, "distributed.offload") == "cpu" else "") if "zero" in s else None),
        ("loss (first → final)", _from_to(s, "loss_first", "loss_final")),
        ("validation loss (first → final)", _from_to(s, "val_loss_first", "val_loss_final")),
        ("rewinds (loss spikes)", s.get("rewinds") or None),
        ("training FLOPs", s.get("training_flops")),
        ("throughput", f"{fmt(s['tokens_per_s'])} tokens/s" if s.get("tokens_per_s") else None),
        ("parameters", s.get("parameters")),
    ]  # fmt: skip


def _method(step: Artifact, previous: Artifact | None) -> str:
    lora = step.config.get("lora", {})
    if not lora.get("enabled"):
        return "full fine-tuning" + (
            " of the input adapter merged into its base" if previous and previous.kind == "adapter" else ""
        )
    method = "QLoRA (4-bit base)" if lora.get("qlora") else "LoRA"
    if previous is not None and previous.kind == "adapter":
        text = f"{method}, continuing the input adapter `{name_of(previous)}`"
    else:
        text = (f"{method} rank {fmt(lora.get('rank'))}, alpha {fmt(lora.get('alpha'))}, dropout "
                f"{fmt(lora.get('dropout'))}, targets {lora.get('target_modules')}")  # fmt: skip
    return text + ("; merged into the base" if lora.get("merge") else "")


def posttrain_rows(step: Artifact, previous: Artifact | None) -> list:
    c, s = step.config, step.stats
    nproc = c.get("nproc") or 1
    rows: list[tuple[str, Any]] = [
        ("data", _data_label(_data_input(step))),
        ("records", f"{fmt(s.get('records'))} ({s.get('shape')})" if "records" in s else None),
        ("method", _method(step, previous)),
        ("trainable parameters", f"{fmt(s['trainable_parameters'])} of {fmt(s.get('total_parameters'))} "
                                 f"({_share(s.get('trainable_share'))})" if "trainable_parameters" in s else None),
        ("steps", s.get("steps")),
        ("epochs (max steps)", f"{fmt(c.get('epochs'))} ({fmt(c.get('max_steps'))})" if c.get("max_steps") else c.get("epochs")),
        ("learning rate", f"{fmt(c.get('learning_rate'))}, {c.get('lr_scheduler')} schedule, warmup ratio "
                          f"{fmt(c.get('warmup_ratio'))}" if "learning_rate" in c else None),
        ("batch", f"{fmt(c.get('batch_size'))} per device × accumulation {fmt(c.get('gradient_accumulation'))} × "
                  f"{fmt(nproc)} process(es)" if "batch_size" in c else None),
        ("max length", c.get("max_length")),
        ("ZeRO", f"ZeRO-{c['zero']}" + (", CPU offload" if c.get("offload") == "cpu" else "")
         if c.get("zero") is not None else "off"),
    ]  # fmt: skip
    if step.stage == "sft":
        rows += [
            ("loss on", "assistant turns only" if c.get("assistant_only_loss") else "every token"),
            ("packing", c.get("packing")),
            ("tokens trained", s.get("tokens_trained")),
            ("loss (start → end)", _from_to(s, "loss_start", "loss_end")),
            ("token accuracy", s.get("token_accuracy")),
        ]
    elif step.stage == "dpo":
        rows += [
            ("objective", f"{c.get('loss')} loss, beta {fmt(c.get('beta'))}"
             + (f", label smoothing {fmt(c['label_smoothing'])}" if c.get("label_smoothing") else "")),
            ("loss (start → end)", _from_to(s, "loss_start", "loss_end")),
            ("preference accuracy (start → end)", _from_to(s, "accuracy_start", "accuracy_end")),
            ("reward margin (start → end)", _from_to(s, "margin_start", "margin_end")),
            ("rewards chosen / rejected", f"{fmt(s.get('rewards_chosen'))} / {fmt(s.get('rewards_rejected'))}"
             if "rewards_chosen" in s else None),
        ]  # fmt: skip
    elif step.stage == "grpo":
        names = [str(r).split(":")[0] for r in c.get("rewards", [])]
        rows += [
            ("rewards", fmt(c.get("rewards"))),
            ("generations", f"{fmt(c.get('num_generations'))} per prompt, temperature {fmt(c.get('temperature'))}, "
                            f"up to {fmt(c.get('max_completion_length'))} tokens"),
            ("KL beta, clip epsilon", f"{fmt(c.get('kl_beta'))}, {fmt(c.get('clip_epsilon'))}"),
            ("reward (start → end)", _from_to(s, "reward_start", "reward_end")),
            *[(f"reward {n} (start → end)", _from_to(s, f"reward_{n}_start", f"reward_{n}_end")) for n in names],
            ("KL", s.get("kl")),
            ("mean completion length", s.get("completion_length_mean")),
        ]  # fmt: skip
    return rows


def quantize_rows(step: Artifact, previous: Artifact | None) -> list:
    c, s = step.config, step.stats
    parents = step.parents()
    calibration = _data_label(parents[1]) if len(parents) > 1 else None
    return [
        ("method", f"{s.get('method', c.get('method'))} ({step.extra.get('format')}), {s.get('algorithm')}"),
        ("not quantized", fmt(c.get("ignore")) if c.get("ignore") else None),
        ("calibration / evaluation data", calibration),
        ("calibration windows", s.get("calibration_windows") or None),
        ("size", f"{fmt(s.get('bytes_before'))} → {fmt(s.get('bytes_after'))} bytes ({fmt(s.get('compression'))}×)"
         if "bytes_after" in s else None),
        ("held-out perplexity", f"{fmt(s.get('perplexity_before'))} → {fmt(s.get('perplexity_after'))} "
                                f"({fmt(s.get('perplexity_delta_pct'))}% on {fmt(s.get('eval_tokens'))} tokens; budget "
                                f"{fmt(s.get('budget_pct'))}%, {'within' if s.get('within_budget') else 'BEYOND'} it)"
         if "perplexity_after" in s else None),
    ]  # fmt: skip


def generic_rows(step: Artifact, previous: Artifact | None) -> list:
    from llmforge.console import flatten

    return [(key, fmt(value)) for key, value in flatten(step.stats)]


STAGE_ROWS = {"pretrain": pretrain_rows, "sft": posttrain_rows, "dpo": posttrain_rows, "grpo": posttrain_rows,
              "quantize": quantize_rows}  # fmt: skip


def training_data(chain: list[Artifact]) -> list[tuple[Artifact, dict[str, Any], Artifact | None]]:
    """(training stage, input entry, data artifact or None for raw files) for every training stage's data."""
    found = []
    for step in chain:
        data = _data_input(step)
        if data is not None and not (data[1] is not None and data[1].kind in MODEL_KINDS):
            found.append((step, *data))
    return found


def training_data_section(md: Markdown, chain: list[Artifact], datasets: list) -> None:
    if not datasets:
        md.para("No training data recorded in the lineage.")
        return
    md.table(["stage", "data", "kind", "size", "fingerprint"],
             [[step.stage, f"`{show_path(data.path) if data is not None else entry['path']}`",
               data.kind if data is not None else entry.get("kind"), _data_size(step, entry, data),
               f"`{entry['fingerprint'][:12]}`"] for step, entry, data in datasets])  # fmt: skip
    shown: set[str] = set()
    for step, _, data in datasets:
        if data is not None and data.kind in DATA_KINDS and data.fingerprint not in shown:
            shown.add(data.fingerprint)
            data_card(md, data, level=3, title=f"{step.stage} data: `{name_of(data)}`")


def _data_size(step: Artifact, entry: dict[str, Any], data: Artifact | None) -> str:
    if data is not None and data.kind == "tokens":
        return f"{fmt(data.stats.get('tokens'))} tokens"
    if data is not None:
        return f"{fmt(data.stats.get('documents'))} documents"
    records = step.stats.get("records")
    size = f"{fmt(entry['bytes'])} bytes" if "bytes" in entry else ""
    return ", ".join(t for t in (f"{fmt(records)} records" if records is not None else "", size) if t) or "–"


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


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
                e.get("fingerprint") in wanted for e in _evaluated(data.get("inputs", []))
            ):
                continue
            found.setdefault(data["fingerprint"], Artifact.open(sibling))
    return sorted(found.values(), key=lambda r: str(_get(r.manifest, "provenance.finished", "")))


def _evaluated(inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e for e in inputs if e.get("role") == "model" or (not e.get("role") and e.get("kind") in MODEL_KINDS)
    ]


def evaluation(
    md: Markdown, artifact: Artifact, chain: list[Artifact], evals: list[str | Path] | None
) -> None:
    """A table of scores, one column per evaluated model of the chain (and per report when one model has several),
    then what each report ran and its contamination check."""
    from llmforge.artifacts import open_artifact

    by_fingerprint = {a.fingerprint: a for a in chain}
    if evals:
        reports = [open_artifact(path, "card --eval", ["eval-report"]) for path in evals]
        source = "given with --eval"
    else:
        reports = find_reports(chain)
        source = "found next to the model"
    scores: dict[
        tuple[str, str], dict[tuple[str, int], Any]
    ] = {}  # (task, metric) -> {(model, report): value}
    notes = []
    for number, report in enumerate(reports):
        evaluated, checks_seen = [], {}
        for entry in _evaluated(report.manifest.get("inputs", [])):
            model = by_fingerprint.get(entry.get("fingerprint"))
            if model is None:
                continue
            multi = "models" in report.stats
            summary = report.stats["models"].get(entry.get("label"), {}) if multi else report.stats
            evaluated.append((model, summary))
            for task, metrics in summary.get("scores", {}).items():
                for metric, value in metrics.items():
                    scores.setdefault((task, metric), {})[(model.fingerprint, number)] = value
            checks_seen[name_of(model)] = contamination_text(summary.get("contamination", {}))
        if not evaluated:
            if evals:
                raise InputError(f"{report.path}: this eval report evaluates none of "
                                 f"{', '.join(name_of(a) for a in chain)} (fingerprints differ)")  # fmt: skip
            continue
        c, summary = report.config, evaluated[0][1]
        note = (f"`{show_path(report.path)}`: {', '.join(f'`{name_of(m)}`' for m, _ in evaluated)} on "
                f"{fmt(c.get('tasks') or [])}" + (f" + perplexity on {fmt(c['perplexity'])}" if c.get("perplexity") else "")
                + f"; limit {fmt(c['limit']) if c.get('limit') else 'none'}, few-shot "
                + (fmt(c["num_fewshot"]) if c.get("num_fewshot") is not None else "task default")
                + f", backend {summary.get('backend', '?')}, chat template "
                + {True: "on", False: "off"}.get(summary.get("chat_template"), "?"))  # fmt: skip
        distinct = {text for text in checks_seen.values() if text}
        if len(distinct) == 1:
            note += f". Contamination check: {distinct.pop()}"
        elif distinct:
            note += ". Contamination check: " + " / ".join(f"{m}: {t}" for m, t in checks_seen.items() if t)
        notes.append(note)
    if not scores:
        md.para("No eval report " + ("names this model or its predecessors." if evals else
                "found next to the model; pass reports made by `llmforge eval` with `--eval REPORT`."))  # fmt: skip
        return
    used = {key for values in scores.values() for key in values}
    order = {a.fingerprint: n for n, a in enumerate(chain)}
    columns = sorted(used, key=lambda key: (order[key[0]], key[1]))
    repeated = {f for f, _ in columns if sum(g == f for g, _ in columns) > 1}
    header = ["task", "metric"]
    for fingerprint, number in columns:
        model = by_fingerprint[fingerprint]
        header.append(f"{model.stage} `{name_of(model)}`"
                      + (f" ({name_of(reports[number])})" if fingerprint in repeated else ""))  # fmt: skip
    rows = []
    for (task, metric), values in scores.items():
        name, _, filter_ = metric.partition(",")
        label = name if filter_ in ("", "none") else f"{name} ({filter_})"
        rows.append([task, label, *(values.get(key) for key in columns)])
    md.table(header, rows)
    md.para(f"Eval reports ({source}):")
    md.bullets(notes)


def contamination_text(checks_by_task: dict[str, dict[str, Any]]) -> str:
    """What eval's contamination check found, per task, in words."""
    parts = []
    for task, checks in checks_by_task.items():
        found = []
        if "in_decontamination_set" in checks:
            found.append("among dedup's decontamination benchmarks" if checks["in_decontamination_set"]
                         else "not among dedup's decontamination benchmarks")  # fmt: skip
        if "items_overlapping" in checks:
            found.append(f"{fmt(checks['items_overlapping'])} item(s) overlap the training documents")
        if found:
            parts.append(f"{task}: {'; '.join(found)}")
    return " | ".join(parts)
