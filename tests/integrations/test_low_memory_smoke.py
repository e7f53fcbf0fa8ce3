"""Smoke test of ``benchmarks/low_memory.py --quick`` (issue 14): every configuration trains,
its bytes per parameter are the formats' arithmetic, adamx.adafactor ends on optax.adafactor's
bits, step times are measured, and ``--table --write-readme`` fills the markers.

A few minutes of CPU (one compile per option and task): deselected by default, run by .ci/run
with ``-m benchmark_smoke``. No quality or timing verdict is asserted (120 steps decide nothing).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "low_memory.py"
CONFIGS = ("4bit", "8bit_m_factored_v", "bf16_sr_8bit_m_factored_v", "bf16_sr_4bit_m_factored_v",
           "adafactor")  # fmt: skip
pytestmark = pytest.mark.benchmark_smoke


def run_script(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_NUMPY_DTYPE_PROMOTION", None)  # optax.adafactor is not strict-clean
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("low_memory") / "low_memory_quick.json"
    done = run_script("--quick", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert out.with_suffix(".png").exists()
    return out, json.loads(out.read_text())


def test_every_configuration_ran_and_is_judged(quick):
    _, result = quick
    assert result["quick"] is True and result["skipped"] == {}
    for name in CONFIGS:
        v = result["config_verdicts"][name]
        assert {"bytes", "bytes_met", "model_bytes_met", "quality_met", "met"} <= set(v), name
        for task in ("mlp", "lm"):
            assert result["summary"][task][name]["rel_diff_test"]["n_seeds"] == 2
            assert result["seconds_per_step"]["lm_step"][name] > 0
            assert result["seconds_per_step"]["optimizer_4M"][name] > 0


def test_bytes_per_parameter_are_the_formats_arithmetic(quick):
    _, result = quick
    big = {name: b["4096x4096"] for name, b in result["budgets"]["mlp"].items()}
    assert big["fp32"] == 12.0
    assert big["8bit"] == 4 + 2 * (1 + 4 / 256)
    assert big["4bit"] == 4 + 2 * (0.5 + 4 / 128)  # two codes a byte, a scale per 128
    factors = 2 * 4096 * 4 / 4096**2  # a float32 row and column per matrix
    assert big["8bit_m_factored_v"] == pytest.approx(4 + 1 + 4 / 256 + factors, abs=1e-12)
    assert big["bf16_sr_4bit_m_factored_v"] == pytest.approx(2 + 0.5 + 4 / 128 + factors)
    assert big["adafactor"] <= big["optax_adafactor"]


def test_adafactor_ends_on_optax_bits(quick):
    _, result = quick
    for task, same in result["adafactor_identity"].items():
        assert same["identical"], (task, same["per_seed"])


def test_tables_are_written_between_markers(quick, tmp_path):
    out, _ = quick
    readme = tmp_path / "README.md"
    readme.write_text(
        "head\n<!-- low_memory:begin -->\nold\n<!-- low_memory:end -->\nmid\n"
        "<!-- low_memory_budget:begin -->\nold\n<!-- low_memory_budget:end -->\ntail\n"
    )
    done = run_script("--table", "--write-readme", "--out", str(out), "--readme", str(readme),
                      timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = readme.read_text()
    assert "old" not in text and text.startswith("head\n") and text.endswith("tail\n")
    assert "| configuration | params + state B/param, 4096² tensor |" in text
    assert "fp32 params, 4-bit m and v" in text and "Quick run" in text
