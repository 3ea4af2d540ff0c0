"""Record a tapped model's trajectories while it samples, and train a TokenDrafter on them.

Recording is plain Euler-ancestral itself (`sample_euler_ancestral`, the law FREE strict reproduces), with the
model called through its top-block tap: the images are the plain sampler's, and each step leaves behind the
top-block features and the final layer's modulation of every guidance branch, and the state change the drafter
reads. A random subset of tokens may be kept (`max_tokens`): the drafter is per token and per row, so a subset
trains it as the whole would, at a fraction of the disk (Flux at 1024^2 has 4096 tokens of width 3072 per step).
The state patches are kept whole, with the token where each slot's image tokens start (`image_offsets`: Lumina 2
puts each row's caption first), so training places each state change on the token the sampler does.

Training unrolls the drafter over `unroll` steps exactly as a round drafts: the history starts from recorded
(verified) features, each drafted h_i is fed back, the state changes are the recorded chain's (on acceptance the
drafted states are the chain's). Loss per drafted step: the feature error relative to the error of keeping the
last features (1.0 = no better than copying them), averaged over tokens. The FREE DiT's drafter also trains on
the transition's acceptance through its head; here that would mean differentiating each model's own tail and
guidance, so this drafter learns features only, and the acceptance it buys is measured, not assumed.

Runs alone or under `torchrun --nproc_per_node N` (DDP: each rank draws its own minibatches).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from ..engine.k_diffusion_sampler import AncestralStep, sample_euler_ancestral
from ..engine.tapped_model import TappedModel
from ..engine.tapped_sigma_space import (ModelInput, image_offsets_by_state, modulation_vector, slots_by_state,
                                         state_change, unscaled)
from ..models.checkpoints import safetensors_keys_and_metadata
from ..models.token_drafter import (TappedModelIdentity, TokenDrafter, image_patch_index, latent_patches,
                                     load_token_drafter, save_token_drafter, token_drafter_for)
from .distributed import DistributedContext, all_reduce_mean
from .progress import Progress

RECORDING_FORMAT = "free_core.tapped_recording"


def record_trajectories(tapped: TappedModel, identity: TappedModelIdentity, x: torch.Tensor, sigmas: torch.Tensor,
                        extra_args: dict, step: AncestralStep, max_tokens: int | None = None,
                        callback: Callable | None = None, model_input: ModelInput = unscaled
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Plain Euler-ancestral from `x` over `sigmas` (the samples are the plain sampler's), and what it recorded:
    features (N, B, S, T', D), modulation (N, B, S, D_mod), state_patches (N, B, P, C prod(patch)) of x_i - x_{i-1}
    (zero at i = 0) as the model's input sees it (`model_input`), all P of them, image_offsets (N, B, S) where each
    slot's image tokens start (token offset + j shows patch j), tokens (T',) kept, sigmas (N + 1,)."""
    steps: list[dict[str, torch.Tensor]] = []
    previous = [(x, sigmas[:1].expand(x.shape[0]).to(x))]

    def tapped_model(state: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        denoised, features = tapped.features(state, sigma, **extra)
        change = state_change(state, sigma, *previous[-1], model_input)
        steps.append({"features": slots_by_state(features, state.shape[0]),
                      "modulation": torch.cat([modulation_vector(call).unflatten(0, (-1, state.shape[0]))
                                               for call in features.calls]).transpose(0, 1),
                      "state_patches": latent_patches(change, identity.patch_size),
                      "image_offsets": image_offsets_by_state(features, state.shape[0])})
        previous.append((state, sigma))
        return denoised

    samples = sample_euler_ancestral(tapped_model, x, sigmas, extra_args, callback=callback, step=step)
    token_count = steps[0]["features"].shape[2]
    generator = torch.Generator().manual_seed(int(extra_args.get("seed", 0)))
    tokens = torch.arange(token_count) if max_tokens is None or max_tokens >= token_count else (
        torch.randperm(token_count, generator=generator)[:max_tokens].sort().values)
    recording = {
        "features": torch.stack([s["features"][:, :, tokens.to(s["features"].device)] for s in steps]).cpu(),
        "modulation": torch.stack([s["modulation"] for s in steps]).cpu(),
        "state_patches": torch.stack([s["state_patches"] for s in steps]).float().cpu(),
        "image_offsets": torch.stack([s["image_offsets"] for s in steps]),
        "tokens": tokens, "sigmas": sigmas.double().cpu(),
    }
    return samples, recording


def save_recording(path: str | Path, recording: dict[str, torch.Tensor], identity: TappedModelIdentity) -> Path:
    """One recording file (safetensors), with the model identity it belongs to; written next to, then over, `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": RECORDING_FORMAT, "identity": json.dumps(identity.__dict__)}
    partial = path.with_name(path.name + ".partial")
    save_file({k: v.contiguous() for k, v in recording.items()}, str(partial), metadata)
    partial.replace(path)
    return path


def load_recordings(folder: str | Path) -> tuple[list[dict[str, torch.Tensor]], TappedModelIdentity]:
    """Every recording in `folder` (all of one model), and that model's identity; a clear error otherwise."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        raise ValueError(f"no recordings in {folder}: sample with FREE Record Trajectories (or record_trajectories) first")
    recordings, identities = [], {}
    for file in files:
        metadata = safetensors_keys_and_metadata(file)[1]
        if metadata.get("format") != RECORDING_FORMAT:
            raise ValueError(f"{file.name} in {folder} is not a FREE trajectory recording")
        raw = json.loads(metadata["identity"])
        identity = TappedModelIdentity(raw["model_class"], raw["fingerprint"], int(raw["width"]), tuple(raw["patch_size"]))
        identities.setdefault(identity, []).append(file.name)
        recordings.append(load_file(str(file)))
    if len(identities) > 1:
        described = "; ".join(f"{ident.describe()}: {', '.join(names[:3])}" for ident, names in identities.items())
        raise ValueError(f"{folder} holds recordings of {len(identities)} different models ({described}); "
                         "keep one model's recordings per folder")
    return recordings, next(iter(identities))


@dataclass
class TappedDrafterTrainConfig:
    train_steps: int = 500
    batch_size: int = 16  # (row, branch, start step) draws per training step
    unroll: int = 4
    history_length: int = 2
    lr: float = 2e-3
    seed: int = 0
    hidden: int | None = None
    max_minutes: float | None = None
    losses: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("train_steps", "batch_size", "unroll", "history_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "history_length" else 1):
                raise ValueError(f"{name} must be an integer >= {2 if name == 'history_length' else 1}, got {value!r}")


def train_tapped_drafter(recordings: list[dict[str, torch.Tensor]], identity: TappedModelIdentity,
                         config: TappedDrafterTrainConfig, device: torch.device | str = "cpu",
                         on_progress: Callable[[int, int, float], None] | None = None,
                         context: DistributedContext | None = None, drafter: TokenDrafter | None = None
                         ) -> tuple[TokenDrafter, list[float]]:
    """A TokenDrafter for `identity` trained on the recordings (float32); the per-step losses (`config.losses`).

    Given a `drafter` (e.g. resumed from a checkpoint, with its losses so far in `config.losses`), it is trained in
    place from step len(config.losses) on, so an interrupted run can save it and carry on later (the optimizer's
    moments start afresh)."""
    first = recordings[0]
    steps_needed = config.unroll + 1
    usable = [r for r in recordings if r["features"].shape[0] > steps_needed]
    if not usable:
        raise ValueError(f"the recordings have {first['features'].shape[0]} steps; unroll={config.unroll} needs more than "
                         f"{steps_needed}: record more steps or lower unroll")
    drafter = drafter or drafter_for_recordings(recordings, identity, config)
    drafter.check_fits(identity, "the drafter to resume")
    drafter = drafter.to(device=device, dtype=torch.float32).train()
    rank = 0 if context is None else context.rank
    torch.manual_seed(config.seed + rank)
    chooser = random.Random(config.seed * 1000 + rank)
    trained = DistributedDataParallel(drafter) if context is not None and context.enabled else drafter
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=config.lr, weight_decay=0.0)
    resumed_at = len(config.losses)

    def cosine(step: int) -> float:  # counted from the first step of the whole run, so a resumed run continues it
        return 0.5 * (1 + math.cos(math.pi * min(resumed_at + step, config.train_steps) / config.train_steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    started, losses = time.time(), config.losses
    for step_index in range(len(losses), config.train_steps):
        batch = _minibatch(chooser.choice(usable), config, chooser, device)
        loss = _unrolled_loss(trained, *batch, config.unroll)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(drafter.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        value = float(loss.detach() if context is None else all_reduce_mean(loss.detach(), context))
        losses.append(value)
        if on_progress is not None:
            on_progress(step_index + 1, config.train_steps, value)
        if config.max_minutes is not None and time.time() - started > 60 * config.max_minutes:
            break
    return drafter.eval(), losses


def drafter_for_recordings(recordings: list[dict[str, torch.Tensor]], identity: TappedModelIdentity,
                           config: TappedDrafterTrainConfig) -> TokenDrafter:
    """A fresh drafter sized by the recordings (modulation width, latent channels) for `identity`."""
    first = recordings[0]
    return token_drafter_for(identity, modulation_width=first["modulation"].shape[-1],
                             channels=first["state_patches"].shape[-1] // math.prod(identity.patch_size),
                             history_length=config.history_length, hidden=config.hidden)


def resumed_or_fresh_drafter(resume: str | Path, recordings: list[dict[str, torch.Tensor]], identity: TappedModelIdentity,
                             config: TappedDrafterTrainConfig) -> TokenDrafter:
    """The drafter an interrupted run left at `resume` (its losses so far into `config.losses`), else a fresh one."""
    if Path(resume).is_file():
        drafter = load_token_drafter(resume, identity)
        config.losses = list(drafter.losses)
        return drafter
    return drafter_for_recordings(recordings, identity, config)


def save_trained(path: str | Path, drafter: TokenDrafter, losses: list[float], recordings: list[dict[str, torch.Tensor]]
                 ) -> Path:
    """The drafter file, recording how many recordings and which step counts it was trained on."""
    step_counts = tuple(sorted({int(recording["features"].shape[0]) for recording in recordings}))
    return save_token_drafter(path, drafter, losses, len(recordings), step_counts)


def recorded_token_layout(recording: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions (T',), image_offsets (N, B, S)): what `image_patch_index` needs to find each kept token's state patch.
    A recording without offsets (written before they were recorded) holds the patches of its kept tokens below the
    latent's patch count, image tokens first: kept token j shows stored patch j, offset 0."""
    if "image_offsets" in recording:
        return recording["tokens"], recording["image_offsets"]
    steps, rows, slots, tokens = recording["features"].shape[:4]
    return torch.arange(tokens), torch.zeros(steps, rows, slots, dtype=torch.long)


def _minibatch(recording: dict[str, torch.Tensor], config: TappedDrafterTrainConfig, chooser: random.Random,
               device: torch.device | str) -> tuple[torch.Tensor, ...]:
    """(features (b, U+m, T, D) from step i - m, modulation (b, U, D_mod), patches (b, U, P, C'), the patch each token
    shows (b, U, T), scale (b,))."""
    features, modulation, patches = recording["features"], recording["modulation"], recording["state_patches"]
    positions, offsets = recorded_token_layout(recording)
    steps, rows, slots = features.shape[:3]
    m, unroll = config.history_length, config.unroll
    picks = [(chooser.randrange(1, steps - unroll + 1), chooser.randrange(rows), chooser.randrange(slots))
             for _ in range(config.batch_size)]
    window, mods, changes, shown = [], [], [], []
    for start, row, slot in picks:
        history_steps = [max(start - m + k, 0) for k in range(m)]  # padded at the start, as sampling's first round is
        window.append(features[history_steps + list(range(start, start + unroll)), row, slot])
        mods.append(modulation[start:start + unroll, row, slot])
        changes.append(patches[start:start + unroll, row])
        shown.append(image_patch_index(offsets[start:start + unroll, row, slot], positions, patches.shape[2]))
    window = torch.stack(window).float().to(device)
    # the error of copying the last features, per draw: the loss is relative to it (1.0 = no better than copying)
    copy_error = (window[:, m:] - window[:, m - 1:-1]).pow(2).mean(dim=(1, 2, 3)).clamp(min=1e-12)
    return (window, torch.stack(mods).float().to(device), torch.stack(changes).float().to(device),
            torch.stack(shown).to(device), copy_error)


def _unrolled_loss(drafter: torch.nn.Module, window: torch.Tensor, modulation: torch.Tensor, patches: torch.Tensor,
                   patch_index: torch.Tensor, copy_error: torch.Tensor, unroll: int) -> torch.Tensor:
    m = window.shape[1] - unroll
    history, total = window[:, :m], window.new_zeros(())
    for u in range(unroll):
        drafted = drafter(history, patches[:, u], modulation[:, u], patch_index[:, u])
        error = (drafted - window[:, m + u]).pow(2).mean(dim=(1, 2))
        total = total + (error / copy_error).mean()
        history = torch.cat([history[:, 1:], drafted.unsqueeze(1)], dim=1)
    return total / unroll


def train_tapped_drafter_files(recordings: str | Path, out: str | Path, train_steps: int = 1000, batch_size: int = 16,
                               unroll: int = 4, lr: float = 2e-3, seed: int = 0, device: str | None = None,
                               max_minutes: float | None = None) -> tuple[Path | None, list[float]]:
    """Train from a folder of recordings to a drafter file, alone or under torchrun (rank 0 writes); an interrupted
    or time-limited run leaves OUT.resume, which the next run with the same OUT carries on from."""
    from .distributed import setup_distributed, teardown_distributed

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must name a .safetensors file, got {out.name}")
    context = setup_distributed(device)
    recorded, identity = load_recordings(recordings)
    config = TappedDrafterTrainConfig(train_steps=train_steps, batch_size=batch_size, unroll=unroll, lr=lr, seed=seed,
                                      max_minutes=max_minutes)
    resume = out.with_name(out.name + ".resume")
    drafter = resumed_or_fresh_drafter(resume, recorded, identity, config)
    progress = Progress(train_steps, "train-tapped-drafter", enabled=context.is_main, start=len(config.losses))
    finished = False
    try:
        drafter, losses = train_tapped_drafter(recorded, identity, config, context.device,
                                               lambda done, total, loss: progress.update(done, loss=loss), context,
                                               drafter)
        finished = len(losses) >= train_steps
    finally:
        progress.close()
        if context.is_main:
            path = save_trained(out if finished else resume, drafter, config.losses, recorded)
            if finished and resume.is_file():
                resume.unlink()
        teardown_distributed(context)
    return (path if context.is_main and finished else None), config.losses
