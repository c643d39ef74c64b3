"""One training process started by torchrun or the deepspeed launcher: `python -m llmforge.train.worker PLAN`.

`llmforge pretrain --nproc N` (or `--hostfile`) writes the plan and starts these; run by hand only to join a
multi-node job whose plan sits on a filesystem every node shares.
"""

from __future__ import annotations

import sys

from llmforge.train.loop import RunSpec, train


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m llmforge.train.worker OUT.partial/checkpoints/plan.json", file=sys.stderr)
        return 2
    train(RunSpec.load(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
