"""Measured cost of DiT forwards by batch size: what bounds any speculative sampler's wall-clock gain."""

from __future__ import annotations

import statistics
import time
from typing import Callable

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


def time_calls(call: Callable[[int], object], row_counts: list[int], device: torch.device | str = "cpu",
               repeats: int = 3) -> BatchCostCurve:
    """Median seconds of `call(rows)` for each row count; the first call of each size warms caches and is dropped."""
    curve: BatchCostCurve = {}
    on_cuda = torch.device(device).type == "cuda"
    for rows in sorted(set(row_counts)):
        times = []
        for _ in range(repeats + 1):
            if on_cuda:
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            call(rows)
            if on_cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - started)
        curve[rows] = statistics.median(times[1:])
    return curve


@torch.no_grad()
def measure_batch_cost(denoiser: GuidedDenoiser, x: torch.Tensor, labels: torch.Tensor, row_counts: list[int],
                       repeats: int = 3) -> dict[int, float]:
    """Median seconds of one DiT forward (features + head) for each row count (rows = states x CFG branches)."""
    model = denoiser.model
    t_last = int(denoiser.diffusion.model_timesteps[-1])

    def forward(rows: int) -> None:
        inputs = torch.zeros((rows, *x.shape[1:]), dtype=x.dtype, device=x.device)
        t = torch.full((rows,), t_last, device=x.device)
        y = labels[:1].expand(rows).clone()
        model.head(model.features(inputs, t, y), t, y)

    return time_calls(forward, row_counts, x.device, repeats)


_measured: dict[tuple, dict[int, float]] = {}


def cached_batch_cost(denoiser: GuidedDenoiser, x: torch.Tensor, labels: torch.Tensor, row_counts: list[int]) -> dict[int, float]:
    """`measure_batch_cost`, measured once per model, device, input shape and sizes in this process: timing
    forwards inside every run would cost more than the adaptive policy saves on small runs."""
    key = (id(denoiser.model), str(x.device), x.dtype, tuple(x.shape[1:]), tuple(row_counts))
    if key not in _measured:
        _measured[key] = measure_batch_cost(denoiser, x, labels, row_counts)
    return dict(_measured[key])


def cached_black_box_cost(key: object, call: Callable[[int], object], row_counts: list[int],
                          device: torch.device | str = "cpu") -> BatchCostCurve:
    """The cost curve of a black-box model (a ComfyUI MODEL) at `row_counts`, measured once per `key` in this process.

    A large model's forward is expensive, so only the smallest and largest count and powers of two of the smallest
    between them are timed (one warm-up and one timed call each); the rest is interpolated.
    """
    counts = sorted(set(row_counts))
    full_key = (key, tuple(counts))
    if full_key not in _measured:
        timed, rows = [counts[-1]], counts[0]
        while rows < counts[-1]:
            timed.append(rows)
            rows *= 2
        curve = time_calls(call, timed, device, repeats=1)
        _measured[full_key] = {rows: interpolate_cost(curve, rows) for rows in counts}
    return dict(_measured[full_key])
