"""The plain ancestral sampler (the law FREE strict reproduces) and what all samplers share."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from .denoiser import GuidedDenoiser
from .stats import SamplingStats

Callback = Callable[[dict[str, Any]], None]


def initial_noise(shape: tuple[int, ...], generator: torch.Generator, device: str | torch.device = "cpu") -> torch.Tensor:
    """x_T ~ N(0, I), drawn from the run's generator."""
    return torch.randn(shape, generator=generator, device=device)


def check_sampler_inputs(denoiser: GuidedDenoiser, x: torch.Tensor, labels: torch.Tensor) -> None:
    model = denoiser.model
    if x.ndim != 4 or x.shape[1] != model.in_channels:
        raise ValueError(f"x must be (batch, {model.in_channels}, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError("x must hold at least one sample")
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},) to match x's batch, got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() > model.null_class:
        raise ValueError(f"labels must lie in [0, {model.null_class}] ({model.null_class} is the null class), got {labels.tolist()}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or Inf")


def step_noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


@torch.inference_mode()  # samples are never differentiated; cheaper per op than no_grad
def sample_ancestral(
    denoiser: GuidedDenoiser,
    x: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, SamplingStats]:
    """Ancestral sampling: one DiT call per step, x_{i-1} ~ N(mean, std^2) from `denoiser.transition`."""
    check_sampler_inputs(denoiser, x, labels)
    started = time.perf_counter()
    n, steps = x.shape[0], denoiser.num_steps
    stats = SamplingStats("ancestral", steps, n)
    for step in reversed(range(steps)):
        if callback is not None:
            callback({"round": steps - 1 - step, "steps_done": steps - 1 - step, "total_steps": steps, "x": x})
        i = torch.full((n,), step, dtype=torch.long, device=x.device)
        _, output_rows = denoiser.evaluate(x, i, labels)
        mean, std = denoiser.transition(denoiser.guided_output(output_rows), x, i)
        x = mean + std * step_noise(x, generator)
        stats.rounds += 1
        stats.sequential_dit_calls += denoiser.chunks.last_calls
        stats.dit_states += n
        stats.states_per_round.append(n)
        stats.dit_rows += output_rows.shape[0]
        stats.advance_histogram[1] += n
    if callback is not None:
        callback({"round": steps, "steps_done": steps, "total_steps": steps, "x": x})
    stats.wall_time_s = time.perf_counter() - started
    stats.chunk_rows = denoiser.chunks.max_rows
    return x, stats
