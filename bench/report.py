"""Render docs/benchmarks.md, and the tables of README.md, from the committed results in bench/results (run by
`make bench`). The README's tables sit between ``<!-- generated: NAME -->`` and ``<!-- /generated -->``;
tests/test_docs.py checks that they are what this script writes.

python bench/report.py
"""

import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _cell(value) -> str:
    if value is None:
        return "–"  # not measured in this setting (no hard labels once smoothed)
    return "inf" if value == float("inf") else f"{value:.3g}"


def _table_head(*columns: str) -> list[str]:
    """A Markdown table's header row and its separator."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _provenance(data) -> str:
    return f"{data['date']}, {data['machine']}, {', '.join(f'{k} {v}' for k, v in data['versions'].items())}. "


def _results_section(title: str, data, description: str, *columns: str) -> list[str]:
    """A section's title, where and with what its results were measured, what they are, and its table's head."""
    return [f"## {title}", "", _provenance(data) + description, "", *_table_head(*columns)]


def accuracy_section(data) -> list[str]:
    lines = [
        "## Accuracy",
        "",
        f"float32, worst error in eps against a 50-digit mpmath reference ({data['date']}, {data['machine']}, "
        f"{', '.join(f'{k} {v}' for k, v in data['versions'].items())}). Written by `bench/accuracy.py`.",
        "",
    ]
    for setting, table in data["binary_cross_entropy_with_logits"]["settings"].items():
        lines += [
            f"### binary_cross_entropy_with_logits, {setting}",
            "",
            *_table_head("implementation", "loss", "grad, hard labels", "grad, soft labels", "non-finite"),
        ]
        for name, row in table.items():
            cells = " | ".join(_cell(row.get(k)) for k in ("loss", "grad_hard", "grad_soft"))
            lines.append(f"| {name} | {cells} | {row['nonfinite']} |")
        lines.append("")
    focal = data["sigmoid_focal_loss"]["settings"]
    sections = (
        *((f"sigmoid_focal_loss, {setting}", table) for setting, table in focal.items()),
        ("binary_cross_entropy (probabilities)", data["binary_cross_entropy"]),
        ("binary_entropy", data["binary_entropy"]),
        ("binary_kl_divergence", data["binary_kl_divergence"]),
        *(
            (f"asymmetric_loss, {setting}, hard labels", t)
            for setting, t in data["asymmetric_loss"]["settings"].items()
        ),
        *((f"Poly-1: {setting}", table) for setting, table in data["poly1"]["settings"].items()),
    )
    for title, table in sections:
        lines += [f"### {title}", "", *_table_head("implementation", "loss", "gradient", "non-finite")]
        lines += [f"| {n} | {_cell(r['loss'])} | {_cell(r['grad'])} | {r['nonfinite']} |" for n, r in table.items()]
        lines.append("")
    return lines


def speed_section(data) -> list[str]:
    lines = [
        "## Speed",
        "",
        f"{data['date']}, {data['device']} ({data['machine']}), "
        f"{', '.join(f'{k} {v}' for k, v in data['versions'].items())}. "
        "Medians of repeated runs after warm-up, in one process on the same arrays (`bench/speed.py`). "
        "Ratios at the largest N: `jaxbce / floor` is jaxbce's time over the floor kernel's (1 is the memory "
        "floor); `peer / jaxbce` is how many times faster jaxbce is.",
        "",
        *_table_head("case", "ratio", "value"),
    ]
    for case, entry in data["ratios_at_largest_n"].items():
        for key, value in entry.items():
            if key != "n":
                lines.append(f"| {case}, N = {entry['n']:,} | {key} | {value:.2f} |")
    lines += ["", "ns per element at the largest N:", "", *_table_head("case", "kernel", "ns/element")]
    for case, rows in data["ns_per_element"].items():
        n = max(rows, key=int)
        lines += [f"| {case}, N = {int(n):,} | {k} | {v:.2f} |" for k, v in rows[n].items()]
    evidence = data["compiled"]
    forward, both = evidence["forward"], evidence["value_and_grad"]
    lines += [
        "",
        f"![ns per element against N](assets/speed-{data['backend']}.png)",
        "",
        "### How many passes, from the compiled program",
        "",
        f"The optimized HLO at N = {evidence['n']:,} ({evidence['labels']} labels): the forward has the fusions "
        f"`{', '.join(forward['fusions'])}` and writes {len(forward['writes_n_floats'])} array(s) of N floats; "
        f"value_and_grad has `{', '.join(both['fusions'])}` and writes {len(both['writes_n_floats'])} "
        f"(`{', '.join(both['writes_n_floats'])}`, the gradient). The sum of the loss is one YNNPACK pass over "
        "the inputs (`ynn_fusion`: the select-free terms of `_elementwise.bce_with_logits_fusible`), the gradient "
        "one XLA loop; a bool label is converted to one byte (`wrapped_convert`) for YNNPACK, which takes no "
        "bool. XLA:CPU has no fusion that both reduces and writes an array, so the gradient's loop evaluates the "
        "exponential again. Temporaries, including the exact fallback branch's: "
        f"{forward['temp_bytes_incl_fallback_branch']:,} and {both['temp_bytes_incl_fallback_branch']:,} bytes.",
    ]
    every = data.get("every_loss")
    if every:
        lines += [
            "",
            f"### Every loss at N = {every['n']:,}",
            "",
            f"ns per element of each registered loss's mean ({every['labels']} labels; interleaved rounds), and "
            "how many arrays of N floats its compiled program writes: none for a forward that is one pass over "
            "the inputs, one for a value_and_grad that adds only the gradient. The losses without select-free "
            'terms (the numerics docs, "Sums on CPU") write their terms, and intermediates shared between '
            "value and gradient, to memory.",
            "",
            *_table_head("loss", "forward", "arrays written", "value_and_grad", "arrays written"),
        ]
        for name in dict.fromkeys(key.rsplit(" ", 1)[0] for key in every["ns_per_element"]):
            cells = [
                f"{every[field][f'{name} {mode}']:{spec}}"
                for mode in ("forward", "value_and_grad")
                for field, spec in (("ns_per_element", ".2f"), ("writes_n_floats", "d"))
            ]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    costs, one_core = data.get("fixed_costs"), data.get("fixed_costs_one_core")
    if costs and one_core:
        lines += [
            "",
            f"### Fixed costs: one jitted call at N = {costs['n']:,}",
            "",
            "Microseconds per call (median of interleaved rounds) and the ratio to the textbook BCE's call, on "
            "the machine's cores and in a process pinned to one core. On several cores XLA:CPU splits a loop "
            "whose cost model says it is expensive (the double-word gradients) into two tasks, and the hand-off "
            "to a second thread costs tens of microseconds at this size; pinned to one core, the costs are "
            "those of the work and the dispatch.",
            "",
            *_table_head(
                "loss",
                "forward",
                "/ textbook",
                "value_and_grad",
                "/ textbook",
                "forward, 1 core",
                "/ textbook",
                "value_and_grad, 1 core",
                "/ textbook",
            ),
        ]
        for name in sorted({key.rsplit(" ", 1)[0] for key in costs["microseconds"]}):
            cells = []
            for micro in (costs["microseconds"], one_core["microseconds"]):
                for mode in ("forward", "value_and_grad"):
                    value = micro[f"{name} {mode}"]
                    cells += [f"{value:.1f}", f"{value / micro[f'textbook BCE {mode}']:.2f}"]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    return [*lines, ""]


def train_step_section(data, backend: str) -> list[str]:
    lines = _results_section(
        "Train step",
        data,
        "A jitted Adam step of an MLP (256 inputs, a hidden layer, one logit per class) with jaxbce's loss "
        "(`pos_weight` per class), optax's with the same `pos_weight` written by hand, and the model alone "
        "(`mean(logits)` as the loss) (`bench/train_step.py`). Milliseconds per step (median after warm-up) "
        "and the loss's cost per element: the step minus the model-only step.",
        "hidden",
        "batch x classes",
        "jaxbce ms",
        "optax ms",
        "model only ms",
        "jaxbce / optax",
        "loss ns/element jaxbce",
        "optax",
    )
    for row in data["rows"]:
        ms = row["seconds"]
        per = row["loss ns per element (step minus model only)"]
        lines.append(
            f"| {row.get('hidden', 512)} | {row['batch']} x {row['classes']} | {ms['jaxbce'] * 1e3:.3g} "
            f"| {ms['optax'] * 1e3:.3g} | {ms['model only'] * 1e3:.3g} | {row['jaxbce step / optax step']:.2f} "
            f"| {per['jaxbce']:.2g} | {per['optax']:.2g} |"
        )
    lines += ["", f"![train step](assets/train-step-{backend}.png)", ""]
    return lines


def compile_section(data, backend: str) -> list[str]:
    lines = _results_section(
        "Compile time",
        data,
        "What a loss costs before its first step (`bench/compile.py`): `jax.jit(jax.value_and_grad(loss))` at "
        "(16, 16) (the fused loss at 16 x 32 x 512, the SigLIP loss at 16 pairs of 32-dimensional embeddings), "
        "`jax.jit(jax.hessian(loss))` at (2, 4), trace + lower and compile seconds and StableHLO KiB, and "
        "`jax.test_util.check_grads(order=2)` on 4 elements; medians of 5 rounds, each from cleared caches, "
        "against the optax counterpart in the same process (for the asymmetric loss, optax's focal loss).",
        "loss",
        "value_and_grad s",
        "/ optax",
        "KiB",
        "hessian s",
        "/ optax",
        "KiB",
        "check_grads s",
        "/ optax",
    )
    for row in data["elementwise"] + data["fused_and_contrastive"]:
        cells = []
        for kind in ("value_and_grad", "hessian", "check_grads"):
            entry = row.get(kind)
            if entry is None:
                cells += ["–"] * (3 if kind != "check_grads" else 2)
                continue
            ratio = entry.get("jaxbce / optax", {}).get("total_s")
            cells += [f"{entry['jaxbce']['total_s']:.2f}", "–" if ratio is None else f"{ratio:.2f}"]
            if kind != "check_grads":
                cells.append(f"{entry['jaxbce']['stablehlo_kib']:.0f}")
        lines.append(f"| {row['loss']} | {' | '.join(cells)} |")
    lines += ["", "The first call of `bench/train_step.py`'s Adam step (trace, compile and one run):", ""]
    lines += _table_head("hidden", "batch x classes", "jaxbce s", "optax s", "jaxbce / optax")
    for row in data["train_step_first_call"]:
        lines.append(
            f"| {row['hidden']} | {row['batch']} x {row['classes']:,} | {row['jaxbce']['first_call_s']:.2f} "
            f"| {row['optax']['first_call_s']:.2f} | {row['jaxbce / optax']['first_call_s']:.2f} |"
        )
    lines += ["", f"![compile time](assets/compile-{backend}.png)", ""]
    return lines


def _compile_readme(data) -> list[str]:
    lines = _table_head("loss", "jit(value_and_grad) / optax", "jit(hessian) / optax", "StableHLO of the Hessian")
    for row in data["elementwise"]:
        if "jaxbce / optax" not in row["value_and_grad"]:
            continue
        vg, hessian = row["value_and_grad"], row["hessian"]
        lines.append(
            f"| {row['loss']} ({row['optax counterpart']}) | {vg['jaxbce / optax']['total_s']:.2f} "
            f"| {hessian['jaxbce / optax']['total_s']:.2f} | {hessian['jaxbce']['stablehlo_kib']:.0f} KiB "
            f"(optax {hessian['optax']['stablehlo_kib']:.0f}) |"
        )
    return lines


def _gib(value: int) -> str:
    return f"{value / 2**30:.3g}"


def fused_section(data, backend: str) -> list[str]:
    lines = _results_section(
        "Fused linear + BCE (`linear_binary_cross_entropy`)",
        data,
        "`jit(value_and_grad)` in features, kernel and bias (`bench/fused.py`). Memory from the compiled "
        "executable's `memory_analysis()` (GiB; arguments include the labels: dense bool `(batch, C)`, or "
        "`(batch, 32)` int32 positives for the fused sparse rows), time the median of repeated runs after "
        "warm-up (– where the form was compiled but not run: over 6 GiB). `matmul floor` is `sum(features @ "
        "kernel + bias)` with its gradient: the three matmuls alone.",
        "batch x D x C",
        "labels",
        "form",
        "arguments",
        "outputs",
        "temporaries",
        "total",
        "seconds",
    )
    for row in data["rows"]:
        shape = f"{row['batch']} x {row['dim']} x 2^{row['classes'].bit_length() - 1}"
        labels = f"{row['positives_per_row']} positives" if row["positives_per_row"] else "dense"
        for name, entry in row["forms"].items():
            seconds = f"{entry['seconds']:.3g}" if "seconds" in entry else "–"
            lines.append(
                f"| {shape} | {labels} | {name} | {_gib(entry['argument_bytes'])} | {_gib(entry['output_bytes'])} "
                f"| {_gib(entry['temp_bytes'])} | {_gib(entry['total_bytes'])} | {seconds} |"
            )
    lines += ["", "Ratios:", "", *_table_head("batch x D x C", "labels", "ratio", "value")]
    for row in data["rows"]:
        shape = f"{row['batch']} x {row['dim']} x 2^{row['classes'].bit_length() - 1}"
        labels = f"{row['positives_per_row']} positives" if row["positives_per_row"] else "dense"
        lines += [f"| {shape} | {labels} | {k} | {v:.3g} |" for k, v in row["ratios"].items()]
    lines += ["", f"![memory and time](assets/fused-{backend}.png)", ""]
    return (
        lines
        + _update_section(data.get("update_rows") or [])
        + _label_sets_section(data.get("label_sets"))
        + _family_section(data.get("family"))
    )


def _label_sets_rows(label_sets) -> list[str]:
    """One row per label count: the update's and the gradient's temporaries against the kernel and against the
    budget of 64 MiB + 2% of the kernel, and the (C, D) layout's against the (D, C) one's."""
    lines = _table_head(
        "data set",
        "C",
        "update temporaries",
        "/ kernel",
        "gradient temporaries",
        "/ kernel",
        "/ (64 MiB + 2%), worst",
        "out_in / in_out, worst",
    )
    for row in label_sets["memory"]:
        ratios = row["ratios"]
        budget = max(
            ratios["update temp / (64 MiB + 2% of the kernel)"], ratios["gradient temp / (64 MiB + 2% of the kernel)"]
        )
        layout = max(ratios["out_in update temp / in_out"], ratios["out_in gradient temp / in_out"])
        lines.append(
            f"| {row['name']} | {row['classes']:,} | {row['update temp bytes, in_out'] / 2**20:.1f} MiB "
            f"| {ratios['update temp / kernel bytes']:.3f} | {row['gradient temp bytes, in_out'] / 2**20:.1f} MiB "
            f"| {ratios['gradient temp / kernel bytes']:.3f} | {budget:.2f} | {layout:.2f} |"
        )
    return lines


def _label_sets_section(label_sets) -> list[str]:
    if not label_sets:
        return []
    timing = label_sets["timing"]
    seconds = timing["update seconds per step"]
    sparse = timing["gradient seconds, positives vs bcoo"]
    ratios = timing["ratios"]
    return [
        "### Real label sets: any C, either kernel layout, BCOO labels",
        "",
        f"B = {label_sets['batch']}, D = {label_sets['dim']}, Adam, sparse positives: the compiled temporaries of "
        "the donated fused update and of the fused loss's `value_and_grad` in features, kernel and bias, at the "
        "label counts of the Extreme Classification Repository's data sets, a power of two and a prime, with the "
        'kernel `(D, C)`; the last column is the worst of the two for a `(C, D)` kernel (`kernel_layout="out_in"`) '
        "over `(D, C)`.",
        "",
        *_label_sets_rows(label_sets),
        "",
        f"Step time of the fused Adam update, per class: {seconds['670091']:.3g} s per step at 670,091 classes "
        f"against {seconds['655360']:.3g} s at 655,360, a ratio per class of "
        f"{ratios['update time per class, 670091 / 655360']:.3f}. The fused loss's gradient with labels as a "
        f"`jax.experimental.sparse.BCOO` ({timing['labels per example']:.2f} labels per example, 670,091 classes): "
        f"{sparse['bcoo']:.3g} s against {sparse['positives']:.3g} s with the same entries as padded `positives`, "
        f"a ratio of {ratios['bcoo gradient time / positives gradient time']:.3f}.",
        "",
    ]


def _family_rows(family) -> list[str]:
    """One row per fused loss of the sigmoid family: its gradient's temporaries against the materialised logits
    and the materialised form's, its time against the fused BCE's, and its fused Adam step's temporaries."""
    lines = _table_head(
        "loss",
        "gradient temporaries",
        "/ materialised logits",
        "materialised temporaries",
        "time / fused BCE",
        "fused update temporaries / (fused loss, then optax)",
    )
    ratios = family["ratios"]
    for name, row in family["losses"].items():
        lines.append(
            f"| {name} | {row['gradient']['temp_bytes'] / 2**20:.1f} MiB "
            f"| {ratios[f'{name}: gradient temp / materialised logits']:.4f} "
            f"| {_gib(row['materialised gradient']['temp_bytes'])} GiB "
            f"| {ratios[f'{name}: time / fused bce time']:.2f} "
            f"| {ratios[f'{name}: update temp / (fused loss, then optax) temp']:.3f} |"
        )
    return lines


def _family_section(family) -> list[str]:
    if not family:
        return []
    batch, dim, classes, per_row = family["shape"]
    top_k, ratios = family["top_k"], family["ratios"]
    shape = " x ".join(str(size) for size in top_k["shape"][:3])
    return [
        "### The sigmoid family fused, and the top-k without the logits",
        "",
        f"B = {batch}, D = {dim}, C = {classes:,}, {per_row} sparse positives per example: `jit(value_and_grad)` in "
        "features and the head of the fused focal loss and ASL (and the BCE), against the materialised logits "
        "(compiled memory; time, medians after a warm-up, against the fused BCE's); the donated Adam step of "
        "`jaxbce.linear_update` against the fused loss's gradient followed by `optax.adam`.",
        "",
        *_family_rows(family),
        "",
        f"`linear_top_k` (k = {top_k['shape'][3]}) at {shape}: temporaries "
        f"{top_k['linear_top_k']['temp_bytes'] / 2**20:.1f} MiB, "
        f"{ratios['linear_top_k temp / chunk logits']:.2f} of one chunk's logits, against "
        f"{_gib(top_k['materialised + lax.top_k']['temp_bytes'])} GiB for `lax.top_k` of the materialised logits; "
        f"time {top_k['seconds']['linear_top_k']:.3g} s against {top_k['seconds']['materialised + lax.top_k']:.3g} s "
        f"(ratio {ratios['linear_top_k time / (materialised + lax.top_k)']:.2f}).",
        "",
    ]


def _update_section(rows) -> list[str]:
    """The classifier's Adam step fused into the chunk loop, against the fused loss followed by optax.adam."""
    if not rows:
        return []
    lines = [
        "### The classifier's update fused into the chunk loop (`linear_binary_cross_entropy_update`)",
        "",
        "One Adam step of the classifier, 32 positives per example, jitted with the parameters and the optimizer "
        "state donated: `linear_binary_cross_entropy_update` against the fused loss's gradient followed by "
        "`optax.adam` and `optax.apply_updates`. A step's memory is its arguments, the outputs not aliased to "
        "them and its temporaries (GiB, from `memory_analysis()`); seconds are medians of consecutive steps "
        "(– where not run: over 9 GiB). The last two columns are the fused update of a bfloat16 head and Adam state "
        "rounded stochastically (`key`): half the arguments, but XLA:CPU copies most bfloat16 arrays once per step "
        "(it cannot write bfloat16 in place in a loop), so on this machine the step saves less than a fifth of "
        "the float32 one's memory (GPUs write it in place: scripts/check_gpu_hlo.py).",
        "",
        *_table_head(
            "batch x D x C",
            "fused update GiB",
            "its temporaries GiB",
            "loss, then adam GiB",
            "memory ratio",
            "temporaries / kernel",
            "fused update s",
            "loss, then adam s",
            "time ratio",
            "bfloat16 update GiB",
            "bfloat16 update s",
        ),
    ]
    for row in rows:
        forms, ratios = row["forms"], row["ratios"]
        fused, separate = forms["fused update"], forms["fused loss, then optax.adam"]
        bfloat16 = forms.get("fused update, bfloat16, stochastic rounding", {})
        seconds = [f"{e['seconds']:.3g}" if "seconds" in e else "–" for e in (fused, separate, bfloat16)]
        time_ratio = ratios.get("fused update time / separate time")
        lines.append(
            f"| {row['batch']} x {row['dim']} x 2^{row['classes'].bit_length() - 1} | {_gib(fused['step_bytes'])} "
            f"| {_gib(fused['temp_bytes'])} | {_gib(separate['step_bytes'])} "
            f"| {ratios['fused update step bytes / separate step bytes']:.2f} "
            f"| {ratios['fused update temp / kernel bytes']:.3f} | {seconds[0]} | {seconds[1]} "
            f"| {'–' if time_ratio is None else f'{time_ratio:.2f}'} "
            f"| {_gib(bfloat16['step_bytes']) if bfloat16 else '–'} | {seconds[2]} |"
        )
    return [*lines, ""]


def contrastive_section(data, backend: str) -> list[str]:
    lines = _results_section(
        "SigLIP loss (`sigmoid_contrastive_loss`)",
        data,
        "`jit(value_and_grad)` in both embeddings, the scale and the bias, D = 256 (`bench/contrastive.py`): "
        "`dense` is big_vision's form on the 8-device mesh (texts all-gathered, `b x B` logits per device), "
        "`ring` the `ppermute` ring on the same mesh, `chunked` one device for the whole batch. Memory per "
        "device from `memory_analysis()` (MiB), time the median after warm-up (– where compiled but not run). "
        "The 8 devices share the machine's cores.",
        "B",
        "form",
        "arguments",
        "outputs",
        "temporaries",
        "seconds",
    )
    for row in data["rows"]:
        for name, entry in row["forms"].items():
            seconds = f"{entry['seconds']:.3g}" if "seconds" in entry else "–"
            cells = " | ".join(f"{entry[k] / 2**20:.1f}" for k in ("argument_bytes", "output_bytes", "temp_bytes"))
            lines.append(f"| {row['batch']:,} | {name} | {cells} | {seconds} |")
    lines += ["", "Ratios:", "", *_table_head("B", "ratio", "value")]
    for row in data["rows"]:
        lines += [f"| {row['batch']:,} | {k} | {v:.3g} |" for k, v in row["ratios"].items()]
    lines += ["", f"![memory and time](assets/contrastive-{backend}.png)", ""]
    return lines


def _contrastive_readme(data) -> list[str]:
    table = _table_head(
        "B", "ring temporaries / (b x b block + embeddings)", "dense / ring temporaries", "ring time / dense time"
    )
    for row in data["rows"]:
        ratios = row["ratios"]
        timed = ratios.get("ring time / dense time")
        table.append(
            f"| {row['batch']:,} | {ratios['ring temp / (local b x b block + local embeddings)']:.2f} "
            f"| {ratios['dense temp / ring temp']:.1f} | {'dense not run' if timed is None else f'{timed:.2f}'} |"
        )
    return table


# README tables: the headline rows of the committed results, in the README's words.
_ACCURACY_NAMES = {
    "jaxbce": "**jaxbce**",
    "optax": "optax {optax}",
    "keras": "keras {keras} (JAX backend)",
    "torch": "torch {torch} `BCEWithLogitsLoss`",
    "textbook": "textbook `max(x,0) - x*y + log1p(exp(-abs(x)))`",
}
_SPEED_PEERS = ("optax", "torch", "keras", "textbook")


def _short(value) -> str:
    """3 significant digits, and large numbers as 8.4e6."""
    if value is None:
        return "–"
    if value == float("inf"):
        return "inf"
    if abs(value) >= 1e4:
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.3g}"


def _versions(data) -> dict[str, str]:
    return {name: version.split("+")[0] for name, version in data["versions"].items()}


def readme_tables(results: pathlib.Path = RESULTS) -> dict[str, list[str]]:
    accuracy = json.loads((results / "accuracy.json").read_text())
    versions = _versions(accuracy)
    default = accuracy["binary_cross_entropy_with_logits"]["settings"]["pos_weight=1.0, label_smoothing=0.0"]
    bce = _table_head("`binary_cross_entropy_with_logits`", "loss", "grad, hard labels", "grad, soft labels")
    for name, label in _ACCURACY_NAMES.items():
        if name in default:
            cells = [_short(default[name].get(k)) for k in ("loss", "grad_hard", "grad_soft")]
            if name == "jaxbce":
                cells = [f"**{c}**" for c in cells]
            bce.append(f"| {label.format(**versions)} | {' | '.join(cells)} |")
    focal_settings = accuracy["sigmoid_focal_loss"]["settings"]
    gammas = [setting.split("gamma=")[1] for setting in focal_settings]
    focal = _table_head("gamma", *(f"{float(g):g}" for g in gammas))
    for name in ("jaxbce", "optax", "keras"):
        cells = [
            f"{_short(table[name]['loss'])} / {_short(table[name]['grad'])}"
            for table in focal_settings.values()
            if name in table
        ]
        if cells:
            label = "**jaxbce**" if name == "jaxbce" else f"{name} {versions[name]}"
            cells = [f"**{c}**" for c in cells] if name == "jaxbce" else cells
            focal.append(f"| {label} | {' | '.join(cells)} |")

    multilabel = _table_head("loss, setting", "jaxbce", "peers")
    for title, key in (("asymmetric_loss", "asymmetric_loss"), ("Poly-1", "poly1")):
        for setting, table in accuracy[key]["settings"].items():
            ours = table["jaxbce"]
            peers = "; ".join(
                f"{name}: {_short(row['loss'])} / {_short(row['grad'])}"
                for name, row in table.items()
                if name != "jaxbce"
            )
            multilabel.append(f"| {title}, {setting} | **{_short(ours['loss'])} / {_short(ours['grad'])}** | {peers} |")

    speed_data = json.loads((results / "speed-cpu.json").read_text())
    speed = _table_head("inputs", "mode", "jaxbce / floor", *(f"{p} / jaxbce" for p in _SPEED_PEERS))
    for case, entry in speed_data["ratios_at_largest_n"].items():
        for mode in ("forward", "value_and_grad"):
            ratios = [entry.get(f"{mode}: jaxbce / floor")] + [entry.get(f"{mode}: {p} / jaxbce") for p in _SPEED_PEERS]
            speed.append(f"| {case} | {mode} | " + " | ".join("–" if r is None else f"{r:.2f}" for r in ratios) + " |")

    train = _table_head("hidden", "batch x classes", "jaxbce step / optax step", "loss ns/element: jaxbce", "optax")
    for row in json.loads((results / "train-step-cpu.json").read_text())["rows"]:
        per = row["loss ns per element (step minus model only)"]
        train.append(
            f"| {row['hidden']} | {row['batch']} x {row['classes']:,} | {row['jaxbce step / optax step']:.2f} "
            f"| {per['jaxbce']:.2g} | {per['optax']:.2g} |"
        )

    fused_data = json.loads((results / "fused-cpu.json").read_text())
    fused = _table_head(
        "batch x D x C",
        "labels",
        "fused total memory",
        "materialised jaxbce",
        "materialised optax",
        "fused temporaries / (arguments + outputs)",
        "fused time / jaxbce",
        "fused time / optax",
    )
    for row in fused_data["rows"]:
        shape = f"{row['batch']} x {row['dim']} x 2^{row['classes'].bit_length() - 1}"
        labels = f"{row['positives_per_row']} positives" if row["positives_per_row"] else "dense"
        forms, ratios = row["forms"], row["ratios"]
        times = [
            f"{ratios[key]:.2f}" if key in ratios else "not run (over 6 GiB)"
            for key in ("fused time / jaxbce time", "fused time / optax time")
        ]
        fused.append(
            f"| {shape} | {labels} | {_gib(forms['fused']['total_bytes'])} GiB "
            f"| {_gib(forms['jaxbce']['total_bytes'])} GiB | {_gib(forms['optax']['total_bytes'])} GiB "
            f"| {ratios['fused temp / (argument + output)']:.3f} | {' | '.join(times)} |"
        )
    return {
        "accuracy-bce": bce,
        "accuracy-focal": focal,
        "accuracy-multilabel": multilabel,
        "speed": speed,
        "train-step": train,
        "fused": fused,
        "contrastive": _contrastive_readme(json.loads((results / "contrastive-cpu.json").read_text())),
        "compile": _compile_readme(json.loads((results / "compile-cpu.json").read_text())),
        "label-sets": _label_sets_rows(fused_data["label_sets"]),
        "family": _family_rows(fused_data["family"]) if fused_data.get("family") else ["(not measured)"],
    }


_GENERATED = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)


def render_readme(text: str, tables: dict[str, list[str]]) -> str:
    """``text`` with every generated block replaced by its table (an unknown name is an error)."""
    return _GENERATED.sub(lambda m: m.group(1) + "\n".join(tables[m.group("name")]) + "\n" + m.group(4), text)


def main() -> None:
    lines = ["# Benchmarks", "", "Generated by `bench/report.py` from `bench/results/`.", ""]
    accuracy = RESULTS / "accuracy.json"
    if accuracy.exists():
        lines += accuracy_section(json.loads(accuracy.read_text()))
    for path in sorted(RESULTS.glob("speed-*.json")):
        lines += speed_section(json.loads(path.read_text()))
    for path in sorted(RESULTS.glob("train-step-*.json")):
        lines += train_step_section(json.loads(path.read_text()), path.stem.removeprefix("train-step-"))
    for path in sorted(RESULTS.glob("compile-*.json")):
        lines += compile_section(json.loads(path.read_text()), path.stem.removeprefix("compile-"))
    for path in sorted(RESULTS.glob("fused-*.json")):
        lines += fused_section(json.loads(path.read_text()), path.stem.removeprefix("fused-"))
    for path in sorted(RESULTS.glob("contrastive-*.json")):
        lines += contrastive_section(json.loads(path.read_text()), path.stem.removeprefix("contrastive-"))
    out = ROOT / "docs" / "benchmarks.md"
    out.write_text("\n".join(lines) + "\n")
    readme = ROOT / "README.md"
    readme.write_text(render_readme(readme.read_text(), readme_tables()))
    print(f"wrote {out.relative_to(ROOT)} and the tables of README.md")


if __name__ == "__main__":
    main()
