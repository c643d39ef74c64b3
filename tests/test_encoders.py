"""tokenize encode's two encoders: tiktoken gives `tokenizers`' ids, or the stage falls back to `tokenizers`."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from helpers import documents_artifact, llmforge, sentences, stats_mismatches
from test_tokenize import CODE, NUMBERS, UNICODE, code_documents, direct, read_documents

from llmforge.artifacts import Artifact, InputRef, canonical_hash, run_stage
from llmforge.data.encode import make_encoder
from llmforge.data.tiktoken_bpe import Unmappable, first_difference, plan
from llmforge.data.tokenizer import CONTROL_TOKENS, EOS, load_tokenizer, tokenizer_fingerprint, wrap
from llmforge.errors import InputError
from llmforge.stages import tokenize
from llmforge.stages.tokenize import EncodeConfig, TrainConfig

# Pieces that stress the split regex and the added-token matching: whitespace runs, every kind of newline,
# contractions in both cases, digits, marks, scripts, emoji sequences, our special and tag tokens, and near-misses.
PIECES = [
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u2009", "\u200b", "\u3000",
    "'s", "'S", "'ll", "'LL", "'re", "'d", "’s", "don't", "I'M",
    "0", "7", "42", "2024-11-22", "3.14159", "1,234,567", "٣", "४", "½", "Ⅻ",
    "the", "The", "THE", "café", "e\u0301", "naïve", "Straße", "日本語", "中文", "한국어", "Привет", "ελληνικά",
    "مرحبا", "שלום", "🎉", "👩‍💻", "🇫🇷", ".", ",", ";", "!?", "...", "()", "{}", "[]", "<", ">", "|", "_", "-",
    "->", "==", "\\", '"', "#", "$", "%", "&", "@", "^", "~", "`",
    "<|end_of_text|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>", "<|pad|>", "<think>", "</think>",
    "<tool_call>", "<|end_of", "<|end_of_text|", "<think", "think>", "<|im_start|>user\n",
]  # fmt: skip


def random_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40))) for _ in range(count)]


VARIED = UNICODE + CODE + NUMBERS + ["", " ", "\n", "a" * 500, "9" * 50, " " * 33 + "x", "x\n\n\n   \t\ty  "]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    texts = [" ".join(sentences(6, seed=n)) for n in range(150)] + code_documents(30) + VARIED
    return documents_artifact(tmp_path_factory.mktemp("corpus") / "docs", texts), texts


@pytest.fixture(scope="module")
def bpe(corpus, tmp_path_factory):
    return tokenize.train(
        [str(corpus[0])], tmp_path_factory.mktemp("bpe") / "tok", TrainConfig(vocab_size=600)
    )


def tokenizer_artifact(out: Path, backend) -> Path:
    """A tokenizer artifact holding `backend` (a `tokenizers.Tokenizer`) with our specials and template."""

    def body(ctx):
        wrap(backend).save_pretrained(ctx.work)
        ctx.extra["tokenizer_fingerprint"] = tokenizer_fingerprint(ctx.work)

    ref = InputRef(path="(made by the test)", kind="raw", fingerprint=canonical_hash(backend.to_str()))
    return run_stage("tokenize train", "tokenizer", TrainConfig(), [ref], out, body)


def variant(bpe: Path, out: Path, change) -> Path:
    """Our BPE with one part changed by `change(tokenizer)`."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(bpe / "tokenizer.json"))
    change(backend)
    return tokenizer_artifact(out, backend)


@pytest.fixture(scope="module")
def wordpiece(corpus, tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=["[UNK]", *CONTROL_TOKENS], show_progress=False
    )
    backend.train_from_iterator(corpus[1], trainer=trainer)
    return tokenizer_artifact(tmp_path_factory.mktemp("wordpiece") / "tok", backend)


@pytest.fixture(scope="module")
def normalized(bpe, tmp_path_factory):  # NFKC folds "½" and "Ⅻ": tiktoken has no normalizer
    from tokenizers import normalizers

    def change(backend):
        backend.normalizer = normalizers.NFKC()

    return variant(bpe, tmp_path_factory.mktemp("nfkc") / "tok", change)


@pytest.fixture(scope="module")
def gaps(bpe, tmp_path_factory):
    """A split regex that matches letters and digits only: `tokenizers` keeps the text between matches as pieces of
    its own, tiktoken drops it. It maps statically and differs only on the documents."""
    from tokenizers import Regex, pre_tokenizers

    def change(backend):
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\p{L}+|\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])  # fmt: skip

    return variant(bpe, tmp_path_factory.mktemp("gaps") / "tok", change)


# ---------------------------------------------------------------------------------------------------------------
# The encoder itself


def test_tiktoken_gives_the_ids_of_tokenizers_and_transformers_on_varied_text(bpe):
    tokenizer, tokenizer_json = tokenize._backend(bpe)
    texts = VARIED + random_texts(400)
    fast, slow = make_encoder(tokenizer_json, "tiktoken"), make_encoder(tokenizer_json, "tokenizers")
    got = [ids.tolist() for ids in fast(texts)]
    assert got == slow(texts) == tokenizer(texts)["input_ids"]
    assert first_difference(tokenizer_json, texts) is None
    # Special tokens written in a document are encoded as the special token, as `tokenizers` does in the stage.
    eos = tokenizer.convert_tokens_to_ids(EOS)
    assert fast([f"a{EOS}b"])[0].tolist() == slow([f"a{EOS}b"])[0] and eos in slow([f"a{EOS}b"])[0]
    assert Counter(token for ids in got for token in ids)[eos] == sum(text.count(EOS) for text in texts)


def test_control_tokens_in_text_can_be_encoded_as_text_the_same_by_both_encoders(bpe):
    """`special_tokens: text` (the stage's default): a crawled page's `<|im_start|>` or EOS string is encoded as
    the characters it is, as transformers' split_special_tokens does; tag tokens (<think>, not marked special)
    still match. tiktoken and tokenizers give the same ids either way."""
    tokenizer, tokenizer_json = tokenize._backend(bpe)
    texts = [f"a{EOS}b", f"{CONTROL_TOKENS[3]}user\nhi{CONTROL_TOKENS[4]} <think>x</think>", *VARIED[:20]]
    control_ids = set(tokenizer.convert_tokens_to_ids(list(CONTROL_TOKENS)))
    think = tokenizer.convert_tokens_to_ids("<think>")
    as_text = make_encoder(tokenizer_json, "tokenizers", control_tokens=False)(texts)
    assert [
        ids.tolist() for ids in make_encoder(tokenizer_json, "tiktoken", control_tokens=False)(texts)
    ] == as_text
    assert as_text == tokenizer(texts, split_special_tokens=True)["input_ids"]
    assert not control_ids & {token for ids in as_text for token in ids} and think in as_text[1]
    assert tokenizer.decode(as_text[1]) == texts[1]  # nothing lost: the characters are all there
    assert first_difference(tokenizer_json, texts, control_tokens=False) is None
    as_control = make_encoder(tokenizer_json, "tokenizers")(texts)
    assert control_ids & set(as_control[0]) and control_ids & set(as_control[1])


def test_a_post_processor_that_adds_tokens_is_reproduced(bpe):
    from tokenizers import Tokenizer, processors

    backend = Tokenizer.from_file(str(bpe / "tokenizer.json"))
    bos, eos = (backend.token_to_id(t) for t in CONTROL_TOKENS[:2])
    backend.post_processor = processors.TemplateProcessing(single=f"{CONTROL_TOKENS[0]} $A {EOS}",
                                                           special_tokens=[(CONTROL_TOKENS[0], bos), (EOS, eos)])  # fmt: skip
    texts = VARIED + random_texts(50, seed=1)
    got = make_encoder(backend.to_str(), "tiktoken")(texts)
    assert [ids.tolist() for ids in got] == [e.ids for e in backend.encode_batch(texts)]
    assert all(ids[0] == bos and ids[-1] == eos for ids in got)


def edit(bpe: Path, change) -> str:
    config = json.loads((bpe / "tokenizer.json").read_text())
    change(config)
    return json.dumps(config)


def swap_merges(config):
    merges = config["model"]["merges"]
    merges[-1], merges[-2] = merges[-2], merges[-1]


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda c: c.update(normalizer={"type": "Lowercase"}), "it has a normalizer (Lowercase)"),
        (lambda c: c["model"].update(dropout=0.1), "its BPE has dropout"),
        (lambda c: c["added_tokens"][1].update(lstrip=True), "added token '<|end_of_text|>' has lstrip"),
        (swap_merges, "its merges are not in the order of their tokens' ids"),
        (lambda c: c["pre_tokenizer"]["pretokenizers"][1].update(add_prefix_space=True), "adds a prefix space"),
        (lambda c: c.update(pre_tokenizer={"type": "Whitespace"}), "its pre-tokenizer is Whitespace, not Split"),
        (lambda c: c["added_tokens"].append({**c["added_tokens"][0], "id": 10_000, "content": "<|end_of"}),
         "added token '<|end_of' is a prefix of '<|end_of_text|>'"),
        (lambda c: c["model"]["vocab"].update({"Ġzzzq": 9_999}), "vocabulary tokens are made by no merge"),
        (lambda c: c["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex="(?<x"),
         "tiktoken cannot run the split regex (Parsing error"),
    ],
)  # fmt: skip
def test_what_tiktoken_cannot_do_is_named(bpe, change, reason):
    assert plan((bpe / "tokenizer.json").read_text()).ranks  # the unchanged one maps
    with pytest.raises(Unmappable, match=reason.replace("(", r"\(").replace(")", r"\)")):
        plan(edit(bpe, change)).encoding()


# ---------------------------------------------------------------------------------------------------------------
# The stage


def test_both_encoders_write_the_same_artifact(bpe, corpus, tmp_path):
    docs, texts = corpus
    outs = {}
    for encoder, workers in (("tiktoken", 2), ("tokenizers", 1), ("auto", 1)):
        config = EncodeConfig(workers=workers, chunk_chars=5_000, encoder=encoder)
        outs[encoder] = Artifact.open(
            tokenize.encode([str(docs)], tmp_path / encoder, tokenizer=bpe, config=config)
        )
    fast, slow, auto = outs["tiktoken"], outs["tokenizers"], outs["auto"]
    assert (
        fast.stats["encoder"] == auto.stats["encoder"] == "tiktoken" and slow.stats["encoder"] == "tokenizers"
    )
    assert fast.fingerprint == slow.fingerprint == auto.fingerprint
    assert stats_mismatches(fast.path) == []  # the stats are what EncodeStats declares
    assert fast.manifest["files"] == slow.manifest["files"] == auto.manifest["files"]  # byte for byte
    train, val = read_documents(fast.path, "train"), read_documents(fast.path, "val")
    assert Counter(train) + Counter(val) == Counter(direct(load_tokenizer(bpe), texts))
    # The encoder is how the work ran, not what it made: asking for the other one finds the artifact up to date.
    again = tokenize.encode([str(docs)], fast.path, tokenizer=bpe, config=EncodeConfig(encoder="tokenizers"))
    assert Artifact.open(again).manifest["provenance"] == fast.manifest["provenance"]


@pytest.mark.parametrize(
    "tokenizer, why",
    [
        ("wordpiece", "tiktoken cannot encode this tokenizer exactly: its model is WordPiece, not BPE"),
        ("normalized", "tiktoken cannot encode this tokenizer exactly: it has a normalizer (NFKC)"),
        ("gaps", "tiktoken's ids differ from tokenizers' on the documents: document 1 of the sample differs at"),
    ],
)  # fmt: skip
def test_a_tokenizer_tiktoken_cannot_match_falls_back_to_tokenizers(tokenizer, why, corpus, tmp_path, capsys,
                                                                   request):  # fmt: skip
    directory = request.getfixturevalue(tokenizer)
    docs, texts = corpus
    out = tokenize.encode(
        [str(docs)], tmp_path / "tokens", tokenizer=directory, config=EncodeConfig(workers=2)
    )
    artifact = Artifact.open(out)
    assert artifact.stats["encoder"] == "tokenizers"
    screen = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert screen.count("encoding with tokenizers:") == 1 and f"encoding with tokenizers: {why}" in screen
    train, val = read_documents(out, "train"), read_documents(out, "val")
    assert Counter(train) + Counter(val) == Counter(direct(load_tokenizer(directory), texts))


def test_asking_for_tiktoken_where_it_cannot_match_is_one_line_and_exit_2(wordpiece, gaps, corpus, tmp_path):
    result = llmforge("tokenize", "encode", corpus[0], "--tokenizer", wordpiece, "--encoder", "tiktoken",
                      "-o", tmp_path / "out", check=False)  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: {wordpiece}/tokenizer.json: --encoder tiktoken: tiktoken cannot encode this tokenizer exactly: "
        "its model is WordPiece, not BPE; use --encoder auto or tokenizers"
    ]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    with pytest.raises(InputError, match=f"{gaps}/tokenizer.json: --encoder tiktoken: tiktoken's ids differ"):
        tokenize.encode(
            [str(corpus[0])], tmp_path / "gaps", tokenizer=gaps, config=EncodeConfig(encoder="tiktoken")
        )
