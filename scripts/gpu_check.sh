#!/usr/bin/env bash
# GPU check of the workspace (issue 20.5), from a clone on a machine with an NVIDIA GPU:
#
#     bash scripts/gpu_check.sh
#
# 1. installs the `cuda` extras (mamba-ssm, causal-conv1d; the root pyproject builds them without build
#    isolation, against the locked torch; a source build needs nvcc) - time-boxed: when it fails or runs
#    out of time the checks below still run and record that the PyTorch fallback was measured;
# 2. runs every `gpu`-marked test of the workspace (shared/tests and every package);
# 3. runs the GPU benchmark rows, each writing docs/benchmarks/<name>-gpu.json;
# 4. writes docs/benchmarks/gpu-check-gpu.json: the GPU, what was installed, each step's exit status
#    and wall time, and the pytest summary line.
#
# The whole script stays under GPU_CHECK_BUDGET seconds (default 570, i.e. under 10 minutes): every
# step runs under `timeout` with what is left of the budget, capped per step. Knobs (environment):
#   GPU_CHECK_BUDGET=570        total seconds
#   GPU_CHECK_INSTALL=1         0: skip step 1 (an environment already synced, or no package index)
#   GPU_CHECK_INSTALL_CAP=240   seconds for step 1 (mamba-ssm first tries its prebuilt wheel; a full
#                               source build of both kernels takes longer than this on most machines)
#   GPU_CHECK_TESTS_CAP=150     seconds for step 2
#   GPU_CHECK_BENCH_CAP=60      seconds for each benchmark of step 3
#   GPU_CHECK_LOG=DIR           folder for the full logs (default: a fresh temporary folder)
#   GPU_CHECK_PYTHON=python3    interpreter when there is no uv workspace (.venv): an offline GPU image that
#                               already holds torch and the dependencies; the sources go on PYTHONPATH
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

BUDGET=${GPU_CHECK_BUDGET:-570}
INSTALL=${GPU_CHECK_INSTALL:-1}
INSTALL_CAP=${GPU_CHECK_INSTALL_CAP:-240}
TESTS_CAP=${GPU_CHECK_TESTS_CAP:-150}
BENCH_CAP=${GPU_CHECK_BENCH_CAP:-60}
LOG=${GPU_CHECK_LOG:-$(mktemp -d)}
OUT=docs/benchmarks
START=$(date +%s)
mkdir -p "$LOG" "$OUT"
STEPS="$LOG/steps.tsv"
: >"$STEPS"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU visible (nvidia-smi); run this on a GPU machine" >&2
    exit 2
fi
# Python: the synced workspace through uv; without uv (an image that already holds torch and the
# dependencies, e.g. an offline GPU machine) the image's python3 with the workspace sources on PYTHONPATH.
if command -v uv >/dev/null 2>&1 && [ -d .venv ]; then
    PY=(uv run --no-sync python)
else
    PY=("${GPU_CHECK_PYTHON:-python3}")
    INSTALL=0
    SRC=$(printf '%s:' "$PWD"/shared/src "$PWD"/packages/*/src)
    export PYTHONPATH="${SRC%:}${PYTHONPATH:+:$PYTHONPATH}"
    echo "gpu_check: no uv workspace; using ${PY[0]} with the workspace sources on PYTHONPATH" >&2
fi

left() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME CAP COMMAND...: run COMMAND under `timeout min(CAP, budget left - 10 s)`, log to
# $LOG/NAME.log, record "NAME<TAB>exit status<TAB>seconds" (124: stopped by the time box).
step() {
    local name=$1 cap=$2
    shift 2
    local limit
    limit=$(left)
    limit=$((limit - 10))
    if [ "$limit" -gt "$cap" ]; then limit=$cap; fi
    if [ "$limit" -le 5 ]; then
        echo "gpu_check: [$name] skipped, the time budget is spent" >&2
        printf '%s\t%s\t%s\n' "$name" "skipped" 0 >>"$STEPS"
        return 0
    fi
    echo "gpu_check: [$name] up to ${limit}s: $*" >&2
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$LOG/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" $(($(date +%s) - t0)) >>"$STEPS"
    echo "gpu_check: [$name] exit $rc after $(($(date +%s) - t0))s (log: $LOG/$name.log)" >&2
    tail -n 3 "$LOG/$name.log" >&2
    return 0
}

# 1. the cuda extras (every workspace member that declares one), built against the locked torch
if [ "$INSTALL" = "1" ]; then
    export MAX_JOBS=${MAX_JOBS:-$(nproc)}
    step install "$INSTALL_CAP" uv sync --frozen --all-packages --extra cuda
else
    printf '%s\t%s\t%s\n' install "skipped" 0 >>"$STEPS"
fi

"${PY[@]}" - >"$LOG/probe.json" 2>"$LOG/probe.err" <<'EOF'
import json

import torch

from papers_shared.device import kernel_available

print(json.dumps({
    "torch": torch.__version__,
    "torch_cuda": torch.version.cuda,
    "cuda_available": torch.cuda.is_available(),
    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    "mamba_ssm_kernel": kernel_available("mamba_ssm"),
    "causal_conv1d_kernel": kernel_available("causal_conv1d"),
}))
EOF
cat "$LOG/probe.json" >&2

# 2. every gpu-marked test (the pytest configuration's testpaths: tests, shared/tests, packages)
step tests "$TESTS_CAP" "${PY[@]}" -m pytest -q -p no:cacheprovider -m gpu --continue-on-collection-errors

# 3. GPU benchmark rows, one JSON each
step ssm-scan "$BENCH_CAP" "${PY[@]}" -m papers_shared.ssm.ops.benchmark --device cuda --batch 8 \
    --out "$OUT/ssm-scan-gpu.json"
step smr-ssm-step-time "$BENCH_CAP" "${PY[@]}" packages/smr-ssm/benchmarks/bench_step_time.py --device cuda \
    --repeats 3 --out "$OUT/smr-ssm-step-time-gpu.json"
step esma-speed-storage "$BENCH_CAP" "${PY[@]}" packages/esma/benchmarks/bench_speed_storage.py --device cuda \
    --batch 64 --out "$OUT/esma-speed-storage-gpu.json"
step esma-train-step "$BENCH_CAP" "${PY[@]}" packages/esma/benchmarks/bench_train_step.py --device cuda \
    --batch 16 --out "$OUT/esma-train-step-gpu.json"
step t-switch-table-cell "$BENCH_CAP" "${PY[@]}" packages/t-switch/benchmarks/bench_table_cell.py --device cuda \
    --out "$OUT/t-switch-table-cell-gpu.json"
step sr-cis-step-time "$BENCH_CAP" "${PY[@]}" packages/sr-cis/benchmarks/bench_step_time.py --device cuda \
    --batch 128 --out "$OUT/sr-cis-step_time-gpu.json"
step ibta-step "$BENCH_CAP" "${PY[@]}" packages/ibta/benchmarks/bench_step.py --device cuda --batch 48 \
    --out "$OUT/ibta-step-gpu.json"

# 4. the summary
"${PY[@]}" - "$STEPS" "$LOG/probe.json" "$LOG/tests.log" "$OUT/gpu-check-gpu.json" "$(($(date +%s) - START))" <<'EOF'
import json
import sys
from pathlib import Path

from papers_shared.results import write_json

steps_file, probe_file, tests_log, out, total = sys.argv[1:6]
steps = []
for line in Path(steps_file).read_text().splitlines():
    name, rc, seconds = line.split("\t")
    steps.append({"step": name, "exit": rc, "seconds": int(seconds), "timed_out": rc in ("124", "137")})
try:
    probe = json.loads(Path(probe_file).read_text())
except (OSError, ValueError):
    probe = None
log = Path(tests_log)
lines = [x for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
write_json(
    {
        "check": "scripts/gpu_check.sh: cuda extras, gpu-marked tests, GPU benchmark rows",
        "environment": probe,
        "steps": steps,
        "pytest_summary": lines[-1] if lines else None,
        "total_seconds": int(total),
    },
    out,
)
print(f"gpu_check: wrote {out}")
EOF
echo "gpu_check: done in $(($(date +%s) - START))s" >&2
