"""DeepSpeed plumbing shared by every training stage: the config built from `--zero/--offload`, a user's JSON,
and a single-process rendezvous so DeepSpeed runs without a launcher.

Pretraining drives the DeepSpeed engine itself; post-training passes the same config to TRL / HF Trainer, which
fills the values left at "auto".
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from llmforge import machine
from llmforge.errors import InputError

ZERO_STAGES = (0, 1, 2, 3)
OFFLOAD_DEVICES = ("none", "cpu")
# bf16: DeepSpeed's bf16 mixed precision (bf16 weights and grads, fp32 master weights in the optimizer);
# bf16-autocast: torch autocast (fp32 weights, bf16 matmuls); auto: HF Trainer decides from its own arguments.
PRECISIONS = ("auto", "fp32", "bf16", "bf16-autocast")
# Keys llmforge computes itself; a user's JSON may leave them at "auto" (or out) but must not contradict them.
COMPUTED_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")
# DeepSpeed's throughput timer is on by default and synchronized: without a DeepSpeed dataloader it waits for the
# GPU at every forward and every engine.step() (deepspeed/utils/timer.py ThroughputTimer), so the host cannot queue
# the next kernels ahead. llmforge measures throughput itself; a user's JSON may still turn the timer on.
NO_TIMERS = {"throughput": {"enabled": False}}


def on_cpu() -> bool:
    return not machine.has_cuda()


def deepspeed_config(
    zero: int,
    offload: str | None = None,
    *,
    micro_batch_size: int | str = "auto",
    gradient_accumulation_steps: int | str = "auto",
    gradient_clipping: float | str = "auto",
    precision: str = "auto",
) -> dict[str, Any]:
    """A DeepSpeed config for ZeRO stage `zero` (0-3), optionally offloading to CPU memory.

    Offload moves the optimizer states (and with ZeRO-3 the parameters too) to CPU memory; it needs ZeRO >= 1.
    Values left at "auto" are filled by HF Trainer / TRL, or by `fill_auto`.
    """
    offload = offload or "none"
    if zero not in ZERO_STAGES:
        raise InputError(f"--zero {zero}: ZeRO stage must be one of 0, 1, 2, 3")
    if offload not in OFFLOAD_DEVICES:
        raise InputError(f"--offload {offload}: must be one of {', '.join(OFFLOAD_DEVICES)}")
    if offload != "none" and zero == 0:
        raise InputError(
            f"--offload {offload} needs ZeRO stage 1, 2 or 3 (it offloads the sharded optimizer)"
        )
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: must be one of {', '.join(PRECISIONS)}")

    cpu = on_cpu()
    zero_section: dict[str, Any] = {"stage": zero}
    if offload == "cpu":
        zero_section["offload_optimizer"] = {"device": "cpu", "pin_memory": not cpu}
        if zero == 3:
            zero_section["offload_param"] = {"device": "cpu", "pin_memory": not cpu}
    if zero == 3:
        # Lets the engine gather full weights for a Hugging Face save at the end of training.
        zero_section["stage3_gather_16bit_weights_on_model_save"] = True

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "gradient_clipping": gradient_clipping,
        "zero_optimization": zero_section,
        "steps_per_print": 2**62,  # llmforge logs progress itself
        "wall_clock_breakdown": False,
        "timers": NO_TIMERS,
    }
    if precision == "auto":
        config["bf16"] = {"enabled": "auto"}
        config["fp16"] = {"enabled": "auto"}
    elif precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif precision == "bf16-autocast":
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    if offload == "cpu" and cpu:
        # DeepSpeedCPUAdam is a C++ op built on first use (over a minute); on a CPU-only machine the plain torch
        # optimizer already runs where the states live.
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def load_deepspeed_json(path: str | Path) -> dict[str, Any]:
    """A user's DeepSpeed config file, with a one-line error when it cannot be used."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read the DeepSpeed config ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: a DeepSpeed config must be a JSON object")
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in ZERO_STAGES:
        raise InputError(f"{path}: zero_optimization.stage {stage!r} must be one of 0, 1, 2, 3")
    return config


def fill_auto(
    config: dict[str, Any], values: dict[str, Any], source: str = "the DeepSpeed config"
) -> dict[str, Any]:
    """`config` with "auto" (or missing) `values` keys filled in; an explicit value that differs is an error."""
    filled = dict(config)
    for key, value in values.items():
        given = filled.get(key, "auto")
        if given == "auto":
            filled[key] = value
        elif given != value:
            raise InputError(f"{source}: {key} is {given!r} but llmforge's settings give {value!r}; "
                             "set it to \"auto\" or change the llmforge setting")  # fmt: skip
    return filled


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def single_process_environment() -> None:
    """Rendezvous variables for a world of one, so DeepSpeed runs without a launcher (and without MPI)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})  # fmt: skip


def init_distributed() -> None:
    """Join the process group the launcher set up (or a world of one): NCCL on GPUs, gloo on CPU."""
    cpu = on_cpu()
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    single_process_environment()
    import deepspeed

    if cpu:
        # DeepSpeed would JIT-build a shared-memory all-reduce op (a C++ compile on first use); gloo does the job
        # for CPU runs. The op table is a module-level dict DeepSpeed keeps for exactly this kind of edit.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(verbose=False)
