#!/usr/bin/env bash
# One command on a GPU machine (under 8 minutes on one H100/H200): the device tests, the embedded model's wall clock and
# DiT-XL/2's measured cost, written to <out>/benchmarks-gpu.md and .json (default docs/) and printed; when $OUT is set
# (the device machine brings $OUT back) the two files are copied there too.
#   bash tools/device_check.sh [--device cuda] [--out DIR] [--quick]
#   bash tools/device_check.sh --device cpu --quick --out /tmp/x   (the whole path on a CPU in under a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then PYTHON=python3; fi
OUT_DIR=docs
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
status=0
PYTHONPATH=. OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PYTHON" -m free_core.evaluation.device_report --out "$OUT_DIR" ${args[@]+"${args[@]}"} || status=$?
if [ -n "${OUT:-}" ] && [ -f "$OUT_DIR/benchmarks-gpu.md" ]; then
  mkdir -p "$OUT"
  if [ "$(realpath "$OUT_DIR")" != "$(realpath "$OUT")" ]; then cp "$OUT_DIR/benchmarks-gpu.md" "$OUT_DIR/benchmarks-gpu.json" "$OUT/"; fi
fi
exit $status
