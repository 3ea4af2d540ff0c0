"""A DiT in bfloat16 / float16 while states stay float32: strict stays exact with respect to the plain sampler in
the same dtype, mode off is the plain sampler bit for bit, and a dtype torch cannot run is refused before loading."""

import pytest
import torch

from exact_law import accept_every_draft
import free_core.frontdoor.cli
import free_core.models.model_specs as model_specs
from free_core.engine.denoiser import GuidedDenoiser, model_dtype
from free_core.engine.diffusion import GaussianDiffusion
from free_core.engine.drafter_interface import DraftContext, FrozenDrafter
from free_core.engine.sampling import sample_ancestral
from free_core.engine.speculative import sample_speculative
from free_core.evaluation.two_sample import energy_test
from free_core.frontdoor.generate import generate
from free_core.frontdoor.options import OptionError, SamplerOptions
from free_core.models.model_specs import resolve_dit, resolve_drafter, resolve_dtype
from toy_models import GaussianMixtureDenoiser, mixture

N_SAMPLES = 2000
ALPHA = 0.01
STEPS = 20


class Bfloat16MixtureDenoiser(GaussianMixtureDenoiser):
    """The exact mixture denoiser computing in bfloat16: it must be fed bfloat16 and answers in bfloat16."""

    dtype = torch.bfloat16

    def features(self, x, t, y):
        assert x.dtype == torch.bfloat16, f"the model was fed {x.dtype}, not its own dtype"
        return super().features(x, t, y)  # computed from the bfloat16 state, rounded to bfloat16

    def head(self, h, t, y):
        assert h.dtype == torch.bfloat16
        return super().head(h, t, y)


def _bf16_toy() -> GuidedDenoiser:
    return GuidedDenoiser(Bfloat16MixtureDenoiser(mixture(2), data_std=0.3, learn_sigma=True),
                          GaussianDiffusion.respaced(STEPS))


def _samples(denoiser: GuidedDenoiser, seed: int, speculative: bool):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_SAMPLES, 2, 1, 1, generator=g)  # float32 states
    labels = torch.zeros(N_SAMPLES, dtype=torch.long)
    if speculative:
        return sample_speculative(denoiser, FrozenDrafter(), x, labels, g, draft_length=6)
    return sample_ancestral(denoiser, x, labels, g)


def test_strict_sampler_in_bfloat16_matches_the_plain_bfloat16_sampler_law():
    denoiser = _bf16_toy()
    assert denoiser.dtype == torch.bfloat16
    baseline, _ = _samples(denoiser, seed=0, speculative=False)
    free, stats = _samples(denoiser, seed=1, speculative=True)
    assert baseline.dtype == free.dtype == torch.float32  # the states stay float32
    assert 0.1 < stats.acceptance_rate < 0.9 and stats.mean_advance > 1.0
    _, p_value = energy_test(baseline, free)
    assert p_value > ALPHA


def test_the_bfloat16_law_test_rejects_an_always_accept_coupling(monkeypatch):
    """Negative control: the same test, in the same dtype, sees a sampler that skips the coupling."""
    denoiser = _bf16_toy()
    baseline, _ = _samples(denoiser, seed=0, speculative=False)
    accept_every_draft(monkeypatch)
    wrong, _ = _samples(denoiser, seed=1, speculative=True)
    _, p_value = energy_test(baseline, wrong)
    assert p_value < ALPHA


def test_mode_off_in_bfloat16_is_the_plain_bfloat16_ancestral_sampler_bit_for_bit():
    """generate(mode off) with a bfloat16 DiT = one bfloat16 forward per step, its output cast to float32."""
    dit = resolve_dit("random:DiT-Micro/8", dtype=torch.bfloat16)
    assert model_dtype(dit) == torch.bfloat16
    labels = torch.tensor([0, 3, 7])
    options = SamplerOptions(mode="off", steps=6, cfg=1.0, seed=5)
    samples, _ = generate(dit, FrozenDrafter(), labels, options)

    diffusion = GaussianDiffusion.respaced(options.steps)
    g = torch.Generator().manual_seed(options.seed)
    x = torch.randn((3, 3, 32, 32), generator=g)
    for step in reversed(range(options.steps)):
        i = torch.full((3,), step)
        output = dit(x.to(torch.bfloat16), diffusion.timestep_for(i), labels).float()
        mean, std = diffusion.transition(output, x, i, "learned", clip_denoised=True)
        x = mean + std * torch.randn(x.shape, generator=g)
    assert samples.dtype == torch.float32
    assert torch.equal(samples, x)
    in_float32, _ = generate(resolve_dit("random:DiT-Micro/8"), FrozenDrafter(), labels, options)
    assert not torch.equal(samples, in_float32)  # the dtype took effect


def test_the_embedded_learned_drafter_runs_in_bfloat16_with_its_dit():
    """In the DiT's dtype, the drafter proposes what it proposes in float32, up to bfloat16 rounding."""
    proposals = {}
    for dtype in (torch.float32, torch.bfloat16):
        dit = resolve_dit("embedded", dtype=dtype)
        drafter = resolve_drafter("embedded", dit)
        assert {p.dtype for p in drafter.parameters()} == {dtype}
        denoiser = GuidedDenoiser(dit, GaussianDiffusion.respaced(50))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, dit.in_channels, dit.input_size, dit.input_size, generator=g)
        i, labels = torch.full((2,), 30), torch.tensor([1, 4])
        features, output = denoiser.evaluate(x, i, labels)
        mean, std = denoiser.transition(output, x, i)
        context = DraftContext(features=torch.stack([features, features], dim=1), output=output,
                               x=mean + std * torch.randn(x.shape, generator=g), previous_x=x,
                               t=denoiser.diffusion.timestep_for(i - 1), y=labels, step=i - 1)
        drafted, drafted_features = drafter.propose(dit, context)
        assert drafted.dtype == torch.float32 and drafted_features.dtype == dtype
        proposals[dtype] = drafted
    error = (proposals[torch.bfloat16] - proposals[torch.float32]).abs().max()
    assert error < 0.05 * proposals[torch.float32].abs().max(), error


def test_float16_is_refused_naming_the_option_where_torch_cannot_run_it(monkeypatch, capsys):
    assert resolve_dtype("bfloat16") == torch.bfloat16 and resolve_dtype("float32") == torch.float32
    monkeypatch.setattr(model_specs, "_runs_in", lambda dtype, device: False)
    with pytest.raises(OptionError, match=r"--dtype float16: .* use --dtype bfloat16 or float32"):
        resolve_dtype("float16")

    def no_model(*args, **kwargs):
        raise AssertionError("the dtype must be refused before any model is loaded")

    monkeypatch.setattr(free_core.frontdoor.cli, "resolve_dit", no_model)
    assert free_core.frontdoor.cli.main(["sample", "--dtype", "float16", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "--dtype float16" in error


def test_a_drafter_fitted_to_a_bfloat16_dit_trains_in_float32_and_comes_back_in_its_dtype():
    from free_core.training.fit_in_process import fit_drafter
    from free_core.training.train_drafter import DrafterTrainConfig

    dit = resolve_dit("random:DiT-Micro/8", dtype=torch.bfloat16)
    cfg = DrafterTrainConfig(sampling_steps=(4,), trajectories=2, cfg_scales=(1.0,), train_steps=3, batch_size=4,
                             unroll=2, collect_batch=2)
    drafter, losses = fit_drafter(dit, cfg)
    assert {p.dtype for p in drafter.parameters()} == {torch.bfloat16} and dit.pos_embed.dtype == torch.bfloat16
    assert len(losses) == 3 and all(loss == loss for loss in losses)


def test_strict_with_a_bfloat16_dit_times_its_plain_step_in_bfloat16(tmp_path, monkeypatch):
    monkeypatch.setenv("FREE_COST_CACHE", str(tmp_path))  # measured here, not read from another dtype's curve
    dit = resolve_dit("random:DiT-Micro/8", dtype=torch.bfloat16)
    samples, stats = generate(dit, FrozenDrafter(), torch.tensor([0, 1]), SamplerOptions(mode="strict", steps=4, cfg=2.0))
    assert samples.dtype == torch.float32 and stats.plain_step_s > 0
    assert any("bfloat16" in path.read_text() for path in tmp_path.glob("*.json"))
