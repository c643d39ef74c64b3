"""tokenize train / encode: a tokenizer trained on text made here, shards read back, mixtures measured."""

import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import documents_artifact, documents_artifact_from_records, llmforge, sentences

from llmforge.artifacts import Artifact
from llmforge.data import encode as encoding
from llmforge.data.shards import TokenShards
from llmforge.data.tokenizer import (
    CHAT_TEMPLATE,
    CONTROL_TOKENS,
    TAG_TOKENS,
    load_tokenizer,
    tokenizer_fingerprint,
)
from llmforge.errors import InputError
from llmforge.stages import tokenize
from llmforge.stages.tokenize import EncodeConfig, TrainConfig

UNICODE = [
    "Grüße aus München: café crème, naïve façade, Ærøskøbing.",
    "日本語のテキストと中文文本，还有한국어。",
    "Привет, мир! Ελληνικά. مرحبا بالعالم. שלום",
    "emoji 🎉🚀👩‍💻, zero\u200bwidth, combining e\u0301, tabs\tand\r\nwindows newlines",
]
CODE = [
    'def add(a, b):\n    """Sum two numbers."""\n    return a + b\n\n\nprint(add(2, 40))\n',
    'for (int i = 0; i < 10; ++i) {\n\tprintf("%d\\n", i * 0x1F);\n}\n',
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;  -- trailing  spaces  \n",
]
NUMBERS = ["Pi is 3.14159265, e is 2.71828; 1,234,567 people paid $99.99 on 2024-11-22 at 09:05."]


def code_documents(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    names = ["total", "count", "value", "index", "result", "items"]
    return [
        f"def {rng.choice(names)}_{n}(x, y={rng.randint(0, 99)}):\n"
        f"    if x > {rng.randint(0, 999)}:\n        return x * y\n    return [i for i in range(x)]\n"
        for n in range(count)
    ]


def web_documents(count: int, seed: int = 0) -> list[str]:
    return [" ".join(sentences(6, seed=seed * 100_000 + n)) for n in range(count)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    web, code = web_documents(200), code_documents(30)
    return {
        "web": (documents_artifact(root / "web", web), web),
        "code": (documents_artifact(root / "code", code, stage="dedup"), code),
    }


@pytest.fixture(scope="module")
def bpe(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe") / "tok"
    return tokenize.train([f"web={corpus['web'][0]}:0.8", f"code={corpus['code'][0]}:0.2"], out,
                          TrainConfig(vocab_size=512))  # fmt: skip


@pytest.fixture(scope="module")
def unigram(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("unigram") / "tok"
    return tokenize.train([str(corpus["web"][0]), str(corpus["code"][0])], out,
                          TrainConfig(vocab_size=512, algorithm="unigram"))  # fmt: skip


@pytest.fixture(params=["bpe", "unigram"])
def trained(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------------------------------------------------
# tokenize train


def test_train_writes_a_tokenizer_artifact_with_the_sample_drawn_by_weight(bpe, corpus):
    artifact = Artifact.open(bpe)
    assert artifact.kind == "tokenizer" and artifact.stage == "tokenize train"
    assert artifact.extra["tokenizer_fingerprint"] == tokenizer_fingerprint(bpe)
    assert artifact.config["weights"] == {"web": 0.8, "code": 0.2}
    assert [(i["name"], i["kind"]) for i in artifact.manifest["inputs"]] == [
        ("web", "documents"),
        ("code", "documents"),
    ]
    assert artifact.stats["vocab_size"] == 512 == len(load_tokenizer(bpe))
    sources = artifact.stats["sources"]
    assert (sources["web"]["documents"], sources["code"]["documents"]) == (200, 30)
    sampled = sources["web"]["sample_bytes"] + sources["code"]["sample_bytes"]
    largest_document = max(len(t.encode()) for t in corpus["code"][1])
    assert abs(sources["code"]["sample_bytes"] - 0.2 * sampled) <= largest_document
    assert sources["code"]["passes"] > 1  # 20% of the sample is more than the code holds: it is repeated
    held_out = artifact.stats["held_out"]
    assert held_out["documents"] == 20 + 3  # a tenth of each input
    assert 2 < held_out["bytes_per_token"] < 8 and 0.5 < held_out["tokens_per_word"] < 3


def test_transformers_loads_the_artifact_with_its_chat_template(trained):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = AutoTokenizer.from_pretrained(trained)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == tuple(CONTROL_TOKENS[:3])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": "<think>2 plus 2</think>4"}]  # fmt: skip
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
                    "<|im_start|>assistant\n<think>2 plus 2</think>4<|im_end|>\n")  # fmt: skip
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)  # fmt: skip
    assert encoded["input_ids"] == tokenizer(text)["input_ids"]
    answer = [i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(answer) == "<think>2 plus 2</think>4<|im_end|>"


def test_round_trip_on_unicode_code_and_numbers(trained):
    tokenizer = load_tokenizer(trained)
    for text in UNICODE + CODE + NUMBERS:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids


def test_digits_are_split_one_per_token(trained):
    tokenizer = load_tokenizer(trained)
    assert tokenizer.tokenize("31415926") == list("31415926")
    pieces = tokenizer.tokenize("in 2024 we paid 99.95")
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("2024") + list("99") + list("95")


def test_special_and_tag_tokens_are_single_ids(trained):
    tokenizer = load_tokenizer(trained)
    for token in CONTROL_TOKENS + TAG_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert tokenizer(f"a{token}b")["input_ids"].count(token_id) == 1
        assert tokenizer(token)["input_ids"] == [token_id]
    ids = tokenizer("<|im_start|>assistant\n<think>x</think>y<|im_end|>")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "assistant\n<think>x</think>y"  # tags are kept


def test_fertility_is_reported_per_language(tmp_path, capsys):
    german = "Die Katze schläft auf dem warmen Fensterbrett."
    records = [{"text": text, "metadata": {"language": "en"}} for text in web_documents(40)]
    records += [{"text": german, "metadata": {"language": "de"}} for _ in range(20)]
    docs = documents_artifact_from_records(tmp_path / "docs", records)
    out = tokenize.train([str(docs)], tmp_path / "tok", TrainConfig(vocab_size=400))
    stats = Artifact.open(out).stats
    tokenizer = load_tokenizer(out)
    tokens = len(tokenizer(german)["input_ids"])
    assert stats["held_out"]["documents"] == 6
    assert (
        stats["held_out_by_language"]["en"]["documents"] + stats["held_out_by_language"]["de"]["documents"]
        == 6
    )
    assert stats["held_out_by_language"]["de"]["bytes_per_token"] == round(len(german.encode()) / tokens, 4)
    assert stats["held_out_by_language"]["de"]["tokens_per_word"] == round(tokens / 7, 4)
    screen = capsys.readouterr().err  # on screen as well, one line per language
    for language in ("en", "de"):
        row = stats["held_out_by_language"][language]
        assert (f"  {language}: {row['bytes_per_token']} bytes/token, {row['tokens_per_word']} tokens/word "
                f"({row['documents']} documents)") in screen  # fmt: skip


def test_fertility_counts_special_token_strings_as_text(trained):
    """A held-out page quoting `<|im_start|>` costs the tokens `tokenize encode` gives it (text), not one id."""
    from tokenizers import Tokenizer

    from llmforge.data.tokenizer import fertility

    backend = Tokenizer.from_file(str(Path(trained) / "tokenizer.json"))
    quoted = f"type {CONTROL_TOKENS[3]}user to start a turn"
    as_text = len(load_tokenizer(trained)(quoted, split_special_tokens=True)["input_ids"])
    assert fertility(backend, [quoted])["tokens"] == as_text > len(backend.encode(quoted).ids)
    assert backend.encode_special_tokens is False  # the tokenizer is left as it was given


def test_vocabulary_smaller_than_bytes_and_specials_is_refused(corpus, tmp_path):
    with pytest.raises(InputError, match="vocab_size 266 is too small: .* alone need 267"):
        tokenize.train([str(corpus["web"][0])], tmp_path / "tok", TrainConfig(vocab_size=266))
    assert not (tmp_path / "tok").exists() and not (tmp_path / "tok.partial").exists()


# ---------------------------------------------------------------------------------------------------------------
# tokenize encode


def read_documents(out: Path, split: str) -> list[tuple[int, ...]]:
    return [tuple(doc.tolist()) for doc in TokenShards(out).documents(split)]


def direct(tokenizer, texts: list[str]) -> list[tuple[int, ...]]:
    return [tuple(ids + [tokenizer.eos_token_id]) for ids in tokenizer(texts)["input_ids"]]


def test_encode_shards_hold_exactly_the_direct_encoding_of_every_document(bpe, corpus, tmp_path):
    config = EncodeConfig(workers=2, chunk_chars=20_000, val_fraction=0.05)
    out = tokenize.encode([str(corpus["web"][0]), str(corpus["code"][0])], tmp_path / "tokens", tokenizer=bpe,
                          config=config)  # fmt: skip
    tokenizer = load_tokenizer(out / "tokenizer")
    expected = Counter(direct(tokenizer, corpus["web"][1] + corpus["code"][1]))
    train, val = read_documents(out, "train"), read_documents(out, "val")
    assert Counter(train) + Counter(val) == expected  # every document once, EOS after each, nothing else
    assert not set(train) & set(val) and len(val) == 10 + 2
    shards = TokenShards(out)
    assert shards.dtype == np.uint16 and shards.vocab_size == 512
    assert shards.special_ids == {"bos": 0, "eos": 1, "pad": 2}
    assert len(shards.index["splits"]["train"]["shards"]) == 1
    artifact = Artifact.open(out)
    fingerprint = Artifact.open(bpe).extra["tokenizer_fingerprint"]
    assert artifact.extra["tokenizer_fingerprint"] == fingerprint == tokenizer_fingerprint(out / "tokenizer")
    assert [i["kind"] for i in artifact.manifest["inputs"]] == ["documents", "documents", "tokenizer"]
    assert artifact.stats["tokens"] == sum(map(len, train)) and artifact.stats["val_tokens"] == sum(
        map(len, val)
    )
    assert not (out / "checkpoints").exists()
    assert artifact.verify() == []


def test_special_token_strings_in_documents_are_text_unless_asked(bpe, tmp_path):
    """A page quoting `<|im_start|>` or the EOS string must not put control tokens in the pretraining stream; the
    EOS the stage appends after each document is the only one. `special_tokens: control` keeps them (chat
    transcripts rendered on purpose)."""
    from llmforge.data.tokenizer import CONTROL_TOKENS, EOS

    texts = [f"how to prompt: {CONTROL_TOKENS[3]}user hello{CONTROL_TOKENS[4]} then {EOS}", "plain text"] * 5
    docs = documents_artifact(tmp_path / "docs", texts)
    tokenizer = load_tokenizer(bpe)
    eos, start = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(CONTROL_TOKENS[3])
    for mode, expected_eos, expected_start in (("text", 10, 0), ("control", 15, 5)):
        out = tokenize.encode([str(docs)], tmp_path / mode, tokenizer=bpe,
                              config=EncodeConfig(val_fraction=0.0, special_tokens=mode, workers=1))  # fmt: skip
        tokens = [t for doc in read_documents(out, "train") for t in doc]
        assert (tokens.count(eos), tokens.count(start)) == (expected_eos, expected_start), mode
        if mode == "text":
            decoded = sorted(tokenizer.decode(doc[:-1]) for doc in read_documents(out, "train"))
            assert decoded == sorted(texts)  # the characters kept, as text


@pytest.fixture(scope="module")
def fim_bpe(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("fim-bpe") / "tok"
    return tokenize.train([str(corpus["web"][0]), str(corpus["code"][0])], out,
                          TrainConfig(vocab_size=512, fim_tokens=True))  # fmt: skip


def unscramble(tokenizer, document: tuple[int, ...]) -> tuple[str, str]:
    """A fill-in-the-middle document's order (PSM or SPM) and the text it was cut from."""
    from llmforge.data.tokenizer import FIM_TOKENS

    prefix_id, middle_id, suffix_id = tokenizer.convert_tokens_to_ids(FIM_TOKENS)
    body = list(document[:-1])  # the EOS after the middle ends it
    assert document[-1] == tokenizer.eos_token_id and body[0] == prefix_id
    middle_at = body.index(middle_id)

    def text(ids):
        return tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    if body[1] == suffix_id:  # SPM: <PRE> <SUF> suffix <MID> prefix middle
        return "spm", text(body[middle_at + 1 :]) + text(body[2:middle_at])
    suffix_at = body.index(suffix_id)
    return "psm", text(body[1:suffix_at]) + text(body[middle_at + 1 :]) + text(
        body[suffix_at + 1 : middle_at]
    )


def test_fill_in_the_middle_rewrites_training_documents_and_keeps_every_character(fim_bpe, corpus, tmp_path):
    """--fim-rate 1: every training document is cut at two character positions and written in PSM or SPM order
    with the tokenizer's sentinels, each part tokenized on its own; put back in order, the parts are the document.
    Validation documents stay whole, and the split and the mix are those of the run without FIM."""
    from llmforge.card import make_card
    from llmforge.data.tokenizer import FIM_TOKENS

    inputs = [str(corpus["web"][0]), str(corpus["code"][0])]
    texts = corpus["web"][1] + corpus["code"][1]
    config = EncodeConfig(workers=1, val_fraction=0.05, fim_rate=1.0)
    out = tokenize.encode(inputs, tmp_path / "fim", tokenizer=fim_bpe, config=config)
    plain = tokenize.encode(
        inputs, tmp_path / "plain", tokenizer=fim_bpe, config=config.model_copy(update={"fim_rate": 0.0})
    )
    tokenizer = load_tokenizer(out / "tokenizer")
    sentinels = set(tokenizer.convert_tokens_to_ids(FIM_TOKENS))
    train, val = read_documents(out, "train"), read_documents(out, "val")
    orders, restored = zip(*(unscramble(tokenizer, doc) for doc in train), strict=True)
    assert Counter(restored) + Counter(tokenizer.decode(doc[:-1]) for doc in val) == Counter(texts)
    assert val == read_documents(plain, "val") and not any(sentinels & set(doc) for doc in val)
    stats = Artifact.open(out).stats["fim"]
    assert {**stats, "spm": 0} == {
        "rate": 1.0,
        "spm_rate": 0.5,
        "documents": len(train),
        "spm": 0,
        "skipped": 0,
    }
    # a PSM document cut at its very start reads as SPM (both are <PRE> <SUF> ...): the same text either way
    assert 0.3 < stats["spm"] / len(train) < 0.7 and stats["spm"] <= orders.count("spm") <= stats["spm"] + 5
    assert "fill-in-the-middle: " in make_card(out) and "SPM order" in make_card(out)
    # drawn from a generator of its own: the same run again gives the same shards
    again = tokenize.encode(inputs, tmp_path / "again", tokenizer=fim_bpe, config=config)
    assert read_documents(again, "train") == train


def test_fill_in_the_middle_at_a_rate_and_refused_without_sentinels(fim_bpe, bpe, corpus, tmp_path):
    inputs = [str(corpus["web"][0])]
    out = tokenize.encode(inputs, tmp_path / "half", tokenizer=fim_bpe,
                          config=EncodeConfig(workers=1, val_fraction=0.0, fim_rate=0.5, fim_spm_rate=0.0))  # fmt: skip
    tokenizer = load_tokenizer(out / "tokenizer")
    prefix_id = tokenizer.convert_tokens_to_ids("<|fim_prefix|>")
    rewritten = [doc for doc in read_documents(out, "train") if doc[0] == prefix_id]
    assert 70 < len(rewritten) < 130 and {unscramble(tokenizer, doc)[0] for doc in rewritten} == {"psm"}
    result = llmforge("tokenize", "encode", str(corpus["web"][0]), "--tokenizer", str(bpe), "-o",
                      str(tmp_path / "no"), "--fim-rate", "0.5", check=False)  # fmt: skip
    assert result.returncode == 2 and "--fim-rate needs fill-in-the-middle tokens" in result.stderr
    assert "tokenize train --fim-tokens" in result.stderr and not (tmp_path / "no").exists()


def test_fim_sentinels_are_found_as_llmforge_qwen_or_starcoder_spell_them():
    from llmforge.data.fim import sentinel_ids

    assert sentinel_ids({"<|fim_prefix|>": 5, "<|fim_middle|>": 6, "<|fim_suffix|>": 7}) == (5, 6, 7)
    assert sentinel_ids({"<fim_prefix>": 1, "<fim_middle>": 2, "<fim_suffix>": 3, "<fim_pad>": 4}) == (
        1,
        2,
        3,
    )
    assert sentinel_ids({"<fim_prefix>": 1, "<fim_middle>": 2}) is None


def test_mixture_upsamples_a_small_source_to_its_weight(bpe, corpus, tmp_path):
    config = EncodeConfig(workers=1, target_tokens=20_000, shard_tokens=8_000, val_fraction=0.1)
    specs = [f"web={corpus['web'][0]}:0.6", f"code={corpus['code'][0]}:0.4"]
    out = tokenize.encode(specs, tmp_path / "tokens", tokenizer=bpe, config=config)
    tokenizer = load_tokenizer(out / "tokenizer")
    owner = {doc: "web" for doc in direct(tokenizer, corpus["web"][1])}
    owner.update({doc: "code" for doc in direct(tokenizer, corpus["code"][1])})
    train = read_documents(out, "train")
    tokens = Counter()
    for doc in train:
        tokens[owner[doc]] += len(doc)  # KeyError = a shard document that is not a direct encoding
    total = sum(tokens.values())
    assert abs(total - 20_000) <= 2 * max(map(len, owner))  # the target, to the nearest document per source
    assert abs(tokens["code"] / total - 0.4) < 0.01 and abs(tokens["web"] / total - 0.6) < 0.01
    sources = Artifact.open(out).stats["sources"]
    assert {name: s["tokens"] for name, s in sources.items()} == dict(tokens)
    repeats = Counter(doc for doc in train if owner[doc] == "code")
    assert sources["code"]["passes"] > 4 and sources["web"]["passes"] < 1
    assert max(repeats.values()) == sources["code"]["max_repeats"]
    assert set(repeats.values()) <= {int(sources["code"]["passes"]), int(sources["code"]["passes"]) + 1}
    val = read_documents(out, "val")
    assert not set(val) & set(train) and {owner[doc] for doc in val} == {"web", "code"}
    assert len(TokenShards(out).index["splits"]["train"]["shards"]) == 3  # 8,000-token shards


def test_a_target_above_what_the_inputs_hold_repeats_them_and_says_so(bpe, corpus, tmp_path, capsys):
    config = EncodeConfig(workers=1, target_tokens=100_000, val_fraction=0.05)
    out = tokenize.encode([f"web={corpus['web'][0]}"], tmp_path / "tokens", tokenizer=bpe, config=config)
    web = Artifact.open(out).stats["sources"]["web"]
    natural, largest = web["natural_tokens"], max(map(len, read_documents(out, "train")))
    # Done as asked (to the nearest document), with whole passes repeated; the warnings say what it costs.
    assert abs(web["tokens"] - 100_000) <= largest and web["passes"] > 4
    screen = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert f"target_tokens 100,000 is {100_000 / natural:.1f} times the {natural:,} training tokens" in screen
    assert "set pretrain's train_tokens" in screen and "web is repeated" in screen


def test_an_interrupted_encode_reuses_finished_chunks(bpe, corpus, tmp_path, monkeypatch):
    inputs = [str(corpus["web"][0]), str(corpus["code"][0])]
    config = EncodeConfig(workers=1, chunk_chars=10_000)
    real, calls = encoding.encode_chunk, []

    def counted(*args):
        calls.append((args[1].name, args[2]))  # (source directory, chunk number)
        if crash_at is not None and len(calls) == crash_at:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(encoding, "encode_chunk", counted)
    crash_at = None
    reference = tokenize.encode(inputs, tmp_path / "reference", tokenizer=bpe, config=config)
    every_chunk, calls[:] = list(calls), []
    assert len(every_chunk) > 5
    crash_at = 3
    with pytest.raises(KeyboardInterrupt):
        tokenize.encode(inputs, tmp_path / "tokens", tokenizer=bpe, config=config)
    assert (tmp_path / "tokens.partial").is_dir() and not (tmp_path / "tokens").exists()
    calls[:], crash_at = [], None
    out = tokenize.encode(inputs, tmp_path / "tokens", tokenizer=bpe, config=config)
    assert calls == every_chunk[2:]  # the two finished chunks are not encoded again
    resumed = Artifact.open(out)
    assert resumed.stats["encoded_chunks_reused"] == 2
    assert resumed.manifest["files"] == Artifact.open(reference).manifest["files"]


def test_encode_reuses_a_models_tokenizer_and_refuses_another(
    tiny_model, tiny_tokenizer_dir, bpe, corpus, tmp_path
):
    web = str(corpus["web"][0])
    out = tokenize.encode([web], tmp_path / "tokens", model=tiny_model, config=EncodeConfig(workers=1))
    model_fingerprint = Artifact.open(tiny_model).extra["tokenizer_fingerprint"]
    assert Artifact.open(out).extra["tokenizer_fingerprint"] == model_fingerprint
    assert tokenizer_fingerprint(out / "tokenizer") == model_fingerprint
    assert [i["kind"] for i in Artifact.open(out).manifest["inputs"]] == ["documents", "model"]
    tokenizer = load_tokenizer(tiny_model)
    train, val = read_documents(out, "train"), read_documents(out, "val")
    assert Counter(train) + Counter(val) == Counter(direct(tokenizer, corpus["web"][1]))
    with pytest.raises(InputError, match=f"{bpe}: not the tokenizer of {tiny_model} .* drop --tokenizer"):
        tokenize.encode([web], tmp_path / "other", tokenizer=bpe, model=tiny_model)
    with pytest.raises(InputError, match=rf"is a model artifact .*; to encode with a model's own tokenizer, pass "
                                         rf"--model {tiny_model}$"):  # fmt: skip
        tokenize.encode([web], tmp_path / "other", tokenizer=tiny_model)
    plain = tmp_path / "hf"  # a Hugging Face directory made elsewhere
    shutil.copytree(tiny_model, plain, ignore=shutil.ignore_patterns("artifact.json"))
    out = tokenize.encode([web], tmp_path / "from-dir", model=plain, config=EncodeConfig(workers=1))
    assert Artifact.open(out).extra["tokenizer_fingerprint"] == model_fingerprint


# ---------------------------------------------------------------------------------------------------------------
# bad input on the command line: one line, exit 2


@pytest.fixture(scope="module")
def empty(tmp_path_factory):
    return documents_artifact(tmp_path_factory.mktemp("empty") / "docs", [])


@pytest.fixture(scope="module")
def blank(tmp_path_factory):  # documents, but no text: encoded, nothing but EOS tokens
    return documents_artifact(tmp_path_factory.mktemp("blank") / "docs", ["", "  \n\t", ""])


@pytest.fixture(scope="module")
def edited(bpe, tmp_path_factory):  # a tokenizer artifact whose tokenizer.json was changed after training
    copy = tmp_path_factory.mktemp("edited") / "tok"
    shutil.copytree(bpe, copy)
    with open(copy / "tokenizer.json", "a") as handle:
        handle.write("\n")
    return copy


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "{empty}", "-o", "{out}"], "{empty}: holds no documents; there is nothing to train"),
        (["encode", "{web}", "--tokenizer", "{bpe}", "-o", "{out}"] + ["{empty}"],
         "{empty}: holds no documents; there is nothing to encode"),
        (["train", "{blank}", "-o", "{out}"],
         "{blank}: its 3 documents hold no text (all empty or whitespace); there is nothing to train"),
        (["encode", "web={web}:0.7", "blank={blank}:0.3", "--tokenizer", "{bpe}", "-o", "{out}"],
         "{blank}: its 3 documents hold no text (all empty or whitespace); there is nothing to encode"),
        (["train", "{web}", "-o", "{out}", "--vocab-size", "100"],
         "vocab_size 100 is too small: the 256 byte symbols and 11 special tokens alone need 267"),
        (["encode", "web={web}:0.7x", "--tokenizer", "{bpe}", "-o", "{out}"],
         "web={web}:0.7x: weight '0.7x' is not a positive number; write [NAME=]DIR[:WEIGHT], e.g. web=docs/web:0.7"),
        (["encode", "{web}", "--tokenizer", "{web}", "-o", "{out}"],
         "tokenize encode needs a tokenizer artifact made by `llmforge tokenize train`; {web} is a documents "
         "artifact (made by `llmforge crawl-filter`)"),
        (["encode", "{web}", "-o", "{out}"], "tokenize encode needs --tokenizer (made by"),
        (["encode", "{web}", "--tokenizer", "{edited}", "-o", "{out}"],
         "{edited}/tokenizer.json: changed since `llmforge tokenize train` wrote it"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_line_and_exit_2(args, message, corpus, bpe, empty, blank, edited, tmp_path):
    values = {"empty": empty, "blank": blank, "edited": edited, "web": corpus["web"][0], "bpe": bpe,
              "out": tmp_path / "out"}  # fmt: skip
    result = llmforge("tokenize", *[a.format(**values) for a in args], check=False)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + message.format(**values)), result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
