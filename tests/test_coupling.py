"""The coupling is exact (KS tests of the output law) and maximal (acceptance = 1 - TV)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from free_core.engine.coupling import ResidualSamplingError, acceptance_probability_equal_std, maximal_coupling
from toy_models import TEST_DEVICE

KS_ALPHA = 1e-3  # fixed seeds: each check is one deterministic draw; a wrong law fails by orders of magnitude


def _equal_std_case(delta: float, dim: int, n: int, seed: int, dtype=torch.float64):
    g, on = torch.Generator(TEST_DEVICE).manual_seed(seed), {"dtype": dtype, "device": TEST_DEVICE}
    std = 0.5 + torch.rand(dim, generator=g, **on)  # diagonal, same for p and q
    direction = torch.randn(dim, generator=g, **on)
    direction /= direction.norm()
    mean_p = torch.randn(dim, generator=g, **on)
    mean_q = mean_p + delta * std * direction  # whitened distance exactly delta
    x = mean_p + std * torch.randn(n, dim, generator=g, **on)
    return x, mean_p, std, mean_q, direction, g


def _whitened_projections(y, mean_q, std, direction, g):
    """Projections of (y - mean_q) / std on the mean-difference direction and on an orthogonal one: N(0, 1) under q."""
    white = (y - mean_q) / std
    along = white @ direction
    if direction.numel() == 1:
        return along.cpu(), None
    other = torch.randn(direction.numel(), generator=g, dtype=direction.dtype, device=direction.device)
    other -= (other @ direction) * direction
    other /= other.norm()
    return along.cpu(), (white @ other).cpu()


@pytest.mark.parametrize("dim", [1, 64, 4096])
@pytest.mark.parametrize("delta", [0.0, 0.3, 1.0, 3.0, 10.0])
def test_reflection_coupling_has_target_law_and_maximal_acceptance(delta, dim):
    n = 20_000 if dim <= 64 else 2_500
    x, mean_p, std, mean_q, direction, g = _equal_std_case(delta, dim, n, seed=int(delta * 10) + dim)
    y, accepted = maximal_coupling(x, mean_p, std, mean_q, std, generator=g)
    along, orthogonal = _whitened_projections(y, mean_q, std, direction, g)
    assert scipy_stats.kstest(along.numpy(), "norm").pvalue > KS_ALPHA
    if orthogonal is not None:
        assert scipy_stats.kstest(orthogonal.numpy(), "norm").pvalue > KS_ALPHA
    expected = float(acceptance_probability_equal_std(delta))
    standard_error = math.sqrt(expected * (1 - expected) / n)
    assert abs(accepted.double().mean().item() - expected) <= 4 * standard_error + 0.5 / n
    assert torch.equal(y[accepted], x[accepted])
    assert not (y[~accepted] == x[~accepted]).all(dim=1).any()


def test_ks_check_rejects_an_always_accept_coupling():
    """Negative control: the law check above has the power to see a wrong coupling."""
    x, mean_p, std, mean_q, direction, g = _equal_std_case(1.0, 64, 20_000, seed=7)
    along, _ = _whitened_projections(x, mean_q, std, direction, g)  # "always accept" returns the draft
    assert scipy_stats.kstest(along.numpy(), "norm").pvalue < KS_ALPHA


def _tv_1d(mean_p, std_p, mean_q, std_q):
    grid = np.linspace(min(mean_p - 12 * std_p, mean_q - 12 * std_q), max(mean_p + 12 * std_p, mean_q + 12 * std_q), 400_001)
    p = scipy_stats.norm.pdf(grid, mean_p, std_p)
    q = scipy_stats.norm.pdf(grid, mean_q, std_q)
    return 0.5 * np.trapezoid(np.abs(p - q), grid)


@pytest.mark.parametrize(
    "mean_q, std_q",
    [(0.5, 1.3), (0.0, 0.6), (0.1, 1.05), (3.0, 0.4), (-1.0, 2.5)],
)
def test_unequal_std_coupling_has_target_law_and_acceptance_one_minus_tv(mean_q, std_q):
    n = 20_000
    g, on = torch.Generator(TEST_DEVICE).manual_seed(int(100 * std_q)), {"dtype": torch.float64, "device": TEST_DEVICE}
    mean_p, std_p = 0.0, 1.0
    x = mean_p + std_p * torch.randn(n, 1, generator=g, **on)
    y, accepted = maximal_coupling(x, torch.tensor(mean_p, **on), torch.tensor(std_p, **on), torch.tensor(mean_q, **on),
                                   torch.tensor(std_q, **on), generator=g)
    assert scipy_stats.kstest(y[:, 0].cpu().numpy(), "norm", args=(mean_q, std_q)).pvalue > KS_ALPHA
    expected = 1 - _tv_1d(mean_p, std_p, mean_q, std_q)
    standard_error = math.sqrt(expected * (1 - expected) / n)
    assert abs(accepted.double().mean().item() - expected) <= 4 * standard_error + 0.5 / n
    assert torch.equal(y[accepted], x[accepted])


def test_unequal_std_coupling_in_64_dims_has_target_marginals():
    n, dim = 10_000, 64
    g, on = torch.Generator(TEST_DEVICE).manual_seed(3), {"dtype": torch.float64, "device": TEST_DEVICE}
    mean_p, std_p = torch.zeros(dim, **on), torch.ones(dim, **on)
    mean_q = 0.05 * torch.randn(dim, generator=g, **on)
    std_q = 1 + 0.03 * torch.randn(dim, generator=g, **on)
    x = mean_p + std_p * torch.randn(n, dim, generator=g, **on)
    y, accepted = maximal_coupling(x, mean_p, std_p, mean_q, std_q, generator=g)
    assert 0.2 < accepted.double().mean() < 0.95  # both branches exercised
    for coordinate in (0, 17, 63):
        column = y[:, coordinate].cpu().numpy()
        assert scipy_stats.kstest(column, "norm", args=(mean_q[coordinate].item(), std_q[coordinate].item())).pvalue > KS_ALPHA


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_coupling_is_safe_at_zero_and_huge_delta(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g).to(dtype)
    zero = torch.zeros(64, dtype=dtype)
    one = torch.ones(64, dtype=dtype)
    y, accepted = maximal_coupling(x, zero, one, zero, one, generator=g)
    assert accepted.all() and torch.equal(y, x)
    far = torch.full((64,), 1e6, dtype=dtype)
    y, accepted = maximal_coupling(x, zero, one, far, one, generator=g)
    assert not accepted.any() and torch.isfinite(y).all() and y.dtype == dtype
    assert (y - far).abs().max() < 10  # reflected noise stays O(1) around the far mean
    y, accepted = maximal_coupling(x, zero, one, far, one * 2, generator=g)
    assert not accepted.any() and torch.isfinite(y).all()


def test_point_masses_couple_exactly():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    mean_p = x.clone()
    mean_q = torch.tensor([[1.0, 2.0], [1.5, 2.0], [1.0, 2.0]])
    std_p = torch.zeros(3, 2)
    std_q = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    y, accepted = maximal_coupling(x, mean_p, std_p, mean_q, std_q, generator=torch.Generator().manual_seed(0))
    assert accepted.tolist() == [True, False, False]
    assert torch.equal(y[1], mean_q[1])
    assert y[2, 0] == 1.0 and y[2, 1] != 2.0  # TV = 1: a fresh draw from q


@pytest.mark.parametrize("std_q_random", [1.0, 2.0], ids=["reflection", "residual"])
def test_a_coordinate_that_is_the_same_point_mass_under_both_laws_stays_there(std_q_random):
    """Rows mixing a shared point mass (std 0, equal means) with random coordinates: a rejected draft's replacement
    keeps the point mass, and its random coordinate has the residual's law (here: q's law over all rows)."""
    n, g = 20_000, torch.Generator().manual_seed(3)
    mean_p = torch.tensor([5.0, 0.0]).repeat(n, 1)
    std_p = torch.tensor([0.0, 1.0]).repeat(n, 1)
    mean_q, std_q = torch.tensor([5.0, 0.5]).repeat(n, 1), torch.tensor([0.0, std_q_random]).repeat(n, 1)
    x = mean_p + std_p * torch.randn(n, 2, generator=g)
    y, accepted = maximal_coupling(x, mean_p, std_p, mean_q, std_q, generator=g)
    assert 0.05 < accepted.double().mean() < 0.95
    assert (y[:, 0] == 5.0).all(), "the shared point mass must be kept by accepted and replaced rows alike"
    _, p_value = scipy_stats.kstest(((y[:, 1] - 0.5) / std_q_random).numpy(), "norm")
    assert p_value > KS_ALPHA


def test_coupling_is_deterministic_given_the_generator():
    x, mean_p, std, mean_q, _, _ = _equal_std_case(1.0, 16, 500, seed=1)
    first = maximal_coupling(x, mean_p, std, mean_q, std * 1.1, generator=torch.Generator(TEST_DEVICE).manual_seed(5))
    second = maximal_coupling(x, mean_p, std, mean_q, std * 1.1, generator=torch.Generator(TEST_DEVICE).manual_seed(5))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_residual_sampler_raises_instead_of_returning_a_wrong_law():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, 1, generator=g, dtype=torch.float64)
    with pytest.raises(ResidualSamplingError, match="max_residual_candidates"):
        maximal_coupling(x, torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.0), torch.tensor(1.02), generator=g,
                         max_residual_candidates=1)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"mean_q": torch.zeros(3)}, "mean_q"),
        ({"std_p": -torch.ones(4)}, "std_p"),
        ({"mean_p": torch.full((4,), float("nan"))}, "mean_p"),
        ({"temperature": 0.5}, "temperature"),
    ],
)
def test_coupling_rejects_bad_input_naming_the_argument(kwargs, name):
    args = {"x_draft": torch.zeros(2, 4), "mean_p": torch.zeros(4), "std_p": torch.ones(4), "mean_q": torch.zeros(4), "std_q": torch.ones(4)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        maximal_coupling(**args)


def test_temperature_raises_acceptance_and_one_is_strict():
    x, mean_p, std, mean_q, _, _ = _equal_std_case(2.0, 64, 5_000, seed=2)
    strict = maximal_coupling(x, mean_p, std, mean_q, std, generator=torch.Generator(TEST_DEVICE).manual_seed(1))
    same = maximal_coupling(x, mean_p, std, mean_q, std, generator=torch.Generator(TEST_DEVICE).manual_seed(1), temperature=1.0)
    relaxed = maximal_coupling(x, mean_p, std, mean_q, std, generator=torch.Generator(TEST_DEVICE).manual_seed(1), temperature=3.0)
    assert torch.equal(strict[0], same[0]) and torch.equal(strict[1], same[1])
    assert relaxed[1].double().mean() > strict[1].double().mean() + 0.1
