"""The quick benchmark runs end to end and its JSON has every field the report needs."""

import json

import pytest

from free_core.bench import merge_results
from free_core.bench_report import _target_line, target_rows
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
    assert results["commands"] == [f"python -m free_core bench --quick --json {json_path} --out-dir {tmp_path / 'docs'}"]
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
    assert "wall-clock speedup" in report and "GPU projection" in report and "## Targets" in report
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
    from free_core.bench import BenchConfig, run_quality

    with pytest.raises(ValueError, match="quality_samplers"):
        run_quality(BenchConfig(quality_samplers=("baseline", "ddim")), model=None, drafters={}, log=print)
