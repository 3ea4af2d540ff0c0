"""What ComfyUI's processed conds mean for a FREE verification batch, which mixes timesteps and repeats samples.

ComfyUI decides some conditioning from the first row of a batch or spreads per-sample tensors by row count:
* `timestep_start` / `timestep_end` (ConditioningSetTimestepRange, scheduled prompts) and a ControlNet's or
  T2I-Adapter's start/end percent (`timestep_range`) are tested on the batch's first sigma. These are served
  exactly by verifying in groups of rows that fall on the same side of every such boundary (`boundary_groups`):
  within a group the first row's decision is every row's. Usually one or two groups per round.
* `hooks` (conditioning hooks, scheduled LoRA keyframes) choose keyframes for the first timestep, and a
  conditioning tensor or control hint with one entry per batch item (an inpainting model's concat latent,
  per-image hints) is repeated by row count, so rows would get another sample's entry. Strict and relax refuse
  these with a message that names the cause (never silently inexact).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

ROW_DEPENDENT_KEYS = {"hooks": "conditioning hooks (scheduled LoRA or hook keyframes)"}
Boundary = tuple[str, float]  # ("above", s): a part is off where sigma > s; ("below", s): off where sigma < s


def timestep_boundaries(cond_lists: Iterable[list[dict[str, Any]] | None]) -> list[Boundary]:
    """The sigmas at which some part of the conditioning switches on or off (timestep ranges, ControlNet ranges)."""
    boundaries: set[Boundary] = set()
    for entry in _entries(cond_lists):
        if entry.get("timestep_start") is not None:
            boundaries.add(("above", float(entry["timestep_start"])))
        if entry.get("timestep_end") is not None:
            boundaries.add(("below", float(entry["timestep_end"])))
        for control in _control_chain(entry.get("control")):
            timestep_range = getattr(control, "timestep_range", None)
            if timestep_range is not None:
                boundaries.update({("above", float(timestep_range[0])), ("below", float(timestep_range[1]))})
    return sorted(boundaries)


def boundary_groups(sigmas: torch.Tensor, boundaries: list[Boundary]) -> torch.Tensor:
    """A group id per row: rows share one exactly when they lie on the same side of every boundary."""
    groups = torch.zeros(sigmas.shape[0], dtype=torch.long, device=sigmas.device)
    for bit, (side, value) in enumerate(boundaries):
        off = sigmas > value if side == "above" else sigmas < value
        groups |= off.long() << bit
    return groups


def _entries(cond_lists: Iterable[list[dict[str, Any]] | None]) -> Iterable[dict[str, Any]]:
    for conds in cond_lists:
        yield from (entry for entry in conds or [] if isinstance(entry, dict))


def _control_chain(control) -> list:
    chain = []
    while control is not None and len(chain) < 64:
        chain.append(control)
        control = getattr(control, "previous_controlnet", None)
    return chain


def row_dependent_conditioning(cond_lists: Iterable[list[dict[str, Any]] | None]) -> str | None:
    """The first part of the conditioning that verification batches cannot serve exactly, or None."""
    for entry in _entries(cond_lists):
        for key, cause in ROW_DEPENDENT_KEYS.items():
            if entry.get(key) is not None:
                return cause
        for control in _control_chain(entry.get("control")):
            hint = getattr(control, "cond_hint_original", None)
            if getattr(hint, "ndim", 0) and hint.shape[0] > 1:
                return f"a ControlNet / T2I-Adapter hint with one image per batch item ({hint.shape[0]} images)"
        for name, cond in (entry.get("model_conds") or {}).items():
            tensor = getattr(cond, "cond", None)
            if getattr(tensor, "ndim", 0) and tensor.shape[0] > 1:
                return f"a conditioning with one entry per batch item ('{name}', {tensor.shape[0]} entries)"
    return None


def refuse_row_dependent_conditioning(cond_lists: Iterable[list[dict[str, Any]] | None]) -> None:
    cause = row_dependent_conditioning(cond_lists)
    if cause is not None:
        raise ValueError(
            f"FREE Sampler (strict/relax) cannot verify drafts exactly with {cause} in the conditioning: ComfyUI "
            "serves it per batch, and a verification batch mixes timesteps and repeats samples; use mode off, or "
            "remove it"
        )
