"""`python -m free_core {sample, train-dit, train-drafter, bench}`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Callable

import torch

from .checkpoints import EMBEDDED_CFG_SCALE, EMBEDDED_DIT, WEIGHTS_DIR, load_dit
from .denoiser import GuidedDenoiser
from .diffusion import VARIANCE_MODES, GaussianDiffusion
from .dit import DIT_CONFIGS, DiT, dit_config
from .image_io import grid, write_png
from .sampling import initial_noise, sample_ancestral
from .speculative import sample_speculative


def comma_separated(kind: type) -> Callable[[str], tuple]:
    """An argparse type for a comma-separated list of `kind` values, e.g. "50,250"."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values such as 1,4, got {text!r}")
        return values

    return parse


def load_model(spec: str, device: str) -> DiT:
    """'embedded', a weights path, or 'random:<config>' (random init, for trying the engine)."""
    if spec == "embedded":
        if not EMBEDDED_DIT.is_file():
            raise SystemExit(f"the embedded DiT is missing at {EMBEDDED_DIT}; pass --model random:DiT-Micro/8 to try the engine")
        return load_dit(EMBEDDED_DIT, device=device)
    if spec.startswith("random:"):
        torch.manual_seed(0)
        model = DiT(dit_config(spec.split(":", 1)[1]))
        for parameter in model.final_layer.parameters():  # adaLN-Zero init outputs zeros: give the head some signal
            torch.nn.init.normal_(parameter, std=0.02)
        return model.to(device).eval()
    return load_dit(spec, device=device)


def load_drafter(spec: str, model: DiT, device: str):
    from .drafting import FrozenDrafter

    if spec == "frozen":
        return FrozenDrafter()
    from .drafter import load_drafter as load_free_drafter
    from .checkpoints import EMBEDDED_DRAFTER

    return load_free_drafter(EMBEDDED_DRAFTER if spec == "embedded" else spec, model, device=device)


def parse_labels(text: str | None, batch: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    if text is None:
        return torch.arange(batch) % num_classes
    labels = [int(v) for v in text.split(",") if v.strip()]
    bad = [v for v in labels if not 0 <= v < num_classes]
    if bad:
        raise SystemExit(f"--labels {bad} out of range: this model has classes 0..{num_classes - 1}")
    return torch.tensor((labels * batch)[:batch])


def command_sample(args: argparse.Namespace) -> int:
    device = args.device
    model = load_model(args.model, device)
    default_drafter = "embedded" if args.model == "embedded" else "frozen"
    drafter = load_drafter(args.drafter or default_drafter, model, device)
    try:
        diffusion = GaussianDiffusion.respaced(args.steps)
        denoiser = GuidedDenoiser(model, diffusion, cfg_scale=args.cfg, variance=args.variance)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    generator = torch.Generator(device=device).manual_seed(args.seed)
    x_T = initial_noise((args.batch, model.in_channels, model.input_size, model.input_size), generator, device)
    labels = parse_labels(args.labels, args.batch, model.num_classes, generator).to(device)
    runs = {"off": ["baseline"], "strict": ["strict"], "relax": ["relax"], "compare": ["baseline", "strict", "relax"]}[args.mode]
    images, report = [], {}
    for run in runs:
        run_generator = torch.Generator(device=device).manual_seed(args.seed + 1)
        if run == "baseline":
            samples, stats = sample_ancestral(denoiser, x_T, labels, run_generator)
        else:
            samples, stats = sample_speculative(
                denoiser, drafter, x_T, labels, run_generator, draft_length=args.draft_length,
                mode=run, relax_strength=args.relax_strength if run == "relax" else 0.0,
            )
        print(f"== {run} ==\n{stats.summary()}\n", flush=True)
        images.append(samples)
        report[run] = stats.to_dict()
    if "baseline" in report:
        for run in runs[1:]:
            report[run]["wall_clock_speedup"] = report["baseline"]["wall_time_s"] / report[run]["wall_time_s"]
            print(f"{run}: {report[run]['call_reduction']:.2f}x fewer sequential DiT calls, "
                  f"{report[run]['wall_clock_speedup']:.2f}x wall clock vs baseline")
    if model.in_channels == 3:
        path = write_png(args.out, grid(torch.cat(images), columns=args.batch), scale=args.scale)
        print(f"wrote {path} (rows: {', '.join(runs)})")
    else:
        torch.save(torch.cat(images).cpu(), Path(args.out).with_suffix(".latents.pt"))
        print(f"latent model: wrote {Path(args.out).with_suffix('.latents.pt')} (decode with the SD VAE)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def command_train_dit(args: argparse.Namespace) -> int:
    from .train_dit import DiTTrainConfig, train_dit

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
    from .train_drafter import DrafterTrainConfig, train_drafter

    config = DrafterTrainConfig(
        dit=args.dit, out=args.out, sampling_steps=args.sampling_steps, trajectories=args.trajectories,
        cfg_scales=args.cfg_scales, train_steps=args.steps,
        batch_size=args.batch_size, unroll=args.unroll, lr=args.lr, seed=args.seed, max_minutes=args.max_minutes,
        device=args.device, collect_batch=args.collect_batch,
    )
    path, losses = train_drafter(config)
    if losses:
        print(f"saved {path}; final loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    return 0


def command_train_classifier(args: argparse.Namespace) -> int:
    from .eval import train_classifier

    path, accuracy = train_classifier(args.out, steps=args.steps, seed=args.seed)
    print(f"saved {path}; held-out accuracy {accuracy:.4f}")
    return 0


def command_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, quick_config, run_bench

    config = quick_config(args.out_dir) if args.quick else BenchConfig(
        out_dir=args.out_dir, repeats=args.repeats, quality_samples=args.quality_samples, quality_steps=args.quality_steps,
        quality_draft_length=args.quality_draft_length, quality_samplers=tuple(args.quality_samplers.split(",")),
        steps=args.steps, batches=args.batches, relax_strengths=args.relax_strengths)
    if args.sections:
        config.sections = args.sections.split(",")
    results = run_bench(config, json_path=None)
    results["commands"] = [args.command_line]  # the resolved settings are in results["config"]
    _write_bench_outputs(results, config.out_dir, args.json, report=not args.no_report)
    return 0


def command_bench_report(args: argparse.Namespace) -> int:
    """Merge the JSON of bench runs (e.g. speed on a quiet machine, quality later) into one report."""
    from .bench import merge_results

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
            from .bench_report import write_report

            print(f"wrote {write_report(results, out_dir)}")
        except ImportError as error:  # matplotlib missing: the JSON still has everything
            print(f"no report written ({error}); install matplotlib for the plots")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2))
        print(f"wrote {json_path}")


def command_model_card(args: argparse.Namespace) -> int:
    from .model_card import main as model_card_main

    return model_card_main(quality_samples=args.quality_samples, notes_path=args.notes,
                           quality_draft_length=args.quality_draft_length)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m free_core", description="FREE speculative sampling for DiTs")
    sub = parser.add_subparsers(dest="command", required=True)

    sample = sub.add_parser("sample", help="sample with the baseline and/or FREE and print the statistics")
    sample.add_argument("--model", default="embedded", help="'embedded', a .safetensors/.pt path, or random:<config> "
                        f"with config in {sorted(DIT_CONFIGS)}")
    sample.add_argument("--drafter", default=None, help="'embedded' (learned FREE drafter), 'frozen', or a drafter file")
    sample.add_argument("--mode", default="compare", choices=["off", "strict", "relax", "compare"])
    sample.add_argument("--steps", type=int, default=250)
    sample.add_argument("--batch", type=int, default=8)
    sample.add_argument("--cfg", type=float, default=EMBEDDED_CFG_SCALE, help="classifier-free guidance scale (1 = off)")
    sample.add_argument("--variance", default=None, choices=VARIANCE_MODES, help="default: learned if the model learns sigma")
    sample.add_argument("--draft-length", type=int, default=6)
    sample.add_argument("--relax-strength", type=float, default=8.0,
                        help="relax mode: how much to temper acceptance in late steps (docs/benchmarks.md measures 2, 8, 32)")
    sample.add_argument("--labels", default=None, help="comma-separated class indices (default 0, 1, 2, ...)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    sample.add_argument("--out", default="samples.png")
    sample.add_argument("--scale", type=int, default=4, help="PNG upscaling factor")
    sample.add_argument("--json", default=None, help="also write the statistics as JSON")
    sample.set_defaults(handler=command_sample)

    train = sub.add_parser("train-dit", help="train a DiT on the procedural data (torchrun-ready, resumable)")
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

    from .train_drafter import DrafterTrainConfig

    drafter_defaults = DrafterTrainConfig()
    drafter = sub.add_parser("train-drafter", help="train a FREE drafter for a DiT (torchrun-ready, resumable)")
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
    drafter.set_defaults(handler=command_train_drafter)

    bench = sub.add_parser("bench", help="baseline vs FREE strict/relax vs frozen drafter, side by side")
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
    bench.set_defaults(handler=command_bench)

    report = sub.add_parser("bench-report", help="merge bench JSON files (e.g. speed and quality parts) into one report")
    report.add_argument("results", nargs="+", help="JSON files written by `bench --json`")
    report.add_argument("--out-dir", default="docs", help="where benchmarks.md and images/ go")
    report.add_argument("--json", default=None, help="also write the merged results as JSON")
    report.set_defaults(handler=command_bench_report)

    card = sub.add_parser("model-card", help="measure the shipped weights and write free_core/weights/MODEL_CARD.md")
    card.add_argument("--quality-samples", type=int, default=500)
    card.add_argument("--quality-draft-length", type=int, default=2, help="K of the strict quality run")
    card.add_argument("--notes", default=str(WEIGHTS_DIR / "model_card_notes.json"),
                      help="JSON with training notes for the card (default: the shipped weights' notes)")
    card.set_defaults(handler=command_model_card)

    classifier = sub.add_parser("train-classifier", help="train the metric classifier on the procedural data")
    classifier.add_argument("--out", default="runs/classifier.safetensors")
    classifier.add_argument("--steps", type=int, default=600)
    classifier.add_argument("--seed", type=int, default=0)
    classifier.set_defaults(handler=command_train_classifier)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "free_core", *argv])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
