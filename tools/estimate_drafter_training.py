"""What training a token drafter for a large tapped model costs: one training step timed here, and its FLOPs.

    OMP_NUM_THREADS=2 python tools/estimate_drafter_training.py [--model flux-dev] [--tokens 64] [--repeats 5]

Builds the drafter FREE Train Tapped Drafter would build for the model (its widths: Flux dev's top-block features
are 3072 wide, its final layer's modulation 3072, a latent patch 16 x 2 x 2) and times training steps on random
recordings of the same shapes with `--tokens` tokens per draw (the drafter is per token, so a step's cost is linear
in tokens: the FLOPs are counted, and the time at the recording's tokens is scaled from the one measured). Prints
the measured seconds per step on this machine, the FLOPs per step, and the disk one recording takes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from free_core.models.token_drafter import TappedModelIdentity  # noqa: E402
from free_core.training.train_tapped_drafter import TappedDrafterTrainConfig, train_tapped_drafter  # noqa: E402

# width D, modulation width, latent channels, patch, guidance slots per step (Flux dev is guidance-distilled: cfg 1)
MODELS = {"flux-dev": (3072, 3072, 16, (2, 2), 1), "wan2.1-1.3b": (1536, 1536, 16, (1, 2, 2), 2)}


def recording(width: int, modulation: int, channels: int, patch: tuple[int, ...], slots: int, steps: int,
              tokens: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"features": torch.randn(steps, 1, slots, tokens, width, generator=generator),
            "modulation": torch.randn(steps, 1, slots, modulation, generator=generator),
            "state_patches": torch.randn(steps, 1, tokens, channels * math.prod(patch), generator=generator),
            "image_offsets": torch.zeros(steps, 1, slots, dtype=torch.long), "tokens": torch.arange(tokens)}


def flops_per_step(width: int, modulation: int, patch_inputs: int, hidden: int, config: TappedDrafterTrainConfig,
                   tokens: int) -> float:
    """Multiply-adds x 2 of the drafter's linear layers, forward and backward (x 3), for one training step."""
    per_token = patch_inputs * width + 3 * width * hidden + hidden * width
    per_row = modulation * (2 * hidden + width)
    draws = config.batch_size * config.unroll
    return 2 * 3 * draws * (tokens * per_token + per_row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="flux-dev")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per draw timed here")
    parser.add_argument("--recorded-tokens", type=int, default=1024, help="FREE Record Trajectories' max_tokens")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps per recording")
    parser.add_argument("--latent-patches", type=int, default=4096,
                        help="latent patches per image, all recorded (Flux at 1024^2: 4096)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    width, modulation, channels, patch, slots = MODELS[args.model]
    config = TappedDrafterTrainConfig(train_steps=args.repeats + 1, batch_size=16, unroll=4)
    identity = TappedModelIdentity(args.model, "0" * 16, width, patch)
    data = [recording(width, modulation, channels, patch, slots, args.steps, args.tokens)]
    times: list[float] = []
    started = [time.perf_counter()]

    def on_progress(done: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        if done > 1:  # the first step warms up
            times.append(now - started[0])
        started[0] = now

    drafter, _ = train_tapped_drafter(data, identity, config, "cpu", on_progress)
    step_s = sorted(times)[len(times) // 2]
    hidden = drafter.config.hidden
    flops = flops_per_step(width, modulation, channels * math.prod(patch), hidden, config, args.tokens)
    full = flops_per_step(width, modulation, channels * math.prod(patch), hidden, config, args.recorded_tokens)
    parameters = sum(p.numel() for p in drafter.parameters())
    # bf16 features of the kept tokens per guidance slot, float32 state patches of the whole latent, int64 offsets
    recording_bytes = args.steps * (slots * args.recorded_tokens * width * 2
                                    + args.latent_patches * channels * math.prod(patch) * 4 + slots * 8)
    print(f"model {args.model}: drafter {parameters / 1e6:.1f} M parameters (hidden {hidden}), batch 16 x unroll 4")
    print(f"measured on this machine ({torch.get_num_threads()} threads): {step_s:.3f} s per step at {args.tokens} tokens "
          f"per draw ({flops / step_s / 1e9:.1f} GFLOP/s), median of {len(times)}")
    print(f"FLOPs per step: {flops / 1e12:.3f} T at {args.tokens} tokens, {full / 1e12:.2f} T at {args.recorded_tokens}; "
          f"this machine at {args.recorded_tokens} tokens: {step_s * full / flops:.1f} s per step")
    print(f"one recording ({args.steps} steps, {slots} guidance slot(s), {args.recorded_tokens} tokens, features in bf16, "
          f"{args.latent_patches} latent patches): "
          f"{recording_bytes / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
