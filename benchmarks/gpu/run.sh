#!/usr/bin/env bash
# The GPU run of the dense core (torch only: no TorchRec, no fbgemm), JSON into OUT_DIR.
#
#   bash benchmarks/gpu/run.sh OUT_DIR                         # one CUDA GPU, < 8 minutes on an H200
#   bash benchmarks/gpu/run.sh OUT_DIR --peak-tflops 989       # MFU against this dense bf16 peak
#   bash benchmarks/gpu/run.sh OUT_DIR --device cpu --tiny     # the same code end to end, tiny sizes
#
# Writes OUT_DIR/{summary,parity,train_mfu,ffn_kernels,moe}.json; exits 1 if a parity
# check or a section failed (the JSON says which). Options: python benchmarks/gpu/run.py --help.
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $0 OUT_DIR [--device cuda|cpu] [--tiny] [--peak-tflops N] [--budget-s N]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"  # any Python with torch (set PYTHON=.venv/bin/python in a checkout)
# bf16 on CPUs that advertise AMX without running it (docs/benchmarks.md, machine notes)
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX512_CORE_BF16}"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" "$ROOT/benchmarks/gpu/run.py" "$@"
