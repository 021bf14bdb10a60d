"""A differential test: every registered elementwise loss, drawn by hypothesis with its options, a reduction, an
axis, a mask, weights from 1e-30 to 1e30 and logits over the whole float range, against 50-digit mpmath
evaluations of the documented formulas (``tests/reference.py``'s building blocks, written independently of the
package's cores), in value and in every gradient the loss has: logits (or probabilities), ``weight``,
``pos_weight`` and ``target_logits``.

The rule checked is the contract's: each result within a few eps of the exact one, measured against the size of
the terms it is formed from (so a difference that cancels is held to the error of its terms); errors below the
smallest normal number do not count; where the exact result exceeds the format the result is inf of its sign;
and never NaN where the exact result is a number. ``make test-thorough`` draws 2,000 new examples instead of the
100 fixed ones of ``make test``.
"""

import functools
import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
from hypothesis import given, note
from hypothesis import strategies as st

import reference
from jax_compat import enable_x64
from loss_table import LOSSES

mp = mpmath.mpf
TOLERANCE = 16  # eps of the dtype, times the size of the terms a result is formed from
WEIGHTED = ("binary_cross_entropy_with_logits", "binary_cross_entropy", "asymmetric_loss")  # take pos_weight


def _special_logits(dtype) -> list[float]:
    """The edges: where sigmoid(-|x|) turns subnormal (87-104 in float32), where an entropy's |x| sigmoid(-|x|)
    or a double-word split overflows (within 2^-13 of the largest float), and huge values in between."""
    largest = float(np.finfo(dtype).max)
    return [0.0, 0.5, 1.0, 17.0, 30.0, 87.0, 88.0, 90.0, 95.0, 104.0, 750.0, 1e4, 1e30, 1e200, largest / 2,
            largest * (1 - 2.0**-14), largest, 3e38, 1.7e308]  # fmt: skip


def _logits(dtype):
    largest = float(np.finfo(dtype).max)
    special = st.sampled_from([v for v in _special_logits(dtype) if v <= largest])
    magnitude = st.floats(-30, math.log10(largest)).map(lambda e: min(10.0**e, largest))
    sign = st.sampled_from([1.0, -1.0])
    return st.builds(lambda s, m: float(np.asarray(s * m, dtype)), sign, st.one_of(special, magnitude))


@st.composite
def _cases(draw):
    name = draw(st.sampled_from(tuple(LOSSES)))
    loss = LOSSES[name]
    dtype = draw(st.sampled_from((np.float32, np.float64)))
    shape = draw(st.sampled_from(((1,), (3,), (2, 2))))
    axis = draw(st.sampled_from((None, -1, 0))) if len(shape) == 2 else None
    size = math.prod(shape)
    if name == "binary_cross_entropy":
        first = st.one_of(st.sampled_from([0.0, 1.0, 1e-30, 0.5, 1 - 2**-20]), st.floats(0, 1))
    else:
        first = _logits(dtype)
    arrays = {"first": np.asarray(draw(st.lists(first, min_size=size, max_size=size)), dtype).reshape(shape)}
    if name == "binary_kl_divergence":
        second = draw(st.lists(_logits(dtype), min_size=size, max_size=size))
    elif name != "binary_entropy":
        second = draw(st.lists(st.sampled_from([0.0, 1.0, 0.25, 0.5, 0.7]), min_size=size, max_size=size))
    if name != "binary_entropy":
        arrays["second"] = np.asarray(second, dtype).reshape(shape)
    if name in WEIGHTED and draw(st.booleans()):
        values = draw(st.lists(st.floats(-3, 3), min_size=size, max_size=size))
        arrays["pos_weight"] = np.asarray([10.0**v for v in values], dtype).reshape(shape)
    reductions = ["none", "sum", "mean", "batchmean"]
    if loss.takes_weight:
        reductions.append("weighted_mean")
        kind = draw(st.sampled_from(["none", "scaled", "scaled", "zero", "some zero"]))
        if kind != "none":
            scale = 10.0 ** draw(st.floats(-30, 30))
            base = draw(st.lists(st.floats(0.5, 2.0), min_size=size, max_size=size))
            weight = np.asarray(base) * scale
            if kind == "zero":
                weight = np.zeros(size)
            elif kind == "some zero":
                weight[draw(st.integers(0, size - 1))] = 0
            arrays["weight"] = np.asarray(weight, dtype).reshape(shape)
    reduction = draw(st.sampled_from(reductions))
    if reduction == "batchmean":
        axis = None
    if draw(st.booleans()):
        arrays["where"] = np.asarray(draw(st.lists(st.booleans(), min_size=size, max_size=size))).reshape(shape)
    options = {option: draw(st.sampled_from(values)) for option, values in loss.options.items()}
    return name, dtype, axis, reduction, options, arrays


def _element(name, x, y, pw, options) -> dict:
    """The exact value of one element's loss and its derivatives, each with the size of the terms it is formed
    from: ``{"value", "first", "pos_weight", "second"}: (exact, size)`` (mpmath numbers). The working precision
    grows with the logits' magnitude: the KL divergence's formula cancels terms as large as they are."""
    magnitude = max(abs(x), abs(y or 0.0), 1.0) if name != "binary_cross_entropy" else 1.0
    with mpmath.workdps(50 + int(math.log10(magnitude))):
        return _element_exactly(name, x, y, pw, options)


def _element_exactly(name, x, y, pw, options) -> dict:
    pw = mp(1) if pw is None else mp(pw)
    x = mp(x)
    if name == "binary_cross_entropy_with_logits":
        ys, eps = reference._smoothed(y, options["label_smoothing"]), mp(options["poly_epsilon"])
        s, ns = 1 / (1 + mpmath.exp(-x)), 1 / (1 + mpmath.exp(x))
        positive, negative = pw * ys * mpmath.log1p(mpmath.exp(-x)), (1 - ys) * mpmath.log1p(mpmath.exp(x))
        q = ys * ns + (1 - ys) * s
        d_poly = eps * (1 - 2 * ys) * s * ns
        d = -pw * ys * ns + (1 - ys) * s + d_poly
        return {"value": (positive + negative + eps * q, positive + negative + abs(eps * q)),
                "first": (d, pw * ys * ns + (1 - ys) * s + abs(d_poly)),
                "pos_weight": (ys * mpmath.log1p(mpmath.exp(-x)),) * 2}  # fmt: skip
    if name == "binary_cross_entropy":
        ys = reference._smoothed(y, options["label_smoothing"])
        log_p = max(mpmath.log(x), -100) if x > 0 else mp(-100)
        log_not_p = max(mpmath.log1p(-x), -100) if x < 1 else mp(-100)
        value = -(pw * ys * log_p + (1 - ys) * log_not_p)
        out = {"value": (value, abs(value)), "pos_weight": (-ys * log_p, abs(ys * log_p))}
        if 0 < x < 1 and x * (1 - x) >= mp("1e-12") and min(log_p, log_not_p) > -100:  # no clamp active
            out["first"] = (-pw * ys / x + (1 - ys) / (1 - x), pw * ys / x + (1 - ys) / (1 - x))
        return out
    if name == "sigmoid_focal_loss":
        value, d, size = reference.sigmoid_focal(
            [float(x)], [y], alpha=0.25, gamma=options["gamma"], label_smoothing=options["label_smoothing"],
            poly_epsilon=options["poly_epsilon"],
        )  # fmt: skip
        return {"value": (mp(value[0]), abs(mp(value[0]))), "first": (mp(d[0]), mp(size[0]))}
    if name == "asymmetric_loss":
        gammas = {k: options[k] for k in ("gamma_pos", "gamma_neg", "clip")}
        (v1, d1, s1), (v0, d0, s0) = (reference.asymmetric([float(x)], [label], **gammas) for label in (1.0, 0.0))
        v1, d1, s1, v0, d0, s0 = (mp(a[0]) for a in (v1, d1, s1, v0, d0, s0))
        y = mp(y)
        value = pw * y * v1 + (1 - y) * v0
        first = (pw * y * d1 + (1 - y) * d0, pw * y * s1 + (1 - y) * s0)
        return {"value": (value, value), "first": first, "pos_weight": (y * v1, y * v1)}
    if name == "binary_entropy":
        # -p log p - (1 - p) log(1 - p) as p softplus(-x) + (1 - p) softplus(x): 1 - p is formed directly
        # (1 - exp(-90) keeps 10 of its digits at 50).
        s, ns = 1 / (1 + mpmath.exp(-x)), 1 / (1 + mpmath.exp(x))
        value = s * mpmath.log1p(mpmath.exp(-x)) + ns * mpmath.log1p(mpmath.exp(x))
        return {"value": (value, value), "first": (-x * s * ns, abs(x * s * ns))}
    t = mp(y)  # binary_kl_divergence
    value = reference._binary_kl_divergence_scalar(x, t)
    q, nq = 1 / (1 + mpmath.exp(-t)), 1 / (1 + mpmath.exp(t))
    d_first = 1 / (1 + mpmath.exp(-x)) - q
    d_second = -q * nq * (x - t)
    return {"value": (value, value), "first": (d_first, abs(d_first)), "second": (d_second, abs(d_second))}


def _exact(name, dtype, axis, reduction, options, arrays) -> dict:
    """The exact outputs and the exact gradients of their sum: ``{key: (exact, size)}`` lists in the order of the
    flattened arrays, None where an entry is not compared: the gradient in probabilities where a clamp is active
    (PyTorch's gradient there is documented, not the derivative), and a group's value and weight gradient where
    the sum of its terms exceeds the format (as any sum of such terms does, in every library)."""
    shape = arrays["first"].shape
    size = arrays["first"].size
    flat = {key: np.broadcast_to(a, shape).ravel().tolist() for key, a in arrays.items()}
    absent = [None] * size
    elements = [
        _element(name, flat["first"][i], flat.get("second", absent)[i], flat.get("pos_weight", absent)[i], options)
        for i in range(size)
    ]
    keep = flat.get("where", [True] * size)
    weight = [mp(w) if k else mp(0) for w, k in zip(flat.get("weight", [1.0] * size), keep, strict=True)]
    index = np.arange(size).reshape(shape)
    if reduction == "none":
        groups = [[i] for i in range(size)]
    elif axis is None:
        groups = [list(range(size))]
    else:
        groups = [list(row) for row in np.moveaxis(index, axis, -1).reshape(-1, shape[axis])]
    keys = ("first", "weight", "pos_weight", "second")
    out = {key: [(mp(0), mp(0))] * size for key in ("value", *keys)}
    out["value"] = []
    largest = mp(float(np.finfo(dtype).max))
    for group in groups:
        kept = [i for i in group if keep[i]]
        divisor = {
            "none": mp(1),
            "sum": mp(1),
            "mean": mp(len(kept)),
            "batchmean": mp(len({np.unravel_index(i, shape)[0] for i in kept})),
            "weighted_mean": sum((weight[i] for i in kept), mp(0)),
        }[reduction]
        if divisor == 0:  # a mean over nothing: 0, with zero gradient
            out["value"].append((mp(0), mp(0)))
            continue
        total = sum((weight[i] * elements[i]["value"][0] for i in kept if weight[i]), mp(0))
        terms = sum((weight[i] * elements[i]["value"][1] for i in kept if weight[i]), mp(0))
        overflows = terms > largest
        mean = total / divisor
        out["value"].append((None, None) if overflows else (mean, terms / divisor))
        for i in kept:
            element = elements[i]
            for key in ("first", "pos_weight", "second"):
                exact, term_size = element.get(key, (None, None))
                out[key][i] = (
                    (None, None) if exact is None else (weight[i] * exact / divisor, weight[i] * term_size / divisor)
                )
            loss, loss_size = element["value"]
            if overflows:
                out["weight"][i] = (None, None)
            elif reduction == "weighted_mean":
                out["weight"][i] = ((loss - mean) / divisor, (loss_size + abs(mean)) / divisor)
            else:
                out["weight"][i] = (loss / divisor, loss_size / divisor)
    return {key: ([e for e, _ in entries], [s for _, s in entries]) for key, entries in out.items()}


def _check(label, got, exact, size, dtype) -> None:
    info = np.finfo(dtype)
    got = np.asarray(got, np.float64).ravel()
    for g, e, s in zip(got, exact, size, strict=True):
        if e is None:  # not compared (_exact)
            continue
        e_float, s_float = float(e), float(s)
        note(f"{label}: got {g!r}, exact {e_float!r}, size {s_float!r}")
        if abs(e) > info.max * (1 + info.eps / 2):  # beyond the format: inf of its sign (or the largest float)
            assert abs(g) >= info.max, f"{label}: {g} for an exact {e_float}"
            assert np.sign(g) == np.sign(e_float), f"{label}: {g} for an exact {e_float}"
            continue
        assert np.isfinite(g), f"{label}: {g} for an exact {e_float}"
        error = abs(mp(g) - e)
        assert error < info.tiny or error <= TOLERANCE * info.eps * s, (
            f"{label}: {g} for an exact {e_float} (error {float(error / max(s, mp(info.tiny)) / info.eps):.3g} eps of "
            f"the size {s_float})"
        )


@functools.cache
def _program(name, dtype, axis, reduction, options, present):
    """The jitted value and gradients of one case's shape of call (``present``: the arrays given)."""
    function = LOSSES[name].function
    keywords = dict(options)

    def outputs(first, second, weight, pos_weight, where):
        kwargs = {"reduction": reduction, **keywords}
        if axis is not None and reduction != "none":
            kwargs["axis"] = axis
        if "weight" in present:
            kwargs["weight"] = weight
        if "pos_weight" in present:
            kwargs["pos_weight"] = pos_weight
        if "where" in present:
            kwargs["where"] = where
        args = (first,) if name == "binary_entropy" else (first, second)
        return function(*args, **kwargs)

    def total(*args):
        return jnp.sum(outputs(*args))

    argnums = tuple(i for i, key in enumerate(("first", "second", "weight", "pos_weight")) if key in present)
    argnums = tuple(i for i in argnums if i != 1 or name == "binary_kl_divergence")
    return jax.jit(outputs), jax.jit(jax.grad(total, argnums=argnums)), argnums


@given(_cases())
def test_values_and_gradients_equal_the_documented_formulas(case):
    name, dtype, axis, reduction, options, arrays = case
    note(f"{name} {np.dtype(dtype)} axis={axis} reduction={reduction} options={options} arrays={arrays}")
    present = tuple(sorted(arrays))
    with enable_x64(dtype == np.float64):
        values, gradient, argnums = _program(name, dtype, axis, reduction, tuple(sorted(options.items())), present)
        args = [arrays.get(key) for key in ("first", "second", "weight", "pos_weight", "where")]
        args = [None if a is None else jnp.asarray(a) for a in args]
        got_value = values(*args)
        got_gradients = gradient(*args)
    exact = _exact(name, dtype, axis, reduction, options, arrays)
    _check("value", got_value, *exact["value"], dtype)
    keys = ("first", "second", "weight", "pos_weight")
    for argnum, got in zip(argnums, got_gradients, strict=True):
        _check(f"d/d{keys[argnum]}", np.broadcast_to(got, arrays["first"].shape), *exact[keys[argnum]], dtype)
