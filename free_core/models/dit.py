"""Class-conditional Diffusion Transformer (DiT) with the forward split at the top block.

The parameter names and shapes match facebookresearch/DiT, so the official checkpoints load
unchanged. The forward is split in two so that a drafter can work on top-block features:

    features(x, t, y) -> h   (N, T, D)   output of the last transformer block
    head(h, t, y)     -> out (N, C', H, W) final adaLN layer + unpatchify
    forward(x, t, y) == head(features(x, t, y), t, y)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


#################################################################################
#               Embedding Layers for Timesteps and Class Labels                 #
#################################################################################


class PatchEmbed(nn.Module):
    """Image to patch tokens with a strided convolution."""

    def __init__(self, input_size: int, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.num_patches = (input_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps to vectors: sinusoidal frequencies then an MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype)
        return self.mlp(t_freq)  # (N, D)


class LabelEmbedder(nn.Module):
    """Class labels to vectors; row `num_classes` is the null class used for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device, generator=generator) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)  # (N, D)


#################################################################################
#                                 Core DiT Model                                #
#################################################################################


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (N, H, T, D/H)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))  # (N, T, D)


class Mlp(nn.Module):
    """Two-layer MLP with tanh-approximated GELU (timm layout)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x  # (N, T, D)


class FinalLayer(nn.Module):
    """The final layer of DiT: adaLN then a linear map from tokens to patches."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.modulated(x, self.adaLN_modulation(c))

    def modulated(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        """The layer given its adaLN modulation of c, (N, 2D) shift then scale, which a drafter may have tabled."""
        shift, scale = modulation.chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, p*p*C')


@dataclass(frozen=True)
class DiTConfig:
    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class DiT(nn.Module):
    """Diffusion model with a Transformer backbone, split into `features` and `head`."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.learn_sigma = config.learn_sigma
        self.in_channels = config.in_channels
        self.out_channels = config.in_channels * 2 if config.learn_sigma else config.in_channels
        self.patch_size = config.patch_size
        self.num_heads = config.num_heads
        self.num_classes = config.num_classes
        self.hidden_size = config.hidden_size
        self.input_size = config.input_size
        # Which weights these are, for messages and for matching drafters (set by the loader).
        self.source_name: str = "a randomly initialised DiT"
        self.weights_fingerprint: str = ""

        self.x_embedder = PatchEmbed(config.input_size, config.patch_size, config.in_channels, config.hidden_size)
        self.t_embedder = TimestepEmbedder(config.hidden_size)
        self.y_embedder = LabelEmbedder(config.num_classes, config.hidden_size, config.class_dropout_prob)
        self.num_tokens = self.x_embedder.num_patches
        # Fixed sin-cos embedding, stored in the state dict as the official checkpoints do.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, config.hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            [DiTBlock(config.hidden_size, config.num_heads, config.mlp_ratio) for _ in range(config.depth)]
        )
        self.final_layer = FinalLayer(config.hidden_size, config.patch_size, self.out_channels)
        self.initialize_weights()

    @property
    def null_class(self) -> int:
        return self.num_classes

    def initialize_weights(self) -> None:
        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        grid = int(self.num_tokens**0.5)
        pos_embed = get_2d_sincos_pos_embed(self.hidden_size, grid)
        self.pos_embed.data.copy_(torch.from_numpy(pos_embed).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = x.permute(0, 5, 1, 3, 2, 4)  # n h w p q c -> n c h p w q
        return x.reshape(x.shape[0], c, h * p, w * p)  # (N, C', H, W)

    def conditioning(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.t_embedder(t) + self.y_embedder(y)  # (N, D)

    def conditioning_tables(self, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two terms of `conditioning` for every timestep in t and every label in y, computed once so that a
        sampler that drafts many times adds rows of them instead of re-running the embedders."""
        return self.t_embedder(t), self.y_embedder(y)  # (len(t), D), (len(y), D)

    def features(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Top-block features: the last transformer block's output, (N, T, D)."""
        c = self.conditioning(t, y)  # (N, D)
        h = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        for block in self.blocks:
            h = block(h, c)  # (N, T, D)
        return h

    def head(self, h: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Final adaLN layer and unpatchify: top-block features to the model output (N, C', H, W)."""
        return self.unpatchify(self.final_layer(h, self.conditioning(t, y)))

    def modulated_head(self, h: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        """`head` given the final layer's adaLN modulation of (t, y), (N, 2D), instead of (t, y)."""
        return self.unpatchify(self.final_layer.modulated(h, modulation))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x, t, y), t, y)


#################################################################################
#                   Sine/Cosine Positional Embedding Functions                  #
#################################################################################


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb_h = _1d_sincos(embed_dim // 2, grid[0])
    emb_w = _1d_sincos(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)  # (T, D)


def _1d_sincos(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


#################################################################################
#                                   DiT Configs                                 #
#################################################################################

_SIZES = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}

DIT_CONFIGS: dict[str, DiTConfig] = {
    f"DiT-{size}/{patch}": DiTConfig(patch_size=patch, depth=depth, hidden_size=hidden, num_heads=heads)
    for size, (depth, hidden, heads) in _SIZES.items()
    for patch in (2, 4, 8)
}
# Small pixel-space configs for CPU: 32x32 RGB, 10 classes.
DIT_CONFIGS["DiT-Tiny/4"] = DiTConfig(
    input_size=32, patch_size=4, in_channels=3, hidden_size=192, depth=6, num_heads=6, num_classes=10
)
DIT_CONFIGS["DiT-Micro/8"] = DiTConfig(
    input_size=32, patch_size=8, in_channels=3, hidden_size=64, depth=2, num_heads=4, num_classes=10
)


def dit_config(name: str, **overrides) -> DiTConfig:
    """A named config (e.g. "DiT-XL/2"); `input_size=64` gives the 512-pixel variant."""
    if name not in DIT_CONFIGS:
        raise ValueError(f"unknown DiT config {name!r}; choose one of {sorted(DIT_CONFIGS)}")
    return DiTConfig(**{**DIT_CONFIGS[name].to_dict(), **overrides})


def config_from_state_dict(state_dict: dict[str, torch.Tensor], num_heads: int | None = None) -> DiTConfig:
    """Infer the DiT config from a checkpoint's parameter shapes (official names)."""
    required = ["x_embedder.proj.weight", "pos_embed", "y_embedder.embedding_table.weight", "final_layer.linear.weight"]
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise ValueError(f"not a DiT state dict: missing {missing}; expected the facebookresearch/DiT parameter names")
    hidden, in_channels, patch, _ = state_dict["x_embedder.proj.weight"].shape
    tokens = state_dict["pos_embed"].shape[1]
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    table_rows = state_dict["y_embedder.embedding_table.weight"].shape[0]
    out_dim = state_dict["final_layer.linear.weight"].shape[0]
    out_channels = out_dim // (patch * patch)
    heads = num_heads or next((h for d, w, h in _SIZES.values() if w == hidden), max(1, hidden // 64))
    num_classes = table_rows - 1  # the extra row is the null class
    return DiTConfig(
        input_size=int(round(tokens**0.5)) * patch,
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        class_dropout_prob=0.1,
        num_classes=num_classes,
        learn_sigma=out_channels == 2 * in_channels,
    )
