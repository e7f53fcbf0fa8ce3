"""examples/recommender.py --quick: dense and lazy adamw both learn, lazy steps faster."""

import re

import _examples
import pytest
from _examples import EXAMPLES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTTING = {"MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu", "TQDM_DISABLE": "1"}


@pytest.mark.slow  # ~15 s of CPU: .ci/run's slow stage
def test_recommender_quick(tmp_path):
    plot = tmp_path / "rec.png"
    out = _examples.run_example(
        "recommender.py", "--quick", "--plot", plot, cwd=tmp_path, env=PLOTTING, timeout=120
    )
    k, random, popular, oracle = re.search(
        r"recall@(\d+) over all [\d,]+ items, \d+ held-out users: random ([^,\s]+), "
        r"most popular ([^,\s]+), oracle ([^,\s]+)",
        out,
    ).groups()
    k, random, popular, oracle = int(k), float(random), float(popular), float(oracle)
    runs = {}
    for name, ms, loss, recall in re.findall(
        r"(dense|lazy) adamw: ([0-9.]+) ms/step, final loss ([0-9.]+), recall@\d+ ([0-9.]+)", out
    ):
        runs[name] = {"ms": float(ms), "loss": float(loss), "recall": float(recall)}
    assert set(runs) == {"dense", "lazy"}, out
    for name, run in runs.items():
        assert run["loss"] < 0.69, f"{name} did not learn (BPR starts at ln 2 = 0.693):\n{out}"
        assert run["recall"] > 100 * random, f"{name}: recall@{k} near random:\n{out}"
        assert popular < run["recall"] <= oracle, f"{name} is not personalised:\n{out}"
    assert runs["lazy"]["ms"] < runs["dense"]["ms"], out
    assert plot.read_bytes()[:8] == PNG_MAGIC
    assert "lazy speedup:" in out


def test_recommender_docstring_has_its_command():
    assert "python examples/recommender.py" in (EXAMPLES / "recommender.py").read_text()
