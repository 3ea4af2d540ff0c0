"""Strict FREE has exactly the law of the plain chain: high-power tests against closed-form laws.

Spaces: DDPM step indices (the DiT engine), and sigma space with ComfyUI's euler_ancestral step in its
variance-exploding form (EPS models) and its rectified-flow form (flow / CONST models: Flux, SD3, Wan, ...).

Linear Gaussian data make every transition affine in the state with a state-independent std, so the law of
the plain chain's final state is known exactly (tests/exact_law.py). N = 100k samples standardised by it must
look N(0, 1): KS of the coordinates, and KS of each sample's squared norm against chi^2_d (which sees a wrong
variance). The drafts are tuned to be accepted about 60% of the time at every step, so rounds stop at every
position and the all-accepted round (K drafts + the exact bonus transition) is common. "One round": a chain
whose second round can take every remaining stochastic step (the first round is always one plain step);
"several rounds": 12-20 steps.
Two wrong samplers must fail the same tests: accepting every draft, and the classic wrong coupling (accept
with min(1, q/p), but on rejection draw afresh from q instead of from the residual).
"""

import pytest
import torch

import free_core.engine.rounds as rounds
from exact_law import accept_every_draft, exact_law_p_values, linear_gaussian_law
from free_core.engine.compiled_drafting import CompiledDrafter
from free_core.engine.denoiser import GuidedDenoiser
from free_core.engine.diffusion import GaussianDiffusion
from free_core.engine.drafter_interface import FrozenDrafter
from free_core.engine.k_diffusion_sampler import AncestralStep, sample_free_euler_ancestral
from free_core.engine.speculative import sample_speculative
from free_core.engine.batch_conditioning import boundary_groups
from toy_models import (TEST_DEVICE, FirstRowSwitch, FlowGaussianDenoiser, LinearGaussianDenoiser, MixtureSigmaDenoiser,
                        PerturbedDrafter, flow_sigmas, karras_sigmas)

N = 100_000
ALPHA = 1e-3  # per p-value; every run is seeded, so a pass or fail is reproducible
K = 4
DATA_MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
DATA_STD = 0.5
# Drafted means are off by about one transition std (whitened distance ~1 in 2-D): acceptance ~0.6 per draft.
DRAFT_ERROR_IN_STDS = 0.75


def _ddpm(steps: int, learn_sigma: bool) -> GuidedDenoiser:
    model = LinearGaussianDenoiser(DATA_MEAN, DATA_STD, learn_sigma=learn_sigma)
    return GuidedDenoiser(model, GaussianDiffusion.respaced(steps))


def _ddpm_law(denoiser: GuidedDenoiser) -> tuple[torch.Tensor, torch.Tensor]:
    def transition_at(i):
        def transition(x):
            step = torch.full((x.shape[0],), i)
            _, output = denoiser.evaluate(x, step, torch.zeros(x.shape[0], dtype=torch.long))
            return denoiser.transition(denoiser.guided_output(output), x, step)
        return transition

    like = torch.zeros(1, DATA_MEAN.numel(), 1, 1, dtype=torch.float64)
    return linear_gaussian_law([transition_at(i) for i in reversed(range(denoiser.num_steps))], like, initial_std=1.0)


def _drafter(denoiser: GuidedDenoiser, variance_shift: float) -> PerturbedDrafter:
    """An eps bias per step that moves the drafted mean by DRAFT_ERROR_IN_STDS transition stds per coordinate."""
    diffusion, steps = denoiser.diffusion, torch.arange(denoiser.num_steps)
    zeros = torch.zeros(steps.numel(), 1, 1, 1, dtype=torch.float64)
    mean_at_zero, std = diffusion.transition(zeros, zeros, steps, "fixed_small")
    mean_per_unit_eps = diffusion.transition(zeros + 1, zeros, steps, "fixed_small")[0] - mean_at_zero
    bias = DRAFT_ERROR_IN_STDS * std.flatten() / mean_per_unit_eps.flatten().abs()
    return PerturbedDrafter(bias, variance_shift=variance_shift)


def _run_ddpm(steps: int, learn_sigma: bool, seed: int = 1, compiled: bool = False):
    denoiser = _ddpm(steps, learn_sigma)
    g = torch.Generator(TEST_DEVICE).manual_seed(seed)
    x = torch.randn(N, DATA_MEAN.numel(), 1, 1, generator=g, dtype=torch.float64, device=TEST_DEVICE)
    drafter = _drafter(denoiser, variance_shift=0.3 if learn_sigma else 0.0)
    if compiled:  # the proposal through torch.compile: its drafts round differently, the law must not change
        drafter = CompiledDrafter(drafter, TEST_DEVICE)
    labels = torch.zeros(N, dtype=torch.long, device=TEST_DEVICE)
    samples, stats = sample_speculative(denoiser, drafter, x, labels, g, draft_length=K)
    return samples.cpu(), stats, _ddpm_law(denoiser)


SIGMA_DIM = 2


def _run_sigma_space(model, sigmas: torch.Tensor, step: AncestralStep, seed: int = 1, row_groups=None):
    g = torch.Generator(TEST_DEVICE).manual_seed(seed + 1000)
    x = torch.randn(N, SIGMA_DIM, 1, 1, generator=g, dtype=torch.float64, device=TEST_DEVICE) * sigmas[0]
    sink = []
    samples = sample_free_euler_ancestral(model, x, sigmas, extra_args={"seed": seed}, stats_sink=sink, step=step, draft_length=K,
                                          row_groups=row_groups)

    def transition_at(i):  # the plain sampler's batches hold one sigma
        return lambda x: step(x, model(x, sigmas[i].expand(x.shape[0])), sigmas[i].expand(x.shape[0]), sigmas[i + 1].expand(x.shape[0]))

    like = torch.zeros(1, SIGMA_DIM, 1, 1, dtype=torch.float64)
    law = linear_gaussian_law([transition_at(i) for i in range(len(sigmas) - 1)], like, initial_std=float(sigmas[0]))
    return samples.cpu(), sink[0], law


def _run_variance_exploding(steps: int, sigma_min: float):
    """EPS / V-prediction models: x = x0 + sigma n, karras sigmas from 10."""
    model = MixtureSigmaDenoiser(SIGMA_DIM, components=1, data_std=DATA_STD)
    return _run_sigma_space(model, karras_sigmas(steps, sigma_min=sigma_min), AncestralStep())


def _run_flow(steps: int):
    """Rectified-flow (CONST) models: x = (1 - sigma) x0 + sigma n, sigmas from 1 with ComfyUI's SD3 shift 3."""
    model = FlowGaussianDenoiser(DATA_MEAN, data_std=2.0)
    return _run_sigma_space(model, flow_sigmas(steps), AncestralStep(flow=True))


def _run_timestep_range(grouped: bool):
    """Two denoisers switched at sigma 1 by the batch's first row (a ComfyUI timestep range ending at sigma 1)."""
    early = MixtureSigmaDenoiser(SIGMA_DIM, components=1, data_std=DATA_STD, seed=0)
    late = MixtureSigmaDenoiser(SIGMA_DIM, components=1, data_std=DATA_STD, seed=5)
    groups = (lambda sigma: boundary_groups(sigma, [("below", 1.0)])) if grouped else None
    return _run_sigma_space(FirstRowSwitch(early, late, boundary=1.0), karras_sigmas(12, sigma_min=0.02), AncestralStep(),
                            row_groups=groups)


# One round, DDPM: K + 3 steps, so that the bonus transition out of the last drafted state is a noisy step (at
# K + 2 it would be the final, deterministic one) and one plain step ends the chain. Sigma space: K + 2 steps
# (a K_b never takes the last step, so its bonus is the final sigma -> 0 step).
# The sigma-space sampler drafts with the frozen drafter; the schedules and data put its acceptance at ~0.7-0.8.
CASES = {
    "ddpm-fixed-variance-several-rounds": lambda: _run_ddpm(20, learn_sigma=False),
    "ddpm-learned-variance-several-rounds": lambda: _run_ddpm(20, learn_sigma=True),
    "ddpm-learned-variance-one-round": lambda: _run_ddpm(K + 3, learn_sigma=True),
    "ddpm-learned-variance-compiled-drafter": lambda: _run_ddpm(20, learn_sigma=True, compiled=True),
    "sigma-space-several-rounds": lambda: _run_variance_exploding(12, sigma_min=0.02),
    "sigma-space-one-round": lambda: _run_variance_exploding(K + 2, sigma_min=0.1),
    "sigma-space-flow-const-several-rounds": lambda: _run_flow(12),
    "sigma-space-flow-const-one-round": lambda: _run_flow(K + 2),
    "sigma-space-timestep-range-verified-in-groups": lambda: _run_timestep_range(grouped=True),
}


def _assert_every_position_is_exercised(stats) -> None:
    samples_rounds = sum(stats.advance_histogram.values())
    for advance in range(1, K + 2):  # stop at draft 0..K-1, or all K accepted + the bonus transition
        assert stats.advance_histogram[advance] >= 0.01 * samples_rounds, (advance, dict(stats.advance_histogram))


@pytest.mark.parametrize("case", CASES)
def test_strict_sampler_has_the_exact_law(case):
    samples, stats, (mean, variance) = CASES[case]()
    assert 0.45 <= stats.acceptance_rate <= 0.85, stats.acceptance_rate
    _assert_every_position_is_exercised(stats)
    p_values = exact_law_p_values(samples, mean, variance)
    assert min(p_values.values()) > ALPHA, p_values


def _fresh_draw_on_rejection(x_draft, mean_p, std_p, mean_q, std_q, generator=None, **kwargs):
    return mean_q + std_q * torch.randn(x_draft.shape, generator=generator, dtype=x_draft.dtype, device=x_draft.device)


WRONG_COUPLINGS = {"always-accept": accept_every_draft,
                   "fresh-draw-on-rejection": lambda patch: patch.setattr(rounds, "coupling_replacements", _fresh_draw_on_rejection)}


NEGATIVE_CONTROLS = [(case, wrong) for case in ("ddpm-learned-variance-several-rounds", "sigma-space-several-rounds",
                                                 "sigma-space-flow-const-several-rounds") for wrong in WRONG_COUPLINGS]
NEGATIVE_CONTROLS.append(("ddpm-learned-variance-compiled-drafter", "always-accept"))


@pytest.mark.parametrize(("case", "wrong"), NEGATIVE_CONTROLS)
def test_wrong_couplings_fail_the_same_test(case, wrong, monkeypatch):
    """Negative controls: the test has the power to see a sampler that is only approximately right."""
    WRONG_COUPLINGS[wrong](monkeypatch)
    samples, _, (mean, variance) = CASES[case]()
    p_values = exact_law_p_values(samples, mean, variance)
    assert min(p_values.values()) < ALPHA, p_values


def test_one_mixed_verification_batch_is_inexact_under_a_timestep_range():
    """Negative control for the grouped case: verifying all rows in one call lets the first row's sigma pick the
    denoiser for every row, and the law test sees it."""
    samples, stats, (mean, variance) = _run_timestep_range(grouped=False)
    p_values = exact_law_p_values(samples, mean, variance)
    assert min(p_values.values()) < ALPHA, p_values


def test_grouped_verification_counts_every_call():
    _, stats, _ = _run_timestep_range(grouped=True)
    # Rounds that straddle sigma 1 made two calls; one boundary never splits a round into more than two.
    assert stats.rounds < stats.sequential_dit_calls <= 2 * stats.rounds
