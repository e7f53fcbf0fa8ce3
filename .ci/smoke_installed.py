"""A smoke run of the INSTALLED adamx (run by .ci/wheel-smoke in a fresh venv, outside the repo).

    python smoke_installed.py [--doctests]

Checks that ``adamx`` is imported from the venv's site-packages (not from a source tree), prints
its version from the installed metadata, trains a few steps of ``adamx.adamw`` against
``optax.adamw`` (bit for bit) and of 8-bit moments on a packed tree against the per-leaf run (bit
for bit, op by op), and with ``--doctests`` runs every docstring example of every adamx module
(stdlib doctest: they need only the runtime dependencies).
"""

import os

# The examples of the sharded paths build a mesh of 8 host devices, as the test run does.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import doctest
import importlib
import importlib.metadata
import pkgutil
import sys
import sysconfig
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx


def check_installed() -> None:
    where = Path(adamx.__file__).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert where.is_relative_to(site), f"adamx imported from {where}, not from {site}"
    version = importlib.metadata.version("adamx")
    assert adamx.__version__ == version, (adamx.__version__, version)
    print(f"adamx {version} (installed metadata) from {where.parent}")


def check_runtime_only() -> None:
    """No requirement of an extra (examples, test, docs) got installed with the wheel."""
    installed = {
        d.metadata["Name"].lower().replace("_", "-") for d in importlib.metadata.distributions()
    }
    extras = {
        r.split(";")[0].split("=")[0].split(">")[0].strip().lower().replace("_", "-")
        for r in importlib.metadata.requires("adamx") or []
        if "extra ==" in r
    }
    leaked = sorted((extras | {"torch", "flax", "keras", "pytest"}) & installed)
    assert not leaked, f"installed with the runtime dependencies only, yet present: {leaked}"
    print(f"runtime only: {len(installed)} distributions, none of the extras' {len(extras)}")


def params() -> dict:
    rng = np.random.default_rng(0)
    shapes = {"w": (64, 128), "b": (128,), "ln": (64,), "emb": (10, 30)}
    return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def loss(p: dict) -> jax.Array:
    return sum(jnp.sum(jnp.sin(x) ** 2) for x in jax.tree.leaves(p))


def train(tx: optax.GradientTransformation, p, unpack, steps: int = 5):
    state = tx.init(p)
    for _ in range(steps):
        grads = jax.grad(lambda q: loss(unpack(q)))(p)
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
    return unpack(p)


def same_bits(got: dict, want: dict, what: str) -> None:
    for k in want:
        a, b = np.asarray(got[k]), np.asarray(want[k])
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32)), (
            f"{what}: {k} differs (max |diff| {np.max(np.abs(a - b))})"
        )
    print(f"{what}: bit for bit over {len(want)} leaves")


def check_training() -> None:
    start = params()
    # jit on both sides: the same operations compile to the same program.
    got = jax.jit(lambda p: train(adamx.adamw(1e-2), p, lambda q: q))(start)
    want = jax.jit(lambda p: train(optax.adamw(1e-2), p, lambda q: q))(start)
    same_bits(got, want, "adamx.adamw vs optax.adamw, 5 steps")

    def eight_bit() -> optax.GradientTransformation:
        fmt = adamx.blockwise_8bit
        return adamx.adamw(1e-2, mu_dtype=fmt(), nu_dtype=fmt())

    # Op by op, the packed and per-leaf runs execute the same operations: "w" (8,192 elements)
    # is quantized and stays loose, the small leaves share one float32 bucket.
    with jax.disable_jit():
        packed = train(eight_bit(), adamx.pack(start), lambda q: q.unpack())
        loose = train(eight_bit(), start, lambda q: q)
    same_bits(packed, loose, "8-bit adamw on adamx.pack(params) vs per leaf, 5 steps")
    assert loss(packed) < loss(start), (float(loss(packed)), float(loss(start)))
    gap = max(float(jnp.max(jnp.abs(packed[k] - want[k]))) for k in want)
    print(f"8-bit adamw vs float32 optax.adamw after 5 steps: max |diff| {gap:.2e}")
    assert gap < 1e-2, gap


def run_doctests() -> int:
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    names = [m.name for m in pkgutil.walk_packages(adamx.__path__, "adamx.")]
    failed = tried = 0
    for name in ["adamx", *names]:
        result = doctest.testmod(importlib.import_module(name), optionflags=flags)
        failed, tried = failed + result.failed, tried + result.attempted
    print(f"doctests: {tried} examples in {len(names) + 1} modules, {failed} failed")
    assert tried > 0, "no docstring examples found"
    return failed


def main() -> int:
    check_installed()
    check_runtime_only()
    check_training()
    return 1 if "--doctests" in sys.argv and run_doctests() else 0


if __name__ == "__main__":
    sys.exit(main())
