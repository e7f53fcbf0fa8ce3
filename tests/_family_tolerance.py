"""How close two float32 optimizer runs must be: within the reference's own float32 rounding.

A float32 run of an optimizer drifts from its exact (float64) trajectory by the
rounding it accumulates; two correct float32 implementations that order their
operations differently drift differently. So adamx (float32) must stay within
``factor`` times the distance between the reference in float32 and in float64,
plus a floor of a few float32 ulps of the leaf's magnitude. The float64 runs
of adamx and the reference must agree far more tightly (``F64_ATOL``): that
is what shows the two compute the same formula.
"""

import jax
import numpy as np

F32_EPS = float(np.finfo(np.float32).eps)
# 500 steps of float64 rounding (~1e-16 per operation), amplified by the closed
# loop of the small model (measured up to ~1e5): far below any formula difference.
F64_ATOL = 1e-9
REPORT = None  # a list to collect (what, path, factor needed) while calibrating; None in tests


def max_abs_diff(x, y) -> float:
    pairs = zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True)
    return max(
        float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
        for a, b in pairs
    )


def assert_f64_equal(ours, reference, what: str) -> None:
    diff = max_abs_diff(ours, reference)
    assert diff <= F64_ATOL, f"{what}: float64 runs differ by {diff:.3g} > {F64_ATOL:g}"


def assert_within_rounding(ours32, ref32, ref64, factor: float, what: str) -> None:
    """|ours32 - ref32| <= factor * (the reference's float32 drift) + 4 ulps, leaf by leaf.

    The drift is max |ref32 - ref64| over the whole tree and trajectory: one
    scalar leaf's random walk can stay close to exact by luck.
    """
    rounding = max_abs_diff(ref32, ref64)
    leaves = zip(
        jax.tree_util.tree_leaves_with_path(ours32),
        jax.tree.leaves(ref32),
        jax.tree.leaves(ref64),
        strict=True,
    )
    for (path, a), b, c in leaves:
        a, b, c = (np.asarray(x, np.float64) for x in (a, b, c))
        floor = 4 * F32_EPS * float(np.max(np.abs(c)))
        diff = float(np.max(np.abs(a - b)))
        if REPORT is not None:
            REPORT.append((what, jax.tree_util.keystr(path), (diff - floor) / max(rounding, 1e-30)))
        assert diff <= factor * rounding + floor, (
            f"{what} at {jax.tree_util.keystr(path)}: float32 runs differ by {diff:.3g}, but the "
            f"reference's own float32 drift is {rounding:.3g} (allowed: {factor} x that "
            f"+ {floor:.3g})"
        )
