"""Strict FREE samples the law of the plain ancestral sampler (two-sample tests on closed-form toy diffusions)."""

import pytest
import torch

from exact_law import accept_every_draft
from free_core.engine.denoiser import GuidedDenoiser
from free_core.engine.diffusion import GaussianDiffusion
from free_core.engine.drafter_interface import FrozenDrafter
from free_core.engine.sampling import sample_ancestral
from free_core.engine.speculative import sample_speculative
from free_core.evaluation.two_sample import energy_test
from toy_models import GaussianMixtureDenoiser, mixture

N_SAMPLES = 2000
ALPHA = 0.01
STEPS = 20


def _toy(dim: int, learn_sigma: bool) -> GuidedDenoiser:
    return GuidedDenoiser(GaussianMixtureDenoiser(mixture(dim), data_std=0.3, learn_sigma=learn_sigma), GaussianDiffusion.respaced(STEPS))


def _run(sampler, denoiser, dim, seed, **kwargs):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_SAMPLES, dim, 1, 1, generator=g, dtype=torch.float64)
    labels = torch.zeros(N_SAMPLES, dtype=torch.long)
    return sampler(denoiser, x=x, labels=labels, generator=g, **kwargs) if sampler is sample_ancestral else \
        sampler(denoiser, FrozenDrafter(), x, labels, g, **kwargs)


@pytest.mark.parametrize("learn_sigma", [False, True], ids=["fixed-variance", "learned-variance"])
@pytest.mark.parametrize("dim", [2, 16])
def test_strict_sampler_matches_baseline_law(dim, learn_sigma):
    denoiser = _toy(dim, learn_sigma)
    baseline, _ = _run(sample_ancestral, denoiser, dim, seed=0)
    free, stats = _run(sample_speculative, denoiser, dim, seed=1, draft_length=6)
    assert stats.acceptance_rate < 0.9, "the drafter must be imperfect so that rejections happen"
    assert stats.mean_advance > 1.0  # drafts were accepted too
    _, p_value = energy_test(baseline, free)
    assert p_value > ALPHA


@pytest.mark.parametrize("dim", [2, 16])
def test_two_sample_test_rejects_an_always_accept_coupling(dim, monkeypatch):
    """Negative control: without the coupling the drafts' law is wrong, and the same test sees it."""
    denoiser = _toy(dim, learn_sigma=False)
    baseline, _ = _run(sample_ancestral, denoiser, dim, seed=0)
    accept_every_draft(monkeypatch)
    wrong, _ = _run(sample_speculative, denoiser, dim, seed=1, draft_length=6)
    _, p_value = energy_test(baseline, wrong)
    assert p_value < ALPHA


def test_relax_strength_zero_is_strict_bit_for_bit():
    denoiser = _toy(2, learn_sigma=True)
    strict, strict_stats = _run(sample_speculative, denoiser, 2, seed=3, draft_length=4)
    relax, relax_stats = _run(sample_speculative, denoiser, 2, seed=3, draft_length=4, mode="relax", relax_strength=0.0)
    assert torch.equal(strict, relax)
    assert strict_stats.accepted_per_step == relax_stats.accepted_per_step


def test_relax_accepts_more_and_needs_fewer_calls():
    denoiser = _toy(16, learn_sigma=False)
    _, strict = _run(sample_speculative, denoiser, 16, seed=3, draft_length=6)
    _, relax = _run(sample_speculative, denoiser, 16, seed=3, draft_length=6, mode="relax", relax_strength=4.0)
    assert relax.acceptance_rate > strict.acceptance_rate
    assert relax.sequential_dit_calls <= strict.sequential_dit_calls


class CountingDenoiser(GaussianMixtureDenoiser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.feature_calls = 0

    def features(self, x, t, y):
        self.feature_calls += 1
        return super().features(x, t, y)


def test_each_round_is_one_batched_dit_forward_and_stats_add_up():
    model = CountingDenoiser(mixture(4), data_std=0.3)
    denoiser = GuidedDenoiser(model, GaussianDiffusion.respaced(30))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, 1, 1, generator=g, dtype=torch.float64)
    _, stats = sample_speculative(denoiser, FrozenDrafter(), x, torch.zeros(64, dtype=torch.long), g, draft_length=5)
    assert model.feature_calls == stats.rounds == stats.sequential_dit_calls < 30
    # every sample advances exactly 30 steps in total
    assert sum(k * v for k, v in stats.advance_histogram.items()) == 64 * 30
    assert max(stats.advance_histogram) <= 6  # K drafts + the free exact transition
    assert sum(stats.accepted_per_step) <= sum(stats.proposed_per_step)
    assert stats.acceptance_per_step[0] is None  # the final deterministic step is never drafted


def test_adaptive_draft_length_keeps_strict_exact():
    from free_core.engine.draft_policy import AdaptiveDraftLength

    denoiser = _toy(2, learn_sigma=True)
    baseline, _ = _run(sample_ancestral, denoiser, 2, seed=0)
    # A sublinear cost curve (as on small batches) so that the policy really varies K with acceptance.
    policy = AdaptiveDraftLength(max_length=8, cost_curve={rows: 1 + 0.0001 * rows for rows in (2000, 18000)})
    free, stats = _run(sample_speculative, denoiser, 2, seed=1, draft_length=policy)
    assert len(set(stats.draft_lengths[1:])) > 1, "the adaptive policy should change K across rounds"
    _, p_value = energy_test(baseline, free)
    assert p_value > ALPHA
