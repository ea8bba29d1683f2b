#!/usr/bin/env bash
# GPU benchmark for a lent GPU machine (15 minutes of device time: keep it one short run).
# From the repository root:   bash benchmarks/gpu.sh            (add --compile to try torch.compile)
# Needs torch with CUDA, and dinoscope importable (pip install -e . or PYTHONPATH=src).
# Random weights, offline: nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 540 python benchmarks/gpu.py --budget-s 420 "$@"
