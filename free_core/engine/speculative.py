"""The FREE speculative sampler for DiTs: the round of `free_core.engine.rounds` in the DDPM step-index space.

The space drafts with a `Drafter` (learned: top-block features -> the DiT's own head; or frozen) and verifies
with the DiT through `GuidedDenoiser` (CFG rows, respaced schedule, learned or fixed variance). Step indices run
i = N-1 ... 0; a sample with progress p sits at i = N-1-p. Strict mode returns samples with exactly the law
of `sample_ancestral`.
"""

from __future__ import annotations

import time
from typing import Literal

import torch

from .cost import cached_batch_cost, cached_draft_cost
from .denoiser import GuidedDenoiser
from .draft_policy import DraftLengthPolicy
from .drafter_interface import DraftContext, Drafter, repeat_rows
from .relax import relax_temperature
from .rounds import advance_history, check_options, run_rounds
from .sampling import Callback, check_sampler_inputs
from .stats import SamplingStats, timed_callback

Mode = Literal["strict", "relax"]


class DDPMSpace:
    """DiT transitions over respaced step indices, drafted from the last verified output and feature history."""

    def __init__(self, denoiser: GuidedDenoiser, drafter: Drafter, labels: torch.Tensor):
        self.denoiser, self.drafter, self.labels = denoiser, drafter, labels
        self.total_steps, self.rows_per_state, self.verify_calls = denoiser.num_steps, denoiser.branches, 1
        self.verified_finite: torch.Tensor | None = None  # set by verify, read by the round with its decisions
        self.history_length = drafter.history_length
        self.last_output: torch.Tensor | None = None  # (n, branches, C', H, W) verified output at each sample's last state
        self.history: torch.Tensor | None = None  # (n, branches, m, T, D) verified top-block features, oldest first
        self.modulation_table: torch.Tensor | None = None  # (S, n, branches, M): made at the run's first draft

    def step_label(self, progress: torch.Tensor) -> torch.Tensor:
        return self.total_steps - 1 - progress

    def begin_round(self, active: torch.Tensor) -> None:
        self.active = active
        self.work_output = self.work_history = None  # made by the round's first draft: a plain-step round needs none

    def _start_drafting(self) -> None:
        """The round's drafts overwrite copies (indexing copies) of the active samples' output and history; their
        labels' model rows are the same in every drafting pass of the round."""
        self.work_output = self.last_output[self.active]
        self.work_history = self.history[self.active] if self.history is not None else None
        self.round_labels = self.labels[self.active]
        self.round_label_rows = self.denoiser.label_rows(self.round_labels)
        if self.modulation_table is None:
            self.modulation_table = self._modulation_table()

    def _modulation_table(self) -> torch.Tensor | None:
        """The drafter's terms of every (step, sample's row), made in one batched call per run instead of in every
        pass: the DiT's conditioning tables (its timestep MLP once per step, its label embedding once per row), added
        as the DiT adds them, through the drafter's `modulation`. None for a drafter or a model without them."""
        modulation = getattr(self.drafter, "modulation", None)
        tables = getattr(self.denoiser.model, "conditioning_tables", None)
        if modulation is None or tables is None:
            return None
        steps = torch.arange(self.total_steps, device=self.labels.device)
        step_terms, label_terms = tables(self.denoiser.diffusion.timestep_for(steps), self.denoiser.label_rows(self.labels))
        conditioning = step_terms[:, None, None] + label_terms.unflatten(0, (-1, self.rows_per_state))  # (S, n, branches, D)
        return modulation(self.denoiser.model, conditioning)

    def draft(self, rows, progress, state, previous):
        denoiser, device = self.denoiser, state.device
        if self.work_output is None:
            self._start_drafting()
        every_row = rows.numel() == self.active.numel()  # then rows is 0..A-1: read and write whole tensors
        i = self.step_label(progress).to(device)
        branches = denoiser.branches
        y_rows = self.round_label_rows if every_row else denoiser.label_rows(self.round_labels[rows])
        history = self.work_history if every_row or self.work_history is None else self.work_history[rows]
        modulation = t_rows = None
        if self.modulation_table is not None:  # (rows x branches, M), the order of the model rows
            modulation = self.modulation_table[i, self.active if every_row else self.active[rows]].flatten(0, 1)
        else:
            t_rows = repeat_rows(denoiser.diffusion.timestep_for(i), branches)
        context = DraftContext(
            features=None if history is None else history.flatten(0, 1),
            output=(self.work_output if every_row else self.work_output[rows]).flatten(0, 1),
            x=repeat_rows(state, branches), t=t_rows, y=y_rows, step=repeat_rows(i, branches),
            previous_x=repeat_rows(previous, branches),
            modulation=modulation, branches=branches,
        )
        out_rows, feature_rows = self.drafter.propose(denoiser.model, context)
        if every_row:
            self.work_output = out_rows.unflatten(0, (-1, branches))
        else:
            self.work_output[rows] = out_rows.unflatten(0, (-1, branches))
        if history is not None and feature_rows is not None:
            drafted = feature_rows.unflatten(0, (-1, branches)).unsqueeze(2)
            shifted = torch.cat([history[:, :, 1:], drafted], dim=2)
            if every_row:
                self.work_history = shifted
            else:
                self.work_history[rows] = shifted
        # A drafted output need not be checked for NaN: the coupling never accepts a draft whose density is not finite.
        return denoiser.transition(denoiser.guided_output(out_rows), state, i, check_finite=False)

    def verify(self, states, progress, sample):
        denoiser = self.denoiser
        i = self.step_label(progress).to(states.device)
        self.feature_rows, output_rows = denoiser.evaluate(states, i, self.labels[self.active[sample].to(states.device)])
        self.verify_calls = denoiser.chunks.last_calls  # more than 1 once the batch is split to fit in memory
        self.output_rows = output_rows
        guided = denoiser.guided_output(output_rows)
        # The transition's own NaN check would read the device; the round reads this flag with its decisions instead.
        self.verified_finite = torch.isfinite(guided).all()
        return denoiser.transition(guided, states, i, check_finite=False)

    def commit(self, offsets: torch.Tensor, stop: torch.Tensor) -> None:
        active, branches = self.active, self.denoiser.branches
        chosen_rows = offsets + stop
        output_by_state = self.output_rows.unflatten(0, (-1, branches))
        a_count = active.numel()
        plain_step = output_by_state.shape[0] == a_count  # one state per sample verified: nothing was drafted
        every_sample = a_count == self.labels.shape[0]  # then active is 0..n-1: whole tensors, no index round trips
        kept = output_by_state if plain_step else output_by_state[chosen_rows]
        if every_sample:
            self.last_output = kept  # a fresh tensor each round; drafts write to their own copies
        else:
            if self.last_output is None:
                self.last_output = output_by_state.new_zeros((self.labels.shape[0], *output_by_state.shape[1:]))
            self.last_output[active] = kept
        m = self.history_length
        if not m:
            return
        features_by_state = self.feature_rows.unflatten(0, (-1, branches))  # (states, branches, T, D)
        if plain_step and self.history is not None:  # the general update below, for stop = 0 everywhere
            if every_sample:
                self.history = torch.cat([self.history[:, :, 1:], features_by_state.unsqueeze(2)], dim=2)
            else:
                self.history[active] = torch.cat([self.history[active][:, :, 1:], features_by_state.unsqueeze(2)], dim=2)
            return
        # advance_history keeps the step axis second: the history is (n, branches, m, T, D), seen as (n, m, branches, T, D)
        old = None if self.history is None else self.history.transpose(1, 2)
        self.history = advance_history(old, active, features_by_state, offsets, stop, m,
                                       samples=self.labels.shape[0]).transpose(1, 2)

    def temperature(self, step_label: torch.Tensor, strength: float) -> torch.Tensor:
        return relax_temperature(self.denoiser.diffusion, step_label, strength).to(self.output_rows.device)


@torch.inference_mode()  # samples are never differentiated; cheaper per op than no_grad
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
    """Speculative ancestral sampling with `drafter`; see `free_core.engine.rounds` for one round."""
    check_sampler_inputs(denoiser, x, labels)
    policy = check_options(draft_length, mode, relax_strength)
    started = time.perf_counter()
    n, total_steps = x.shape[0], denoiser.num_steps
    stats = SamplingStats(f"free-{mode}", total_steps, n, draft_length=policy.label)
    callback = timed_callback(callback, stats)
    policy.start_run(n * denoiser.branches, lambda sizes: cached_batch_cost(denoiser, x, labels, sizes),
                     lambda: cached_draft_cost(denoiser, drafter, x, labels))
    stats.calibration_s = time.perf_counter() - started  # measuring the device's costs: once per machine, not sampling
    started += stats.calibration_s

    def after_round(x_now: torch.Tensor, progress: torch.Tensor, stats_now: SamplingStats) -> None:
        if callback is not None:
            callback({"round": stats_now.rounds, "steps_done": int(progress.min()), "total_steps": total_steps, "x": x_now})

    if callback is not None:
        callback({"round": 0, "steps_done": 0, "total_steps": total_steps, "x": x})
    x = run_rounds(DDPMSpace(denoiser, drafter, labels), x, generator, policy, stats, relax_strength, after_round)
    stats.wall_time_s = time.perf_counter() - started
    stats.chunk_rows = denoiser.chunks.max_rows
    return x, stats
