# jaxbce: `make demo` and `make test` are all a new machine needs (Python 3.11+ with pip and venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test test-thorough test-gpu check-gpu-hlo check-tpu-hlo docs lint format bench bench-accuracy bench-speed bench-fused bench-contrastive bench-train-step clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,demo,notebooks,bench,docs]"
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -n auto --durations=15

# The property tests with 2,000 new examples each (tests/conftest.py's "thorough" hypothesis profile).
test-thorough: $(STAMP)
	$(BIN)/python -m pytest -n auto --hypothesis-profile=thorough --hypothesis-show-statistics tests/test_properties.py

# The same suite on an NVIDIA GPU: CUDA jaxlib in its own venv (the CPU venv stays light for CI).
test-gpu:
	test -x .venv-gpu/bin/python || $(PYTHON) -m venv .venv-gpu
	.venv-gpu/bin/python -m pip install --quiet --upgrade pip
	.venv-gpu/bin/python -m pip install --quiet -e ".[test,demo,notebooks,bench]" "jax[cuda13]"
	JAX_PLATFORMS=cuda,cpu .venv-gpu/bin/python -m pytest -p no:cacheprovider -q | tee tests/gpu-run.log

# Compile for an H100 that is not attached and check the GPU-optimised HLO, LLVM IR and PTX
# (scripts/check_gpu_hlo.py; writes bench/results/gpu-hlo-h100.json). No GPU needed; CUDA jaxlib is ~4 GB.
check-gpu-hlo:
	test -x .venv-gpu/bin/python || $(PYTHON) -m venv .venv-gpu
	.venv-gpu/bin/python -m pip install --quiet -e . "jax[cuda13]"
	cd scripts && ../.venv-gpu/bin/python check_gpu_hlo.py

# The same check 1 (error terms) for a TPU v5e topology, with libtpu (compile only; writes tpu-hlo-v5e.json).
check-tpu-hlo:
	test -x .venv-tpu/bin/python || $(PYTHON) -m venv .venv-tpu
	.venv-tpu/bin/python -m pip install --quiet -e . "jax[tpu]"
	cd scripts && ../.venv-tpu/bin/python check_gpu_hlo.py tpu

docs: $(STAMP)
	cp bench/results/*.png docs/assets/
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: bench-accuracy bench-speed bench-fused bench-contrastive bench-train-step
	$(BIN)/python bench/report.py
	cp bench/results/*.png docs/assets/

bench-accuracy: $(STAMP)
	$(BIN)/python bench/accuracy.py

bench-speed: $(STAMP)
	$(BIN)/python bench/speed.py

bench-fused: $(STAMP)
	$(BIN)/python bench/fused.py

bench-contrastive: $(STAMP)
	$(BIN)/python bench/contrastive.py

bench-train-step: $(STAMP)
	$(BIN)/python bench/train_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
