"""The harness of the multi-device checks: a test module that is also a script.

Run as a script in a subprocess with ``n`` host devices (``run_checks``), it runs every
check of its ``CHECKS`` table and prints one JSON verdict per check; its module fixture
(``verdicts``) starts that subprocess once and returns the verdicts, so each pytest test
reports one check, with the subprocess's traceback on failure. The device count must be
set before JAX starts, which is why the checks run in a process of their own.
"""

import json
import os
import subprocess
import sys
import traceback

import pytest

MARK = "VERDICTS "


def run_checks(checks: dict, n: int) -> None:
    """The subprocess side: run each check, print ``{name: "ok" or traceback}``."""
    import jax

    jax.config.update("jax_numpy_rank_promotion", "raise")
    assert jax.device_count() == n, jax.devices()
    verdicts = {}
    for name, check in checks.items():
        try:
            check()
            verdicts[name] = "ok"
        except Exception:
            verdicts[name] = traceback.format_exc()
    print(MARK + json.dumps(verdicts))


def verdicts_of(script: str, n: int, timeout: int) -> dict:
    """The main side: run ``script`` with ``n`` host devices and return its verdicts."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run(
        [sys.executable, script], env=env, capture_output=True, text=True, timeout=timeout
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"the {n}-device subprocess failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len(MARK) :])


def report(verdicts: dict, check: str, n: int) -> None:
    """Fail with the subprocess's traceback unless ``check`` passed."""
    if verdicts[check] != "ok":
        pytest.fail(f"check {check} failed in the {n}-device subprocess:\n{verdicts[check]}")
