"""The small flax model the integration suites train in ``nnx.Optimizer``, and its data.

One definition for ``integrations/test_flax.py`` (adamx against optax) and
``integrations/test_paths_nnx.py`` (multi_tensor against the per-leaf chain). Importing
this module skips the importing test module where flax is not installed.
"""

import jax
import numpy as np
import optax
import pytest

nnx = pytest.importorskip("flax.nnx")


class NnxMLP(nnx.Module):
    """Linear(6, 8) -> LayerNorm -> relu -> Linear(8, 3): kernels, biases and a norm's scale."""

    def __init__(self, rngs):
        self.hidden = nnx.Linear(6, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.norm(self.hidden(x))))


def batch() -> tuple[np.ndarray, np.ndarray]:
    """One fixed batch: 16 inputs of 6 features and their labels in {0, 1, 2}."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((16, 6)).astype(np.float32), rng.integers(0, 3, 16)


def loss(model, x, y) -> jax.Array:
    """Mean cross-entropy of ``model(x)`` against the integer labels ``y``."""
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
