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
