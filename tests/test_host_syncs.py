"""A speculative round synchronises the host with the sampling device at most once: for the accept decisions.

On a GPU every operation whose result the host must read (`.item()`, `.tolist()`, `.cpu()`, `bool(tensor)` in an
`if`, `int(tensor)`, `nonzero`, a boolean-mask index, ...) waits for all queued kernels; a round that does that
several times stalls the device several times. `HostSyncCounter` intercepts, with a `TorchFunctionMode`, every torch
operation that would be such a wait on a GPU, so the count can be checked on the CPU too (where nothing waits): the
round's bookkeeping on the host is numpy, so every torch operation the mode sees is a device operation.

Per run the samplers also read their inputs once (`check_sampler_inputs`: the labels' range and x's finiteness,
3 reads; the sigma-space sampler's schedule and x, 3 reads): `PER_RUN` below. With CUDA the same runs are repeated
on the GPU under `torch.cuda.set_sync_debug_mode("warn")`, which reports every real synchronisation.
"""

from __future__ import annotations

import traceback
import warnings
from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode

from free_core.engine.denoiser import GuidedDenoiser
from free_core.engine.diffusion import GaussianDiffusion
from free_core.engine.k_diffusion_sampler import sample_free_euler_ancestral
from free_core.engine.speculative import sample_speculative
from free_core.models.model_specs import resolve_dit, resolve_drafter
from toy_models import TEST_DEVICE, MixtureSigmaDenoiser, karras_sigmas

PER_RUN = 3  # input checks of one sampler call (see the module docstring)

Tensor = torch.Tensor
# Operations that hand a tensor's values to the host (or size their output by its values, which needs them).
READS_VALUES = {Tensor.item, Tensor.tolist, Tensor.cpu, Tensor.numpy, Tensor.__array__, Tensor.__bool__, Tensor.__int__,
                Tensor.__index__, Tensor.__float__, Tensor.nonzero, torch.nonzero, Tensor.argwhere, torch.argwhere,
                Tensor.unique, torch.unique, torch.unique_consecutive, Tensor.masked_select, torch.masked_select,
                Tensor.bincount, torch.bincount}
INDEXING = {Tensor.__getitem__, Tensor.__setitem__, Tensor.index_put_, Tensor.index_put, Tensor.index_select,
            torch.index_select, Tensor.index_copy_, Tensor.index_add_}


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def _target_device(args, kwargs) -> torch.device | None:
    for value in (*args, kwargs.get("device")):
        if isinstance(value, (str, torch.device)):
            return torch.device(value)
        if isinstance(value, torch.Tensor):  # .to(other): other's device
            return value.device
    return None


def sync_reason(func, args, kwargs) -> str | None:
    """Why `func(*args, **kwargs)` would make the host wait for the device, or None."""
    if func in READS_VALUES:
        return func.__name__
    if func in (torch.repeat_interleave, Tensor.repeat_interleave) and "output_size" not in kwargs \
            and len(args) > 1 and isinstance(args[1], torch.Tensor):
        return "repeat_interleave without output_size"
    if func is Tensor.to:
        source, target = args[0].device, _target_device(args[1:], kwargs)
        if target is not None and target.type != source.type and not kwargs.get("non_blocking", False):
            return f"blocking copy {source.type} -> {target.type}"
    if func in INDEXING:
        source = args[0]
        for index in _tensors(args[1:2] if func in (Tensor.__getitem__, Tensor.__setitem__) else args[1:]):
            if index.dtype == torch.bool and index.ndim:
                return f"{func.__name__} with a boolean mask"
            if index.device != source.device and index.ndim:
                return f"{func.__name__} with an index on {index.device} into a tensor on {source.device}"
    return None


def _caller() -> str:
    """The innermost free_core frame that asked (where to look when the count grows)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "free_core" in frame.filename and not frame.filename.endswith("host_transfer.py"):
            return f"{frame.filename.split('free_core')[-1]}:{frame.lineno} {frame.name}"
    return "outside free_core"


class HostSyncCounter(TorchFunctionMode):
    """Counts the operations that would synchronise the host with the device, with where each was asked for."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reason = sync_reason(func, args, kwargs)
        if reason is not None:
            self.events.append((reason, _caller()))
        return func(*args, **kwargs)

    def report(self) -> str:
        return "\n".join(f"{n} x {reason} at {where}" for (reason, where), n in Counter(self.events).most_common())


def _count(run, device: torch.device):
    """(sampler statistics, HostSyncCounter, CUDA's own count of synchronisations or None)."""
    counter, cuda_syncs = HostSyncCounter(), None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with counter:
                stats = run()
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    if device.type == "cuda":
        cuda_syncs = sum("synchronizing" in str(w.message) for w in caught)
    return stats, counter, cuda_syncs


_EMBEDDED: dict = {}


def _embedded(device: torch.device):
    """The embedded DiT and its learned drafter (1.9M parameters: a run of a few steps takes a second)."""
    if device not in _EMBEDDED:
        dit = resolve_dit("embedded", device)
        _EMBEDDED[device] = dit, resolve_drafter("embedded", dit, device)
    return _EMBEDDED[device]


def _ddpm_run(device: torch.device, mode: str, variance: str):
    dit, drafter = _embedded(device)
    denoiser = GuidedDenoiser(dit, GaussianDiffusion.respaced(40), cfg_scale=2.0, variance=variance)
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g, device=device)
    labels = torch.tensor([4, 9], device=device)
    options = {"relax_strength": 8.0} if mode == "relax" else {}
    return lambda: sample_speculative(denoiser, drafter, x, labels, g, draft_length=3, mode=mode, **options)[1]


def _sigma_run(device: torch.device, mode: str):
    model, sigmas = MixtureSigmaDenoiser(3), karras_sigmas(16).to(device)
    model.means = model.means.to(device)  # else the toy model would copy them to the device (and wait) every call
    x = torch.randn(8, 3, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device) * sigmas[0]
    options = {"relax_strength": 2.0} if mode == "relax" else {}
    sink: list = []

    def run():
        sample_free_euler_ancestral(model, x, sigmas, extra_args={"seed": 3}, stats_sink=sink, draft_length=4,
                                    mode=mode, **options)
        return sink[-1]

    return run


def _assert_at_most_one_per_round(stats, counter, cuda_syncs, allowed_extra: int = 0):
    assert stats.rounds > 3 and stats.sequential_dit_calls < stats.num_steps  # several rounds, drafts accepted
    limit = stats.rounds + PER_RUN + allowed_extra
    assert len(counter.events) <= limit, f"{len(counter.events)} host syncs for {stats.rounds} rounds:\n{counter.report()}"
    if cuda_syncs is not None:
        assert cuda_syncs <= limit, f"CUDA reported {cuda_syncs} synchronisations for {stats.rounds} rounds"


@pytest.mark.parametrize("mode", ["strict", "relax"])
def test_ddpm_space_syncs_once_per_round(mode):
    """The learned drafter on the embedded DiT with a fixed variance (equal draft and target stds: the reflection)."""
    stats, counter, cuda_syncs = _count(_ddpm_run(TEST_DEVICE, mode, "fixed_small"), TEST_DEVICE)
    _assert_at_most_one_per_round(stats, counter, cuda_syncs)


def test_ddpm_space_with_learned_variance_syncs_once_per_round_besides_residual_chunks():
    """Unequal stds: a rejected draft's replacement is drawn by rejection sampling, whose every chunk of candidates
    asks the host whether all rows found one (the random numbers drawn next depend on it): one more sync per chunk."""
    stats, counter, cuda_syncs = _count(_ddpm_run(TEST_DEVICE, "strict", "learned"), TEST_DEVICE)
    chunks = sum(where.endswith(" _residual") for _, where in counter.events)
    assert chunks >= 1, "the run must exercise the residual draw"
    _assert_at_most_one_per_round(stats, counter, None, allowed_extra=chunks)
    if cuda_syncs is not None:
        assert cuda_syncs <= stats.rounds + PER_RUN + chunks


@pytest.mark.parametrize("mode", ["strict", "relax"])
def test_sigma_space_syncs_once_per_round(mode):
    stats, counter, cuda_syncs = _count(_sigma_run(TEST_DEVICE, mode), TEST_DEVICE)
    _assert_at_most_one_per_round(stats, counter, cuda_syncs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: counts real synchronisations")
@pytest.mark.parametrize("space", ["ddpm", "sigma"])
def test_cuda_strict_sampling_syncs_once_per_round(space):
    """On the GPU, whatever FREE_TEST_DEVICE says: CUDA's own sync debug mode counts the waits."""
    device = torch.device("cuda")
    run = _ddpm_run(device, "strict", "fixed_small") if space == "ddpm" else _sigma_run(device, "strict")
    run()  # a first run pays the one-time costs (cuBLAS handles, the cost cache) that are no part of a round
    stats, counter, cuda_syncs = _count(run, device)
    _assert_at_most_one_per_round(stats, counter, cuda_syncs)
