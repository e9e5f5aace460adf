#!/usr/bin/env bash
# How the GPU figures in docs/benchmarks.md were measured (about 10 minutes on an H100):
#   bf16     classification throughput in bf16, ours against the three baselines, batch-size profile;
#   fp32     ours and one-forward-per-label in float32, to show what bf16 buys;
#   workers  ours with 1 and 4 preprocessing threads (the default on a GPU is up to 8);
#   lora     LoRA fine-tuning speed and memory on the FIRST training split (one epoch);
#   families ours on full-size random-weight LLaVA-OneVision, Qwen2.5-VL, LLaVA-1.5-7B and LLaVA-NeXT-7B (bf16);
#   survey   a survey catalogue: local engine against one GPU Ray actor, with GPU utilisation (needs ray);
#   vllm     the anchor: the same cutouts through `vllm serve` and the remote backend's logprobs scoring,
#            against ours in one process (needs vllm installed; skipped with a line saying so otherwise).
# STEPS picks some (default: all). The K = 10 cost is in bf16 (--k 4 10). Needs python3 with a CUDA torch, transformers, peft and accelerate,
# this repository on PYTHONPATH (or installed), and ASTROVLM_SHARED pointing at a folder with
# data/first_radio_galaxies and models/SmolVLM-256M-Instruct. Output goes to $OUT (default /tmp/astrovlm-gpu).
set -uo pipefail
OUT=${OUT:-/tmp/astrovlm-gpu}
MODEL=${MODEL:-/tmp/smolvlm-256m-random-seed0}
STEPS=${STEPS:-bf16 fp32 workers lora families survey vllm}
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
case " $STEPS " in *" families "*)
    python3 benchmarks/bench_classify.py --device cuda --dtype bfloat16 --n 32 --k 4 --batch-size 16 \
        --families LLaVA-OneVision Qwen2.5-VL LLaVA-1.5 LLaVA-NeXT --out "$OUT/families.json" 2>&1 \
        | tee "$OUT/families.log";; esac
case " $STEPS " in *" survey "*)
    (nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 1 > "$OUT/survey_gpu_util.csv" &
     echo $! > "$OUT/.smi.pid"
     python3 benchmarks/bench_survey.py --model full --gpu --skip-cpu-actors --out "$OUT/survey.json" 2>&1 \
         | tee "$OUT/survey.log"
     kill "$(cat "$OUT/.smi.pid")");; esac
case " $STEPS " in *" vllm "*)
    if ! command -v vllm >/dev/null 2>&1; then
        echo "vllm is not installed: pip install vllm, then STEPS=vllm bash benchmarks/run_on_gpu.sh" \
            | tee "$OUT/vllm.log"
    else
        vllm serve "$MODEL" --port 8011 --dtype bfloat16 --max-logprobs 20 > "$OUT/vllm_server.log" 2>&1 &
        server=$!
        for _ in $(seq 180); do curl -sf http://127.0.0.1:8011/v1/models >/dev/null && break; sleep 2; done
        test_dir="$ASTROVLM_SHARED/data/first_radio_galaxies/test"
        for model in "$MODEL" http://127.0.0.1:8011/v1; do
            device=(); case "$model" in http*) ;; *) device=(--device cuda) ;; esac
            /usr/bin/time -f "%e s wall for 200 cutouts through $model" python3 -m glue_astrovlm.cli eval \
                "$test_dir" --model "$model" "${device[@]}" --labels FRI FRII Compact Bent \
                --out "$OUT/vllm_anchor_$(echo "$model" | tr -c 'a-z0-9' _)"
        done 2>&1 | tee "$OUT/vllm.log"
        kill "$server"
    fi;; esac
ls -la "$OUT"
