"""Train a FREE drafter in process, with a progress callback that may stop it (for ComfyUI's node).

The same pipeline as `train_drafter` (collect the DiT's own trajectories, then unrolled training with
`unrolled_loss`), without files, distributed setup or resumption: it returns the drafter, and
`on_progress(done, total)` is called after every sampling step and training step; if it raises
(ComfyUI's interrupt), training stops and nothing is returned or written.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..engine.denoiser import GuidedDenoiser
from ..models.dit import DiT
from ..models.free_drafter import FreeDrafter, drafter_for
from .train_drafter import DrafterTrainConfig, collect_trajectories, feature_scale, optimisation_step, trajectory_sets

ProgressCallback = Callable[[int, int], None]


class _ProgressRelay:
    """The progress object `collect_trajectories` reports to, relayed to a (done, total) callback."""

    def __init__(self, on_progress: ProgressCallback | None, start_step: int, total: int):
        self.on_progress, self.start_step, self.total = on_progress, start_step, total

    def update(self, step: int, **scalars: float) -> None:
        if self.on_progress is not None:
            self.on_progress(step, self.total)


def fit_drafter(dit: DiT, cfg: DrafterTrainConfig, on_progress: ProgressCallback | None = None) -> tuple[FreeDrafter, list[float]]:
    """A drafter trained for `dit` with `cfg`'s sampling steps, trajectories, CFG scales and training steps."""
    for name in ("trajectories", "train_steps", "batch_size", "unroll"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    with torch.inference_mode(False), torch.enable_grad():
        return _fit(_trainable_copy(dit), cfg, on_progress)


def _trainable_copy(dit: DiT, dtype: torch.dtype | None = None) -> DiT:
    """`dit` itself, or a copy in `dtype` (default: its own) with normal tensors when its weights are in another dtype
    or were created under inference mode (ComfyUI runs nodes in `torch.inference_mode()`; autograd cannot save
    inference tensors)."""
    dtype = dtype or dit.pos_embed.dtype
    if dit.pos_embed.dtype == dtype and not any(p.is_inference() for p in dit.parameters()):
        return dit.eval().requires_grad_(False)
    copy = DiT(dit.config).to(device=next(dit.parameters()).device, dtype=dtype)
    copy.load_state_dict({k: v.clone() for k, v in dit.state_dict().items()})
    copy.source_name, copy.weights_fingerprint = dit.source_name, dit.weights_fingerprint
    return copy.eval().requires_grad_(False)


def _fit(dit: DiT, cfg: DrafterTrainConfig, on_progress: ProgressCallback | None) -> tuple[FreeDrafter, list[float]]:
    device = next(dit.parameters()).device
    torch.manual_seed(cfg.seed)
    trainer = _trainable_copy(dit, torch.float32)  # the DiT collects in its dtype; the drafter trains in float32
    drafter = drafter_for(trainer, history_length=cfg.history_length).train()
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=cfg.lr, weight_decay=0.0)
    collect_units = len(cfg.cfg_scales) * cfg.trajectories * sum(cfg.sampling_steps)
    total = collect_units + cfg.train_steps

    datasets, collected = [], 0
    for steps, scale, diffusion, seed in trajectory_sets(cfg):
        generator = torch.Generator(device=device).manual_seed(seed)
        relay = _ProgressRelay(on_progress, collected, total)
        denoiser = GuidedDenoiser(dit, diffusion, cfg_scale=scale)
        datasets.append(collect_trajectories(denoiser, cfg.trajectories, generator, cfg.collect_batch, device, relay))
        collected += cfg.trajectories * steps
    scale = feature_scale(datasets)

    generator = torch.Generator().manual_seed(cfg.seed * 7919)
    losses: list[float] = []
    for step in range(cfg.train_steps):
        loss, _ = optimisation_step(drafter, drafter, optimizer, trainer, datasets, cfg, step, generator, device, scale)
        losses.append(loss.item())
        if on_progress is not None:
            on_progress(collect_units + step + 1, total)
    return drafter.eval().to(dit.pos_embed.dtype), losses
