"""Closed-form denoisers for Gaussian-mixture data: the exact eps-prediction, split as features/head."""

from __future__ import annotations

import torch
from torch import nn

from free_core.diffusion import GaussianDiffusion


class GaussianMixtureDenoiser(nn.Module):
    """Data x0 ~ sum_k w_k N(mu_k, s^2 I) in d dims, shaped (d, 1, 1); eps(x_t, t) is exact.

    features() is the exact eps as one token of width d; head() reshapes it. With learn_sigma the
    head adds a variance channel that depends on the state, so drafts and targets differ in std.
    """

    def __init__(self, means: torch.Tensor, data_std: float, learn_sigma: bool = False):
        super().__init__()
        self.means = means.double()
        self.data_std = data_std
        self.in_channels = means.shape[1]
        self.learn_sigma = learn_sigma
        self.null_class = 0
        self.alphas_cumprod = GaussianDiffusion.training().tables["alphas_cumprod"]

    def features(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        acp = self.alphas_cumprod[t.cpu()].to(x.device).double()[:, None, None]
        points = x.flatten(1).double()[:, None, :]  # (N, 1, d)
        centres = acp.sqrt() * self.means[None]  # (N, K, d)
        var = acp * self.data_std**2 + 1 - acp  # (N, 1, 1)
        log_w = -((points - centres) ** 2).sum(-1) / (2 * var[:, :, 0])  # (N, K)
        resp = torch.softmax(log_w, dim=1)[:, :, None]
        score = -((points - centres) * resp).sum(1) / var[:, :, 0]  # (N, d)
        eps = -(1 - acp[:, :, 0]).sqrt() * score
        return eps.to(x.dtype)[:, None, :]  # (N, 1, d)

    def head(self, h: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = h[:, 0, :, None, None]
        if not self.learn_sigma:
            return eps
        var_values = torch.tanh(eps.mean(dim=1, keepdim=True) * 3).expand_as(eps)
        return torch.cat([eps, var_values], dim=1)


def mixture(dim: int, components: int = 3, seed: int = 0, spread: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return spread * torch.randn(components, dim, generator=g, dtype=torch.float64)
