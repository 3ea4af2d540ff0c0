"""How many transitions to draft each round. A policy reads only past rounds, so strict stays exact."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .stats import SamplingStats


class DraftLengthPolicy:
    """Chooses K for the next round from the statistics of the rounds so far."""

    label: str | int = "policy"

    def next_length(self, stats: "SamplingStats") -> int:
        raise NotImplementedError


class FixedDraftLength(DraftLengthPolicy):
    def __init__(self, length: int):
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"draft_length must be an integer >= 1, got {length!r}")
        self.length = length
        self.label = length

    def next_length(self, stats: "SamplingStats") -> int:
        return self.length
