"""The stages and the artifact kinds, declared once: what each stage is called, where it lives, what it reads and
what it writes.

The CLI registers its commands from `STAGES`, error messages say which command makes a kind (`made_by`), and model
loading, the contamination check and cards ask here which kinds hold a model and which stages are post-training.
Plain data, importing nothing: every layer may read it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The kinds of artifact the stages write ("raw" inputs are files outside llmforge, "hub" a model hub id).
DATA_KINDS = ("documents", "tokenizer", "tokens")
MODEL_KINDS = ("model", "adapter", "quantized-model")  # each loads as a model (an adapter on its base)
KINDS = (*DATA_KINDS, *MODEL_KINDS, "eval-report")
# Kinds a stage writes only when asked to: sft, dpo and grpo write an adapter with --lora.
WRITTEN_WITH = {"adapter": "--lora"}


@dataclass(frozen=True)
class Stage:
    name: str  # on the command line and in manifests; "group sub" for a subcommand (tokenize train)
    module: str  # llmforge.stages.<module>
    summary: str  # its one line in `llmforge --help`
    reads: tuple[str, ...]  # kinds of its inputs, what it starts from first
    writes: tuple[str, ...]  # kinds of artifact it writes (none: serve)
    post_training: bool = False  # trains on a dataset of records with TRL (sft, dpo, grpo)
    function: str = "command"  # the command function in its module

    @property
    def from_model(self) -> bool:
        """Its output is a model made from the input model (sft, dpo, grpo, quantize), so lineage walks back
        through it to the pretrained model."""
        return self.reads[0] in MODEL_KINDS and any(kind in MODEL_KINDS for kind in self.writes)


STAGES = (
    Stage("crawl-filter", "crawl_filter", "Turn a raw web crawl into clean documents: HTML to text, URL "
          "blocklist, language ID, quality rules, PII.", reads=("raw",), writes=("documents",)),
    Stage("dedup", "dedup", "Remove duplicate and benchmark-contaminated documents: exact dedup, MinHash-LSH "
          "near-dup dedup, n-gram decontamination.", reads=("documents", "raw"), writes=("documents",)),
    Stage("tokenize train", "tokenize", "Train a tokenizer (byte-level BPE or Unigram, special tokens, chat "
          "template) on a weighted sample.", reads=("documents",), writes=("tokenizer",), function="train_command"),
    Stage("tokenize encode", "tokenize", "Encode documents into token shards (EOS after each document, a "
          "validation split), mixed by weight.", reads=("documents", "tokenizer", *MODEL_KINDS), writes=("tokens",),
          function="encode_command"),
    Stage("pretrain", "pretrain", "Pretrain a Llama-style model on token shards; writes a model artifact (a "
          "Hugging Face directory).", reads=("tokens", "model"), writes=("model",)),
    Stage("sft", "sft", "Supervised fine-tuning: teach a base model the assistant's manners on chat, "
          "prompt/completion or plain text.", reads=("model", "adapter", "raw", "documents"),
          writes=("model", "adapter"), post_training=True),
    Stage("dpo", "dpo", "Preference optimisation: align a model to chosen-over-rejected answers (DPO and the "
          "losses TRL offers beside it).", reads=("model", "adapter", "raw", "documents"),
          writes=("model", "adapter"), post_training=True),
    Stage("grpo", "grpo", "Reinforcement learning with verifiable rewards (GRPO): sample a group of answers per "
          "prompt, score them, push the policy towards the better ones.", reads=("model", "adapter", "raw",
          "documents"), writes=("model", "adapter"), post_training=True),
    Stage("eval", "eval", "Score models with lm-eval, offline: benchmarks, the bundled tasks, perplexity; compare "
          "reports side by side.", reads=(*MODEL_KINDS, "eval-report"), writes=("eval-report",)),
    Stage("quantize", "quantize", "Quantize a model (LoRA adapters are merged first) and report what it cost: "
          "size and held-out perplexity.", reads=("model", "adapter", "tokens", "documents"),
          writes=("quantized-model",)),
    Stage("serve", "serve", "Serve a model, adapter or quantized-model artifact behind an OpenAI-compatible "
          "HTTP API.", reads=MODEL_KINDS, writes=()),
)  # fmt: skip

POSTTRAIN_STAGES = tuple(stage.name for stage in STAGES if stage.post_training)
FROM_A_MODEL = tuple(stage.name for stage in STAGES if stage.from_model)


def stage(name: str) -> Stage:
    """The stage called `name` (KeyError for none)."""
    for candidate in STAGES:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def made_by(kind: str) -> str:
    """The commands that make `kind`, for "pretrain needs a tokens artifact made by `llmforge tokenize encode`"."""
    makers = [stage for stage in STAGES if kind in stage.writes]
    if not makers:
        return kind
    names = [f"`llmforge {stage.name}`" for stage in makers]
    text = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return f"{text} with {WRITTEN_WITH[kind]}" if kind in WRITTEN_WITH else text
