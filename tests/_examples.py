"""The examples run as a user runs them: a script in a fresh process, with JAX's defaults.

The test run's own settings stay out of it: ``XLA_FLAGS`` (a device count) and
``JAX_NUMPY_DTYPE_PROMOTION`` (strict promotion, which the examples' optax comparisons would
not survive, see ``_promotion``). The examples that plot get a headless backend and no
progress bars.
"""

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TEST_RUN_ONLY = ("XLA_FLAGS", "JAX_NUMPY_DTYPE_PROMOTION")


def run_example(name: str, *args, cwd=None, env: dict | None = None, timeout: int = 300) -> str:
    """Run ``examples/<name> *args``; its stdout, or a failure with its output."""
    environ = {k: v for k, v in os.environ.items() if k not in TEST_RUN_ONLY}
    environ.update(env or {})
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *map(str, args)],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout
