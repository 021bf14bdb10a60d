"""Per-device memory and time of the SigLIP loss: dense, chunked on one device, and the ppermute ring.

    python bench/contrastive.py [--quick]     # or: make bench-contrastive

For each batch ``B`` (``D = 256``), ``jax.jit(jax.value_and_grad(loss, argnums=(images, texts, scale, bias)))``
of

* ``dense``: big_vision's form, ``log_sigmoid`` of the full logits, on a mesh of 8 host devices: each device
  all-gathers the texts (big_vision's multi-device version) and holds its ``b x B`` block of logits;
* ``ring``: ``jaxbce.sigmoid_contrastive_loss(..., axis_name=...)`` inside ``shard_map`` on the same mesh;
* ``chunked``: ``jaxbce.sigmoid_contrastive_loss`` on one device, for the whole batch.

Memory is the compiled executable's ``memory_analysis()`` per device (argument, output and temporary bytes),
so it is known even where a form does not fit; times are medians after a warm-up, for the forms whose
8-device total stays under ``RUN_LIMIT_BYTES``. The 8 devices are host CPU devices sharing this machine's
cores, so the ring's time is a CPU measurement of its overheads, not of a real interconnect. Writes
``bench/results/contrastive-<backend>.json`` and ``.png``.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse
import datetime
import json
import pathlib
import platform

import jax
import jax.numpy as jnp
import measure  # bench/measure.py, beside this script
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxbce

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCHES = (1024, 2048, 4096, 8192, 16384, 32768)
DIM = 256
# The 8 host devices of a CPU run; on an accelerator, the chips there are (one GPU: the ring is one step).
DEVICES = min(8, jax.device_count())
# Run (not only compile) a form only while its peak over all devices stays below this.
RUN_LIMIT_BYTES = 8 * 2**30
ARGNUMS = (0, 1, 2, 3)


def _mesh():
    return jax.make_mesh((DEVICES,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))


def _forms(mesh):
    rows = P("data")

    def dense_local(images, texts, scale, bias):
        all_texts = jax.lax.all_gather(texts, "data", tiled=True)
        logits = scale * images @ all_texts.T + bias
        first = jax.lax.axis_index("data") * images.shape[0]
        labels = jnp.where(
            jnp.arange(all_texts.shape[0])[None, :] == first + jnp.arange(images.shape[0])[:, None], 1, -1
        )
        total = jax.lax.psum(-jnp.sum(jax.nn.log_sigmoid(labels * logits)), "data")
        return total / all_texts.shape[0]

    def ring_local(images, texts, scale, bias):
        return jaxbce.sigmoid_contrastive_loss(images, texts, scale, bias, axis_name="data")

    def sharded(local):
        return jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, P(), P()), out_specs=P())

    return {
        "dense": (sharded(dense_local), True),
        "ring": (sharded(ring_local), True),
        "chunked": (jaxbce.sigmoid_contrastive_loss, False),
    }


def run(batches, repeats: int) -> list[dict]:
    mesh = _mesh()
    forms = _forms(mesh)
    rows = []
    for batch in batches:
        rng = np.random.default_rng(0)
        embeddings = rng.normal(size=(2, batch, DIM)).astype(np.float32) / np.sqrt(DIM)
        scalars = (np.float32(10.0), np.float32(-10.0))
        row = {"batch": batch, "dim": DIM, "devices": DEVICES, "forms": {}}
        for name, (loss, on_mesh) in forms.items():
            if on_mesh:
                images, texts = (jax.device_put(e, NamedSharding(mesh, P("data"))) for e in embeddings)
            else:
                images, texts = (jax.device_put(e, jax.devices()[0]) for e in embeddings)
            args = (images, texts, *scalars)
            compiled = jax.jit(jax.value_and_grad(loss, argnums=ARGNUMS)).lower(*args).compile()
            entry = measure.memory(compiled)
            if entry["total_bytes"] * (DEVICES if on_mesh else 1) < RUN_LIMIT_BYTES:
                entry["seconds"] = measure.median_seconds(compiled, args, repeats)
            row["forms"][name] = entry
            del compiled
            print(batch, name, entry, flush=True)
        local = batch // DEVICES
        # One device's local b x b block of float32 logits plus its rows of both embeddings.
        block_and_embeddings = local * local * 4 + 2 * local * DIM * 4
        forms_ = row["forms"]
        ratios = {
            "ring temp / (local b x b block + local embeddings)": forms_["ring"]["temp_bytes"] / block_and_embeddings,
            "dense temp / ring temp": forms_["dense"]["temp_bytes"] / forms_["ring"]["temp_bytes"],
            "dense temp / (b x B float32 logits)": forms_["dense"]["temp_bytes"] / (local * batch * 4),
        }
        if "seconds" in forms_["ring"] and "seconds" in forms_["dense"]:
            ratios["ring time / dense time"] = forms_["ring"]["seconds"] / forms_["dense"]["seconds"]
        if "seconds" in forms_["chunked"] and "seconds" in forms_["ring"]:
            ratios["chunked time / ring time"] = forms_["chunked"]["seconds"] / forms_["ring"]["seconds"]
        row["ratios"] = ratios
        print(json.dumps(ratios, indent=1), flush=True)
        rows.append(row)
    return rows


def plot(rows, path):
    with measure.figure(path, 2, (11, 4), dpi=120) as (memory_axis, time_axis):
        batches = [r["batch"] for r in rows]
        for name in ("dense", "ring", "chunked"):
            memory_axis.plot(batches, [r["forms"][name]["temp_bytes"] / 2**20 for r in rows], "o-", label=name)
            time_axis.plot(batches, [r["forms"][name].get("seconds", np.nan) for r in rows], "o-", label=name)
        memory_axis.set_title("temporary MiB per device, value_and_grad")
        time_axis.set_title("seconds per step (8 host devices on one CPU)")
        for axis in (memory_axis, time_axis):
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel("batch B (D = 256)")
            axis.legend(fontsize=8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the two smallest batches, few repeats (smoke test)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    backend = jax.default_backend()
    out = ROOT / "bench" / "results" / f"contrastive-{backend}{'-quick' if args.quick else ''}.json"
    rows = run(BATCHES[:2] if args.quick else BATCHES, repeats=1 if args.quick else args.repeats)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {backend}, {os.cpu_count()} cores, {jax.device_count()} devices",
        "versions": {"jax": jax.__version__},
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, out.with_suffix(".png"))
    print("wrote", out)


if __name__ == "__main__":
    main()
