"""How many transitions to draft each round. A policy reads only past rounds, so strict stays exact."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .cost import BatchCostCurve, interpolate_cost

if TYPE_CHECKING:
    from .stats import SamplingStats


class DraftLengthPolicy:
    """Chooses K for the next round from the statistics of the rounds so far."""

    label: str | int = "policy"

    def start_run(self, rows_per_state: int, measure: Callable[[list[int]], dict[int, float]] | None = None,
                  measure_draft: Callable[[], float] | None = None) -> None:
        """Called once before the first round; `measure(sizes)` gives the seconds of DiT forwards of those row
        counts, `measure_draft()` the seconds of one drafting pass over all samples (both measured once per machine
        and kept on disk: see cost.py)."""

    def next_length(self, stats: "SamplingStats") -> int:
        raise NotImplementedError

    @property
    def longest(self) -> int:
        """The largest K this policy may choose."""
        raise NotImplementedError

    def limit(self, longest: int) -> None:
        """Never choose a K above `longest` (e.g. the largest verification batch that fits in memory)."""
        raise NotImplementedError


class FixedDraftLength(DraftLengthPolicy):
    def __init__(self, length: int):
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"draft_length must be an integer >= 1, got {length!r}")
        self.length = length
        self.label = length

    def next_length(self, stats: "SamplingStats") -> int:
        return self.length

    @property
    def longest(self) -> int:
        return self.length

    def limit(self, longest: int) -> None:
        self.length = min(self.length, max(longest, 1))


class AdaptiveDraftLength(DraftLengthPolicy):
    """Pick each round's K (0 = a plain step) to maximise expected steps per second.

    With per-draft acceptance a (an exponential average over past rounds), a round with K drafts advances
    E[steps] = 1 + a + ... + a^K (K drafts, then one exact transition); it costs one verification of
    (K+1) x rows_per_round rows, read off a batch-cost curve, plus K drafting passes. K maximises the ratio.
    Only past rounds and the fixed cost curve enter the choice, so strict mode stays exact, and the choice
    is deterministic for a given curve.

    Three guards keep it from being slower than plain steps where drafting does not pay: a K > 0 must promise at
    least `margin` more steps per second than a plain step (the curve is a measurement, with noise); K rises by
    at most one a round towards the best K, so a probe of the prior's optimism costs one short round, not a long one; and after
    plain-step rounds the acceptance estimate returns to the prior only slowly (`reprobe`), so drafting is
    re-tried now and then as the schedule moves on, not every other round. Each time drafting stops paying, that
    return halves (down to `reprobe` / 2^`max_backoffs`): a run whose drafts keep failing (few steps, low acceptance)
    probes ever more rarely, while a run that drafts on keeps re-trying at the full rate.
    """

    label = "adaptive"

    def __init__(self, max_length: int = 8, cost_curve: BatchCostCurve | None = None, draft_cost_ratio: float = 0.1,
                 prior_acceptance: float = 0.8, smoothing: float = 0.5, margin: float = 0.1, reprobe: float = 0.1,
                 max_backoffs: int = 3):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        for name, value in (("smoothing", smoothing), ("reprobe", reprobe)):
            if not 0 < value <= 1:
                raise ValueError(f"{name} must lie in (0, 1], got {value}")
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if max_backoffs < 0:
            raise ValueError(f"max_backoffs must be >= 0, got {max_backoffs}")
        self.margin, self.reprobe, self.max_backoffs = margin, reprobe, max_backoffs
        # Without a measured drafting pass, one costs draft_cost_ratio x a one-state verification (a drafter is <= 5%
        # of the DiT in FLOPs, but on small batches kernel overheads dominate: 0.1 is what the embedded model measured
        # on CPU); a run that can measure it (start_run's measure_draft) uses the measured seconds instead.
        self.max_length, self.cost_curve, self.draft_cost_ratio = max_length, cost_curve, draft_cost_ratio
        self.draft_cost_s: float | None = None
        self.prior_acceptance, self.smoothing = prior_acceptance, smoothing
        self.rows_per_state = 1
        self._reset()

    @property
    def longest(self) -> int:
        return self.max_length

    def limit(self, longest: int) -> None:
        self.max_length = min(self.max_length, max(longest, 1))

    def _reset(self) -> None:
        self.acceptance = self.prior_acceptance
        self._seen_proposed = self._seen_accepted = 0
        self._last_length = 0
        self._backoffs = 0  # times drafting stopped paying in this run

    def start_run(self, rows_per_state: int, measure: Callable[[list[int]], dict[int, float]] | None = None,
                  measure_draft: Callable[[], float] | None = None) -> None:
        """Rows per state = batch x CFG branches; the cost curve and a drafting pass are read if no curve was given."""
        self._reset()
        self.rows_per_state = rows_per_state
        if self.cost_curve is None and measure is not None:  # a policy given its curve keeps its own cost model
            sizes = [rows_per_state * (k + 1) for k in range(self.max_length + 1)]
            self.cost_curve = measure(sizes)
            if measure_draft is not None:
                self.draft_cost_s = measure_draft()

    def _cost(self, rows: int) -> float:
        if not self.cost_curve:
            return float(rows)  # no curve: cost proportional to work, the pessimistic GPU-saturated case
        return interpolate_cost(self.cost_curve, rows)

    def observe(self, stats: "SamplingStats") -> None:
        proposed, accepted = sum(stats.proposed_per_step), sum(stats.accepted_per_step)
        new_proposed, new_accepted = proposed - self._seen_proposed, accepted - self._seen_accepted
        if new_proposed:
            self.acceptance = (1 - self.smoothing) * self.acceptance + self.smoothing * new_accepted / new_proposed
        self._seen_proposed, self._seen_accepted = proposed, accepted

    def expected_rate(self, k: int) -> float:
        a = min(self.acceptance, 1 - 1e-6)
        advance = (1 - a ** (k + 1)) / (1 - a)
        if self.draft_cost_s is not None and self.cost_curve:
            draft_cost = self.draft_cost_s
        else:
            draft_cost = self.draft_cost_ratio * self._cost(self.rows_per_state)
        return advance / (self._cost(self.rows_per_state * (k + 1)) + k * draft_cost)

    def next_length(self, stats: "SamplingStats") -> int:
        """K in 0..max_length; K = 0 is a plain ancestral step, chosen when verification costs more than drafts save."""
        drafted_before = self._seen_proposed
        self.observe(stats)
        if self._seen_proposed == drafted_before and stats.rounds > 1:
            # Nothing drafted last round: drift slowly back towards the prior, so that a phase of low acceptance
            # does not switch drafting off for the rest of the run.
            reprobe = self.reprobe / 2 ** self._backoffs
            self.acceptance = (1 - reprobe) * self.acceptance + reprobe * self.prior_acceptance
        best = max(range(1, self.max_length + 1), key=self.expected_rate)
        drafting_pays = self.expected_rate(best) > (1 + self.margin) * self.expected_rate(0)
        if self._last_length and not drafting_pays:
            self._backoffs = min(self._backoffs + 1, self.max_backoffs)
        # K rises by one a round at most, so a probe of the prior's optimism costs one short round, not a long one.
        self._last_length = min(best, self._last_length + 1) if drafting_pays else 0
        return self._last_length
