#!/usr/bin/env bash
# The device check, in stages (STAGES, default "recipes bench tests"); logs under $OUT.
#   recipes: the pretraining recipe on the GPU (RECIPES="fp16 bf16": fp16 with GradScaler eager,
#            bf16 + torch.compile), augmentation on the device fed by the background thread;
#            then bf16 on JPEG shards decoded on the device (decode_on_device, nvjpeg).
#            About 4 minutes with both precisions, 2.5 with RECIPES=bf16.
#   bench:   benchmarks/pretrain_throughput.py, compiled ViT-T and ViT-S: (a), (b), (c),
#            (c-jpeg) and the feeds alone; COMPARE=1 adds (c) as the last GPU run had it
#            (float32 colour ops, in line) and with the compiled augmentation, against the
#            same compiled step. About 4.5 minutes, 6 with COMPARE=1.
#   tests:   the CUDA cases of the device-feed / augmentation tests (when pytest is there).
#   libs:    benchmarks/augment_throughput.py: our batched modules against
#            torchvision.transforms.v2 (per image, per batch) and kornia (carry its wheels in
#            .whl) on the same GPU batch. About 1 minute.
#   label_efficiency: `recipes/label_efficiency.py --budget gpu` (results.json and plots to $OUT);
#            its own device call (STAGES=label_efficiency), rerun once if it runs past LE_TIMEOUT.
# Within one device call's 10 minutes: STAGES="recipes tests libs" RECIPES=bf16 (about 5
# minutes; 9.5 if every step runs to its timeout), then STAGES=bench (COMPARE=1 when 8 minutes
# of device time are left). Carry .whl (datasets, pyarrow, kornia for the device's Python).
# The exit status is 1 when any stage failed; each stage also prints its own exit line.
set -u -o pipefail
status=0
OUT=${OUT:-runs/gpu_check}; mkdir -p "$OUT"
STAGES=${STAGES:-recipes bench tests}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 SEWER_HF_CACHE=/tmp/sewer_cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch,timm,transformers,accelerate,datasets;print('torch',torch.__version__,'timm',timm.__version__,'transformers',transformers.__version__,'accelerate',accelerate.__version__,'datasets',datasets.__version__)" | tee -a "$OUT/gpu.txt"

if [[ " $STAGES " == *" recipes "* ]]; then
  python3 -m sewer_hf.cli synth --out /tmp/syn --train 512 --val 128 --seed 0 --size 352x288 --workers 8 --no-progress || status=1
  for precision in ${RECIPES:-fp16 bf16}; do
    set -- "$precision" "$([ "$precision" = bf16 ] && echo true || echo false)"
    timeout 110 python3 recipes/pretrain_dino.py --config recipes/configs/smoke_dino.yaml --data /tmp/syn \
      --mixed_precision "$1" --compile "$2" --epochs 2 --batch_size 64 --num_workers 8 --report_to none \
      --output_dir "/tmp/run_$1" > "$OUT/recipe_$1.log" 2>&1
    rc=$?; [ $rc = 0 ] || status=1
    echo "recipe $1 compile=$2 exit $rc" | tee -a "$OUT/gpu.txt"
    grep -a -E "DINO|kNN|error|Error" "$OUT/recipe_$1.log" | tail -4
    tail -2 "/tmp/run_$1/metrics.jsonl" 2>/dev/null | cut -c1-200
  done
  for split in Train Val; do
    python3 -m sewer_hf.cli prepare --data-root /tmp/syn --split "$split" --out /tmp/shards_jpeg --format jpeg --workers 8 > /dev/null || status=1
  done
  timeout 100 python3 recipes/pretrain_dino.py --config recipes/configs/smoke_dino.yaml --data /tmp/shards_jpeg \
    --mixed_precision bf16 --compile true --decode_on_device true --epochs 2 --batch_size 64 --num_workers 4 \
    --report_to none --output_dir /tmp/run_jpeg > "$OUT/recipe_jpeg.log" 2>&1
  rc=$?; [ $rc = 0 ] || status=1
  echo "recipe bf16 decode_on_device exit $rc" | tee -a "$OUT/gpu.txt"
  grep -a -E "DINO|kNN|error|Error" "$OUT/recipe_jpeg.log" | tail -3
fi

if [[ " $STAGES " == *" bench "* ]]; then
  timeout $([ -n "${COMPARE:-}" ] && echo 420 || echo 300) python3 benchmarks/pretrain_throughput.py \
    $([ -n "${COMPARE:-}" ] && echo --compare) ${THROUGHPUT_ARGS:-} --json "$OUT/throughput.json" 2>&1 \
    | grep -v Warning | tee "$OUT/throughput.log" || status=1
fi

if [[ " $STAGES " == *" libs "* ]]; then
  timeout 150 python3 benchmarks/augment_throughput.py 2>&1 | grep -v Warning | tee "$OUT/augment_libraries.log" || status=1
fi

if [[ " $STAGES " == *" label_efficiency "* ]]; then
  # the label-efficiency experiment's gpu budget (goal <= 15 min; a finished run is reused, so a
  # second device call on the same warm machine continues where the first stopped)
  timeout ${LE_TIMEOUT:-540} python3 recipes/label_efficiency.py --budget gpu --out runs/label_efficiency/gpu \
    > "$OUT/label_efficiency.log" 2>&1
  rc=$?; [ $rc = 0 ] || status=1
  echo "label_efficiency gpu exit $rc" | tee -a "$OUT/gpu.txt"
  grep -a "\[label-efficiency\].*done\|^|" "$OUT/label_efficiency.log" | tail -30
  cp runs/label_efficiency/gpu/results.json runs/label_efficiency/gpu/*.png "$OUT/" 2>/dev/null
fi

if [[ " $STAGES " == *" tests "* ]] && python3 -c "import pytest" 2>/dev/null; then
  # nvjpeg decode, the feed thread / side stream and the augmentation (float16 colour ops by default) on CUDA
  timeout 120 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/test_device_feed.py tests/test_gpu_augment.py \
    -k "cuda and (decode or feed or former or masked or op_rates or statistics or shapes)" > "$OUT/cuda_tests.log" 2>&1 || status=1
  tail -15 "$OUT/cuda_tests.log"
fi

echo "gpu_check: $([ $status = 0 ] && echo 'every stage exited 0' || echo 'a stage FAILED (see its exit line and log)')"
exit $status
