"""FREE in sigma space (the SAMPLER for ComfyUI's SamplerCustom) samples the law of plain Euler-ancestral."""

import pytest
import torch

from exact_law import accept_every_draft
from free_core.engine.k_diffusion_sampler import ancestral_step, sample_euler_ancestral, sample_free_euler_ancestral
from free_core.evaluation.two_sample import energy_test
from toy_models import MixtureSigmaDenoiser as MixtureDenoiser, karras_sigmas

N_SAMPLES = 2000
ALPHA = 0.01


def _run(sampler, model, dim, seed, n=N_SAMPLES, **options):
    sigmas = karras_sigmas(20)
    x = torch.randn(n, dim, 1, 1, generator=torch.Generator().manual_seed(seed + 1000), dtype=torch.float64) * sigmas[0]
    sink = []
    out = sampler(model, x, sigmas, extra_args={"seed": seed}, stats_sink=sink, **options)
    return out, sink[0]


@pytest.mark.parametrize("dim", [2, 8])
def test_strict_sigma_space_sampler_matches_euler_ancestral_law(dim):
    model = MixtureDenoiser(dim)
    baseline, _ = _run(sample_euler_ancestral, model, dim, seed=0)
    free, stats = _run(sample_free_euler_ancestral, model, dim, seed=1, draft_length=6)
    assert stats.acceptance_rate < 0.9, "the frozen drafter must be imperfect so that rejections happen"
    assert stats.mean_advance > 1.0
    _, p_value = energy_test(baseline, free)
    assert p_value > ALPHA


@pytest.mark.parametrize("dim", [2, 8])
def test_energy_test_rejects_an_always_accept_sigma_space_coupling(dim, monkeypatch):
    """Negative control: accepting every frozen draft has the wrong law, and the same test sees it."""
    model = MixtureDenoiser(dim)
    baseline, _ = _run(sample_euler_ancestral, model, dim, seed=0)
    accept_every_draft(monkeypatch)
    wrong, _ = _run(sample_free_euler_ancestral, model, dim, seed=1, draft_length=6)
    _, p_value = energy_test(baseline, wrong)
    assert p_value < ALPHA


def test_one_batched_model_call_per_round_with_every_drafted_state():
    model = MixtureDenoiser(4)
    _, stats = _run(sample_free_euler_ancestral, model, 4, seed=2, n=16, draft_length=4)
    assert len(model.calls) == stats.rounds == stats.sequential_dit_calls < 20
    assert sum(model.calls) == stats.dit_states > stats.rounds * 1
    assert sum(k * v for k, v in stats.advance_histogram.items()) == 16 * 20  # every sample makes all 20 steps
    assert max(stats.advance_histogram) <= 5


def test_same_seed_same_bits_and_other_seed_differs():
    model = MixtureDenoiser(3)
    first, _ = _run(sample_free_euler_ancestral, model, 3, seed=5, n=8, mode="relax", relax_strength=1.0)
    second, _ = _run(sample_free_euler_ancestral, model, 3, seed=5, n=8, mode="relax", relax_strength=1.0)
    other, _ = _run(sample_free_euler_ancestral, model, 3, seed=6, n=8, mode="relax", relax_strength=1.0)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_relax_accepts_more_than_strict():
    model = MixtureDenoiser(8)
    _, strict = _run(sample_free_euler_ancestral, model, 8, seed=3, n=500, draft_length=6)
    _, relax = _run(sample_free_euler_ancestral, model, 8, seed=3, n=500, draft_length=6, mode="relax", relax_strength=4.0)
    assert relax.acceptance_rate > strict.acceptance_rate


def test_callback_reports_committed_steps_and_can_stop_sampling():
    model = MixtureDenoiser(2)
    seen = []

    def callback(info):
        seen.append(info["i"])
        if len(seen) == 2:
            raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        _run(sample_free_euler_ancestral, model, 2, seed=0, n=4, callback=callback)
    assert seen[0] == 0 and seen[1] > seen[0]  # the first round is one plain step; later rounds commit more
    assert len(model.calls) == 2


def test_ancestral_step_matches_k_diffusion_eta_one():
    sigma, sigma_next = torch.tensor([2.0]), torch.tensor([1.0])
    down, up = ancestral_step(sigma, sigma_next)
    assert torch.allclose(up, torch.tensor([(1.0 * (4.0 - 1.0) / 4.0) ** 0.5]))
    assert torch.allclose(down**2 + up**2, sigma_next**2)
    down, up = ancestral_step(torch.tensor([1.0]), torch.tensor([0.0]))
    assert down.item() == 0 and up.item() == 0


@pytest.mark.parametrize(
    "options, name",
    [({"mode": "fast"}, "mode"), ({"relax_strength": 1.0}, "relax_strength"), ({"draft_length": 0}, "draft_length")],
)
def test_bad_options_name_the_argument(options, name):
    with pytest.raises(ValueError, match=name):
        _run(sample_free_euler_ancestral, MixtureDenoiser(2), 2, seed=0, n=2, **options)


def test_inpainting_mask_is_refused_with_a_clear_message():
    sigmas = karras_sigmas(20)
    x = torch.randn(2, 2, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="denoise mask"):
        sample_free_euler_ancestral(MixtureDenoiser(2), x, sigmas, extra_args={"seed": 0, "denoise_mask": torch.ones_like(x)})


def test_adaptive_draft_length_drafts_when_acceptance_is_high(monkeypatch):
    """The policy sees each round's acceptance and a measured cost curve of the black-box model, so it drafts."""
    import types

    from free_core.engine import cost
    from free_core.engine.draft_policy import AdaptiveDraftLength

    # The cost measurement reads a clock that only the model's calls move (5 ms a call whatever its rows, as a big
    # model's does on a GPU), so the curve it measures is the same on a loaded machine as on a quiet one.
    clock = [0.0]
    monkeypatch.setattr(cost, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    toy = MixtureDenoiser(2, components=1)

    def model(x, sigma, **extra_args):
        clock[0] += 0.005
        return toy(x, sigma, **extra_args)

    policy = AdaptiveDraftLength(max_length=6)
    _, stats = _run(sample_free_euler_ancestral, model, 2, seed=0, n=16, draft_length=policy)
    assert policy.cost_curve and all(seconds == pytest.approx(0.005) for seconds in policy.cost_curve.values())
    assert stats.acceptance_rate > 0.8
    assert max(stats.draft_lengths) > 0 and stats.rounds < 20
    assert stats.states_per_round and sum(stats.states_per_round) == stats.dit_states
