"""The keyed-hash random bits behind stochastic rounding: uniform, uncorrelated, positional.

References: binomial and chi-square bounds (scipy.stats), Pearson correlation in NumPy.
Unbiased rounding with these bits is tested in test_low_precision_params.py and
test_low_memory.py; sharded == unsharded in test_low_memory_sharding.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adamx.formats.random_bits import random_bits, uniform

stats = pytest.importorskip("scipy.stats")
N = 1 << 18


def _key(seed):
    return jax.random.key_data(jax.random.key(seed))


def test_every_bit_is_fair_and_bytes_are_uniform():
    words = np.asarray(random_bits(_key(0), (N,)))
    bits = (words[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    four_sigma = 4 * 0.5 / np.sqrt(N)
    np.testing.assert_array_less(np.abs(bits.mean(axis=0) - 0.5), four_sigma)
    for shift in (0, 8, 16, 24):  # each byte of the word, 256 bins
        counts = np.bincount((words >> shift) & 0xFF, minlength=256)
        chi2 = ((counts - N / 256) ** 2 / (N / 256)).sum()
        assert chi2 < stats.chi2.ppf(0.9999, 255), (shift, chi2)


def test_neighbours_keys_and_steps_are_uncorrelated():
    key = jax.random.key(1)
    step_keys = [jax.random.key_data(k) for k in jax.random.split(key, 2)]
    a = np.asarray(uniform(step_keys[0], (N,)), np.float64)
    b = np.asarray(uniform(step_keys[1], (N,)), np.float64)  # the next step's draw
    c = np.asarray(uniform(_key(2), (N,)), np.float64)  # another seed
    bound = 4 / np.sqrt(N)  # 4 sigma of a correlation of independent uniforms
    for x, y in ((a[:-1], a[1:]), (a, b), (a, c), (a[: N // 2], a[N // 2 :])):
        assert abs(np.corrcoef(x, y)[0, 1]) < bound
    assert a.min() >= 0.0 and a.max() < 1.0
    assert abs(a.mean() - 0.5) < 4 * np.sqrt(1 / 12 / N)


def test_bits_depend_only_on_the_key_and_the_flat_position():
    key = _key(3)
    flat = np.asarray(random_bits(key, (8192,)))
    np.testing.assert_array_equal(np.asarray(random_bits(key, (64, 128))).ravel(), flat)
    np.testing.assert_array_equal(np.asarray(random_bits(key, (4, 8, 256))).ravel(), flat)
    jitted = jax.jit(lambda k: random_bits(k, (64, 128)))(key)
    np.testing.assert_array_equal(np.asarray(jitted).ravel(), flat)
    assert random_bits(key, ()).shape == () and random_bits(key, ()).dtype == jnp.uint32
    assert not np.array_equal(np.asarray(random_bits(_key(4), (8192,))), flat)
