"""What fill-in-the-middle costs `llmforge tokenize encode`: the stage with `--fim-rate 0.5` against the same run
without it, on real code (the Python standard library's sources, one document per file).

No library here does FIM on its own (Megatron-LM and bigcode's fork rewrite samples inside their data loaders), so
the comparison is the stage against itself: the extra time is the rewriting (decode, cut, encode the three parts,
and the check that each document decodes back to its own tokens), done in the mix's single pass.

    .venv/bin/python bench/bench_fim.py [--mb 10] [--vocab 8192] [--repeat 2]

Prints one table; the figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from bench_tokenize import collect, documents_artifact

    from llmforge import machine
    from llmforge.artifacts import Artifact
    from llmforge.stages import tokenize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10, help="megabytes of code to encode")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=2, help="runs per setting, best kept")
    args = parser.parse_args()
    texts = collect([Path(sysconfig.get_paths()["stdlib"])], (".py",), int(args.mb * 1e6))
    size = sum(len(t.encode()) for t in texts)
    print(f"corpus: {len(texts):,} files of Python, {size / 1e6:.1f} MB; {machine.cpu_count()} cores",
          file=sys.stderr)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        root = Path(tmp)
        docs = documents_artifact(root / "docs", texts)
        tok = tokenize.train([str(docs)], root / "tok",
                             tokenize.TrainConfig(vocab_size=args.vocab, fim_tokens=True))  # fmt: skip
        best, stats = {}, {}
        for run in range(args.repeat):
            for rate in (0.0, 0.5):
                out = root / f"tokens-{rate}-{run}"
                started = time.perf_counter()
                tokenize.encode([str(docs)], out, tokenizer=tok, config=tokenize.EncodeConfig(fim_rate=rate))
                best[rate] = min(best.get(rate, float("inf")), time.perf_counter() - started)
                stats[rate] = Artifact.open(out).stats
    fim = stats[0.5]["fim"]
    print("| setting | stage seconds | training tokens | ratio |")
    print("|---|---|---|---|")
    print(f"| without FIM | {best[0.0]:.1f} | {stats[0.0]['tokens']:,} | 1.00x |")
    print(f"| --fim-rate 0.5 | {best[0.5]:.1f} | {stats[0.5]['tokens']:,} | {best[0.5] / best[0.0]:.2f}x |")
    print(f"\nrewritten {fim['documents']:,} of {stats[0.5]['documents']:,} training documents ({fim['spm']:,} SPM), "
          f"{fim['skipped']:,} left whole")  # fmt: skip


if __name__ == "__main__":
    main()
