"""Sigma-space transitions drafted by a learned token drafter on a tapped model (Flux, SD3, Wan, ... or the FREE DiT).

The frozen SigmaSpace reuses the last verified `denoised`. This space keeps, per sample, the top-block features
of the last `m` states its chain moved through, and drafts the output at a state by running the model's tail
(its final layer and everything after the blocks; `engine.tapped_model`) with the drafter's features. The
drafter runs inside the final layer's pre-hook, so it reads the modulation the model itself computes at the
drafted state's sigma and conditioning. Verification taps the features of every verified state in the same call
that gives their `denoised`. Transitions, coupling and the round are SigmaSpace's and `engine.rounds`', so strict
mode keeps exactly the law of Euler-ancestral whatever the drafter proposes.

One model evaluation of R states may call the diffusion model several times (guidance batches cond and uncond in
one call, or in several): call c holds m_c x R rows, m_c consecutive chunks of R rows in state order. The chunks
of all calls, in call order, are a state's "slots" (its guidance branches): features by state are (R, S, T, D).
Where a model's image tokens do not start at token 0 (Lumina 2: each row's caption first), the drafter places
each row's state change at the image-token offset the tap recorded with that call (`image_offsets`).
"""

from __future__ import annotations

from typing import Callable

import torch

from .k_diffusion_sampler import AncestralStep, Model, SigmaSpace
from .rounds import advance_history
from .tapped_model import TappedModel, TopBlockCall, TopBlockFeatures
from ..models.token_drafter import TokenDrafter, image_patch_index, latent_patches


def slots_by_state(features: TopBlockFeatures, states: int) -> torch.Tensor:
    """(states, S, T, D): every call's rows split into chunks of `states` rows, the chunks of all calls in order."""
    chunks = _chunks_by_state([call.features for call in features.calls], states)
    widths = {chunk.shape[2:] for chunk in chunks}
    if len(widths) != 1:
        raise RuntimeError(f"the diffusion-model calls gave top-block features of shapes {sorted(map(tuple, widths))}; "
                           "FREE's learned drafter needs one token layout per evaluation")
    return torch.cat(chunks).transpose(0, 1)


def image_offsets_by_state(features: TopBlockFeatures, states: int) -> torch.Tensor:
    """(states, S) long: where each slot's image tokens start, in the slots of `slots_by_state` (0 where the tap
    records no offsets)."""
    offsets = [call.image_offsets if call.image_offsets is not None
               else torch.zeros(call.features.shape[0], dtype=torch.long) for call in features.calls]
    return torch.cat(_chunks_by_state([o.cpu() for o in offsets], states)).transpose(0, 1)


def call_patch_index(call: TopBlockCall, patches: int) -> torch.Tensor | None:
    """(rows, T): the latent patch each token of this call shows (`image_patch_index`), or None where the image tokens
    start at token 0 (no offsets recorded)."""
    if call.image_offsets is None:
        return None
    tokens, offsets = call.features.shape[1], call.image_offsets  # on the CPU, as the tap read them: no device sync
    if int(offsets.min()) < 0 or int(offsets.max()) + patches > tokens:  # e.g. read from another version of the model
        raise RuntimeError(f"the tap's image-token offsets {offsets.tolist()} put {patches} latent patches outside the "
                           f"{tokens} tokens of the final layer; use frozen drafts with this model")
    device = call.features.device
    return image_patch_index(offsets.to(device), torch.arange(tokens, device=device), patches)


def _chunks_by_state(per_call: list[torch.Tensor], states: int) -> list[torch.Tensor]:
    """Each call's rows (first axis) as (rows // states, states, ...) chunks; refused unless whole branches."""
    chunks = []
    for index, rows in enumerate(per_call):
        if rows.shape[0] % states:
            raise RuntimeError(f"diffusion-model call {index} had {rows.shape[0]} rows for {states} states: FREE's learned "
                               "drafter needs whole guidance branches per call; use frozen drafts with this conditioning")
        chunks.append(rows.unflatten(0, (rows.shape[0] // states, states)))
    return chunks


def modulation_vector(call: TopBlockCall, drafter_name: str = "FREE's learned drafter") -> torch.Tensor:
    """(rows, D_mod): the final layer's conditioning vector of each row; per-token modulation is refused."""
    if not call.modulation:
        raise RuntimeError(f"the model's final layer gets no conditioning tensor, which {drafter_name} reads")
    modulation = call.modulation[0]
    tokens = call.features.shape[1]
    if modulation.dim() >= 3 and modulation.shape[1] == tokens and tokens > 1:
        raise RuntimeError(f"the model modulates each token with its own timestep (e.g. Wan 2.2 5B, LTXV); {drafter_name} "
                           "conditions on one vector per row: use frozen drafts with this model")
    return modulation.flatten(1)


ModelInput = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma rows) -> what the model's embedding sees


def unscaled(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The model input of a rectified-flow (CONST) model: the state itself."""
    return x


def state_change(x: torch.Tensor, sigma: torch.Tensor, previous: torch.Tensor, previous_sigma: torch.Tensor,
                 model_input: ModelInput) -> torch.Tensor:
    """The change of the model's input from the previous state to `x` (what the model's patch embedding would see
    change: for an EPS model the states are scaled by 1 / sqrt(sigma^2 + 1) first, so high-sigma steps do not swamp
    the drafter)."""
    return model_input(x, sigma) - model_input(previous, previous_sigma)


class TappedSigmaSpace(SigmaSpace):
    """SigmaSpace whose drafts come from a TokenDrafter over the tapped model's top-block features."""

    def __init__(self, model: Model, tapped: TappedModel, drafter: TokenDrafter, sigmas: torch.Tensor, extra_args: dict,
                 step: AncestralStep, x: torch.Tensor, row_groups: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 cfg_branches: int = 1, model_input: ModelInput = unscaled):
        super().__init__(model, sigmas, extra_args, step, x, row_groups, cfg_branches)
        self.tapped, self.drafter, self.model_input = tapped, drafter, model_input
        self.patch_size = tuple(drafter.identity.patch_size)
        self.history: torch.Tensor | None = None  # (n, m, S, T, D) features of each chain's last m states, oldest first

    def begin_round(self, active: torch.Tensor) -> None:
        super().begin_round(active)
        if self.history is not None:  # a work copy: this round's drafts are appended to it
            self.work_history = self.history[active]

    def draft(self, rows, progress, state, previous):
        progress = progress.to(self.sigmas.device)
        every_row = rows.numel() == self.active.numel()
        history = self.work_history if every_row else self.work_history[rows]  # (R, m, S, T, D)
        sigma = self.sigmas[progress]
        change = state_change(state, sigma, previous, self.sigmas[(progress - 1).clamp(min=0)], self.model_input)
        state_patches = latent_patches(change, self.patch_size)  # (R, P, C prod(patch))
        drafted: list[torch.Tensor] = []

        def substitute(call: TopBlockCall) -> torch.Tensor:
            chunks = call.features.shape[0] // state.shape[0]
            first = sum(piece.shape[0] for piece in drafted)
            slot_history = history[:, :, first:first + chunks]  # (R, m, chunks, T, D)
            if slot_history.shape[2] != chunks or chunks * state.shape[0] != call.features.shape[0]:
                raise RuntimeError(f"a drafting call had {call.features.shape[0]} rows for {state.shape[0]} states and "
                                   f"{history.shape[2]} verified branches; the model must evaluate guidance alike in both")
            features = self.drafter(slot_history.permute(2, 0, 1, 3, 4).flatten(0, 1),  # (chunks R, m, T, D)
                                    state_patches.repeat(chunks, 1, 1), modulation_vector(call),
                                    call_patch_index(call, state_patches.shape[1]))
            drafted.append(features.unflatten(0, (chunks, -1)))
            return features

        denoised = self.tapped.replay_with(substitute, state, sigma.to(state), **self.extra_args)
        new = torch.cat(drafted).transpose(0, 1).unsqueeze(1).to(history.dtype)  # (R, 1, S, T, D)
        shifted = torch.cat([history[:, 1:], new], dim=1)
        if every_row:
            self.work_history = shifted
        else:
            self.work_history[rows] = shifted
        return self.step(state, denoised, sigma, self.sigmas[progress + 1])

    def verify(self, states, progress, sample):
        self.verified_pieces: list[torch.Tensor] = []  # features by state of each call_model, in call order
        transition = super().verify(states, progress, sample)
        features = torch.cat(self.verified_pieces)
        if self.row_groups is not None:  # SigmaSpace verified each group of rows apart, in `group_rows` order
            order = torch.cat(self.group_rows).to(features.device)
            features = torch.empty_like(features).index_copy_(0, order, features)
        self.verified_features = features  # (states, S, T, D) in verification row order
        return transition

    def call_model(self, states: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The model's denoised output on `states`, keeping their top-block features by state."""
        def call(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            denoised, features = self.tapped.features(states[start:stop], sigma[start:stop].to(states), **self.extra_args)
            return denoised, slots_by_state(features, stop - start)

        denoised, features = self.chunks(call, states.shape[0])
        self.verified_pieces.append(features)
        return denoised

    def commit(self, offsets: torch.Tensor, stop: torch.Tensor) -> None:
        super().commit(offsets, stop)
        self.history = advance_history(self.history, self.active, self.verified_features, offsets, stop,
                                       self.drafter.history_length, samples=self.last_denoised.shape[0])


def drafting_pass(tapped: TappedModel, drafter: TokenDrafter, x: torch.Tensor, sigma: torch.Tensor, extra_args: dict
                  ) -> Callable[[], torch.Tensor]:
    """One learned drafting pass over the rows of `x` (the tail replay with the drafter in it), for timing: the
    history is the seen features repeated, which costs what a real one does."""
    patches = latent_patches(torch.zeros_like(x), tuple(drafter.identity.patch_size))

    def substitute(call: TopBlockCall) -> torch.Tensor:
        chunks = call.features.shape[0] // x.shape[0]
        history = call.features.unsqueeze(1).expand(-1, drafter.history_length, -1, -1)
        return drafter(history, patches.repeat(chunks, 1, 1), modulation_vector(call),
                       call_patch_index(call, patches.shape[1]))

    return lambda: tapped.replay_with(substitute, x, sigma, **extra_args)
