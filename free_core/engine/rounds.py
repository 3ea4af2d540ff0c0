"""The speculative round, written once for every transition space (DDPM step indices, k-diffusion sigmas).

A sample's progress p counts the transitions it has committed (0..N). One round, for every unfinished sample b
with K_b = min(K, N - p_b - 1) drafts (the bonus transition must exist):
  1. draft: for j = 0..K_b-1 the space drafts the transition p_j = N(mean_p, std_p^2) out of the drafted
     state s_j (s_0 = x_b); s_{j+1} ~ p_j.
  2. verify: the space evaluates s_0..s_{K_b} of all samples in ONE model call (ragged: per-row progress),
     giving the exact transitions q_j out of each s_j.
  3. accept: for j = 0..K_b-1, a maximal coupling of s_{j+1} ~ p_j with q_j (all drafts decided in one batch).
     The first rejection commits the coupling's residual draw (an exact draw from q_j) and ends the round; if
     all K_b drafts pass, the exact transition out of s_{K_b} is drawn for free. A round advances 1..K_b+1
     steps for one model call.
  4. commit: the space keeps what its drafter needs of the verified states the chain moved through.
A space supplies the transitions and the drafter; everything else (layout, coupling, commit, statistics,
the draft-length policy) lives here, so every sampler built on it has the same exactness argument.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import torch

from .coupling import coupling_replacements, decide_drafts
from .diffusion import NON_FINITE_OUTPUT
from .draft_policy import DraftLengthPolicy, FixedDraftLength
from .host_transfer import to_device, to_host
from .sampling import step_noise
from .stats import SamplingStats

MODES = ("strict", "relax")


class TransitionSpace(Protocol):
    """What a sampler's space gives the round. `rows` index the round's active samples; `progress` is per row."""

    total_steps: int
    rows_per_state: int  # model rows per state (2 with classifier-free guidance in the batch, else 1)
    verify_calls: int  # sequential model calls the last verification made (1 unless it was split into groups)
    # After `verify`: a bool on the device, False when the model's outputs were not all finite (the round refuses them
    # when it reads its decisions, not with a read of its own); None when the space does not check.
    verified_finite: torch.Tensor | None

    def step_label(self, progress: torch.Tensor) -> torch.Tensor:
        """The index the per-step statistics use for the transition out of progress p."""

    def begin_round(self, active: torch.Tensor) -> None:
        """Called before drafting, with the samples this round works on."""

    def draft(self, rows: torch.Tensor, progress: torch.Tensor, state: torch.Tensor, previous: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean_p, std_p) of the drafted transition out of `state`; `previous` is the state before it."""

    def verify(self, states: torch.Tensor, progress: torch.Tensor, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean_q, std_q) of the exact transitions out of all `states` (sample[r]: active index of row r), in one
        model call (a space that must split it into several says so in `verify_calls`)."""

    def commit(self, offsets: torch.Tensor, stop: torch.Tensor) -> None:
        """Keep what the drafter needs of the verified rows offsets[a] .. offsets[a] + stop[a] of active sample a
        (the states its chain moved through this round; the last one is where its new state came from)."""

    def temperature(self, step_label: torch.Tensor, strength: float) -> torch.Tensor:
        """Relax mode's kappa >= 1 for the transitions with these step labels."""


def check_options(draft_length: int | DraftLengthPolicy, mode: str, relax_strength: float) -> DraftLengthPolicy:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (isinstance(relax_strength, (int, float)) and 0 <= relax_strength < float("inf")):
        raise ValueError(f"relax_strength must be a finite number >= 0, got {relax_strength!r}")
    if mode == "strict" and relax_strength != 0:
        raise ValueError(f"relax_strength={relax_strength} needs mode='relax'; strict mode is exact and has no strength")
    if isinstance(draft_length, bool) or not isinstance(draft_length, (int, DraftLengthPolicy)):
        raise ValueError(f"draft_length must be an integer >= 1 or a DraftLengthPolicy, got {draft_length!r}")
    if isinstance(draft_length, int):
        return FixedDraftLength(draft_length)
    return draft_length


def verification_layout(drafts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of one ragged verification batch holding positions 0..K_b of every sample b (on the host).

    Returns (offsets, sample, position): offsets[b] is the row of (b, 0); row r holds (sample[r], position[r]).
    """
    per_sample = drafts + 1
    offsets = np.cumsum(per_sample) - per_sample
    sample = np.repeat(np.arange(drafts.size), per_sample)
    position = np.arange(sample.size) - offsets[sample]
    return offsets, sample, position


def draft_layout(drafts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, sample) of every draft of a round, position-major: the order its decisions are drawn in."""
    return np.nonzero(np.arange(drafts.max(initial=0))[:, None] < drafts[None])


def advance_history(history: torch.Tensor | None, active: torch.Tensor, by_state: torch.Tensor, offsets: torch.Tensor,
                    stop: torch.Tensor, m: int, samples: int) -> torch.Tensor:
    """The feature history (n, m, ...) of every sample after a round (None before the first): for active sample a, the last m verified states its chain moved
    through (rows offsets[a] .. offsets[a] + stop[a] of `by_state`), older entries from its previous history.

    The first round (no history yet) pads with the first verified features, so the drafter's difference is zero.
    """
    chosen = offsets + stop
    if history is None:
        first = by_state[chosen].unsqueeze(1).repeat_interleave(m, dim=1)  # (A, m, ...)
        history = first.new_zeros((samples, *first.shape[1:]))
        history[active] = first
        return history
    back = stop[:, None] - (m - 1) + torch.arange(m, device=stop.device)[None]  # (A, m) positions in this round
    from_round = by_state[(offsets[:, None] + back.clamp(min=0)).flatten()].unflatten(0, back.shape)
    every_sample = active.numel() == history.shape[0]  # then active is 0..n-1: a new history, no index copies
    old = history if every_sample else history[active]
    from_old = old[torch.arange(active.numel(), device=old.device)[:, None], (m + back).clamp(max=m - 1)]
    keep_round = (back >= 0).reshape(*back.shape, *([1] * (from_round.dim() - 2))).to(from_round.device)
    advanced = torch.where(keep_round, from_round, from_old.to(from_round.dtype))
    if every_sample:
        return advanced
    history[active] = advanced
    return history


def accept_prefix(
    states: list[torch.Tensor],
    draft_means: list[torch.Tensor],
    draft_stds: list[torch.Tensor],
    drafts: np.ndarray,
    offsets: torch.Tensor,
    mean_q: torch.Tensor,
    std_q: torch.Tensor,
    generator: torch.Generator,
    step_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    temperature_of: Callable[[torch.Tensor], torch.Tensor] | None,
    proposed: np.ndarray,
    accepted_count: np.ndarray,
    verified_finite: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Couple each drafted transition j = 0, 1, ... with its verified one until the first rejection.

    Every draft of the round is decided in one batch (one uniform each, position-major); each sample stops at
    its first rejection, which commits the coupling's residual draw, and the decisions after it are discarded
    (they used their own random numbers, so the kept ones have the law of deciding one draft at a time). A
    sample whose K_b drafts all pass takes one more exact transition out of its last drafted state.
    `step_of(samples, positions)` names the step of each draft (for the per-step counts `proposed` /
    `accepted_count`, host arrays updated in place, and `temperature_of`, relax mode's kappa; None in strict mode).

    `drafts` (K_b per sample) is on the host, every tensor on the states' device. The host reads the device once:
    the stop positions, with each draft's step and the way it would be replaced, so that it can size the
    replacement and bonus draws (their random numbers depend on which samples stopped where) without reading it
    again; `verified_finite` (a bool on the device, or None) rides along, and False refuses the verified outputs.
    Returns (new_state, stop, stop on the host): stop[b] is the position whose exact transition produced sample b's
    new state.
    """
    device = mean_q.device
    position_h, sample_h = draft_layout(drafts)
    position, sample, drafts_d = to_device([position_h, sample_h, drafts], device)
    if drafts.min() == len(draft_means):  # every sample drafted K_max times: the position-major order is the stacking's
        x_draft, mean_p, std_p = (torch.stack(rows).flatten(0, 1) for rows in (states[1:], draft_means, draft_stds))
    else:
        x_draft, mean_p, std_p = (torch.stack(rows)[position, sample] for rows in (states[1:], draft_means, draft_stds))
    q_rows = offsets[sample] + position
    mean_q_drafts, std_q_drafts = mean_q[q_rows], std_q[q_rows]
    step_index = step_of(sample, position)
    inverse_temperature = None if temperature_of is None else 1.0 / temperature_of(step_index)
    accepted, kinds = decide_drafts(x_draft, mean_p, std_p, mean_q_drafts, std_q_drafts, generator, inverse_temperature)
    # First rejection per sample (K_max where all pass): the minimum position over rejected drafts.
    rejected_at = torch.where(accepted, len(draft_means), position)
    first_rejection = torch.full_like(drafts_d, len(draft_means)).scatter_reduce(0, sample, rejected_at, reduce="amin")
    stop = torch.minimum(drafts_d, first_rejection)
    checks = [] if verified_finite is None else [verified_finite]
    stop_h, step_h, kinds_h, *finite = to_host([stop, step_index, kinds, *checks])  # the round's one read of the device
    if finite:
        _refuse_non_finite(bool(finite[0].all()))

    stop_of_draft = stop_h[sample_h]
    decided = position_h <= stop_of_draft  # the drafts a one-at-a-time round would have tested
    proposed += np.bincount(step_h[decided], minlength=proposed.size)
    accepted_count += np.bincount(step_h[position_h < stop_of_draft], minlength=accepted_count.size)  # all before the stop
    # The stop of a sample that did not pass all its drafts is its first rejection: that draft is replaced.
    replaced_h = np.flatnonzero((position_h == stop_of_draft) & (stop_of_draft < drafts[sample_h]))
    bonus_h = np.flatnonzero(stop_h == drafts)
    replaced, replaced_sample, bonus = to_device([replaced_h, sample_h[replaced_h], bonus_h], device)
    new_state = torch.empty_like(states[0])
    if replaced_h.size:
        new_state[replaced_sample] = coupling_replacements(
            x_draft[replaced], mean_p[replaced], std_p[replaced], mean_q_drafts[replaced], std_q_drafts[replaced],
            generator, kinds=kinds_h[replaced_h])
    if bonus_h.size:
        bonus_rows = offsets[bonus] + drafts_d[bonus]
        new_state[bonus] = mean_q[bonus_rows] + std_q[bonus_rows] * step_noise(mean_q[bonus_rows], generator)
    return new_state, stop, stop_h


def _refuse_non_finite(all_finite: bool) -> None:
    if not all_finite:
        raise ValueError(NON_FINITE_OUTPUT)


def _plain_round(space: TransitionSpace, x: torch.Tensor, last_state: torch.Tensor, active_h: np.ndarray,
                 a_progress_h: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A round without drafts (adaptive K chose a plain step, or every sample is at its last step): the plain
    sampler's step, without the draft layout, stacking and index copies of a drafted round. Returns (x, last_state);
    when every sample is active these are new tensors rather than written in place."""
    every_sample = active_h.size == x.shape[0]
    active, a_progress, rows = to_device([active_h, a_progress_h, np.arange(active_h.size)], x.device)
    space.begin_round(active)
    current = x if every_sample else x[active]
    mean_q, std_q = space.verify(current, a_progress, rows)
    if space.verified_finite is not None:
        _refuse_non_finite(bool(space.verified_finite))  # the round's one read of the device
    new_state = mean_q + std_q * step_noise(mean_q, generator)
    space.commit(rows, torch.zeros_like(rows))
    if every_sample:
        return new_state, current
    x[active], last_state[active] = new_state, current
    return x, last_state


RoundCallback = Callable[[torch.Tensor, torch.Tensor, SamplingStats], None]


def run_rounds(
    space: TransitionSpace,
    x: torch.Tensor,
    generator: torch.Generator,
    policy: DraftLengthPolicy,
    stats: SamplingStats,
    relax_strength: float = 0.0,
    after_round: RoundCallback | None = None,
) -> torch.Tensor:
    """Speculative rounds until every sample has committed `space.total_steps` transitions; returns the samples.

    `after_round(x, progress, stats)` runs after each round (progress: committed transitions per sample, a CPU
    tensor); it may raise to stop sampling. Statistics are recorded in `stats` round by round, so a policy sees them.

    Every tensor of a round lives on x's device. The host keeps its own copy of the progress (numpy), decides each
    round's K and layout from it, sends the layout to the device in one copy that does not wait, and reads the
    device once per round, in `accept_prefix` (the stop positions, from which it updates its progress).
    """
    total_steps, n, device = space.total_steps, x.shape[0], x.device
    x = x.clone()
    progress = np.zeros(n, dtype=np.int64)  # transitions committed per sample (host copy)
    last_state = x.clone()  # the state before each sample's current one (where its last exact output was evaluated)
    proposed = np.zeros(total_steps, dtype=np.int64)  # drafted transitions tested, by step label
    accepted_count = np.zeros(total_steps, dtype=np.int64)
    temperature_of = None  # strict mode: check_options guarantees relax_strength == 0
    if relax_strength:
        def temperature_of(step_label: torch.Tensor) -> torch.Tensor:
            return space.temperature(step_label, relax_strength)

    def end_round(active_h: np.ndarray, advances: np.ndarray, states: int) -> None:
        """Progress, statistics and the callback after a round that verified `states` states."""
        progress[active_h] += advances
        stats.record_round(states=states, rows=states * space.rows_per_state, advances=advances, proposed=proposed,
                           accepted=accepted_count, calls=space.verify_calls)
        if after_round is not None:
            after_round(x, torch.from_numpy(progress.copy()), stats)

    while (progress < total_steps).any():
        active_h = np.flatnonzero(progress < total_steps)
        a_progress_h = progress[active_h]
        k_round = policy.next_length(stats) if stats.rounds else 0  # the first round has nothing to draft from
        drafts = np.minimum(total_steps - a_progress_h - 1, k_round)
        stats.draft_lengths.append(k_round)
        if not drafts.any():
            x, last_state = _plain_round(space, x, last_state, active_h, a_progress_h, generator)
            end_round(active_h, np.ones(active_h.size, dtype=np.int64), states=active_h.size)
            continue
        k_min, k_max = int(drafts.min()), int(drafts.max())
        offsets_h, pair_a_h, pair_j_h = verification_layout(drafts)
        # Rows that draft at position j, for the positions some samples do not reach (the others need no selection).
        partial_rows_h = [np.flatnonzero(drafts > j) for j in range(k_min, k_max)]
        active, a_progress, offsets, pair_a, pair_j, *partial_rows = to_device(
            [active_h, a_progress_h, offsets_h, pair_a_h, pair_j_h, *partial_rows_h], device)
        space.begin_round(active)
        every_sample = active_h.size == n  # then active is 0..n-1: whole tensors instead of index copies

        # 1. draft ---------------------------------------------------------------------------------------
        states = [x if every_sample else x[active]]  # states[j]: drafted state s_j of every active sample (rows beyond K_b unused)
        before = last_state if every_sample else last_state[active]  # the state before each sample's current one
        draft_means, draft_stds = [], []
        every_row = torch.arange(active_h.size, device=device)
        for j in range(k_max):
            if j < k_min:  # every sample drafts: no row selection, no copies
                previous = before if j == 0 else states[j - 1]
                mean_p, std_p = space.draft(every_row, a_progress + j, states[j], previous)
                states.append(mean_p + std_p * step_noise(mean_p, generator))
            else:
                rows = partial_rows[j - k_min]
                previous = before[rows] if j == 0 else states[j - 1][rows]
                rows_mean, rows_std = space.draft(rows, a_progress[rows] + j, states[j][rows], previous)
                next_state, mean_p, std_p = states[j].clone(), torch.zeros_like(states[0]), torch.zeros_like(states[0])
                next_state[rows] = rows_mean + rows_std * step_noise(rows_mean, generator)
                mean_p[rows], std_p[rows] = rows_mean, rows_std
                states.append(next_state)
            stats.drafter_calls += 1
            draft_means.append(mean_p)
            draft_stds.append(std_p)

        # 2. verify: every (sample, position <= K_b) in one model call --------------------------------------
        stacked = torch.stack(states, dim=1)  # (A, K_max + 1, ...)
        verified = stacked.flatten(0, 1) if k_min == k_max else stacked[pair_a, pair_j]
        mean_q, std_q = space.verify(verified, a_progress[pair_a] + pair_j, pair_a)

        # 3. accept the longest prefix; the first rejection commits the coupled exact draw ------------------
        new_state, stop, stop_h = accept_prefix(
            states, draft_means, draft_stds, drafts, offsets, mean_q, std_q, generator,
            step_of=lambda samples, positions: space.step_label(a_progress[samples] + positions), temperature_of=temperature_of,
            proposed=proposed, accepted_count=accepted_count, verified_finite=space.verified_finite,
        )

        # 4. commit -----------------------------------------------------------------------------------------
        if every_sample:
            x, last_state = new_state, stacked[every_row, stop]
        else:
            x[active], last_state[active] = new_state, stacked[every_row, stop]
        space.commit(offsets, stop)
        end_round(active_h, stop_h + 1, states=pair_a_h.size)
    return x
