"""The quickstart and custom_chain examples run as a user runs them."""

from _examples import run_example as _run


def test_quickstart_trains_and_matches_optax_exactly():
    out = _run("quickstart.py", "--epochs", "3")
    assert "epoch   3/3" in out
    assert out.strip().endswith("largest parameter difference from optax.adamw: 0.0")
    loss = float(out.split("final loss:")[1].split()[0])
    assert loss < 0.5  # 3 epochs already fit the digits well (chance level is ln 10 = 2.3)


def test_custom_chain_shows_each_stage():
    out = _run("custom_chain.py")
    assert "3.16x larger" in out  # (1 - 0.9) / sqrt(1 - 0.999) without bias correction
    assert "update of b: [-0. -0.]" in out or "update of b: [0. 0.]" in out
