"""`python -m free_core sample-ddp`: the paper's FID protocol at scale, on N processes under `torchrun`.

The run's samples (global indices 0 .. n-1, class `labels[i % len(labels)]`, all classes by default) are cut
into batches of `--batch` consecutive indices; batch c is one `generate` call seeded by (seed, c) alone, and
process r of N samples the batches c = r, r + N, r + 2N, ... Each finished batch is written atomically to
`<out>.parts/batch_<c>.npz` with its statistics, so a killed run started again with the same options samples
only the batches that are missing. A sample therefore depends on the seed, its global index and `--batch` (the
engine draws a batch's randomness from one generator and runs its rounds in lockstep), never on N or on how often
the run was interrupted. When every batch is there, rank 0 writes `<out>` (`arr_0`: uint8 N x H x W x 3, `arr_1`:
the labels, guided-diffusion's layout that the ADM evaluator reads), the statistics summed over batches and per
rank as `<out stem>.stats.json`, and removes the parts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..engine.stats import SamplingStats
from ..models.model_specs import (check_dit_spec, check_drafter_spec, default_drafter, resolve_dit, resolve_drafter,
                                  resolve_dtype)
from ..training.distributed import DistributedContext, setup_distributed, teardown_distributed
from .generate import generate
from .image_tensors import samples_to_images
from .options import OptionError, SamplerOptions

SUMMED_COUNTS = ("rounds", "sequential_dit_calls", "dit_states", "dit_rows", "drafter_calls")
SETTINGS_FILE = "settings.json"
# A rank whose batches were all on disk (a resumed run) waits at the end for the slowest one: hours, not nccl's minutes.
RANK_WAIT = timedelta(days=1)


def batch_ranges(num_samples: int, batch: int) -> list[range]:
    """The global sample indices of each batch: [0, batch), [batch, 2 batch), ..., the last one possibly shorter."""
    return [range(start, min(start + batch, num_samples)) for start in range(0, num_samples, batch)]


def batch_seed(seed: int, batch_index: int) -> int:
    """Batch `batch_index`'s generator seed, from the run's seed and the batch index alone (well mixed, 64 bits)."""
    return int(np.random.SeedSequence(seed, spawn_key=(batch_index,)).generate_state(1, np.uint64)[0])


def rank_batches(num_batches: int, ctx: DistributedContext) -> list[int]:
    """The batches this process samples: every world_size-th, starting at its rank."""
    return list(range(ctx.rank, num_batches, ctx.world_size))


def to_uint8_images(samples: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) samples in [-1, 1] to the evaluator's uint8 (N, H, W, 3), rounded to the nearest level."""
    return (samples_to_images(samples) * 255).round().to(torch.uint8).numpy()


def parts_dir(out: Path) -> Path:
    return out.with_suffix(".parts")


def stats_path(out: Path) -> Path:
    return out.with_suffix(".stats.json")


def batch_path(parts: Path, batch_index: int) -> Path:
    return parts / f"batch_{batch_index:06d}.npz"


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray, stats: dict) -> None:
    """One finished batch, written under a temporary name and renamed: a killed run never leaves half a batch."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as handle:
            np.savez(handle, images=images, labels=labels, stats=np.array(json.dumps(stats)))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """A batch written by `write_batch`: images, labels and statistics (no pickle involved)."""
    with np.load(path, allow_pickle=False) as stored:
        return stored["images"], stored["labels"], json.loads(str(stored["stats"]))


def batch_stats(stats: SamplingStats) -> dict:
    """What a batch keeps of its statistics: the summary plus the raw per-step draft counts that sum over batches."""
    return {**stats.to_dict(), "proposed_per_step": stats.proposed_per_step, "accepted_per_step": stats.accepted_per_step}


def aggregate_stats(parts: list[dict]) -> dict:
    """Batches' statistics summed: counts, per-step draft counts, the advance histogram, sampling seconds; the rates
    (acceptance, mean advance, calls against the plain sampler's one per step and batch) from those sums."""
    total = {key: sum(part[key] for part in parts) for key in SUMMED_COUNTS}
    steps = parts[0]["num_steps"] if parts else 0
    proposed = [sum(column) for column in zip(*(part["proposed_per_step"] for part in parts))]
    accepted = [sum(column) for column in zip(*(part["accepted_per_step"] for part in parts))]
    histogram = sum((Counter({int(k): v for k, v in part["advance_histogram"].items()}) for part in parts), Counter())
    advances = sum(histogram.values())
    return {
        "samples": sum(part["batch_size"] for part in parts),
        "batches": len(parts),
        **total,
        "proposed_per_step": proposed,
        "accepted_per_step": accepted,
        "advance_histogram": {str(k): v for k, v in sorted(histogram.items())},
        "acceptance_rate": sum(accepted) / sum(proposed) if sum(proposed) else 0.0,
        "mean_advance": sum(k * v for k, v in histogram.items()) / advances if advances else 0.0,
        "call_reduction": steps * len(parts) / total["sequential_dit_calls"] if total["sequential_dit_calls"] else 0.0,
        "sampling_seconds": sum(part["wall_time_s"] for part in parts),
    }


def check_settings(parts: Path, settings: dict, out: Path) -> None:
    """Refuse to resume parts written with other settings: their batches would not be this run's samples."""
    stored_file = parts / SETTINGS_FILE
    if not stored_file.is_file():
        return
    stored = json.loads(stored_file.read_text())
    differing = [key for key in settings if stored.get(key) != settings[key]]
    if differing:
        key = differing[0]
        raise OptionError(f"--out {out}: {parts} holds a run with other settings ({key} {stored.get(key)!r} there, "
                          f"{settings[key]!r} now); rerun with the same options to resume it, or use another --out "
                          f"or delete {parts}")


def assemble(out: Path, batches: list[range], world_size: int, resumed: int, report: dict) -> dict:
    """Rank 0, once every batch is written: the evaluator's .npz, the statistics JSON; then the parts go."""
    parts = parts_dir(out)
    images, labels, stats = [], [], []
    for index, indices in enumerate(batches):
        batch_images, batch_labels, batch_statistics = read_batch(batch_path(parts, index))
        if batch_images.shape[0] != len(indices):
            raise RuntimeError(f"{batch_path(parts, index)} holds {batch_images.shape[0]} samples, not {len(indices)}; "
                               f"delete it and rerun to sample it again")
        images.append(batch_images)
        labels.append(batch_labels)
        stats.append(batch_statistics)
    partial = out.with_name(f"{out.name}.partial")
    images = np.concatenate(images)
    with open(partial, "wb") as handle:
        np.savez(handle, arr_0=images, arr_1=np.concatenate(labels))
    os.replace(partial, out)
    report = {**report, "arr_0_shape": list(images.shape), "processes": world_size, "resumed_batches": resumed, "total": aggregate_stats(stats),
              "per_rank": [aggregate_stats(stats[rank::world_size]) for rank in range(world_size)]}
    stats_path(out).write_text(json.dumps(report, indent=2))
    shutil.rmtree(parts)
    return report


def summary_line(report: dict) -> str:
    """The run in one line: samples, calls against the plain sampler, acceptance, mean advance."""
    total, steps = report["total"], report["settings"]["options"]["steps"]
    line = (f"{total['samples']} samples on {report['processes']} process(es) ({report['resumed_batches']} of "
            f"{total['batches']} batches resumed): {total['sequential_dit_calls']} sequential DiT calls for "
            f"{total['batches']} batches of {steps} steps ({total['call_reduction']:.2f}x fewer)")
    if sum(total["proposed_per_step"]):
        line += f", acceptance {total['acceptance_rate']:.3f}, mean advance {total['mean_advance']:.2f} steps per round"
    return line


def command_sample_ddp(args: argparse.Namespace) -> int:
    """Sample this process's batches (skipping those already written), then rank 0 assembles the .npz and JSON."""
    from .cli import check_compile_drafter, check_device, parse_labels, positive_int, sample_options

    # Every option is checked before anything is loaded or run.
    options = sample_options(args)
    positive_int("--num-samples", args.num_samples, "50000")
    positive_int("--batch", args.batch, "32")
    requested_labels = parse_labels(args.labels)
    check_device(args.device)
    resolve_dtype(args.dtype, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    if out.suffix != ".npz":
        raise OptionError(f"--out {args.out}: the evaluator reads an .npz file; e.g. --out samples.npz")
    drafter_spec = args.drafter or default_drafter(args.model)
    check_dit_spec(args.model)
    check_drafter_spec(drafter_spec)
    check_compile_drafter(options, drafter_spec)

    ctx = setup_distributed(args.device, timeout=RANK_WAIT)
    try:
        return _sample_and_assemble(args, options, requested_labels, drafter_spec, out, ctx)
    except BaseException:  # leave no process group behind; the other ranks fail on their own (or torchrun ends them)
        if dist.is_initialized():
            dist.destroy_process_group()
        raise


def _sample_and_assemble(args: argparse.Namespace, options: SamplerOptions, requested_labels: list[int] | None,
                         drafter_spec: str, out: Path, ctx: DistributedContext) -> int:
    from .cli import labels_for

    model = resolve_dit(args.model, ctx.device, dtype=resolve_dtype(args.dtype, ctx.device))
    if model.in_channels != 3:
        raise OptionError(f"--model {args.model}: a latent DiT ({model.in_channels} channels); sample-ddp writes RGB "
                          f"images and free_core has no VAE decoder; use a pixel-space DiT, or `sample` for latents")
    drafter = resolve_drafter(drafter_spec, model, ctx.device)
    all_labels = labels_for(requested_labels, args.num_samples, model.num_classes)
    settings = {"model": args.model, "drafter": drafter_spec, "options": options.to_dict(), "dtype": args.dtype, "batch": args.batch,
                "num_samples": args.num_samples, "labels": requested_labels, "device_type": ctx.device.type}
    parts = parts_dir(out)
    check_settings(parts, settings, out)
    if ctx.is_main:
        parts.mkdir(parents=True, exist_ok=True)
        for stale in parts.glob("*.partial"):  # a killed run's unfinished writes
            stale.unlink()
        written = parts / f"{SETTINGS_FILE}.partial"  # renamed into place: another rank may be reading it now
        written.write_text(json.dumps(settings, indent=2))
        os.replace(written, parts / SETTINGS_FILE)
    if ctx.enabled:
        dist.barrier()

    batches = batch_ranges(args.num_samples, args.batch)
    mine = rank_batches(len(batches), ctx)
    todo = [index for index in mine if not batch_path(parts, index).is_file()]
    started = time.perf_counter()
    for done, index in enumerate(todo, 1):
        labels = all_labels[batches[index].start:batches[index].stop]
        samples, stats = generate(model, drafter, labels, replace(options, seed=batch_seed(options.seed, index)),
                                  ctx.device)
        write_batch(batch_path(parts, index), to_uint8_images(samples), labels.numpy(), batch_stats(stats))
        if ctx.is_main:
            print(f"rank 0: batch {done}/{len(todo)} ({len(mine) - len(todo)} already written), "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
    resumed = torch.tensor([len(mine) - len(todo)], device=ctx.device)
    if ctx.enabled:
        dist.all_reduce(resumed)
    teardown_distributed(ctx)  # every batch is on disk once all ranks pass here
    if ctx.is_main:
        report = {"command": args.command_line, "settings": settings, "npz": str(out)}
        report = assemble(out, batches, ctx.world_size, int(resumed.item()), report)
        print(summary_line(report))
        shape = " x ".join(map(str, report["arr_0_shape"]))
        print(f"wrote {out} (arr_0: uint8 {shape}, arr_1: labels) and {stats_path(out)}")
    return 0


SHARED_WITH_SAMPLE = ("--model", "--drafter", "--steps", "--cfg", "--variance", "--draft-length", "--max-draft-length",
                      "--relax-strength", "--labels", "--device", "--dtype", "--compile-drafter", "--debug")


def add_sample_ddp_parser(sub: argparse._SubParsersAction, sample: argparse.ArgumentParser,
                          formatter: type[argparse.HelpFormatter]) -> None:
    """The `sample-ddp` subcommand; the options it shares with `sample` are `sample`'s own (one definition)."""
    ddp = sub.add_parser("sample-ddp", formatter_class=formatter,
                         help="sharded, class-balanced, resumable sampling to an .npz for the ADM evaluator "
                              "(run under torchrun --nproc_per_node N)",
                         description="Samples --num-samples images on N processes (torchrun; nccl on CUDA, gloo on "
                                     "CPU) into one .npz in the ADM evaluator's layout, with the FREE statistics "
                                     "summed over processes in <out stem>.stats.json. Sample i has class "
                                     "labels[i % len(labels)] and comes from batch i // --batch, seeded by (--seed, "
                                     "batch index) alone: the same options give the same .npz on any number of "
                                     "processes and after any interruption (rerun the same command to resume).")
    for action in sample._actions:  # argparse's own `parents` mechanism, for a chosen subset of sample's options
        if set(action.option_strings) & set(SHARED_WITH_SAMPLE):
            ddp._add_action(action)
    ddp.add_argument("--mode", default="strict", choices=("off", "strict", "relax"),
                     help="off: the plain ancestral sampler; strict: FREE, exactly its law; relax: faster, approximate")
    ddp.add_argument("--num-samples", type=int, default=50000, help="samples in all (the paper's FID-50K: 50000)")
    ddp.add_argument("--batch", type=int, default=32,
                     help="samples per generate call on each process; part of the samples' identity with --seed")
    ddp.add_argument("--seed", type=int, default=0,
                     help="batch c is seeded by (seed, c) alone: the same seed and --batch give the same samples on "
                          "any number of processes")
    ddp.add_argument("--out", default="samples.npz", help="the .npz (arr_0 uint8 NHWC, arr_1 labels); batches are "
                                                          "kept in <out stem>.parts until it is written")
    ddp.set_defaults(handler=command_sample_ddp)
