"""The quick benchmark runs end to end and its JSON has every field the report needs."""

import json

from free_core.cli import main

SPEED_FIELDS = {"steps", "batch", "sampler", "drafter", "draft_length", "relax_strength", "sequential_dit_calls",
                "call_reduction", "dit_states", "acceptance", "mean_advance", "wall_time_s", "wall_times_s",
                "wall_clock_speedup", "peak_memory_mb", "acceptance_per_step", "advance_histogram",
                "draft_lengths_chosen", "states_per_round"}
QUALITY_FIELDS = {"sampler", "relax_strength", "steps", "fd", "class_accuracy", "n"}


def test_quick_bench_writes_json_with_every_field(tmp_path):
    json_path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(json_path), "--out-dir", str(tmp_path / "docs")]) == 0
    results = json.loads(json_path.read_text())
    assert {"machine", "config", "batch_cost_curve", "speed", "quality", "bench_time_s", "gpu_projection"} <= set(results)
    samplers = {(r["sampler"], r["drafter"], str(r["draft_length"])) for r in results["speed"]}
    assert {("baseline", "-", "-"), ("strict", "frozen", "6"), ("strict", "learned", "adaptive"), ("relax", "learned", "adaptive")} <= samplers
    for row in results["speed"]:
        assert SPEED_FIELDS <= set(row)
        assert len(row["acceptance_per_step"]) == row["steps"]
        assert row["sequential_dit_calls"] == len(row["states_per_round"])
    baseline = next(r for r in results["speed"] if r["sampler"] == "baseline")
    assert baseline["wall_clock_speedup"] == 1.0 and baseline["sequential_dit_calls"] == baseline["steps"]
    for row in results["quality"]:
        assert QUALITY_FIELDS <= set(row)
    assert all(p["projected_speedup"] > 0 for p in results["gpu_projection"]["rows"])
    report = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "wall-clock speedup" in report and "GPU projection" in report
    assert (tmp_path / "docs" / "images" / "batch_cost.png").is_file()
