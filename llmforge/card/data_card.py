"""The data card: what a documents, tokenizer or tokens artifact holds, the raw inputs behind it and what each
stage of its lineage did (per-filter removals, dedup and decontamination, the tokenizer, the mixture)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmforge.artifacts import Artifact
from llmforge.card.lineage import data_lineage
from llmforge.card.markdown import Markdown, fmt, lineage_table, lookup, name_of, percent, show_path
from llmforge.card.stages import stats_of
from llmforge.console import flatten
from llmforge.registry import DATA_KINDS, MODEL_KINDS


def data_card(md: Markdown, artifact: Artifact, level: int, title: str | None = None) -> None:
    """The data card of a documents, tokenizer or tokens artifact, its headings starting at `level`."""
    lineage = data_lineage(artifact)
    md.heading(level, title or f"Data card: {name_of(artifact)}")
    md.para(data_summary(artifact, lineage))
    md.pairs([
        ("artifact", f"`{show_path(artifact.path)}`"),
        ("kind", f"{artifact.kind} (made by `llmforge {artifact.stage}`)"),
        ("fingerprint", f"`{artifact.fingerprint}`"),
        ("finished", lookup(artifact.manifest, "provenance.finished")),
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
    lineage_table(md, lineage)


def data_summary(artifact: Artifact, lineage: list[Artifact]) -> str:
    """One paragraph: what the artifact holds and the document funnel that led to it."""
    s = stats_of(artifact)
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
        stats = stats_of(current)
        if current.kind == "documents" and "input" in stats and "documents" in stats:
            funnel.append(
                f"{current.stage} {fmt(lookup(stats, 'input.documents'))} → {fmt(stats['documents'])}"
            )
    text = f"`{name_of(artifact)}` holds {what}."
    if funnel:
        text += " Documents through each stage: " + "; ".join(funnel) + "."
    return text


def kept_line(stats: Mapping[str, Any]) -> str:
    """A documents stage's funnel: `kept K of N documents (P%), removed R`."""
    kept, read = stats.get("documents"), lookup(stats, "input.documents")
    share = percent(kept / read) if kept is not None and read else "–"
    return f"kept {fmt(kept)} of {fmt(read)} documents ({share}), removed {fmt(stats.get('removed'))}"


def crawl_filter_section(md: Markdown, artifact: Artifact, level: int) -> None:
    c, s = artifact.config, stats_of(artifact)
    read = s.get("input", {})
    languages = lookup(c, "language.languages") or []
    url = c.get("url_filter", {})
    if url.get("enabled", True):
        url_text = (f"bundled blocklists {'on' if url.get('bundled_lists') else 'off'}, "
                    f"{len(url.get('extra_domains', []))} extra domain(s), {len(url.get('extra_urls', []))} extra "
                    f"URL(s), {len(url.get('banned_words', []))} banned word(s)")  # fmt: skip
    else:
        url_text = "off"
    rules = {"gopher_repetition": "Gopher repetition", "gopher_quality": "Gopher quality", "c4": "C4",
             "fineweb": "FineWeb"}  # fmt: skip
    on = [label for key, label in rules.items() if lookup(c, f"{key}.enabled", True)]
    off = [label for key, label in rules.items() if not lookup(c, f"{key}.enabled", True)]
    pii = c.get("pii", {})
    md.bullets([
        f"read {fmt(read.get('files'))} file(s): {fmt(read.get('records'))} records, {fmt(read.get('documents'))} "
        "documents",
        "languages kept: " + (", ".join(languages) if languages else "all")
        + f" (min confidence {fmt(lookup(c, 'language.min_confidence'))}"
        + (f", fastText model `{lookup(c, 'language.fasttext_model')}`)" if lookup(c, "language.fasttext_model") else ")"),
        f"URL filter: {url_text}",
        "quality rules: " + (", ".join(on) or "none") + (f" (off: {', '.join(off)})" if off else "")
        + (f"; Gopher minimum {fmt(lookup(c, 'gopher_quality.min_doc_words'))} words" if "Gopher quality" in on else ""),
        f"PII: {pii.get('mode', '?')}" + (f" ({', '.join(pii.get('kinds', []))})" if pii.get("mode") != "off" else ""),
    ])  # fmt: skip
    rows = []
    for name, row in s.get("filters", {}).items():
        rows.append([name, row.get("in"), row.get("out"), row.get("removed"), row.get("reasons") or None])
    md.table(["filter", "documents in", "out", "removed", "removed by rule"], rows)
    md.bullets([
        kept_line(s),
        ("languages detected (documents reaching the language filter): " + fmt(s["languages_detected"]))
        if s.get("languages_detected") else "",
        ("PII redacted: " + f"{fmt(s['pii_redacted'].get('documents'))} document(s); "
         + fmt({k: v for k, v in s["pii_redacted"].items() if k != "documents"})) if s.get("pii_redacted") else "",
        f"samples of the removed documents, per filter: `{show_path(Path(artifact.path) / 'removed')}`"
        if (Path(artifact.path) / "removed").is_dir() else "",
    ])  # fmt: skip


def dedup_section(md: Markdown, artifact: Artifact, level: int) -> None:
    c, s = artifact.config, stats_of(artifact)
    minhash = c.get("minhash", {})
    decontamination = artifact.extra.get("decontamination", {})
    details = {
        "decontamination": f"{lookup(c, 'decontamination.ngram')}-gram overlap with benchmark items",
        "exact": "identical text",
        "sentences": (f"spans of {fmt(lookup(c, 'sentences.span'))} sentences seen in an earlier document cut "
                      f"({fmt(lookup(s, 'sentences.sentences_removed'))} of {fmt(lookup(s, 'sentences.sentences'))} "
                      f"sentences); documents left under {fmt(lookup(c, 'sentences.min_words'))} words or "
                      f"{fmt(lookup(c, 'sentences.min_sentences'))} sentences dropped"),
        "minhash": (f"MinHash LSH: Jaccard ≥ {fmt(minhash.get('threshold'))} on {fmt(minhash.get('ngram'))}-gram "
                    f"shingles, {fmt(lookup(s, 'minhash.buckets'))} bands × {fmt(lookup(s, 'minhash.hashes_per_bucket'))} hashes "
                    f"(P(candidate) at the threshold {fmt(lookup(s, 'minhash.p_candidate_at_threshold'))}); "
                    f"{fmt(lookup(s, 'minhash.clusters'))} clusters, {fmt(lookup(s, 'minhash.candidate_pairs'))} "
                    "candidate pairs"),
    }  # fmt: skip
    read = s.get("input", {})
    md.bullets([f"read {fmt(read.get('documents'))} documents"
                + (f" from {fmt(read.get('artifact_files'))} artifact file(s)" if read.get("artifact_files") else "")
                + (f" and {fmt(read.get('raw_files'))} raw file(s)" if read.get("raw_files") else "")])  # fmt: skip
    rows = [[name, s[name].get("in"), s[name].get("out"), s[name].get("removed"), details[name]]
            for name in ("decontamination", "exact", "sentences", "minhash") if name in s]  # fmt: skip
    md.table(["step", "documents in", "out", "removed", "how"], rows)
    off = [label for key, label in (("exact", "exact dedup"), ("minhash.enabled", "near-dup dedup"))
           if not lookup(c, key, True)]  # fmt: skip
    md.bullets([kept_line(s), "off: " + ", ".join(off) if off else ""])

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
    short = lookup(s, "decontamination.items_too_short")
    if short:
        md.para(f"Note: {fmt(short)} benchmark item(s) have fewer than {decontamination.get('ngram')} words and "
                "cannot be matched by n-gram overlap; they are not checked.")  # fmt: skip


def quality_filter_section(md: Markdown, artifact: Artifact, level: int) -> None:
    c, s = artifact.config, stats_of(artifact)
    classifiers = [(e, p) for e, p in artifact.parents()
                   if (p is not None and p.kind == "quality-classifier") or e.get("role") == "quality classifier"]  # fmt: skip
    lines = []
    for entry, parent in classifiers:
        if parent is None:  # a fastText model file or a classifier folder made elsewhere
            lines.append(f"classifier: `{entry['path']}` (outside llmforge, label `{c.get('label')}`, content "
                         f"`{entry['fingerprint'][:12]}`)")  # fmt: skip
            continue
        trained, held = stats_of(parent), lookup(parent.stats, "heldout") or {}
        line = (f"classifier: `{name_of(parent)}` (`{parent.fingerprint[:12]}`), trained on "
                f"{fmt(lookup(trained, 'train.positive'))} positive and {fmt(lookup(trained, 'train.negative'))} "
                f"negative documents; held out: precision {fmt(held.get('precision'))}, recall "
                f"{fmt(held.get('recall'))}, ROC AUC {fmt(held.get('roc_auc'))}")  # fmt: skip
        annotators = [p for e, p in parent.parents() if p is not None and p.kind == "annotations"]
        for labels in annotators:
            model = next((e for e, _ in labels.parents() if e.get("role") == "annotator"), {})
            line += (f"; labels from `{name_of(labels)}`: {fmt(lookup(labels.stats, 'documents'))} "
                     f"documents scored 0-5 by `{show_path(model.get('path', '?'))}` with FineWeb-Edu's rubric, "
                     f"positive at {fmt(lookup(parent.config, 'positive_min'))} or more")  # fmt: skip
        lines.append(line)
    rule = s.get("rule", {})
    lines.append(f"kept the top {percent(rule['keep'])} by score" if "keep" in rule
                 else f"kept documents scoring at least {fmt(rule.get('threshold'))}")  # fmt: skip
    md.bullets([*lines, f"lowest score kept: {fmt(s.get('threshold'))}", kept_line(s)])
    quantiles = s.get("score_quantiles", {})
    if quantiles:
        md.table(["score quantile of the input", *quantiles], [["score", *quantiles.values()]])
    if (Path(artifact.path) / "removed").is_dir():
        md.bullets([f"samples of the removed documents: `{show_path(Path(artifact.path) / 'removed')}`"])


def tokenize_train_section(md: Markdown, artifact: Artifact, level: int) -> None:
    c, s = artifact.config, stats_of(artifact)
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
    c, s = artifact.config, stats_of(artifact)
    tokenizers = [p for e, p in artifact.parents() if p is not None and p.kind in ("tokenizer", *MODEL_KINDS)]
    sources = s.get("sources", {})
    val_documents = s.get("val_documents")
    md.bullets([
        "tokenizer: " + (", ".join(f"`{name_of(t)}` ({t.kind})" for t in tokenizers) or "?")
        + f", fingerprint `{artifact.extra.get('tokenizer_fingerprint', '?')[:12]}`",
        f"{fmt(s.get('tokens'))} training tokens in {fmt(s.get('documents'))} documents, {fmt(s.get('shards'))} "
        f"shard(s) of {s.get('dtype', '?')}",
        f"validation split: {percent(c.get('val_fraction'))} of each source's documents held out → "
        f"{fmt(s.get('val_tokens'))} tokens" + (f" in {fmt(val_documents)} documents" if val_documents is not None else ""),
        "mixture: " + (f"target {fmt(c['target_tokens'])} training tokens" if c.get("target_tokens")
                       else "every source at its natural size or weight, no target"),
        *([f"fill-in-the-middle: {fmt(s['fim']['documents'])} training documents rewritten ({percent(c.get('fim_rate'))}"
           f" drawn), {fmt(s['fim']['spm'])} of them in SPM order, the rest PSM; validation documents whole"]
          if s.get("fim") else []),
    ])  # fmt: skip
    md.table(["source", "weight", "share", "tokens", "natural tokens", "passes", "max repeats", "documents",
              "val tokens"],
             [[name, row.get("weight"), row.get("share"), row.get("tokens"), row.get("natural_tokens"),
               row.get("passes"), row.get("max_repeats"), row.get("documents"), row.get("val_tokens")]
              for name, row in sources.items()])  # fmt: skip


def generic_section(md: Markdown, artifact: Artifact, level: int) -> None:
    md.bullets([f"{key}: {fmt(value)}" for key, value in flatten(artifact.stats)] or ["no stats recorded"])


DATA_SECTIONS = {
    "crawl-filter": crawl_filter_section,
    "dedup": dedup_section,
    "quality filter": quality_filter_section,
    "tokenize train": tokenize_train_section,
    "tokenize encode": tokenize_encode_section,
}
