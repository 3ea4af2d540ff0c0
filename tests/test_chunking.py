"""A verification batch that does not fit in memory is evaluated in chunks of rows, with the same samples."""

import logging

import pytest
import torch

from free_core.engine.chunking import RowChunks
from free_core.engine.denoiser import GuidedDenoiser
from free_core.engine.diffusion import GaussianDiffusion
from free_core.engine.k_diffusion_sampler import sample_free_euler_ancestral
from free_core.engine.sampling import sample_ancestral
from free_core.engine.speculative import sample_speculative
from toy_models import GaussianMixtureDenoiser, MixtureSigmaDenoiser, PerturbedDrafter, karras_sigmas, mixture


class OutOfMemoryAbove:
    """Wraps a model; a call on more than `max_rows` rows raises torch.OutOfMemoryError, as a full GPU does."""

    def __init__(self, model, max_rows: int):
        self.model, self.max_rows, self.calls = model, max_rows, []

    def _check(self, x):
        self.calls.append(x.shape[0])
        if x.shape[0] > self.max_rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} rows")

    def features(self, x, t, y):
        self._check(x)
        return self.model.features(x, t, y)

    def __call__(self, x, sigma, **extra_args):
        self._check(x)
        return self.model(x, sigma, **extra_args)

    def __getattr__(self, name):
        return getattr(self.model, name)


class UnlimitedDrafter(PerturbedDrafter):
    """Drafts with the wrapped model itself: the injected limit is on verification batches only."""

    def propose(self, model, context):
        return super().propose(getattr(model, "model", model), context)


def _speculative(model, seed=0):
    denoiser = GuidedDenoiser(model, GaussianDiffusion.respaced(16), cfg_scale=2.0)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 3, 1, 1, generator=g)
    labels = torch.zeros(12, dtype=torch.long)
    return sample_speculative(denoiser, UnlimitedDrafter(0.3, variance_shift=0.2), x, labels, g, draft_length=4)


def _toy():
    return GaussianMixtureDenoiser(mixture(3), data_std=0.3, learn_sigma=True)


def test_speculative_samples_are_identical_when_verification_is_split_to_fit(caplog):
    reference, reference_stats = _speculative(_toy())
    limited = OutOfMemoryAbove(_toy(), max_rows=20)
    with caplog.at_level(logging.WARNING, logger="free_core"):
        samples, stats = _speculative(limited)
    assert torch.equal(samples, reference)
    assert stats.accepted_per_step == reference_stats.accepted_per_step
    assert stats.chunk_rows is not None and stats.chunk_rows <= 20 and reference_stats.chunk_rows is None
    assert stats.sequential_dit_calls > reference_stats.sequential_dit_calls  # split rounds count every call
    assert "did not fit in memory" in caplog.text and f"chunks of {stats.chunk_rows} rows" in caplog.text
    # The size that fit is remembered: after the first failure no call above it is tried again.
    first_failure = next(k for k, rows in enumerate(limited.calls) if rows > 20)
    assert all(rows <= stats.chunk_rows for rows in limited.calls[first_failure + 1:])


def test_plain_sampler_samples_are_identical_when_a_step_is_split_to_fit():
    def run(model):
        denoiser = GuidedDenoiser(model, GaussianDiffusion.respaced(8), cfg_scale=2.0)
        g = torch.Generator().manual_seed(3)
        x = torch.randn(10, 3, 1, 1, generator=g)
        return sample_ancestral(denoiser, x, torch.zeros(10, dtype=torch.long), g)

    reference, _ = run(_toy())
    samples, stats = run(OutOfMemoryAbove(_toy(), max_rows=7))  # 20 rows per step -> chunks of 5
    assert torch.equal(samples, reference)
    assert stats.chunk_rows == 5 and stats.sequential_dit_calls == 8 * 4


def test_sigma_space_samples_are_identical_when_verification_is_split_to_fit():
    def run(model):
        sink = []
        x = torch.randn(16, 2, 1, 1, generator=torch.Generator().manual_seed(1)) * 10
        samples = sample_free_euler_ancestral(model, x, karras_sigmas(10), extra_args={"seed": 2}, draft_length=4,
                                              stats_sink=sink)
        return samples, sink[0]

    reference, reference_stats = run(MixtureSigmaDenoiser(2))
    samples, stats = run(OutOfMemoryAbove(MixtureSigmaDenoiser(2), max_rows=9))
    assert torch.equal(samples, reference)
    assert stats.chunk_rows is not None and stats.chunk_rows <= 9 and reference_stats.chunk_rows is None


def test_other_errors_propagate_and_are_never_retried():
    chunks, calls = RowChunks(), []

    def broken(start, stop):
        calls.append((start, stop))
        raise ValueError("a shape mismatch")

    with pytest.raises(ValueError, match="a shape mismatch"):
        chunks(broken, 8)
    assert calls == [(0, 8)] and chunks.max_rows is None


def test_a_single_row_that_does_not_fit_is_reraised_saying_so():
    def never_fits(start, stop):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError, match="one row of the verification batch does not fit in memory"):
        RowChunks()(never_fits, 8)


def test_chunks_join_tuples_and_halve_until_they_fit():
    chunks = RowChunks()

    def call(start, stop):
        if stop - start > 3:
            raise torch.OutOfMemoryError("out of memory")
        rows = torch.arange(start, stop)
        return rows, 2 * rows

    rows, doubled = chunks(call, 13)
    assert torch.equal(rows, torch.arange(13)) and torch.equal(doubled, 2 * torch.arange(13))
    assert chunks.max_rows == 3 and chunks.last_calls == 5  # 13 -> 6 -> 3: chunks of 3, 3, 3, 3, 1


def test_the_longest_draft_whose_verification_batch_fits_is_chosen_and_policies_obey_it():
    from free_core.engine.chunking import draft_length_that_fits
    from free_core.engine.draft_policy import AdaptiveDraftLength, FixedDraftLength

    bytes_for_rows = lambda rows: 100.0 * rows  # noqa: E731
    # 2 rows per state (cond, uncond): K = 3 needs 8 rows = 800 bytes, x1.5 = 1200
    assert draft_length_that_fits(bytes_for_rows, 1200, 2, 6) == 3
    assert draft_length_that_fits(bytes_for_rows, 1199, 2, 6) == 2
    assert draft_length_that_fits(bytes_for_rows, 1e9, 2, 6) == 6
    assert draft_length_that_fits(bytes_for_rows, 10, 2, 6) == 1  # chunking splits what does not fit
    fixed, adaptive = FixedDraftLength(6), AdaptiveDraftLength(max_length=8)
    fixed.limit(3), adaptive.limit(2)
    assert (fixed.longest, adaptive.longest) == (3, 2)
    fixed.limit(5)  # a limit never raises K
    assert fixed.longest == 3
