"""Test-session configuration: strictness on, so mistakes surface early; 8 CPU devices;
the matrix cells beyond its pairwise covering array deselected unless a ``-m`` asks for them."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax

# Implicit rank promotion hides shape bugs (a (3,) moment broadcasting against a (1,) one).
jax.config.update("jax_numpy_rank_promotion", "raise")
# The matrix's sharded paths need a mesh of 8 devices. On CPU this only splits the host into
# 8 logical devices (set before any backend starts); a single-device program is unchanged.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    jax.config.update("jax_num_cpu_devices", 8)

MARKERS = {
    "matrix_full": "every cell of the composition matrix (test_matrix.py): -m matrix_full",
    "matrix_pairwise": "the matrix's pairwise covering array, run by default",
    "matrix_ci": "every format x path x host of the matrix for CI's optimizers: -m matrix_ci",
    "benchmark_smoke": "benchmarks/gpu.py --quick on CPU (about a minute): -m benchmark_smoke",
}
# Markers whose tests run only when a -m expression names them (.ci/run does).
OPT_IN = ("matrix_", "benchmark_smoke")


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config, items):
    """Deselect the opt-in tests (the matrix cells outside the pairwise covering array, the
    benchmark smoke run) unless the ``-m`` expression names them: then ``-m`` alone selects,
    e.g. ``-m matrix_ci``."""
    if any(name in (config.getoption("markexpr") or "") for name in OPT_IN):
        return
    kept, dropped = [], []
    for item in items:
        extra = item.get_closest_marker("matrix_full") and not item.get_closest_marker(
            "matrix_pairwise"
        )
        extra = extra or item.get_closest_marker("benchmark_smoke")
        (dropped if extra else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
