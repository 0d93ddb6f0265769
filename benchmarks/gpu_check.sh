#!/usr/bin/env bash
# The one GPU check of fptq (issue 12): run on a bare H200 machine with no network,
# from the source tree, in under 8 minutes:
#
#   bash benchmarks/gpu_check.sh [OUTDIR]          # OUTDIR default: $OUT, else benchmarks/results/gpu
#   bash benchmarks/gpu_check.sh --dry-run         # print the stages and their commands only
#
# Needs what that machine has: python3 (3.12) with CuPy 14 for CUDA 13, torch with CUDA,
# numba, pytest and hypothesis. Nothing is installed; fptq runs from $PWD via PYTHONPATH.
# Stages, each under its own timeout so that one hang does not lose the rest:
#   env          nvidia-smi, versions
#   compile      tests/test_cupy_compile.py with this machine's NVRTC: ptxas registers/spills/smem
#   conf-cupy    the conformance suite, --backend cupy, ci profile
#   conf-torch   the conformance suite, --backend torch-cuda, ci profile
#   conf-large   conformance/test_large.py for both with the `large` profile (every tile-edge case), if present
#   gpu-tests    tests/test_cupy_gpu.py: each matmul path pinned, against the spec, bit for bit
#   bench        benchmarks/bench_gpu.py: ceilings, cupy / torch-cuda / cuBLAS bf16 / int8 / floor
# Writes at most 8 files to OUTDIR: gpu_check.log (this summary), compile.log,
# conformance_cupy.log, conformance_torch_cuda.log, conformance_large.log, gpu_tests.log,
# bench_gpu.json, bench_gpu.md. Exit status: 0 when every stage that ran passed.
set -uo pipefail

cd "$(dirname "$0")/.."
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUTDIR="${1:-${OUT:-benchmarks/results/gpu}}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export FPTQ_CUDA_CACHE="${FPTQ_CUDA_CACHE:-/tmp/fptq-cuda-cache}"
export FPTQ_GPU_SEED="${FPTQ_GPU_SEED:-$(date +%s)}"
mkdir -p "$OUTDIR"
SUMMARY="$OUTDIR/gpu_check.log"
START=$(date +%s)
FAILED=0

# seconds per stage; they add up to at most 470 s
T_ENV=10 T_COMPILE=25 T_CONF_CUPY=110 T_CONF_TORCH=80 T_CONF_LARGE=50 T_GPU_TESTS=45 T_BENCH=95

log() { echo "$*" | tee -a "$SUMMARY"; }

# the conformance suite's own options: --fptq-backend/--fptq-profile where the plugin has them,
# else --backend/--hypothesis-profile (see conformance/README.md)
CONF_HELP=$("$PY" -m pytest conformance --help -p no:cacheprovider 2>/dev/null)
XDIST=""
if "$PY" -c "import xdist" 2>/dev/null; then XDIST="-n 4"; fi
conformance_cmd() {  # BACKEND PROFILE [TESTS]
    local xdist=$XDIST tests=${3:-conformance}
    if [[ "$CONF_HELP" == *"--fptq-backend"* ]]; then
        echo "$PY -m pytest $tests -q -p no:cacheprovider $xdist --fptq-backend $1 --fptq-profile $2"
    else
        echo "$PY -m pytest $tests -q -p no:cacheprovider $xdist --backend $1 --hypothesis-profile $2"
    fi
}
# the large profile adds the big fixed tile-edge cases of conformance/test_large.py to what the ci
# stage ran; run only that file with it where it exists
LARGE_TESTS=conformance
[[ -f conformance/test_large.py ]] && LARGE_TESTS=conformance/test_large.py

has_large_profile() { grep -qs 'register_profile("large"\|"large":' conformance/*.py fptq/conformance/*.py; }

stage() {  # NAME TIMEOUT LOGFILE COMMAND...
    local name=$1 limit=$2 logfile=$3; shift 3
    if (( DRY )); then echo "[$name] timeout ${limit}s -> $logfile: $*"; return 0; fi
    local t0=$(date +%s)
    log "== $name (timeout ${limit}s): $*"
    timeout --kill-after=10 "$limit" bash -c "$*" >>"$logfile" 2>&1
    local rc=$?
    local secs=$(( $(date +%s) - t0 ))
    local last
    last=$(grep -E "(passed|failed|skipped|error|no tests ran)" "$logfile" | tail -1)
    if (( rc == 124 || rc == 137 )); then
        log "   $name: TIMED OUT after ${secs}s; last result line: ${last:-none}"
    elif [[ "$last" == *skipped* && "$last" != *passed* ]]; then
        log "   $name: NOTHING RAN (all skipped) after ${secs}s: $last; the reasons are in $logfile"
        rc=1
    else
        log "   $name: exit $rc after ${secs}s; ${last:-see $logfile}"
    fi
    (( rc != 0 )) && FAILED=1
    return 0
}

if (( ! DRY )); then
    : >"$SUMMARY"
    log "fptq gpu_check $(date -u '+%Y-%m-%d %H:%M:%S UTC') at $(git rev-parse --short HEAD 2>/dev/null || echo '?'), seed $FPTQ_GPU_SEED"
fi
stage env "$T_ENV" "$SUMMARY" "nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv; $PY -c 'import sys, numpy, cupy, torch; print(sys.version.split()[0], \"numpy\", numpy.__version__, \"cupy\", cupy.__version__, \"torch\", torch.__version__, \"cuda\", torch.version.cuda)'"
stage compile "$T_COMPILE" "$OUTDIR/compile.log" "$PY -m pytest tests/test_cupy_compile.py -q -s -p no:cacheprovider"
stage conf-cupy "$T_CONF_CUPY" "$OUTDIR/conformance_cupy.log" "$(conformance_cmd cupy ci)"
stage conf-torch "$T_CONF_TORCH" "$OUTDIR/conformance_torch_cuda.log" "$(conformance_cmd torch-cuda ci)"
if has_large_profile; then
    stage conf-large-cupy "$T_CONF_LARGE" "$OUTDIR/conformance_large.log" "$(conformance_cmd cupy large $LARGE_TESTS)"
    stage conf-large-torch "$T_CONF_LARGE" "$OUTDIR/conformance_large.log" "$(conformance_cmd torch-cuda large $LARGE_TESTS)"
else
    (( DRY )) && echo "[conf-large] skipped: no 'large' Hypothesis profile in conformance/" \
        || log "== conf-large: skipped, the conformance suite has no 'large' profile yet"
fi
stage gpu-tests "$T_GPU_TESTS" "$OUTDIR/gpu_tests.log" "$PY -m pytest tests/test_cupy_gpu.py -q -p no:cacheprovider -rs"
stage bench "$T_BENCH" "$OUTDIR/bench.log" "$PY benchmarks/bench_gpu.py --out '$OUTDIR' --budget-s $(( T_BENCH - 25 ))"
if (( ! DRY )); then
    # bench.log holds only progress lines; keep the file count at 8
    cat "$OUTDIR/bench.log" >>"$SUMMARY" 2>/dev/null && rm -f "$OUTDIR/bench.log"
    log "gpu_check: done in $(( $(date +%s) - START ))s; $([[ $FAILED == 0 ]] && echo 'every stage passed' || echo 'SOME STAGE FAILED')"
fi
exit $FAILED
