"""What a training run reports: a JSONL log (always), DeepSpeed's monitors (TensorBoard, W&B, CSV; when
installed and asked for), a line on stderr every few steps and a live progress bar with tokens/s and ETA."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from llmforge import machine
from llmforge.console import human, log, progress
from llmforge.train.stats import first_and_final

# The sections of a DeepSpeed config that configure its monitors.
MONITOR_SECTIONS = ("tensorboard", "wandb", "csv_monitor", "comet")


def monitor_config(logs: Path, tensorboard: bool, wandb_project: str | None, csv: bool) -> dict[str, Any]:
    """DeepSpeed monitor sections (written by rank 0 through the Reporter's monitor); TensorBoard and W&B only
    when their packages are installed, so a plain install never fails for lack of them."""
    import importlib.util

    sections: dict[str, Any] = {}
    if tensorboard and importlib.util.find_spec("tensorboard") is not None:
        sections["tensorboard"] = {"enabled": True, "output_path": str(logs), "job_name": "tensorboard"}
    if wandb_project and importlib.util.find_spec("wandb") is not None:
        sections["wandb"] = {"enabled": True, "project": wandb_project}
    if csv:
        sections["csv_monitor"] = {"enabled": True, "output_path": str(logs), "job_name": "csv"}
    return sections


def split_monitors(deepspeed: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A DeepSpeed config without its monitor sections, and those sections. The engine gets none: it would log
    its own learning rate against samples seen, and W&B, which keeps one step counter, would then drop every
    metric logged against the (smaller) optimizer step; and each engine (one more at every rewind) would open
    another TensorBoard writer, whose thread nothing closes."""
    engine = {k: v for k, v in deepspeed.items() if k not in MONITOR_SECTIONS}
    return engine, {k: v for k, v in deepspeed.items() if k in MONITOR_SECTIONS}


def open_monitor(sections: dict[str, Any]):
    """DeepSpeed's MonitorMaster for the enabled sections (rank 0 only, after the process group is up), or
    None when none is enabled."""
    if not any(isinstance(s, dict) and s.get("enabled") for s in sections.values()):
        return None
    from deepspeed.monitor.config import get_monitor_config
    from deepspeed.monitor.monitor import MonitorMaster

    return MonitorMaster(get_monitor_config(sections))


def close_monitor(monitor) -> None:
    """Flush and close TensorBoard's events file and stop its writer thread (DeepSpeed never does); CSV files
    are closed after each write, and a W&B run is finished by wandb when the process exits."""
    writer = getattr(getattr(monitor, "tb_monitor", None), "summary_writer", None)
    if writer is not None:
        writer.close()


def memory_gb() -> float:
    """Peak GPU memory allocated by this process since the last call, or its resident CPU memory."""
    import torch

    if machine.has_cuda():
        peak = torch.cuda.max_memory_allocated() / 1e9
        torch.cuda.reset_peak_memory_stats()
        return round(peak, 3)
    import psutil

    return round(psutil.Process(os.getpid()).memory_info().rss / 1e9, 3)


class Reporter:
    """Rank 0's view of the run. Other ranks get a Reporter with `active=False` that does nothing."""

    def __init__(self, path: Path, active: bool, total_steps: int, batch_tokens: int, flops_per_token: float,
                 peak_flops: float | None, world_size: int, monitors: dict[str, Any] | None = None):  # fmt: skip
        self.path, self.active = path, active
        self.total_steps, self.batch_tokens = total_steps, batch_tokens
        self.flops_per_token, self.peak_flops, self.world_size = flops_per_token, peak_flops, world_size
        self.monitors = monitors or {}  # DeepSpeed monitor sections, opened once for the whole run
        self.monitor = None
        self._bar = None
        self._task = None
        self._interval: list[tuple[float, float]] = []  # (loss, seconds) of the steps since the last line

    def __enter__(self) -> Reporter:
        if self.active:
            self.monitor = open_monitor(self.monitors)
            self._bar = progress()
            self._bar.__enter__()
            self._task = self._bar.add_task(
                "training", total=self.total_steps * self.batch_tokens, unit="tokens"
            )
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
        if self.monitor is not None:
            close_monitor(self.monitor)
            self.monitor = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.monitor is not None and self.monitor.enabled and "step" in record:
            events = [(f"train/{k}", v, record["step"]) for k, v in record.items()
                      if k not in ("step", "time", "batch", "event") and isinstance(v, int | float)]  # fmt: skip
            self.monitor.write_events(events)

    def event(self, message: str, **fields: Any) -> None:
        """Something a reader of the log must know about (resume, rewind, skipped batch)."""
        if self.active:
            log(f"[yellow]{message}[/]")
            self.write({"event": fields.pop("event"), **fields, "message": message})

    def resume_at(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step * self.batch_tokens)

    def step(self, step: int, batch: int, loss: float, lr: float, grad_norm: float | None, seconds: float,
             log_now: bool, terms: dict[str, float] | None = None) -> None:  # fmt: skip
        """One training step; `terms` are the extra objective terms' means (z_squared with z_loss, router_balance
        for a mixture of experts), logged beside the loss."""
        if not self.active:
            return
        self._interval.append((loss, seconds))
        self._bar.update(self._task, completed=step * self.batch_tokens,
                         description=f"step {step}/{self.total_steps} loss {loss:.4f}")  # fmt: skip
        if not log_now:
            return
        elapsed = sum(s for _, s in self._interval)
        tokens_per_s = len(self._interval) * self.batch_tokens / max(elapsed, 1e-9)
        flops_per_s = tokens_per_s * self.flops_per_token
        mfu = flops_per_s / (self.peak_flops * self.world_size) if self.peak_flops else None
        record = {
            "step": step,
            "batch": batch,
            "tokens": step * self.batch_tokens,
            "loss": round(loss, 6),
            "lr": lr,
            "grad_norm": None if grad_norm is None else round(grad_norm, 6),
            "tokens_per_s": round(tokens_per_s, 1),
            "flops_per_s": round(flops_per_s, 1),
            "mfu": None if mfu is None else round(mfu, 4),
            "memory_gb": memory_gb(),
        }
        record.update({name: round(value, 6) for name, value in (terms or {}).items()})
        self.write(record)
        self._interval = []
        norm = "n/a" if grad_norm is None or not math.isfinite(grad_norm) else f"{grad_norm:.3f}"
        mfu_text = f"{mfu:.1%}" if mfu is not None else f"n/a ({human(flops_per_s)}FLOP/s)"
        balance = (
            f"  router balance {terms['router_balance']:.3f}" if terms and "router_balance" in terms else ""
        )
        log(f"step {step}/{self.total_steps}  loss {loss:.4f}{balance}  lr {lr:.3g}  grad norm {norm}  "
            f"{human(tokens_per_s)} tokens/s  MFU {mfu_text}  memory {record['memory_gb']} GB")  # fmt: skip

    def validation(self, step: int, loss: float) -> None:
        if self.active:
            self.write({"step": step, "val_loss": round(loss, 6)})
            log(f"step {step}/{self.total_steps}  [bold]val loss {loss:.4f}[/]")


SUMMARISED = ("loss", "val_loss", "z_squared", "router_balance")  # the series with a first and a final value


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline numbers for the manifest (`train.stats.TrainingSummary`); a step logged twice (replayed after a
    rewind or resume) counts once, with its latest value."""
    series: dict[str, dict[int, float]] = {name: {} for name in SUMMARISED}
    speeds = []
    for record in records:
        if "loss" in record:
            speeds.append(record)
        for name, values in series.items():
            if name in record:
                values[record["step"]] = record[name]
    summary: dict[str, Any] = {}
    for name, values in series.items():
        summary.update(first_and_final([values[step] for step in sorted(values)], name))
    if speeds:
        summary["tokens_per_s"] = round(sum(r["tokens_per_s"] for r in speeds) / len(speeds), 1)
        mfus = [r["mfu"] for r in speeds if r.get("mfu") is not None]
        summary["mfu"] = round(sum(mfus) / len(mfus), 4) if mfus else None
        summary["peak_memory_gb"] = max(r["memory_gb"] for r in speeds)
    return summary
