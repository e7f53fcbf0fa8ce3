"""Test-session configuration: strictness on, so mistakes surface early; 8 CPU devices;
the ``matrix_full`` marker (the whole composition matrix) deselected unless asked for."""

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
}


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config, items):
    """Deselect the matrix cells outside the pairwise covering array unless the ``-m``
    expression names ``matrix_full`` (then every cell runs)."""
    if "matrix_full" in (config.getoption("markexpr") or ""):
        return
    kept, dropped = [], []
    for item in items:
        extra = item.get_closest_marker("matrix_full") and not item.get_closest_marker(
            "matrix_pairwise"
        )
        (dropped if extra else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
