"""Renamed stage keywords: the old name warns (naming the new one) and gives identical results."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx

G = [jnp.asarray([0.5, -2.0, 0.0]), jnp.asarray([1.5, 1.0, -0.25]), jnp.asarray([-1.0, 0.5, 4.0])]


def _updates(*stages):
    tx = optax.chain(*stages, adamx.scale_by_lr(1e-2))
    params = jnp.zeros(3)
    state, out = tx.init(params), []
    for g in G:
        u, state = tx.update(g, state, params)
        out.append(u)
    return out


def _assert_identical(old, new):
    for a, b in zip(old, new, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_scale_by_moments_eps_inf_is_eps():
    with pytest.warns(DeprecationWarning, match=r"scale_by_moments\(eps_inf=\.\.\.\).*use "
                      r"scale_by_moments\(eps=\.\.\.\)"):  # fmt: skip
        old = adamx.scale_by_moments(0.9, 0.999, infinity_norm=True, eps_inf=1e-3)
    new = adamx.scale_by_moments(0.9, 0.999, infinity_norm=True, eps=1e-3)
    _assert_identical(_updates(old, adamx.scale_by_rsqrt(0.0)),
                      _updates(new, adamx.scale_by_rsqrt(0.0)))  # fmt: skip


def test_scale_by_rsqrt_rectify_threshold_is_threshold():
    with pytest.warns(DeprecationWarning, match=r"scale_by_rsqrt\(rectify_threshold=\.\.\.\).*"
                      r"use scale_by_rsqrt\(threshold=\.\.\.\)"):  # fmt: skip
        old = adamx.scale_by_rsqrt(1e-8, b2=0.999, rectify_threshold=2.0)
    new = adamx.scale_by_rsqrt(1e-8, b2=0.999, threshold=2.0)
    moments = (adamx.scale_by_moments(0.9, 0.999), adamx.bias_correct(0.9, 0.999))
    _assert_identical(_updates(*moments, old), _updates(*moments, new))


@pytest.mark.parametrize("which", ["mu", "nu"])
def test_bias_correct_correct_mu_nu_are_bias_correction_mu_nu(which):
    """The stage takes optax.amsgrad's (and adamx.amsgrad's) names; the old ones warn."""
    with pytest.warns(DeprecationWarning, match=rf"bias_correct\(correct_{which}=\.\.\.\).*"
                      rf"use bias_correct\(bias_correction_{which}=\.\.\.\)"):  # fmt: skip
        old = adamx.bias_correct(0.9, 0.999, **{f"correct_{which}": False})
    new = adamx.bias_correct(0.9, 0.999, **{f"bias_correction_{which}": False})
    plain = adamx.bias_correct(0.9, 0.999)
    first = adamx.scale_by_moments(0.9, 0.999)
    tail = adamx.scale_by_rsqrt(1e-8)
    _assert_identical(_updates(first, old, tail), _updates(first, new, tail))
    assert not np.array_equal(_updates(first, new, tail)[0], _updates(first, plain, tail)[0])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: adamx.bias_correct(bias_correction_mu=False, correct_mu=False),
         r"correct_mu= is the deprecated name of bias_correction_mu="),
        (lambda: adamx.scale_by_moments(infinity_norm=True, eps=1e-3, eps_inf=1e-3),
         r"eps_inf= is the deprecated name of eps=; pass eps= only"),
        (lambda: adamx.scale_by_rsqrt(b2=0.999, threshold=5.0, rectify_threshold=5.0),
         r"rectify_threshold= is the deprecated name of threshold=; pass threshold= only"),
    ],
)  # fmt: skip
def test_old_and_new_keyword_together_fail(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_errors_name_the_keyword_the_caller_passed():
    with pytest.raises(ValueError, match=r"^eps=1e-08 is the epsilon of AdaMax"):
        adamx.scale_by_moments(eps=1e-8)
    with pytest.raises(ValueError, match=r"threshold must be a finite number >= 0"):
        adamx.scale_by_rsqrt(b2=0.999, threshold=-1.0)
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ValueError, match=r"rectify_threshold must be a finite number >= 0"),
    ):
        adamx.scale_by_rsqrt(b2=0.999, rectify_threshold=-1.0)


def test_the_aliases_pass_the_new_names():
    """adamax (eps in the max) and radam (threshold) build and step without a warning: a
    DeprecationWarning raised from inside adamx is an error in the test run (pyproject)."""
    params = {"w": jnp.ones(3)}
    for tx in (adamx.adamax(1e-3, eps_in_max=True), adamx.radam(1e-3)):
        state = tx.init(params)
        jax.jit(tx.update)(params, state, params)
