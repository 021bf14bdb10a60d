"""Compile jaxbce for an NVIDIA H100 that is not attached and check what XLA's GPU compiler does to the
double-word arithmetic (``make check-gpu-hlo``; needs ``jax[cuda13]``, installed by the target in
``.venv-gpu``, and no GPU). ``python check_gpu_hlo.py tpu`` does check 1 for a TPU v5e (``jax[tpu]``; float32
only, and no IR or PTX to read).

For every double-word routine and every registered loss's value_and_grad (scripts/hlo_evidence.py), in
float32 and float64:

1. Error terms. The GPU-optimised HLO, compiled with fusion off, has as many array ``add`` and ``subtract``
   ops as the CPU-optimised HLO of the same graph: the GPU pipeline, which removes no-op ``reduce_precision``
   ops (its ``remove-no-op-reduce-precision-algebraic-simplifier``), has simplified no error term away. The
   ``multiply`` counts and the number of barriers each keeps are reported.
2. FMA. XLA's LLVM IR of every kernel carries no ``contract`` flag and no ``llvm.fma``, so the backend may not
   fuse a product into a sum; the only ``fma`` instructions in the PTX are those of the libdevice functions
   the kernel calls (their count, measured by compiling each function alone, bounds the kernel's).
3. Transcendental and approximate instructions: the libdevice functions each case calls, and the PTX's
   approximate instructions (``div.full.f32``, ``rcp.approx``, ``sqrt.approx``, ``ex2.approx``), reported.

4. Memory of the fused classifier update (GPU only): its temporaries stay below a tenth of a float32 kernel for
   float32, bfloat16 and float16 heads, rounded stochastically or not; bfloat16 is written in place on the GPU,
   where XLA:CPU copies it once.

Writes bench/results/gpu-hlo-h100.json (or tpu-hlo-v5e.json) and exits 1 if a check fails.
"""

import functools
import json
import os
import pathlib
import re
import sys
import tempfile

DUMP = pathlib.Path(tempfile.mkdtemp(prefix="jaxbce-gpu-hlo-"))
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={DUMP}"
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no driver here: compile only

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

jax.config.update("jax_enable_x64", True)

import hlo_evidence  # noqa: E402  (scripts/hlo_evidence.py, beside this script)

import jaxbce  # noqa: E402
from jaxbce._registry import LOSSES  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = pathlib.Path(__file__).with_name("h100_target.txtpb")
APPROXIMATE = re.compile(r"\b(div\.full\.f32|(?:div|rcp|sqrt|ex2|lg2)\.approx\S*)")
LIBDEVICE = re.compile(r"call \S+ @(__nv_\w+)\(")
# The libdevice functions jaxbce's graphs call that contain fma (float32 names end in f).
LIBDEVICE_FUNCTIONS = {
    f"__nv_{name}{suffix}": function
    for name, function in (("log1p", jnp.log1p), ("log", jnp.log), ("exp", jnp.exp), ("expm1", jnp.expm1))
    for suffix in ("f", "")
}


def _module_files(name: str, suffix: str) -> list[pathlib.Path]:
    return sorted(DUMP.glob(f"module_*.jit_{name}.*{suffix}"))


def _compile_named(name, function, arguments, spec, options=None) -> str:
    """Compile with a module name of our own, so that its dumped IR and PTX can be found."""
    function = jax.tree_util.Partial(function)  # a fresh callable each time
    named = lambda *a: function(*a)  # noqa: E731
    named.__name__ = name
    return hlo_evidence.compiled_text(named, arguments, spec, options)


def _ptx_and_ir(name: str) -> tuple[str, str]:
    ptx = "\n".join(p.read_text() for p in _module_files(name, ".ptx"))
    ir = "\n".join(p.read_text() for p in _module_files(name, "ir-no-opt.ll"))
    return ptx, ir


def _topology(platform: str):
    if platform == "cuda":
        return topologies.get_topology_desc(
            platform="cuda", topology_name="", topology="1x1x1", target_config=TARGET.read_text()
        )
    # libtpu wants to know its host; none is here (compile only).
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    return topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2")


def _update_temporaries(mesh) -> dict[str, float]:
    """4. The fused classifier update's temporaries (Adam, 256 x 128 x 2^20, params and state donated) as a
    fraction of a float32 kernel, for float32 and 16-bit heads, rounded stochastically or not: on the device
    bfloat16 is written in place (on XLA:CPU each bfloat16 array is copied once, tests/test_update.py)."""
    optimizer, (rows, dim, classes) = optax.adam(1e-3), (256, 128, 2**20)

    def on_device(tree):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P())), tree)

    fractions = {}
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
        params = on_device({"kernel": jnp.zeros((dim, classes), dtype), "bias": jnp.zeros((classes,), dtype)})
        state = on_device(jax.eval_shape(optimizer.init, params))
        features, positives = on_device((jnp.zeros((rows, dim), jnp.float32), jnp.zeros((rows, 8), jnp.int32)))
        for key in (None, jax.random.key(0)):
            step = functools.partial(jaxbce.linear_binary_cross_entropy_update, optimizer=optimizer, key=key)
            compiled = jax.jit(lambda f, p, s, i: step(f, p, s, positives=i), donate_argnums=(1, 2))  # noqa: B023
            analysis = compiled.lower(features, params, state, positives).compile().memory_analysis()
            case = f"{jnp.dtype(dtype).name}{', stochastic rounding' if key is not None else ''}"
            fractions[case] = analysis.temp_size_in_bytes / (dim * classes * 4)
            print(f"fused update, {case}: temporaries {fractions[case]:.3f} of a float32 kernel", flush=True)
    return fractions


def main(platform: str) -> int:
    topology = _topology(platform)
    mesh = topologies.make_mesh(topology, (len(topology.devices),), ("x",))
    results, failures = {"target": topology.devices[0].device_kind, "dtypes": {}}, []
    # float64 only on the GPU: TPUs have no float64 arithmetic.
    for dtype in (jnp.float32, jnp.float64) if platform == "cuda" else (jnp.float32,):
        device = jax.ShapeDtypeStruct((1024,), dtype, sharding=NamedSharding(mesh, P()))
        cpu = hlo_evidence.cpu_spec(dtype)
        tag = jnp.dtype(dtype).name
        # fma instructions in the PTX of each libdevice function alone.
        library_fma = {}
        for function_name, function in LIBDEVICE_FUNCTIONS.items():
            if platform == "cuda" and function_name.endswith("f") == (dtype == jnp.float32):
                module = f"lib_{function_name}_{tag}"
                _compile_named(module, function, 1, device)
                library_fma[function_name] = _ptx_and_ir(module)[0].count("fma.rn")
        rows = {}
        for index, (name, (function, arguments)) in enumerate(hlo_evidence.cases().items()):
            module = f"case{index}_{tag}"
            unfused = _compile_named(module + "_unfused", function, arguments, device, hlo_evidence.NO_FUSION)
            device_unfused = hlo_evidence.op_counts(unfused)
            cpu_text = hlo_evidence.compiled_text(function, arguments, cpu, hlo_evidence.NO_FUSION)
            cpu_unfused = hlo_evidence.op_counts(cpu_text)
            row = {
                "arithmetic, CPU": {op: cpu_unfused[op] for op in hlo_evidence.ARITHMETIC},
                "arithmetic, device": {op: device_unfused[op] for op in hlo_evidence.ARITHMETIC},
                "reduce-precision kept, CPU / device": [
                    cpu_unfused["reduce-precision"],
                    device_unfused["reduce-precision"],
                ],
            }
            # Error terms are differences and sums of rounded values; the GPU may drop a product by a constant 1
            # (a label of 1 known at compile time, once a barrier is gone), which is exact and not counted.
            if any(device_unfused[op] < cpu_unfused[op] for op in ("add", "subtract")):
                failures.append(f"{name} ({tag}): fewer adds or subtracts on {platform} than on CPU: {row}")
            if platform == "cuda":
                fused = hlo_evidence.op_counts(_compile_named(module, function, arguments, device))
                ptx, ir = _ptx_and_ir(module)
                calls = LIBDEVICE.findall(ir)
                row |= {
                    "GPU kernels (fusions)": fused["fusion"],
                    "contract flags or llvm.fma in XLA's IR": ir.count(" contract ") + ir.count("@llvm.fma"),
                    "fma in PTX": ptx.count("fma.rn"),
                    "fma in the libdevice functions called": sum(library_fma.get(call, 0) for call in calls),
                    "libdevice calls": sorted(set(calls)),
                    "approximate PTX instructions": sorted(set(APPROXIMATE.findall(ptx))),
                }
                if row["contract flags or llvm.fma in XLA's IR"]:
                    failures.append(f"{name} ({tag}): XLA's IR allows or has fused multiply-adds")
                if row["fma in PTX"] > row["fma in the libdevice functions called"]:
                    failures.append(f"{name} ({tag}): more fma in the PTX than in the libdevice functions it calls")
            rows[name] = row
            print(f"{tag} {name}: {json.dumps(row)}", flush=True)
        results["dtypes"][tag] = {"libdevice fma": library_fma, "cases": rows}
    # On CPU a large float32 sum of the losses with fusible terms takes the fused form with an exact fallback (a
    # conditional); on the device platform_dependent compiles only the exact sum.
    large = jax.ShapeDtypeStruct((1 << 16,), jnp.float32, sharding=NamedSharding(mesh, P()))
    fused_on_cpu = {
        "binary_cross_entropy_with_logits": (LOSSES["binary_cross_entropy_with_logits"], 2),
        # Bool labels: the BCE from probabilities has fusible terms only for hard labels.
        "binary_cross_entropy": (lambda p, y: LOSSES["binary_cross_entropy"](p, y > 0.5), 2),
        "binary_entropy": (LOSSES["binary_entropy"], 1),
    }
    for name, (loss, arguments) in fused_on_cpu.items():
        for mode, function in (("mean", loss), ("value_and_grad of the mean", jax.value_and_grad(loss))):
            text = _compile_named(f"large_{name}_{mode.split()[0]}", function, arguments, large)
            conditionals = text.count(" conditional(")
            results[f"{name}: exact sum of 65536 elements on the device, {mode}"] = {"conditionals": conditionals}
            if conditionals:
                failures.append(f"the {mode} of a large {name} sum compiles a conditional on {platform}")
    if platform == "cuda":
        results["fused update, temporaries / float32 kernel"] = temporaries = _update_temporaries(mesh)
        failures += [f"the fused update's {case} is not in place on {platform}"
                     for case, t in temporaries.items() if t > 0.1]  # fmt: skip
    results["failures"] = failures
    out = ROOT / "bench" / "results" / f"{'gpu-hlo-h100' if platform == 'cuda' else 'tpu-hlo-v5e'}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}; {len(failures)} failed check(s)")
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "cuda"))
