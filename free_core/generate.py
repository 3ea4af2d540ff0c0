"""One call from user-facing options to samples: the glue shared by the ComfyUI nodes and scripts.

`generate` draws x_T from the seed, builds the respaced schedule and the guided denoiser, and runs
the plain ancestral sampler (`mode="off"`) or FREE (`"strict"` / `"relax"`). Everything random comes
from one generator seeded by `seed`, so the same options give the same samples.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .denoiser import GuidedDenoiser
from .diffusion import GaussianDiffusion
from .dit import DiT
from .draft_length import DraftLengthPolicy, FixedDraftLength
from .drafting import Drafter
from .sampling import initial_noise, sample_ancestral
from .speculative import sample_speculative
from .stats import SamplingStats

SAMPLER_MODES = ("strict", "relax", "off")
DRAFT_POLICIES = ("fixed", "adaptive")


def draft_length_policy(length: int, policy: str = "fixed") -> DraftLengthPolicy:
    """K per round: `fixed` at `length`, or `adaptive` up to `length` (free_core.draft_length.AdaptiveDraftLength)."""
    if policy == "fixed":
        return FixedDraftLength(length)
    if policy == "adaptive":
        from . import draft_length

        adaptive = getattr(draft_length, "AdaptiveDraftLength", None)
        if adaptive is None:
            raise ValueError(
                "draft_policy='adaptive' needs free_core.draft_length.AdaptiveDraftLength, which this version of "
                "free_core does not have; use draft_policy='fixed' (or update ComfyUI-FREE)"
            )
        return adaptive(max_length=length)
    raise ValueError(f"draft_policy must be one of {DRAFT_POLICIES}, got {policy!r}")


def generate(
    dit: DiT,
    drafter: Drafter,
    labels: torch.Tensor,
    seed: int,
    steps: int,
    cfg_scale: float,
    mode: str = "strict",
    draft_length: int | DraftLengthPolicy = 6,
    relax_strength: float = 0.0,
    device: str | torch.device = "cpu",
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[torch.Tensor, SamplingStats]:
    """Samples (N, C, H, W) in the DiT's space for `labels` (N,), and the run's statistics."""
    if mode not in SAMPLER_MODES:
        raise ValueError(f"mode must be one of {SAMPLER_MODES}, got {mode!r}")
    denoiser = GuidedDenoiser(dit, GaussianDiffusion.respaced(steps), cfg_scale=cfg_scale)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    shape = (labels.shape[0], dit.in_channels, dit.input_size, dit.input_size)
    x = initial_noise(shape, generator, device)
    labels = labels.to(device)
    if mode == "off":
        return sample_ancestral(denoiser, x, labels, generator, callback=callback)
    strength = relax_strength if mode == "relax" else 0.0
    return sample_speculative(denoiser, drafter, x, labels, generator, draft_length=draft_length, mode=mode,
                              relax_strength=strength, callback=callback)
