"""Conditioning that a mixed-timestep verification batch would serve wrongly is found and named."""

import pytest
import torch

from free_core.batch_conditioning import refuse_row_dependent_conditioning, row_dependent_conditioning


class Cond:
    """Stands for ComfyUI's CONDRegular / CONDCrossAttn: the tensor is `.cond`."""

    def __init__(self, tensor: torch.Tensor):
        self.cond = tensor


def _entry(**extra) -> dict:
    return {"model_conds": {"c_crossattn": Cond(torch.zeros(1, 77, 8)), "y": Cond(torch.zeros(1, 4))}, "uuid": "u", **extra}


def test_plain_text_conditioning_is_served_exactly():
    assert row_dependent_conditioning([[_entry()], [_entry()], None]) is None


@pytest.mark.parametrize("extra, cause", [
    ({"timestep_start": 999.0}, "timestep range"),
    ({"timestep_end": 0.5}, "timestep range"),
    ({"control": object()}, "ControlNet"),
    ({"hooks": object()}, "hooks"),
])
def test_timestep_dependent_parts_are_refused_by_name(extra, cause):
    assert cause in row_dependent_conditioning([[_entry()], [_entry(**extra)]])
    with pytest.raises(ValueError, match=f"{cause}.*use mode off"):
        refuse_row_dependent_conditioning([[_entry(**extra)]])


def test_per_item_conditioning_tensors_are_refused_by_name():
    entry = _entry()
    entry["model_conds"]["c_concat"] = Cond(torch.zeros(3, 4, 8, 8))
    assert "'c_concat', 3 entries" in row_dependent_conditioning([[entry]])
