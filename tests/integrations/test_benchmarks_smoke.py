"""Smoke test of ``benchmarks/gpu.py --quick`` (issue 11): it runs on CPU and writes its results.

No timing is asserted (this machine is not the one the benchmark is for): only that every
section ran every contender it names, without error, and that the JSON carries what the README
table and a reader need (device, versions, date, probe, per-call times, verdicts).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
SECTIONS = {"fp32", "many_leaf", "low_memory", "train"}
# About a minute of CPU: deselected by default, run by .ci/run with `-m benchmark_smoke`.
pytestmark = pytest.mark.benchmark_smoke


def run_script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device, as on a user's machine
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_quick")
    done = run_script("--quick", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(out.glob("*.json"))
    assert len(files) == 1 and files[0].name.endswith("_cpu_quick.json"), files
    return out, json.loads(files[0].read_text()), done.stdout


def test_quick_writes_conditions_probe_and_no_errors(quick_run):
    out, results, stdout = quick_run
    cond = results["conditions"]
    for key in ("date_utc", "device_kind", "backend", "jax", "optax", "torch", "adamx"):
        assert cond[key], key
    assert results["quick"] is True and results["errors"] == []
    assert results["probe_GBps"] > 0
    assert results["probe_GBps"] == max(
        results["probe_before"]["jax_GBps"], results["probe_after"]["jax_GBps"]
    )
    assert (out / next(out.glob("*.json")).with_suffix(".png").name).exists()
    assert stdout.rstrip().splitlines()[-1].startswith("| ")  # the table is printed last


def test_quick_runs_every_section_and_contender(quick_run):
    _, results, _ = quick_run
    groups = results["groups"]
    assert {g["section"] for g in groups} == SECTIONS
    for g in groups:
        assert g["skipped"] == {}, (g["section"], g.get("tree"), g["skipped"])
        for name, case in g["cases"].items():
            assert case["per_call_ms"] > 0 and case["pipelined_ms"] > 0, name
            assert case["state_bytes"] > 0, name
    many = next(g for g in groups if g["section"] == "many_leaf")
    for name in ("optax.adamw", "optax.flatten", "adamx.pack", "adamx.multi_tensor"):
        assert many["cases"][name]["compile_s"] > 0, name
        assert len(many["cases"][name]["per_call_samples_ms"]) >= 3, name
    assert {"torch fused", "torch foreach"} <= set(many["cases"])
    # adamx.adamw is optax.adamw's program: bit-identical after the first step.
    fp32 = [g for g in groups if g["section"] == "fp32"]
    assert all(
        g["cases"]["adamx.adamw"]["first_step_vs_optax.adamw"]["bit_identical"] for g in fp32
    )
    # Torch takes the same step from the same data (shared by DLPack): close, not equal.
    assert all(
        g["cases"]["torch fused"]["first_step_vs_optax.adamw"]["max_abs_diff"] < 1e-5 for g in fp32
    )


def test_quick_low_memory_bytes_and_training_step(quick_run):
    _, results, _ = quick_run
    low = next(g for g in results["groups"] if g["section"] == "low_memory")
    per_param = {c: r["state_bytes"] / low["params"] for c, r in low["cases"].items()}
    assert per_param["adamx.adamw"] >= 8.0  # two float32 moments
    assert per_param["adamx bf16 moments (SR)"] < 0.6 * per_param["adamx.adamw"]
    assert per_param["adamx 8-bit moments"] < 0.35 * per_param["adamx.adamw"]
    train = next(g for g in results["groups"] if g["section"] == "train")
    for name, case in train["cases"].items():
        assert case["tokens_per_s"] > 0 and math.isfinite(case["loss_after"]), name
    assert {"optax.adamw", "adamx.pack"} <= set(train["cases"])


def test_verdicts_are_reported_not_asserted(quick_run):
    _, results, stdout = quick_run
    goals = {v["goal"] for v in results["verdicts"]}
    assert "leaves_4000: adamx.pack / optax.flatten time" in goals
    assert all(set(v) >= {"goal", "value", "target", "met"} for v in results["verdicts"])
    assert "| goal | value | target | verdict |" in stdout


def test_table_mode_reads_results_files(quick_run):
    out, _, _ = quick_run
    done = run_script("--table", "--results", str(out), "--include-quick", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| tree | floor (28 B/param) |" in done.stdout
    empty = run_script("--table", "--results", str(out), timeout=120)  # quick runs left out
    assert "No GPU results yet" in empty.stdout


def test_sparse_rows_quick_measures_every_contender_and_writes_the_table(tmp_path):
    """``benchmarks/sparse_rows.py --quick`` (issue 13): every contender measured in its own
    process, the lazy steps agree with dense AdamW / torch SparseAdam after one step, the
    compiled lazy step has no table-sized work, and ``--table --write-readme`` fills markers."""
    script = ROOT / "benchmarks" / "sparse_rows.py"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = tmp_path / "sparse_rows_quick.json"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert out.with_suffix(".png").exists()
    for key in ("date_utc", "machine", "jax", "torch", "load_average", "load_average_after"):
        assert results["conditions"][key], key
    (size,) = results["sizes"].values()
    for name, case in size["contenders"].items():
        assert "skipped" not in case, (name, case.get("skipped"))
        assert case["per_call_ms"] > 0 and case["max_rss_bytes"] > 0, name
    lazy = size["contenders"]["lazy adamw"]
    assert lazy["traffic"]["table_passes"] == [] and lazy["traffic"]["sorts"] == []
    assert lazy["memory"]["temp_size_in_bytes"] < size["table_bytes"] / 10
    diffs = size["first_step_max_abs_diff"]
    assert diffs["lazy adamw vs dense adamw (touched rows)"] < 1e-6, diffs
    assert diffs["lazy adam vs torch SparseAdam"] < 1e-6, diffs  # adam(epsilon_hat=True)
    traffic = next(v for v in results["verdicts"] if "traffic" in v["goal"])
    assert traffic["met"] is True, traffic
    readme = tmp_path / "README.md"
    readme.write_text("head\n<!-- sparse_rows:begin -->\nold\n<!-- sparse_rows:end -->\ntail\n")
    table = subprocess.run(
        [sys.executable, str(script), "--table", "--write-readme", "--out", str(out),
         "--readme", str(readme)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr[-3000:]
    text = readme.read_text()
    assert "old" not in text and text.startswith("head\n") and text.endswith("tail\n")
    assert "| table | contender | per step (median) |" in text and "| goal | value |" in text
