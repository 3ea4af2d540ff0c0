"""FREE for k-diffusion-style samplers (ComfyUI's SamplerCustom): speculative Euler-ancestral in sigma space.

k-diffusion (and ComfyUI's core samplers, which descend from it) see the model as a black box
`model(x, sigma_rows, **extra_args) -> denoised`. ComfyUI's `euler_ancestral` step out of sigma to sigma_next is
a Gaussian transition whose std depends on the schedule only, in one of two forms:

* variance-exploding models (EPS, V_PREDICTION: SD1.x, SDXL, the FREE DiT), x = x0 + sigma n:
      sigma_up = min(sigma_next, eta sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)),
      sigma_down = sqrt(sigma_next^2 - sigma_up^2)
      x_next ~ N((sigma_down / sigma) x + (1 - sigma_down / sigma) denoised,  (s_noise sigma_up)^2)
* rectified-flow models (ComfyUI's CONST sampling: Flux, SD3, Wan, Qwen-Image, ...), x = (1 - sigma) x0 + sigma n
  (`sample_euler_ancestral_RF`): sigma_down = sigma_next (1 + (sigma_next / sigma - 1) eta), r = sigma_down / sigma,
      x_next ~ N(((1 - sigma_next) / (1 - sigma_down)) (r x + (1 - r) denoised),
                 s_noise^2 (sigma_next^2 - sigma_down^2 (1 - sigma_next)^2 / (1 - sigma_down)^2))
Both end with x = denoised when the next sigma is 0.

The speculative version runs the round of `free_core.engine.rounds` with the frozen drafter (the last verified
`denoised` reused as is: it needs no features, so it works with any model) and verifies the drafted states of
all batch items in ONE model call with per-row sigmas. Draft and target stds are equal, so the reflection
coupling applies, and strict mode has exactly the law of `sample_euler_ancestral` with the same step.
Both samplers draw every random number from one generator seeded by `extra_args["seed"]`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .chunking import RowChunks
from .cost import cached_black_box_cost, cached_pass_cost, machine_key, time_calls
from .draft_policy import DraftLengthPolicy
from .host_transfer import to_device, to_host
from .rounds import check_options, run_rounds
from .sampling import step_noise
from .stats import SamplingStats, timed_callback

Model = Callable[..., torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up) of k-diffusion's ancestral step from sigma to sigma_next (elementwise)."""
    if not eta:
        return sigma_next, torch.zeros_like(sigma_next)
    ratio = torch.where(sigma > 0, sigma_next / sigma.clamp(min=1e-30), torch.zeros_like(sigma))
    sigma_up = torch.minimum(sigma_next, eta * sigma_next * torch.sqrt((1 - ratio**2).clamp(min=0)))
    sigma_down = torch.sqrt((sigma_next**2 - sigma_up**2).clamp(min=0))
    return sigma_down, sigma_up


@dataclass(frozen=True)
class AncestralStep:
    """ComfyUI's `euler_ancestral` step with its `eta` and `s_noise`, in the VE form or the rectified-flow form."""

    flow: bool = False
    eta: float = 1.0
    s_noise: float = 1.0

    def coefficients(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keep, pull, std) per element: x_next ~ N(keep * x + pull * denoised, std^2)."""
        sigma, sigma_next = sigma.double(), sigma_next.double()
        if self.flow:
            sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * self.eta)
            ratio = sigma_down / sigma
            rescale = (1 - sigma_next) / (1 - sigma_down) if self.eta > 0 else torch.ones_like(sigma)
            renoise = torch.sqrt((sigma_next**2 - sigma_down**2 * rescale**2).clamp(min=0))
            keep, pull = rescale * ratio, rescale * (1 - ratio)
            std = self.s_noise * renoise if self.eta > 0 else torch.zeros_like(sigma)
            last = sigma_next == 0
        else:
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, self.eta)
            keep = sigma_down / sigma
            pull, std = 1 - keep, self.s_noise * sigma_up
            last = sigma_down == 0  # k-diffusion then returns denoised itself, without noise
        zero = torch.zeros_like(sigma)
        return torch.where(last, zero, keep), torch.where(last, zero + 1, pull), torch.where(last, zero, std)

    def __call__(self, x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The transition N(mean, std^2) out of x (n, ...) at sigma; sigma, sigma_next are per sample (n,)."""
        shape = (-1, *([1] * (x.ndim - 1)))
        keep, pull, std = (c.to(x).reshape(shape) for c in self.coefficients(sigma, sigma_next))
        return keep * x + pull * denoised, std.expand_as(x)

    def temperature(self, sigma: torch.Tensor, sigma_next: torch.Tensor, strength: float) -> torch.Tensor:
        """Relax mode's kappa >= 1 per sample: 1 + strength * g / (1 + g), g = d mean / d denoised in units of std.

        The rule of `free_core.engine.relax` for the DDPM sampler, with g read off this step (float64).
        """
        if not strength >= 0 or strength == float("inf"):
            raise ValueError(f"relax_strength must be a finite number >= 0, got {strength!r}")
        _, pull, std = self.coefficients(sigma, sigma_next)
        saturation = torch.where(pull > 0, pull / (std + pull), torch.zeros_like(pull))
        return 1.0 + strength * saturation

    def check_stochastic(self) -> None:
        if not (self.eta > 0 and self.s_noise > 0):
            raise ValueError(
                f"eta={self.eta}, s_noise={self.s_noise} make every euler_ancestral step deterministic: FREE couples "
                "noisy transitions and has nothing to couple; use eta > 0 and s_noise > 0, or mode off"
            )


EULER_ANCESTRAL = AncestralStep()


class SigmaSpace:
    """Transitions over a sigma schedule for a black-box denoiser, drafted with its last verified `denoised`."""

    verified_finite: torch.Tensor | None = None  # a black box's outputs are not checked

    def __init__(self, model: Model, sigmas: torch.Tensor, extra_args: dict, step: AncestralStep, x: torch.Tensor,
                 row_groups: Callable[[torch.Tensor], torch.Tensor] | None = None, cfg_branches: int = 1):
        self.model, self.sigmas, self.extra_args, self.step = model, sigmas, extra_args, step
        self.row_groups, self.verify_calls, self.chunks = row_groups, 1, RowChunks("verification batch")
        self.total_steps, self.rows_per_state = len(sigmas) - 1, cfg_branches
        self.last_denoised = torch.zeros_like(x)

    def step_label(self, progress: torch.Tensor) -> torch.Tensor:
        return progress

    def begin_round(self, active: torch.Tensor) -> None:
        self.active = active

    def draft(self, rows, progress, state, previous):
        progress = progress.to(self.sigmas.device)
        return self.step(state, self.last_denoised[self.active[rows]], self.sigmas[progress], self.sigmas[progress + 1])

    def verify(self, states, progress, sample):
        progress = progress.to(self.sigmas.device)
        sigma = self.sigmas[progress]
        if self.row_groups is None:
            self.denoised = self.call_model(states, sigma)
            self.verify_calls = self.chunks.last_calls
        else:  # one call per group of rows that the model must condition alike (see batch_conditioning.py)
            # How many calls to make is the host's decision: it reads the groups (a second read of the device in
            # this round, besides the decisions) and sends each group's rows back.
            (groups,) = to_host([self.row_groups(sigma)])
            group_ids = np.unique(groups)
            self.denoised, self.verify_calls = torch.empty_like(states), 0
            self.group_rows = to_device([np.flatnonzero(groups == group) for group in group_ids], states.device)
            for rows in self.group_rows:
                self.denoised[rows] = self.call_model(states[rows], sigma[rows])
                self.verify_calls += self.chunks.last_calls
        return self.step(states, self.denoised, sigma, self.sigmas[progress + 1])

    def call_model(self, states: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The model on `states` at per-row `sigma`, in chunks of rows if the batch does not fit in memory."""
        return self.chunks(lambda a, b: self.model(states[a:b], sigma[a:b].to(states), **self.extra_args), states.shape[0])

    def commit(self, offsets: torch.Tensor, stop: torch.Tensor) -> None:
        self.last_denoised[self.active] = self.denoised[offsets + stop]

    def temperature(self, step_label: torch.Tensor, strength: float) -> torch.Tensor:
        step_label = step_label.to(self.sigmas.device)
        return self.step.temperature(self.sigmas[step_label], self.sigmas[step_label + 1], strength)


@torch.inference_mode()  # samples are never differentiated; cheaper per op than no_grad
def sample_euler_ancestral(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    step: AncestralStep = EULER_ANCESTRAL,
    stats_sink: list | None = None,
) -> torch.Tensor:
    """Plain Euler-ancestral: one model call per step; the law FREE strict reproduces."""
    extra_args = dict(extra_args or {})
    generator = _generator(extra_args, x)
    _check_inputs(x, sigmas, extra_args)
    started = time.perf_counter()
    n, steps = x.shape[0], len(sigmas) - 1
    stats = SamplingStats("euler-ancestral", steps, n)
    for i in range(steps):
        sigma, sigma_next = sigmas[i].expand(n), sigmas[i + 1].expand(n)
        denoised = model(x, sigma.to(x), **extra_args)
        mean, std = step(x, denoised, sigma, sigma_next)
        x = mean + std * step_noise(x, generator)
        stats.record_round(states=n, rows=n, advances=torch.ones(n, dtype=torch.long))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
    stats.wall_time_s = time.perf_counter() - started
    if stats_sink is not None:
        stats_sink.append(stats)
    return x


@torch.inference_mode()  # samples are never differentiated; cheaper per op than no_grad
def sample_free_euler_ancestral(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    step: AncestralStep = EULER_ANCESTRAL,
    draft_length: int | DraftLengthPolicy = 6,
    mode: str = "strict",
    relax_strength: float = 0.0,
    stats_sink: list | None = None,
    cost_key: object | None = None,
    row_groups: Callable[[torch.Tensor], torch.Tensor] | None = None,
    cfg_branches: int = 1,
    on_round: Callable[[SamplingStats], None] | None = None,
    measure_plain_step: bool = False,
    drafter: Any = None,
    tapped: Any = None,
    model_input: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Speculative Euler-ancestral: one batched verification call per round, maximal coupling.

    Drafts are frozen (the last verified `denoised`), or, given a `drafter` (a TokenDrafter) and `tapped` (the
    model as a TappedModel), learned: features drafted and replayed through the model's tail
    (`engine.tapped_sigma_space`; `model_input(x, sigma_rows)` is what the model's embedding sees of a state, x itself
    by default). Either way strict mode has the law of `sample_euler_ancestral`.

    `callback` gets k-diffusion's dict after each round with `i` = the last step every sample has
    committed, so a progress bar advances by the steps actually committed. `cost_key` names the model for the
    adaptive policy's cost curve, kept on disk (default: the model object's id, good for this process only; give
    its architecture to share the curve across processes). `row_groups(sigma_rows)` gives a group
    id per verification row for a model that conditions a batch by its first row (ComfyUI's timestep ranges):
    each group is verified in its own call, and the statistics count every call. `cfg_branches` is how many
    model rows the black box evaluates per state (2 when it folds classifier-free guidance), for the row count;
    `on_round(stats)` sees the statistics after every round. `measure_plain_step` times one plain call at the
    batch size after sampling (now, under the present load), for the wall clock against the plain sampler.
    """
    extra_args = dict(extra_args or {})
    generator = _generator(extra_args, x)
    _check_inputs(x, sigmas, extra_args)
    policy = check_options(draft_length, mode, relax_strength)
    step.check_stochastic()
    started = time.perf_counter()
    n, total_steps = x.shape[0], len(sigmas) - 1
    sigmas = sigmas.to(x.device)
    stats = SamplingStats(f"free-euler-ancestral-{mode}", total_steps, n, draft_length=policy.label,
                          drafter="frozen" if drafter is None else "learned")
    callback = timed_callback(callback, stats)
    if (drafter is None) != (tapped is None):
        raise ValueError("a learned drafter needs the tapped model and the tapped model a drafter: give both or neither")
    if drafter is None:
        space = SigmaSpace(model, sigmas, extra_args, step, x, row_groups, cfg_branches)
    else:
        from .tapped_sigma_space import TappedSigmaSpace, drafting_pass  # here: that module builds on this one
        space = TappedSigmaSpace(model, tapped, drafter, sigmas, extra_args, step, x, row_groups, cfg_branches,
                                 **({} if model_input is None else {"model_input": model_input}))

    def call(rows: int) -> None:
        model(x[:1].expand(rows, *x.shape[1:]).clone(), sigmas[:1].expand(rows).to(x), **extra_args)

    def measure(row_counts: list[int]) -> dict[int, float]:
        key = [f"object {id(model)}" if cost_key is None else cost_key, str(x.dtype), list(x.shape[1:]), cfg_branches]
        return cached_black_box_cost(key, call, row_counts, x.device, persist=cost_key is not None)

    def measure_draft() -> float:  # a frozen draft is the transition itself; a learned one adds the tail replay
        sigma, sigma_next = sigmas[:1].expand(n), sigmas[1:2].expand(n)
        key = {"kind": "sigma drafting pass", "flow": step.flow, "dtype": str(x.dtype), "shape": list(x.shape),
               **machine_key(x.device)}
        if drafter is None:
            return cached_pass_cost(key, lambda: step(x, x, sigma, sigma_next), x.device, n)
        key.update(drafter=repr(drafter.config), model=f"object {id(model)}" if cost_key is None else cost_key)
        one_pass = drafting_pass(tapped, drafter, x, sigmas[:1].expand(n).to(x), extra_args)
        return cached_pass_cost(key, lambda: step(x, one_pass(), sigma, sigma_next), x.device, n,
                                persist=cost_key is not None)

    policy.start_run(n, measure, measure_draft)  # an adaptive K reads the model's cost curve, measured once per machine
    stats.calibration_s = time.perf_counter() - started  # measuring the device's costs: once per machine, not sampling
    started += stats.calibration_s

    def after_round(x_now: torch.Tensor, progress: torch.Tensor, stats_now: SamplingStats) -> None:
        if on_round is not None:
            on_round(stats_now)
        if callback is not None:
            i = int(progress.min()) - 1
            callback({"x": x_now, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": space.last_denoised})

    x = run_rounds(space, x, generator, policy, stats, relax_strength, after_round)
    stats.wall_time_s = time.perf_counter() - started
    stats.chunk_rows = space.chunks.max_rows
    if measure_plain_step:  # timed now, under the machine's present load (one call after a warm-up)
        stats.plain_step_s = time_calls(call, [n], x.device, repeats=1)[n]
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
