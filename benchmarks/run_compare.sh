#!/usr/bin/env bash
# The accuracy table of docs/results.md: the embedded SmolLM2-135M (or the model given), every
# method of the main table, calibration wiki 128 x 512, perplexity on 16 windows of 512 tokens of
# PTB and Wikipedia; the peers' rows (benchmarks/peers/, their own venv) are added when their JSON
# exists (PEERS=docs/results/peers-smollm2.json by default; PEERS= to leave them out).
# Long (about 1.5 hours on 2 CPU cores: most rows run GPTQ): run it in the background, e.g.
#   nohup benchmarks/run_compare.sh > /tmp/fptq-compare.log 2>&1 &
# Extra arguments are passed to `fptq compare` (e.g. a local model directory); METHODS=... picks rows.
set -euo pipefail
cd "$(dirname "$0")/.."
FPTQ="${FPTQ:-fptq}"
OUT="${OUT:-results/compare}"
METHODS="${METHODS:-fp32,rtn_w4a16,gptq_w4a16,smoothquant_w8a8,w4a8_dynamic,w4a8_static,fptq_paper,fptq_w4a8_int,fptq_w4a8_fake,fptq_a8_only,fptq_w4_only,fptq_w4a8_dynamic,fptq_w4a8_error_static,fptq_w4a8_bands,fptq_w4a8_noclip,fptq_w4a8_sequential,fptq_w4a8_rtn,fptq_w4a8_mse,fptq_w4a8_int4_sym,fptq_w4a8_rotate_none,fptq_w4a8_rotate_residual,fptq_w4a8_g64}"
PEERS="${PEERS-docs/results/peers-smollm2.json}"
peers=()
if [[ -n "$PEERS" && -f "$PEERS" ]]; then peers=(--peers "$PEERS"); fi
"$FPTQ" compare "$@" --out "$OUT" --samples 128 --seq-len 512 --ppl ptb,wiki --max-windows 16 \
    --int-max-windows "${INT_WINDOWS:-16}" --backend "${BACKEND:-torch}" --methods "$METHODS" "${peers[@]}"
