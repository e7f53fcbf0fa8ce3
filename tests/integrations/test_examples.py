"""The examples stay runnable: each runs a few steps in a subprocess and saves its plot."""

import re

import _examples
import pytest
from _examples import EXAMPLES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTTING = {"MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu", "TQDM_DISABLE": "1"}


def run_example(name, *args, cwd):
    return _examples.run_example(name, *args, cwd=cwd, env=PLOTTING)


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"


@pytest.mark.slow  # ~15 s of CPU: .ci/run's slow stage (nnx hosts run in the matrix by default)
def test_flax_nnx_mlp(tmp_path):
    out = run_example("flax_nnx_mlp.py", "--steps", 4, "--plot", tmp_path / "p.png", cwd=tmp_path)
    accuracy = float(re.search(r"final test accuracy: ([0-9.]+)", out).group(1))
    assert 0.0 <= accuracy <= 1.0
    assert_png(tmp_path / "p.png")


@pytest.mark.slow  # ~45 s of CPU: .ci/run's slow stage
def test_transformer_lm_stops_and_resumes(tmp_path):
    tiny = ["--steps", 6, "--save-every", 2, "--depth", 1, "--width", 16, "--context", 16]
    tiny += ["--batch", 4, "--sample-chars", 20, "--ckpt-dir", tmp_path / "ckpt"]
    first = run_example("transformer_lm.py", *tiny, "--stop-at", 4, cwd=tmp_path)
    assert "stopped at step 4" in first
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [
        2,
        4,
    ]
    assert not (tmp_path / "transformer_lm.png").exists()

    second = run_example("transformer_lm.py", *tiny, cwd=tmp_path)
    assert "resumed from step 4" in second
    assert re.search(r"\d+/\d+ sampled sentences are grammatical", second)
    assert_png(tmp_path / "transformer_lm.png")


@pytest.mark.slow  # ~11 s of CPU: .ci/run's slow stage
def test_sharded_training(tmp_path):
    out = run_example(
        "sharded_training.py",
        *("--steps", 3, "--hidden", 64, "--batch", 64, "--plot", tmp_path / "s.png"),
        cwd=tmp_path,
    )
    assert "mesh: 8 devices" in out
    ratio = float(re.search(r"ZeRO-1 keeps ([0-9.]+)x less optimizer state", out).group(1))
    assert 7.0 < ratio <= 8.0, out  # 1/8 of m and v; the 10-wide last bias stays replicated
    gap = float(re.search(r"largest parameter difference after 3 steps: (\S+)", out).group(1))
    assert gap < 1e-5
    assert_png(tmp_path / "s.png")


@pytest.mark.parametrize("name", ["flax_nnx_mlp.py", "transformer_lm.py", "sharded_training.py"])
def test_example_has_a_docstring_with_its_command(name):
    text = (EXAMPLES / name).read_text()
    assert f"python examples/{name}" in text
