"""Run statistics shared by the baseline and the speculative sampler."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


def timed_callback(callback: Callable[[Any], None] | None, stats: "SamplingStats") -> Callable[[Any], None] | None:
    """`callback`, keeping the mean time of its calls in `stats.callback_s` (a plain sampler pays it every step)."""
    if callback is None:
        return None
    calls, spent = 0, 0.0

    def timed(info: Any) -> None:
        nonlocal calls, spent
        started = time.perf_counter()
        try:
            callback(info)
        finally:
            calls, spent = calls + 1, spent + time.perf_counter() - started
            stats.callback_s = spent / calls

    return timed


CALIBRATION_WORTH_SAYING_S = 0.5  # shorter one-time measurements are not worth a line on the canvas


def speed_in_words(speedup: float) -> str:
    """A wall-clock ratio (reference time / this time) with its direction in words: "1.70x faster", "2.00x slower"."""
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"


@dataclass
class SamplingStats:
    """What a sampling run cost: sequential DiT calls, evaluated states, acceptance, round lengths."""

    sampler: str
    num_steps: int
    batch_size: int
    draft_length: int | str = 0
    rounds: int = 0
    sequential_dit_calls: int = 0
    dit_states: int = 0  # states evaluated by the DiT (one state = all its CFG rows)
    dit_rows: int = 0  # rows through the DiT (states x CFG branches)
    drafter_calls: int = 0  # sequential drafting passes (cheap, not DiT forwards)
    proposed_per_step: list[int] = field(default_factory=list)  # drafted transitions tested, by step index
    accepted_per_step: list[int] = field(default_factory=list)
    advance_histogram: Counter = field(default_factory=Counter)  # steps advanced per sample per round
    draft_lengths: list[int] = field(default_factory=list)  # K chosen each round
    states_per_round: list[int] = field(default_factory=list)  # states in each round's verification forward
    wall_time_s: float = 0.0
    plain_step_s: float | None = None  # measured cost of one plain step's DiT call at this batch (speculative runs)
    chunk_rows: int | None = None  # rows per model call once a batch did not fit in memory (None: never split)
    calibration_s: float = 0.0  # before sampling, measuring this device's costs for adaptive K (once per machine)
    callback_s: float = 0.0  # mean time of one progress callback (a UI's progress bar, previews), which runs per round
    drafter: str = ""  # what drafted, where the sampler says: "frozen" or "learned" (sigma space)

    def __post_init__(self) -> None:
        if not self.proposed_per_step:
            self.proposed_per_step = [0] * self.num_steps
            self.accepted_per_step = [0] * self.num_steps

    def record_round(self, states: int, rows: int, advances: torch.Tensor, proposed: torch.Tensor | None = None,
                     accepted: torch.Tensor | None = None, calls: int = 1) -> None:
        """A round of `calls` sequential model calls (one, unless verification was split into groups) that
        evaluated `states` states (`rows` model rows) and advanced each sample by `advances`; `proposed`/`accepted`
        are the run's per-step draft counts so far (speculative samplers)."""
        self.rounds += 1
        self.sequential_dit_calls += calls
        self.dit_states += states
        self.dit_rows += rows
        self.states_per_round.append(states)
        self.advance_histogram.update(advances.tolist())
        if proposed is not None:
            self.proposed_per_step = proposed.tolist()
            self.accepted_per_step = accepted.tolist()

    @property
    def acceptance_rate(self) -> float:
        proposed = sum(self.proposed_per_step)
        return sum(self.accepted_per_step) / proposed if proposed else 0.0

    @property
    def acceptance_per_step(self) -> list[float | None]:
        """Acceptance by respaced step index (index 0 is the last step); None where nothing was drafted."""
        return [a / p if p else None for a, p in zip(self.accepted_per_step, self.proposed_per_step)]

    @property
    def mean_advance(self) -> float:
        total = sum(self.advance_histogram.values())
        return sum(k * v for k, v in self.advance_histogram.items()) / total if total else 0.0

    def call_reduction(self) -> float:
        """Sequential DiT calls of the plain ancestral sampler (one per step) over ours."""
        return self.num_steps / self.sequential_dit_calls if self.sequential_dit_calls else 0.0

    def plain_wall_estimate_s(self) -> float | None:
        """What the plain sampler would take for these steps: steps x (the measured cost of one plain step + one progress
        callback, which a plain sampler makes every step)."""
        return self.num_steps * (self.plain_step_s + self.callback_s) if self.plain_step_s else None

    def wall_clock_words(self) -> str | None:
        """The wall clock against the plain sampler's estimate, with its direction in words."""
        plain = self.plain_wall_estimate_s()
        if plain is None or not self.wall_time_s:
            return None
        return (f"wall clock {self.wall_time_s:.2f} s, {speed_in_words(plain / self.wall_time_s)} than {self.num_steps} plain steps "
                f"(est. {plain:.2f} s from one measured step)")

    def progress_line(self) -> str:
        """Mid-run, one line: sequential DiT calls so far and the acceptance (a node's canvas text)."""
        calls = self.sequential_dit_calls
        line = f"{self.sampler}: {calls} DiT call{'' if calls == 1 else 's'} so far"
        if sum(self.proposed_per_step):
            line += f", acceptance {self.acceptance_rate:.2f}"
        return line

    @property
    def adaptive_drafted_nothing(self) -> bool:
        """An adaptive run whose policy chose plain steps throughout: drafting cannot gain on this device."""
        return self.draft_length == "adaptive" and not any(self.draft_lengths)

    def canvas_text(self) -> str:
        """The result in a few short lines, for a node on the canvas: calls against steps, acceptance and time, and
        the wall clock against the plain sampler in words."""
        calls, steps = self.sequential_dit_calls, self.num_steps
        lines = [f"{calls} DiT calls for {steps} steps" + (f" ({self.call_reduction():.2f}x fewer)" if calls < steps else "")]
        drafts = f" ({self.drafter} drafts)" if self.drafter else ""
        lines.append((f"acceptance {self.acceptance_rate:.2f}{drafts}, " if sum(self.proposed_per_step) else "")
                     + f"{self.wall_time_s:.2f} s")
        plain = self.plain_wall_estimate_s()
        if plain and self.wall_time_s:
            lines.append(f"wall clock: {speed_in_words(plain / self.wall_time_s)} than {steps} plain steps (est.)")
        if self.adaptive_drafted_nothing:
            lines.append("adaptive K: no gain on this device, plain steps")
        if self.calibration_s >= CALIBRATION_WORTH_SAYING_S:
            lines.append(f"+ {self.calibration_s:.1f} s measuring this device first (once)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "sampler": self.sampler,
            "num_steps": self.num_steps,
            "batch_size": self.batch_size,
            "draft_length": self.draft_length,
            "rounds": self.rounds,
            "sequential_dit_calls": self.sequential_dit_calls,
            "call_reduction": self.call_reduction(),
            "dit_states": self.dit_states,
            "dit_rows": self.dit_rows,
            "drafter_calls": self.drafter_calls,
            "acceptance_rate": self.acceptance_rate,
            "acceptance_per_step": self.acceptance_per_step,
            "advance_histogram": {str(k): v for k, v in sorted(self.advance_histogram.items())},
            "mean_advance": self.mean_advance,
            "draft_lengths": self.draft_lengths,
            "states_per_round": self.states_per_round,
            "wall_time_s": self.wall_time_s,
            "plain_step_s": self.plain_step_s,
            "chunk_rows": self.chunk_rows,
            "calibration_s": self.calibration_s,
            "callback_s": self.callback_s,
            "drafter": self.drafter,
        }

    def summary(self) -> str:
        lines = [
            f"sampler              {self.sampler}",
            f"steps x batch        {self.num_steps} x {self.batch_size}",
            f"sequential DiT calls {self.sequential_dit_calls} ({self.call_reduction():.2f}x fewer than {self.num_steps})",
            f"DiT-evaluated states {self.dit_states} (rows incl. CFG: {self.dit_rows})",
            f"wall time            {self.wall_time_s:.2f} s",
        ]
        if self.calibration_s >= CALIBRATION_WORTH_SAYING_S:
            lines.append(f"before sampling      {self.calibration_s:.1f} s measuring this device's costs (once per machine)")
        if self.wall_clock_words():
            lines.append(f"vs plain sampler     {self.wall_clock_words()}")
        if self.chunk_rows is not None:
            lines.append(f"memory               batches split into chunks of {self.chunk_rows} rows (did not fit)")
        if sum(self.proposed_per_step):
            histogram = " ".join(f"{k}:{v}" for k, v in sorted(self.advance_histogram.items()))
            lines += [
                f"draft length         {self.draft_length}" + (f", {self.drafter} drafts" if self.drafter else ""),
                f"acceptance           {self.acceptance_rate:.3f} of {sum(self.proposed_per_step)} drafted transitions",
                f"steps per round      mean {self.mean_advance:.2f}; histogram {histogram}",
            ]
        return "\n".join(lines)
