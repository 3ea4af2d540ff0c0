"""The free_core pieces behind the ComfyUI nodes: class choices, generate, plots, images, in-process drafter training."""

import pytest
import torch

from free_core.models.class_labels import class_choices, resolve_class
from free_core.training.data import CLASS_NAMES
from free_core.models.dit import DiT, dit_config
from free_core.engine.draft_policy import AdaptiveDraftLength, FixedDraftLength
from free_core.training.fit_in_process import fit_drafter
from free_core.engine.drafter_interface import FrozenDrafter
from free_core.frontdoor.generate import generate
from free_core.frontdoor.options import OptionError, SamplerOptions
from free_core.frontdoor.image_tensors import samples_to_images
from free_core.models.imagenet_classes import IMAGENET_CLASSES
from free_core.engine.stats import SamplingStats
from free_core.evaluation.stats_plot import render_stats_plot, stats_text
from free_core.training.train_drafter import DrafterTrainConfig
from toy_models import random_micro_dit


@pytest.fixture(scope="module")
def micro():
    return random_micro_dit()


def test_imagenet_class_list_is_complete_and_in_index_order():
    assert len(IMAGENET_CLASSES) == len(set(IMAGENET_CLASSES)) == 1000
    assert IMAGENET_CLASSES[0] == "tench" and IMAGENET_CLASSES[207] == "Golden Retriever" and IMAGENET_CLASSES[999] == "toilet paper"


def test_class_choices_resolve_by_name_or_index_for_the_right_model():
    choices = class_choices()
    assert len(choices) == len(CLASS_NAMES) + 1000 and len(set(choices)) == len(choices)
    assert resolve_class("207 Golden Retriever", -1, 1000) == (207, "Golden Retriever")
    assert resolve_class("3 ring [embedded]", -1, 10) == (3, "ring")
    assert resolve_class("207 Golden Retriever", 88, 1000) == (88, "macaw")
    assert resolve_class("0 disk [embedded]", 5, 64) == (5, "class 5")


@pytest.mark.parametrize("choice, index, classes, message", [
    ("207 Golden Retriever", -1, 10, "ImageNet class"),
    ("3 ring [embedded]", -1, 1000, "embedded 10-class model"),
    ("0 tench", 1000, 1000, "class_index 1000 is out of range"),
    ("Golden Retriever", -1, 1000, "not a class choice"),
])
def test_wrong_class_for_the_model_is_a_clear_error(choice, index, classes, message):
    with pytest.raises(ValueError, match=message):
        resolve_class(choice, index, classes)


def test_generate_is_deterministic_and_strict_saves_calls(micro):
    labels = torch.tensor([1, 2])
    # fixed K: adaptive K may choose plain steps on a loaded machine, which saves nothing
    strict = SamplerOptions(mode="strict", seed=3, steps=20, cfg=2.0, draft_policy="fixed")
    first, stats = generate(micro, FrozenDrafter(), labels, strict)
    again, _ = generate(micro, FrozenDrafter(), labels, strict)
    baseline, base_stats = generate(micro, FrozenDrafter(), labels, strict.with_mode("off"))
    assert torch.equal(first, again) and first.shape == (2, 3, 32, 32)
    assert base_stats.rounds == 20 and stats.rounds < 20
    with pytest.raises(OptionError, match="mode"):
        SamplerOptions(mode="fast")


def test_draft_policy_option_gives_fixed_or_adaptive_k():
    assert isinstance(SamplerOptions(draft_length=4, draft_policy="fixed").policy(), FixedDraftLength)
    adaptive = SamplerOptions(draft_length=5, draft_policy="adaptive").policy()
    assert isinstance(adaptive, AdaptiveDraftLength) and adaptive.max_length == 5
    with pytest.raises(OptionError, match="draft_policy"):
        SamplerOptions(draft_policy="greedy")


def test_stats_plot_and_text(micro):
    _, stats = generate(micro, FrozenDrafter(), torch.tensor([0]), SamplerOptions(steps=10, cfg=1.0))
    plot = render_stats_plot(stats)
    assert plot.ndim == 3 and plot.shape[2] == 3 and 0 <= plot.min() and plot.max() <= 1
    assert plot.std() > 0.05  # something is drawn
    assert stats_text(stats).startswith(f"DiT calls saved: {10 - stats.sequential_dit_calls} of 10")
    _, baseline = generate(micro, FrozenDrafter(), torch.tensor([0]), SamplerOptions(mode="off", steps=10, cfg=1.0))
    assert render_stats_plot(baseline).shape == plot.shape  # a plain run (no drafts) still plots


def test_stats_canvas_text_says_calls_and_the_wall_clock_direction_in_words():
    def run(calls: int, proposed: int = 0, accepted: int = 0) -> SamplingStats:
        stats = SamplingStats("free-euler-ancestral-strict", 12, 2)
        for _ in range(calls):
            stats.record_round(states=4, rows=8, advances=torch.ones(2, dtype=torch.long))
        stats.proposed_per_step[0], stats.accepted_per_step[0] = proposed, accepted
        return stats

    assert run(9, 8, 2).canvas_text().splitlines()[:2] == ["9 DiT calls for 12 steps (1.33x fewer)", "acceptance 0.25, 0.00 s"]
    assert run(14, 4, 0).canvas_text().splitlines()[0] == "14 DiT calls for 12 steps"  # verification split into groups
    timed = run(9, 8, 2)
    timed.wall_time_s, timed.plain_step_s = 3.0, 0.5  # 12 plain steps would take 6 s
    assert "wall clock 3.00 s, 2.00x faster than 12 plain steps (est. 6.00 s" in timed.wall_clock_words()
    assert "wall clock 3.00 s, 2.00x faster than 12 plain steps" in timed.summary()
    timed.plain_step_s = 0.125  # 1.5 s
    assert "wall clock 3.00 s, 2.00x slower than 12 plain steps" in timed.wall_clock_words()
    assert timed.canvas_text().splitlines() == ["9 DiT calls for 12 steps (1.33x fewer)", "acceptance 0.25, 3.00 s",
                                                "wall clock: 2.00x slower than 12 plain steps (est.)"]
    adaptive = run(12)
    adaptive.draft_length, adaptive.draft_lengths = "adaptive", [0] * 12
    assert adaptive.canvas_text().splitlines()[-1] == "adaptive K: no gain on this device, plain steps"
    adaptive.draft_lengths[3] = 2
    assert "no gain" not in adaptive.canvas_text()
    adaptive.calibration_s = 13.2  # a first run on a machine measures its costs before sampling, outside the wall clock
    assert adaptive.canvas_text().splitlines()[-1] == "+ 13.2 s measuring this device first (once)"
    assert "13.2 s measuring this device's costs (once per machine)" in adaptive.summary()
    assert run(12).canvas_text().splitlines() == ["12 DiT calls for 12 steps", "0.00 s"]
    assert run(1).progress_line() == "free-euler-ancestral-strict: 1 DiT call so far"
    assert run(3, 4, 1).progress_line() == "free-euler-ancestral-strict: 3 DiT calls so far, acceptance 0.25"


def test_samples_to_images_layout_range_and_scale():
    samples = torch.tensor([-2.0, -1.0, 0.0, 1.0]).reshape(1, 1, 2, 2).repeat(2, 3, 1, 1)
    images = samples_to_images(samples, scale=3)
    assert images.shape == (2, 6, 6, 3)
    assert images[0, 0, 0, 0] == 0 and images[0, 0, 3, 0] == 0 and images[0, 3, 0, 0] == 0.5 and images[0, 5, 5, 0] == 1
    with pytest.raises(ValueError, match="VAE"):
        samples_to_images(torch.zeros(1, 4, 8, 8))


def test_fit_drafter_reports_progress_and_stops_when_the_callback_raises(micro):
    cfg = DrafterTrainConfig(sampling_steps=6, trajectories=2, cfg_scales=(1.0,), train_steps=3, batch_size=4, collect_batch=2)
    seen = []
    drafter, losses = fit_drafter(micro, cfg, lambda done, total: seen.append((done, total)))
    assert len(losses) == 3 and all(l == l for l in losses)
    assert seen[-1] == (6 * 2 + 3, 6 * 2 + 3) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert drafter.dit_fingerprint == getattr(micro, "weights_fingerprint", "")

    def stop(done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_drafter(micro, cfg, stop)


def test_fit_drafter_trains_a_dit_made_under_inference_mode():
    with torch.inference_mode():
        model = DiT(dit_config("DiT-Micro/8")).eval()
    cfg = DrafterTrainConfig(sampling_steps=4, trajectories=1, cfg_scales=(1.0,), train_steps=1, batch_size=2, collect_batch=1)
    with torch.inference_mode():  # as ComfyUI runs nodes
        _, losses = fit_drafter(model, cfg)
    assert len(losses) == 1


def test_the_plain_estimate_counts_the_progress_callback_a_plain_sampler_makes_every_step():
    """A UI's callback (progress bar, previews) runs once per round for FREE and once per step for a plain sampler; the
    wall clock comparison must charge it to both."""
    import time

    from free_core.engine.stats import SamplingStats, timed_callback

    stats = SamplingStats("free-strict", 12, 1)
    callback = timed_callback(lambda info: time.sleep(0.02), stats)
    for _ in range(3):
        callback({})
    assert stats.callback_s >= 0.02
    stats.plain_step_s = 0.1
    assert stats.plain_wall_estimate_s() == pytest.approx(12 * (0.1 + stats.callback_s))
    assert timed_callback(None, stats) is None
