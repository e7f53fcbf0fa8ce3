"""The wrappers (cautious, clip_by_update_rms, monitor) take an optax transformation: anything
else is refused at construction, naming the argument and what it must be."""

import pytest

import adamx


@pytest.mark.parametrize("wrapper", [adamx.cautious, adamx.clip_by_update_rms, adamx.monitor])
@pytest.mark.parametrize("tx", [3, adamx.scale_by_rsqrt, None])
def test_a_non_transformation_is_refused_by_name(wrapper, tx):
    with pytest.raises(TypeError, match=r"tx must be an optax.GradientTransformation \(.*\), got"):
        wrapper(tx)
