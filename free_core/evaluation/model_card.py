"""`python -m free_core model-card`: measure the shipped weights and write free_core/weights/MODEL_CARD.md.

On the embedded model, 250 steps, batch 8, fixed seed: sequential DiT calls of the baseline vs strict with
the frozen drafter vs strict with the learned drafter, acceptance per step; then FD and class accuracy of
the baseline and strict samplers on n samples.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors import safe_open

from ..models.checkpoints import EMBEDDED_CFG_SCALE, EMBEDDED_CLASSIFIER, EMBEDDED_DIT, EMBEDDED_DRAFTER, WEIGHTS_DIR, sha256_file
from ..engine.denoiser import GuidedDenoiser
from ..engine.diffusion import GaussianDiffusion
from ..models.free_drafter import read_drafter_metadata
from ..engine.drafter_interface import FrozenDrafter
from .metrics import load_classifier, quality_report, reference_features
from ..models.model_specs import EMBEDDED, resolve_dit, resolve_drafter
from ..frontdoor.options import SamplerOptions
from ..engine.sampling import initial_noise, sample_ancestral
from ..engine.speculative import sample_speculative


def measure(steps: int = 250, batch: int = 8, quality_samples: int = 500, seed: int = 0, quality_draft_length: int = 2,
            cfg_scale: float = EMBEDDED_CFG_SCALE, log=print) -> dict:
    """Calls at K=6 and adaptive; quality of strict at `quality_draft_length` (strict's law does not depend on K,
    and a short K evaluates fewer states, which is what the quality run costs)."""
    model = resolve_dit(EMBEDDED)
    learned = resolve_drafter(EMBEDDED, model)
    denoiser = GuidedDenoiser(model, GaussianDiffusion.respaced(steps), cfg_scale=cfg_scale)
    g = torch.Generator().manual_seed(seed)
    x_T = initial_noise((batch, 3, model.input_size, model.input_size), g)
    labels = torch.arange(batch) % model.num_classes
    calls = {}
    fixed = SamplerOptions(steps=steps, cfg=cfg_scale, draft_length=6, draft_policy="fixed", seed=seed)
    adaptive = SamplerOptions(steps=steps, cfg=cfg_scale, draft_length=8, draft_policy="adaptive", seed=seed)
    for name, drafter, options in [("baseline", None, None), ("strict, frozen drafter, K=6", FrozenDrafter(), fixed),
                                   ("strict, learned drafter, K=6", learned, fixed),
                                   ("strict, learned drafter, adaptive K", learned, adaptive)]:
        generator = torch.Generator().manual_seed(seed + 1)
        if drafter is None:
            _, stats = sample_ancestral(denoiser, x_T, labels, generator)
        else:
            _, stats = sample_speculative(denoiser, drafter, x_T, labels, generator, draft_length=options.policy())
        calls[name] = stats.to_dict()
        log(f"{name}: {stats.sequential_dit_calls} sequential DiT calls ({stats.call_reduction():.2f}x fewer), "
            f"acceptance {stats.acceptance_rate:.3f}, {stats.wall_time_s:.1f} s")

    classifier = load_classifier()
    reference = reference_features(classifier, quality_samples)
    g = torch.Generator().manual_seed(seed + 2)
    x_T = initial_noise((quality_samples, 3, model.input_size, model.input_size), g)
    labels = torch.arange(quality_samples) % model.num_classes
    quality = {}
    for name, drafter in [("baseline", None), (f"strict, learned drafter, K={quality_draft_length}", learned)]:
        generator = torch.Generator().manual_seed(seed + 3)
        if drafter is None:
            images, _ = sample_ancestral(denoiser, x_T, labels, generator)
        else:
            images, _ = sample_speculative(denoiser, drafter, x_T, labels, generator, draft_length=quality_draft_length)
        quality[name] = quality_report(classifier, images, labels, reference)
        log(f"{name}: FD {quality[name]['fd']:.3f}, class accuracy {quality[name]['class_accuracy']:.3f} (n={quality_samples})")
    return {"steps": steps, "batch": batch, "seed": seed, "cfg_scale": cfg_scale, "calls": calls, "quality": quality}


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def write_model_card(results: dict, training_notes: dict[str, str]) -> Path:
    dit_meta = _metadata(EMBEDDED_DIT)
    drafter_meta = read_drafter_metadata(EMBEDDED_DRAFTER)
    classifier_meta = _metadata(EMBEDDED_CLASSIFIER)
    lines = [
        "# Embedded models: model card",
        "",
        "All three are trained on CPU (2 cores) on the procedural dataset of `free_core/data.py` (10 classes of "
        "shapes and textures, 32x32 RGB, generated in code, deterministic by seed). No download is ever needed.",
        "",
        "| file | bytes | sha256 |",
        "|---|---|---|",
    ]
    for path in (EMBEDDED_DIT, EMBEDDED_DRAFTER, EMBEDDED_CLASSIFIER):
        lines.append(f"| `{path.name}` | {path.stat().st_size} | `{sha256_file(path)}` |")
    lines += [
        "",
        "## DiT",
        f"- config: `{dit_meta.get('config')}`",
        f"- training: {training_notes.get('dit', '')}",
        f"- fingerprint used by drafters: `{drafter_meta.get('dit_fingerprint')}`",
        "",
        "## FREE drafter",
        f"- config: `{drafter_meta.get('config')}`; trained on trajectories at {drafter_meta.get('sampling_steps')} steps, "
        f"CFG scales {drafter_meta.get('cfg_scales')}, {drafter_meta.get('train_steps')} steps",
        f"- training: {training_notes.get('drafter', '')}",
        "",
        "## Metric classifier",
        f"- held-out accuracy on real procedural images: {classifier_meta.get('held_out_accuracy')} "
        f"({classifier_meta.get('steps')} steps, seed {classifier_meta.get('seed')})",
        "",
        f"## Measured (`python -m free_core model-card`, {results['steps']} steps, batch {results['batch']}, CFG {results['cfg_scale']:g}, seed {results['seed']})",
        "",
        "| sampler | sequential DiT calls | fewer calls | DiT-evaluated states | acceptance | mean steps/round | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in results["calls"].items():
        lines.append(f"| {name} | {s['sequential_dit_calls']} | {s['call_reduction']:.2f}x | {s['dit_states']} | "
                     f"{s['acceptance_rate']:.3f} | {s['mean_advance']:.2f} | {s['wall_time_s']:.1f} |")
    lines += ["", "| sampler | n | FD | class accuracy |", "|---|---|---|---|"]
    for name, q in results["quality"].items():
        lines.append(f"| {name} | {q['n']} | {q['fd']:.3f} | {q['class_accuracy']:.3f} |")
    per_step = results["calls"]["strict, learned drafter, K=6"]["acceptance_per_step"]
    buckets = []
    for start in range(0, len(per_step), 25):
        values = [a for a in per_step[start:start + 25] if a is not None]
        if values:
            buckets.append(f"{start}-{min(start + 24, len(per_step) - 1)}: {sum(values) / len(values):.2f}")
    lines += ["", "Acceptance per step (learned drafter, strict, K=6), mean per 25-step bucket, step index 0 = last step: "
              + "; ".join(buckets), ""]
    if training_notes.get("limitations"):
        lines += ["## Known limitations", "", training_notes["limitations"], ""]
    path = WEIGHTS_DIR / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    (WEIGHTS_DIR / "model_card_measurements.json").write_text(json.dumps(results, indent=2))
    return path


def main(quality_samples: int = 500, notes_path: str | None = None, quality_draft_length: int = 2) -> int:
    started = time.perf_counter()
    results = measure(quality_samples=quality_samples, quality_draft_length=quality_draft_length)
    notes = json.loads(Path(notes_path).read_text()) if notes_path else {}
    path = write_model_card(results, notes)
    print(f"wrote {path} in {time.perf_counter() - started:.0f} s")
    return 0
