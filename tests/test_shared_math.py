"""Closed-form checks of the math that the baseline and FREE share, against values computed by hand here.

A bug in a transition, the guidance combination or the relax temperature would be made by both samplers alike,
so their two-sample agreement cannot see it; these tests compare with formulas written out independently
(DDPM, Ho et al. 2020, eq. 6-7 and 11; ADM's learned-range variance; k-diffusion's ancestral step).
"""

import math

import pytest
import torch

from free_core.engine.denoiser import GuidedDenoiser
from free_core.engine.diffusion import GaussianDiffusion
from free_core.engine.k_diffusion_sampler import AncestralStep
from free_core.engine.relax import relax_temperature

STEPS = 10  # respaced from 1000: kept timesteps are exactly 0, 111, 222, ..., 999


def _alphas_cumprod_by_hand() -> list[float]:
    products, running = [], 1.0
    for k in range(1000):
        running *= 1.0 - (1e-4 + (0.02 - 1e-4) * k / 999)
        products.append(running)
    return products


def _step_by_hand(i: int) -> dict[str, float]:
    """The respaced step i of 10: its beta, alphas_cumprod and the DDPM posterior, in plain floats."""
    products = _alphas_cumprod_by_hand()
    acp = products[111 * i]
    acp_prev = products[111 * (i - 1)] if i > 0 else 1.0
    beta = 1.0 - acp / acp_prev
    return {
        "acp": acp,
        "beta": beta,
        "coef_x0": beta * math.sqrt(acp_prev) / (1.0 - acp),
        "coef_xt": (1.0 - acp_prev) * math.sqrt(1.0 - beta) / (1.0 - acp),
        "posterior_variance": beta * (1.0 - acp_prev) / (1.0 - acp),
    }


@pytest.mark.parametrize("i", [1, 4, 9])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned"])
def test_transition_mean_and_std_match_the_ddpm_posterior_by_hand(i, variance):
    x_t, eps, v = 0.7, -0.4, 0.2  # state, eps-prediction, learned-variance output in [-1, 1]
    hand = _step_by_hand(i)
    x0 = (x_t - math.sqrt(1.0 - hand["acp"]) * eps) / math.sqrt(hand["acp"])
    expected_mean = hand["coef_x0"] * x0 + hand["coef_xt"] * x_t
    small = hand["posterior_variance"]
    expected_variance = {
        "fixed_small": small,
        "fixed_large": hand["beta"],
        "learned": math.exp((v + 1) / 2 * math.log(hand["beta"]) + (1 - (v + 1) / 2) * math.log(small)),
    }[variance]

    diffusion = GaussianDiffusion.respaced(STEPS)
    output = torch.tensor([[[[eps]], [[v]]]], dtype=torch.float64)  # (1, 2, 1, 1): eps and the variance channel
    mean, std = diffusion.transition(output, torch.full((1, 1, 1, 1), x_t, dtype=torch.float64), torch.tensor([i]), variance)
    assert mean.item() == pytest.approx(expected_mean, rel=1e-10)
    assert std.item() ** 2 == pytest.approx(expected_variance, rel=1e-10)


def test_the_last_step_is_the_deterministic_posterior_mean():
    hand = _step_by_hand(0)
    x_t, eps = 0.3, 0.1
    x0 = (x_t - math.sqrt(1.0 - hand["acp"]) * eps) / math.sqrt(hand["acp"])
    mean, std = GaussianDiffusion.respaced(STEPS).transition(
        torch.full((1, 1, 1, 1), eps, dtype=torch.float64), torch.full((1, 1, 1, 1), x_t, dtype=torch.float64),
        torch.tensor([0]), "fixed_small")
    assert mean.item() == pytest.approx(x0, rel=1e-10)  # acp_prev = 1: the posterior mean is x0 itself
    assert std.item() == 0.0


@pytest.mark.parametrize("i", [1, 5, 9])
def test_relax_temperature_is_one_at_strength_zero_and_the_documented_rule_above(i):
    hand = _step_by_hand(i)
    gain = hand["coef_x0"] / math.sqrt(hand["posterior_variance"])
    diffusion = GaussianDiffusion.respaced(STEPS)
    assert relax_temperature(diffusion, torch.tensor([i]), 0.0).item() == 1.0
    assert relax_temperature(diffusion, torch.tensor([i]), 8.0).item() == pytest.approx(1 + 8 * gain / (1 + gain), rel=1e-10)


def test_sigma_space_transition_and_relax_temperature_by_hand():
    sigma, sigma_next, x, denoised = 2.0, 1.0, 1.0, 0.2
    sigma_up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)  # k-diffusion's eta = 1 step
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    mean, std = AncestralStep()(torch.tensor([[x]], dtype=torch.float64), torch.tensor([[denoised]], dtype=torch.float64),
                                     torch.tensor([sigma], dtype=torch.float64), torch.tensor([sigma_next], dtype=torch.float64))
    assert mean.item() == pytest.approx(x + (x - denoised) / sigma * (sigma_down - sigma), rel=1e-12)
    assert std.item() == pytest.approx(sigma_up, rel=1e-12)
    coefficient = 1 - sigma_down / sigma  # d mean / d denoised
    kappa = AncestralStep().temperature(torch.tensor([sigma]), torch.tensor([sigma_next]), 4.0).item()
    assert kappa == pytest.approx(1 + 4 * coefficient / (sigma_up + coefficient), rel=1e-12)
    assert AncestralStep().temperature(torch.tensor([sigma]), torch.tensor([sigma_next]), 0.0).item() == 1.0


@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.5, 0.7)])
def test_flow_euler_ancestral_step_is_comfyuis_rectified_flow_step_by_hand(eta, s_noise):
    """ComfyUI's sample_euler_ancestral_RF (CONST models), written out for one step."""
    sigma, sigma_next, x, denoised = 0.8, 0.5, 0.3, -0.2
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = math.sqrt(sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2)
    ratio = sigma_down / sigma
    expected_mean = alpha_next / alpha_down * (ratio * x + (1 - ratio) * denoised)
    step = AncestralStep(flow=True, eta=eta, s_noise=s_noise)
    mean, std = step(torch.tensor([[x]], dtype=torch.float64), torch.tensor([[denoised]], dtype=torch.float64),
                     torch.tensor([sigma], dtype=torch.float64), torch.tensor([sigma_next], dtype=torch.float64))
    assert mean.item() == pytest.approx(expected_mean, rel=1e-12)
    assert std.item() == pytest.approx(s_noise * renoise, rel=1e-12)
    mean, std = step(torch.tensor([[x]], dtype=torch.float64), torch.tensor([[denoised]], dtype=torch.float64),
                     torch.tensor([sigma], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
    assert mean.item() == denoised and std.item() == 0.0  # the last step returns denoised


def test_variance_exploding_step_with_eta_and_s_noise_by_hand():
    sigma, sigma_next, x, denoised, eta, s_noise = 3.0, 1.5, 0.4, 0.1, 0.5, 0.7
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    mean, std = AncestralStep(eta=eta, s_noise=s_noise)(
        torch.tensor([[x]], dtype=torch.float64), torch.tensor([[denoised]], dtype=torch.float64),
        torch.tensor([sigma], dtype=torch.float64), torch.tensor([sigma_next], dtype=torch.float64))
    assert mean.item() == pytest.approx(x + (x - denoised) / sigma * (sigma_down - sigma), rel=1e-12)
    assert std.item() == pytest.approx(s_noise * sigma_up, rel=1e-12)
    with pytest.raises(ValueError, match="eta=0"):
        AncestralStep(eta=0.0).check_stochastic()


class TwoChannelModel:
    in_channels, learn_sigma, null_class = 2, True, 7


def test_guidance_folds_conditional_and_unconditional_rows_by_hand():
    denoiser = GuidedDenoiser(TwoChannelModel(), GaussianDiffusion.respaced(STEPS), cfg_scale=3.0)
    x = torch.arange(4.0).reshape(2, 2, 1, 1)
    x_rows, t_rows, y_rows = denoiser.rows(x, torch.tensor([9, 4]), torch.tensor([5, 2]))
    assert y_rows.tolist() == [5, 7, 2, 7]  # (conditional, unconditional) per state
    assert t_rows.tolist() == [999, 999, 444, 444]
    assert torch.equal(x_rows, x.repeat_interleave(2, dim=0))
    # Rows: eps (2 channels) + variance (2 channels), conditional then unconditional, for 2 states.
    rows = torch.tensor([
        [1.0, 2.0, 0.3, -0.3], [0.5, 0.5, -0.9, -0.9],  # state 0: cond, uncond
        [0.0, -1.0, 0.1, 0.2], [1.0, 1.0, 0.8, 0.8],  # state 1: cond, uncond
    ], dtype=torch.float64).reshape(4, 4, 1, 1)
    guided = denoiser.guided_output(rows).flatten(1)
    # eps = uncond + 3 * (cond - uncond); the variance channels come from the conditional row.
    assert guided.tolist() == [[2.0, 5.0, 0.3, -0.3], [-2.0, -5.0, 0.1, 0.2]]
    unguided = GuidedDenoiser(TwoChannelModel(), GaussianDiffusion.respaced(STEPS), cfg_scale=1.0)
    assert unguided.branches == 1 and torch.equal(unguided.guided_output(rows), rows)
