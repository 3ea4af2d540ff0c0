"""Relax mode: temper the acceptance ratio where the transition amplifies the model's uncertainty.

A drafted transition is accepted with probability min(1, (q/p)^(1/kappa)) instead of min(1, q/p).
kappa = 1 + strength * g / (1 + g), where g = posterior_mean_coef1 / posterior_std is how much one
unit of error in the x0-prediction moves the transition mean, in units of the transition's own
noise. g is ~0 in early (noisy) steps and grows past 10-100 in the last ones, where draft errors that
are invisible in the image become many standard deviations: there kappa -> 1 + strength.
strength = 0 is strict, bit for bit.
"""

from __future__ import annotations

import torch

from .diffusion import GaussianDiffusion


def uncertainty_gain(diffusion: GaussianDiffusion, i: torch.Tensor) -> torch.Tensor:
    """g(i) = posterior_mean_coef1 / posterior_std at respaced step indices i (float64, on i's device)."""
    coef1 = diffusion.table("posterior_mean_coef1", i.device)[i]
    std = torch.exp(0.5 * diffusion.table("posterior_log_variance_clipped", i.device)[i])
    return coef1 / std


def relax_temperature(diffusion: GaussianDiffusion, i: torch.Tensor, strength: float) -> torch.Tensor:
    """kappa(i) >= 1 for each step index in `i`; 1 everywhere when strength == 0."""
    if not strength >= 0 or strength == float("inf"):
        raise ValueError(f"relax_strength must be a finite number >= 0, got {strength!r}")
    gain = uncertainty_gain(diffusion, i)
    return 1.0 + strength * gain / (1.0 + gain)
