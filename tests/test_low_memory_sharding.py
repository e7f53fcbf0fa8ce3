"""8-bit moments on an 8-device CPU mesh: the state follows the parameters' sharding.

The 8 devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before jax
starts, so the checks run in one subprocess (this file run as a script), which prints
a JSON report; the tests read it. Reference: the same steps on one device, unsharded.
"""

import json
import os
import subprocess
import sys

import pytest

SHAPES = {"lead": (64, 2048), "last": (16, 4096), "small": (2048,)}
SPECS = {"lead": ("x", None), "last": (None, "x"), "small": ()}
# Per-device shapes of the codes (…, n_blocks, 256) and scales (…, n_blocks):
# a leading-axis split keeps whole rows; a last-axis split of 4096 into 8 x 512
# gives each device 2 whole blocks.
EXPECTED_SHARDS = {
    "lead": {"codes": [8, 8, 256], "scale": [8, 8]},
    "last": {"codes": [16, 2, 256], "scale": [16, 2]},
}


def _run_checks(mode: str) -> dict:
    import jax
    import numpy as np
    import optax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    import adamx

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
    for moment in ("mu", "nu"):
        for name in ("lead", "last"):
            q = getattr(state_s[0], moment)[name]
            report["shards"][f"{moment}/{name}"] = {
                field: [list(s.data.shape) for s in getattr(q, field).addressable_shards]
                for field in ("codes", "scale")
            }
    flat_ref = jax.tree_util.tree_flatten_with_path((ref_params, ref_state))[0]
    flat_s = jax.tree.leaves((params_s, state_s))
    for (path, a), b in zip(flat_ref, flat_s, strict=True):
        report["equal"][jax.tree_util.keystr(path)] = bool(np.array_equal(np.asarray(a), b))
    return report


@pytest.fixture(scope="module", params=["auto", "explicit"])
def report(request):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run(
        [sys.executable, __file__, request.param],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_quantized_state_is_sharded_like_the_parameter(report):
    for key, shards in report["shards"].items():
        expected = EXPECTED_SHARDS[key.split("/")[1]]
        assert len(shards["codes"]) == 8, key
        assert all(s == expected["codes"] for s in shards["codes"]), (key, shards["codes"])
        assert all(s == expected["scale"] for s in shards["scale"]), (key, shards["scale"])


def test_sharded_run_equals_the_unsharded_run_bit_for_bit(report):
    assert report["equal"] and all(report["equal"].values()), report["equal"]


if __name__ == "__main__":
    print(json.dumps(_run_checks(sys.argv[1])))
