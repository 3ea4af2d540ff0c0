"""Train a FREE drafter on top-block feature trajectories of the DiT's own ancestral sampler.

1. Collect: run the DiT's sampler (the sampling schedule, with and without CFG) and record, for every
   step, the state x_i and the top-block features of each CFG row.
2. Train, unrolled over K drafts exactly as a round drafts: the history starts from verified features,
   each drafted h_i is fed back, the states are the true chain states (on acceptance the drafted
   states are the chain's). Loss per drafted step:
       feature MSE / feature variance  +  w * (1 - a),   a = erfc(sqrt(D2) / (2 sqrt 2))
   with D2 = sum ((mean_p - mean_q) / std_q)^2 + 2 sum (log std_p - log std_q)^2 the whitened
   transition error: a is the reflection coupling's acceptance probability for that error, so the
   drafter learns what acceptance needs and does not chase hopeless steps.

Runs the same alone or under `torchrun --nproc_per_node N` (DDP, gloo on CPU, nccl on CUDA): each rank
collects its own trajectories; checkpoints are resumable. Works for any free_core DiT. With `dtype` bfloat16 or
float16 (or a DiT given in that dtype) the trajectories are collected in that dtype (the costly part, and the
features the drafter reads at sampling in that dtype); the drafter trains in float32, on a float32 copy of the
DiT's embedders and head, and is cast to the DiT's dtype at load.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

from ..models.checkpoints import load_dit
from ..engine.denoiser import GuidedDenoiser
from ..engine.diffusion import GaussianDiffusion
from ..models.dit import DiT
from ..models.model_specs import DTYPES
from .distributed import DistributedContext, all_reduce_mean, setup_distributed, teardown_distributed
from ..models.free_drafter import FreeDrafter, drafter_for, save_drafter
from .progress import Progress
from ..engine.sampling import initial_noise, step_noise


@dataclass
class DrafterTrainConfig:
    dit: str = "embedded"
    out: str = "runs/drafter"
    sampling_steps: tuple[int, ...] = (250,)  # the step counts used at sampling; one int is accepted too
    trajectories: int = 64  # per sampling step count and CFG scale, over all ranks
    cfg_scales: tuple[float, ...] = (1.0, 2.0, 4.0)
    train_steps: int = 1500
    batch_size: int = 32
    unroll: int = 6
    history_length: int = 2
    lr: float = 2e-3
    acceptance_weight: float = 1.0
    seed: int = 0
    max_minutes: float | None = None
    checkpoint_every: int = 100
    device: str | None = None
    collect_batch: int = 32
    dtype: str | None = None  # the dtype the DiT collects trajectories in (model_specs.DTYPES); None: the DiT's own
    losses: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        steps = (self.sampling_steps,) if isinstance(self.sampling_steps, int) else tuple(self.sampling_steps)
        if not steps or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in steps):
            raise ValueError(f"sampling_steps must be one or more integer step counts >= 2, got {self.sampling_steps!r}")
        self.sampling_steps = steps
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


@dataclass
class Trajectories:
    """States (n, N, C, H, W) and top-block features (n, branches, N, T, D) by step index, plus labels,
    and the respaced diffusion (N steps) they were sampled with."""

    states: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor
    cfg_scale: float
    diffusion: GaussianDiffusion


@torch.no_grad()
def collect_trajectories(denoiser: GuidedDenoiser, count: int, generator: torch.Generator, batch: int,
                         device: torch.device, progress: Progress | None = None) -> Trajectories:
    """Run the ancestral sampler and record every state and top-block feature row (float16)."""
    model = denoiser.model
    steps, shape = denoiser.num_steps, (model.in_channels, model.input_size, model.input_size)
    all_states, all_features, all_labels = [], [], []
    for start in range(0, count, batch):
        n = min(batch, count - start)
        x = initial_noise((n, *shape), generator, device)
        labels = torch.randint(0, model.num_classes, (n,), generator=generator).to(device)
        states = torch.empty((n, steps, *shape), dtype=torch.float16)
        features = torch.empty((n, denoiser.branches, steps, model.num_tokens, model.hidden_size), dtype=torch.float16)
        for step in reversed(range(steps)):
            i = torch.full((n,), step, dtype=torch.long, device=device)
            feature_rows, output_rows = denoiser.evaluate(x, i, labels)
            states[:, step] = x.cpu().half()
            features[:, :, step] = feature_rows.unflatten(0, (n, denoiser.branches)).cpu().half()
            mean, std = denoiser.transition(denoiser.guided_output(output_rows), x, i)
            x = mean + std * step_noise(x, generator)
            if progress is not None:
                progress.update(progress.start_step + start * steps + (steps - step) * n)
        all_states.append(states)
        all_features.append(features)
        all_labels.append(labels.cpu())
    return Trajectories(torch.cat(all_states), torch.cat(all_features), torch.cat(all_labels), denoiser.cfg_scale,
                        denoiser.diffusion)


def unrolled_loss(drafter: torch.nn.Module, dit: DiT, data: Trajectories,
                  batch_size: int, unroll: int, history_length: int, acceptance_weight: float,
                  generator: torch.Generator, device: torch.device, feature_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean acceptance proxy) of K-step unrolled drafting from random round starts."""
    diffusion = data.diffusion
    n, branches, steps = data.features.shape[:3]
    traj = torch.randint(0, n, (batch_size,), generator=generator)
    branch = torch.randint(0, branches, (batch_size,), generator=generator)
    start = torch.randint(1, steps, (batch_size,), generator=generator)  # drafting starts at a step >= 1
    history = torch.stack(
        [data.features[traj, branch, (start + k).clamp(max=steps - 1)] for k in range(history_length, 0, -1)], dim=1
    ).to(device).float()  # (B, m, T, D): h_{i+m} ... h_{i+1}
    labels = torch.where(branch == 0, data.labels[traj], torch.full_like(traj, dit.null_class)).to(device)
    total, accept_sum, count = 0.0, 0.0, 0
    for j in range(unroll):
        i = start - j
        valid = (i >= 1).to(device)
        i = i.clamp(min=1)
        x = data.states[traj, i].to(device).float()
        previous_x = data.states[traj, (i + 1).clamp(max=steps - 1)].to(device).float()
        target = data.features[traj, branch, i].to(device).float()
        t = diffusion.timestep_for(i).to(device)
        drafted = drafter(dit, history, x, previous_x, t, labels)
        out_p, out_q = dit.head(drafted, t, labels), dit.head(target, t, labels)
        mean_p, std_p = diffusion.transition(out_p, x, i.to(device), "learned" if dit.learn_sigma else "fixed_small", dit.in_channels == 3)
        mean_q, std_q = diffusion.transition(out_q, x, i.to(device), "learned" if dit.learn_sigma else "fixed_small", dit.in_channels == 3)
        whitened = ((mean_p - mean_q) / std_q).square().flatten(1).sum(1)
        whitened = whitened + 2 * (torch.log(std_p) - torch.log(std_q)).square().flatten(1).sum(1)
        acceptance = torch.erfc(torch.sqrt(whitened + 1e-12) / (2 * math.sqrt(2)))
        feature_error = (drafted - target).square().flatten(1).mean(1) / feature_scale
        per_sample = feature_error + acceptance_weight * (1 - acceptance)
        total = total + (per_sample * valid).sum()
        accept_sum = accept_sum + (acceptance.detach() * valid).sum()
        count += int(valid.sum())
        history = torch.cat([history[:, 1:], drafted.unsqueeze(1)], dim=1)
    return total / max(count, 1), accept_sum / max(count, 1)


def feature_scale(datasets: list[Trajectories]) -> float:
    """Variance of the top-block features (about ten steps per trajectory): the unit of the feature loss."""
    return float(torch.stack([d.features[:, :, :: max(1, d.features.shape[2] // 10)].float().var() for d in datasets]).mean())


def optimisation_step(drafter: FreeDrafter, trainable: torch.nn.Module, optimizer: torch.optim.Optimizer, dit: DiT,
                      datasets: list[Trajectories], cfg: DrafterTrainConfig, step: int,
                      generator: torch.Generator, device: torch.device | str, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of `drafter` (through `trainable`, its DDP wrapper or itself) on the unrolled loss:
    cosine learning rate, datasets taken in turn, gradient norm clipped to 1. Returns (loss, acceptance proxy)."""
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * (0.5 * (1 + math.cos(math.pi * step / cfg.train_steps)) * 0.95 + 0.05)
    loss, acceptance = unrolled_loss(trainable, dit, datasets[step % len(datasets)], cfg.batch_size, cfg.unroll,
                                     cfg.history_length, cfg.acceptance_weight, generator, device, scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(drafter.parameters(), 1.0)
    optimizer.step()
    return loss.detach(), acceptance.detach()


def train_drafter(cfg: DrafterTrainConfig, dit: DiT | None = None) -> tuple[Path, list[float]]:
    """Collect trajectories (cached in `out`), train the drafter, save `out/drafter.safetensors`."""
    ctx = setup_distributed(cfg.device)
    if dit is None:
        from ..models.checkpoints import EMBEDDED_DIT

        dit = load_dit(EMBEDDED_DIT if cfg.dit == "embedded" else cfg.dit, device=ctx.device)
    dit = dit.to(ctx.device).eval().requires_grad_(False)
    collector = dit  # collects the trajectories, in cfg.dtype; the drafter trains in float32 on a float32 DiT
    if cfg.dtype is not None and dit.pos_embed.dtype != DTYPES[cfg.dtype]:
        collector = copy.deepcopy(dit).to(DTYPES[cfg.dtype])
    if dit.pos_embed.dtype != torch.float32:
        dit = copy.deepcopy(dit).float()
    out_dir = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    drafter = drafter_for(dit, history_length=cfg.history_length)
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=cfg.lr, weight_decay=0.0)
    datasets = _collect_or_load(cfg, collector, ctx, out_dir)
    scale = feature_scale(datasets)

    step, resume_path = 0, out_dir / f"drafter_state_rank{ctx.rank}.pt"
    if resume_path.is_file():
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        drafter.load_state_dict(state["drafter"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        if ctx.is_main:
            print(f"resumed drafter training at step {step}", flush=True)
    trainable = DistributedDataParallel(drafter) if ctx.enabled else drafter
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + ctx.rank + step)
    progress = Progress(cfg.train_steps, "train-drafter", enabled=ctx.is_main, start=step)
    started = time.time()

    def save_state() -> None:
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"drafter": drafter.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, resume_path.with_suffix(".tmp"))
            resume_path.with_suffix(".tmp").replace(resume_path)
            save_drafter(out_dir / "drafter.safetensors", drafter, dit.source_name, train_steps=step,
                         sampling_steps=cfg.sampling_steps, cfg_scales=cfg.cfg_scales)

    losses: list[float] = []
    while step < cfg.train_steps:
        if cfg.max_minutes is not None and time.time() - started > 60 * cfg.max_minutes:
            if ctx.is_main:
                print(f"time limit of {cfg.max_minutes} min reached at step {step}", flush=True)
            break
        loss, acceptance = optimisation_step(drafter, trainable, optimizer, dit, datasets, cfg, step, generator,
                                             ctx.device, scale)
        step += 1
        loss_value = all_reduce_mean(loss, ctx).item()
        losses.append(loss_value)
        progress.update(step, loss=loss_value, accept=all_reduce_mean(acceptance, ctx).item())
        if step % cfg.checkpoint_every == 0:
            save_state()
    save_state()
    progress.close()
    teardown_distributed(ctx)
    return out_dir / "drafter.safetensors", losses


def trajectory_sets(cfg: DrafterTrainConfig, rank: int = 0) -> Iterator[tuple[int, float, GaussianDiffusion, int]]:
    """(sampling steps, CFG scale, respaced diffusion, generator seed) of each trajectory set one rank collects."""
    for steps in cfg.sampling_steps:
        diffusion = GaussianDiffusion.respaced(steps)
        for scale in cfg.cfg_scales:
            yield steps, scale, diffusion, cfg.seed * 1_000_003 + rank * 101 + int(scale * 10) + 7919 * steps


def _collect_or_load(cfg: DrafterTrainConfig, dit: DiT, ctx: DistributedContext, out_dir: Path) -> list[Trajectories]:
    """One trajectory set per (sampling step count, CFG scale), cached in `out_dir` under the DiT's fingerprint."""
    datasets = []
    per_rank = max(1, cfg.trajectories // ctx.world_size)
    fingerprint = dit.weights_fingerprint or "unknown"
    in_dtype = "" if dit.pos_embed.dtype == torch.float32 else f"_{str(dit.pos_embed.dtype).removeprefix('torch.')}"
    for steps, scale, diffusion, seed in trajectory_sets(cfg, ctx.rank):
        cache = out_dir / (f"trajectories_{fingerprint}{in_dtype}_cfg{scale:g}_steps{steps}_n{per_rank}_rank{ctx.rank}"
                           f"_seed{cfg.seed}.pt")
        if cache.is_file():
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            datasets.append(Trajectories(saved["states"], saved["features"], saved["labels"], scale, diffusion))
            continue
        denoiser = GuidedDenoiser(dit, diffusion, cfg_scale=scale)
        generator = torch.Generator(device=ctx.device).manual_seed(seed)
        progress = Progress(per_rank * steps, f"collect steps={steps} cfg={scale:g}", enabled=ctx.is_main, log_every=500)
        data = collect_trajectories(denoiser, per_rank, generator, cfg.collect_batch, ctx.device, progress)
        progress.close()
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"states": data.states, "features": data.features, "labels": data.labels}, cache)
        datasets.append(data)
    return datasets
