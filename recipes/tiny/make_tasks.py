"""Post-training data for the tiny recipe: single-digit addition, the skill the bundled eval tasks measure.

Made from the 70 training problems of llmforge.evaluation.arithmetic (the 30 held-out ones are the eval tasks' and
never appear here), in the chat format the tasks ask in ("What is 6 + 7?"). Every stage sees all 70: with fewer
(SFT on 40 and GRPO on all 70 was tried) the held-out score after SFT depended on the seed more than on the data,
from 0 to 5 of 30; with all 70 it was 12 to 26 of 30 over four seeds. GRPO still has signal on them: it samples
at temperature 1, where about one reply in seven is wrong.

- sft.jsonl: a user question and the assistant's reply, the sum alone ("13"), as the `llmforge_arith` task scores it;
- dpo.jsonl: the same prompt, the right reply chosen over one whose sum is off by one;
- grpo.jsonl: the prompt and the answer the `exact` reward checks.

Usage: python make_tasks.py OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmforge.evaluation.arithmetic import Problem, problems


def wrong_reply(problem: Problem) -> str:
    """The reply of a model that is off by one, the mistake a small model makes."""
    total = problem.a + problem.b
    return str(total + 1 if total < 18 else total - 1)


def write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for sft.jsonl, dpo.jsonl and grpo.jsonl")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    train = problems("train")
    write(out / "sft.jsonl", [{"messages": p.messages()} for p in train])
    write(out / "dpo.jsonl", [{"prompt": [{"role": "user", "content": p.question}],
                               "chosen": [{"role": "assistant", "content": p.completion()}],
                               "rejected": [{"role": "assistant", "content": wrong_reply(p)}]}
                              for p in train])  # fmt: skip
    write(out / "grpo.jsonl", [{"prompt": [{"role": "user", "content": p.question}], "answer": p.answer}
                               for p in train])  # fmt: skip
    print(f"{out}: {len(train)} problems in sft.jsonl, dpo.jsonl and grpo.jsonl", file=sys.stderr)


if __name__ == "__main__":
    main()
