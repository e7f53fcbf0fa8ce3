"""8-bit moments on an 8-device CPU mesh: the state follows the parameters' sharding.

The 8 devices are the test run's own (``conftest.py`` sets ``jax_num_cpu_devices``); the
module fixture runs the steps once per axis type and the tests read its report.
Reference: the same steps on one device, unsharded.
"""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import adamx

SHAPES = {"lead": (64, 2048), "last": (16, 4096), "small": (2048,)}
SPECS = {"lead": ("x", None), "last": (None, "x"), "small": ()}
# A leading-axis split keeps whole rows; a last-axis split of 4096 into 8 x 512 gives each
# device 2 whole blocks of 256. Either way every large state array is split 8 ways and no
# block of 8-bit codes straddles two devices. Small leaves (a step count, PRNG keys, the
# format's configuration tag, the replicated "small" moment) may stay whole.
SMALL = 2 * 2048 * 4


def _run_checks(mode: str) -> dict:

    kind = AxisType.Explicit if mode == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((8,), ("x",), (kind,))
    keys = jax.random.split(jax.random.key(0), 4)
    params = {k: jax.random.normal(keys[0], s) for k, s in SHAPES.items()}
    grads = [
        {k: jax.random.normal(keys[1 + j], s) * 10.0 ** (j - 1) for k, s in SHAPES.items()}
        for j in range(3)
    ]
    tx = adamx.adam(1e-2, mu_dtype=adamx.blockwise_8bit(True), nu_dtype=adamx.blockwise_8bit(False))

    def run(params, grads):
        state = tx.init(params)
        step = jax.jit(tx.update)
        for g in grads:
            u, state = step(g, state, params)
            params = optax.apply_updates(params, u)
        return params, state

    ref_params, ref_state = run(params, grads)

    def put(tree):
        return {
            k: jax.device_put(v, NamedSharding(mesh, PartitionSpec(*SPECS[k])))
            for k, v in tree.items()
        }

    with jax.set_mesh(mesh):
        params_s, state_s = run(put(params), [put(g) for g in grads])

    report = {"shards": {}, "equal": {}}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state_s)[0]:
        report["shards"][jax.tree_util.keystr(path)] = {
            "shape": list(leaf.shape),
            "dtype": str(leaf.dtype),
            "nbytes": int(leaf.nbytes),
            "shards": [list(s.data.shape) for s in leaf.addressable_shards],
            "distinct": len({str(s.index) for s in leaf.addressable_shards}),
        }
    flat_ref = jax.tree_util.tree_flatten_with_path((ref_params, ref_state))[0]
    flat_s = jax.tree.leaves((params_s, state_s))
    for (path, a), b in zip(flat_ref, flat_s, strict=True):
        report["equal"][jax.tree_util.keystr(path)] = bool(np.array_equal(np.asarray(a), b))
    return report


@pytest.fixture(scope="module", params=["auto", "explicit"])
def report(request, eight_devices):
    return _run_checks(request.param)


def test_quantized_state_is_sharded_like_the_parameter(report):
    leaves = report["shards"]
    assert any(v["dtype"] == "uint8" for v in leaves.values()), leaves  # 8-bit codes exist
    for path, leaf in leaves.items():
        if leaf["nbytes"] <= SMALL:
            continue
        assert leaf["distinct"] == 8, (path, leaf)  # split over the 8 devices, 1/8 each
        assert all(np.prod(s) * 8 == np.prod(leaf["shape"]) for s in leaf["shards"]), (path, leaf)
        if leaf["dtype"] == "uint8":  # codes (..., block): a block is never split
            assert all(s[-1] == leaf["shape"][-1] for s in leaf["shards"]), (path, leaf)


def test_sharded_run_equals_the_unsharded_run_bit_for_bit(report):
    assert report["equal"] and all(report["equal"].values()), report["equal"]
