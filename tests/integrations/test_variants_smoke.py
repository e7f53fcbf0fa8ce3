"""Smoke test of ``benchmarks/variants.py --quick`` (issue 15): every variant trains on both
tasks, paired with AdamW, the combination is built from stages with 8-bit states, and
``--table --write-readme`` fills its markers.

About a minute of CPU (one compile per variant and task): deselected by default, run by
.ci/run with ``-m benchmark_smoke``. No quality verdict is asserted (a few steps decide nothing).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "variants.py"
pytestmark = pytest.mark.benchmark_smoke


def run_script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def variants_module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import variants
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return variants


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("variants") / "variants_quick.json"
    done = run_script("--quick", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert out.with_suffix(".png").exists()
    return out, json.loads(out.read_text())


def test_every_variant_ran_paired_with_adamw(quick, variants_module):
    _, result = quick
    ran = set(result["summary"]["mlp"])
    assert ran | set(result["skipped"]) == set(variants_module.VARIANTS)
    # Only a variant still being written may be skipped, never a wrong call (TypeError).
    assert all(why.startswith("NotImplementedError") for why in result["skipped"].values())
    for task, splits in (("mlp", ("train", "test")), ("lm", ("test",))):
        assert set(result["summary"][task]) == ran
        for name in ran:
            for split in splits:
                s = result["summary"][task][name][split]
                assert s["rel_diff"]["n_seeds"] == 2 and len(s["per_seed"]) == 2, (task, name)
                assert s["vs_adamw"] in ("lower", "higher", "not resolved")
        adamw = result["summary"][task]["adamw"]
        assert all(adamw[split]["rel_diff"]["per_seed"] == [0.0, 0.0] for split in splits)
        assert np.isfinite([adamw[split]["mean"] for split in splits]).all()


def test_the_combination_is_cautious_ademamix_with_8bit_states(variants_module):
    tx, decayed = variants_module.cautious_ademamix_8bit(1e-3, 1e-2)
    params = {"w": jnp.ones((64, 128)), "b": jnp.zeros(128)}
    state = tx.init(params)
    assert decayed and isinstance(state[0], adamx.CautiousState)
    records = [
        leaf
        for leaf in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, adamx.QuantizedMoment))
        if isinstance(leaf, adamx.QuantizedMoment)
    ]
    assert len(records) == 3  # m, v and the slow m₂
    # 8-bit codes for the large leaf; the format keeps leaves under its min_size in float32.
    assert [r.codes["w"].dtype for r in records] == [jnp.uint8] * 3
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, state, params)
    assert all(np.isfinite(np.asarray(u)).all() for u in jax.tree.leaves(updates))


def test_table_is_written_between_markers(quick, tmp_path, variants_module):
    out, result = quick
    readme = tmp_path / "README.md"
    readme.write_text("head\n<!-- variants:begin -->\nold\n<!-- variants:end -->\ntail\n")
    done = run_script("--table", "--write-readme", "--out", str(out), "--readme", str(readme),
                      timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = readme.read_text()
    assert "old" not in text and text.startswith("head\n") and text.endswith("tail\n")
    assert "Quick run" in text and "| variant | MLP train loss |" in text
    for name in result["summary"]["mlp"]:
        assert f"| `{name}` |" in text
