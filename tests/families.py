"""Open model families as tests meet them without their real tokenizers: each family's original chat template (the
files TRL ships, trl/chat_templates/*.jinja) on a stand-in tokenizer with the family's special tokens added: a
byte-level BPE given by the test for the byte-level families (Qwen, Llama 3, Cohere), and a small BPE with
SentencePiece-style `▁` spaces trained here for the SentencePiece families (Gemma, Phi-3)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import trl
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
QWEN_TAGS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]  # fmt: skip
COHERE_SPECIALS = ["<BOS_TOKEN>", "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|SYSTEM_TOKEN|>",
                   "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>",
                   "<|START_THINKING|>", "<|END_THINKING|>", "<|START_ACTION|>", "<|END_ACTION|>"]  # fmt: skip
PHI3_SPECIALS = ["<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
GEMMA_SPECIALS = ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"]


@dataclass
class Family:
    template: str  # file in trl/chat_templates
    vocabulary: str  # bytes | sentencepiece: the stand-in tokenizer
    bos: str | None
    eos: str
    specials: list[str]
    stops: list[str]  # the tokens the family's generation_config stops on
    end: str  # what the template writes after a reply, through the end-of-turn token
    reply_prefix: str = ""  # what the template writes before every reply the model generates
    tags: list[str] = field(default_factory=list)  # added tokens that are not special
    renders_tools: bool = False


FAMILIES = {
    "qwen2.5": Family("qwen2_5.jinja", "bytes", None, "<|im_end|>", QWEN_SPECIALS, ["<|im_end|>", "<|endoftext|>"],
                      "<|im_end|>", tags=QWEN_TAGS, renders_tools=True),
    "qwen3": Family("qwen3.jinja", "bytes", None, "<|im_end|>", QWEN_SPECIALS, ["<|im_end|>", "<|endoftext|>"],
                    "<|im_end|>", "<think>\n\n</think>\n\n", QWEN_TAGS, renders_tools=True),
    "llama3": Family("llama3.jinja", "bytes", "<|begin_of_text|>", "<|eot_id|>", LLAMA3_SPECIALS,
                     ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], "<|eot_id|>"),
    "llama3.1": Family("llama3_1.jinja", "bytes", "<|begin_of_text|>", "<|eot_id|>", LLAMA3_SPECIALS,
                       ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], "<|eot_id|>", renders_tools=True),
    "gemma3": Family("gemma3.jinja", "sentencepiece", "<bos>", "<eos>", GEMMA_SPECIALS, ["<eos>", "<end_of_turn>"],
                     "<end_of_turn>"),
    "phi3.5": Family("phi3_5.jinja", "sentencepiece", "<s>", "<|endoftext|>", PHI3_SPECIALS,
                     ["<|endoftext|>", "<|assistant|>", "<|end|>"], "<|end|>"),
    "cohere2": Family("cohere2.jinja", "bytes", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", COHERE_SPECIALS,
                      ["<|END_OF_TURN_TOKEN|>"], "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"),
}  # fmt: skip

CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
CHATS = {
    "one turn": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
    ],
    "system, two turns": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Green, like grass."},
    ],
    "two turns": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Say bye"},
        {"role": "assistant", "content": "Bye!"},
    ],
}
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "name": "get_weather", "content": "sunny, 21 C"},
    {"role": "assistant", "content": "It is sunny and 21 C in Paris."},
]


def sentencepiece_style(texts: list[str]) -> Tokenizer:
    """A small BPE that writes spaces as `▁` the way SentencePiece vocabularies (Gemma, Llama 2, Phi-3) do."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    alphabet = sorted(set("".join(texts)) | set("▁\n"))
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>"],
                                                             initial_alphabet=alphabet, show_progress=False))  # fmt: skip
    return tokenizer


@functools.cache
def family_tokenizer(name: str, byte_level_dir: Path) -> tuple[PreTrainedTokenizerFast, list[int]]:
    """A stand-in tokenizer carrying the family's template and special tokens, and its stop token ids (built once a
    session: read-only). Byte-level families start from the tokenizer.json in `byte_level_dir`."""
    family = FAMILIES[name]
    if family.vocabulary == "bytes":
        backend = Tokenizer.from_file(str(byte_level_dir / "tokenizer.json"))
    else:
        texts = [m["content"] for chat in [*CHATS.values(), TOOL_CHAT] for m in chat] * 20
        backend = sentencepiece_style(texts)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in family.specials])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in family.tags])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=family.bos, eos_token=family.eos,
        unk_token="<unk>" if family.vocabulary == "sentencepiece" else None,
        chat_template=(TRL_TEMPLATES / family.template).read_text(), clean_up_tokenization_spaces=False,
    )  # fmt: skip
    return tokenizer, tokenizer.convert_tokens_to_ids(family.stops)


# model -> its family (tokenizer and template), transformers model type and settings beyond the common ones (Gemma
# 3's window is shorter than a chat prompt, so an answer runs through its sliding-window cache; Qwen3-MoE as
# Qwen3-30B-A3B is built, on 4 experts)
ARCHITECTURES = {
    "llama3.1": ("llama3.1", "llama", {}),
    "qwen3": ("qwen3", "qwen3", {}),
    "qwen3-moe": (
        "qwen3",
        "qwen3_moe",
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128, "norm_topk_prob": True},
    ),
    "gemma3": ("gemma3", "gemma3_text", {"sliding_window": 8, "query_pre_attn_scalar": 32}),
    "phi3.5": ("phi3.5", "phi3", {}),
}


def family_model(name: str, byte_level_dir: Path, out: Path) -> tuple[Path, str]:
    """A Hugging Face directory as the family ships one, tiny: random weights of its architecture, its tokenizer,
    chat template and stop tokens; returns it and the model class's name. Heads of 32 dimensions, the smallest
    vLLM's CPU attention takes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    family, model_type, extra = ARCHITECTURES[name]
    tokenizer, stops = family_tokenizer(family, byte_level_dir)
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.3, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=stops)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, type(model).__name__
