"""Grade-school arithmetic word problems with verifiable integer answers, for the smol recipe.

Usage: python make_problems.py OUT_DIR [--seed N] [--train N]
       python make_problems.py --heldout FILE     (rewrite the held-out file the recipe ships)

Every problem is one of a few story templates over small numbers; its arithmetic (the template and its numbers) is
its identity. A fixed hash of that identity puts each problem on one side for good: held-out problems never share
their arithmetic with a training problem, whatever the names, items or seed, and the held-out set is the same for
every seed (tasks/smol_arith.jsonl). The seed only draws which training problems are used, and in what order.

Writes OUT_DIR/sft.jsonl (prompt + worked solution in <think>/<answer> tags), OUT_DIR/grpo.jsonl (prompt +
answer, for the verifier rewards) and OUT_DIR/prefs.jsonl (prompt, the worked solution chosen over one whose last
step is miscomputed, for `llmforge reward`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

NAMES = ["Ava", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena", "Milo", "Nia"]
ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "cards", "books", "eggs"]
HELDOUT_SHARE = 0.2  # of the arithmetic, by hash
# the held-out problems the eval scores (drawn once, seed 0, from the held-out arithmetic)
HELDOUT_ITEMS = 100


# Each template: (kind, question, worked steps, answer) from numbers a, b, c.
def add(a, b, c, n, it):
    return (f"{n} has {a} {it}. {n} gets {b} more {it}. How many {it} does {n} have now?",
            f"{a} + {b} = {a + b}", a + b)  # fmt: skip


def sub(a, b, c, n, it):
    a = a + b  # never negative
    return (f"{n} has {a} {it} and gives {b} of them away. How many {it} does {n} have left?",
            f"{a} - {b} = {a - b}", a - b)  # fmt: skip


def mul(a, b, c, n, it):
    return (f"{n} buys {a} bags of {it} with {b} {it} in each bag. How many {it} does {n} buy?",
            f"{a} * {b} = {a * b}", a * b)  # fmt: skip


def div(a, b, c, n, it):
    return (f"{n} shares {a * b} {it} equally among {b} friends. How many {it} does each friend get?",
            f"{a * b} / {b} = {a}", a)  # fmt: skip


def add_sub(a, b, c, n, it):
    c = min(c, a + b)
    return (f"{n} has {a} {it}, finds {b} more, then loses {c}. How many {it} does {n} have now?",
            f"{a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}", a + b - c)  # fmt: skip


def mul_add(a, b, c, n, it):
    return (f"{n} has {a} boxes of {b} {it} and {c} loose {it}. How many {it} does {n} have in all?",
            f"{a} * {b} = {a * b}. {a * b} + {c} = {a * b + c}", a * b + c)  # fmt: skip


TEMPLATES = {"add": (add, 2, 50), "sub": (sub, 2, 50), "mul": (mul, 2, 12), "div": (div, 2, 12),
             "add_sub": (add_sub, 2, 30), "mul_add": (mul_add, 2, 9)}  # fmt: skip


def arithmetic():
    """Every (template, a, b, c) the templates can pose, in a fixed order."""
    for kind, (_, low, high) in TEMPLATES.items():
        for a in range(low, high + 1):
            for b in range(low, high + 1):
                for c in range(low, (high if kind in ("add_sub", "mul_add") else low) + 1):
                    yield kind, a, b, c


def is_heldout(kind: str, a: int, b: int, c: int) -> bool:
    digest = hashlib.sha256(f"{kind}:{a}:{b}:{c}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELDOUT_SHARE


def pose(kind: str, a: int, b: int, c: int, rng: random.Random) -> dict:
    question, steps, answer = TEMPLATES[kind][0](a, b, c, rng.choice(NAMES), rng.choice(ITEMS))
    return {
        "id": f"{kind}-{a}-{b}-{c}",
        "kind": kind,
        "question": question,
        "steps": steps,
        "answer": str(answer),
    }


def draw(heldout: bool, count: int, seed: int) -> list[dict]:
    """`count` problems from one side, the templates in equal shares."""
    rng = random.Random(seed)
    by_kind: dict[str, list] = {}
    for key in arithmetic():
        if is_heldout(*key) == heldout:
            by_kind.setdefault(key[0], []).append(key)
    per_kind = -(-count // len(by_kind))
    picked = [key for keys in by_kind.values() for key in rng.sample(keys, min(per_kind, len(keys)))]
    rng.shuffle(picked)
    return [pose(*key, rng) for key in picked[:count]]


def solution(problem: dict) -> str:
    return f"<think>{problem['steps']}</think>\n<answer>{problem['answer']}</answer>"


def miscomputed(problem: dict, rng: random.Random) -> str:
    """The worked solution with its last result wrong by a small slip (1, 2 or 10 either way, never negative),
    carried into the answer: it reads like the right one, only the arithmetic tells them apart."""
    answer = int(problem["answer"])
    wrong = answer + rng.choice([d for d in (-10, -2, -1, 1, 2, 10) if answer + d >= 0])
    head, _, _ = problem["steps"].rpartition(f"= {answer}")
    return solution({**problem, "steps": f"{head}= {wrong}", "answer": str(wrong)})


def preference_pairs(problems: list[dict], seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": [{"role": "user", "content": p["question"]}], "chosen": solution(p),
             "rejected": miscomputed(p, rng)} for p in problems]  # fmt: skip


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=480, help="training problems drawn")
    parser.add_argument("--heldout", type=Path, help="write the held-out eval file instead")
    args = parser.parse_args()
    if args.heldout:
        write_jsonl(args.heldout, draw(heldout=True, count=HELDOUT_ITEMS, seed=0))
        return
    if args.out is None:
        parser.error("OUT_DIR is needed")
    train = draw(heldout=False, count=args.train, seed=args.seed)
    prompt = lambda p: [{"role": "user", "content": p["question"]}]  # noqa: E731
    write_jsonl(args.out / "sft.jsonl", [{"prompt": prompt(p), "completion": [
        {"role": "assistant", "content": solution(p)}]} for p in train])  # fmt: skip
    write_jsonl(args.out / "grpo.jsonl", [{"prompt": prompt(p), "answer": p["answer"]} for p in train])
    write_jsonl(args.out / "prefs.jsonl", preference_pairs(train, args.seed))


if __name__ == "__main__":
    main()
