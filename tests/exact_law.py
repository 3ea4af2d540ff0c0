"""Exact laws of linear Gaussian chains and one-sample goodness-of-fit tests against them.

With data x0 ~ N(mu, s^2 I) every sampler transition studied here is x' ~ N(A x + B, std^2) with A, B and std
independent of x (per coordinate), so the plain chain's law at its end is N(m, v) per coordinate, computed by
propagating (m, v) through the steps. A sampler is tested by standardising its samples with (m, v): under the
exact law the values are i.i.d. N(0, 1), and each sample's squared norm is chi-square with d degrees of freedom.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

def accept_every_draft(monkeypatch) -> None:
    """Negative control: the speculative round accepts every draft (no coupling), which is not the plain law."""
    import free_core.engine.rounds as rounds

    decide = rounds.decide_drafts

    def accept_all(*args, **kwargs):
        accepted, kinds = decide(*args, **kwargs)
        return torch.ones_like(accepted), kinds

    monkeypatch.setattr(rounds, "decide_drafts", accept_all)


# One transition as a function of the state: (mean, std) for states x (n, ...).
Transition = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def linear_gaussian_law(transitions: list[Transition], like: torch.Tensor, initial_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) per coordinate after the transitions, from x ~ N(0, initial_std^2) shaped like `like` (1, ...).

    Each transition is read off at x = 0 and x = 1 (it must be affine in x with a state-independent std).
    """
    zero, one = torch.zeros_like(like), torch.ones_like(like)
    mean, variance = torch.zeros_like(like), torch.full_like(like, initial_std**2)
    for transition in transitions:
        offset, std = transition(zero)
        slope = transition(one)[0] - offset
        _, std_at_one = transition(one)
        assert torch.allclose(std, std_at_one), "the transition's std must not depend on the state"
        mean, variance = slope * mean + offset, slope**2 * variance + std**2
    return mean[0], variance[0]


def kolmogorov_p_value(statistic: float, n: int) -> float:
    """Asymptotic p-value of the one-sample KS statistic (Stephens' small-sample correction)."""
    root = math.sqrt(n)
    lam = (root + 0.12 + 0.11 / root) * statistic
    if lam < 0.2:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return min(1.0, max(0.0, 2 * total))


def ks_test(values: torch.Tensor, cdf: Callable[[torch.Tensor], torch.Tensor]) -> tuple[float, float]:
    """(KS statistic, p-value) of `values` (any shape, flattened) against a continuous CDF."""
    sorted_values = values.flatten().double().sort().values
    n = sorted_values.numel()
    f = cdf(sorted_values)
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    statistic = float(torch.maximum(ranks / n - f, f - (ranks - 1) / n).max())
    return statistic, kolmogorov_p_value(statistic, n)


def normal_cdf(u: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-u / math.sqrt(2))


def chi_square_cdf(degrees: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.special.gammainc(torch.tensor(degrees / 2, dtype=torch.float64), x.clamp(min=0) / 2)


def exact_law_p_values(samples: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor) -> dict[str, float]:
    """KS p-values of the standardised coordinates against N(0, 1) and of their squared norms against chi^2_d."""
    u = (samples.double() - mean) / variance.sqrt()
    u = u.reshape(u.shape[0], -1)
    return {
        "coordinates": ks_test(u, normal_cdf)[1],
        "squared_norm": ks_test((u**2).sum(1), chi_square_cdf(u.shape[1]))[1],
    }
