"""Perplexity sources (documents or tokens artifacts, JSONL or text files) become lm-eval loglikelihood_rolling tasks
over a JSONL of their documents: word and byte perplexity and bits per byte, lm-eval's own metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

from llmforge.errors import InputError

PERPLEXITY_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def perplexity_tasks(paths: list[str], max_documents: int, scratch: Path) -> tuple[list[dict], list]:
    """One inline lm-eval task per source (word/byte perplexity, bits per byte) and the input refs."""
    from llmforge.artifacts import MANIFEST, expand_paths, open_artifact, raw_input
    from llmforge.evaluation.tasks import load_jsonl_splits

    configs, refs, names = [], [], set()
    for path in paths:
        if (Path(path) / MANIFEST).is_file():
            artifact = open_artifact(path, "eval --perplexity", ["tokens", "documents"])
            texts = _artifact_texts(artifact, max_documents)
            ref = artifact.ref()
        else:
            files = expand_paths([path])
            texts = _file_texts(files, max_documents)
            ref = raw_input(path, files)
        if not texts:
            raise InputError(f"{path}: no documents to measure perplexity on")
        ref.detail["role"] = "perplexity"
        refs.append(ref)
        name = "perplexity_" + (re.sub(r"\W+", "_", Path(path).resolve().name).strip("_") or "text")
        while name in names:
            name += "_"
        names.add(name)
        data = scratch / f"{name}.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        configs.append({"task": name, "custom_dataset": load_jsonl_splits,
                        "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
                        "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "text",
                        "metric_list": [{"metric": m} for m in PERPLEXITY_METRICS], "metadata": {"version": 1.0}})  # fmt: skip
    return configs, refs


def _artifact_texts(artifact, max_documents: int) -> list[str]:
    from itertools import islice

    from llmforge.data.documents import iter_texts

    if artifact.kind == "documents":
        return list(islice(iter_texts(artifact), max_documents))
    from llmforge.data.shards import TokenShards
    from llmforge.data.tokenizer import load_tokenizer

    shards = TokenShards(artifact.path)
    if not shards.num_tokens("val"):
        raise InputError(
            f"{artifact.path}: its held-out 'val' split is empty; encode with --val-fraction > 0"
        )
    shards.shards("val", check_ids=True)  # a damaged shard is named before the tokenizer is even loaded
    tokenizer = load_tokenizer(shards.tokenizer_path)
    eos = shards.special_ids.get("eos")
    texts = []
    for ids in islice(shards.documents("val"), max_documents):
        ids = ids[:-1] if len(ids) and int(ids[-1]) == eos else ids  # the EOS the encoder appended
        texts.append(tokenizer.decode(ids.tolist(), skip_special_tokens=False))
    return texts


def _file_texts(files: list[str], max_documents: int) -> list[str]:
    from llmforge.evaluation.tasks import read_jsonl

    texts = []
    for name in files:
        if name.endswith(".jsonl"):
            for number, record in enumerate(read_jsonl(name), 1):
                if not isinstance(record.get("text"), str):
                    raise InputError(f"{name}: record {number} has no string 'text' field")
                texts.append(record["text"])
        else:
            try:
                texts.append(Path(name).read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise InputError(f"{name}: not UTF-8 text") from None
    return texts[:max_documents]
