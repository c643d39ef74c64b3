"""tiktoken as an exact, faster encoder for a `tokenizers` byte-level BPE (GPT-2/GPT-4/Llama 3 style, and ours).

tiktoken runs the same algorithm several times faster (bench/bench_tokenize.py), but it has fewer parts: no
normalizer, one split regex, byte-level BPE whose rank is both the merge priority and the token id, and special
tokens matched as plain strings. `plan` reads a tokenizer.json and either maps it onto those parts or says why it
cannot (`Unmappable`). The two regex engines (Oniguruma in `tokenizers`, fancy-regex in tiktoken) and the two
merge loops can still disagree on rare input, so the caller also compares ids on a sample of its documents
(`first_difference`) before trusting the mapping.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# `tokenizers`' ByteLevel pre-tokenizer with use_regex=true splits with GPT-2's pattern.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class Unmappable(Exception):
    """The tokenizer has a part tiktoken does not (the message says which)."""


@dataclass
class Plan:
    """Everything tiktoken needs to encode exactly as the tokenizer.json does (with its post-processor)."""

    pattern: str
    ranks: dict[bytes, int]  # token bytes -> id, which is also its merge rank
    special: dict[str, int]  # added tokens, matched in text as `tokenizers` matches them
    control: set[str]  # those marked special (control tokens); `tokenizers` can encode them as plain text
    prefix: list[int]  # ids the post-processor puts around every text
    suffix: list[int]

    def encoding(self):
        import tiktoken

        try:
            return tiktoken.Encoding("llmforge", pat_str=self.pattern, mergeable_ranks=self.ranks,
                                     special_tokens=self.special)  # fmt: skip
        except ValueError as error:  # the regex does not compile in fancy-regex
            raise Unmappable(f"tiktoken cannot run the split regex ({str(error).splitlines()[0]})") from None


def byte_decoder() -> dict[str, int]:
    """GPT-2's printable character -> byte table, in which byte-level BPE vocabularies are written."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + extra)] = byte
            extra += 1
    return table


def plan(tokenizer_json: str) -> Plan:
    """Map a serialized `tokenizers` tokenizer onto tiktoken, or raise `Unmappable` saying why not."""
    config = json.loads(tokenizer_json)
    model = config["model"]
    if model.get("type") != "BPE":
        raise Unmappable(f"its model is {model.get('type')}, not BPE")
    for part in ("truncation", "padding"):
        if config.get(part):
            raise Unmappable(f"it has {part}")
    normalizer = config.get("normalizer")
    if normalizer and not (normalizer.get("type") == "Sequence" and not normalizer.get("normalizers")):
        raise Unmappable(f"it has a normalizer ({normalizer.get('type')})")
    pattern = _pattern(config.get("pre_tokenizer"))
    if model.get("dropout"):
        raise Unmappable("its BPE has dropout (random merges)")
    for option in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option):
            raise Unmappable(f"its BPE has a {option}")
    special = _added_tokens(config.get("added_tokens") or [])
    ranks = _ranks(model, special)
    taken = set(ranks.values()) & set(special.values())
    if taken:
        raise Unmappable(f"added token id {min(taken)} is also a vocabulary token")
    prefix, suffix = _post_processor(config.get("post_processor"))
    control = {token["content"] for token in config.get("added_tokens") or [] if token.get("special")}
    return Plan(pattern, ranks, special, control, prefix, suffix)


def _pattern(pre_tokenizer: dict | None) -> str:
    steps = (
        (pre_tokenizer or {}).get("pretokenizers")
        if (pre_tokenizer or {}).get("type") == "Sequence"
        else None
    )
    steps = steps if steps is not None else [pre_tokenizer] if pre_tokenizer else []
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        pattern, byte_level = GPT2_PATTERN, steps[0]
    elif kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        split, byte_level = steps
        if "Regex" not in split.get("pattern", {}):
            raise Unmappable("its Split pre-tokenizer splits on a string, not a regex")
        if split.get("behavior") != "Isolated" or split.get("invert"):
            raise Unmappable(f"its Split pre-tokenizer is {split.get('behavior')}, not Isolated")
        pattern = split["pattern"]["Regex"]
    else:
        raise Unmappable(
            f"its pre-tokenizer is {' + '.join(map(str, kinds)) or 'none'}, not Split + ByteLevel"
        )
    if byte_level.get("add_prefix_space"):
        raise Unmappable("its ByteLevel pre-tokenizer adds a prefix space")
    return pattern


def _added_tokens(added: list[dict]) -> dict[str, int]:
    for token in added:
        for option in ("single_word", "lstrip", "rstrip"):
            if token.get(option):
                raise Unmappable(f"added token {token['content']!r} has {option}")
    contents = sorted(token["content"] for token in added)
    # `tokenizers` takes the longest added token at a position, tiktoken the first it lists: the same unless one
    # is a prefix of another (sorted, such a pair is adjacent).
    for shorter, longer in zip(contents, contents[1:], strict=False):
        if not shorter or longer.startswith(shorter):
            raise Unmappable(f"added token {shorter!r} is a prefix of {longer!r}")
    if len({token.get("normalized", False) for token in added}) > 1:
        # `tokenizers` matches the two kinds in two passes: the same as one pass unless two tokens can overlap.
        for a in contents:
            for b in contents:
                if a != b and (a in b or any(b.startswith(a[i:]) for i in range(1, len(a)))):
                    raise Unmappable(f"added tokens {a!r} and {b!r} can overlap")
    return {token["content"]: token["id"] for token in added}


def _ranks(model: dict, special: dict[str, int]) -> dict[bytes, int]:
    to_byte = byte_decoder()
    ranks: dict[bytes, int] = {}
    for token, index in model["vocab"].items():
        if token in special:  # matched in the text before the model runs
            continue
        if any(char not in to_byte for char in token):
            raise Unmappable(f"vocabulary token {token!r} is not byte-level")
        ranks[bytes(to_byte[char] for char in token)] = index
    missing = [byte for byte in range(256) if bytes([byte]) not in ranks]
    if missing:
        raise Unmappable(f"{len(missing)} of the 256 bytes have no token (not a byte-level vocabulary)")
    # tiktoken merges the adjacent pair whose joined bytes have the lowest id; `tokenizers` the pair listed first
    # in the merges. The same when the merges are listed in the order of their results' ids, every result
    # outranks its parts, and every longer token is some merge's result (else tiktoken could make it alone).
    made, last = set(), -1
    for merge in model.get("merges") or []:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        joined = left + right
        index = model["vocab"].get(joined)
        if index is None or joined in special:
            raise Unmappable(f"merge {left!r} + {right!r} makes no vocabulary token")
        if index < last or index <= model["vocab"][left] or index <= model["vocab"][right]:
            raise Unmappable(
                f"its merges are not in the order of their tokens' ids (at {left!r} + {right!r})"
            )
        last = index
        made.add(index)
    unmade = [token for token, index in ranks.items() if len(token) > 1 and index not in made]
    if unmade:
        raise Unmappable(f"{len(unmade)} vocabulary tokens are made by no merge (e.g. {unmade[0]!r})")
    return ranks


def _post_processor(processor: dict | None) -> tuple[list[int], list[int]]:
    """The ids the post-processor adds around a single text (encode's add_special_tokens=True)."""
    if not processor or processor.get("type") == "ByteLevel":  # ByteLevel only trims offsets
        return [], []
    if processor.get("type") == "Sequence":
        prefix, suffix = [], []
        for step in processor.get("processors") or []:
            before, after = _post_processor(step)
            prefix, suffix = before + prefix, suffix + after
        return prefix, suffix
    if processor.get("type") != "TemplateProcessing":
        raise Unmappable(f"its post-processor is {processor.get('type')}")
    prefix, suffix, seen = [], [], False
    for piece in processor["single"]:
        if "Sequence" in piece:
            seen = True
            continue
        ids = processor["special_tokens"][piece["SpecialToken"]["id"]]["ids"]
        (suffix if seen else prefix).extend(ids)
    return prefix, suffix


@functools.lru_cache(maxsize=4)  # built once for the sample check and the encoding threads
def make_tiktoken_encoder(
    tokenizer_json: str, control_tokens: bool = True
) -> Callable[[list[str]], list[np.ndarray]]:
    """encode_batch with tiktoken: each text's ids as a uint32 array, added tokens in the text matched as
    `tokenizers` matches them (control tokens only with `control_tokens`, else encoded as the text they are, as
    `tokenizers` does with encode_special_tokens), the post-processor's ids around them."""
    mapped = plan(tokenizer_json)
    core = mapped.encoding()._core_bpe  # the Rust encoder itself: no per-call Python checks, releases the GIL
    allowed = set(mapped.special) if control_tokens else set(mapped.special) - mapped.control
    prefix, suffix = np.asarray(mapped.prefix, dtype=np.uint32), np.asarray(mapped.suffix, dtype=np.uint32)

    def encode_batch(texts: list[str]) -> list[np.ndarray]:
        encoded = [
            np.frombuffer(core.encode_to_tiktoken_buffer(text, allowed), dtype=np.uint32) for text in texts
        ]
        if len(prefix) or len(suffix):
            encoded = [np.concatenate([prefix, ids, suffix]) for ids in encoded]
        return encoded

    return encode_batch


def first_difference(tokenizer_json: str, texts: list[str], control_tokens: bool = True) -> str | None:
    """Encode `texts` both ways; None when every id is the same, else where the first difference is."""
    from llmforge.data.encode import tokenizers_backend

    expected = [
        encoding.ids for encoding in tokenizers_backend(tokenizer_json, control_tokens).encode_batch(texts)
    ]
    got = make_tiktoken_encoder(tokenizer_json, control_tokens)(texts)
    for number, (want, have) in enumerate(zip(expected, got, strict=True)):
        have = have.tolist()
        if want != have:
            at = next(
                (i for i, (a, b) in enumerate(zip(want, have, strict=False)) if a != b),
                min(len(want), len(have)),
            )
            return (f"document {number + 1} of the sample differs at token {at} (tokenizers "
                    f"{want[at:at + 3]}, tiktoken {have[at:at + 3]})")  # fmt: skip
    return None


def choose(requested: str, tokenizer_json: str, sample: list[str], control_tokens: bool = True
           ) -> tuple[str, str | None]:  # fmt: skip
    """The encoder to use for `requested` ("auto", "tiktoken" or "tokenizers") and, when tiktoken was considered
    and not chosen, why not."""
    if requested == "tokenizers":
        return "tokenizers", None
    try:
        difference = first_difference(tokenizer_json, sample, control_tokens)
    except Unmappable as error:
        return "tokenizers", f"tiktoken cannot encode this tokenizer exactly: {error}"
    if difference is not None:
        return "tokenizers", f"tiktoken's ids differ from tokenizers' on the documents: {difference}"
    return "tiktoken", None
