"""One training process started by torchrun or the deepspeed launcher: `python -m llmforge.train.worker JOB`.

JOB is the file the stage wrote before launching: OUT.partial/checkpoints/plan.json for pretrain (a RunSpec, run by
llmforge.train.loop) or OUT.partial/logs/job.json for sft, dpo and grpo (a Job, run by llmforge.train.trl_job);
its "kind" says which. `llmforge pretrain|sft|dpo|grpo --nproc N` (or a hostfile) writes it and starts these; run
one by hand only to join a multi-node job whose file sits on a filesystem every node shares.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from llmforge.errors import LLMForgeError


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m llmforge.train.worker OUT.partial/checkpoints/plan.json | OUT.partial/logs/job.json",
              file=sys.stderr)  # fmt: skip
        return 2
    job = Path(argv[0])
    try:
        return run(job)
    except LLMForgeError as exc:  # launch.launch raises it in the user's process, with its exit code
        from llmforge.console import error
        from llmforge.train.launch import record_failure

        error(str(exc))
        record_failure(job, exc)
        return exc.exit_code
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Tear the process group down before the interpreter does: left to exit, its communication threads were
    once aborted mid-teardown ("terminate called without an active exception", exit -6) after a finished job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run(job: Path) -> int:
    kind = json.loads(job.read_text()).get("kind")
    if kind == "pretrain":
        from llmforge.train.loop import RunSpec, train

        train(RunSpec.load(job))
    elif kind == "posttrain":
        from llmforge.train.posttrain import Job
        from llmforge.train.trl_job import train_job

        train_job(Job.load(job))
    else:
        print(f"{job}: not a training job (kind {kind!r}; expected pretrain or posttrain)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # The job's outcome is on disk (model, checkpoints, metrics, failure record) and in the exit code; the
    # interpreter's own teardown is skipped. With the process group gone, C++ threads of the libraries (gloo,
    # DeepSpeed, accelerate) could still outlive it, and their destruction at exit has aborted finished jobs
    # ("terminate called without an active exception", exit -6): twice in full test runs of two days, in two tests.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
