"""Train a free_core DiT on the procedural data (DiT's hybrid loss: eps MSE + variational bound).

Runs the same alone or under `torchrun --nproc_per_node N` (DDP); checkpoints are resumable.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..models.checkpoints import load_dit, save_dit
from .data import NUM_CLASSES, check_class_weights, make_batch
from ..engine.diffusion import GaussianDiffusion
from ..models.dit import DiT, dit_config
from .distributed import all_reduce_mean, setup_distributed, teardown_distributed
from .progress import Progress


@dataclass
class DiTTrainConfig:
    out: str = "runs/dit"
    model: str = "DiT-Tiny/4"
    hidden_size: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    seed: int = 0
    max_minutes: float | None = None
    checkpoint_every: int = 200
    device: str | None = None
    min_snr_gamma: float | None = 5.0
    init_from: str | None = None
    class_weights: tuple[float, ...] | None = None  # training frequency of each class (None: uniform)


def min_snr_weight(diffusion: GaussianDiffusion, i: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Min-SNR-gamma weight min(SNR, gamma) / SNR of the eps loss (Hang et al. 2023), 1 when gamma is None.

    Low-noise steps have a huge SNR and dominate the plain eps loss with detail the sampler barely needs;
    capping their weight moves the model's capacity to the high-noise steps that decide the global shape.
    """
    if gamma is None:
        return torch.ones(i.shape, dtype=torch.float32, device=i.device)
    if gamma <= 0:
        raise ValueError(f"min_snr_gamma must be positive or None (no weighting), got {gamma}")
    acp = diffusion.tables["alphas_cumprod"].to(i.device)[i].float()
    snr = acp / (1.0 - acp)
    return snr.clamp(max=gamma) / snr


def diffusion_loss(model: torch.nn.Module, diffusion: GaussianDiffusion, x0: torch.Tensor, y: torch.Tensor,
                   generator: torch.Generator, min_snr_gamma: float | None = None) -> torch.Tensor:
    """DiT's loss for one batch: (Min-SNR weighted) eps MSE plus the variational bound on the learned variance."""
    n = x0.shape[0]
    i = torch.randint(0, diffusion.num_steps, (n,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = diffusion.q_sample(x0, i, noise)
    out = model(x_t, i, y)
    channels = x0.shape[1]
    mse = (out[:, :channels] - noise).square().flatten(1).mean(1) * min_snr_weight(diffusion, i, min_snr_gamma)
    vb = diffusion.kl_to_posterior(out, x0, x_t, i) / math.log(2.0)
    return (mse + vb).mean()


def train_dit(cfg: DiTTrainConfig) -> tuple[Path, list[float]]:
    """Train (or resume) and save `out/dit_ema.safetensors`; returns it and the per-step losses."""
    class_weights = None if cfg.class_weights is None else check_class_weights(cfg.class_weights)
    ctx = setup_distributed(cfg.device)
    overrides = {k: v for k, v in (("hidden_size", cfg.hidden_size), ("depth", cfg.depth), ("num_heads", cfg.num_heads)) if v}
    torch.manual_seed(cfg.seed)
    model = DiT(dit_config(cfg.model, **overrides)).to(ctx.device)
    if model.num_classes != NUM_CLASSES or model.in_channels != 3:
        raise ValueError(f"{cfg.model} is not a procedural-data config (3 channels, {NUM_CLASSES} classes)")
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    out_dir = Path(cfg.out)
    resume_path = out_dir / "train_state.pt"
    step = 0
    if resume_path.is_file():
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        if ctx.is_main:
            print(f"resumed from {resume_path} at step {step}", flush=True)
    elif cfg.init_from is not None:
        initial = load_dit(cfg.init_from)
        if initial.config != model.config:
            raise ValueError(f"--init-from {cfg.init_from} has config {initial.config.to_dict()}, but this run trains "
                             f"{model.config.to_dict()}; pass the same --config/--hidden-size/--depth/--num-heads")
        model.load_state_dict(initial.state_dict())
        ema.load_state_dict(initial.state_dict())
        if ctx.is_main:
            print(f"initialised model and EMA from {cfg.init_from} (fresh optimizer, step 0)", flush=True)
    trainable = DistributedDataParallel(model) if ctx.enabled else model
    diffusion = GaussianDiffusion.training()
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + ctx.rank)
    progress = Progress(cfg.steps, "train-dit", enabled=ctx.is_main, start=step)
    started = time.time()
    losses: list[float] = []

    def save_state() -> None:
        if not ctx.is_main:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = resume_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
        tmp.replace(resume_path)
        save_dit(out_dir / "dit_ema.safetensors", ema, {"train_step": str(step), "seed": str(cfg.seed)})

    while step < cfg.steps:
        if cfg.max_minutes is not None and (time.time() - started) > 60 * cfg.max_minutes:
            if ctx.is_main:
                print(f"time limit of {cfg.max_minutes} min reached at step {step}", flush=True)
            break
        x0, y = make_batch(cfg.batch_size, seed=cfg.seed * 10_000_019 + step * ctx.world_size + ctx.rank,
                           class_weights=class_weights)
        x0, y = x0.to(ctx.device), y.to(ctx.device)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.5 * (1 + math.cos(math.pi * step / cfg.steps)) * 0.9 + 0.1)
        loss = diffusion_loss(trainable, diffusion, x0, y, generator, cfg.min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        step += 1
        losses.append(all_reduce_mean(loss.detach(), ctx).item())
        progress.update(step, loss=losses[-1])
        if step % cfg.checkpoint_every == 0:
            save_state()
    save_state()
    progress.close()
    teardown_distributed(ctx)
    return out_dir / "dit_ema.safetensors", losses
