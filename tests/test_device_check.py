"""tools/device_check.sh runs its whole path on the CPU (`--device cpu --quick`) and writes a report of the promised shape.

Timings are not asserted: only the report's structure, the device it names, and that projections stay labelled.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from free_core.engine.cost import machine_key
from free_core.evaluation.device_report import dtype_support, main

ROOT = Path(__file__).resolve().parent.parent


def test_quick_cpu_run_writes_a_labelled_report_and_copies_it_to_OUT(tmp_path):
    docs = {name: (ROOT / "docs" / name).read_bytes() if (ROOT / "docs" / name).exists() else None
            for name in ("benchmarks-gpu.md", "benchmarks-gpu.json")}
    report_dir, out = tmp_path / "report", tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "tools/device_check.sh", "--device", "cpu", "--quick", "--out", str(report_dir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (report_dir / "benchmarks-gpu.md").read_text()
    results = json.loads((report_dir / "benchmarks-gpu.json").read_text())
    assert (out / "benchmarks-gpu.md").read_text() == report and (out / "benchmarks-gpu.json").exists()
    assert "# Benchmarks on a GPU" in done.stdout  # printed as well as written

    this_machine = machine_key("cpu")["device"].rsplit(" ", 2)[0]  # without this process's thread count
    assert f"Measured on **{this_machine} 1 threads** (cpu;" in report  # the script ran with OMP_NUM_THREADS=1
    assert "Not a GPU" in report and results["device_type"] == "cpu" and not results["errors"]
    assert ("bf16 rows were not run" in report) == (dtype_support() is not None)
    assert results["tests"]["device"] == "cpu" and results["tests"]["passed"] >= 1 and results["tests"]["failed"] == 0
    assert "| passed | failed | errors | skipped | seconds |" in report
    samplers = {row["sampler"] for row in results["embedded"]["fp32"]["speed"]}
    assert samplers == {"baseline", "strict", "relax"}
    assert "| steps | batch | sampler | drafter | K | relax | sequential calls | acceptance | wall s | measured speedup | cost model |" in report
    assert [m["model"] for m in results["large"]["fp32"]] == ["DiT-Micro/8 256px", "DiT-Micro/8 512px"]
    assert all(m["projection"] and m["batch_cost_curve"] for m in results["large"]["fp32"])
    dtypes_run = 1 if results["bf16_not_run"] else 2  # fp32, and bf16 where this torch runs it
    # embedded + both large, + the first large model's with its drafter compiled
    assert report.count("Cost-model limit at batch 1 (every draft accepted") == 4 * dtypes_run
    for models in results["large"].values():
        compiled = models[0]["compiled_drafting"]
        assert compiled["mode"] == "default" and compiled["draft_cost_s"] > 0 and "compiled_drafting" not in models[1]
        assert all(row["projected_speedup_compiled"] > 0 for row in models[0]["projection"])
    assert report.count("With the drafter compiled (`--compile-drafter`, torch.compile mode default)") == dtypes_run

    # Every projected figure sits in a table under a heading that says PROJECTION; none in a measured table.
    heading = ""
    for line in report.splitlines():
        heading = line if line.startswith("#") else heading
        if "projected speedup" in line.lower() or "paper reports" in line.lower():
            assert "PROJECTION (not a measurement)" in heading, (heading, line)
    assert report.count("projected speedup (PROJECTION)") == 2 * dtypes_run

    for name, before in docs.items():  # the test's run never writes the GPU report into docs/
        after = (ROOT / "docs" / name).read_bytes() if (ROOT / "docs" / name).exists() else None
        assert after == before, name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_device_without_cuda_is_refused_naming_the_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cuda", "--out", "unused"])
    assert exit_info.value.code == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


def test_a_test_run_stopped_at_its_budget_keeps_its_counts_so_far():
    from free_core.evaluation.device_report import progress_counts, test_lines

    stdout = "........F.s..  [ 40%]\n.E.x\nsome log line with dots ...\n"
    assert progress_counts(stdout) == {"passed": 13, "failed": 1, "errors": 1, "skipped": 2}
    lines = test_lines({"device": "cuda", "args": ["tests/x.py"], "seconds": 170.4, "note": "stopped at 170 s",
                        "partial": progress_counts(stdout)})
    assert "Not finished: stopped at 170 s (170 s); before it was stopped: 13 passed, 1 failed, 1 errors, 2 skipped." in lines
