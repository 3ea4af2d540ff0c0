"""`python -m free_core {sample, train-dit, train-drafter, train-tapped-drafter, bench, ...}`."""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

from ..engine.diffusion import VARIANCE_MODES
from ..engine.stats import speed_in_words
from ..models.checkpoints import EMBEDDED_CFG_SCALE, WEIGHTS_DIR
from ..models.class_labels import resolve_class
from ..models.dit import DIT_CONFIGS
from ..models.model_specs import (DIT_CHOICES, DRAFTER_CHOICES, DTYPES, FROZEN, check_dit_spec, check_drafter_spec,
                                  default_drafter, resolve_dit, resolve_drafter, resolve_dtype)
from .demo_grid import save_labelled_grid
from .generate import generate
from .options import (DEFAULT_DRAFT_LENGTH, DEFAULT_DRAFT_POLICY, DEFAULT_RELAX_STRENGTH, DEFAULT_STEPS, OptionError,
                      SamplerOptions)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        no_default = action.default is None or action.default is False
        return action.help if no_default else super()._get_help_string(action)


def comma_separated(kind: type) -> Callable[[str], tuple]:
    """An argparse type for a comma-separated list of `kind` values, e.g. "50,250"."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values such as 1,4, got {text!r}")
        return values

    return parse


SAMPLE_RUNS = {"off": ("off",), "strict": ("strict",), "relax": ("relax",), "compare": ("off", "strict", "relax")}
RUN_TITLES = {"off": "baseline", "strict": "FREE strict", "relax": "FREE relax"}
REPORT_KEYS = {"off": "baseline", "strict": "strict", "relax": "relax"}  # the JSON's names of the runs


def draft_length_arg(text: str) -> int | str:
    """`--draft-length`: an integer K, or 'adaptive' (checked with the other options, in one line)."""
    if text == "adaptive":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer K such as 6, or 'adaptive', got {text!r}") from None


def positive_int(option: str, value: int, example: str) -> int:
    if value < 1:
        raise OptionError(f"{option} {value}: must be an integer >= 1; e.g. {option} {example}")
    return value


def parse_labels(text: str | None) -> list[int] | None:
    """`--labels` as class indices (checked against the model once it is loaded); None: 0, 1, 2, ..."""
    if text is None:
        return None
    try:
        labels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        labels = []
    if not labels or any(v < 0 for v in labels):
        raise OptionError(f"--labels {text!r}: expected comma-separated class indices >= 0, such as 0,3,7")
    return labels


def labels_for(labels: list[int] | None, batch: int, num_classes: int) -> torch.Tensor:
    if labels is None:
        return torch.arange(batch) % num_classes
    bad = [v for v in labels if v >= num_classes]
    if bad:
        raise OptionError(f"--labels {','.join(map(str, labels))}: {bad} out of range, this model has classes "
                          f"0..{num_classes - 1}")
    return torch.tensor(labels)[torch.arange(batch) % len(labels)]


def check_device(device: str) -> str:
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise OptionError(f"--device {device!r}: not a device; use cpu or cuda") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {device}: this machine has no CUDA device (or torch is a CPU build); use --device cpu")
    return device


def sample_options(args: argparse.Namespace) -> SamplerOptions:
    """`sample`'s flags as SamplerOptions (compare mode: the relax run's, which carries the strength)."""
    adaptive = args.draft_length == "adaptive"
    return SamplerOptions(mode="relax" if args.mode == "compare" else args.mode, steps=args.steps, cfg=args.cfg,
                          draft_length=args.max_draft_length if adaptive else args.draft_length,
                          draft_policy="adaptive" if adaptive else "fixed",
                          relax_strength=args.relax_strength, variance=args.variance, seed=args.seed,
                          compile_drafter=args.compile_drafter)


def check_compile_drafter(options: SamplerOptions, drafter_spec: str) -> None:
    if options.compile_drafter and drafter_spec == FROZEN:
        raise OptionError("--compile-drafter with --drafter frozen: the frozen drafter has no network to compile; "
                          "use a learned drafter (e.g. --drafter embedded) or drop --compile-drafter")


def command_sample(args: argparse.Namespace) -> int:
    # Every option is checked before anything is loaded or run.
    options = sample_options(args)
    positive_int("--batch", args.batch, "8")
    positive_int("--scale", args.scale, "4")
    positive_int("--repeats", args.repeats, "3")
    requested_labels = parse_labels(args.labels)
    device = check_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    drafter_spec = args.drafter or default_drafter(args.model)
    check_dit_spec(args.model)
    check_drafter_spec(drafter_spec)
    check_compile_drafter(options, drafter_spec)
    model = resolve_dit(args.model, device, dtype=dtype)
    drafter = resolve_drafter(drafter_spec, model, device)
    labels = labels_for(requested_labels, args.batch, model.num_classes)

    runs = SAMPLE_RUNS[args.mode]
    rows, report = {}, {}
    for run in runs:
        times = []
        for _ in range(args.repeats):  # the same seed: the same samples each time; only the clock differs
            samples, stats = generate(model, drafter, labels, options.with_mode(run), device)
            times.append(stats.wall_time_s)
        stats.wall_time_s = statistics.median(times)
        print(f"== {RUN_TITLES[run]} ==\n{stats.summary()}\n", flush=True)
        rows[RUN_TITLES[run]] = samples
        report[REPORT_KEYS[run]] = {**stats.to_dict(), "wall_times_s": times, "options": options.with_mode(run).to_dict()}
    if "baseline" in report:
        for run in runs[1:]:
            report[run]["wall_clock_speedup"] = report["baseline"]["wall_time_s"] / report[run]["wall_time_s"]
        print(comparison_text(report, runs[1:], args.repeats))
    if model.in_channels == 3:
        names = [resolve_class("", int(label), model.num_classes)[1] for label in labels]
        path = save_labelled_grid(args.out, rows, names, scale=args.scale)
        print(f"wrote {path} (rows: {', '.join(rows)}; columns: the requested classes)")
    else:
        path = Path(args.out).with_suffix(".latents.pt")
        torch.save(torch.cat(list(rows.values())).cpu(), path)
        print(f"latent model: wrote {path} (decode with the SD VAE)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def comparison_text(report: dict, runs: tuple[str, ...], repeats: int) -> str:
    """FREE against the baseline in words: calls saved, wall clock with its direction, why, and what 'exact' means."""
    timing = f"median of {repeats} runs" if repeats > 1 else "one run: timings vary run to run, use --repeats 3"
    lines = []
    for run in runs:
        row, steps = report[run], report[run]["num_steps"]
        clock = speed_in_words(row["wall_clock_speedup"])
        lines.append(f"{RUN_TITLES[run]}: {row['sequential_dit_calls']} sequential DiT calls instead of {steps} "
                     f"({row['call_reduction']:.2f}x fewer); wall clock {clock} than the baseline on this machine "
                     f"({timing})")
    if any(report[run]["draft_length"] == "adaptive" and not any(report[run]["draft_lengths"]) for run in runs):
        lines.append("Adaptive K (the default) found that drafting cannot gain on this device at these settings and took "
                     "plain steps; --draft-length 4 shows the calls that drafting saves.")
    lines.append("Why the clock can lose: a FREE round verifies K+1 states in one batched DiT call, which costs about "
                 "K+1 plain steps where the DiT's cost grows with its rows (a CPU); a GPU runs them in parallel "
                 "(docs/benchmarks.md).")
    if "strict" in runs:
        lines.append("FREE strict has the baseline's distribution, not its images: from the same noise it draws its "
                     "randomness in another order, so each row shows other samples of the same law.")
    return "\n".join(lines)


def command_train_dit(args: argparse.Namespace) -> int:
    from ..training.train_dit import DiTTrainConfig, train_dit

    config = DiTTrainConfig(out=args.out, model=args.config, hidden_size=args.hidden_size, depth=args.depth,
                            num_heads=args.num_heads, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            seed=args.seed, max_minutes=args.max_minutes, device=args.device,
                            min_snr_gamma=args.min_snr_gamma if args.min_snr_gamma > 0 else None,
                            init_from=args.init_from, class_weights=args.class_weights)
    path, losses = train_dit(config)
    if losses:
        print(f"saved {path}; final loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    return 0


def command_train_drafter(args: argparse.Namespace) -> int:
    from ..training.train_drafter import DrafterTrainConfig, train_drafter

    config = DrafterTrainConfig(
        dit=args.dit, out=args.out, sampling_steps=args.sampling_steps, trajectories=args.trajectories,
        cfg_scales=args.cfg_scales, train_steps=args.steps,
        batch_size=args.batch_size, unroll=args.unroll, lr=args.lr, seed=args.seed, max_minutes=args.max_minutes,
        device=args.device, collect_batch=args.collect_batch, dtype=args.dtype,
    )
    resolve_dtype(args.dtype, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))  # before collecting
    path, losses = train_drafter(config)
    if losses:
        print(f"saved {path}; final loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    return 0


def command_train_tapped_drafter(args: argparse.Namespace) -> int:
    from ..training.train_tapped_drafter import train_tapped_drafter_files

    path, losses = train_tapped_drafter_files(args.recordings, args.out, args.steps, args.batch_size, args.unroll,
                                              args.lr, args.seed, args.device, args.max_minutes)
    if path is not None:
        print(f"saved {path}; final loss {sum(losses[-50:]) / len(losses[-50:]):.4f} (copying the last features: 1.0)")
    return 0


def command_train_classifier(args: argparse.Namespace) -> int:
    from ..evaluation.metrics import train_classifier

    path, accuracy = train_classifier(args.out, steps=args.steps, seed=args.seed)
    print(f"saved {path}; held-out accuracy {accuracy:.4f}")
    return 0


def command_bench(args: argparse.Namespace) -> int:
    from ..evaluation.bench import BenchConfig, quick_config, run_bench

    config = quick_config(args.out_dir) if args.quick else BenchConfig(
        out_dir=args.out_dir, repeats=args.repeats, quality_samples=args.quality_samples, quality_steps=args.quality_steps,
        quality_draft_length=args.quality_draft_length, quality_samplers=tuple(args.quality_samplers.split(",")),
        steps=args.steps, batches=args.batches, relax_strengths=args.relax_strengths)
    config.dtype = args.dtype
    resolve_dtype(config.dtype)  # the benchmark runs on the CPU
    if args.sections:
        config.sections = args.sections.split(",")
    results = run_bench(config, json_path=None)
    results["commands"] = [args.command_line]  # the resolved settings are in results["config"]
    _write_bench_outputs(results, config.out_dir, args.json, report=not args.no_report)
    return 0


def command_bench_report(args: argparse.Namespace) -> int:
    """Merge the JSON of bench runs (e.g. speed on a quiet machine, quality later) into one report."""
    from ..evaluation.bench import merge_results

    parts = []
    for path in args.results:
        if not Path(path).is_file():
            raise SystemExit(f"bench-report: no such results file {path!r}; write one with `python -m free_core bench --json PATH`")
        parts.append(json.loads(Path(path).read_text()))
    _write_bench_outputs(merge_results(parts), args.out_dir, args.json, report=True)
    return 0


def _write_bench_outputs(results: dict, out_dir: str, json_path: str | None, report: bool) -> None:
    if report:
        try:
            from ..evaluation.bench_report import write_report

            print(f"wrote {write_report(results, out_dir)}")
        except ImportError as error:  # matplotlib missing: the JSON still has everything
            print(f"no report written ({error}); install matplotlib for the plots")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2))
        print(f"wrote {json_path}")


def command_model_card(args: argparse.Namespace) -> int:
    from ..evaluation.model_card import main as model_card_main

    return model_card_main(quality_samples=args.quality_samples, notes_path=args.notes,
                           quality_draft_length=args.quality_draft_length)


def add_dtype_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES),
                        help=f"the dtype {what} computes in; states and the coupling stay float32 (bfloat16: faster on "
                             "GPUs, strict still exact with respect to the plain sampler in the same dtype)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m free_core", description="FREE speculative sampling for DiTs")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")

    sample = sub.add_parser("sample", parents=[common], formatter_class=HelpFormatter,
                            help="sample with the baseline and/or FREE and print the statistics")
    sample.add_argument("--model", default="embedded", help=f"the DiT: {DIT_CHOICES}; configs: {', '.join(sorted(DIT_CONFIGS))}")
    sample.add_argument("--drafter", default=None, help=f"{DRAFTER_CHOICES} (default: embedded for the embedded DiT, else frozen)")
    sample.add_argument("--mode", default="compare", choices=sorted(SAMPLE_RUNS),
                        help="off: the plain ancestral sampler; strict: FREE, exactly its law; relax: faster, approximate; "
                             "compare: all three from the same noise")
    sample.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps of the respaced DDPM schedule (the DiT paper samples 250)")
    sample.add_argument("--batch", type=int, default=8, help="samples per run (one per class, cycling through --labels)")
    sample.add_argument("--cfg", type=float, default=EMBEDDED_CFG_SCALE, help="classifier-free guidance scale (1 = off)")
    sample.add_argument("--variance", default=None, choices=VARIANCE_MODES, help="default: learned if the model learns sigma")
    sample.add_argument("--draft-length", type=draft_length_arg,
                        default="adaptive" if DEFAULT_DRAFT_POLICY == "adaptive" else DEFAULT_DRAFT_LENGTH,
                        help="K, the transitions drafted per round, or 'adaptive': each round's K from the acceptance "
                             "so far and the DiT's cost curve (measured once per machine, kept on disk, so the same "
                             "seed gives the same samples; plain steps where drafting cannot pay)")
    sample.add_argument("--max-draft-length", type=int, default=DEFAULT_DRAFT_LENGTH,
                        help="with --draft-length adaptive: the largest K tried")
    sample.add_argument("--relax-strength", type=float, default=None,
                        help=f"relax (and compare) only: how much to temper acceptance in late steps (unset: "
                             f"{DEFAULT_RELAX_STRENGTH:g}; docs/benchmarks.md measures 2, 8, 32)")
    sample.add_argument("--labels", default=None, help="comma-separated class indices (default 0, 1, 2, ...)")
    sample.add_argument("--seed", type=int, default=0, help="the same seed gives the same samples")
    sample.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    add_dtype_option(sample, "the DiT (and its drafter)")
    sample.add_argument("--compile-drafter", action="store_true",
                        help="torch.compile the learned drafter's proposal (CUDA graphs on CUDA): compiling takes seconds "
                             "once per process, so it pays over long runs; `bench --sections cost` prints both passes")
    sample.add_argument("--repeats", type=int, default=1, help="runs per sampler; the wall clock reported is their median")
    sample.add_argument("--out", default="samples.png", help="the labelled image grid (latent models: a .latents.pt)")
    sample.add_argument("--scale", type=int, default=4, help="image upscaling factor (pixel repetition)")
    sample.add_argument("--json", default=None, help="also write the statistics as JSON")
    sample.set_defaults(handler=command_sample)

    train = sub.add_parser("train-dit", parents=[common], formatter_class=HelpFormatter, help="train a DiT on the procedural data (torchrun-ready, resumable)")
    train.add_argument("--out", default="runs/dit")
    train.add_argument("--config", default="DiT-Tiny/4")
    train.add_argument("--hidden-size", type=int, default=None)
    train.add_argument("--depth", type=int, default=None)
    train.add_argument("--num-heads", type=int, default=None)
    train.add_argument("--steps", type=int, default=6000)
    train.add_argument("--batch-size", type=int, default=96)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--max-minutes", type=float, default=None)
    train.add_argument("--device", default=None)
    train.add_argument("--min-snr-gamma", type=float, default=5.0,
                       help="Min-SNR weighting of the eps loss (0 = plain DiT loss)")
    train.add_argument("--init-from", default=None,
                       help="start from these DiT weights (model and EMA) with a fresh optimizer; ignored when --out holds a "
                            "train_state.pt to resume")
    train.add_argument("--class-weights", type=comma_separated(float), default=None,
                       help="comma-separated training frequency of each class, e.g. to spend more steps on the classes "
                            "the model still draws badly (default: uniform)")
    train.set_defaults(handler=command_train_dit)

    from ..training.train_drafter import DrafterTrainConfig

    drafter_defaults = DrafterTrainConfig()
    drafter = sub.add_parser("train-drafter", parents=[common], formatter_class=HelpFormatter, help="train a FREE drafter for a DiT (torchrun-ready, resumable)")
    drafter.add_argument("--dit", default=drafter_defaults.dit,
                         help="'embedded' or a DiT weights file (official DiT-XL/2 works)")
    drafter.add_argument("--out", default=drafter_defaults.out)
    drafter.add_argument("--sampling-steps", type=comma_separated(int), default=drafter_defaults.sampling_steps,
                         help="the step count used at sampling, or several comma-separated (one trajectory set each)")
    drafter.add_argument("--trajectories", type=int, default=drafter_defaults.trajectories,
                         help="per sampling step count and CFG scale, over all processes")
    drafter.add_argument("--cfg-scales", type=comma_separated(float), default=drafter_defaults.cfg_scales,
                         help="comma-separated guidance scales to collect")
    drafter.add_argument("--steps", type=int, default=drafter_defaults.train_steps)
    drafter.add_argument("--batch-size", type=int, default=drafter_defaults.batch_size)
    drafter.add_argument("--unroll", type=int, default=drafter_defaults.unroll, help="drafts per training unroll (K)")
    drafter.add_argument("--lr", type=float, default=drafter_defaults.lr)
    drafter.add_argument("--seed", type=int, default=drafter_defaults.seed)
    drafter.add_argument("--max-minutes", type=float, default=drafter_defaults.max_minutes)
    drafter.add_argument("--collect-batch", type=int, default=drafter_defaults.collect_batch)
    drafter.add_argument("--device", default=drafter_defaults.device)
    add_dtype_option(drafter, "the DiT collecting trajectories")
    drafter.set_defaults(handler=command_train_drafter)

    tapped = sub.add_parser("train-tapped-drafter", parents=[common], formatter_class=HelpFormatter,
                            help="train a FREE drafter for a tapped model (Flux, SD3, Wan, ...) on FREE Record Trajectories' "
                                 "files (torchrun-ready, resumable from OUT.resume)")
    tapped.add_argument("--recordings", required=True, help="the folder of recordings (models/free_recordings/<name>)")
    tapped.add_argument("--out", required=True, help="the drafter file to write (.safetensors), e.g. in models/free_drafters")
    tapped.add_argument("--steps", type=int, default=1000)
    tapped.add_argument("--batch-size", type=int, default=16, help="draws per step and process")
    tapped.add_argument("--unroll", type=int, default=4, help="drafts per training example (the K you sample with)")
    tapped.add_argument("--lr", type=float, default=2e-3)
    tapped.add_argument("--seed", type=int, default=0)
    tapped.add_argument("--max-minutes", type=float, default=None)
    tapped.add_argument("--device", default=None, help="default: cuda when available")
    tapped.set_defaults(handler=command_train_tapped_drafter)

    bench = sub.add_parser("bench", parents=[common], formatter_class=HelpFormatter, help="baseline vs FREE strict/relax vs frozen drafter, side by side")
    bench.add_argument("--quick", action="store_true", help="a < 2 minute run with every field (used by the tests)")
    bench.add_argument("--json", default=None, help="also write the results as JSON")
    bench.add_argument("--out-dir", default="docs", help="where benchmarks.md and images/ go")
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--quality-samples", type=int, default=1000)
    bench.add_argument("--quality-steps", type=int, default=50)
    bench.add_argument("--steps", type=comma_separated(int), default=(50, 250), help="comma-separated step counts")
    bench.add_argument("--batches", type=comma_separated(int), default=(1, 8), help="comma-separated batch sizes")
    bench.add_argument("--relax-strengths", type=comma_separated(float), default=(2.0, 8.0, 32.0),
                       help="comma-separated relax strengths")
    bench.add_argument("--quality-draft-length", type=int, default=8, help="K of the speculative quality runs")
    bench.add_argument("--quality-samplers", default="baseline,strict,relax",
                       help="comma-separated subset of baseline,strict,relax for the quality section")
    bench.add_argument("--no-report", action="store_true", help="only the JSON (e.g. a part for bench-report)")
    bench.add_argument("--sections", default=None, help="comma-separated subset of speed,quality,cost")
    add_dtype_option(bench, "the embedded DiT (and its drafter)")
    bench.set_defaults(handler=command_bench)

    report = sub.add_parser("bench-report", parents=[common], formatter_class=HelpFormatter, help="merge bench JSON files (e.g. speed and quality parts) into one report")
    report.add_argument("results", nargs="+", help="JSON files written by `bench --json`")
    report.add_argument("--out-dir", default="docs", help="where benchmarks.md and images/ go")
    report.add_argument("--json", default=None, help="also write the merged results as JSON")
    report.set_defaults(handler=command_bench_report)

    card = sub.add_parser("model-card", parents=[common], formatter_class=HelpFormatter, help="measure the shipped weights and write free_core/weights/MODEL_CARD.md")
    card.add_argument("--quality-samples", type=int, default=500)
    card.add_argument("--quality-draft-length", type=int, default=2, help="K of the strict quality run")
    card.add_argument("--notes", default=str(WEIGHTS_DIR / "model_card_notes.json"),
                      help="JSON with training notes for the card (default: the shipped weights' notes)")
    card.set_defaults(handler=command_model_card)

    classifier = sub.add_parser("train-classifier", parents=[common], formatter_class=HelpFormatter, help="train the metric classifier on the procedural data")
    classifier.add_argument("--out", default="runs/classifier.safetensors")
    classifier.add_argument("--steps", type=int, default=600)
    classifier.add_argument("--seed", type=int, default=0)
    classifier.set_defaults(handler=command_train_classifier)

    from .sample_ddp import add_sample_ddp_parser

    add_sample_ddp_parser(sub, sample, HelpFormatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "free_core", *argv])
    try:
        return args.handler(args)
    except OptionError as error:  # a user's input: one line, argparse style, unless --debug asks for the traceback
        if getattr(args, "debug", False):
            raise
        print(f"python -m free_core {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
