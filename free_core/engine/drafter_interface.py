"""The drafter interface and the training-free frozen drafter.

A drafter proposes the model output at a state the DiT has not evaluated yet, from what is known:
the last `history_length` top-block features (verified ones, then this round's drafted ones), the
latest output, and the state itself. Learned drafters propose features and let the DiT's own `head`
turn them into an output; the frozen drafter reuses the last output as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class DraftContext:
    """What a drafter may read when proposing the output at state `x` (all tensors are model rows)."""

    features: torch.Tensor | None  # (R, m, T, D) oldest first; None when history_length == 0
    output: torch.Tensor  # (R, C', H, W) latest output: verified, or drafted earlier this round
    x: torch.Tensor  # (R, C, H, W) state whose output is being drafted (its noise is already in the past)
    previous_x: torch.Tensor  # (R, C, H, W) the state before x: where `output` was evaluated or drafted
    t: torch.Tensor | None  # (R,) model timesteps of x; None when `modulation` holds what they condition
    y: torch.Tensor  # (R,) class labels (null class on unconditional rows)
    step: torch.Tensor  # (R,) respaced step indices of x
    modulation: torch.Tensor | None = None  # (R, M) rows of the drafter's `modulation` table, when the sampler made one
    branches: int = 1  # model rows per state (2 with CFG): x and previous_x repeat each state in runs of this length


def repeat_rows(tensor: torch.Tensor, branches: int) -> torch.Tensor:
    """Each row `branches` times in a row (a state's CFG rows), like `repeat_interleave(branches, dim=0)`, but a view
    (no copy) for one row: drafters only read them."""
    return tensor.unsqueeze(1).expand(-1, branches, *tensor.shape[1:]).flatten(0, 1)


class Drafter(Protocol):
    history_length: int

    def propose(self, model: torch.nn.Module, context: DraftContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Drafted (output rows, feature rows or None) at `context.x`."""
        ...


class FrozenDrafter:
    """Reuse the last verified model output (De Bortoli et al., ICML 2025): needs no weights."""

    history_length = 0
    name = "frozen"

    def propose(self, model: torch.nn.Module, context: DraftContext) -> tuple[torch.Tensor, None]:
        return context.output, None
