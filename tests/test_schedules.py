"""Specification of ddpm_lib.schedules (Chapter 1)."""

import math

import pytest
import torch

from ddpm_lib.schedules import (
    check_betas,
    cosine_alpha_bar,
    cosine_beta_schedule,
    get_beta_schedule,
    linear_beta_schedule,
)

# Golden values from an independent 30-digit computation (mpmath) of the defining formulas.
# float64 rounding over 1000 products stays below 1e-13 relative; 1e-12 leaves a margin.
REL = 1e-12
EPS = torch.finfo(torch.float64).eps


def test_linear_schedule_golden_values():
    """eq-ch1-linear: DDPM's β_t and ᾱ_t (T = 1000) match a 30-digit evaluation of the formula."""
    b = linear_beta_schedule(1000)
    ab = torch.cumprod(1 - b, 0)
    assert b[0].item() == pytest.approx(1e-4, rel=REL)
    assert b[499].item() == pytest.approx(0.01004004004004004004, rel=REL)
    assert b[-1].item() == pytest.approx(0.02, rel=REL)
    assert ab[499].item() == pytest.approx(0.0785872428817782373, rel=REL)
    assert ab[-1].item() == pytest.approx(4.03582976537568331e-05, rel=REL)


def test_cosine_schedule_golden_values():
    """eq-ch1-cosine: β_t and ᾱ_t (T = 1000) match a 30-digit evaluation of the formula."""
    b = cosine_beta_schedule(1000)
    ab = torch.cumprod(1 - b, 0)
    assert b[0].item() == pytest.approx(4.12842248217778024e-05, rel=REL)
    assert b[499].item() == pytest.approx(0.00314588623047819635, rel=REL)
    assert b[-1].item() == pytest.approx(0.999, rel=REL)
    assert ab[499].item() == pytest.approx(0.493843590440637713, rel=REL)


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
def test_schedules_are_float64_of_shape_T_inside_unit_interval(name):
    b = get_beta_schedule(name, 37)
    assert b.dtype == torch.float64 and b.shape == (37,)
    assert ((b > 0) & (b < 1)).all()


def test_linear_schedule_rises_from_start_to_end():
    b = linear_beta_schedule(10, 0.1, 0.5)
    assert torch.all(b[1:] > b[:-1])
    assert b[0].item() == pytest.approx(0.1) and b[-1].item() == pytest.approx(0.5)


@pytest.mark.parametrize("T, start, end", [(2, 1e-4, 0.02), (7, 0.1, 0.5), (1000, 1e-4, 0.02)])
def test_linear_schedule_is_the_straight_line_through_its_end_points(T, start, end):
    """eq-ch1-linear: β_t = β_1 + (t-1)/(T-1) (β_T - β_1) at every book step t = 1..T."""
    b = linear_beta_schedule(T, start, end)
    expected = torch.tensor(
        [start + (t - 1) / (T - 1) * (end - start) for t in range(1, T + 1)], dtype=torch.float64
    )
    # Both sides are a few float64 roundings of numbers no larger than β_T.
    torch.testing.assert_close(b, expected, rtol=0, atol=8 * EPS * end)


def test_cosine_alpha_bar_follows_cos_squared_where_unclipped():
    """eq-ch1-cosine: ᾱ_t = f(t/T)/f(0), f(u) = cos²((u + s)/(1 + s) · π/2), below the clip."""
    T = 1000
    ab = torch.cumprod(1 - cosine_beta_schedule(T), 0)
    s = 0.008
    for t in (1, 250, 500, 900):
        expected = (
            math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
            / math.cos(s / (1 + s) * math.pi / 2) ** 2
        )
        assert ab[t - 1].item() == pytest.approx(expected, rel=1e-12)


def test_cosine_alpha_bar_squares_the_cosine_not_its_argument():
    # A seed write-up squares the argument, cos(((t/T+s)/(1+s)·π/2)²): 0.81 at t = T/2, not 0.49.
    u = torch.tensor([0.5], dtype=torch.float64)
    assert cosine_alpha_bar(u).item() == pytest.approx(0.493843590440637713, rel=1e-12)


@pytest.mark.parametrize("T", [50, 1000])
def test_cosine_betas_are_one_minus_the_alpha_bar_ratio_clipped_at_0_999(T):
    """eq-ch1-cosine: β_t = min(1 - ᾱ_t/ᾱ_{t-1}, 0.999) with ᾱ_t = f(t/T)/f(0), every t."""
    s = 0.008

    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    expected = torch.tensor(
        [min(1 - f(t / T) / f((t - 1) / T), 0.999) for t in range(1, T + 1)], dtype=torch.float64
    )
    # The ratio carries a few ulps (libm's cos against torch's), so 1 - ratio is exact to a few
    # ulps of 1, absolutely; the clip acts only at t = T, where f(1) = cos²(π/2) ≈ 0.
    torch.testing.assert_close(cosine_beta_schedule(T), expected, rtol=0, atol=8 * EPS)
    assert (expected == 0.999).nonzero().flatten().tolist() == [T - 1]


def test_cosine_schedule_clips_beta_at_max_beta():
    """eq-ch1-cosine: the clip is min(·, max_beta), here with max_beta = 0.5."""
    assert cosine_beta_schedule(1000, max_beta=0.5)[-1].item() == pytest.approx(0.5)


def test_unknown_schedule_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown beta schedule 'quadratic'.*cosine.*linear"):
        get_beta_schedule("quadratic", 10)


@pytest.mark.parametrize("T", [0, -5, 2.5, True])
def test_non_positive_or_non_integer_T_is_rejected(T):
    with pytest.raises(ValueError, match="positive integer"):
        linear_beta_schedule(T)


@pytest.mark.parametrize("bad", [[0.1, 0.0], [0.1, 1.0], [-0.1, 0.2], [0.1, float("nan")]])
def test_betas_outside_open_unit_interval_are_rejected(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        check_betas(torch.tensor(bad))


def test_betas_must_be_one_dimensional():
    with pytest.raises(ValueError, match=r"shape \[T\]"):
        check_betas(torch.full((2, 3), 0.1))
