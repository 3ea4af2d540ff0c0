"""Measured cost of DiT forwards by batch size: what bounds any speculative sampler's wall-clock gain."""

from __future__ import annotations

import statistics
import time

import torch

from .denoiser import GuidedDenoiser

BatchCostCurve = dict[int, float]  # rows in one DiT forward -> seconds


def interpolate_cost(curve: BatchCostCurve, rows: int) -> float:
    """Piecewise-linear in rows; linear extrapolation past the last measured point."""
    known = sorted(curve)
    if rows in curve:
        return curve[rows]
    if rows > known[-1]:
        last, before = known[-1], known[-2] if len(known) > 1 else known[-1]
        slope = (curve[last] - curve[before]) / (last - before) if last != before else curve[last] / last
        return curve[last] + slope * (rows - last)
    below = max(r for r in known if r <= rows) if rows >= known[0] else known[0]
    above = min(r for r in known if r >= rows)
    if below == above:
        return curve[below]
    w = (rows - below) / (above - below)
    return (1 - w) * curve[below] + w * curve[above]


@torch.no_grad()
def measure_batch_cost(denoiser: GuidedDenoiser, x: torch.Tensor, labels: torch.Tensor, row_counts: list[int],
                       repeats: int = 3) -> dict[int, float]:
    """Median seconds of one DiT forward (features + head) for each row count (rows = states x CFG branches)."""
    model = denoiser.model
    shape = x.shape[1:]
    curve: dict[int, float] = {}
    for rows in sorted(set(row_counts)):
        inputs = torch.zeros((rows, *shape), dtype=x.dtype, device=x.device)
        t = torch.full((rows,), int(denoiser.diffusion.model_timesteps[-1]), device=x.device)
        y = labels[:1].expand(rows).clone()
        times = []
        for _ in range(repeats + 1):  # the first call warms caches and is dropped
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            started = time.perf_counter()
            model.head(model.features(inputs, t, y), t, y)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            times.append(time.perf_counter() - started)
        curve[rows] = statistics.median(times[1:])
    return curve


_measured: dict[tuple, dict[int, float]] = {}


def cached_batch_cost(denoiser: GuidedDenoiser, x: torch.Tensor, labels: torch.Tensor, row_counts: list[int]) -> dict[int, float]:
    """`measure_batch_cost`, measured once per model, device, input shape and sizes in this process: timing
    forwards inside every run would cost more than the adaptive policy saves on small runs."""
    key = (id(denoiser.model), str(x.device), x.dtype, tuple(x.shape[1:]), tuple(row_counts))
    if key not in _measured:
        _measured[key] = measure_batch_cost(denoiser, x, labels, row_counts)
    return dict(_measured[key])
