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
    "matrix_full": "the whole composition matrix (test_matrix.py); run with -m matrix_full",
}


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config, items):
    """Deselect ``matrix_full`` tests unless the ``-m`` expression names the marker."""
    if "matrix_full" in (config.getoption("markexpr") or ""):
        return
    kept, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("matrix_full") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
