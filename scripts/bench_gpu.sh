#!/usr/bin/env bash
# The GPU benchmark and GPU leak tests in one call (issue 13). On a machine with a GPU and torch,
# transformers, peft, accelerate installed; bitsandbytes from a wheel if one lies in $BNB_WHEEL_DIR.
#   scripts/bench_gpu.sh                 # every shape and path; JSON to $OUT/gpu.json (or bench-out/)
#   scripts/bench_gpu.sh --smoke         # CPU: the tiny shape only, < 3 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ -n "${BNB_WHEEL_DIR:-}" ] && ! "$PY" -c "import bitsandbytes" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps "$BNB_WHEEL_DIR"/bitsandbytes-*.whl
fi
nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv 2>/dev/null || echo "no nvidia-smi: CPU run"
"$PY" scripts/bench_gpu.py "$@"
# The packing leak test for each attention path a GPU preset can pick (skipped without a GPU).
"$PY" -m pytest -q -p no:cacheprovider tests/test_attention_gpu.py || echo "GPU leak tests FAILED"
