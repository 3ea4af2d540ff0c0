"""The DiT/ADM schedule, respacing and the ancestral transition."""

import numpy as np
import pytest
import torch

from free_core.engine.diffusion import GaussianDiffusion, spaced_timesteps


def test_respacing_keeps_the_base_alphas_cumprod():
    base = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    for steps in (250, 100, 50, 1000):
        kept = spaced_timesteps(1000, steps)
        assert len(kept) == steps and kept[0] == 0 and kept[-1] == 999
        diffusion = GaussianDiffusion.respaced(steps)
        np.testing.assert_allclose(diffusion.tables["alphas_cumprod"].numpy(), base[kept], rtol=1e-12)
    assert spaced_timesteps(1000, 250)[:5] == [0, 4, 8, 12, 16]


def test_transition_is_the_ddpm_posterior_and_final_step_is_deterministic():
    diffusion = GaussianDiffusion.respaced(50)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    i = torch.tensor([0, 10, 49])
    acp = diffusion.tables["alphas_cumprod"][i].view(-1, 1, 1, 1)
    eps = (x - acp.sqrt() * x0) / (1 - acp).sqrt()  # the eps that makes x0 the prediction
    mean, std = diffusion.transition(eps, x, i, "fixed_small")
    torch.testing.assert_close(mean, diffusion.posterior_mean(x0, x, i))
    assert (std[0] == 0).all() and (std[1:] > 0).all()
    learned_low = torch.cat([eps, -torch.ones_like(eps)], 1)
    learned_high = torch.cat([eps, torch.ones_like(eps)], 1)
    _, std_low = diffusion.transition(learned_low, x, i, "learned")
    _, std_high = diffusion.transition(learned_high, x, i, "learned")
    betas = diffusion.tables["betas"][i].view(-1, 1, 1, 1)
    torch.testing.assert_close(std_high[1:] ** 2, betas[1:].expand_as(x[1:]))
    torch.testing.assert_close(std_low[1:], std[1:])


def test_transition_rejects_nan_output_and_wrong_channels():
    diffusion = GaussianDiffusion.respaced(10)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="model_output contains NaN"):
        diffusion.transition(torch.full((2, 6, 4, 4), float("nan")), x, torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="learned-sigma"):
        diffusion.transition(torch.zeros(2, 3, 4, 4), x, torch.tensor([3, 3]), "learned")


@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="steps"):
        GaussianDiffusion.respaced(steps)
