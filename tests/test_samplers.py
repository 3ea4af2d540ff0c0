"""Determinism, bad input and statistics of the samplers on a small random DiT."""

import pytest
import torch

from free_core.engine.denoiser import GuidedDenoiser
from free_core.engine.diffusion import GaussianDiffusion
from free_core.models.dit import DiT, dit_config
from free_core.engine.drafter_interface import FrozenDrafter
from free_core.engine.sampling import initial_noise, sample_ancestral
from free_core.engine.speculative import sample_speculative
from toy_models import TEST_DEVICE


@pytest.fixture(scope="module")
def denoiser():
    torch.manual_seed(0)
    model = DiT(dit_config("DiT-Micro/8")).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return GuidedDenoiser(model.to(TEST_DEVICE), GaussianDiffusion.respaced(25), cfg_scale=2.0)


def _inputs(seed=0, batch=3):
    g = torch.Generator(TEST_DEVICE).manual_seed(seed)
    return initial_noise((batch, 3, 32, 32), g, TEST_DEVICE), torch.tensor([0, 4, 9], device=TEST_DEVICE)[:batch], g


@pytest.mark.parametrize("mode", ["baseline", "strict", "relax"])
def test_same_seed_same_bits(denoiser, mode):
    outputs = []
    for _ in range(2):
        x, labels, g = _inputs()
        if mode == "baseline":
            out, _ = sample_ancestral(denoiser, x, labels, g)
        else:
            out, _ = sample_speculative(denoiser, FrozenDrafter(), x, labels, g, draft_length=4, mode=mode,
                                        relax_strength=1.0 if mode == "relax" else 0.0)
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[1])
    x, labels, _ = _inputs()
    other, _ = sample_ancestral(denoiser, x, labels, torch.Generator(TEST_DEVICE).manual_seed(99))
    assert not torch.equal(outputs[0], other)


def test_cfg_runs_cond_and_uncond_rows_in_one_batch(denoiser):
    x, labels, g = _inputs()
    _, stats = sample_speculative(denoiser, FrozenDrafter(), x, labels, g)
    assert stats.dit_rows == 2 * stats.dit_states


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"draft_length": 0}, "draft_length"),
        ({"draft_length": 2.5}, "draft_length"),
        ({"mode": "fast"}, "mode"),
        ({"mode": "relax", "relax_strength": -1.0}, "relax_strength"),
        ({"relax_strength": 1.0}, "relax_strength"),
    ],
)
def test_bad_options_name_the_argument(denoiser, kwargs, name):
    x, labels, g = _inputs()
    with pytest.raises(ValueError, match=name):
        sample_speculative(denoiser, FrozenDrafter(), x, labels, g, **kwargs)


def test_bad_tensors_name_the_argument(denoiser):
    x, labels, g = _inputs()
    with pytest.raises(ValueError, match="labels"):
        sample_ancestral(denoiser, x, labels[:2], g)
    with pytest.raises(ValueError, match="labels"):
        sample_ancestral(denoiser, x, torch.tensor([0, 1, 11], device=TEST_DEVICE), g)
    with pytest.raises(ValueError, match="x must be"):
        sample_speculative(denoiser, FrozenDrafter(), x[:, :2], labels, g)
    with pytest.raises(ValueError, match="cfg_scale"):
        GuidedDenoiser(denoiser.model, denoiser.diffusion, cfg_scale=float("nan"))


def test_nan_model_output_is_a_clear_error(denoiser):
    class Broken(torch.nn.Module):
        in_channels, learn_sigma, null_class = 3, True, 10

        def features(self, x, t, y):
            return torch.full((x.shape[0], 4, 8), float("nan"), device=x.device)

        def head(self, h, t, y):
            return torch.full((h.shape[0], 6, 32, 32), float("nan"), device=h.device)

    broken = GuidedDenoiser(Broken(), GaussianDiffusion.respaced(5))
    x, labels, g = _inputs()
    with pytest.raises(ValueError, match="model_output contains NaN"):
        sample_speculative(broken, FrozenDrafter(), x, labels, g)


def test_measuring_the_device_before_sampling_is_reported_apart_from_the_wall_clock(denoiser):
    """An adaptive run's first use of a machine measures its costs; that time is the statistics' calibration_s,
    not part of wall_time_s, which the canvas compares with plain steps."""
    import time

    from free_core.engine.draft_policy import AdaptiveDraftLength

    class SlowToMeasure(AdaptiveDraftLength):
        def start_run(self, *args, **kwargs):
            time.sleep(0.3)
            super().start_run(*args, **kwargs)

    x, labels, g = _inputs()
    started = time.perf_counter()
    _, stats = sample_speculative(denoiser, FrozenDrafter(), x, labels, g, draft_length=SlowToMeasure(max_length=2))
    elapsed = time.perf_counter() - started
    assert stats.calibration_s >= 0.3 and stats.wall_time_s <= elapsed - 0.3
