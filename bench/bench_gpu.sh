#!/usr/bin/env bash
# The GPU paths on one GPU, for real: what bench/RESULTS.md's GPU section reports.
#
#   bash bench/bench_gpu.sh OUTDIR [STEP...]   # steps: env corpus tokens pretrain check sft grpo bench sft-nods (and variants)
#
# corpus: documents made from the text files of the installed Python packages (real code and prose, no download)
# tokens: `llmforge tokenize train` + `encode` with recipes/gpu's tokenizer.yaml / encode.yaml
# pretrain: `llmforge pretrain` with recipes/gpu/pretrain-125m.yaml on this one GPU (bf16, DeepSpeed ZeRO-2, NCCL)
# variants: 10-step pretrain runs as the recipe, with document masking off, with torch.compile, and both
# check: the model artifact loads in transformers and generates on the GPU
# bench: bench/bench_pretrain.py: llmforge vs a plain PyTorch loop (tokens/s, MFU, memory), ZeRO 0/2/3
# sft, grpo: recipes/gpu's LoRA SFT (DeepSpeed ZeRO-2 under torchrun) on the pretrained model, then GRPO on
#   that adapter with transformers generation; vLLM is checked for and refused cleanly when missing;
#   sft-nods: the same SFT without DeepSpeed, for the step time
#
# Sizes are environment variables (defaults for an 80 GB GPU and a 10-minute budget); every step has its own
# time limit and logs to OUTDIR/logs/STEP.log; OUTDIR/summary.txt gets one line per step.
set -uo pipefail
OUT=$(realpath -m "${1:-gpu-out}")
shift || true
STEPS=${*:-env corpus tokens pretrain check sft grpo bench sft-nods}
WORK=${WORK:-/tmp/llmforge-gpu}
REPO=$(cd "$(dirname "$0")/.." && pwd)
RECIPES=$REPO/recipes/gpu
LF="python3 -m llmforge"
CORPUS_MB=${CORPUS_MB:-100}         # text for the corpus
TOKENIZER_MB=${TOKENIZER_MB:-40}    # BPE training sample
VOCAB=${VOCAB:-32768}               # the recipe's (pinned in pretrain-125m.yaml)
PRETRAIN_ARGS=${PRETRAIN_ARGS:---train-tokens 20971520 --set optim.warmup_steps=4 --checkpoint-every 20 --set eval.every=20 --set logging.every=1}
BENCH_ARGS=${BENCH_ARGS:---preset 125m --seq-len 2048 --micro 16 --steps 20 --zero-preset 125m --zero-steps 10 --zero-nproc 1}
VARIANT_ARGS=${VARIANT_ARGS:---train-tokens 5242880 --set optim.warmup_steps=2 --checkpoint-every 0 --set eval.every=0 --set logging.every=1}
SFT_ARGS=${SFT_ARGS:---max-steps 40 --set save_steps=1000 --set logging_steps=5}
GRPO_ARGS=${GRPO_ARGS:---max-steps 10 --max-completion-length 64 --max-length 256 --set save_steps=1000}
export PYTHONUNBUFFERED=1 PYTHONPATH=$REPO:$REPO/tests${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1
mkdir -p "$OUT/logs" "$WORK"
cd "$REPO" || exit 1

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

if wanted env; then
    {
        nvidia-smi
        python3 --version
        python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.is_bf16_supported())'
        python3 -m pip list 2>/dev/null | grep -i -E '^(torch|transformers|deepspeed|trl|peft|accelerate|datasets|tokenizers|pydantic|flash.attn|vllm|bitsandbytes) '
        df -h /tmp
    } >"$OUT/logs/env.log" 2>&1
    note "env: $(grep -m1 -o 'NVIDIA [A-Z0-9 ]*[0-9]GB[A-Z0-9 ]*' "$OUT/logs/env.log" || echo '?')"
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
    run encode 600 $LF tokenize encode "$WORK/docs" -o "$WORK/tokens" --tokenizer "$WORK/tokenizer" \
        --config "$RECIPES/encode.yaml" --set target_tokens=null --val-fraction 0.01
fi

if wanted pretrain; then
    # the recipe's config on one GPU: --nproc 1 (accumulation 16 instead of 2), a 20M-token budget
    run pretrain 900 $LF pretrain "$WORK/tokens" -o "$WORK/base" --config "$RECIPES/pretrain-125m.yaml" --nproc 1 \
        --set model.vocab_size="$VOCAB" $PRETRAIN_ARGS
    cp "$WORK/base/metrics.jsonl" "$OUT/logs/pretrain-metrics.jsonl" 2>/dev/null
    $LF show "$WORK/base" >"$OUT/logs/pretrain-show.log" 2>&1
fi

if wanted variants; then
    # what the settings cost: the same run, 10 steps each, with document masking off and with torch.compile
    for variant in "baseline:" "masking-off:--set document_masking=false" "compile:--compile" \
        "compile-masking-off:--compile --set document_masking=false"; do
        run "pretrain-${variant%%:*}" 600 $LF pretrain "$WORK/tokens" -o "$WORK/${variant%%:*}" \
            --config "$RECIPES/pretrain-125m.yaml" --nproc 1 --set model.vocab_size="$VOCAB" $VARIANT_ARGS \
            ${variant#*:}
    done
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

if wanted bench; then
    run bench 900 python3 bench/bench_pretrain.py --tokens "$WORK/tokens" $BENCH_ARGS
fi

if wanted sft-nods; then
    # the same without DeepSpeed (one process, HF Trainer's own loop), for the step time
    run sft-nods 600 $LF sft "$WORK/base" "$WORK/sft.jsonl" -o "$WORK/sft-nods" --config "$RECIPES/sft-lora.yaml" \
        --nproc 1 --set zero=null $SFT_ARGS
    $LF show "$WORK/sft-nods" >"$OUT/logs/sft-nods-show.log" 2>&1
fi

tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
note "done: $OUT/summary.txt, $OUT/logs.tgz"
