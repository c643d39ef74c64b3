"""The tokenizer every model carries: byte-level BPE, GPT-4-style pre-tokenization, one token per digit,
special tokens reserved from the start and a ChatML chat template with `{% generation %}` markers.

A tokenizer directory is a plain Hugging Face tokenizer (`AutoTokenizer.from_pretrained(dir)` loads it, chat
template included); the tokenize stage wraps one in an artifact, and every model artifact holds a copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Control tokens: never produced by ordinary text, removed by decode(skip_special_tokens=True).
CONTROL_TOKENS = [BOS, EOS, PAD, IM_START, IM_END]
# Fill-in-the-middle sentinels (Bavarian et al. 2022), spelled as Qwen2.5-Coder spells them; reserved only when
# asked (`tokenize train --fim-tokens`), so other tokenizers keep their ids.
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"
FIM_TOKENS = [FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX]
# Tags the model writes as part of its answers: single tokens, but kept when decoding so rewards can read them.
TAG_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

# GPT-4 (cl100k) pre-tokenization, with digits split one per token (\p{N} instead of \p{N}{1,3}) so that
# numbers tokenize uniformly, which helps arithmetic.
SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# ChatML. {% generation %} marks what the assistant says, so TRL can train on assistant tokens only.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    '{{- \'You can call these tools. Answer with <tool_call>{"name": ..., "arguments": ...}</tool_call>:\\n\' }}'
    "{%- for tool in tools %}{{- tool | tojson + '\\n' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and tools and loop.first %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}"
    "{{- message['content'] or '' }}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{%- set fn = call['function'] if call['function'] is defined else call %}"
    "{{- '<tool_call>' + {'name': fn['name'], 'arguments': fn['arguments']} | tojson + '</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>tool\\n<tool_response>' + message['content'] + '</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


ALGORITHMS = ("bpe", "unigram")


def build_tokenizer(vocab_size: int, texts: Iterable[str], min_frequency: int = 2, algorithm: str = "bpe",
                    fim: bool = False):  # fmt: skip
    """Train a `tokenizers.Tokenizer` on `texts` (an iterator; streamed, not held in memory).

    Both algorithms see the same byte-level alphabet (every byte is a symbol, so nothing is ever unknown), the
    same pre-tokenization and the same reserved tokens: "bpe" merges frequent pairs (GPT/Llama style), "unigram"
    prunes a large seed vocabulary by likelihood (SentencePiece style). `fim` reserves the fill-in-the-middle
    sentinels too, after the others.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    reserved = CONTROL_TOKENS + TAG_TOKENS + (FIM_TOKENS if fim else [])
    special = [AddedToken(t, special=True, normalized=False) for t in reserved]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if algorithm == "bpe":
        tokenizer = Tokenizer(models.BPE(byte_fallback=False))  # byte-level: every byte is in the alphabet
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special,
                                      initial_alphabet=alphabet, show_progress=False)  # fmt: skip
    elif algorithm == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet,
                                          show_progress=False)  # fmt: skip
    else:
        raise ValueError(f"unknown tokenizer algorithm {algorithm!r} (choose from {', '.join(ALGORITHMS)})")
    tokenizer.pre_tokenizer = split_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # The trainer reserves ids for the tags but marks them special; unmark them so decoding keeps them.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return tokenizer


def split_pre_tokenizer():
    """How llmforge's tokenizers split text before BPE: SPLIT_PATTERN (Qwen 2's regex), then bytes."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])  # fmt: skip


def build_bpe(vocab_size: int, texts: Iterable[str], min_frequency: int = 2):
    """Train a byte-level BPE `tokenizers.Tokenizer` on `texts`."""
    return build_tokenizer(vocab_size, texts, min_frequency, algorithm="bpe")


def wrap(tokenizer_object, model_max_length: int = 2048):
    """A `PreTrainedTokenizerFast` with our specials and chat template, ready for transformers and TRL."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[
            IM_START,
            IM_END,
            *(t for t in FIM_TOKENS if t in tokenizer_object.get_vocab()),
        ],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, algorithm: str = "bpe",
                    fim: bool = False):  # fmt: skip
    return wrap(build_tokenizer(vocab_size, texts, min_frequency, algorithm, fim))


def minimum_vocab_size(fim: bool = False) -> int:
    """The 256 byte symbols plus our reserved tokens: the smallest vocabulary that can be trained."""
    return 256 + len(CONTROL_TOKENS) + len(TAG_TOKENS) + (len(FIM_TOKENS) if fim else 0)


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def tokenizer_fingerprint(path: str | Path) -> str:
    """Identity of a tokenizer: its vocabulary, merges and specials (tokenizer.json) plus its chat template.

    Models, tokens and tokenizer artifacts record it, and later stages refuse to mix tokenizers that differ.
    """
    path = Path(path)
    digest = hashlib.sha256((path / "tokenizer.json").read_bytes())
    template = path / "chat_template.jinja"
    if template.is_file():
        digest.update(template.read_bytes())
    return digest.hexdigest()


def same_vocabulary(first: str | Path, second: str | Path) -> bool:
    """Two tokenizer directories encode text alike (same tokenizer.json), whatever their chat templates."""
    files = [Path(first) / "tokenizer.json", Path(second) / "tokenizer.json"]
    return all(f.is_file() for f in files) and files[0].read_bytes() == files[1].read_bytes()


def fertility(tokenizer_object, texts: list[str]) -> dict[str, float | int]:
    """How well a `tokenizers.Tokenizer` compresses `texts`: UTF-8 bytes per token (higher is better) and tokens
    per whitespace-separated word (lower is better; a language the tokenizer knows badly costs more per word).
    Special-token strings in the texts count as the text they are, as `tokenize encode` reads documents."""
    matching, tokenizer_object.encode_special_tokens = tokenizer_object.encode_special_tokens, True
    try:
        tokens = sum(len(e.ids) for e in tokenizer_object.encode_batch(texts, add_special_tokens=False))
    finally:
        tokenizer_object.encode_special_tokens = matching
    text_bytes = sum(len(t.encode("utf-8")) for t in texts)
    words = sum(len(t.split()) for t in texts)
    return {"documents": len(texts), "bytes": text_bytes, "tokens": tokens,
            "bytes_per_token": round(text_bytes / max(tokens, 1), 4),
            "tokens_per_word": round(tokens / max(words, 1), 4)}  # fmt: skip
