"""A DiT bound to a schedule and a guidance scale: rows in, guided Gaussian transitions out.

Classifier-free guidance doubles every state into rows (conditional, unconditional), so the
model, and any drafter, work on rows; `guided_output` folds rows back into one output per state.
Any model with `features(x, t, y)`, `head(h, t, y)`, `in_channels`, `learn_sigma` and `null_class`
works (the DiT, or the closed-form toy denoisers of the tests).

Mixed precision lives here: the model runs in its own dtype (`model_dtype`: its parameters', e.g. bfloat16) while
states stay float32, so `evaluate` feeds it its dtype and returns its outputs in the states' dtype; features stay
in the model's dtype (a drafter reads them with the same model). A verification batch that does not fit in memory
is evaluated in chunks of rows (`free_core.engine.chunking`).
"""

from __future__ import annotations

from typing import Protocol

import torch

from .chunking import RowChunks
from .diffusion import VARIANCE_MODES, GaussianDiffusion, VarianceMode


class SplitModel(Protocol):
    in_channels: int
    learn_sigma: bool
    null_class: int

    def features(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def head(self, h: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


def model_dtype(model: object) -> torch.dtype | None:
    """The dtype a model computes in: its floating parameters', else its `dtype` attribute; None: whatever it is fed."""
    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else None


class GuidedDenoiser:
    """Model + respaced diffusion + CFG scale + variance choice: what both samplers need."""

    def __init__(
        self,
        model: SplitModel,
        diffusion: GaussianDiffusion,
        cfg_scale: float = 1.0,
        variance: VarianceMode | None = None,
        clip_denoised: bool | None = None,
    ):
        if not (cfg_scale >= 0 and cfg_scale == cfg_scale and cfg_scale != float("inf")):
            raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale!r}")
        variance = variance or ("learned" if model.learn_sigma else "fixed_small")
        if variance not in VARIANCE_MODES:
            raise ValueError(f"variance must be one of {VARIANCE_MODES}, got {variance!r}")
        if variance == "learned" and not model.learn_sigma:
            raise ValueError("variance='learned' needs a learned-sigma model; use variance='fixed_small'")
        if clip_denoised is None:  # pixel-space models (RGB) clip x0 to the data range, as ADM does; latents do not
            clip_denoised = model.in_channels == 3
        self.model, self.diffusion = model, diffusion
        self.cfg_scale, self.variance, self.clip_denoised = float(cfg_scale), variance, clip_denoised
        self.dtype = model_dtype(model)
        self.chunks = RowChunks("verification batch")  # remembers a chunk size that fit, for the rest of the run

    @property
    def branches(self) -> int:
        """Rows per state: 2 with classifier-free guidance (cond, uncond), else 1."""
        return 1 if self.cfg_scale == 1.0 else 2

    @property
    def num_steps(self) -> int:
        return self.diffusion.num_steps

    def rows(self, x: torch.Tensor, i: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """States (n, ...) at step indices i (n,) to model rows (n * branches, ...): x, timestep, label."""
        return (*self.state_rows(x, i), self.label_rows(labels))

    def state_rows(self, x: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The x and timestep of each model row (`rows` without the labels, which a drafting round reuses)."""
        t = self.diffusion.timestep_for(i)
        if self.branches == 1:
            return x, t
        return torch.stack([x, x], dim=1).flatten(0, 1), torch.stack([t, t], dim=1).flatten(0, 1)

    def label_rows(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels (n,) to the label of each model row (n * branches,): (label, null class) per state with CFG."""
        if self.branches == 1:
            return labels
        return torch.stack([labels, torch.full_like(labels, self.model.null_class)], dim=1).flatten(0, 1)

    def guided_output(self, output_rows: torch.Tensor) -> torch.Tensor:
        """Fold (n * branches, C', H, W) rows into (n, C', H, W): eps guided, variance from the cond row."""
        if self.branches == 1:
            return output_rows
        cond, uncond = output_rows.unflatten(0, (-1, 2)).unbind(1)
        c = self.model.in_channels
        eps = torch.lerp(uncond[:, :c], cond[:, :c], self.cfg_scale)  # uncond + cfg_scale * (cond - uncond), one op
        return torch.cat([eps, cond[:, c:]], dim=1)

    def transition(self, output: torch.Tensor, x: torch.Tensor, i: torch.Tensor, check_finite: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.diffusion.transition(output, x, i, self.variance, self.clip_denoised, check_finite)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, i: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One DiT forward over all states: (top-block feature rows in the model's dtype, output rows in x's dtype).

        Rows are independent, so a batch too large for memory is evaluated in chunks with the same result.
        """
        x_rows, t_rows, y_rows = self.rows(x, i, labels)
        x_rows = x_rows.to(self.dtype or x.dtype)

        def forward(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            t, y = t_rows[start:stop], y_rows[start:stop]
            features = self.model.features(x_rows[start:stop], t, y)
            return features, self.model.head(features, t, y).to(x.dtype)

        return self.chunks(forward, x_rows.shape[0])
