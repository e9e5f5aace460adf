#!/usr/bin/env bash
# How the GPU figures in docs/benchmarks.md were measured (about 10 minutes on an H100):
#   bf16     classification throughput in bf16, ours against the three baselines, batch-size profile;
#   fp32     ours and one-forward-per-label in float32, to show what bf16 buys;
#   workers  ours with 1 and 4 preprocessing threads (the default on a GPU is up to 8);
#   lora     LoRA fine-tuning speed and memory on the FIRST training split (one epoch).
# STEPS picks some (default: all). Needs python3 with a CUDA torch, transformers, peft and accelerate,
# this repository on PYTHONPATH (or installed), and ASTROVLM_SHARED pointing at a folder with
# data/first_radio_galaxies and models/SmolVLM-256M-Instruct. Output goes to $OUT (default /tmp/astrovlm-gpu).
set -uo pipefail
OUT=${OUT:-/tmp/astrovlm-gpu}
MODEL=${MODEL:-/tmp/smolvlm-256m-random-seed0}
STEPS=${STEPS:-bf16 fp32 workers lora}
export ASTROVLM_SMOLVLM_CONFIG=${ASTROVLM_SMOLVLM_CONFIG:-$ASTROVLM_SHARED/models/SmolVLM-256M-Instruct}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import os, torch, transformers, peft; print('torch', torch.__version__, '| transformers',
transformers.__version__, '| peft', peft.__version__, '| cpus', os.cpu_count())"; } | tee "$OUT/machine.txt"
bench() { python3 benchmarks/bench_classify.py --device cuda --model-dir "$MODEL" --n 32 --k 4 10 --batch-size 16 "$@"; }

case " $STEPS " in *" bf16 "*)
    bench --dtype bfloat16 --repeats 3 --profile --profile-batch-sizes 1 4 16 32 --profile-images 32 \
        --out "$OUT/classify_bf16.json" 2>&1 | tee "$OUT/classify_bf16.log";; esac
case " $STEPS " in *" fp32 "*)
    bench --dtype float32 --repeats 2 --methods ours bruteforce \
        --out "$OUT/classify_fp32.json" 2>&1 | tee "$OUT/classify_fp32.log";; esac
case " $STEPS " in *" workers "*)
    for workers in 1 4; do
        bench --dtype bfloat16 --repeats 3 --methods ours --preprocess-workers $workers --profile \
            --profile-batch-sizes 16 --profile-images 32 --out "$OUT/workers_$workers.json" 2>&1 | tail -12
    done | tee "$OUT/workers.log";; esac
case " $STEPS " in *" lora "*)
    rm -rf /tmp/astrovlm-lora-gpu
    python3 -m glue_astrovlm.cli finetune "$ASTROVLM_SHARED/data/first_radio_galaxies/train" --model "$MODEL" \
        --device cuda --method lora --labels FRI FRII Compact Bent --epochs 1 --batch-size 16 \
        --out /tmp/astrovlm-lora-gpu --no-progress 2>&1 | tee "$OUT/finetune_lora.log"
    cp /tmp/astrovlm-lora-gpu/astrovlm_adapter.json "$OUT/finetune_lora.json";; esac
ls -la "$OUT"
