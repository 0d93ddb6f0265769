#!/usr/bin/env bash
# fptq quantize --device cuda against the CPU path, on a GPU machine (issue 22; docs/scale.md "On a GPU").
#
#   bash benchmarks/device_quantize.sh OUTDIR TOKENIZER_DIR CALIB_TXT
#
# TOKENIZER_DIR holds tokenizer.json + tokenizer_config.json (a machine without the embedded SmolLM2:
# copy them from `python -c "from fptq.models.loading import default_model_dir; print(default_model_dir())"`);
# CALIB_TXT is the calibration text as a file (e.g. the first 3 MB of `fptq.data.text.load_text("wiki",
# "calib")`). Stages, each under its own timeout, all ending before the 560 s mark:
#   env      GPU, versions, cores
#   tests    tests/test_device.py (the CUDA comparison runs here)
#   small    a SmolLM2-shaped synthetic model (8 layers, hidden 576, MLP 1536), default settings,
#            quantized on the CPU and with --device cuda; benchmarks/compare_checkpoints.py on the two
#   q15      a Qwen2.5-1.5B-shaped synthetic model (28 layers, hidden 1536, MLP 8960, 12/2 heads,
#            vocab 151936; LLaMA layers) quantized with --device cuda by benchmarks/bench_scale.py
#            (peak RSS, seconds per layer, JSON)
#   q15cpu   the same model on the CPU path for what is left of the time (its per-layer lines)
# Synthetic weights: for time and memory only, never accuracy.
set -u
OUT=${1:?OUTDIR}; TOK=${2:?TOKENIZER_DIR}; CALIB=${3:?CALIB_TXT}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
M=${FPTQ_DEVICE_TMP:-/tmp/fptq-device}
mkdir -p "$OUT" "$M"
T0=$(date +%s)
log() { echo "== $(date -u +%T) +$(( $(date +%s) - T0 ))s $*" | tee -a "$OUT/device.log"; }
stage() {  # stage NAME TIMEOUT CMD...: capped so that nothing runs past the 560 s mark
    local name=$1 t=$2; shift 2
    local left=$(( 560 - ($(date +%s) - T0) ))
    (( t > left )) && t=$left
    if (( t < 10 )); then log "$name: SKIPPED (no time left)"; return 1; fi
    log "$name (timeout ${t}s): $*"
    timeout "$t" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    log "$name: exit $rc"; tail -n 6 "$OUT/$name.log" | sed 's/^/   | /' | tee -a "$OUT/device.log"
    return $rc
}
SMALL=(--layers 8 --hidden 576 --intermediate 1536 --heads 9 --kv-heads 3 --head-dim 64 --vocab 49152)
Q15=(--layers 28 --hidden 1536 --intermediate 8960 --heads 12 --kv-heads 2 --head-dim 128 --vocab 151936)
Q=(-m fptq.cli quantize --calib "$CALIB" --quiet)

stage env 20 bash -c "nvidia-smi -L; nproc; $PY -c 'import torch, transformers, numpy, scipy; print(torch.__version__, torch.version.cuda, transformers.__version__, numpy.__version__, scipy.__version__)'"
stage tests 90 $PY -m pytest tests/test_device.py -q -p no:cacheprovider -rs
stage small-make 40 $PY benchmarks/make_synthetic_model.py --out "$M/small" "${SMALL[@]}" --tokenizer-dir "$TOK"
stage small-cuda 70 $PY "${Q[@]}" "$M/small" --out "$M/small-cuda" --device cuda
stage small-cpu 90 $PY "${Q[@]}" "$M/small" --out "$M/small-cpu"
stage small-compare 30 $PY benchmarks/compare_checkpoints.py "$M/small-cpu" "$M/small-cuda" --json "$OUT/compare_small.json"
stage q15-make 70 $PY benchmarks/make_synthetic_model.py --out "$M/q15" "${Q15[@]}" --tokenizer-dir "$TOK"
stage q15 260 $PY benchmarks/bench_scale.py --model "$M/q15" --name qwen2.5-1.5b-shape-cuda --no-time \
    --json "$OUT/bench_scale_q15_cuda.json" -- --device cuda --calib "$CALIB"
stage q15cpu 120 $PY benchmarks/bench_scale.py --model "$M/q15" --name qwen2.5-1.5b-shape-cpu --no-time \
    --json "$OUT/bench_scale_q15_cpu.json" -- --calib "$CALIB"
log "done"
