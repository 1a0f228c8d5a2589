#!/usr/bin/env bash
# The device check: the pretraining recipe on a GPU (fp16 with GradScaler, bf16 + torch.compile,
# batch augmentation on the device), then the throughput benchmark. Writes logs under $OUT.
set -u
OUT=${OUT:-runs/gpu_check}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 SEWER_HF_CACHE=/tmp/sewer_cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch,timm,transformers,accelerate,datasets;print('torch',torch.__version__,'timm',timm.__version__,'transformers',transformers.__version__,'accelerate',accelerate.__version__,'datasets',datasets.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m sewer_hf.cli synth --out /tmp/syn --train 512 --val 128 --seed 0 --size 352x288 --workers 8 --no-progress
for run in "fp16 false" "bf16 true"; do
  set -- $run
  timeout 110 python3 recipes/pretrain_dino.py --config recipes/configs/smoke_dino.yaml --data /tmp/syn \
    --mixed_precision "$1" --compile "$2" --epochs 2 --batch_size 64 --num_workers 8 --report_to none \
    --output_dir "/tmp/run_$1" > "$OUT/recipe_$1.log" 2>&1
  echo "recipe $1 compile=$2 exit $?" | tee -a "$OUT/gpu.txt"
  grep -a -E "DINO|kNN|error|Error" "$OUT/recipe_$1.log" | tail -4
  tail -2 "/tmp/run_$1/metrics.jsonl" 2>/dev/null | cut -c1-200
done
timeout 290 python3 benchmarks/pretrain_throughput.py ${THROUGHPUT_ARGS:-} --json "$OUT/throughput.json" 2>&1 | grep -v Warning | tee "$OUT/throughput.log"
