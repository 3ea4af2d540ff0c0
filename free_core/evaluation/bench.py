"""`python -m free_core bench`: baseline vs FREE strict / relax vs the frozen drafter, side by side in one run.

Every ratio is against the baseline measured in the same run, on the same noise and labels. Wall clock is the
median of `repeats` runs, taken in passes through all the variants after an untimed one; peak memory is the
process's peak resident set during a run (Linux: VmHWM, reset through /proc/self/clear_refs before each run). Quality (FD, class accuracy) uses the shipped classifier.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.checkpoints import EMBEDDED_CFG_SCALE
from ..engine.cost import measure_batch_cost
from ..engine.cpu_allocator import keeps_freed_memory
from ..engine.denoiser import GuidedDenoiser
from ..engine.diffusion import GaussianDiffusion
from ..engine.drafter_interface import FrozenDrafter
from .metrics import load_classifier, quality_report, reference_features
from ..models.model_specs import EMBEDDED, resolve_dit, resolve_drafter, resolve_dtype
from ..frontdoor.options import DEFAULT_DRAFT_LENGTH, SamplerOptions
from ..engine.sampling import initial_noise, sample_ancestral
from ..engine.speculative import sample_speculative
from ..engine.stats import SamplingStats


@dataclass
class BenchConfig:
    steps: tuple[int, ...] = (50, 250)
    batches: tuple[int, ...] = (1, 8)
    draft_lengths: tuple[int | str, ...] = (2, 4, 6, 8, "adaptive")
    relax_strengths: tuple[float, ...] = (2.0, 8.0, 32.0)
    relax_draft_length: int = 8
    repeats: int = 3
    quality_samples: int = 1000
    quality_steps: int = 50
    quality_draft_length: int = 8
    quality_samplers: tuple[str, ...] = ("baseline", "strict", "relax")
    cfg_scale: float = EMBEDDED_CFG_SCALE
    seed: int = 0
    out_dir: str = "docs"
    quick: bool = False
    sections: list[str] = field(default_factory=lambda: ["speed", "quality", "cost"])
    dtype: str = "float32"  # the DiT's and the drafter's (free_core.models.model_specs.DTYPES)


def quick_config(out_dir: str = "runs/bench-quick") -> BenchConfig:
    """The < 2 minute variant run by the test suite: every field, tiny sizes."""
    return BenchConfig(steps=(20,), batches=(1, 2), draft_lengths=(4, "adaptive"), relax_strengths=(8.0,), relax_draft_length=4,
                       repeats=1, quality_samples=20, quality_steps=20, quality_draft_length=4, out_dir=out_dir, quick=True)


def _reset_peak_memory() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_memory_mb() -> float | None:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None




def bench_options(config: BenchConfig, steps: int, mode: str, draft_length: int | str | None,
                  strength: float) -> SamplerOptions:
    """A bench row's settings as the SamplerOptions a user would pass (the baseline: mode off)."""
    adaptive = draft_length == "adaptive"
    return SamplerOptions(mode=mode, steps=steps, cfg=config.cfg_scale,
                          draft_length=DEFAULT_DRAFT_LENGTH if adaptive else int(draft_length or DEFAULT_DRAFT_LENGTH),
                          draft_policy="adaptive" if adaptive else "fixed",
                          relax_strength=strength if mode == "relax" else None, seed=config.seed)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":  # CUDA runs asynchronously: a wall clock must wait for the queued kernels
        torch.cuda.synchronize(device)


def run_speed(config: BenchConfig, model, drafters: dict, log) -> list[dict]:
    rows = []
    device = next(model.parameters()).device
    for steps in config.steps:
        diffusion = GaussianDiffusion.respaced(steps)
        denoiser = GuidedDenoiser(model, diffusion, cfg_scale=config.cfg_scale)
        for batch in config.batches:
            g = torch.Generator(device).manual_seed(config.seed)
            x_T = initial_noise((batch, model.in_channels, model.input_size, model.input_size), g, device)
            labels = torch.arange(batch, device=device) % model.num_classes
            variants = [("baseline", None, None, "strict", 0.0), ("strict", "frozen", 6, "strict", 0.0)]
            # The full K sweep at the main setting (most steps, smallest batch); K=6 and adaptive elsewhere.
            sweep = steps == max(config.steps) and batch == min(config.batches)
            lengths = config.draft_lengths if sweep else [k for k in config.draft_lengths if k in (6, "adaptive")]
            variants += [("strict", "learned", k, "strict", 0.0) for k in lengths]
            # Relax at a fixed long K shows how far loosening acceptance cuts calls; adaptive K what it buys in wall clock.
            variants += [("relax", "learned", config.relax_draft_length, "relax", s) for s in config.relax_strengths]
            variants += [("relax", "learned", "adaptive", "relax", s) for s in config.relax_strengths]
            # One untimed run of every variant at this shape first: the first forwards of a new batch shape pay for
            # allocator growth and kernel selection, and an adaptive variant may measure the device's cost curve.
            # Then the repeats go round the variants in turn, so a slow spell of the machine lands on all of them
            # alike instead of on whichever variant was running (identical plain runs here vary by 15-25%).
            runs = []
            for name, drafter_name, draft_length, mode, strength in variants:
                options = bench_options(config, steps, "off" if drafter_name is None else mode, draft_length, strength)
                runs.append({"variant": (name, drafter_name, draft_length, strength), "options": options, "times": []})
            for repeat in range(config.repeats + 1):
                for run in runs:
                    drafter_name, options = run["variant"][1], run["options"]
                    generator = torch.Generator(device).manual_seed(config.seed + 1)
                    _reset_peak_memory()
                    _synchronize(device)
                    started = time.perf_counter()
                    if drafter_name is None:
                        _, stats = sample_ancestral(denoiser, x_T, labels, generator)
                    else:
                        _, stats = sample_speculative(denoiser, drafters[drafter_name], x_T, labels, generator,
                                                      draft_length=options.policy(), mode=options.mode,
                                                      relax_strength=options.strength)
                    _synchronize(device)
                    if repeat:  # the first pass is the untimed warm-up
                        run["times"].append(time.perf_counter() - started)
                    run["stats"], run["peak"] = stats, _peak_memory_mb()
            baseline_time = statistics.median(runs[0]["times"])
            for run in runs:
                (name, drafter_name, draft_length, strength), stats, times = run["variant"], run["stats"], run["times"]
                wall = statistics.median(times)
                row = {
                    "steps": steps, "batch": batch, "sampler": name, "drafter": drafter_name or "-",
                    "draft_length": draft_length or "-", "relax_strength": strength,
                    "sequential_dit_calls": stats.sequential_dit_calls, "call_reduction": stats.call_reduction(),
                    "dit_states": stats.dit_states, "acceptance": stats.acceptance_rate,
                    "mean_advance": stats.mean_advance, "wall_time_s": wall, "wall_times_s": times,
                    "wall_clock_speedup": baseline_time / wall, "peak_memory_mb": run["peak"],
                    "acceptance_per_step": stats.acceptance_per_step,
                    "proposed_per_step": stats.proposed_per_step, "accepted_per_step": stats.accepted_per_step,
                    "advance_histogram": {str(k): v for k, v in sorted(stats.advance_histogram.items())},
                    "draft_lengths_chosen": stats.draft_lengths, "states_per_round": stats.states_per_round,
                    "options": run["options"].to_dict(),
                }
                rows.append(row)
                log(f"steps={steps} batch={batch} {name:8s} {row['drafter']:7s} K={row['draft_length']!s:8s} "
                    f"relax={strength:<4} calls={row['sequential_dit_calls']:4d} ({row['call_reduction']:.2f}x) "
                    f"accept={row['acceptance']:.3f} wall={wall:.2f}s ({row['wall_clock_speedup']:.2f}x)")
    return rows


def run_quality(config: BenchConfig, model, drafters: dict, log) -> list[dict]:
    unknown = set(config.quality_samplers) - {"baseline", "strict", "relax"}
    if unknown:
        raise ValueError(f"quality_samplers must be a subset of baseline, strict, relax; got unknown {sorted(unknown)}")
    classifier = load_classifier()
    reference = reference_features(classifier, max(config.quality_samples, 500))
    diffusion = GaussianDiffusion.respaced(config.quality_steps)
    denoiser = GuidedDenoiser(model, diffusion, cfg_scale=config.cfg_scale)
    n = config.quality_samples
    g = torch.Generator().manual_seed(config.seed + 7)
    x_T = initial_noise((n, model.in_channels, model.input_size, model.input_size), g)
    labels = torch.arange(n) % model.num_classes
    variants = [("baseline", None, "strict", 0.0), ("strict", "learned", "strict", 0.0)]
    variants += [("relax", "learned", "relax", s) for s in config.relax_strengths]
    variants = [v for v in variants if v[0] in config.quality_samplers]
    rows = []
    for name, drafter_name, mode, strength in variants:
        generator = torch.Generator().manual_seed(config.seed + 8)
        if drafter_name is None:
            images, stats = sample_ancestral(denoiser, x_T, labels, generator)
        else:
            images, stats = sample_speculative(denoiser, drafters[drafter_name], x_T, labels, generator,
                                               draft_length=config.quality_draft_length, mode=mode, relax_strength=strength)
        report = quality_report(classifier, images, labels, reference)
        row = {"sampler": name, "relax_strength": strength, "steps": config.quality_steps,
               "draft_length": "-" if drafter_name is None else config.quality_draft_length, **report,
               "acceptance": stats.acceptance_rate, "mean_advance": stats.mean_advance}
        rows.append(row)
        log(f"quality {name:8s} relax={strength:<4} n={n} FD={report['fd']:.3f} accuracy={report['class_accuracy']:.3f} "
            f"mean advance={stats.mean_advance:.2f}")
    real_images_fd = _real_fd(classifier, reference, n)
    rows.append({"sampler": "real images (held-out seed)", "relax_strength": 0.0, "steps": 0, "fd": real_images_fd,
                 "class_accuracy": None, "n": n})
    return rows


def _real_fd(classifier, reference, n) -> float:
    """FD between two disjoint sets of real images: the noise floor of FD at this n."""
    from .metrics import classifier_features, frechet_distance
    from ..training.data import make_batch

    images, _ = make_batch(n, seed=424242)
    return frechet_distance(classifier_features(classifier, images), reference)


def run_cost_curve(model, config: BenchConfig, rows_max: int = 64) -> dict[int, float]:
    denoiser = GuidedDenoiser(model, GaussianDiffusion.respaced(50))
    device = next(model.parameters()).device
    x = torch.zeros(1, model.in_channels, model.input_size, model.input_size, device=device)
    sizes = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64] if not config.quick else [1, 2, 4, 8]
    return measure_batch_cost(denoiser, x, torch.zeros(1, dtype=torch.long, device=device), [s for s in sizes if s <= rows_max],
                              repeats=max(3, config.repeats))


@torch.inference_mode()  # as the round runs them: no_grad made a drafting pass look 20-35% dearer
def run_round_costs(model, drafter, config: BenchConfig, coupled_drafts: int = 400) -> dict[str, float]:
    """Seconds of a speculative round's parts at batch 1 with CFG, next to one 2-row DiT forward (a plain step's),
    midway through the schedule: one drafting pass as the round runs it (drafter, the DiT's head, guidance,
    transition and the space's bookkeeping), eager and with the drafter compiled (and the compile's one-off
    seconds), and one coupling call (the accept decision, plus the residual draw when it rejects, as often as it
    rejects there), averaged over blocks of `coupled_drafts` fresh drafts; all four timed in turn."""
    from ..engine.compiled_drafting import CompiledDrafter
    from ..engine.coupling import coupling_replacements, decide_drafts
    from ..engine.cost import dit_forward, time_calls
    from ..engine.host_transfer import to_host
    from ..engine.speculative import DDPMSpace

    steps = max(config.steps)
    denoiser = GuidedDenoiser(model, GaussianDiffusion.respaced(steps), cfg_scale=config.cfg_scale)
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(config.seed)
    x = initial_noise((1, model.in_channels, model.input_size, model.input_size), g, device=device)
    labels = torch.zeros(1, dtype=torch.long, device=device)
    one, progress = torch.arange(1), torch.tensor([steps // 2])
    space = DDPMSpace(denoiser, drafter, labels)
    space.begin_round(one)
    mean_q, std_q = space.verify(x, progress, torch.zeros(1, dtype=torch.long))  # the history a draft reads
    space.commit(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    space.begin_round(one)
    mean_p, std_p = space.draft(one, progress, x, x)
    drafts = [mean_p + std_p * torch.randn(x.shape, generator=g, device=device) for _ in range(coupled_drafts)]
    rejected = 0

    def couple(draft: torch.Tensor) -> None:
        nonlocal rejected
        accepted, kinds = to_host(decide_drafts(draft, mean_p, std_p, mean_q, std_q, g))  # as a round reads them
        if not accepted.all():
            coupling_replacements(draft, mean_p, std_p, mean_q, std_q, g, kinds=kinds)
            rejected += 1

    for draft in drafts[:20]:  # warm-up
        couple(draft)
    repeats = max(5, 10 * config.repeats)
    # One timed coupling entry couples a block of drafts, enough of them (40, ~2.4 rejected at the usual 6%) that
    # its mean is the decision plus the residual draw as often as it rejects, not the median call's (an accept).
    block = min(40, len(drafts))
    block_starts = itertools.cycle(range(0, len(drafts) - block + 1, block))

    def couple_block() -> None:
        nonlocal coupled
        start = next(block_starts)
        for draft in drafts[start:start + block]:
            couple(draft)
        coupled += block

    compiled_space = DDPMSpace(denoiser, CompiledDrafter(drafter, device), labels)
    compiled_space.last_output, compiled_space.history = space.last_output, space.history
    compiled_space.begin_round(one)
    started = time.perf_counter()
    compiled_space.draft(one, progress, x, x)  # compiles
    compile_s = time.perf_counter() - started
    # The four are timed in turn, pass after pass, so that a slow spell of the machine lands on all of them alike
    # and their ratios (the figures the issue sets targets for) do not depend on which one it hit.
    forward = dit_forward(denoiser, x, labels)
    timed = {0: lambda: forward(2), 1: lambda: space.draft(one, progress, x, x),
             2: lambda: compiled_space.draft(one, progress, x, x), 3: couple_block}
    rejected = coupled = 0
    seconds = time_calls(lambda which: timed[which](), list(timed), device, repeats)
    return {
        "forward_2_rows_s": seconds[0],
        "drafting_pass_s": seconds[1],
        "compiled_drafting_pass_s": seconds[2],
        "coupling_call_s": seconds[3] / block,
        "coupling_rejection_rate": rejected / coupled,
        "drafter_compile_time": compile_s,  # seconds, once per process: not a per-round cost
    }


def machine_description() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
            + (", malloc keeps freed memory" if keeps_freed_memory() else ""))


def run_bench(config: BenchConfig, json_path: str | None = None, log=print) -> dict:
    model = resolve_dit(EMBEDDED, dtype=resolve_dtype(config.dtype))
    drafters = {"frozen": FrozenDrafter(), "learned": resolve_drafter(EMBEDDED, model)}
    results: dict = {"machine": machine_description(), "config": {k: v for k, v in config.__dict__.items()}}
    started = time.perf_counter()
    if "cost" in config.sections:
        results["batch_cost_curve"] = {str(k): v for k, v in run_cost_curve(model, config).items()}
        results["round_costs"] = run_round_costs(model, drafters["learned"], config)
        forward = results["round_costs"]["forward_2_rows_s"]
        log("round costs: " + ", ".join(f"{name[:-2].replace('_', ' ')} {seconds * 1e3:.3f} ms ({seconds / forward:.3f}x)"
                                        for name, seconds in results["round_costs"].items() if name.endswith("_s"))
            + f"; compiling the drafter took {results['round_costs']['drafter_compile_time']:.1f} s")
    if "speed" in config.sections:
        results["speed"] = run_speed(config, model, drafters, log)
    if "quality" in config.sections:
        results["quality"] = run_quality(config, model, drafters, log)
    results["bench_time_s"] = time.perf_counter() - started
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2))
    return results


def merge_results(parts: list[dict]) -> dict:
    """One results dict from bench runs of different sections: each section from the run that has it.

    A section present in two runs is refused. Runs on different machines (or thread counts) keep each
    machine description next to the sections it measured.
    """
    if not parts:
        raise ValueError("merge_results needs at least one bench result")
    machine = parts[0]["machine"]
    if any(p["machine"] != machine for p in parts):
        machine = "; ".join(f"{'/'.join(s for s in ('batch_cost_curve', 'speed', 'quality') if s in p)}: {p['machine']}"
                            for p in parts)
    merged: dict = {"machine": machine, "config": parts[0]["config"], "commands": [], "bench_time_s": 0.0}
    for part in parts:
        for section in ("batch_cost_curve", "round_costs", "speed"):
            if section in part:
                if section in merged:
                    raise ValueError(f"two bench results both have the {section!r} section; give each section once")
                merged[section] = part[section]
        if "quality" in part:
            merged["quality"] = _merge_quality(merged.get("quality", []), part["quality"])
        merged["commands"] += part.get("commands", [])
        merged["bench_time_s"] += part.get("bench_time_s", 0.0)
    return merged


def _merge_quality(rows: list[dict], new_rows: list[dict]) -> list[dict]:
    """Quality rows of several runs (e.g. one sampler per run) in one table: same steps and n, each sampler once."""
    settings = {(r["steps"], r["n"]) for r in rows + new_rows if r.get("class_accuracy") is not None}
    if len(settings) > 1:
        raise ValueError(f"quality rows of different (steps, n) cannot share one table: {sorted(settings)}")
    key = lambda r: (r["sampler"], r["relax_strength"])  # noqa: E731
    seen = {key(r) for r in rows}
    duplicated = [key(r) for r in new_rows if key(r) in seen and r.get("class_accuracy") is not None]
    if duplicated:
        raise ValueError(f"quality rows measured twice: {duplicated}; give each sampler once")
    real = [r for r in rows + new_rows if r.get("class_accuracy") is None][:1]  # the FD noise floor, once
    return [r for r in rows + new_rows if r.get("class_accuracy") is not None] + real
