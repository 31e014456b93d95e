#!/bin/bash
# The GPU check and speed runs, as run on a lent NVIDIA H200 (docs/gpu.md): from the repository root of a
# machine whose python3 has PyTorch (CUDA) and transformers, and no network. Prepared on a machine that has
# the packages (see docs/gpu.md): .gpu/assets (tokenizers, SmolLM2's config), .gpu/data/e2e (E2E train and
# dev CSVs, a copy that is never committed) and .whl (wheels of what that python3 lacks). $OUT: results.
set -uo pipefail
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 LORAKIT_DATA=$PWD/.gpu/data LORAKIT_HOME=/tmp/lk TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
lscpu | grep "Model name"
timeout 240 python3 benchmarks/gpu_check.py --assets .gpu/assets --json "$OUT/gpu-check.json" 2>&1 | tee "$OUT/gpu-check.log" | grep -vE "^\s|Traceback|Writing|it/s"
python3 benchmarks/gpu_check.py --assets .gpu/assets --smollm2-random /tmp/smol 2>&1 | tail -1
for dt in float32 bfloat16; do
  timeout 90 python3 benchmarks/generate_speed.py --model /tmp/smol --device cuda --dtype $dt --quick --json "$OUT/generate-$dt.json"
done
timeout 80 python3 benchmarks/generate_speed.py --model /tmp/smol --device cuda --dtype bfloat16 --batch-sizes 8 64 --batches 1 \
  --new-tokens 32 --repeats 2 --variants unmerged --beam-inputs 0 --json "$OUT/generate-b64.json"
timeout 150 python3 benchmarks/train_throughput.py --model /tmp/smol --steps 20 --configs lorakit-lora hf-peft-lora lorakit-full \
  --json "$OUT/train.json"
