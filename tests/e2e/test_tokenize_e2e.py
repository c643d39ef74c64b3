"""crawl-filter -> dedup -> tokenize train -> tokenize encode, as a user runs them: subprocesses, files on disk."""

import json
from collections import Counter

import pytest
from helpers import llmforge, write_jsonl
from warc_factory import prose

from llmforge.artifacts import Artifact, raw_input
from llmforge.data.documents import iter_texts
from llmforge.data.shards import TokenShards
from llmforge.data.tokenizer import load_tokenizer


@pytest.mark.slow
def test_crawl_to_token_shards(tmp_path):
    languages = ["en"] * 24 + ["de"] * 6
    records = [{"text": "\n\n".join(prose(seed, language)), "id": f"{language}-{seed}",
                "url": f"https://news.example/{language}/{seed}"} for seed, language in enumerate(languages)]  # fmt: skip
    records += [dict(records[n], id=f"mirror-{n}") for n in range(4)]  # exact copies for dedup to remove
    raw = write_jsonl(tmp_path / "raw" / "crawl.jsonl", records)

    docs = llmforge("crawl-filter", raw, "-o", tmp_path / "docs", "--languages", "en,de").stdout.strip()
    deduped = llmforge("dedup", docs, "-o", tmp_path / "dedup").stdout.strip()
    tok = llmforge("tokenize", "train", f"docs={deduped}", "-o", tmp_path / "tok", "--vocab-size", "1024")
    assert tok.stdout == f"{tmp_path / 'tok'}\n"
    assert "bytes_per_token" in tok.stderr and "tokens_per_word" in tok.stderr  # fertility on screen
    stats = Artifact.open(tmp_path / "tok").stats  # crawl-filter labels every document's language
    by_language = stats["held_out_by_language"]
    assert set(by_language) == {"en", "de"} and stats["held_out"]["documents"] == 3
    assert sum(row["documents"] for row in by_language.values()) == 3
    encode = ["tokenize", "encode", f"docs={deduped}", "--tokenizer", tmp_path / "tok", "-o", tmp_path / "tokens",
              "--val-fraction", "0.1"]  # fmt: skip
    out = llmforge(*encode).stdout.strip()
    assert out == str(tmp_path / "tokens")

    # Every document that survived dedup is in the shards, exactly as the tokenizer encodes it, EOS after each.
    texts = list(iter_texts(Artifact.open(deduped)))
    assert len(texts) == 30  # the mirrors are gone
    tokenizer = load_tokenizer(tmp_path / "tokens" / "tokenizer")
    expected = Counter(tuple(ids + [tokenizer.eos_token_id]) for ids in tokenizer(texts)["input_ids"])
    shards = TokenShards(out)
    found = Counter(tuple(d.tolist()) for split in ("train", "val") for d in shards.documents(split))
    assert found == expected and shards.index["splits"]["val"]["documents"] == max(1, round(len(texts) * 0.1))

    # Lineage: tokens -> tokenizer and documents -> dedup -> crawl-filter -> the raw file, by content fingerprint.
    tokens = Artifact.open(out)
    kinds = {(a.kind, a.stage) for a in tokens.ancestors()}
    assert {("tokenizer", "tokenize train"), ("documents", "dedup"), ("documents", "crawl-filter")} <= kinds
    crawl = next(a for a in tokens.ancestors() if a.stage == "crawl-filter")
    raw_entries = [i for i in crawl.manifest["inputs"] if i["kind"] == "raw"]
    assert [e["fingerprint"] for e in raw_entries] == [raw_input(raw).fingerprint]
    tree = llmforge("lineage", out).stderr
    assert "tokenize train" in tree and "crawl-filter" in tree and "crawl.jsonl" in tree

    # The same command again is a no-op; a different mix in the way is refused (exit 2) without --force.
    again = llmforge(*encode)
    assert again.stdout.strip() == out and "up to date" in again.stderr
    assert (
        json.loads((tmp_path / "tokens" / "artifact.json").read_text())["fingerprint"] == tokens.fingerprint
    )
    refused = llmforge(*encode, "--target-tokens", "5000", check=False)
    assert refused.returncode == 2 and "config.target_tokens: None -> 5000" in refused.stderr
