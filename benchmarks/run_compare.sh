#!/usr/bin/env bash
# The accuracy table of docs/results.md: every method on the embedded SmolLM2-135M,
# one shared calibration (wiki, 128 x 512), perplexity on PTB and Wikipedia.
# Long (tens of minutes on 2 CPU cores): run it in the background, e.g.
#   nohup benchmarks/run_compare.sh > /tmp/fptq-compare.log 2>&1 &
# Extra arguments are passed to `fptq compare` (e.g. a local model directory).
set -euo pipefail
cd "$(dirname "$0")/.."
FPTQ="${FPTQ:-fptq}"
OUT="${OUT:-results/compare}"
"$FPTQ" compare "$@" --out "$OUT" --samples 128 --seq-len 512 --ppl ptb,wiki --max-windows 16 \
    --int-max-windows "${INT_WINDOWS:-16}" --backend "${BACKEND:-torch}"
