"""The measurements behind the embedded graphs' defaults (tools/make_workflows.py), at the graphs' own settings.

    python tools/measure_graph_defaults.py classes            # which class the embedded DiT draws best
    python tools/measure_graph_defaults.py relax --label 9    # relax strengths vs strict, calls over seeds
    OMP_NUM_THREADS=2 python tools/measure_graph_defaults.py adaptive   # could adaptive K be the nodes' default?

classes: plain ancestral, 50 steps, CFG 2, 20 samples per class at seeds 0 and 1, scored by the shipped classifier.
relax: the compare graph's batch (8 of one class, 50 steps, CFG 2, K 6, the embedded drafter), seeds 0-7; sequential
DiT calls of strict and of relax at strengths 2, 8 and 32, and their means.
adaptive: wall clock of adaptive strict (up to K 8) and strict K 2 against the plain sampler, median of 3 in one
process after a first adaptive run (which measures the cost curves, once per machine), at 50 steps batch 8 and 1
and 250 steps batch 1. A default must never be slower than the plain sampler.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from free_core import SamplerOptions, generate, resolve_dit, resolve_drafter  # noqa: E402
from free_core.evaluation.metrics import load_classifier  # noqa: E402
from free_core.training.data import CLASS_NAMES  # noqa: E402


def classes(dit, drafter) -> None:
    classifier, per_class = load_classifier(), 20
    labels = torch.arange(len(CLASS_NAMES)).repeat_interleave(per_class)
    found = torch.zeros(len(CLASS_NAMES))
    for seed in (0, 1):
        samples, _ = generate(dit, drafter, labels, SamplerOptions(mode="off", steps=50, cfg=2.0, seed=seed))
        with torch.no_grad():
            predictions = classifier(samples).argmax(1)
        found += torch.bincount(labels[predictions == labels], minlength=len(CLASS_NAMES)).float()
    for label, name in enumerate(CLASS_NAMES):
        print(f"{label} {name}: {int(found[label])} of {2 * per_class} ({found[label] / (2 * per_class):.2f})")


def relax(dit, drafter, label: int, seeds: int) -> None:
    labels, calls = torch.full((8,), label), {}
    runs = [("strict", None)] + [(f"relax {s:g}", s) for s in (2.0, 8.0, 32.0)]
    for seed in range(seeds):
        for name, strength in runs:
            options = SamplerOptions(mode="relax" if strength else "strict", steps=50, cfg=2.0, seed=seed,
                                     draft_length=6, draft_policy="fixed", relax_strength=strength)
            _, stats = generate(dit, drafter, labels, options)
            calls.setdefault(name, []).append(stats.sequential_dit_calls)
        print(f"seed {seed}: " + ", ".join(f"{name} {values[-1]}" for name, values in calls.items()), flush=True)
    for name, values in calls.items():
        print(f"{name}: mean {statistics.mean(values):.1f} calls of 50 over {seeds} seeds")


def adaptive(dit, drafter) -> None:
    for steps, batch in ((50, 8), (50, 1), (250, 1)):
        labels = torch.arange(batch) % len(CLASS_NAMES)
        runs = {"baseline": SamplerOptions(mode="off", steps=steps),
                "adaptive strict": SamplerOptions(steps=steps, draft_length=8, draft_policy="adaptive"),
                "strict K=2": SamplerOptions(steps=steps, draft_length=2, draft_policy="fixed")}
        generate(dit, drafter, labels, runs["adaptive strict"])  # measures the curves once per machine
        times, calls = {name: [] for name in runs}, {}
        for _ in range(3):
            for name, options in runs.items():
                _, stats = generate(dit, drafter, labels, options)
                times[name].append(stats.wall_time_s)
                calls[name] = stats.sequential_dit_calls
        baseline = statistics.median(times["baseline"])
        for name in runs:
            wall = statistics.median(times[name])
            print(f"{steps} steps, batch {batch}: {name}: {calls[name]} calls, {wall:.2f} s, "
                  f"{baseline / wall:.2f}x the baseline's speed", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["classes", "relax", "adaptive"])
    parser.add_argument("--label", type=int, default=9)
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    dit = resolve_dit("embedded")
    drafter = resolve_drafter("embedded", dit)
    if args.what == "adaptive":
        adaptive(dit, drafter)
        return
    torch.set_num_threads(1)
    classes(dit, drafter) if args.what == "classes" else relax(dit, drafter, args.label, args.seeds)


if __name__ == "__main__":
    main()
