"""The token shard format: what is written reads back, and damage is named by file."""

import numpy as np
import pytest
from helpers import sentences, tokens_artifact

from llmforge.data.shards import TokenShards
from llmforge.data.tokenizer import load_tokenizer
from llmforge.errors import InputError


def test_shards_round_trip_and_name_the_damaged_file(tmp_path, tiny_tokenizer_dir):
    texts = sentences(300)
    out = tokens_artifact(tmp_path / "tokens", tiny_tokenizer_dir, texts)
    shards = TokenShards(out)
    tokenizer = load_tokenizer(out / "tokenizer")
    docs = list(shards.documents("train"))
    assert len(docs) == 270 and shards.dtype == np.uint16
    assert docs[0].tolist() == tokenizer(texts[30])["input_ids"] + [tokenizer.eos_token_id]
    assert shards.num_tokens("train") == sum(len(d) for d in docs)
    damaged = shards.shards("train")[0].path
    damaged.write_bytes(damaged.read_bytes()[:-2])
    with pytest.raises(InputError, match=f"{damaged}: .* truncated or corrupt"):
        TokenShards(out).shards("train")


def test_vocabularies_above_65536_get_uint32_shards_that_read_back(tmp_path):
    from llmforge.data.shards import ShardWriter, dtype_for_vocab, write_index

    assert dtype_for_vocab(65_536) == "uint16" and dtype_for_vocab(65_537) == "uint32"
    vocab, eos = 100_000, 1
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, vocab, size=int(n)).tolist() for n in rng.integers(1, 50, size=40)]
    documents[0] = [65_535, 65_536, 99_999]  # ids a uint16 would wrap
    writer = ShardWriter(tmp_path, "train", dtype_for_vocab(vocab), eos, shard_tokens=300)
    for ids in documents:
        writer.add(ids)
    written = writer.close()
    write_index(tmp_path, "uint32", vocab, {"eos": eos}, {"train": written})
    shards = TokenShards(tmp_path)
    assert shards.dtype == np.uint32 and len(written) > 1  # several shards, no document split between them
    assert [d.tolist() for d in shards.documents("train")] == [ids + [eos] for ids in documents]
    assert (tmp_path / written[0]["file"]).stat().st_size == 4 * written[0]["tokens"]
    assert shards.num_tokens("train") == sum(len(ids) + 1 for ids in documents)
