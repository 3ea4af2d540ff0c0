"""What a user chooses for a sampling run: every option with its default and its check, in one place.

The CLI, the FREE KSampler / FREE Sampler nodes, the benchmark and the model card all build a `SamplerOptions`,
so an option means the same thing, has the same default and is refused with the same message everywhere. An
invalid option raises `OptionError` at construction, before any model is loaded or run; its message names the
option (as node input and CLI flag), the value and the fix, in one line.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from ..models.checkpoints import EMBEDDED_CFG_SCALE
from ..engine.diffusion import VARIANCE_MODES
from ..engine.draft_policy import AdaptiveDraftLength, DraftLengthPolicy, FixedDraftLength

SAMPLER_MODES = ("strict", "relax", "off")
DRAFT_POLICIES = ("adaptive", "fixed")
DEFAULT_DRAFT_POLICY = "adaptive"  # never slower than plain steps where drafting cannot pay (docs/DESIGN.md)
DEFAULT_STEPS = 50
DEFAULT_DRAFT_LENGTH = 8  # K with the fixed policy; the largest K the adaptive policy tries
MAX_DRAFT_LENGTH = 64
DEFAULT_RELAX_STRENGTH = 8.0  # docs/benchmarks.md measures 2, 8 and 32
MAX_STEPS = 1000  # the DDPM's training timesteps: a respaced schedule cannot have more


class OptionError(ValueError):
    """An invalid user option; the message is one line naming the option, the value and the fix."""


def option_name(name: str) -> str:
    """How a user meets the option: the node input and the CLI flag."""
    return f"{name} (--{name.replace('_', '-')})"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplerOptions:
    """One sampling run's options. `relax_strength` is None unless mode is relax (None there: the default)."""

    mode: str = "strict"
    steps: int = DEFAULT_STEPS
    cfg: float = EMBEDDED_CFG_SCALE
    draft_length: int = DEFAULT_DRAFT_LENGTH
    draft_policy: str = DEFAULT_DRAFT_POLICY
    relax_strength: float | None = None
    variance: str | None = None  # None: learned if the DiT learns sigma, else fixed_small
    seed: int = 0
    compile_drafter: bool = False  # torch.compile the learned drafter's proposal (engine/compiled_drafting.py)

    def __post_init__(self) -> None:
        def refuse(name: str, problem: str, fix: str) -> None:
            raise OptionError(f"{option_name(name)} = {getattr(self, name)!r}: {problem}; {fix}")

        if self.mode not in SAMPLER_MODES:
            refuse("mode", f"not one of {', '.join(SAMPLER_MODES)}", "use strict (exact), relax (faster) or off (plain)")
        if not _is_int(self.steps) or not 1 <= self.steps <= MAX_STEPS:
            refuse("steps", f"must be an integer from 1 to {MAX_STEPS}", "e.g. 50 or 250")
        if not isinstance(self.cfg, (int, float)) or isinstance(self.cfg, bool) or not (0 <= self.cfg < math.inf):
            refuse("cfg", "must be a finite number >= 0", f"1 turns guidance off; the embedded DiT's default is {EMBEDDED_CFG_SCALE}")
        if not _is_int(self.draft_length) or not 1 <= self.draft_length <= MAX_DRAFT_LENGTH:
            refuse("draft_length", f"must be an integer from 1 to {MAX_DRAFT_LENGTH}", f"e.g. {DEFAULT_DRAFT_LENGTH}")
        if self.draft_policy not in DRAFT_POLICIES:
            refuse("draft_policy", f"not one of {', '.join(DRAFT_POLICIES)}", "use adaptive or fixed")
        if self.relax_strength is not None:
            if self.mode != "relax":
                refuse("relax_strength", f"applies to mode relax only, and mode is {self.mode}",
                       "drop the strength, or use mode relax (strict is exact and has no strength)")
            if isinstance(self.relax_strength, bool) or not isinstance(self.relax_strength, (int, float)) or not (
                    0 <= self.relax_strength < math.inf):
                refuse("relax_strength", "must be a finite number >= 0", f"e.g. {DEFAULT_RELAX_STRENGTH:g} (0 = strict's law)")
        if self.variance is not None and self.variance not in VARIANCE_MODES:
            refuse("variance", f"not one of {', '.join(VARIANCE_MODES)}", "or leave it unset (learned if the DiT learns sigma)")
        if not _is_int(self.seed) or self.seed < 0:
            refuse("seed", "must be an integer >= 0", "e.g. 0")
        if not isinstance(self.compile_drafter, bool):
            refuse("compile_drafter", "must be True or False", "pass the flag to compile, leave it out not to")

    @classmethod
    def from_node_widgets(cls, mode: str, draft_length: int, draft_policy: str, relax_strength: float,
                          **run) -> SamplerOptions:
        """From a node's widgets: the relax strength widget always holds a value, which counts in relax mode only."""
        return cls(mode=mode, draft_length=draft_length, draft_policy=draft_policy,
                   relax_strength=relax_strength if mode == "relax" else None, **run)

    @property
    def strength(self) -> float:
        """Relax mode's strength (its default when unset); 0 in strict and off."""
        if self.mode != "relax":
            return 0.0
        return DEFAULT_RELAX_STRENGTH if self.relax_strength is None else float(self.relax_strength)

    def policy(self) -> DraftLengthPolicy:
        """K per round: fixed at draft_length, or adaptive up to it."""
        if self.draft_policy == "adaptive":
            return AdaptiveDraftLength(max_length=self.draft_length)
        return FixedDraftLength(self.draft_length)

    def with_mode(self, mode: str) -> SamplerOptions:
        """The same options in another mode (a relax strength stays with relax only)."""
        return replace(self, mode=mode, relax_strength=self.relax_strength if mode == "relax" else None)

    def to_dict(self) -> dict:
        return asdict(self)
