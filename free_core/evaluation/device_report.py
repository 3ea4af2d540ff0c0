"""`bash tools/device_check.sh`: one run on a GPU that measures what the CPU benches cannot, into docs/benchmarks-gpu.md.

Three sections, each under its own time guard (a section past its budget stops between units and keeps what it has;
one that raises records the error and the run goes on), the report and JSON rewritten after each:
  1. the sampler, coupling and exact-law tests with FREE_TEST_DEVICE set to the device: passed/failed counts;
  2. the embedded model: baseline vs strict vs relax wall clock (`bench.run_speed`), its batch-cost curve and drafting
     pass on the device, and the cost model's prediction of each strict/relax run from that curve next to the measured ratio;
  3. DiT-XL/2 at 256 and 512 with random weights: the batch-cost curve (rows 2..32), one drafting pass (a fresh
     drafter), and the speedup PROJECTED from the embedded model's measured rounds onto that curve.
bf16 rows need `resolve_dit(spec, ..., dtype=...)`; without it they are not run and the report says so.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..engine.compiled_drafting import CompiledDrafter
from ..engine.cost import cached_draft_cost, interpolate_cost, machine_key, measure_batch_cost
from ..engine.denoiser import GuidedDenoiser
from ..engine.diffusion import GaussianDiffusion
from ..engine.drafter_interface import FrozenDrafter
from ..engine.speculative import sample_speculative
from ..models.dit import DiT, dit_config
from ..models.free_drafter import drafter_for
from ..models.model_specs import EMBEDDED, RANDOM_PREFIX, resolve_dit, resolve_drafter
from .bench import BenchConfig, bench_options, run_speed
from .bench_report import _stats_from_row
from .projection import projected_speedup

REPORT_NAME = "benchmarks-gpu"
COMMAND = "bash tools/device_check.sh"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LIMIT_DRAFT_LENGTHS = (2, 4, 6, 8)
# The tests whose code paths differ on a GPU: CUDA generators, float64 on the device, the coupling and the rounds, and
# the host synchronisations per round (counted by CUDA's sync debug mode there).
DEVICE_TESTS = ("tests/test_exact_law.py", "tests/test_coupling.py", "tests/test_samplers.py", "tests/test_host_syncs.py")
# Headline speedups quoted in issue 11 from the FREE paper (arXiv 2511.20390); printed beside projections, never measured here.
PAPER_SPEEDUPS = "1.86x (DiT-XL/2, 512x512) and 2.25x"


@dataclass
class DeviceCheckConfig:
    device: str = "cuda"
    out_dir: str = "docs"
    quick: bool = False
    steps: tuple[int, ...] = (50, 250)
    batches: tuple[int, ...] = (1, 8)
    repeats: int = 3
    draft_lengths: tuple[int | str, ...] = (6, "adaptive")
    relax_strengths: tuple[float, ...] = (8.0,)
    embedded_rows: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 96, 144)  # up to batch 8 x (K 8 + 1) x CFG 2
    large_models: tuple[tuple[str, int], ...] = (("DiT-XL/2", 32), ("DiT-XL/2", 64))  # (config, latent size): 256, 512 px
    large_rows: tuple[int, ...] = (2, 4, 6, 8, 12, 16, 24, 32)
    compiled_large_models: int = 1  # the first N large models also time a compiled drafting pass (compiling takes ~a minute)
    test_args: tuple[str, ...] = DEVICE_TESTS
    # Sized for < 8 minutes on one H100 with the overshoot of one unit per section (a unit is not interrupted).
    budgets_s: dict[str, float] = field(default_factory=lambda: {"tests": 170.0, "embedded": 120.0, "large": 150.0})


def quick_config(out_dir: str, device: str = "cpu") -> DeviceCheckConfig:
    """Every section on tiny sizes (DiT-Micro/8 stands in for DiT-XL/2): the whole script path in about two minutes
    (compiling the drafter, cold, takes most of the large section's budget)."""
    return DeviceCheckConfig(device=device, out_dir=out_dir, quick=True, steps=(20,), batches=(1,), repeats=1,
                             draft_lengths=(4,), embedded_rows=(1, 2, 4, 8), large_models=(("DiT-Micro/8", 32), ("DiT-Micro/8", 64)),
                             large_rows=(2, 4), test_args=("tests/test_samplers.py", "-k", "same_seed_same_bits"),
                             budgets_s={"tests": 60.0, "embedded": 30.0, "large": 150.0})


def dtype_support() -> str | None:
    """None when `resolve_dit` takes `dtype=`, else why the bf16 rows cannot run."""
    if "dtype" in inspect.signature(resolve_dit).parameters:
        return None
    return ("resolve_dit has no dtype= argument in this checkout (the bf16 support of branch `dtype` is not merged), "
            "so a bf16 DiT with float32 states cannot be built")


def cost_model_limit(curve: dict[int, float], branches: int, draft_cost_s: float,
                     lengths: tuple[int, ...] = LIMIT_DRAFT_LENGTHS) -> dict[str, float]:
    """The speedup at batch 1 if every draft were accepted: K + 1 plain steps against one round verifying K + 1 states
    plus K drafting passes, from a measured curve: the most any acceptance can buy on this device."""
    one_state = interpolate_cost(curve, branches)
    return {str(k): (k + 1) * one_state / (interpolate_cost(curve, (k + 1) * branches) + k * draft_cost_s) for k in lengths}


def device_name(device: torch.device) -> str:
    """The accelerator's name (or the CPU's description), as the cost cache keys it."""
    return machine_key(device)["device"]


class Deadline:
    """A section's time guard: checked between units of work, never inside one."""

    def __init__(self, budget_s: float):
        self.budget_s, self.started = budget_s, time.perf_counter()

    def expired(self) -> bool:
        return time.perf_counter() - self.started > self.budget_s

    def note(self, unit: str) -> str:
        return f"stopped by the {self.budget_s:.0f} s time guard before {unit}"


def run_tests(config: DeviceCheckConfig, log) -> dict:
    """The device tests in a subprocess with FREE_TEST_DEVICE set, killed at the section's budget; pytest's counts."""
    env = {**os.environ, "FREE_TEST_DEVICE": config.device, "PYTHONPATH": str(Path.cwd())}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *config.test_args]
    started = time.perf_counter()
    result = {"device": config.device, "args": list(config.test_args)}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=config.budgets_s["tests"])
    except subprocess.TimeoutExpired as timeout:  # keep what the killed run had reported (its progress characters)
        partial = timeout.stdout.decode(errors="replace") if isinstance(timeout.stdout, bytes) else timeout.stdout or ""
        return {**result, "seconds": time.perf_counter() - started, "partial": progress_counts(partial),
                "note": Deadline(config.budgets_s["tests"]).note("pytest finished")}
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", summary)}
    counts["errors"] = counts.pop("error", 0) + counts.pop("errors", 0)
    failures = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    log(f"tests on {config.device}: {summary}")
    return {**result, "seconds": time.perf_counter() - started, "returncode": done.returncode, "summary": summary,
            **{k: counts.get(k, 0) for k in ("passed", "failed", "errors", "skipped", "deselected")}, "failures": failures[:20]}


PROGRESS_LINE = re.compile(r"^([.FEsxX]+)\s*(\[\s*\d+%\])?$")


def progress_counts(stdout: str) -> dict[str, int]:
    """Passed / failed / errors / skipped so far, from `pytest -q`'s progress characters (a run killed midway)."""
    marks = "".join(match.group(1) for line in stdout.splitlines() if (match := PROGRESS_LINE.match(line.strip())))
    return {"passed": marks.count("."), "failed": marks.count("F"), "errors": marks.count("E"),
            "skipped": marks.count("s") + marks.count("x") + marks.count("X")}


def build_dit(spec: str, device: torch.device, dtype: torch.dtype) -> DiT:
    """`resolve_dit`, with `dtype=` only when it is not float32 (so that a checkout without dtype support runs fp32)."""
    return resolve_dit(spec, device=device, **({} if dtype == torch.float32 else {"dtype": dtype}))


def run_embedded(config: DeviceCheckConfig, dtype: torch.dtype, deadline: Deadline, log) -> dict:
    """Wall clock of baseline / strict / relax on the embedded model, its cost curve, and the cost model's prediction."""
    device = torch.device(config.device)
    model = build_dit(EMBEDDED, device, dtype)
    drafters = {"frozen": FrozenDrafter(), "learned": resolve_drafter(EMBEDDED, model, device=device)}
    bench = BenchConfig(draft_lengths=config.draft_lengths, relax_strengths=config.relax_strengths,
                        relax_draft_length=8, repeats=config.repeats)
    denoiser = GuidedDenoiser(model, GaussianDiffusion.respaced(50), cfg_scale=bench.cfg_scale)
    x = torch.zeros(1, model.in_channels, model.input_size, model.input_size, device=device)
    labels = torch.zeros(1, dtype=torch.long, device=device)
    curve = measure_batch_cost(denoiser, x, labels, list(config.embedded_rows), repeats=config.repeats)
    result: dict = {"batch_cost_curve": {str(r): s for r, s in curve.items()}, "draft_cost_s": {}, "speed": [], "notes": []}
    for steps in config.steps:
        for batch in config.batches:
            if deadline.expired():
                result["notes"].append(deadline.note(f"steps={steps} batch={batch}"))
                return result
            single = BenchConfig(**{**bench.__dict__, "steps": (steps,), "batches": (batch,)})
            warm_adaptive_costs(single, model, drafters["learned"])
            result["speed"] += run_speed(single, model, drafters, log)
    for batch in config.batches:
        states = torch.zeros(batch, *x.shape[1:], device=device)
        result["draft_cost_s"][str(batch)] = cached_draft_cost(denoiser, drafters["learned"], states, labels.expand(batch))
    result["cost_model_limit"] = cost_model_limit(curve, denoiser.branches, result["draft_cost_s"][str(min(config.batches))])
    for row in result["speed"]:
        if row["drafter"] == "learned":
            one_state = interpolate_cost(curve, row["batch"] * denoiser.branches)
            ratio = result["draft_cost_s"][str(row["batch"])] / one_state
            row["cost_model_speedup"] = projected_speedup(_stats_from_row(row), curve, denoiser.branches, ratio)
    return result


def warm_adaptive_costs(config: BenchConfig, model: DiT, drafter) -> None:
    """One untimed adaptive run at the config's shape: the adaptive policy measures its cost curve and drafting pass on
    its first run at a new shape (this run's cache starts empty), which must not be charged to a timed run."""
    device = next(model.parameters()).device
    batch, steps = config.batches[0], config.steps[0]
    denoiser = GuidedDenoiser(model, GaussianDiffusion.respaced(steps), cfg_scale=config.cfg_scale)
    x = torch.zeros(batch, model.in_channels, model.input_size, model.input_size, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    policy = bench_options(config, steps, "strict", "adaptive", 0.0).policy()
    sample_speculative(denoiser, drafter, x, labels, torch.Generator(device).manual_seed(0), draft_length=policy)


def large_dit(name: str, latent_size: int, device: torch.device, dtype: torch.dtype) -> DiT:
    """DiT `name` with random weights at `latent_size` (32: 256 px, 64: 512 px): `random:<name>` is the 32 latent."""
    if latent_size == dit_config(name).input_size:
        return build_dit(RANDOM_PREFIX + name, device, dtype)
    model = DiT(dit_config(name, input_size=latent_size))  # random weights are fine for cost; `random:` has no size option
    model.source_name = f"{RANDOM_PREFIX}{name}@{latent_size}"
    return model.to(device=device, dtype=dtype).eval()


def measure_compiled_drafting(entry: dict, denoiser: GuidedDenoiser, model: DiT, x: torch.Tensor, labels: torch.Tensor,
                              curve: dict[int, float], learned_rounds: list[dict]) -> None:
    """The drafting pass with the drafter compiled (CUDA graphs on CUDA), its cost-model limit, and the projection's
    compiled column, into `entry`."""
    compiled_drafter = CompiledDrafter(drafter_for(model), x.device)
    started = time.perf_counter()  # the compile happens in the pass's untimed warm-up
    compiled = cached_draft_cost(denoiser, compiled_drafter, x, labels)
    entry["compiled_drafting"] = {"mode": compiled_drafter.compile_mode, "draft_cost_s": compiled,
                                  "compile_and_measure_s": time.perf_counter() - started,
                                  "cost_model_limit": cost_model_limit(curve, denoiser.branches, compiled)}
    compiled_ratio = compiled / interpolate_cost(curve, denoiser.branches)
    for row, r in zip(entry["projection"], learned_rounds):
        row["projected_speedup_compiled"] = projected_speedup(_stats_from_row(r), curve, denoiser.branches, compiled_ratio)


def run_large(config: DeviceCheckConfig, dtype: torch.dtype, embedded_speed: list[dict], deadline: Deadline, log) -> list[dict]:
    """Per large model: the measured batch-cost curve and drafting pass, and the projection of the embedded rounds onto it."""
    device = torch.device(config.device)
    results = []
    for index, (name, latent_size) in enumerate(config.large_models):
        label = f"{name} {latent_size * 8}px"
        if deadline.expired():
            results.append({"model": label, "note": deadline.note(label)})
            break
        model = large_dit(name, latent_size, device, dtype)
        denoiser = GuidedDenoiser(model, GaussianDiffusion.respaced(50), cfg_scale=BenchConfig().cfg_scale)
        x = torch.zeros(1, model.in_channels, latent_size, latent_size, device=device)
        labels = torch.zeros(1, dtype=torch.long, device=device)
        entry: dict = {"model": label, "parameters": sum(p.numel() for p in model.parameters()), "batch_cost_curve": {}}
        for rows in config.large_rows:
            if deadline.expired():
                entry["note"] = deadline.note(f"{rows} rows")
                break
            entry["batch_cost_curve"][str(rows)] = measure_batch_cost(denoiser, x, labels, [rows], config.repeats)[rows]
        curve = {int(r): s for r, s in entry["batch_cost_curve"].items()}
        if curve and not deadline.expired():
            entry["draft_cost_s"] = cached_draft_cost(denoiser, drafter_for(model), x, labels)
            entry["cost_model_limit"] = cost_model_limit(curve, denoiser.branches, entry["draft_cost_s"])
            ratio = entry["draft_cost_s"] / interpolate_cost(curve, denoiser.branches)
            learned_rounds = [r for r in embedded_speed if r["drafter"] == "learned" and r["batch"] == 1]
            entry["projection"] = [
                {"steps": r["steps"], "batch": r["batch"], "sampler": r["sampler"], "draft_length": r["draft_length"],
                 "relax_strength": r["relax_strength"], "acceptance": r["acceptance"],
                 "projected_speedup": projected_speedup(_stats_from_row(r), curve, denoiser.branches, ratio)}
                for r in learned_rounds]
            if index < config.compiled_large_models and not deadline.expired():
                try:  # a compiler failure is reported with the model; the other models are still measured
                    measure_compiled_drafting(entry, denoiser, model, x, labels, curve, learned_rounds)
                except Exception as error:  # noqa: BLE001
                    entry["compiled_drafting_error"] = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        log(f"{label}: {len(curve)} curve points" + (f", drafting pass {entry['draft_cost_s'] * 1e3:.2f} ms" if "draft_cost_s" in entry else ""))
        results.append(entry)
        del model, denoiser
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def run_device_check(config: DeviceCheckConfig, log=print) -> dict:
    """All three sections; the JSON and the report are rewritten after each, so a killed run keeps what it measured."""
    device = torch.device(config.device)
    results: dict = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
                     "cuda": torch.version.cuda, "command": COMMAND + (" --device cpu --quick" if config.quick else ""),
                     "date": time.strftime("%Y-%m-%d %H:%M"), "quick": config.quick, "repeats": config.repeats,
                     "budgets_s": config.budgets_s, "bf16_not_run": dtype_support(), "embedded": {}, "large": {}, "errors": []}
    started = time.perf_counter()
    out_dir = Path(config.out_dir)
    dtypes = [name for name in DTYPES if name == "fp32" or results["bf16_not_run"] is None]

    def section(name: str, run) -> None:
        try:
            run()
        except Exception as error:  # noqa: BLE001 - one section's failure is reported, the others still run
            results["errors"].append(f"{name}: {type(error).__name__}: {' '.join(str(error).split())}")
            log(f"{name} failed: {results['errors'][-1]}")
        results["seconds"] = time.perf_counter() - started
        write_report(results, out_dir)

    with tempfile.TemporaryDirectory(prefix="free_device_costs_") as cache:
        os.environ["FREE_COST_CACHE"] = cache  # every curve and drafting pass in the report is measured in this run
        section("tests", lambda: results.__setitem__("tests", run_tests(config, log)))
        embedded_deadline = Deadline(config.budgets_s["embedded"])
        for name in dtypes:
            section(f"embedded {name}", lambda name=name: results["embedded"].__setitem__(
                name, run_embedded(config, DTYPES[name], embedded_deadline, log)))
        large_deadline = Deadline(config.budgets_s["large"])
        rounds = results["embedded"].get("fp32", {}).get("speed", [])
        for name in dtypes:
            section(f"large {name}", lambda name=name: results["large"].__setitem__(
                name, run_large(config, DTYPES[name], rounds, large_deadline, log)))
    return results


def write_report(results: dict, out_dir: Path) -> Path:
    """docs/benchmarks-gpu.md and .json from one run's results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{REPORT_NAME}.json").write_text(json.dumps(results, indent=2))
    path = out_dir / f"{REPORT_NAME}.md"
    path.write_text("\n".join(report_lines(results)) + "\n")
    return path


def report_lines(results: dict) -> list[str]:
    """The report: measured tables only, the device named; projections in their own labelled table."""
    lines = ["# Benchmarks on a GPU", "",
             f"Measured on **{results['device']}** ({results['device_type']}; torch {results['torch']}, CUDA {results['cuda']}) "
             f"on {results['date']} by `{results['command']}` in {results.get('seconds', 0):.0f} s. Every figure below is measured "
             "in this run except the cost-model column (computed from this run's measured curve) and the table marked PROJECTION.", ""]
    if results["device_type"] != "cuda":
        lines += [f"Not a GPU: this {results['device_type']} run only checks the script's path; its figures say nothing about a GPU.", ""]
    if results["bf16_not_run"]:
        lines += [f"bf16 rows were not run: {results['bf16_not_run']}.", ""]
    for error in results["errors"]:
        lines += [f"Section failed: {error}", ""]
    lines += test_lines(results.get("tests"))
    for dtype, embedded in results["embedded"].items():
        lines += embedded_lines(dtype, embedded, results["repeats"])
    for dtype, models in results["large"].items():
        lines += large_lines(dtype, models)
    return lines


def test_lines(tests: dict | None) -> list[str]:
    if tests is None:
        return []
    lines = [f"## Tests with FREE_TEST_DEVICE={tests['device']}", "", f"`pytest {' '.join(tests['args'])}`", ""]
    if "note" in tests:
        done = tests.get("partial")
        so_far = "" if done is None else (f"; before it was stopped: {done['passed']} passed, {done['failed']} failed, "
                                          f"{done['errors']} errors, {done['skipped']} skipped")
        return lines + [f"Not finished: {tests['note']} ({tests['seconds']:.0f} s){so_far}.", ""]
    lines += ["| passed | failed | errors | skipped | seconds |", "|---|---|---|---|---|",
              f"| {tests['passed']} | {tests['failed']} | {tests['errors']} | {tests['skipped']} | {tests['seconds']:.0f} |", ""]
    return lines + [f"- `{failure}`" for failure in tests["failures"]] + ([""] if tests["failures"] else [])


def embedded_lines(dtype: str, embedded: dict, repeats: int) -> list[str]:
    lines = [f"## Embedded model, {dtype}: wall clock", "",
             f"Median of {repeats} runs, synchronised; speedup against the baseline of the same steps and batch in this run. "
             "Cost model: steps x cost(batch) / (sum over rounds of cost(rows verified) + drafting passes), from this run's curve "
             "and drafting pass below: computed, not measured.", "",
             "| steps | batch | sampler | drafter | K | relax | sequential calls | acceptance | wall s | measured speedup | cost model |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in embedded["speed"]:
        model = f"{r['cost_model_speedup']:.2f}x" if "cost_model_speedup" in r else "-"
        lines.append(f"| {r['steps']} | {r['batch']} | {r['sampler']} | {r['drafter']} | {r['draft_length']} | {r['relax_strength']:g} | "
                     f"{r['sequential_dit_calls']} | {r['acceptance']:.3f} | {r['wall_time_s']:.3f} | {r['wall_clock_speedup']:.2f}x | {model} |")
    lines += [""] + [f"{note}." for note in embedded["notes"]] + limit_lines(embedded)
    draft = ", ".join(f"batch {b}: {s * 1e3:.2f} ms" for b, s in embedded["draft_cost_s"].items())
    lines += ["", f"Embedded batch-cost curve ({dtype}, one DiT forward); drafting pass {draft or 'not measured'}:", ""]
    return lines + curve_lines(embedded["batch_cost_curve"])


def limit_lines(entry: dict) -> list[str]:
    if "cost_model_limit" not in entry:
        return []
    limits = ", ".join(f"K={k}: {v:.2f}x" for k, v in entry["cost_model_limit"].items())
    return ["", f"Cost-model limit at batch 1 (every draft accepted; computed from this run's curve and drafting pass, "
                f"not measured): {limits}.", ""]


def curve_lines(curve: dict[str, float]) -> list[str]:
    lines = ["| rows | ms per forward | relative to the first row count |", "|---|---|---|"]
    first = next(iter(curve.values()), None)
    lines += [f"| {rows} | {seconds * 1e3:.2f} | {seconds / first:.2f}x |" for rows, seconds in curve.items()]
    return lines + [""]


def large_lines(dtype: str, models: list[dict]) -> list[str]:
    lines = []
    for m in models:
        lines += [f"## {m['model']}, random weights, {dtype}: measured cost", ""]
        if "parameters" in m:
            draft = f"{m['draft_cost_s'] * 1e3:.2f} ms" if "draft_cost_s" in m else "not measured"
            lines += [f"{m['parameters'] / 1e6:.0f}M parameters; one drafting pass (fresh drafter, batch 1, CFG rows): {draft}.", ""]
            lines += curve_lines(m["batch_cost_curve"]) + limit_lines(m)
            if "compiled_drafting_error" in m:
                lines += [f"The drafter could not be compiled here: {m['compiled_drafting_error']}.", ""]
            if "compiled_drafting" in m:
                c = m["compiled_drafting"]
                lines += [f"With the drafter compiled (`--compile-drafter`, torch.compile mode {c['mode']}): one drafting pass "
                          f"{c['draft_cost_s'] * 1e3:.2f} ms; compiling and timing it took {c['compile_and_measure_s']:.0f} s."]
                lines += limit_lines({"cost_model_limit": c["cost_model_limit"]})
        if "note" in m:
            lines += [f"{m['note']}.", ""]
        if m.get("projection"):
            lines += [f"### {m['model']}, {dtype}: PROJECTION (not a measurement)", "",
                      "The embedded model's measured rounds (its acceptance per step, batch 1, fp32) replayed on this model's "
                      f"measured curve and drafting pass. This model's own drafter would accept differently. "
                      f"The paper reports {PAPER_SPEEDUPS}.", "",
                      "| steps | sampler | K | relax | embedded acceptance | projected speedup (PROJECTION) | "
                      "the same, drafter compiled (PROJECTION) |", "|---|---|---|---|---|---|---|"]
            lines += [f"| {p['steps']} | {p['sampler']} | {p['draft_length']} | {p['relax_strength']:g} | {p['acceptance']:.3f} | "
                      f"{p['projected_speedup']:.2f}x | "
                      + (f"{p['projected_speedup_compiled']:.2f}x |" if "projected_speedup_compiled" in p else "- |")
                      for p in m["projection"]]
            lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/device_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--out", default="docs", help="folder for benchmarks-gpu.md and .json (default docs)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, DiT-Micro/8 for DiT-XL/2: checks the script's path")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; run on a GPU machine, or use --device cpu --quick")
    config = quick_config(args.out, args.device) if args.quick else DeviceCheckConfig(device=args.device, out_dir=args.out)
    results = run_device_check(config)
    print((Path(args.out) / f"{REPORT_NAME}.md").read_text())
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
