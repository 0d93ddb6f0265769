#!/usr/bin/env bash
# The one GPU check of fptq (issues 12 and 26): one command from the repository root on a bare
# H100/H200 machine with no network, in under 6 minutes, so that a failed first run can be fixed
# and run again inside one 15-minute device slot:
#
#   bash benchmarks/gpu_check.sh [OUTDIR]             # OUTDIR default: $OUT, else benchmarks/results/gpu
#   bash benchmarks/gpu_check.sh --dry-run [OUTDIR]   # print the stages and their commands only
#
# Needs what that machine has: python3 (3.12) with CuPy 14 for CUDA 13, torch with CUDA, numba,
# pytest and hypothesis; compute-sanitizer and cuobjdump where the image has them. Nothing is
# installed; fptq runs from $PWD via PYTHONPATH. Run without a GPU, every stage that needs one
# says SKIPPED with the reason (its exit status 2) instead of failing.
#
# Stages, in this order, each under its own timeout (they add up to 350 s; a stage never runs past
# the 350 s mark), each with its own log:
#   env        nvidia-smi, versions, which tools are there
#   smoke      benchmarks/gpu_smoke.py: every module compiled (in parallel) and whole, every kernel
#              launched once on tiny shapes against the spec, launch argument types checked (~20 s)
#   memcheck   compute-sanitizer memcheck on gpu_smoke.py --gemm-only --no-pool (ragged decode,
#              prefill with both tiles, generic; CuPy's pool off so out-of-bounds accesses show)
#   racecheck  compute-sanitizer racecheck on the same (shared-memory hazards: tr, wst, the ring)
#   gpu-tests  tests/test_cupy_gpu.py: each matmul path pinned, against the spec, bit for bit
#   bench      benchmarks/bench_gpu.py: ceilings, cupy (saved first) / forced prefill / torch-cuda /
#              cuBLAS bf16 / int8 / floor, every measurement guarded
#   conf-cupy  the conformance suite, --backend cupy, ci profile
#   conf-torch the conformance suite, --backend torch-cuda, ci profile
#   compile    tests/test_cupy_compile.py with this machine's NVRTC: whole cubins, ptxas, SASS checks
# Files in OUTDIR (the device tool returns at most 8): gpu_check.log (the summary, with the end of
# every failed stage's log), stage_logs.tgz (every stage's whole log, rewritten after each stage),
# smoke.json, bench_gpu.json, bench_gpu.md. Exit status: 0 when no stage failed or timed out.
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
SUMMARY="$OUTDIR/gpu_check.log"
LOGDIR="$(mktemp -d /tmp/fptq-gpu-check.XXXXXX)/logs"
START=$(date +%s)
BUDGET=350
FAILED=0

# seconds per stage: 10 + 40 + 35 + 35 + 40 + 65 + 50 + 35 + 40 = 350
T_ENV=10 T_SMOKE=40 T_MEMCHECK=35 T_RACECHECK=35 T_GPU_TESTS=40 T_BENCH=65 T_CONF_CUPY=50 T_CONF_TORCH=35
T_COMPILE=40

log() { echo "$*" | tee -a "$SUMMARY"; }

find_sanitizer() {
    command -v compute-sanitizer 2>/dev/null && return 0
    local p
    for p in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
             /opt/nvidia/nsight-compute/*/compute-sanitizer/compute-sanitizer /opt/nvidia/*/compute-sanitizer; do
        [[ -x "$p" ]] && { echo "$p"; return 0; }
    done
    return 1
}
SANITIZER=$(find_sanitizer || true)

# the conformance suite's own options: --fptq-backend/--fptq-profile where the plugin has them,
# else --backend/--hypothesis-profile (see conformance/README.md)
CONF_HELP=""
(( DRY )) || CONF_HELP=$("$PY" -m pytest conformance --help -p no:cacheprovider 2>/dev/null)
XDIST=""
if "$PY" -c "import xdist" 2>/dev/null; then XDIST="-n 4"; fi
conformance_cmd() {  # BACKEND PROFILE
    if [[ -z "$CONF_HELP" || "$CONF_HELP" == *"--fptq-backend"* ]]; then
        echo "$PY -m pytest conformance -q -p no:cacheprovider $XDIST --fptq-backend $1 --fptq-profile $2 -rs"
    else
        echo "$PY -m pytest conformance -q -p no:cacheprovider $XDIST --backend $1 --hypothesis-profile $2 -rs"
    fi
}

save_logs() { tar czf "$OUTDIR/stage_logs.tgz" -C "$(dirname "$LOGDIR")" logs 2>/dev/null || true; }

stage() {  # NAME TIMEOUT COMMAND...   (the log is $LOGDIR/NAME.log)
    local name=$1 limit=$2; shift 2
    local logfile="$LOGDIR/$name.log"
    if (( DRY )); then echo "[$name] timeout ${limit}s -> logs/$name.log: $*"; return 0; fi
    local left=$(( START + BUDGET - $(date +%s) ))
    if (( left < 5 )); then log "== $name: SKIPPED, the ${BUDGET} s budget is spent"; return 0; fi
    (( limit > left )) && limit=$left
    local t0=$(date +%s)
    log "== $name (timeout ${limit}s): $*"
    timeout --kill-after=5 "$limit" bash -c "$*" >"$logfile" 2>&1
    local rc=$? secs=$(( $(date +%s) - t0 )) last verdict
    last=$(grep -E "(passed|failed|skipped|error|no tests ran|PASSED|FAILED|ERROR SUMMARY|RACECHECK SUMMARY)" \
           "$logfile" | tail -1)
    if (( rc == 124 || rc == 137 )); then
        verdict="TIMED OUT after ${secs}s"; FAILED=1
    elif (( rc == 2 )) && grep -q "needs CuPy with a GPU\|needs an NVIDIA GPU\|needs torch" "$logfile"; then
        verdict="SKIPPED (no GPU here): $(grep -m1 "needs " "$logfile")"
    elif [[ "$last" == *skipped* && "$last" != *passed* ]]; then
        verdict="NOTHING RAN (all skipped): $last"; FAILED=1
    elif (( rc != 0 )); then
        verdict="FAILED (exit $rc) after ${secs}s: ${last:-see logs/$name.log}"; FAILED=1
    else
        verdict="ok after ${secs}s: ${last:-exit 0}"
    fi
    log "   $name: $verdict"
    if [[ "$verdict" != ok* && "$verdict" != SKIPPED* ]]; then
        { echo "   --- last 25 lines of logs/$name.log ---"; tail -25 "$logfile" | sed 's/^/   | /'; } | tee -a "$SUMMARY"
    fi
    save_logs
    return 0
}

mkdir -p "$LOGDIR"
if (( ! DRY )); then
    mkdir -p "$OUTDIR"
    : >"$SUMMARY"
    log "fptq gpu_check $(date -u '+%Y-%m-%d %H:%M:%S UTC') at $(git rev-parse --short HEAD 2>/dev/null || echo '?'),"\
        "seed $FPTQ_GPU_SEED, python $PY, compute-sanitizer ${SANITIZER:-not found}"
fi
ENV_PY="import sys, numpy; print(sys.version.split()[0], 'numpy', numpy.__version__)
for m in ('cupy', 'torch', 'numba', 'hypothesis', 'pytest'):
    try:
        mod = __import__(m); print(m, mod.__version__, getattr(getattr(mod, 'version', None), 'cuda', '') or '')
    except Exception as e:
        print(m, 'MISSING', type(e).__name__, e)"
stage env "$T_ENV" "nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu \
--format=csv; command -v cuobjdump nvdisasm nvcc || true; $PY -c \"$ENV_PY\""
stage smoke "$T_SMOKE" "$PY benchmarks/gpu_smoke.py --out '$OUTDIR'"
if [[ -n "$SANITIZER" ]] || (( DRY )); then
    for tool in memcheck racecheck; do
        limit=$T_MEMCHECK; [[ $tool == racecheck ]] && limit=$T_RACECHECK
        stage "$tool" "$limit" "'${SANITIZER:-compute-sanitizer}' --tool $tool --error-exitcode 3 $PY \
benchmarks/gpu_smoke.py --gemm-only --no-pool --out '$LOGDIR'"
    done
else
    log "== memcheck, racecheck: SKIPPED, compute-sanitizer not found on PATH or under /usr/local/cuda, /opt/nvidia"
fi
stage gpu-tests "$T_GPU_TESTS" "$PY -m pytest tests/test_cupy_gpu.py -q -p no:cacheprovider -rs"
stage bench "$T_BENCH" "$PY benchmarks/bench_gpu.py --out '$OUTDIR' --budget-s $(( T_BENCH - 20 ))"
stage conf-cupy "$T_CONF_CUPY" "$(conformance_cmd cupy ci)"
stage conf-torch "$T_CONF_TORCH" "$(conformance_cmd torch-cuda ci)"
stage compile "$T_COMPILE" "$PY -m pytest tests/test_cupy_compile.py -q -s -p no:cacheprovider -rs"
if (( ! DRY )); then
    save_logs
    log "gpu_check: done in $(( $(date +%s) - START ))s; $([[ $FAILED == 0 ]] && echo 'no stage failed' \
        || echo 'SOME STAGE FAILED'); logs of every stage in $OUTDIR/stage_logs.tgz"
    [[ -f "$OUTDIR/bench_gpu.md" ]] && cat "$OUTDIR/bench_gpu.md"
fi
exit $FAILED
