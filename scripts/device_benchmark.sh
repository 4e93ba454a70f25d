#!/usr/bin/env bash
# Run scripts/benchmark.py on a machine with an NVIDIA GPU, in under 5 minutes, and add evaluation
# throughput at large batch sizes.
#
# Expects, in the Python on PATH: gru_jax's dependencies (pip install -e ".[test]" from this
# repository), a CUDA build of jaxlib (e.g. pip install "jax[cuda12]") and a CUDA build of torch.
# Neither needs network access at run time. The data defaults to the 200-review archives shipped in
# src/gru_jax/data; set DATA to a directory that also has the 800-review ones and SIZES=200,800 to
# measure those too (that takes longer than 5 minutes).
#
#   scripts/device_benchmark.sh [OUTPUT_DIR]
#
# Writes OUTPUT_DIR/benchmark-gpu.json, OUTPUT_DIR/benchmark-gpu.txt and OUTPUT_DIR/nvidia-smi.txt
# (OUTPUT_DIR defaults to benchmark-results).
#
# NOTE: not yet run on a GPU. The settings below are sized to finish in 5 minutes by estimate only,
# and the run stops at 280 s whatever it has measured by then.
set -euo pipefail

cd "$(dirname "$0")/.."
output_dir=${1:-benchmark-results}
data=${DATA:-src/gru_jax/data}
sizes=${SIZES:-200}
mkdir -p "$output_dir"

nvidia-smi > "$output_dir/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed; continuing" >&2

python - <<'EOF'
import sys

import jax
import torch

if jax.default_backend() != "gpu":
    sys.exit(f"error: JAX runs on {jax.default_backend()}, not a GPU. Install a CUDA build, "
             "e.g. pip install 'jax[cuda12]'.")
if not torch.cuda.is_available():
    sys.exit("error: torch sees no CUDA device. Install a CUDA build of torch.")
print(f"JAX {jax.__version__} on {jax.devices()[0]}, torch {torch.__version__} on {torch.cuda.get_device_name(0)}",
      file=sys.stderr)
EOF

# Two timed passes, a small word-by-word subset (each word is a kernel launch there), and an
# evaluation sweep up to 16384 reviews per batch. 280 s leaves room below the 5-minute budget.
timeout 280 python scripts/benchmark.py --device gpu --data "$data" --sizes "$sizes" --epochs 2 \
    --dlstudio-reviews 8 --eval-batch-sizes 256,2048,16384 \
    --json "$output_dir/benchmark-gpu.json" | tee "$output_dir/benchmark-gpu.txt"
