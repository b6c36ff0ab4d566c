#!/usr/bin/env bash
# gpu-check.sh: the GPU path checked end to end on a machine with an NVIDIA
# GPU, in under 4 minutes when the downloads are cached (they are 2.4 GB
# the first time; see docs/inference.md). It runs `make setup-gpu`, then
# scripts/gpucheck: the ONNX backend node cases and the default models on
# CUDA and on CPU, outputs compared (backend cases rtol 1e-3 / atol 1e-4,
# whole models rtol 1e-2 / atol 1e-3), batch-1 latency and throughput at
# batch 1, 8 and 32 on both. The Markdown report goes to $OUT/gpu-check.md
# when OUT is set, else to stdout.
#
# Exit status: gpucheck's (0 all within tolerance, 1 a difference or a
# failure on CUDA, 2 CUDA unavailable, with the reason), or setup's.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
report=/dev/stdout
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  report="$OUT/gpu-check.md"
fi

t0=$(date +%s)
# The models and the backend cases come with `make setup`; the rest of it
# (browsers, node modules) this check does not need, so it only runs when
# they are missing.
if [ ! -f deps/models/ocr-cls.onnx ] || [ ! -d deps/onnx-testdata ]; then
  scripts/setup.sh
fi
scripts/setup-gpu.sh
t1=$(date +%s)

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/gpucheck" ./scripts/gpucheck
t2=$(date +%s)

status=0
timeout 200 "$bin/gpucheck" -out "$bin/report.md" || status=$?
{
  cat "$bin/report.md" 2>/dev/null || echo "# GPU check: gpucheck wrote no report (exit $status; 124 is the 200 s timeout)"
  echo
  echo "## Machine"
  echo
  echo "setup $((t1 - t0)) s, build $((t2 - t1)) s, check $(( $(date +%s) - t2 )) s; $(nproc) cores."
  if command -v nvidia-smi >/dev/null; then
    echo
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || true
    echo '```'
  else
    echo "No nvidia-smi on this machine."
  fi
} >"$report"
[ "$status" -eq 0 ] || echo "gpu-check: failed (exit $status): $(grep -m1 '^\*\*' "$bin/report.md" 2>/dev/null | tr -d '*')" >&2
exit "$status"
