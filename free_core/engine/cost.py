"""Measured cost of DiT forwards by batch size: what bounds any speculative sampler's wall-clock gain."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from .cpu_allocator import keeps_freed_memory
from .denoiser import GuidedDenoiser

BatchCostCurve = dict[int, float]  # rows in one DiT forward -> seconds
# Part of every cached curve's key: curves measured an older way (sizes one after another; drafting passes as the
# median of 3) are measured again.
TIMING_METHOD = "interleaved medians after a warm-up; drafting passes over 15"
# A drafting pass takes about a millisecond: the median of 3 fell inside one slow spell of the machine (1.75 ms against
# 1.0-1.25 ms measured before and after at 2 threads here, enough to keep adaptive K from drafting where K = 2 paid),
# and 15 of them still cost less than one DiT forward of the curve.
DRAFT_TIMING_REPEATS = 15


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
    """Median seconds of `call(rows)` for each row count, over `repeats` passes through all the counts.

    One untimed call at the largest count comes first (allocator growth and kernel choice happen once, not in the
    first size timed), and the passes interleave the counts, so a slow spell of the machine lands on every count
    alike instead of bending the curve.
    """
    counts = sorted(set(row_counts))
    on_cuda = torch.device(device).type == "cuda"
    times: dict[int, list[float]] = {rows: [] for rows in counts}
    call(counts[-1])
    for _ in range(repeats):
        for rows in counts:
            if on_cuda:
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            call(rows)
            if on_cuda:
                torch.cuda.synchronize(device)
            times[rows].append(time.perf_counter() - started)
    return {rows: statistics.median(samples) for rows, samples in times.items()}


def nondecreasing(curve: BatchCostCurve) -> BatchCostCurve:
    """The curve with timing noise that makes more rows look cheaper than fewer removed (a running maximum)."""
    result, highest = {}, 0.0
    for rows in sorted(curve):
        highest = max(highest, curve[rows])
        result[rows] = highest
    return result


def dit_forward(denoiser: GuidedDenoiser, x: torch.Tensor, labels: torch.Tensor) -> Callable[[int], None]:
    """`forward(rows)`: one DiT forward (features + head) of `rows` rows shaped like `x`'s, as the cost curve times it."""
    model = denoiser.model
    t_last = int(denoiser.diffusion.model_timesteps[-1])

    def forward(rows: int) -> None:
        inputs = torch.zeros((rows, *x.shape[1:]), dtype=denoiser.dtype or x.dtype, device=x.device)
        t = torch.full((rows,), t_last, device=x.device)
        y = labels[:1].expand(rows).clone()
        model.head(model.features(inputs, t, y), t, y)

    return forward


@torch.inference_mode()  # as the samplers run their forwards: cheaper per op than no_grad
def measure_batch_cost(denoiser: GuidedDenoiser, x: torch.Tensor, labels: torch.Tensor, row_counts: list[int],
                       repeats: int = 5) -> dict[int, float]:
    """Median seconds of one DiT forward (features + head) for each row count (rows = states x CFG branches)."""
    return time_calls(dit_forward(denoiser, x, labels), row_counts, x.device, repeats)


def cost_cache_dir() -> Path:
    """Where measured cost curves are kept: $FREE_COST_CACHE, else ~/.cache/free_core/cost_curves."""
    return Path(os.environ.get("FREE_COST_CACHE") or Path.home() / ".cache" / "free_core" / "cost_curves")


def machine_key(device: torch.device | str) -> dict:
    """What a forward's cost depends on besides the model: the device (and on a CPU its threads and whether the
    process keeps freed memory: see cpu_allocator.py) and torch."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.machine()} {platform.processor()} {os.cpu_count()} cores {torch.get_num_threads()} threads"
        if keeps_freed_memory():
            name += " kept memory"
    return {"device": name, "torch": torch.__version__}


def disk_cached_curve(key: dict, measure: Callable[[list[int]], BatchCostCurve], row_counts: list[int],
                      persist: bool = True) -> BatchCostCurve:
    """The cost curve for `key` at `row_counts`, measured once per machine and kept on disk (JSON, exact floats).

    The adaptive draft length reads this curve, so the same seed gives the same samples in every process that
    finds the file: only the first run with a new model, shape, machine or set of row counts measures (with
    warm-up), and later runs never depend on their own timings. The counts are part of the key, so a curve is always
    one measuring session's: counts timed at another time, under another load (another batch size's run), never
    enter it, where a merged curve would price one batch size by a quiet spell and the next by a busy one.
    `persist=False` keeps the curve in this process only (a key that names an object, not an architecture).
    """
    counts = sorted(set(row_counts))
    full_key = json.dumps({**key, "counts": counts, "timing": TIMING_METHOD}, sort_keys=True, default=str)
    path = cost_cache_dir() / (hashlib.sha256(full_key.encode()).hexdigest()[:24] + ".json")
    curve = _measured.get(full_key)
    if curve is None and persist:
        try:
            stored = json.loads(path.read_text())
            if stored["key"] == full_key:
                curve = {int(rows): float(seconds) for rows, seconds in stored["curve"].items()}
        except (OSError, ValueError, KeyError):
            pass
    if curve is None or set(curve) != set(counts):
        curve = measure(counts)
        if persist:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.partial")
            partial.write_text(json.dumps({"key": full_key, "curve": {str(r): curve[r] for r in sorted(curve)}}, indent=1))
            partial.replace(path)
    _measured[full_key] = curve
    smooth = nondecreasing(curve)
    return {rows: smooth[rows] for rows in row_counts}


_measured: dict[str, BatchCostCurve] = {}


def cached_batch_cost(denoiser: GuidedDenoiser, x: torch.Tensor, labels: torch.Tensor, row_counts: list[int]) -> dict[int, float]:
    """`measure_batch_cost` at `row_counts`, measured once per DiT architecture, input shape and machine (kept on disk):
    timing forwards inside every run would cost more than the adaptive policy saves, and would make its choices, and
    so the samples, depend on the run's timings."""
    key = {"kind": "dit", "config": denoiser.model.config.to_dict(), "dtype": str(denoiser.dtype or x.dtype),
           "shape": list(x.shape[1:]), **machine_key(x.device)}
    return disk_cached_curve(key, lambda counts: measure_batch_cost(denoiser, x, labels, counts), row_counts)


def cached_black_box_cost(key: object, call: Callable[[int], object], row_counts: list[int],
                          device: torch.device | str = "cpu", persist: bool = True) -> BatchCostCurve:
    """The cost curve of a black-box model (a ComfyUI MODEL, named by `key`: its architecture, dtype and shape) at
    `row_counts`, measured once per machine (kept on disk).

    A large model's forward is expensive, so only the smallest and largest count and powers of two of the smallest
    between them are timed (one warm-up and one timed call each); the rest is interpolated.
    """

    def measure(counts: list[int]) -> BatchCostCurve:
        timed, rows = [counts[-1]], counts[0]
        while rows < counts[-1]:
            timed.append(rows)
            rows *= 2
        curve = time_calls(call, timed, device, repeats=1)
        return {rows: interpolate_cost(curve, rows) for rows in counts}

    key = {"kind": "black box", "model": key, **machine_key(device)}
    return disk_cached_curve(key, measure, sorted(set(row_counts)), persist)


def cached_pass_cost(key: dict, call: Callable[[], object], device: torch.device | str, rows: int,
                     persist: bool = True) -> float:
    """Seconds of one drafting pass `call()` over `rows` rows: the median of DRAFT_TIMING_REPEATS after a warm-up,
    measured once per `key` (which names the machine) and kept on disk like a curve."""
    return disk_cached_curve(key, lambda counts: time_calls(lambda _: call(), counts, device, DRAFT_TIMING_REPEATS),
                             [rows], persist)[rows]


@torch.inference_mode()  # as the round runs its drafting passes
def cached_draft_cost(denoiser: GuidedDenoiser, drafter, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Seconds of one drafting pass over the batch `x` (the drafter's proposal on every CFG row, the guided output and
    the transition), measured once per machine, DiT architecture, drafter and shape and kept on disk, like the curve."""
    from .drafter_interface import DraftContext, repeat_rows

    model, n, branches = denoiser.model, x.shape[0], denoiser.branches
    rows = n * branches
    step = torch.zeros(n, dtype=torch.long, device=x.device)
    x_rows, t_rows, y_rows = denoiser.rows(x, step, labels)
    m = drafter.history_length
    feature_dtype = denoiser.dtype or x.dtype  # features are kept in the model's dtype (bfloat16 DiT: bfloat16)
    features = torch.zeros((rows, m, model.num_tokens, model.hidden_size), dtype=feature_dtype, device=x.device) if m else None
    output = torch.zeros((rows, model.out_channels, *x.shape[2:]), dtype=x.dtype, device=x.device)

    # As in a round: a drafter with per-(step, label) terms reads rows of the table the sampler made once per run.
    tabled = hasattr(drafter, "modulation")
    modulation = drafter.modulation(model, model.conditioning(t_rows, y_rows)) if tabled else None

    def draft() -> None:
        context = DraftContext(features=features, output=output, x=x_rows, t=None if tabled else t_rows, y=y_rows,
                               step=repeat_rows(step, branches), previous_x=x_rows, modulation=modulation,
                               branches=branches)
        out_rows, _ = drafter.propose(model, context)
        denoiser.transition(denoiser.guided_output(out_rows), x, step)

    drafter_config = getattr(getattr(drafter, "config", None), "to_dict", lambda: type(drafter).__name__)()
    key = {"kind": "drafting pass", "dit": model.config.to_dict(), "drafter": drafter_config, "dtype": str(feature_dtype),
           "shape": list(x.shape), "branches": branches, **machine_key(x.device)}
    if tabled:  # such a pass costs less than one that computed them: its own key, so older figures are measured again
        key["modulation"] = "tabled per run"
    if getattr(drafter, "compile_mode", None):  # a compiled drafter costs differently (the key of an eager one is unchanged)
        key["compiled"] = drafter.compile_mode
    return cached_pass_cost(key, draft, x.device, rows)
