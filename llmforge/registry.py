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
# Kinds that describe data rather than hold what a model trains on: a quality classifier, a model's scores of a
# sample (read by `quality train`); lineage walks through them, but they are no training data.
QUALITY_KINDS = ("quality-classifier", "annotations")
# A GGUF file for llama.cpp, Ollama and LM Studio (quantize --method gguf-*): `serve` runs it with llama.cpp, the
# other stages do not load it; `llmforge import` takes it back as a model.
# A reward model (`llmforge reward`): a sequence-classification model with one score, which grpo's rewards read;
# it is not a language model, so the stages that generate text do not load it.
KINDS = (*DATA_KINDS, *MODEL_KINDS, "gguf", "reward-model", "eval-report", *QUALITY_KINDS)
# Kinds a stage writes only when asked to: sft, dpo and grpo write an adapter with --lora.
WRITTEN_WITH = {"adapter": "--lora"}


@dataclass(frozen=True)
class Stage:
    name: str  # on the command line and in manifests; "group sub" for a subcommand (tokenize train)
    module: str  # llmforge.stages.<module>
    reads: tuple[str, ...]  # kinds of its inputs, what it starts from first ("raw": files outside llmforge,
    # "hub": a model hub id)
    writes: tuple[str, ...]  # kinds of artifact it writes (none: serve)
    summary: str  # its line in `llmforge --help`
    post_training: bool = False  # trains on a dataset of records with TRL
    function: str = "command"  # its command function in the module

    @property
    def from_model(self) -> bool:
        """Its output is a model made from the input model (sft, dpo, grpo, reward, quantize), so lineage walks
        back through it to the pretrained model."""
        return self.reads[0] in MODEL_KINDS and any(
            kind in (*MODEL_KINDS, "reward-model") for kind in self.writes
        )


POSTTRAIN_READS = ("model", "adapter", "raw", "documents")  # a model, then a dataset (files or documents)
STAGES = (
    Stage("crawl-filter", "crawl_filter", reads=("raw",), writes=("documents",),
          summary="Turn a raw web crawl into clean documents: HTML to text, URL blocklist, language ID, quality "
                  "rules, PII."),
    Stage("dedup", "dedup", reads=("documents", "raw"), writes=("documents",),
          summary="Remove duplicate and benchmark-contaminated documents: exact dedup, MinHash-LSH near-dup "
                  "dedup, n-gram decontamination."),
    Stage("quality annotate", "quality", reads=("documents", "raw", *MODEL_KINDS), writes=("annotations",),
          function="annotate_command",
          summary="Have a local instruct model score a sample of documents with FineWeb-Edu's additive 0-5 "
                  "educational rubric; the scores can train a classifier."),
    Stage("quality train", "quality", reads=("documents", "raw", "annotations"), writes=("quality-classifier",),
          function="train_command",
          summary="Train a quality classifier on positive against negative documents (or annotations); held-out "
                  "precision, recall and score distribution."),
    Stage("quality filter", "quality", reads=("documents", "raw", "quality-classifier"), writes=("documents",),
          function="filter_command",
          summary="Score every document with a quality classifier and keep the best: a top share (DCLM's 10%) "
                  "or a threshold."),
    Stage("tokenize train", "tokenize", reads=("documents",), writes=("tokenizer",), function="train_command",
          summary="Train a tokenizer (byte-level BPE or Unigram, special tokens, chat template) on a weighted "
                  "sample."),
    Stage("tokenize encode", "tokenize", reads=("documents", "tokenizer", *MODEL_KINDS), writes=("tokens",),
          function="encode_command",
          summary="Encode documents into token shards (EOS after each document, a validation split), mixed by "
                  "weight."),
    Stage("pretrain", "pretrain", reads=("tokens", "model"), writes=("model",),
          summary="Pretrain a Llama-style model on token shards; writes a model artifact (a Hugging Face "
                  "directory)."),
    Stage("sft", "sft", reads=POSTTRAIN_READS, writes=("model", "adapter"), post_training=True,
          summary="Supervised fine-tuning: teach a base model the assistant's manners on chat, "
                  "prompt/completion or plain text."),
    Stage("dpo", "dpo", reads=POSTTRAIN_READS, writes=("model", "adapter"), post_training=True,
          summary="Preference optimisation: align a model to chosen-over-rejected answers (DPO and the losses "
                  "TRL offers beside it)."),
    Stage("reward", "reward", reads=POSTTRAIN_READS, writes=("reward-model",), post_training=True,
          summary="Reward modelling: train a model to score answers on chosen-over-rejected pairs (Bradley-Terry), "
                  "for grpo's --reward."),
    Stage("grpo", "grpo", reads=POSTTRAIN_READS, writes=("model", "adapter"), post_training=True,
          summary="Reinforcement learning with verifiable rewards (GRPO): sample a group of answers per prompt, "
                  "score them, push the policy towards the better ones."),
    Stage("eval", "eval", reads=(*MODEL_KINDS, "gguf", "eval-report"), writes=("eval-report",),
          summary="Score models with lm-eval, offline: benchmarks, the bundled tasks, perplexity; compare "
                  "reports side by side."),
    Stage("quantize", "quantize", reads=("model", "adapter", "tokens", "documents"),
          writes=("quantized-model", "gguf"),
          summary="Quantize a model (LoRA adapters are merged first) for vLLM, transformers or llama.cpp (GGUF) "
                  "and report what it cost: size and held-out perplexity."),
    Stage("serve", "serve", reads=(*MODEL_KINDS, "gguf"), writes=(),
          summary="Serve a model, adapter, quantized-model or gguf artifact (or a .gguf file) behind an OpenAI-compatible HTTP API."),
    Stage("import", "import_model", reads=("raw", "hub", "gguf"), writes=("model",),
          summary="Import an open model (a Hugging Face directory, a .gguf file, or a Hub id, cached or --online) as a "
                  "model artifact whose lineage names the exact checkpoint."),
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
