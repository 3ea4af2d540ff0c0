"""Which conditioning a FREE verification batch cannot serve exactly, found in ComfyUI's processed conds.

A verification batch holds several timesteps (the drafted states of a round) and, per sample, several rows.
ComfyUI reads some conditioning from the first row of a batch or spreads per-sample tensors by row count, so
with these parts the model would not give each row what the plain sampler gives it:
* `timestep_start` / `timestep_end` (ConditioningSetTimestepRange, scheduled prompts): the range is tested on
  the batch's first timestep;
* `control` (ControlNet, T2I-Adapter): its start/end percent is read from the first timestep, its hint spread
  by row count;
* `hooks` (conditioning hooks, scheduled LoRA keyframes): keyframes are chosen for the first timestep;
* a conditioning tensor with one entry per batch item (an inpainting model's concat latent, per-image
  labels): repeated by row count, so rows would get another sample's entry.
Strict and relax refuse these with a message that names the cause (never silently inexact).
"""

from __future__ import annotations

from typing import Any, Iterable

ROW_DEPENDENT_KEYS = {
    "timestep_start": "a timestep range (ConditioningSetTimestepRange or a scheduled prompt)",
    "timestep_end": "a timestep range (ConditioningSetTimestepRange or a scheduled prompt)",
    "control": "a ControlNet / T2I-Adapter",
    "hooks": "conditioning hooks (scheduled LoRA or hook keyframes)",
}


def row_dependent_conditioning(cond_lists: Iterable[list[dict[str, Any]] | None]) -> str | None:
    """The first part of the conditioning that a mixed-timestep verification batch would serve wrongly, or None."""
    for conds in cond_lists:
        for entry in conds or []:
            if not isinstance(entry, dict):
                continue
            for key, cause in ROW_DEPENDENT_KEYS.items():
                if entry.get(key) is not None:
                    return cause
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
