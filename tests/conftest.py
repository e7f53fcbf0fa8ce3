"""Test-session configuration: strictness on, so mistakes surface early; 8 CPU devices;
the matrix cells beyond its pairwise covering array deselected unless a ``-m`` asks for them."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import pytest

# Implicit rank promotion hides shape bugs (a (3,) moment broadcasting against a (1,) one).
jax.config.update("jax_numpy_rank_promotion", "raise")
# Implicit dtype promotion hides precision bugs (a bfloat16 moment silently widened, an int32
# step count promoted): adamx writes every cast out. References that are not strict-clean
# (optax, Keras) run under the standard rules through _promotion.py. THE switch: with it off,
# JAX_NUMPY_DTYPE_PROMOTION=strict in the environment turns strict on for a run.
STRICT_PROMOTION = True
if STRICT_PROMOTION:
    jax.config.update("jax_numpy_dtype_promotion", "strict")
# The sharded tests (the matrix's sharded paths, tests/paths/test_sharding*.py, ...) need a
# mesh of 8 devices, in this process. On CPU this only splits the host into 8 logical devices
# (set before any backend starts); a single-device program is unchanged.
N_DEVICES = 8
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    jax.config.update("jax_num_cpu_devices", N_DEVICES)

MARKERS = {
    "matrix_full": "every cell of the composition matrix (test_matrix.py): -m matrix_full",
    "matrix_each": "every value of every matrix axis at least once, run by default",
    "matrix_pairwise": "every pair of the matrix's axis values: -m matrix_pairwise",
    "matrix_ci": "every format x path x host of the matrix for CI's optimizers: -m matrix_ci",
    "benchmark_smoke": "the benchmarks' --quick runs on CPU (gpu, low_memory, variants)",
    "slow": "long reference streams and exhaustive sweeps, kept out of the default run: -m slow",
    "docs_site": "the documentation site built (warnings are errors) and rendered in headless "
    "Chromium: -m docs_site (needs the docs extra and chromium)",
}
# Markers whose tests run only when a -m expression names them (.ci/run does).
OPT_IN = ("matrix_", "benchmark_smoke", "slow", "docs_site")


@pytest.fixture(scope="session")
def eight_devices() -> list:
    """The run's 8 devices, for tests that build a mesh over them (``jax.make_mesh((8,), ...)``).

    They live in this process: ``jax_num_cpu_devices`` above. Skips where the backend has
    fewer (one accelerator, or ``XLA_FLAGS`` asking for another CPU device count).
    """
    if jax.device_count() < N_DEVICES:
        pytest.skip(f"needs {N_DEVICES} devices, the backend has {jax.device_count()}")
    return jax.devices()[:N_DEVICES]


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config, items):
    """Deselect the opt-in tests (the matrix cells outside the default layer, matrix_each, the
    benchmark smoke run, the slow tests, the docs site) unless the ``-m`` expression names them:
    then ``-m`` alone selects, e.g. ``-m matrix_ci``."""
    if any(name in (config.getoption("markexpr") or "") for name in OPT_IN):
        return
    kept, dropped = [], []
    for item in items:
        extra = item.get_closest_marker("matrix_full") and not item.get_closest_marker(
            "matrix_each"
        )
        extra = extra or any(
            item.get_closest_marker(m) for m in ("benchmark_smoke", "slow", "docs_site")
        )
        (dropped if extra else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
