#!/usr/bin/env bash
# make bench-gpu: the accelerator checks in one run, prepared so that the first GPU this project is lent is used at
# once. On a machine whose JAX sees a GPU (the .venv-gpu of `make test-gpu` if it exists, else python3, as on a
# lent machine whose image carries CUDA JAX, optax, mpmath and pytest, and where nothing can be installed):
#
#   1. tests/test_double_word.py: the double-word arithmetic relies on XLA keeping reduce_precision and not
#      contracting to FMA, which the GPU compiler may not honour;
#   2. bench/accuracy.py, bench/speed.py --quick, bench/fused.py, bench/contrastive.py --quick, each writing
#      bench/results/*-gpu.json.
#
# Each step has its own time limit (together under 8 minutes); a step that fails or runs out is reported and
# the others still run; the exit status is 1 if any failed. Without a GPU it stops at once with exit status 2.
set -uo pipefail
cd "$(dirname "$0")/.."
python=python3
if [ -x .venv-gpu/bin/python ]; then python=.venv-gpu/bin/python; fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if ! "$python" - <<'EOF'; then
import sys
try:
    import jax
    backend = jax.default_backend()
except Exception as error:  # no jax at all, or a jaxlib that cannot start
    sys.exit(f"make bench-gpu needs JAX with a GPU: {error!r}")
if backend != "gpu":
    sys.exit(f"make bench-gpu needs a GPU; JAX sees {backend}: {jax.devices()}")
print(f"jax {jax.__version__} on {jax.devices()}")
EOF
    exit 2
fi

failed=()
step() {  # step SECONDS NAME COMMAND...
    local limit=$1 name=$2
    shift 2
    echo "== $name (at most ${limit} s)"
    local start=$SECONDS
    if timeout "$limit" "$@"; then
        echo "== $name: done in $((SECONDS - start)) s"
    else
        echo "== $name: FAILED (exit $?) after $((SECONDS - start)) s"
        failed+=("$name")
    fi
}

step 60 "double-word tests" "$python" -m pytest -q -p no:cacheprovider tests/test_double_word.py
step 150 "accuracy" "$python" bench/accuracy.py
step 90 "speed" "$python" bench/speed.py --quick
step 90 "fused" "$python" bench/fused.py --repeats 3
step 60 "contrastive" "$python" bench/contrastive.py --quick
ls -l bench/results/*-gpu*.json 2>/dev/null
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
