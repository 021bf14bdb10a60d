# jaxbce: `make demo` and `make test` are all a new machine needs (Python 3.11+ with pip and venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo dist test test-fast test-thorough test-oldest-jax test-gpu check-gpu-hlo check-tpu-hlo docs lint format bench bench-accuracy bench-speed bench-fused bench-contrastive bench-train-step bench-compile bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

# The demo in a venv of its own with only what it needs (jax, flax, optax, scikit-learn, tqdm).
DEMO_STAMP := .venv-demo/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
$(DEMO_STAMP): pyproject.toml
	test -x .venv-demo/bin/python || $(PYTHON) -m venv .venv-demo
	.venv-demo/bin/python -m pip install --quiet --upgrade pip
	.venv-demo/bin/python -m pip install --quiet -e ".[demo]"
	rm -f .venv-demo/.installed-* && touch $@

demo: $(DEMO_STAMP)
	.venv-demo/bin/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The fused losses' tests run twice: in the default 8-device session and in a one-device one, the layout that every
# single-GPU user gets (tests/devices.py).
FUSED_TESTS := tests/test_linear.py tests/test_update.py tests/test_label_sets.py tests/test_contrastive.py tests/test_fused_family.py tests/test_fast.py
test: lint
	$(BIN)/python -m pytest -n auto --durations=15
	JAXBCE_TEST_DEVICES=1 $(BIN)/python -m pytest -n auto -p no:cacheprovider $(FUSED_TESTS)

# The edit-test loop: every public function once against an independent computation, on 8 devices and on one
# (tests/test_fast.py; under a minute here). make test checks everything.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -p no:cacheprovider tests/test_fast.py
	JAXBCE_TEST_DEVICES=1 $(BIN)/python -m pytest -n 2 -q -p no:cacheprovider tests/test_fast.py

# The oldest jax/jaxlib that pyproject.toml declares (tests/test_packaging.py holds the two in step), in a venv of
# its own with the test extras only: the core tests there (not the docs' scaling examples, written with jax.set_mesh,
# nor the two-process runs of examples/multihost.py, which needs Flax, nor the fused update's in-place memory, which
# that jaxlib's XLA does not give: it copies each updated array once per step). CI runs it after make test.
OLDEST_JAX := 0.7.0
OLDEST_TESTS := tests/test_losses.py tests/test_elementwise.py tests/test_pipeline.py tests/test_arguments.py \
	tests/test_errors.py tests/test_checks.py tests/test_multilabel.py tests/test_linear.py tests/test_contrastive.py \
	tests/test_transformations.py tests/test_sharding.py tests/test_export.py tests/test_update.py \
	tests/test_label_sets.py tests/test_fused_family.py tests/test_predictions.py tests/test_fast.py src
test-oldest-jax:
	test -x .venv-oldest/bin/python || $(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install --quiet --upgrade pip
	.venv-oldest/bin/python -m pip install --quiet -e ".[test]" "jax==$(OLDEST_JAX)" "jaxlib==$(OLDEST_JAX)"
	.venv-oldest/bin/python -m pytest -n auto -p no:cacheprovider --ignore=src/jaxbce/keras.py \
		--deselect tests/test_sharding.py::test_every_example_in_the_scaling_docs_runs \
		--deselect tests/test_sharding.py::test_two_processes_agree_with_one \
		--deselect tests/test_contrastive.py::test_two_processes_equal_one_device \
		--deselect tests/test_update.py::test_memory_holds_no_kernel_sized_array \
		--deselect tests/test_label_sets.py::test_no_kernel_sized_temporaries_at_any_label_count_in_either_layout \
		$(OLDEST_TESTS)

# The sdist and the wheel, in dist/.
dist: $(STAMP)
	$(BIN)/python -m build --no-isolation

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
	.venv-gpu/bin/python -m pip install --quiet -e . "jax[cuda13]" optax
	cd scripts && ../.venv-gpu/bin/python check_gpu_hlo.py

# The same check 1 (error terms) for a TPU v5e topology, with libtpu (compile only; writes tpu-hlo-v5e.json).
check-tpu-hlo:
	test -x .venv-tpu/bin/python || $(PYTHON) -m venv .venv-tpu
	.venv-tpu/bin/python -m pip install --quiet -e . "jax[tpu]" optax
	cd scripts && ../.venv-tpu/bin/python check_gpu_hlo.py tpu

docs: $(STAMP)
	cp bench/results/*.png docs/assets/
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: bench-accuracy bench-speed bench-fused bench-contrastive bench-train-step bench-compile
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

bench-compile: $(STAMP)
	$(BIN)/python bench/compile.py

# On a machine with a GPU: the double-word tests and the accuracy, speed, fused and contrastive benchmarks there, in
# under 8 minutes, writing bench/results/*-gpu.json (scripts/bench_gpu.sh; stops with exit status 2 without a GPU).
bench-gpu:
	bash scripts/bench_gpu.sh

clean:
	rm -rf $(VENV) .venv-demo .venv-oldest .pytest_cache .ruff_cache .hypothesis dist
