"""One call from a run's options to samples: the front door shared by the CLI, the ComfyUI nodes and scripts.

`generate` draws x_T from the seed, builds the respaced schedule and the guided denoiser, and runs
the plain ancestral sampler (mode off) or FREE (strict / relax). Everything random comes from one
generator seeded by `options.seed`, so the same options give the same samples.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..engine.compiled_drafting import CompiledDrafter
from ..engine.cost import measure_batch_cost
from ..engine.denoiser import GuidedDenoiser
from ..engine.diffusion import GaussianDiffusion
from ..models.dit import DiT
from ..engine.drafter_interface import Drafter
from .options import SamplerOptions
from ..engine.sampling import initial_noise, sample_ancestral
from ..engine.speculative import sample_speculative
from ..engine.stats import SamplingStats


def generate(
    dit: DiT,
    drafter: Drafter,
    labels: torch.Tensor,
    options: SamplerOptions,
    device: str | torch.device = "cpu",
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[torch.Tensor, SamplingStats]:
    """Samples (N, C, H, W) in the DiT's space for `labels` (N,), and the run's statistics."""
    denoiser = GuidedDenoiser(dit, GaussianDiffusion.respaced(options.steps), cfg_scale=options.cfg,
                              variance=options.variance)
    generator = torch.Generator(device=device).manual_seed(options.seed)
    shape = (labels.shape[0], dit.in_channels, dit.input_size, dit.input_size)
    x = initial_noise(shape, generator, device)
    labels = labels.to(device)
    if options.mode == "off":
        return sample_ancestral(denoiser, x, labels, generator, callback=callback)
    if options.compile_drafter and not isinstance(drafter, CompiledDrafter):
        drafter = CompiledDrafter(drafter, device)  # compiles at its first pass; later runs reuse torch's compiled code
    samples, stats = sample_speculative(denoiser, drafter, x, labels, generator, draft_length=options.policy(),
                                        mode=options.mode, relax_strength=options.strength, callback=callback)
    # The wall clock against the plain sampler, from a plain step timed now (two forwards after a warm-up): under the
    # machine's present load, which a curve measured once per machine would not see (a browser drawing the canvas
    # slows every step). The adaptive policy keeps reading the stored curve, so samples stay reproducible.
    rows = labels.shape[0] * denoiser.branches
    stats.plain_step_s = measure_batch_cost(denoiser, x, labels, [rows], repeats=2)[rows]
    return samples, stats
