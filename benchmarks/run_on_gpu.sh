#!/usr/bin/env bash
# How the GPU figures in docs/benchmarks.md were measured, in one go (about 10 minutes on an H100):
#   1. classification throughput in bf16, ours against the three baselines, and batch-size profile;
#   2. the same for ours and one-forward-per-label in float32, to show what bf16 buys;
#   3. LoRA fine-tuning speed and memory on the FIRST training split (one epoch).
# Needs python3 with a CUDA torch, transformers, peft and accelerate, this repository on PYTHONPATH
# (or installed), and ASTROVLM_SHARED pointing at a folder with data/first_radio_galaxies and
# models/SmolVLM-256M-Instruct. Everything is written to $OUT (default /tmp/astrovlm-gpu).
set -uo pipefail
OUT=${OUT:-/tmp/astrovlm-gpu}
MODEL=${MODEL:-/tmp/smolvlm-256m-random-seed0}
export ASTROVLM_SMOLVLM_CONFIG=${ASTROVLM_SMOLVLM_CONFIG:-$ASTROVLM_SHARED/models/SmolVLM-256M-Instruct}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, '| transformers',
transformers.__version__, '| peft', peft.__version__)"; } | tee "$OUT/machine.txt"

python3 benchmarks/bench_classify.py --device cuda --dtype bfloat16 --model-dir "$MODEL" --n 32 --k 4 10 \
    --repeats 3 --batch-size 16 --profile --profile-batch-sizes 1 4 16 32 --profile-images 32 \
    --out "$OUT/classify_bf16.json" 2>&1 | tee "$OUT/classify_bf16.log"

python3 benchmarks/bench_classify.py --device cuda --dtype float32 --model-dir "$MODEL" --n 32 --k 4 10 \
    --repeats 2 --batch-size 16 --methods ours bruteforce \
    --out "$OUT/classify_fp32.json" 2>&1 | tee "$OUT/classify_fp32.log"

rm -rf /tmp/astrovlm-lora-gpu
python3 -m glue_astrovlm.cli finetune "$ASTROVLM_SHARED/data/first_radio_galaxies/train" --model "$MODEL" \
    --device cuda --method lora --labels FRI FRII Compact Bent --epochs 1 --batch-size 16 \
    --out /tmp/astrovlm-lora-gpu --no-progress 2>&1 | tee "$OUT/finetune_lora.log"
cp /tmp/astrovlm-lora-gpu/astrovlm_adapter.json "$OUT/finetune_lora.json"
ls -la "$OUT"
