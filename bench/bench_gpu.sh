#!/usr/bin/env bash
# The GPU paths on one GPU, for real: what bench/RESULTS.md's GPU section reports.
#
#   bash bench/bench_gpu.sh --fetch-wheels     # here, with the registry: the wheels the GPU machine lacks, into .whl/
#   bash bench/bench_gpu.sh OUTDIR [STEP...]   # there; default steps: wheels env corpus tokens sweep
#   (other steps: pretrain check sft grpo bench sft-nods variants syncs)
#
# wheels: installs from the carried .whl/ folder every distribution the machine does not have (into
#   $WORK/site-packages, first on PYTHONPATH; a machine's package older than the carried one is shadowed)
# sweep: bench/bench_pretrain.py --sweep: the 125m, 350m and 1b presets at seq 2048 with document masking, SDPA
#   with the dense mask vs FlexAttention block masks, eager vs torch.compile, Liger's kernels together and each
#   alone, seeds, and the plain PyTorch loop with the same kernels; a markdown table in OUTDIR/sweep.md, rewritten
#   after every run. Runs that would start after SWEEP_DEADLINE seconds are skipped (listed as such);
#   SWEEP_FROM=N starts at the Nth run of the sweep's order (a second call picks up where the first stopped)
# corpus: documents made from the text files of the installed Python packages (real code and prose, no download)
# tokens: `llmforge tokenize train` + `encode` with recipes/gpu's tokenizer.yaml / encode.yaml, into $TOKENS
#   (made here and carried instead, the device's minutes go to the sweep: bench/RESULTS.md has the commands)
# pretrain: `llmforge pretrain` with recipes/gpu/pretrain-125m.yaml on this one GPU (bf16, DeepSpeed ZeRO-2, NCCL)
# variants: 10-step pretrain runs as the recipe, with document masking off, with torch.compile, and both
# syncs: the recipe's pretrain for 10 steps under torch.cuda.set_sync_debug_mode("warn"): every operation that
#   made the host wait for the GPU, counted by source line (OUTDIR/syncs.txt); a line counted once a step or more
#   is a wait in the training step (llmforge's own is one a step: the losses read after the update is queued)
# check: the model artifact loads in transformers and generates on the GPU
# bench: bench/bench_pretrain.py: llmforge vs a plain PyTorch loop (tokens/s, MFU, memory), ZeRO 0/2/3
# sft, grpo: recipes/gpu's LoRA SFT (DeepSpeed ZeRO-2 under torchrun) on the pretrained model, then GRPO on
#   that adapter with transformers generation; vLLM is checked for and refused cleanly when missing;
#   sft-nods: the same SFT without DeepSpeed, for the step time
#
# Sizes are environment variables (defaults for an 80 GB GPU and a 10-minute budget); every step has its own
# time limit and logs to OUTDIR/logs/STEP.log; OUTDIR/summary.txt gets one line per step.
# Without a CUDA GPU the script stops, unless CPU_REHEARSAL=1: then the sweep runs the tiny and small presets
# at seq 128 for 6 steps on the CPU (what FlexAttention and Liger cannot do there shows as refused rows).
set -uo pipefail
FETCH_WHEELS=false
[[ ${1:-} == --fetch-wheels ]] && FETCH_WHEELS=true && shift
OUT=$(realpath -m "${1:-gpu-out}")
shift || true
STEPS=${*:-wheels env corpus tokens sweep}
WORK=${WORK:-/tmp/llmforge-gpu}
TOKENS=${TOKENS:-$WORK/tokens}  # a tokens artifact made elsewhere and carried saves the corpus and tokens steps
REPO=$(cd "$(dirname "$0")/.." && pwd)
RECIPES=$REPO/recipes/gpu
LF="python3 -m llmforge"
# text for the corpus: 30 MB (about 7M tokens) feeds the sweep; the 20M-token pretrain step needs 100
if [[ " $STEPS " == *" pretrain "* ]]; then CORPUS_MB=${CORPUS_MB:-100}; else CORPUS_MB=${CORPUS_MB:-30}; fi
TOKENIZER_MB=${TOKENIZER_MB:-10}    # BPE training sample (40 MB in the first H100 run)
VOCAB=${VOCAB:-32768}               # the recipe's (pinned in pretrain-125m.yaml)
PRETRAIN_ARGS=${PRETRAIN_ARGS:---train-tokens 20971520 --set optim.warmup_steps=4 --checkpoint-every 20 --set eval.every=20 --set logging.every=1}
BENCH_ARGS=${BENCH_ARGS:---preset 125m --seq-len 2048 --micro 16 --steps 20 --zero-preset 125m --zero-steps 10 --zero-nproc 1}
VARIANT_ARGS=${VARIANT_ARGS:---train-tokens 5242880 --set optim.warmup_steps=2 --checkpoint-every 0 --set eval.every=0 --set logging.every=1}
SFT_ARGS=${SFT_ARGS:---max-steps 40 --set save_steps=1000 --set logging_steps=5}
SWEEP_PRESETS=${SWEEP_PRESETS:-125m,350m,1b}
SWEEP_ARGS=${SWEEP_ARGS:---seq-len 2048 --micro 16 --accumulation 4 --sweep-steps 15}
SWEEP_DEADLINE=${SWEEP_DEADLINE:-320}  # no sweep run starts later than this (seconds into the sweep)
SWEEP_LIMIT=${SWEEP_LIMIT:-470}        # the sweep step is stopped after this many seconds
SWEEP_FROM=${SWEEP_FROM:-0}
SWEEP_VARIANTS=${SWEEP_VARIANTS:-}  # only these (comma-separated names of bench_pretrain.py's VARIANTS)
GRPO_ARGS=${GRPO_ARGS:---max-steps 10 --max-completion-length 64 --max-length 256 --set save_steps=1000}
export PYTHONUNBUFFERED=1 PYTHONPATH=$REPO:$REPO/tests${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1

if $FETCH_WHEELS; then
    # Pure-Python wheels, and CPython 3.11-3.13 builds of the few compiled ones, of what llmforge pretrain imports
    # beyond torch (the GPU machine has torch and its CUDA stack, and no registry). DeepSpeed is an sdist: built
    # here into a pure-Python wheel (no ops). Each is installed there only if the machine lacks it.
    cd "$REPO" && mkdir -p .whl || exit 1
    PURE="liger-kernel==0.8.5 hjson==3.1.0 py-cpuinfo==9.0.0 einops==0.8.2 nvidia-ml-py==13.615.71
          pydantic==2.14.3 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 typer==0.29.2
          click==8.5.1 shellingham==1.5.4 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 Pygments==2.21.0
          annotated-doc==0.0.7 tqdm==4.70.1 packaging==26.3 transformers==5.17.0 huggingface-hub==1.33.0
          safetensors==0.8.0 filelock==4.3.2 fsspec==2026.9.0 ninja==1.13.2 tokenizers==0.23.3 hf-xet==1.8.0 psutil==7.2.2
          Jinja2==3.1.6 httpx==0.28.1 httpcore==1.0.9 h11==0.16.0 anyio==4.16.0 certifi==2026.10.18 idna==3.20"
    COMPILED="pydantic-core==2.50.4 msgpack==1.2.4 PyYAML==6.0.3 regex==2026.11.15 orjson==3.13.0 MarkupSafe==3.0.4
              zstandard==0.25.0"
    PLATFORMS="--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64"
    python3 -m pip download -q --no-deps --only-binary=:all: --dest .whl $PLATFORMS --python-version 3.12 $PURE ||
        exit 1
    for version in 3.11 3.12 3.13; do
        python3 -m pip download -q --no-deps --only-binary=:all: --dest .whl $PLATFORMS --python-version $version \
            $COMPILED || exit 1
    done
    DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --wheel-dir .whl deepspeed==0.19.8 || exit 1
    du -sh .whl && ls .whl
    exit 0
fi
if [[ ${CPU_REHEARSAL:-0} == 1 ]]; then  # the whole chain on this CPU, at sizes a CPU runs in minutes
    SWEEP_PRESETS=${SWEEP_PRESETS_CPU:-tiny,small}
    SWEEP_ARGS="--seq-len 128 --micro 4 --accumulation 2 --sweep-steps 6"
    SWEEP_VARIANTS=${SWEEP_VARIANTS:-sdpa-mask eager,flex compiled,flex eager + liger,sdpa-mask eager + liger}
    SWEEP_DEADLINE=${SWEEP_DEADLINE_CPU:-900}
    VOCAB=${VOCAB_CPU:-4096} CORPUS_MB=${CORPUS_MB_CPU:-3} TOKENIZER_MB=3
elif ! python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "bench_gpu.sh: no CUDA GPU here (CPU_REHEARSAL=1 rehearses the chain on the CPU at tiny sizes)" >&2
    exit 2
fi
mkdir -p "$OUT/logs" "$WORK"
cd "$REPO" || exit 1
export PYTHONPATH=$WORK/site-packages:$PYTHONPATH  # the carried wheels the machine lacked (step wheels)

note() { echo "[$(date +%T)] $*" | tee -a "$OUT/summary.txt"; }
# run NAME SECONDS COMMAND...: the command under a time limit, its output in logs/NAME.log
run() {
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
    rc=$?
    note "$name: exit $rc in $(($(date +%s) - start)) s"
    return $rc
}
wanted() { [[ " $STEPS " == *" $1 "* ]]; }

if wanted wheels; then
    # every carried distribution the machine lacks (by name), unpacked into $WORK/site-packages (on PYTHONPATH)
    run wheels 300 python3 - "$REPO/.whl" "$WORK/site-packages" <<'EOF'
import importlib.metadata, subprocess, sys
from pathlib import Path

def older(installed: str, carried: str) -> bool:
    try:
        from packaging.version import Version
    except ImportError:
        return False
    return Version(installed) < Version(carried)


wanted = {}
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    name = name.lower().replace("_", "-")
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is None or older(installed, version):  # the carried one then comes first on PYTHONPATH
        wanted.setdefault(name, []).append(wheel)
    else:
        print(f"{name}: the machine's {installed}")
# one wheel per distribution: pure Python, or the build for this interpreter (compiled ones come for 3.11-3.13)
here = f"cp{sys.version_info.major}{sys.version_info.minor}"


def fits(wheel: Path) -> bool:  # python tag, abi tag: cp312-cp312, py3-none, cp39-abi3 (CPython 3.9 and later)
    python, abi = wheel.name.split("-")[-3:-1]
    return python in (here, "py3", "py2.py3") or (abi == "abi3" and int(python[3:]) <= sys.version_info.minor)


chosen = {name: next((w for w in wheels if fits(w)), None) for name, wheels in wanted.items()}
for name in [name for name, wheel in chosen.items() if wheel is None]:
    print(f"{name}: no carried wheel for {here}")
wheels = [str(wheel) for wheel in chosen.values() if wheel]
if not wheels:
    sys.exit(0)
result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                         "--target", sys.argv[2], *wheels], capture_output=True, text=True)
print(f"installed {len(wheels)} wheels: {', '.join(sorted(n for n, w in chosen.items() if w))}"
      if result.returncode == 0 else f"pip failed: {result.stderr.strip()[-2000:]}")
sys.exit(result.returncode)
EOF
fi

if wanted env; then
    {
        nvidia-smi
        python3 --version
        python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_bf16_supported()); print("gpu:", torch.cuda.get_device_name(0))'
        python3 -m pip list 2>/dev/null | grep -i -E '^(torch|triton|transformers|deepspeed|trl|peft|accelerate|datasets|tokenizers|pydantic|flash.attn|vllm|bitsandbytes|liger.kernel) '
        python3 -c 'import deepspeed, liger_kernel, llmforge.stages.pretrain; print("imports: deepspeed, liger_kernel, llmforge: ok")'
        df -h /tmp
    } >"$OUT/logs/env.log" 2>&1
    note "env: $(grep -m1 '^gpu: ' "$OUT/logs/env.log" || echo 'no GPU name (logs/env.log)')"
fi

if wanted corpus; then
    run corpus 300 python3 - "$WORK/docs" "$CORPUS_MB" <<'EOF'
"""Documents from the text files of the installed packages and the standard library, in a fixed order."""
import site, sys, sysconfig
from pathlib import Path
from helpers import documents_artifact

roots = sorted({sysconfig.get_paths()["stdlib"], *site.getsitepackages()})
limit, texts, size = float(sys.argv[2]) * 1e6, [], 0
for root in roots:
    for path in sorted(Path(root).rglob("*")):
        if path.suffix not in (".py", ".md", ".rst", ".txt") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if 500 <= len(text) <= 1_000_000:
            texts.append(text)
            size += len(text)
        if size >= limit:
            break
    if size >= limit:
        break
texts = list(dict.fromkeys(texts))
print(f"{len(texts):,} documents, {sum(map(len, texts)) / 1e6:.1f} M characters from {roots}")
print(documents_artifact(Path(sys.argv[1]), texts))
EOF
fi

if wanted tokens; then
    run tokenizer 600 $LF tokenize train "$WORK/docs" -o "$WORK/tokenizer" --config "$RECIPES/tokenizer.yaml" \
        --vocab-size "$VOCAB" --sample-bytes $((TOKENIZER_MB * 1000000))
    run encode 600 $LF tokenize encode "$WORK/docs" -o "$TOKENS" --tokenizer "$WORK/tokenizer" \
        --config "$RECIPES/encode.yaml" --set target_tokens=null --val-fraction 0.01
fi

if wanted pretrain; then
    # the recipe's config on one GPU: --nproc 1 (accumulation 16 instead of 2), a 20M-token budget
    run pretrain 900 $LF pretrain "$TOKENS" -o "$WORK/base" --config "$RECIPES/pretrain-125m.yaml" --nproc 1 \
        --set model.vocab_size="$VOCAB" $PRETRAIN_ARGS
    cp "$WORK/base/metrics.jsonl" "$OUT/logs/pretrain-metrics.jsonl" 2>/dev/null
    $LF show "$WORK/base" >"$OUT/logs/pretrain-show.log" 2>&1
fi

if wanted variants; then
    # what the settings cost: the same run, 10 steps each, with document masking off and with torch.compile
    for variant in "baseline:" "masking-off:--set document_masking=false" "compile:--compile" \
        "compile-masking-off:--compile --set document_masking=false"; do
        run "pretrain-${variant%%:*}" 600 $LF pretrain "$TOKENS" -o "$WORK/${variant%%:*}" \
            --config "$RECIPES/pretrain-125m.yaml" --nproc 1 --set model.vocab_size="$VOCAB" $VARIANT_ARGS \
            ${variant#*:}
    done
fi

if wanted syncs && [[ ${CPU_REHEARSAL:-0} != 1 ]]; then
    run syncs 400 python3 -W always -c '
import sys, torch
torch.cuda.set_sync_debug_mode("warn")
from llmforge.cli import app
sys.argv = ["llmforge", *sys.argv[1:]]
app()' pretrain "$TOKENS" -o "$WORK/syncs" --config "$RECIPES/pretrain-125m.yaml" --nproc 1 \
        --set model.vocab_size="$VOCAB" $VARIANT_ARGS
    # "FILE:LINE: UserWarning: called a synchronizing CUDA operation": counted per line, most frequent first
    grep -o '^[^ ]*:[0-9]*: UserWarning: called a synchronizing' "$OUT/logs/syncs.log" | cut -d' ' -f1 |
        sort | uniq -c | sort -rn >"$OUT/syncs.txt"
    note "syncs: $(wc -l <"$OUT/syncs.txt") source lines waited for the GPU; the most frequent:"
    head -8 "$OUT/syncs.txt" | tee -a "$OUT/summary.txt"
fi

if wanted check; then
    run check 300 python3 -c '
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda()
ids = tokenizer("import torch\n", return_tensors="pt").to("cuda")
out = model.generate(**ids, max_new_tokens=40, do_sample=False)
print(repr(tokenizer.decode(out[0])))' "$WORK/base"
fi

if wanted sft || wanted sft-nods || wanted grpo; then
    python3 -c '
import sys
from pathlib import Path
from helpers import chat_records, grpo_records, write_jsonl
write_jsonl(Path(sys.argv[1]) / "sft.jsonl", chat_records(512))
write_jsonl(Path(sys.argv[1]) / "grpo.jsonl", grpo_records(256))' "$WORK"
fi

if wanted sft; then
    # the recipe as it is (LoRA, DeepSpeed ZeRO-2 under torchrun), on one GPU
    run sft 600 $LF sft "$WORK/base" "$WORK/sft.jsonl" -o "$WORK/sft" --config "$RECIPES/sft-lora.yaml" --nproc 1 \
        $SFT_ARGS
    cp "$WORK/sft/metrics.jsonl" "$OUT/logs/sft-metrics.jsonl" 2>/dev/null
    $LF show "$WORK/sft" >"$OUT/logs/sft-show.log" 2>&1
fi

if wanted grpo; then
    run grpo-vllm 120 $LF grpo "$WORK/sft" "$WORK/grpo.jsonl" -o "$WORK/grpo" --config "$RECIPES/grpo-lora.yaml" \
        --nproc 1 --use-vllm --dry-run
    run grpo 600 $LF grpo "$WORK/sft" "$WORK/grpo.jsonl" -o "$WORK/grpo" --config "$RECIPES/grpo-lora.yaml" \
        --nproc 1 $GRPO_ARGS
    cp "$WORK/grpo/metrics.jsonl" "$OUT/logs/grpo-metrics.jsonl" 2>/dev/null
    $LF show "$WORK/grpo" >"$OUT/logs/grpo-show.log" 2>&1
fi

if wanted sweep; then
    # TORCH_LOGS=recompiles: a recompilation at every step would show in the log (and in the tokens/s)
    TORCH_LOGS=recompiles run sweep "$SWEEP_LIMIT" python3 bench/bench_pretrain.py --tokens "$TOKENS" \
        --sweep "$SWEEP_PRESETS" $SWEEP_ARGS --deadline "$SWEEP_DEADLINE" --start "$SWEEP_FROM" \
        ${SWEEP_VARIANTS:+--variants "$SWEEP_VARIANTS"} --markdown "$OUT/sweep.md"
    tail -n +4 "$OUT/sweep.md" 2>/dev/null | tee -a "$OUT/summary.txt"
fi

if wanted bench; then
    run bench 900 python3 bench/bench_pretrain.py --tokens "$TOKENS" $BENCH_ARGS
fi

if wanted sft-nods; then
    # the same without DeepSpeed (one process, HF Trainer's own loop), for the step time
    run sft-nods 600 $LF sft "$WORK/base" "$WORK/sft.jsonl" -o "$WORK/sft-nods" --config "$RECIPES/sft-lora.yaml" \
        --nproc 1 --set zero=null $SFT_ARGS
    $LF show "$WORK/sft-nods" >"$OUT/logs/sft-nods-show.log" 2>&1
fi

tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
note "done: $OUT/summary.txt, $OUT/logs.tgz"
