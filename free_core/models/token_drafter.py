"""The FREE drafter for any tapped DiT: feature-level autoregression on top-block tokens, knowing no model code.

The FREE DiT's drafter (`free_drafter.py`) reads the DiT's own patch embedding and conditioning. A model reached
through the generic top-block tap (`engine.tapped_model`) gives only its final layer's inputs: the top-block
features (B, T, D) and the modulation the layer receives (B, D_mod), the model's own conditioning vector at
this sigma (timestep, pooled text, guidance). So this drafter embeds the state change itself, with a learned
linear map of the latent's patches (the model's patch size, raster order: the token order of every tapped
family), and conditions on the modulation:

    u   = [h_{i+1} - h_{i+2}, LN(h_{i+1}), W_x patches(x_i - x_{i+1})]     (T, 3D)
    h_i = h_{i+1} + (1 + gate(m)) * W2 gelu(modulate(W1 u, m))             (T, D)

Patch j's state change lands on token offset + j, where offset is where the row's image tokens start (0 for most
families; Lumina 2 puts its caption first, and the tap records the caption length per row). Other tokens (caption,
padding, reference images of Kontext / Qwen-Edit) get no state change. Per-token and
per-row, so any resolution, aspect ratio or frame count (T) works and training may use a subset of tokens.
A drafter file records the model class, a fingerprint of its final layer's weights, the width and the patch
size; using it with another model is refused, naming both.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoints import safetensors_keys_and_metadata

TOKEN_DRAFTER_FORMAT = "free_core.token_drafter"


@dataclass(frozen=True)
class TappedModelIdentity:
    """What a token drafter must match: the model class, its final layer's weights, its width and patch size."""

    model_class: str
    fingerprint: str
    width: int
    patch_size: tuple[int, ...]  # per spatial axis of the latent (C, *spatial), last axes first-padded with 1

    def describe(self) -> str:
        return (f"{self.model_class} (width {self.width}, patch {'x'.join(map(str, self.patch_size))}, "
                f"final-layer weights {self.fingerprint})")


def final_layer_fingerprint(final_layer: nn.Module) -> str:
    """A short hash of the final layer's weights: changes with a fine-tune, costs nothing next to the model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(final_layer.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        values = tensor.detach().flatten()
        sample = values[:: max(1, values.numel() // 4096)].float().cpu()  # strided sample of every tensor
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class TokenDrafterConfig:
    width: int  # D: the top-block feature width
    modulation_width: int  # D_mod: the final layer's conditioning vector
    patch_inputs: int  # C * prod(patch): one latent patch, flattened
    hidden: int
    history_length: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def latent_patches(change: torch.Tensor, patch_size: tuple[int, ...]) -> torch.Tensor:
    """(R, C, *spatial) -> (R, patches, C * prod(patch)) in raster order, zero-padding each axis to the patch."""
    spatial = change.shape[2:]
    patch = (1,) * (len(spatial) - len(patch_size)) + tuple(patch_size[-len(spatial):])
    padding = []
    for size, p in zip(reversed(spatial), reversed(patch)):
        padding += [0, (-size) % p]
    change = nn.functional.pad(change, padding)
    axes = " ".join(f"(a{k} p{k})" for k in range(len(spatial)))
    grid = " ".join(f"a{k}" for k in range(len(spatial)))
    within = " ".join(f"p{k}" for k in range(len(spatial)))
    return rearrange(change, f"r c {axes} -> r ({grid}) (c {within})", **{f"p{k}": p for k, p in enumerate(patch)})


def image_patch_index(offsets: torch.Tensor, positions: torch.Tensor, patches: int) -> torch.Tensor:
    """(R, T): the latent patch each token shows, -1 for none: the token at position `offset + j` shows patch j.
    offsets (R,): where each row's image tokens start; positions (T,): the tokens' positions in the model's sequence
    (all of them, or the ones a recording kept)."""
    index = positions.to(offsets.device).unsqueeze(0) - offsets.unsqueeze(1)  # (R, T)
    return torch.where((index >= 0) & (index < patches), index, torch.full_like(index, -1))


def patch_inputs(channels: int, patch_size: tuple[int, ...]) -> int:
    return channels * math.prod(patch_size)


class TokenDrafter(nn.Module):
    """Predicts a tapped model's next top-block features from their history, the state change and the modulation."""

    name = "free-token"

    def __init__(self, config: TokenDrafterConfig, identity: TappedModelIdentity):
        super().__init__()
        if config.history_length < 2:
            raise ValueError("the FREE drafter reads a feature difference: history_length must be >= 2")
        self.config, self.identity, self.history_length = config, identity, config.history_length
        width, hidden = config.width, config.hidden
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.state_embedding = nn.Linear(config.patch_inputs, width, bias=False)
        self.fc1 = nn.Linear(3 * width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.modulation_width, 2 * hidden + width))
        for layer in (self.fc2, self.adaLN_modulation[-1]):  # starts as "features stay as they were"
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, history: torch.Tensor, state_patches: torch.Tensor, modulation: torch.Tensor,
                patch_index: torch.Tensor | None = None) -> torch.Tensor:
        """history (R, m, T, D) oldest first; state_patches (R, P, C prod(patch)); modulation (R, D_mod) -> (R, T, D).
        patch_index (R, T): the patch each token shows, -1 for none (`image_patch_index`); None: token j shows patch
        j for j < P (image tokens first, P <= T)."""
        last, previous = history[:, -1], history[:, -2]
        dtype = self.fc1.weight.dtype
        state_change = self.state_embedding(state_patches.to(dtype))  # (R, P, D)
        if patch_index is not None:  # each token its patch's state change; caption, padding, reference tokens none
            shown = state_change.gather(1, patch_index.clamp(min=0).unsqueeze(-1).expand(-1, -1, state_change.shape[-1]))
            state_change = torch.where((patch_index >= 0).unsqueeze(-1), shown, torch.zeros_like(shown))  # (R, T, D)
        elif state_change.shape[1] < last.shape[1]:  # reference tokens after the generated ones: no state change
            state_change = nn.functional.pad(state_change, (0, 0, 0, last.shape[1] - state_change.shape[1]))
        u = torch.cat([(last - previous).to(dtype), self.norm(last.to(dtype)), state_change], dim=-1)
        shift, scale, gate = self.adaLN_modulation(modulation.to(dtype)).split(
            [self.config.hidden, self.config.hidden, self.config.width], dim=1)
        hidden = nn.functional.gelu(self.fc1(u) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1), approximate="tanh")
        return (last.to(dtype) + (1 + gate.unsqueeze(1)) * self.fc2(hidden)).to(last.dtype)

    def check_fits(self, identity: TappedModelIdentity, drafter_name: str = "this drafter") -> None:
        """Refuse a model other than the one this drafter was trained for, naming both."""
        mine = self.identity
        same_shape = (mine.model_class, mine.width, tuple(mine.patch_size)) == (
            identity.model_class, identity.width, tuple(identity.patch_size))
        if not same_shape or mine.fingerprint != identity.fingerprint:
            raise ValueError(f"{drafter_name} was trained for {mine.describe()}, but the model is {identity.describe()}; "
                             "train a drafter for this model (FREE Record Trajectories, then FREE Train Tapped Drafter)")


def token_drafter_for(identity: TappedModelIdentity, modulation_width: int, channels: int, history_length: int = 2,
                      hidden: int | None = None) -> TokenDrafter:
    """A fresh drafter for a tapped model (hidden width D/2 by default), float32 on the CPU."""
    config = TokenDrafterConfig(width=identity.width, modulation_width=modulation_width,
                                patch_inputs=patch_inputs(channels, identity.patch_size),
                                hidden=hidden or max(identity.width // 2, 8), history_length=history_length)
    return TokenDrafter(config, identity)


def save_token_drafter(path: str | Path, drafter: TokenDrafter, losses: list[float], recordings: int,
                       sampling_steps: tuple[int, ...]) -> Path:
    """Weights, config, the model they belong to and how they were trained (the loss of every training step, so a
    checkpoint can be resumed); written next to, then over, `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    identity = drafter.identity
    metadata = {
        "format": TOKEN_DRAFTER_FORMAT,
        "config": json.dumps(drafter.config.to_dict()),
        "model_class": identity.model_class, "fingerprint": identity.fingerprint, "width": str(identity.width),
        "patch_size": ",".join(map(str, identity.patch_size)),
        "train_steps": str(len(losses)), "recordings": str(recordings),
        "sampling_steps": ",".join(map(str, sampling_steps)), "losses": json.dumps([round(x, 6) for x in losses]),
    }
    if losses:
        metadata["final_loss"] = f"{losses[-1]:.6f}"
    partial = path.with_name(path.name + ".partial")
    save_file({k: v.detach().float().contiguous().cpu() for k, v in drafter.state_dict().items()}, str(partial), metadata)
    partial.replace(path)
    return path


def is_token_drafter_file(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix == ".safetensors" and path.is_file() and (
        safetensors_keys_and_metadata(path)[1].get("format") == TOKEN_DRAFTER_FORMAT)


def load_token_drafter(path: str | Path, identity: TappedModelIdentity | None = None) -> TokenDrafter:
    """A token drafter from its file (float32, CPU); with `identity`, refused unless trained for that model."""
    path = Path(path)
    metadata = dict(safetensors_keys_and_metadata(path)[1])
    if metadata.get("format") != TOKEN_DRAFTER_FORMAT:
        raise ValueError(f"{path.name} is not a FREE token drafter file (metadata format={metadata.get('format')!r})")
    stored = TappedModelIdentity(metadata["model_class"], metadata["fingerprint"], int(metadata["width"]),
                                 tuple(int(p) for p in metadata["patch_size"].split(",")))
    drafter = TokenDrafter(TokenDrafterConfig(**json.loads(metadata["config"])), stored)
    drafter.load_state_dict(load_file(str(path)))
    drafter.losses = json.loads(metadata.get("losses", "[]"))  # how it was trained; a resumed run carries them on
    if identity is not None:
        drafter.check_fits(identity, f"drafter {path.name}")
    return drafter.eval()
