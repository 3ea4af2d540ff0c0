"""The FREE speculative sampler: draft K transitions, verify them in one batched DiT forward, couple.

One round, for every unfinished sample b at step index i_b with K_b = min(K, i_b) drafts:
  1. draft: for j = 0..K_b-1 the drafter proposes the output at the drafted state s_j (s_0 = x_b),
     giving p_j = N(mean_p, std_p^2); s_{j+1} ~ p_j.
  2. verify: the DiT evaluates s_0..s_{K_b} of all samples in ONE forward (ragged: per-row timesteps),
     giving the exact transitions q_j = N(mean_q, std_q^2) out of each s_j.
  3. accept: for j = 0..K_b-1, (y, ok) = maximal_coupling(s_{j+1}, p_j, q_j). The first rejection
     commits y (an exact draw from q_j) and ends the round; if all K_b drafts pass, the exact output at
     s_{K_b} gives one more transition for free. A round advances 1..K_b+1 steps for one DiT call.
Strict mode returns samples with exactly the law of `sample_ancestral`.
"""

from __future__ import annotations

import time
from typing import Callable, Literal

import torch

from .coupling import maximal_coupling
from .cost import cached_batch_cost
from .denoiser import GuidedDenoiser
from .draft_length import DraftLengthPolicy, FixedDraftLength
from .drafting import DraftContext, Drafter
from .relax import relax_temperature
from .sampling import Callback, check_sampler_inputs, step_noise
from .stats import SamplingStats

Mode = Literal["strict", "relax"]
MODES = ("strict", "relax")


def _check_options(draft_length: int | DraftLengthPolicy, mode: str, relax_strength: float) -> DraftLengthPolicy:
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


def verification_layout(drafts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of one ragged verification batch holding positions 0..K_b of every sample b.

    Returns (offsets, sample, position): offsets[b] is the row of (b, 0); row r holds (sample[r], position[r]).
    """
    per_sample = drafts + 1
    offsets = torch.cumsum(per_sample, 0) - per_sample
    sample = torch.repeat_interleave(torch.arange(drafts.numel()), per_sample)
    position = torch.arange(sample.numel()) - offsets[sample]
    return offsets, sample, position


def accept_prefix(
    states: list[torch.Tensor],
    draft_means: list[torch.Tensor],
    draft_stds: list[torch.Tensor],
    drafts: torch.Tensor,
    offsets: torch.Tensor,
    mean_q: torch.Tensor,
    std_q: torch.Tensor,
    generator: torch.Generator,
    step_of: Callable[[torch.Tensor, int], torch.Tensor],
    temperature_of: Callable[[torch.Tensor], torch.Tensor] | None,
    proposed: torch.Tensor,
    accepted_count: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Couple each drafted transition j = 0, 1, ... with its verified one until the first rejection.

    A rejection commits the coupling's exact draw; a sample whose K_b drafts all pass takes one more exact
    transition out of its last drafted state. `step_of(rows, j)` names the step index of draft j (for the
    per-step counts `proposed`/`accepted_count`, updated in place, and `temperature_of`, relax mode's kappa by
    step index; None in strict mode). Returns
    (new_state, stop): stop[b] is the position whose exact transition produced sample b's new state.
    """
    new_state = torch.empty_like(states[0])
    stop = drafts.clone()
    decided = torch.zeros(drafts.numel(), dtype=torch.bool)
    for j in range(len(draft_means)):
        rows = ((drafts > j) & ~decided).nonzero().flatten()
        if not rows.numel():
            break
        q_rows = offsets[rows] + j
        step_index = step_of(rows, j)
        y, accepted = maximal_coupling(
            states[j + 1][rows], draft_means[j][rows], draft_stds[j][rows],
            mean_q[q_rows], std_q[q_rows], generator,
            temperature=None if temperature_of is None else temperature_of(step_index),
        )
        accepted, step_index = accepted.cpu(), step_index.cpu()
        proposed += torch.bincount(step_index, minlength=proposed.numel())
        accepted_count += torch.bincount(step_index[accepted], minlength=accepted_count.numel())
        rejected = rows[~accepted]
        new_state[rejected] = y[~accepted]
        stop[rejected] = j
        decided[rejected] = True
    bonus = (~decided).nonzero().flatten()
    if bonus.numel():
        q_rows = offsets[bonus] + drafts[bonus]
        new_state[bonus] = mean_q[q_rows] + std_q[q_rows] * step_noise(mean_q[q_rows], generator)
    return new_state, stop


@torch.no_grad()
def sample_speculative(
    denoiser: GuidedDenoiser,
    drafter: Drafter,
    x: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    draft_length: int | DraftLengthPolicy = 6,
    mode: Mode = "strict",
    relax_strength: float = 0.0,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, SamplingStats]:
    """Speculative ancestral sampling with `drafter`; see the module docstring for one round."""
    check_sampler_inputs(denoiser, x, labels)
    policy = _check_options(draft_length, mode, relax_strength)
    started = time.perf_counter()
    n, total_steps, branches = x.shape[0], denoiser.num_steps, denoiser.branches
    model, diffusion, device = denoiser.model, denoiser.diffusion, x.device
    history_length = drafter.history_length
    stats = SamplingStats(f"free-{mode}", total_steps, n, draft_length=policy.label)

    policy.start_run(n * branches, lambda sizes: cached_batch_cost(denoiser, x, labels, sizes))
    relax_temperature_at = None  # strict mode: _check_options guarantees relax_strength == 0
    if relax_strength:
        def relax_temperature_at(step_index: torch.Tensor) -> torch.Tensor:
            return relax_temperature(diffusion, step_index, relax_strength).to(device)
    step = torch.full((n,), total_steps - 1, dtype=torch.long)  # current respaced step index; -1 = done
    x = x.clone()
    last_output: torch.Tensor | None = None  # (n, branches, C', H, W) verified output rows at the previous state
    last_state = x.clone()  # (n, C, H, W) the state last_output was evaluated at
    history: torch.Tensor | None = None  # (n, branches, m, T, D) verified top-block features, oldest first
    proposed = torch.zeros(total_steps, dtype=torch.long)  # drafted transitions tested, by step index
    accepted_count = torch.zeros(total_steps, dtype=torch.long)
    advances = torch.zeros(total_steps + 2, dtype=torch.long)  # steps advanced per sample per round

    while (step >= 0).any():
        if callback is not None:
            callback({"round": stats.rounds, "steps_done": total_steps - 1 - int(step.max()), "total_steps": total_steps, "x": x})
        active = (step >= 0).nonzero().flatten()
        a_count = active.numel()
        a_step = step[active]
        k_round = policy.next_length(stats) if last_output is not None else 0
        drafts = torch.clamp(a_step, max=k_round)  # K_b; 0 in the first round (nothing to draft from yet)
        k_max = int(drafts.max())
        stats.draft_lengths.append(k_round)

        # 1. draft --------------------------------------------------------------------------------
        states = [x[active]]  # states[j]: (A, C, H, W), drafted state s_j (rows beyond K_b are unused)
        draft_means, draft_stds = [], []
        if k_max:
            work_output = last_output[active].clone()
            work_history = history[active].clone() if history is not None else None
        for j in range(k_max):
            rows = (drafts > j).nonzero().flatten()
            s_j = states[j][rows]
            i_j = (a_step[rows] - j).to(device)
            x_rows, t_rows, y_rows = denoiser.rows(s_j, i_j, labels[active][rows.to(device)])
            previous = last_state[active][rows] if j == 0 else states[j - 1][rows]
            context = DraftContext(
                features=None if work_history is None else work_history[rows].flatten(0, 1),
                output=work_output[rows].flatten(0, 1),
                x=x_rows, t=t_rows, y=y_rows, step=i_j.repeat_interleave(branches),
                previous_x=previous.repeat_interleave(branches, dim=0),
            )
            out_rows, feature_rows = drafter.propose(model, context)
            stats.drafter_calls += 1
            mean_p, std_p = denoiser.transition(denoiser.guided_output(out_rows), s_j, i_j)
            next_state = states[j].clone()
            next_state[rows] = mean_p + std_p * step_noise(mean_p, generator)
            states.append(next_state)
            full_mean, full_std = torch.zeros_like(states[0]), torch.zeros_like(states[0])
            full_mean[rows], full_std[rows] = mean_p, std_p
            draft_means.append(full_mean)
            draft_stds.append(full_std)
            work_output[rows] = out_rows.unflatten(0, (-1, branches))
            if work_history is not None and feature_rows is not None:
                drafted = feature_rows.unflatten(0, (-1, branches)).unsqueeze(2)
                work_history[rows] = torch.cat([work_history[rows][:, :, 1:], drafted], dim=2)

        # 2. verify: every (sample, position <= K_b) in one DiT forward ---------------------------
        offsets, pair_a, pair_j = verification_layout(drafts)
        stacked = torch.stack(states, dim=1)  # (A, k_max+1, C, H, W)
        verify_x = stacked[pair_a, pair_j]
        verify_i = (a_step[pair_a] - pair_j).to(device)
        feature_rows, output_rows = denoiser.evaluate(verify_x, verify_i, labels[active][pair_a.to(device)])
        mean_q, std_q = denoiser.transition(denoiser.guided_output(output_rows), verify_x, verify_i)
        stats.rounds += 1
        stats.sequential_dit_calls += 1
        stats.dit_states += pair_a.numel()
        stats.states_per_round.append(pair_a.numel())
        stats.dit_rows += output_rows.shape[0]

        # 3. accept the longest prefix; the first rejection keeps the coupled exact sample ---------
        new_state, stop = accept_prefix(
            states, draft_means, draft_stds, drafts, offsets, mean_q, std_q, generator,
            step_of=lambda rows, j: a_step[rows] - j, temperature_of=relax_temperature_at,
            proposed=proposed, accepted_count=accepted_count,
        )
        stats.proposed_per_step = proposed.tolist()
        stats.accepted_per_step = accepted_count.tolist()

        # 4. commit; keep the exact outputs and features of the states the chain moved through -----
        x[active] = new_state
        step[active] = a_step - stop - 1
        output_by_state = output_rows.unflatten(0, (-1, branches))
        if last_output is None:
            last_output = torch.zeros((n, *output_by_state.shape[1:]), dtype=output_rows.dtype, device=device)
        last_output[active] = output_by_state[offsets + stop]
        last_state[active] = stacked[torch.arange(a_count), stop]
        if history_length:
            features_by_state = feature_rows.unflatten(0, (-1, branches))  # (states, branches, T, D)
            if history is None:  # first round: pad with the first verified features
                history = features_by_state[offsets].unsqueeze(2).repeat(1, 1, history_length, 1, 1)
                history = history.new_zeros((n, *history.shape[1:])).index_copy_(0, active.to(device), history)
            # Entry k of the new history is verified position stop - (m-1) + k, or else an older entry.
            back = stop[:, None] - (history_length - 1) + torch.arange(history_length)[None]  # (A, m)
            from_round = features_by_state[(offsets[:, None] + back.clamp(min=0)).flatten()]
            from_old = history[active][torch.arange(a_count)[:, None], :, (history_length + back).clamp(max=history_length - 1)]
            from_round = from_round.unflatten(0, (a_count, history_length)).transpose(1, 2)  # (A, branches, m, T, D)
            from_old = from_old.transpose(1, 2)
            history[active] = torch.where((back >= 0)[:, None, :, None, None].to(device), from_round, from_old)
        advances += torch.bincount(stop + 1, minlength=total_steps + 2)

    stats.advance_histogram.update({k: int(v) for k, v in enumerate(advances.tolist()) if v})
    if callback is not None:
        callback({"round": stats.rounds, "steps_done": total_steps, "total_steps": total_steps, "x": x})
    stats.wall_time_s = time.perf_counter() - started
    return x, stats
