"""The quick benchmark runs end to end, its JSON has every field the report needs, and its values are the ones
its own counts imply: ratios against the same run's baseline, acceptance from the drafted/accepted counts, and
quality rows scored on samples (far from what the same classifier says of pure noise)."""

import json
import statistics

import pytest
import torch

from free_core.evaluation.bench import merge_results
from free_core.evaluation.bench_report import _target_line, speedups_by_repeat, target_rows
from free_core.frontdoor.cli import main

SPEED_FIELDS = {"steps", "batch", "sampler", "drafter", "draft_length", "relax_strength", "sequential_dit_calls",
                "call_reduction", "dit_states", "acceptance", "mean_advance", "wall_time_s", "wall_times_s",
                "wall_clock_speedup", "peak_memory_mb", "acceptance_per_step", "advance_histogram",
                "draft_lengths_chosen", "states_per_round"}
QUALITY_FIELDS = {"sampler", "relax_strength", "steps", "fd", "class_accuracy", "n"}


def _check_speed_values(results):
    """Every speed row's numbers from its own counts and the same (steps, batch) baseline row."""
    baselines = {(r["steps"], r["batch"]): r for r in results["speed"] if r["sampler"] == "baseline"}
    assert len(baselines) == len(results["config"]["steps"]) * len(results["config"]["batches"])
    for row in results["speed"]:
        name = f"{row['sampler']}/{row['drafter']}/K={row['draft_length']} steps={row['steps']} batch={row['batch']}"
        base = baselines[(row["steps"], row["batch"])]
        steps, batch, calls = row["steps"], row["batch"], row["sequential_dit_calls"]
        # Ratios are against the baseline of the same run and shape: its calls (one per step) and its wall time.
        assert row["call_reduction"] == pytest.approx(base["sequential_dit_calls"] / calls, rel=1e-9), name
        assert row["wall_time_s"] == pytest.approx(statistics.median(row["wall_times_s"]), rel=1e-9), name
        assert row["wall_clock_speedup"] == pytest.approx(base["wall_time_s"] / row["wall_time_s"], rel=1e-9), name
        # Acceptance is accepted / drafted, summed over the per-step counts; each per-step rate is its own ratio.
        proposed, accepted = row["proposed_per_step"], row["accepted_per_step"]
        assert len(proposed) == len(accepted) == steps, name
        assert all(0 <= a <= p for a, p in zip(accepted, proposed)), name
        assert row["acceptance"] == pytest.approx(sum(accepted) / sum(proposed) if sum(proposed) else 0.0, rel=1e-9), name
        assert row["acceptance_per_step"] == [pytest.approx(a / p, rel=1e-9) if p else None
                                              for a, p in zip(accepted, proposed)], name
        # The advance histogram (steps advanced per sample per round): every sample advances through all steps,
        # each round is one accepted prefix plus the one exact step, and the mean advance is its mean.
        histogram = {int(k): v for k, v in row["advance_histogram"].items()}
        assert min(histogram) >= 1 and all(v > 0 for v in histogram.values()), name
        assert sum(k * v for k, v in histogram.items()) == steps * batch, name
        assert sum((k - 1) * v for k, v in histogram.items()) == sum(accepted), name
        assert row["mean_advance"] == pytest.approx(sum(k * v for k, v in histogram.items()) / sum(histogram.values()),
                                                    rel=1e-9), name
        assert sum(histogram.values()) <= calls * batch and (batch > 1 or sum(histogram.values()) == calls), name
        # One verification forward per sequential call; its states add up to the states the DiT evaluated.
        assert sum(row["states_per_round"]) == row["dit_states"], name
        assert all(s >= 1 for s in row["states_per_round"]), name
        if row["sampler"] == "baseline":
            assert calls == steps and row["dit_states"] == steps * batch and histogram == {1: steps * batch}, name
            assert row["acceptance"] == 0.0 and sum(proposed) == 0 and row["call_reduction"] == 1.0, name
            continue
        # A round advances every active sample by at least one step: never more calls than steps.
        assert calls <= steps and row["call_reduction"] >= 1.0, name
        if row["draft_length"] == "adaptive":
            # Adaptive K reads a batch-cost curve measured in the run, so on a loaded CPU it may choose K=0
            # (plain steps) every round: measured 17 to 20 calls of 20 for the same seed.
            assert set(row["draft_lengths_chosen"]) <= set(range(9)), name
            continue
        assert row["draft_lengths_chosen"][1:] == [row["draft_length"]] * (calls - 1), name
        assert sum(proposed) > 0, name
        if row["drafter"] == "learned":
            # At a fixed K the learned drafter gets drafts accepted even at the quick 20 steps (it was trained at
            # 250): strictly fewer sequential DiT calls than steps. Measured (same seeds, every run): 19 calls at
            # K=4 batch 1 (1 of 18 drafts accepted), 18 at batch 2.
            assert calls < steps and row["call_reduction"] > 1.0 and sum(accepted) > 0, name


def _check_quality_values(results):
    """Sampled images score far better than pure N(0, 1) noise on the same classifier and reference features."""
    from free_core.training.data import NUM_CLASSES
    from free_core.evaluation.metrics import class_accuracy, classifier_features, frechet_distance, load_classifier, reference_features

    config = results["config"]
    n = config["quality_samples"]
    classifier = load_classifier()
    reference = reference_features(classifier, max(n, 500))  # the reference run_quality uses
    noise = torch.randn((n, 3, 32, 32), generator=torch.Generator().manual_seed(2024))
    noise_fd = frechet_distance(classifier_features(classifier, noise), reference)
    noise_accuracy = class_accuracy(classifier, noise, torch.arange(n) % NUM_CLASSES)
    # Measured at n=20: noise FD ~99 (seeds 0-4 and the bench's own x_T: 98.7-100.7), noise accuracy 0.1
    # (everything lands in one class); samples at 20 steps: FD 3.7-4.6, accuracy 0.80-0.95.
    assert noise_fd > 50 and noise_accuracy <= 0.2
    chance = 1 / NUM_CLASSES
    sampled = [r for r in results["quality"] if r["class_accuracy"] is not None]
    assert {r["sampler"] for r in sampled} == set(config["quality_samplers"])
    for row in sampled:
        name = f"quality {row['sampler']} relax={row['relax_strength']}"
        assert row["n"] == n and row["steps"] == config["quality_steps"], name
        assert row["class_accuracy"] >= 5 * chance, f"{name}: accuracy {row['class_accuracy']} (noise {noise_accuracy})"
        assert row["fd"] < noise_fd / 5, f"{name}: FD {row['fd']:.2f} vs pure noise {noise_fd:.2f}"
    real = next(r for r in results["quality"] if r["class_accuracy"] is None)
    assert real["n"] == n and real["fd"] < noise_fd / 5  # the FD floor of real images at this n


def test_quick_bench_writes_json_with_every_field(tmp_path):
    json_path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(json_path), "--out-dir", str(tmp_path / "docs")]) == 0
    results = json.loads(json_path.read_text())
    assert {"machine", "config", "batch_cost_curve", "speed", "quality", "bench_time_s", "gpu_projection"} <= set(results)
    assert results["commands"] == [f"python -m free_core bench --quick --json {json_path} --out-dir {tmp_path / 'docs'}"]
    samplers = {(r["sampler"], r["drafter"], str(r["draft_length"])) for r in results["speed"]}
    assert {("baseline", "-", "-"), ("strict", "frozen", "6"), ("strict", "learned", "adaptive"), ("relax", "learned", "adaptive")} <= samplers
    for row in results["speed"]:
        assert SPEED_FIELDS <= set(row)
        assert len(row["acceptance_per_step"]) == row["steps"]
        assert row["sequential_dit_calls"] == len(row["states_per_round"])
    baseline = next(r for r in results["speed"] if r["sampler"] == "baseline")
    assert baseline["wall_clock_speedup"] == 1.0 and baseline["sequential_dit_calls"] == baseline["steps"]
    _check_speed_values(results)
    for row in results["quality"]:
        assert QUALITY_FIELDS <= set(row)
    _check_quality_values(results)
    assert all(p["projected_speedup"] > 0 for p in results["gpu_projection"]["rows"])
    report = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "wall-clock speedup" in report and "GPU projection" in report and "## Targets" in report
    assert "| speedup by repeat |" in report
    costs = results["round_costs"]
    assert all(costs[name] > 0 for name in ("forward_2_rows_s", "drafting_pass_s", "compiled_drafting_pass_s",
                                            "coupling_call_s", "drafter_compile_time"))
    assert 0 <= costs["coupling_rejection_rate"] <= 1
    assert "| one drafting pass |" in report and "| one coupling call (decision; residual draw on the" in report
    assert "| one drafting pass, drafter compiled (`--compile-drafter`) |" in report
    assert f"Compiling the drafter took {costs['drafter_compile_time']:.1f} s" in report
    assert ("relax", "learned", "4") in samplers  # relax at the fixed long K as well as adaptive
    assert (tmp_path / "docs" / "images" / "batch_cost.png").is_file()

    # The same results in two parts (as from two bench runs) make the same report through bench-report.
    speed_part = {k: v for k, v in results.items() if k not in ("quality", "gpu_projection")}
    quality_part = {"machine": results["machine"] + " (other threads)", "config": results["config"],
                    "quality": results["quality"], "commands": ["bench --sections quality"], "bench_time_s": 1.0}
    for name, part in (("speed.json", speed_part), ("quality.json", quality_part)):
        (tmp_path / name).write_text(json.dumps(part))
    merged_path = tmp_path / "merged.json"
    assert main(["bench-report", str(tmp_path / "speed.json"), str(tmp_path / "quality.json"),
                 "--out-dir", str(tmp_path / "merged"), "--json", str(merged_path)]) == 0
    merged = json.loads(merged_path.read_text())
    assert merged["speed"] == results["speed"] and merged["quality"] == results["quality"]
    assert "quality: " in merged["machine"] and merged["commands"][-1] == "bench --sections quality"
    assert "## Targets" in (tmp_path / "merged" / "benchmarks.md").read_text()
    with pytest.raises(ValueError, match="both have the"):
        merge_results([speed_part, speed_part])
    with pytest.raises(ValueError, match="measured twice"):
        merge_results([speed_part, quality_part, {**quality_part, "machine": results["machine"]}])
    baseline_only = {**quality_part, "quality": [q for q in results["quality"] if q["sampler"] != "relax"]}
    relax_only = {**quality_part, "quality": [q for q in results["quality"] if q["sampler"] == "relax"]}
    assert [q["sampler"] for q in merge_results([speed_part, baseline_only, relax_only])["quality"]].count("real images (held-out seed)") == 1


def _row(sampler, k, calls, wall=1.0, strength=0.0):
    return {"steps": 250, "batch": 1, "sampler": sampler, "drafter": "learned", "draft_length": k,
            "relax_strength": strength, "call_reduction": calls, "wall_clock_speedup": wall}


def test_targets_compare_measured_ratios_and_fd_with_the_goals():
    speed = [_row("strict", "adaptive", 2.0, wall=0.75), _row("strict", 6, 3.3), _row("relax", 8, 5.0, strength=8.0),
             _row("relax", 8, 4.5, strength=2.0)]
    quality = [{"sampler": "baseline", "relax_strength": 0.0, "fd": 10.0, "class_accuracy": 0.9},
               {"sampler": "relax", "relax_strength": 8.0, "fd": 12.0, "class_accuracy": 0.9},
               {"sampler": "relax", "relax_strength": 2.0, "fd": 10.5, "class_accuracy": 0.9}]
    lines = [_target_line(t) for t in target_rows(speed, quality)]
    assert any("wall-clock" in line and "missed by 2.00x" in line for line in lines)
    assert any("best fixed K (K=6)" in line and "| met |" in line for line in lines)
    assert any("relax 8" in line and "+20.0% (outside 10%)" in line and "FD outside 10%" in line for line in lines)
    assert any("relax 2" in line and "+5.0% (within 10%)" in line and line.endswith("| met |") for line in lines)


def test_quality_section_refuses_unknown_samplers():
    from free_core.evaluation.bench import BenchConfig, run_quality

    with pytest.raises(ValueError, match="quality_samplers"):
        run_quality(BenchConfig(quality_samplers=("baseline", "ddim")), model=None, drafters={}, log=print)


def test_speedup_by_repeat_pairs_each_repeat_with_the_same_repeats_baseline():
    """A slow spell in one repeat lands on the baseline and the variant of that repeat alike: the spread shows it."""
    speed = [
        {"steps": 250, "batch": 1, "sampler": "baseline", "wall_times_s": [2.0, 3.0, 2.5]},
        {"steps": 250, "batch": 1, "sampler": "strict", "wall_times_s": [4.0, 3.0, 2.0]},
        {"steps": 50, "batch": 1, "sampler": "strict", "wall_times_s": [1.0]},  # no baseline of its shape
        {"steps": 250, "batch": 1, "sampler": "relax", "wall_times_s": [1.0, 1.0]},  # does not pair
    ]
    assert speedups_by_repeat(speed) == [(1.0, 1.0), (0.5, 1.25), None, None]
