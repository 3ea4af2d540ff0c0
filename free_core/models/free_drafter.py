"""The FREE drafter: feature-level autoregression on a DiT's top-block features.

Given the last m top-block features h_{i+1}, ..., h_{i+m} (verified or drafted), the state x_i the
chain sits at (seen through the DiT's own patch embedding, so the drafter sees the noise already
injected into x_i, never that of the transition it proposes) and the DiT's timestep + class
conditioning at step i, it predicts h_i as a residual update of h_{i+1}:

    u   = [h_{i+1} - h_{i+2}, LN(h_{i+1}), x_embed(x_i) - x_embed(x_{i+1})]   (T, 3D)
    h_i = h_{i+1} + gate(c) * W2 gelu(modulate(W1 u, c))                  (T, D)

A per-token MLP with adaLN conditioning: no attention, since the step-to-step change of the top-block
features is smooth and mostly local, and the history already carries global context. The DiT's own
`head` then turns h_i into the model output. With hidden width D/2 it has ~2.5 D^2 parameters and
~5 D^2 FLOPs per token: about 1/7 of one DiT block, under 5% of any DiT of depth >= 6.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..engine.drafter_interface import DraftContext, repeat_rows
from .checkpoints import safetensors_keys_and_metadata
from .dit import DiT


@dataclass(frozen=True)
class DrafterConfig:
    width: int  # the DiT's hidden size D
    tokens: int  # the DiT's token count T
    hidden: int  # MLP width
    history_length: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


class FreeDrafter(nn.Module):
    """Predicts the next step's top-block features; reuses the DiT's embedders (frozen, not stored)."""

    name = "free"

    def __init__(self, config: DrafterConfig):
        super().__init__()
        if config.history_length < 2:
            raise ValueError("the FREE drafter reads a feature difference: history_length must be >= 2")
        self.config = config
        self.history_length = config.history_length
        width, hidden = config.width, config.hidden
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.fc1 = nn.Linear(3 * width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * hidden + width))
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)
        self.dit_fingerprint = ""

    def predict_features(self, dit: DiT, history: torch.Tensor, x: torch.Tensor, previous_x: torch.Tensor,
                         t: torch.Tensor, y: torch.Tensor, modulation: torch.Tensor | None = None,
                         branches: int = 1) -> torch.Tensor:
        """history (R, m, T, D) oldest first; x, previous_x (R, C, H, W); t, y (R,) -> drafted features (R, T, D).

        `modulation` is this drafter's adaLN modulation of (t, y) (the first `modulation_width` columns of
        `modulation()`) when the caller has it; `branches`, how many consecutive rows share a state (2 with CFG)."""
        last, previous = history[:, -1], history[:, -2]  # (R, T, D)
        if modulation is None:
            modulation = self.adaLN_modulation(dit.conditioning(t, y))
        # (R, T, D): drift + the noise just injected, embedded once per state and shared by its `branches` rows
        state_change = patch_embedding_change(dit, x[::branches], previous_x[::branches])
        state_change = repeat_rows(state_change, branches)  # a view for one state; the cat below copies it either way
        u = torch.cat([last - previous, self.norm(last), state_change], dim=-1)  # (R, T, 3D)
        shift, scale, gate = modulation.split([self.config.hidden, self.config.hidden, self.config.width], dim=-1)
        # modulate(fc1(u), shift, scale) and the gated residual as fused multiply-adds: one dispatch each
        hidden = nn.functional.gelu(torch.addcmul(shift.unsqueeze(1), self.fc1(u), 1 + scale.unsqueeze(1)),
                                    approximate="tanh")  # (R, T, hidden)
        return torch.addcmul(last, 1 + gate.unsqueeze(1), self.fc2(hidden))  # (R, T, D)

    def forward(self, dit: DiT, history: torch.Tensor, x: torch.Tensor, previous_x: torch.Tensor, t: torch.Tensor,
                y: torch.Tensor) -> torch.Tensor:
        return self.predict_features(dit, history, x, previous_x, t, y)

    @property
    def modulation_width(self) -> int:
        return 2 * self.config.hidden + self.config.width

    def modulation(self, dit: DiT, c: torch.Tensor) -> torch.Tensor:
        """(..., D) conditioning -> (..., modulation_width + 2D): this drafter's adaLN modulation and the DiT head's,
        side by side. Both depend on (step, label) alone, so a sampler may table them once per run for every step
        and pass rows of the table (`DraftContext.modulation`) instead of running two small layers in every pass."""
        return torch.cat([self.adaLN_modulation(c), dit.final_layer.adaLN_modulation(c)], dim=-1)

    def propose(self, model: DiT, context: DraftContext) -> tuple[torch.Tensor, torch.Tensor]:
        modulation = context.modulation
        if modulation is None:
            modulation = self.modulation(model, model.conditioning(context.t, context.y))
        own, head = modulation.split([self.modulation_width, 2 * model.hidden_size], dim=-1)
        features = self.predict_features(model, context.features, context.x, context.previous_x, context.t, context.y,
                                         modulation=own, branches=context.branches)
        return model.modulated_head(features, head).to(context.x.dtype), features  # states stay float32


def patch_embedding_change(dit: DiT, x: torch.Tensor, previous_x: torch.Tensor) -> torch.Tensor:
    """x_embedder(x) - x_embedder(previous_x) (R, T, D): the patch embedding is affine, so this is its bias-free
    linear map applied once to the difference (taken in the states' precision, then cast to the DiT's dtype),
    written as a matmul over patches (a strided convolution this small costs more in dispatch than in arithmetic)."""
    weight = dit.x_embedder.proj.weight  # (D, C, p, p)
    p = weight.shape[-1]
    change = x - previous_x
    r, c, h, w = change.shape
    # r c (h p) (w q) -> r (h w) (c p q), by reshape and permute: einops' rearrange costs ~0.1 ms more per drafting
    # pass here (timed between DiT forwards, as a round runs it), about a tenth of the whole pass.
    patches = change.reshape(r, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(r, (h // p) * (w // p), c * p * p)
    return nn.functional.linear(patches.to(weight.dtype), weight.flatten(1))


def drafter_for(dit: DiT, history_length: int = 2, hidden: int | None = None) -> FreeDrafter:
    """A fresh drafter sized for `dit` (hidden = D/2 by default), on its device and in its dtype."""
    config = DrafterConfig(width=dit.hidden_size, tokens=dit.num_tokens, hidden=hidden or dit.hidden_size // 2,
                           history_length=history_length)
    drafter = FreeDrafter(config)
    drafter.dit_fingerprint = dit.weights_fingerprint
    weights = next(dit.parameters())
    return drafter.to(weights.device, weights.dtype)  # runs in the DiT's dtype, as a loaded drafter does


def save_drafter(path: str | Path, drafter: FreeDrafter, trained_for: str, train_steps: int = 0,
                 sampling_steps: tuple[int, ...] = (), cfg_scales: tuple[float, ...] = (),
                 final_loss: float | None = None) -> Path:
    """The one writer of drafter files: weights, config, the DiT they belong to, and how they were trained."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": "free_core.drafter",
        "config": json.dumps(drafter.config.to_dict()),
        "dit_fingerprint": drafter.dit_fingerprint,
        "trained_for": trained_for,
        "train_steps": str(train_steps),
        "sampling_steps": ",".join(str(n) for n in sampling_steps),
        "cfg_scales": ",".join(f"{s:g}" for s in cfg_scales),
    }
    if final_loss is not None:
        metadata["final_loss"] = f"{final_loss:.6f}"
    state = {k: v.detach().contiguous().cpu() for k, v in drafter.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return path


def read_drafter_metadata(path: str | Path) -> dict[str, str]:
    """The one reader of a drafter file's metadata (files written before train_steps say train_step)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"drafters are stored as .safetensors; got {path.name}")
    if not path.is_file():
        raise FileNotFoundError(f"no such drafter file: {path}")
    metadata = dict(safetensors_keys_and_metadata(path)[1])
    if metadata.get("format") != "free_core.drafter":
        raise ValueError(f"{path.name} is not a FREE drafter file (metadata format={metadata.get('format')!r})")
    if "train_step" in metadata:
        metadata.setdefault("train_steps", metadata.pop("train_step"))
    return metadata


def load_drafter(path: str | Path, dit: DiT, device: str | torch.device = "cpu") -> FreeDrafter:
    """Load a drafter in `dit`'s dtype, refusing one trained for another DiT (width, tokens or weights fingerprint)."""
    path = Path(path)
    metadata = read_drafter_metadata(path)
    config = DrafterConfig(**json.loads(metadata["config"]))
    dit_name = dit.source_name
    trained_for = metadata.get("trained_for", "another DiT")
    if (config.width, config.tokens) != (dit.hidden_size, dit.num_tokens):
        raise ValueError(
            f"drafter {path.name} was trained for a DiT with width {config.width} and {config.tokens} tokens "
            f"({trained_for}), but {dit_name} has width {dit.hidden_size} and {dit.num_tokens} tokens; "
            "load the drafter trained for this DiT or train one with `python -m free_core train-drafter`"
        )
    fingerprint = dit.weights_fingerprint
    if metadata.get("dit_fingerprint") and fingerprint and metadata["dit_fingerprint"] != fingerprint:
        raise ValueError(
            f"drafter {path.name} was trained for DiT weights {metadata['dit_fingerprint']} ({trained_for}), "
            f"but {dit_name} has weights {fingerprint}; train a drafter for these weights with "
            "`python -m free_core train-drafter`"
        )
    drafter = FreeDrafter(config)
    drafter.load_state_dict(load_file(str(path)))
    drafter.dit_fingerprint = metadata.get("dit_fingerprint", "")
    return drafter.to(device, dit.pos_embed.dtype).eval()  # runs in the DiT's dtype
