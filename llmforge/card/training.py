"""The rows of a model card's training section: one function per training stage, reading the settings from the
stage's config and the figures from its stats."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmforge.artifacts import EVAL_DATA, Artifact
from llmforge.card.markdown import fmt, lookup, name_of, percent
from llmforge.card.stages import stats_of
from llmforge.console import flatten
from llmforge.registry import POSTTRAIN_STAGES

CHINCHILLA_TOKENS_PER_PARAMETER = 20


def data_input(step: Artifact) -> tuple[dict[str, Any], Artifact | None] | None:
    """The data a training stage read (pretrain: its tokens; post-training: its dataset)."""
    parents = step.parents()
    if step.stage == "pretrain":
        return next(((e, p) for e, p in parents if e.get("kind") == "tokens"), None)
    if step.stage in POSTTRAIN_STAGES and len(parents) > 1:
        return parents[1]
    return None


def data_label(found: tuple[dict[str, Any], Artifact | None] | None) -> str | None:
    """A training stage's data in a few words: an artifact's name and kind, or a raw input's path and size."""
    if found is None:
        return None
    entry, data = found
    if data is not None:
        return f"`{name_of(data)}` ({data.kind})"
    detail = f", {fmt(entry['files'])} file(s), {fmt(entry['bytes'])} bytes" if "files" in entry else ""
    return f"`{entry['path']}` ({entry.get('kind')}{detail})"


def held_out_label(step: Artifact) -> str | None:
    """A post-training stage's held-out records: how many, and from where (--eval-data or a share of the data)."""
    count = stats_of(step).get("eval_records")
    if count is None:
        return None
    given = next((e for e, _ in step.parents() if e.get("role") == EVAL_DATA), None)
    origin = f"`{given['path']}`" if given else f"{fmt(step.config.get('eval_fraction'))} of the data"
    return f"{fmt(count)} ({origin}, not trained on)"


def first_final(stats: Mapping[str, Any], series: str) -> str | None:
    """`first → final` of a logged series (`<series>_first`, `<series>_final`: `train.stats`); None if unlogged."""
    first, final = f"{series}_first", f"{series}_final"
    if first not in stats and final not in stats:
        return None
    return f"{fmt(stats.get(first))} → {fmt(stats.get(final))}"


def pretrain_rows(step: Artifact, previous: Artifact | None) -> list:
    c, s = step.config, stats_of(step)
    found = data_input(step)
    data = found[1] if found else None
    available = stats_of(data).get("tokens") if data is not None and data.kind == "tokens" else None
    seen = s.get("tokens")
    passes = (
        f" ({seen / available:.2f} passes over {fmt(available)} training tokens)"
        if seen and available
        else ""
    )
    per_param = s.get("tokens_per_parameter")
    o = c.get("optim", {})
    warmup = o.get("warmup_steps")
    return [
        ("data", data_label(found)),
        ("model", f"preset {lookup(c, 'model.preset')}, {lookup(c, 'model.arch')}" if lookup(c, "model.preset") else None),
        ("tokens seen", f"{fmt(seen)}{passes}" if seen is not None else None),
        ("tokens per parameter", f"{fmt(per_param)} (Chinchilla-optimal ≈ {CHINCHILLA_TOKENS_PER_PARAMETER})"
         if per_param is not None else None),
        ("steps", s.get("steps")),
        ("batch", f"{fmt(s.get('batch_tokens', c.get('batch_tokens')))} tokens (sequences of {fmt(c.get('seq_len'))}, "
                  f"micro-batch {fmt(c.get('micro_batch_size'))})" if c.get("seq_len") else None),
        ("learning rate", f"{fmt(o.get('lr'))} peak, {o.get('schedule')} schedule, warmup "
                          + (f"{fmt(warmup)} step(s)" if warmup is not None else f"{fmt(o.get('warmup_fraction'))} of steps")
                          + f", min {fmt(o.get('min_lr_ratio'))} × peak" if o else None),
        ("optimizer", f"AdamW betas {fmt(o.get('betas'))}, weight decay {fmt(o.get('weight_decay'))}, "
                      f"grad clip {fmt(o.get('grad_clip'))}" if o else None),
        ("precision", c.get("precision")),
        ("distributed", f"ZeRO-{s.get('zero', lookup(c, 'distributed.zero'))}, {fmt(s.get('processes'))} process(es)"
                        + (", CPU offload" if lookup(c, "distributed.offload") == "cpu" else "") if "zero" in s else None),
        ("loss (first → final)", first_final(s, "loss")),
        ("validation loss (first → final)", first_final(s, "val_loss")),
        ("rewinds (loss spikes)", s.get("rewinds") or None),
        ("training FLOPs", s.get("training_flops")),
        ("throughput", f"{fmt(s['tokens_per_s'])} tokens/s" if s.get("tokens_per_s") else None),
        ("parameters", s.get("parameters")),
        ("mixture of experts", f"{fmt(s['experts'])} experts a layer, {fmt(s.get('experts_per_token'))} per token: "
                               f"{fmt(s.get('active_parameters'))} parameters active per token; router balance "
                               f"{first_final(s, 'router_balance')} ({fmt(s.get('experts_per_token'))} = even)"
                               if s.get("experts") else None),
    ]  # fmt: skip


def _method(step: Artifact, previous: Artifact | None) -> str:
    lora = step.config.get("lora", {})
    if not lora.get("enabled"):
        return "full fine-tuning" + (
            " of the input adapter merged into its base" if previous and previous.kind == "adapter" else ""
        )
    method = "QLoRA (4-bit base)" if lora.get("qlora") else "LoRA"
    if previous is not None and previous.kind == "adapter" and step.stage != "reward":
        text = f"{method}, continuing the input adapter `{name_of(previous)}`"
    else:
        text = (f"{method} rank {fmt(lora.get('rank'))}, alpha {fmt(lora.get('alpha'))}, dropout "
                f"{fmt(lora.get('dropout'))}, targets {lora.get('target_modules')}")  # fmt: skip
    return text + ("; merged into the base" if lora.get("merge") else "")


def posttrain_rows(step: Artifact, previous: Artifact | None) -> list:
    c, s = step.config, stats_of(step)
    nproc = c.get("nproc") or 1
    rows: list[tuple[str, Any]] = [
        ("data", data_label(data_input(step))),
        ("records", f"{fmt(s.get('records'))} ({s.get('shape')})" if "records" in s else None),
        ("held-out records", held_out_label(step)),
        ("method", _method(step, previous)),
        ("trainable parameters", f"{fmt(s['trainable_parameters'])} of {fmt(s.get('total_parameters'))} "
                                 f"({percent(s.get('trainable_share'))})" if "trainable_parameters" in s else None),
        ("steps", s.get("steps")),
        ("epochs (max steps)", f"{fmt(c.get('epochs'))} ({fmt(c.get('max_steps'))})" if c.get("max_steps") else c.get("epochs")),
        ("learning rate", f"{fmt(c.get('learning_rate'))}, {c.get('lr_scheduler')} schedule, warmup ratio "
                          f"{fmt(c.get('warmup_ratio'))}" if "learning_rate" in c else None),
        ("batch", f"{fmt(c.get('batch_size'))} per device × accumulation {fmt(c.get('gradient_accumulation'))} × "
                  f"{fmt(nproc)} process(es)" if "batch_size" in c else None),
        ("max length", c.get("max_length")),
        ("ZeRO", f"ZeRO-{c['zero']}" + (", CPU offload" if c.get("offload") == "cpu" else "")
         if c.get("zero") is not None else "off"),
    ]  # fmt: skip
    if step.stage == "sft":
        rows += [
            ("loss on", "assistant turns only" if c.get("assistant_only_loss") else "every token"),
            ("packing", c.get("packing")),
            ("tokens trained", s.get("tokens_trained")),
            ("loss (first → final)", first_final(s, "loss")),
            ("token accuracy", s.get("token_accuracy")),
            ("held-out loss (first → final)", first_final(s, "eval_loss")),
            ("held-out token accuracy", s.get("eval_token_accuracy")),
        ]
    elif step.stage == "dpo":
        rows += [
            ("objective", f"{c.get('loss')} loss, beta {fmt(c.get('beta'))}"
             + (f", label smoothing {fmt(c['label_smoothing'])}" if c.get("label_smoothing") else "")),
            ("loss (first → final)", first_final(s, "loss")),
            ("preference accuracy (first → final)", first_final(s, "accuracy")),
            ("reward margin (first → final)", first_final(s, "margin")),
            ("held-out loss (first → final)", first_final(s, "eval_loss")),
            ("held-out preference accuracy (first → final)", first_final(s, "eval_accuracy")),
            ("rewards chosen / rejected", f"{fmt(s.get('rewards_chosen'))} / {fmt(s.get('rewards_rejected'))}"
             if "rewards_chosen" in s else None),
        ]  # fmt: skip
    elif step.stage == "reward":
        rows += [
            ("objective", "Bradley-Terry on chosen/rejected pairs" + (f", centring weight {fmt(c['center_rewards'])}"
                                                                      if c.get("center_rewards") else "")),
            ("pairs trained on", f"{fmt(s['examples'])} (the rest longer than max length)" if "examples" in s else None),
            ("loss (first → final)", first_final(s, "loss")),
            ("preference accuracy (first → final)", first_final(s, "accuracy")),
            ("score margin (first → final)", first_final(s, "margin")),
            ("held-out loss (first → final)", first_final(s, "eval_loss")),
            ("held-out preference accuracy (first → final)", first_final(s, "eval_accuracy")),
            ("held-out score margin (first → final)", first_final(s, "eval_margin")),
        ]  # fmt: skip
    elif step.stage == "grpo":
        rows += [
            ("rewards", fmt(c.get("rewards"))),
            ("generations", f"{fmt(c.get('num_generations'))} per prompt, temperature {fmt(c.get('temperature'))}, "
                            f"up to {fmt(c.get('max_completion_length'))} tokens"),
            ("KL beta, clip epsilon", f"{fmt(c.get('kl_beta'))}, {fmt(c.get('clip_epsilon'))}"),
            ("reward (first → final)", first_final(s, "reward")),
            *[(f"reward {name} (first → final)", first_final(row, "mean")) for name, row in s.get("rewards", {}).items()],
            ("KL", s.get("kl")),
            ("mean completion length", s.get("completion_length_mean")),
        ]  # fmt: skip
    return rows


def quantize_rows(step: Artifact, previous: Artifact | None) -> list:
    c, s = step.config, stats_of(step)
    parents = step.parents()
    calibration = data_label(parents[1]) if len(parents) > 1 else None
    gguf = step.extra.get("format") == "gguf"  # llama.cpp picks each tensor's type itself, in fixed blocks
    return [
        ("method", f"{s.get('method', c.get('method'))} ({step.extra.get('format')}), {s.get('algorithm')}"),
        ("block size" if gguf else "group size",
         (f"{s.get('group_size')} weights per scale" if s.get("group_size") != "none" else None) if gguf
         else group_size_text(s.get("group_size"), s.get("zero_point"))),
        ("tensor types", s.get("tensor_types")),
        ("not quantized", fmt(c.get("ignore")) if c.get("ignore") and not gguf else None),
        ("calibration / evaluation data", calibration),
        ("calibration windows", s.get("calibration_windows") or None),
        ("size", f"{fmt(s.get('bytes_before'))} → {fmt(s.get('bytes_after'))} bytes ({fmt(s.get('compression'))}×)"
         if "bytes_after" in s else None),
        ("held-out perplexity", f"{fmt(s.get('perplexity_before'))} → {fmt(s.get('perplexity_after'))} "
                                f"({fmt(s.get('perplexity_delta_pct'))}% on {fmt(s.get('eval_tokens'))} tokens; budget "
                                f"{fmt(s.get('budget_pct'))}%, {'within' if s.get('within_budget') else 'BEYOND'} it)"
         if "perplexity_after" in s else None),
    ]  # fmt: skip


def group_size_text(group: int | str | None, zero_point: bool | None = None) -> str | None:
    """Input columns sharing a scale (and a zero point, asymmetric), or per channel (None for quantized models
    made before it was recorded)."""
    if group is None:
        return None
    text = "per channel (one scale per output row)" if group == "channel" else f"{fmt(group)} input columns"
    return text + (", with a zero point beside each scale" if zero_point else "")


def generic_rows(step: Artifact, previous: Artifact | None) -> list:
    return [(key, fmt(value)) for key, value in flatten(step.stats)]


STAGE_ROWS = {"pretrain": pretrain_rows, "sft": posttrain_rows, "dpo": posttrain_rows, "grpo": posttrain_rows,
              "reward": posttrain_rows,
              "quantize": quantize_rows}  # fmt: skip
