"""examples/monitor.py runs as a user runs it: a few steps of each variant, a table, a PNG."""

import re

import pytest
from _examples import EXAMPLES, run_example

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTTING = {"MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu"}


@pytest.mark.slow  # ~15 s of CPU (one compiled scan per variant): .ci/run's slow stage
def test_monitor_example_logs_and_plots(tmp_path):
    out = run_example(
        "monitor.py", "--steps", 6, "--out", tmp_path / "m.png", cwd=tmp_path, env=PLOTTING
    )
    for variant in ("adamw lr=0.003", "cautious_adamw lr=0.003", "stable_adamw lr=0.03"):
        assert f"\n{variant}\n" in out
    rows = re.findall(r"^\s+(\d+)\s+([0-9.]+)\s+([0-9.e+-]+)\s", out, re.MULTILINE)
    assert len(rows) >= 4 * 6 and all(float(rms) > 0 for _, _, rms in rows)
    assert (tmp_path / "m.png").read_bytes()[:8] == PNG_MAGIC


def test_monitor_example_has_a_docstring_with_its_command():
    assert "python examples/monitor.py" in (EXAMPLES / "monitor.py").read_text()
