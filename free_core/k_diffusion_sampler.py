"""FREE for k-diffusion-style samplers: speculative Euler-ancestral (eta = 1) in sigma space.

k-diffusion (and ComfyUI's core samplers, which descend from it) see the model as a black box
`model(x, sigma_rows, **extra_args) -> denoised` on the variance-exploding state x = x0 + sigma * n.
The plain sampler here is Euler-ancestral with eta = 1, whose step out of sigma to sigma_next is a
Gaussian transition with a schedule-only standard deviation:

    sigma_up   = sigma_next * sqrt(1 - sigma_next^2 / sigma^2),   sigma_down = sqrt(sigma_next^2 - sigma_up^2)
    x_next     ~ N(x + (x - denoised) / sigma * (sigma_down - sigma),  sigma_up^2 I)

The speculative version drafts K such transitions with the frozen drafter (the last verified
`denoised` reused as is: needs no features, so it works with any model), verifies the drafted
states of all batch items in ONE model call with per-row sigmas, and accepts or replaces each draft
with `maximal_coupling`. Draft and target stds are equal (they depend on the schedule only), so
the reflection coupling is used, and strict mode has exactly the law of `sample_euler_ancestral`.
Both samplers draw every random number from one generator seeded by `extra_args["seed"]`.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from .draft_length import DraftLengthPolicy
from .sampling import step_noise
from .speculative import _check_options, accept_prefix, verification_layout
from .stats import SamplingStats

Model = Callable[..., torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up) of the eta = 1 ancestral step from sigma to sigma_next (elementwise)."""
    ratio = torch.where(sigma > 0, sigma_next / sigma.clamp(min=1e-30), torch.zeros_like(sigma))
    sigma_up = torch.minimum(sigma_next, sigma_next * torch.sqrt((1 - ratio**2).clamp(min=0)))
    sigma_down = torch.sqrt((sigma_next**2 - sigma_up**2).clamp(min=0))
    return sigma_down, sigma_up


def ancestral_transition(
    x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Euler-ancestral transition N(mean, std^2) out of x at sigma; sigma, sigma_next are per sample (n,)."""
    shape = (-1, *([1] * (x.ndim - 1)))
    sigma, sigma_next = sigma.to(x).reshape(shape), sigma_next.to(x).reshape(shape)
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next)
    mean = x + (x - denoised) / sigma * (sigma_down - sigma)
    return mean, sigma_up.expand_as(x)


def relax_temperature_sigma(sigma: torch.Tensor, sigma_next: torch.Tensor, strength: float) -> torch.Tensor:
    """Relax mode's kappa >= 1 per sample: 1 + strength * g / (1 + g), g = d mean / d denoised in units of std.

    The same rule as `free_core.relax` for the DDPM sampler, with g read off the Euler-ancestral step:
    mean = (sigma_down / sigma) x + (1 - sigma_down / sigma) denoised, std = sigma_up.
    """
    if not strength >= 0 or strength == float("inf"):
        raise ValueError(f"relax_strength must be a finite number >= 0, got {strength!r}")
    sigma, sigma_next = sigma.double(), sigma_next.double()
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next)
    coefficient = 1 - sigma_down / sigma
    saturation = torch.where(coefficient > 0, coefficient / (sigma_up + coefficient), torch.zeros_like(coefficient))
    return 1.0 + strength * saturation


@torch.no_grad()
def sample_euler_ancestral(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    stats_sink: list | None = None,
) -> torch.Tensor:
    """Plain Euler-ancestral (eta = 1): one model call per step; the law FREE strict reproduces."""
    extra_args = dict(extra_args or {})
    generator = _generator(extra_args, x)
    _check_inputs(x, sigmas, extra_args)
    started = time.perf_counter()
    n, steps = x.shape[0], len(sigmas) - 1
    stats = SamplingStats("euler-ancestral", steps, n)
    for i in range(steps):
        sigma, sigma_next = sigmas[i].expand(n), sigmas[i + 1].expand(n)
        denoised = model(x, sigma.to(x), **extra_args)
        mean, std = ancestral_transition(x, denoised, sigma, sigma_next)
        x = mean + std * step_noise(x, generator)
        stats.rounds += 1
        stats.sequential_dit_calls += 1
        stats.dit_states += n
        stats.dit_rows += n
        stats.advance_histogram[1] += n
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
    stats.wall_time_s = time.perf_counter() - started
    if stats_sink is not None:
        stats_sink.append(stats)
    return x


@torch.no_grad()
def sample_free_euler_ancestral(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    draft_length: int | DraftLengthPolicy = 6,
    mode: str = "strict",
    relax_strength: float = 0.0,
    stats_sink: list | None = None,
) -> torch.Tensor:
    """Speculative Euler-ancestral: frozen drafts, one batched verification call per round, maximal coupling.

    `callback` gets k-diffusion's dict after each round with `i` = the last step every sample has
    committed, so a progress bar advances by the steps actually committed.
    """
    extra_args = dict(extra_args or {})
    generator = _generator(extra_args, x)
    _check_inputs(x, sigmas, extra_args)
    policy = _check_options(draft_length, mode, relax_strength)
    started = time.perf_counter()
    n, total_steps = x.shape[0], len(sigmas) - 1
    sigmas = sigmas.to(x.device)
    stats = SamplingStats(f"free-euler-ancestral-{mode}", total_steps, n, draft_length=policy.label)
    policy.start_run(n)  # a black-box model: no batch-cost curve (an adaptive K then assumes cost ~ rows)
    relax_temperature_at = None  # strict mode: _check_options guarantees relax_strength == 0
    if relax_strength:
        def relax_temperature_at(step_index: torch.Tensor) -> torch.Tensor:
            return relax_temperature_sigma(sigmas[step_index], sigmas[step_index + 1], relax_strength)
    proposed = torch.zeros(total_steps, dtype=torch.long)
    accepted_count = torch.zeros(total_steps, dtype=torch.long)

    done = torch.zeros(n, dtype=torch.long)  # transitions committed per sample
    x = x.clone()
    last_denoised: torch.Tensor | None = None  # verified denoised at the state of the last committed transition
    while (done < total_steps).any():
        active = (done < total_steps).nonzero().flatten()
        a_count, a_done = active.numel(), done[active]
        k_round = policy.next_length(stats) if last_denoised is not None else 0
        drafts = torch.clamp(total_steps - a_done - 1, max=k_round)  # K_b: the bonus step must exist
        k_max = int(drafts.max())
        stats.draft_lengths.append(k_round)

        # 1. draft with the frozen drafter: every drafted state reuses the last verified denoised
        states = [x[active]]
        draft_means, draft_stds = [], []
        for j in range(k_max):
            rows = (drafts > j).nonzero().flatten()
            mean_p, std_p = ancestral_transition(
                states[j][rows], last_denoised[active][rows], sigmas[a_done[rows] + j], sigmas[a_done[rows] + j + 1]
            )
            next_state = states[j].clone()
            next_state[rows] = mean_p + std_p * step_noise(mean_p, generator)
            states.append(next_state)
            full_mean, full_std = torch.zeros_like(states[0]), torch.zeros_like(states[0])
            full_mean[rows], full_std[rows] = mean_p, std_p
            draft_means.append(full_mean)
            draft_stds.append(full_std)
            stats.drafter_calls += 1

        # 2. verify all (sample, position <= K_b) in one model call with per-row sigmas
        offsets, pair_a, pair_j = verification_layout(drafts)
        verify_x = torch.stack(states, dim=1)[pair_a, pair_j]
        verify_step = a_done[pair_a] + pair_j
        verify_sigma, verify_next = sigmas[verify_step], sigmas[verify_step + 1]
        denoised = model(verify_x, verify_sigma.to(x), **extra_args)
        mean_q, std_q = ancestral_transition(verify_x, denoised, verify_sigma, verify_next)
        stats.rounds += 1
        stats.sequential_dit_calls += 1
        stats.dit_states += pair_a.numel()
        stats.dit_rows += pair_a.numel()

        # 3. accept the longest prefix; the first rejection commits the coupled exact draw
        new_state, stop = accept_prefix(
            states, draft_means, draft_stds, drafts, offsets, mean_q, std_q, generator,
            step_of=lambda rows, j: a_done[rows] + j, temperature_of=relax_temperature_at,
            proposed=proposed, accepted_count=accepted_count,
        )

        # 4. commit
        x[active] = new_state
        done[active] = a_done + stop + 1
        if last_denoised is None:
            last_denoised = torch.zeros_like(x)
        last_denoised[active] = denoised[offsets + stop]
        stats.advance_histogram.update((stop + 1).tolist())
        if callback is not None:
            i = int(done.min()) - 1
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": last_denoised})

    stats.proposed_per_step = proposed.tolist()
    stats.accepted_per_step = accepted_count.tolist()
    stats.wall_time_s = time.perf_counter() - started
    if stats_sink is not None:
        stats_sink.append(stats)
    return x


def _check_inputs(x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict) -> None:
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D schedule with at least 2 values, got shape {tuple(sigmas.shape)}")
    if (sigmas[:-1] <= 0).any() or (sigmas[1:] > sigmas[:-1]).any():
        raise ValueError("sigmas must be positive and non-increasing (only the last one may be 0)")
    if x.shape[0] < 1 or not torch.isfinite(x).all():
        raise ValueError(f"x must hold at least one finite sample, got shape {tuple(x.shape)}")
    if extra_args.get("denoise_mask") is not None:
        raise ValueError("the FREE sampler does not support inpainting (a denoise mask); use a core sampler for masked latents")


def _generator(extra_args: dict, x: torch.Tensor) -> torch.Generator:
    """The run's generator: seeded by extra_args["seed"] (ComfyUI passes the node's seed) for determinism."""
    seed = extra_args.get("seed")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    return torch.Generator(device=x.device).manual_seed(int(seed))

