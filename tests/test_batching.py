"""Eq. 8 and Eq. 10 as pure functions."""

import math

import pytest

from tf_dynhp import batching


@pytest.mark.parametrize(
    "s,f,alpha",
    [(165.0, 1.0, 0.972), (3000.0, 0.3, 0.5), (10.0, 2.0, 0.99), (0.0, 1.0, 0.0), (1e4, 0.01, 1.0)],
)
def test_increment_is_floor_of_eq8(s, f, alpha):
    assert batching.batch_increment(s, f, alpha) == math.floor((1 - alpha) * s / f)


def test_increment_degenerate_loss_gives_no_growth():
    assert batching.batch_increment(5.0, 0.0, 0.5) == 0
    assert batching.batch_increment(float("nan"), 1.0, 0.5) == 0


@pytest.mark.parametrize("b,cand,cap,expected", [(16, 40, 511, 40), (16, 900, 511, 511), (100, 120, 90, 100), (16, 16, 16, 16)])
def test_next_batch_size_eq10(b, cand, cap, expected):
    assert batching.next_batch_size(b, cand, cap) == expected


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "0.9", True])
def test_alpha_bs_validation(alpha):
    with pytest.raises(ValueError, match="alpha_bs"):
        batching.check_alpha_bs(alpha)


@pytest.mark.parametrize("alpha", [0, 0.0, 0.972, 1, 1.0])
def test_alpha_bs_accepts_the_closed_interval(alpha):
    got = batching.check_alpha_bs(alpha)
    assert got == alpha and type(got) is float  # ints come back as floats


def test_alpha_bs_error_has_keras_shape():
    with pytest.raises(ValueError) as info:
        batching.check_alpha_bs(1.5)
    assert str(info.value) == (
        "Invalid value received for argument `alpha_bs`. Expected a float in [0, 1]. Received: alpha_bs=1.5"
    )
