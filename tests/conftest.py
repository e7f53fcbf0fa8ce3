"""Test-session configuration: strictness on, so mistakes surface early."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax

# Implicit rank promotion hides shape bugs (a (3,) moment broadcasting against a (1,) one).
jax.config.update("jax_numpy_rank_promotion", "raise")
