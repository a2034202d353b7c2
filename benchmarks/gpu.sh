#!/usr/bin/env bash
# GPU figures in one short script, for a session that has a GPU machine:
#   step-time ratios against the hand-written PyTorch VAE at B = 128 and 1024, the epoch time,
#   the K = 5000 evaluation throughput (benchmarks/step_time.py --device cuda), and, when two or
#   more GPUs are present, NCCL two-process agreement (the same run under torchrun and in one
#   process must end at the same test ELBO up to reduction order).
# Usage (repository root):  bash benchmarks/gpu.sh [OUT_DIR]      (default benchmarks/results)
# Needs torch with CUDA and the project's dependencies importable; pyro-ppl may come from wheels
# carried in .whl/ (installed into /tmp/site when pyro is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
mkdir -p "$out"
if ! python3 -c "import pyro" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "pyro-ppl is not installed and no wheels are in .whl/: install pyro-ppl first." >&2
    exit 2
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; \
print(torch.__version__, torch.cuda.get_device_name(0), torch.cuda.device_count(), 'GPU(s)')" \
  | tee "$out/gpu_device.txt"
python3 benchmarks/step_time.py --device cuda --batch-sizes 128 1024 --rounds 3 \
  --out "$out/step_time_gpu.json" | tee "$out/step_time_gpu.txt"
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
  common=(--dataset digits --epochs 3 --seed 0 --eval-samples 100 --device cuda --threads 1)
  python3 -m pyro_vae train "${common[@]}" --out "$out/one_process" > "$out/one_process.log"
  torchrun --standalone --nproc_per_node=2 -m pyro_vae train "${common[@]}" \
    --out "$out/two_process" > "$out/two_process.log"
  python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
one = json.load(open(f"{out}/one_process/summary.json"))["test_elbo"]
two = json.load(open(f"{out}/two_process/summary.json"))["test_elbo"]
print(f"NCCL agreement: one process {one:.4f}, two processes {two:.4f}, difference {abs(one - two):.2e}")
PY
else
  echo "one GPU: NCCL two-process agreement not measured"
fi
