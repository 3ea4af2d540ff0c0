"""ComfyUI conditioning in verification batches: timestep boundaries become row groups; what cannot be served is refused."""

import pytest
import torch

from free_core.engine.batch_conditioning import (boundary_groups, refuse_row_dependent_conditioning, row_dependent_conditioning,
                                          timestep_boundaries)


class Cond:
    """Stands for ComfyUI's CONDRegular / CONDCrossAttn: the tensor is `.cond`."""

    def __init__(self, tensor: torch.Tensor):
        self.cond = tensor


class Control:
    """Stands for a ComfyUI ControlNet after pre_run: a sigma range, a hint, and the previous control in the chain."""

    def __init__(self, timestep_range, hint_batch=1, previous=None):
        self.timestep_range, self.previous_controlnet = timestep_range, previous
        self.cond_hint_original = torch.zeros(hint_batch, 3, 8, 8)


def _entry(**extra) -> dict:
    return {"model_conds": {"c_crossattn": Cond(torch.zeros(1, 77, 8)), "y": Cond(torch.zeros(1, 4))}, "uuid": "u", **extra}


def test_plain_text_conditioning_is_served_exactly_in_one_group():
    conds = [[_entry()], [_entry()], None]
    assert row_dependent_conditioning(conds) is None and timestep_boundaries(conds) == []
    assert boundary_groups(torch.tensor([14.0, 3.0, 0.5]), []).tolist() == [0, 0, 0]


def test_timestep_ranges_and_control_ranges_become_boundaries_and_groups():
    conds = [[_entry(timestep_start=10.0, timestep_end=2.0)],
             [_entry(control=Control((5.0, 1.0), previous=Control((8.0, 0.0))))]]
    assert row_dependent_conditioning(conds) is None
    boundaries = timestep_boundaries(conds)
    assert boundaries == [("above", 5.0), ("above", 8.0), ("above", 10.0), ("below", 0.0), ("below", 1.0), ("below", 2.0)]
    groups = boundary_groups(torch.tensor([12.0, 11.0, 9.0, 6.0, 5.0, 3.0, 1.5, 0.5]), boundaries)
    # Same side of every boundary <=> same group: 12/11 (all ranges off above), 9, 6, 5 and 3 (inside all), 1.5, 0.5.
    assert groups[0] == groups[1] and groups[4] == groups[5]
    assert len({int(g) for g in groups}) == 6


@pytest.mark.parametrize("entry, cause", [
    (_entry(hooks=object()), "hooks"),
    (_entry(control=Control((5.0, 1.0), hint_batch=3)), "hint with one image per batch item"),
])
def test_what_groups_cannot_serve_is_refused_by_name(entry, cause):
    assert cause in row_dependent_conditioning([[_entry()], [entry]])
    with pytest.raises(ValueError, match=f"{cause}.*use mode off"):
        refuse_row_dependent_conditioning([[entry]])


def test_per_item_conditioning_tensors_are_refused_by_name():
    entry = _entry()
    entry["model_conds"]["c_concat"] = Cond(torch.zeros(3, 4, 8, 8))
    assert "'c_concat', 3 entries" in row_dependent_conditioning([[entry]])
