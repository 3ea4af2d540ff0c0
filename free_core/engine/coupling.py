"""Maximal couplings of diagonal Gaussians: the accept/replace step of speculative sampling.

Given a draft x ~ p = N(mean_p, std_p^2), a maximal coupling returns y ~ q = N(mean_q, std_q^2)
exactly, with y = x (accepted) as often as any coupling allows: P(accept) = 1 - TV(p, q). It has two parts,
exposed separately so that a speculative round can decide every draft of a round in one batch and replace
only the first rejection of each chain:

* `decide_drafts`: accept x with probability min(1, q(x)/p(x)) (log space; relax mode tempers the
  ratio to (q/p)^(1/temperature)), and say how a rejection would be replaced. A draft whose density is not
  finite, or whose law has a point mass q lacks (TV = 1), is never accepted. (`coupling_decisions`: the
  decisions alone.)
* `coupling_replacements`: y for a rejected x, drawn from the residual (q - p)+ / TV:
  - equal stds: the reflection of x through the hyperplane bisecting the two means (whitened coordinates);
    a rejected x reflected this way has exactly the residual law, so no random numbers are used;
  - unequal stds: rejection sampling from q with acceptance 1 - min(1, p/q), in growing vectorized chunks
    (about 1/TV candidates), bounded: past `max_residual_candidates` it raises instead of returning a wrong law;
  - disjoint laws (point masses, e.g. the final deterministic step): a fresh draw from q;
  - a coordinate that is the same point mass under both laws stays there in every case.
Because the two parts use independent random numbers, deciding all drafts first and replacing only the
rejections that are used is the same coupling, with the same law.

Numerics: the log-density ratio sums d squared differences; it is computed in float64 so that its rounding
(relative 1e-16 x d) stays far below any acceptance probability that matters, whatever the states' dtype
(float32 states of a DiT, or bf16 models whose outputs are cast to float32). `y` is returned in `x_draft`'s
dtype, and accepted rows are `x_draft` itself, bit for bit.

`maximal_coupling` composes the two and validates its inputs: the public entry point. The speculative
round calls the two parts directly on tensors it built itself (shapes and dtypes right by construction;
NaN drafts are rejected by `decide_drafts`, NaN verified outputs are refused by the round).
"""

from __future__ import annotations

import numpy as np
import torch

from .host_transfer import to_device, to_host

DEFAULT_MAX_RESIDUAL_CANDIDATES = 1 << 20


class ResidualSamplingError(RuntimeError):
    """The residual rejection sampler used up its candidate budget (probability < 1 / (e * budget))."""


def maximal_coupling(
    x_draft: torch.Tensor,
    mean_p: torch.Tensor,
    std_p: torch.Tensor,
    mean_q: torch.Tensor,
    std_q: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    temperature: torch.Tensor | float | None = None,
    max_residual_candidates: int = DEFAULT_MAX_RESIDUAL_CANDIDATES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Couple a draft x ~ N(mean_p, std_p^2) with N(mean_q, std_q^2): returns (y, accepted).

    `temperature` (per sample, >= 1; None or 1 means strict) tempers the acceptance ratio to
    min(1, (q/p)^(1/temperature)): relax mode. With it y no longer has the law of q on acceptance.
    """
    if x_draft.ndim < 1 or x_draft.shape[0] == 0:
        raise ValueError(f"x_draft must have a sample dimension (dim 0) of size >= 1, got shape {tuple(x_draft.shape)}")
    shape = x_draft.shape
    laws = []
    for name, value in {"mean_p": mean_p, "std_p": std_p, "mean_q": mean_q, "std_q": std_q}.items():
        value = torch.as_tensor(value, device=x_draft.device)
        try:
            value = torch.broadcast_to(value, shape)
        except RuntimeError:
            raise ValueError(f"{name} with shape {tuple(value.shape)} does not broadcast to x_draft's shape {tuple(shape)}") from None
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or Inf")
        if name.startswith("std") and (value < 0).any():
            raise ValueError(f"{name} must be >= 0 everywhere")
        laws.append(value)
    if not torch.isfinite(x_draft).all():
        raise ValueError("x_draft contains NaN or Inf")
    if max_residual_candidates < 1:
        raise ValueError(f"max_residual_candidates must be >= 1, got {max_residual_candidates}")
    inverse_temperature = _inverse_temperature(temperature, shape[0], x_draft.device)
    accepted, kinds = decide_drafts(x_draft, *laws, generator, inverse_temperature)
    y = x_draft.clone()
    rejected_mask_h, kinds_h = to_host([~accepted, kinds])
    rejected_h = np.flatnonzero(rejected_mask_h)
    if rejected_h.size:
        (rejected,) = to_device([rejected_h], x_draft.device)
        y[rejected] = coupling_replacements(x_draft[rejected], *(law[rejected] for law in laws), generator,
                                            max_residual_candidates, kinds=kinds_h[rejected_h])
    return y, accepted


# How `coupling_replacements` draws a rejected row: the reflection (equal stds), the residual's rejection sampler
# (unequal stds), or afresh from q (a point mass one law lacks, or a draft that is not finite).
REFLECTION, RESIDUAL, FRESH = 0, 1, 2


def decide_drafts(x_draft: torch.Tensor, mean_p: torch.Tensor, std_p: torch.Tensor, mean_q: torch.Tensor,
                  std_q: torch.Tensor, generator: torch.Generator | None,
                  inverse_temperature: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted, kinds) for each draft (dim 0): accepted with probability min(1, (q(x)/p(x))^inverse_temperature),
    one uniform per draft; kinds says how it would be replaced if rejected (REFLECTION, RESIDUAL or FRESH), so
    that a round reads both with its one read of the device."""
    n = x_draft.shape[0]
    x, mp, sp, mq, sq = _flat(x_draft, mean_p, std_p, mean_q, std_q)
    log_ratio = _log_density_ratio(x, mp, sp, mq, sq)
    regular = torch.isfinite(log_ratio)  # False exactly where one law has a point mass the other lacks, or x is no finite point of p
    if inverse_temperature is not None:
        log_ratio = log_ratio * inverse_temperature
    log_u = torch.log(torch.rand(n, dtype=torch.float64, device=x.device, generator=generator))
    accepted = (log_u < log_ratio) & regular
    return accepted, _kinds(sp, sq, regular)


def coupling_decisions(x_draft: torch.Tensor, mean_p: torch.Tensor, std_p: torch.Tensor, mean_q: torch.Tensor,
                       std_q: torch.Tensor, generator: torch.Generator | None,
                       inverse_temperature: torch.Tensor | None = None) -> torch.Tensor:
    """Accept each draft (dim 0) with probability min(1, (q(x)/p(x))^inverse_temperature): one uniform per draft."""
    return decide_drafts(x_draft, mean_p, std_p, mean_q, std_q, generator, inverse_temperature)[0]


def coupling_replacements(x_draft: torch.Tensor, mean_p: torch.Tensor, std_p: torch.Tensor, mean_q: torch.Tensor,
                          std_q: torch.Tensor, generator: torch.Generator | None,
                          max_residual_candidates: int = DEFAULT_MAX_RESIDUAL_CANDIDATES,
                          kinds: np.ndarray | None = None) -> torch.Tensor:
    """Draws from the residual (q - p)+ / TV for drafts (dim 0) that `coupling_decisions` rejected, in x_draft's dtype.

    `kinds` (host, one per row: the kinds `decide_drafts` gave these rows) saves the host the one read of the
    device that sorting the rows into reflection, residual and fresh draws takes otherwise.
    """
    shape, n = x_draft.shape, x_draft.shape[0]
    x, mp, sp, mq, sq = _flat(x_draft, mean_p, std_p, mean_q, std_q)
    if kinds is None:
        (kinds,) = to_host([_kinds(sp, sq, torch.isfinite(_log_density_ratio(x, mp, sp, mq, sq)))])
    # Coordinates that are the same point mass under p and q carry no randomness: whitened with unit std, and y = mean_q.
    fixed = _shared_point_masses(mp, sp, mq, sq)
    draws = {REFLECTION: _reflection, FRESH: lambda *rows: _fresh(*rows, generator),
             RESIDUAL: lambda *rows: _residual(*rows, generator, max_residual_candidates)}
    y = None
    for kind, draw in draws.items():
        rows_h = np.flatnonzero(kinds == kind)
        if rows_h.size == n:  # one kind for every row (the usual case): whole tensors, no index copies
            y = draw(x, mp, sp, mq, sq, fixed)
        elif rows_h.size:
            y = torch.empty(x.shape, dtype=torch.float64, device=x.device) if y is None else y
            (rows,) = to_device([rows_h], x.device)
            y[rows] = draw(x[rows], mp[rows], sp[rows], mq[rows], sq[rows], fixed[rows])
    return y.reshape(shape).to(x_draft.dtype)


def acceptance_probability_equal_std(delta: torch.Tensor | float) -> torch.Tensor:
    """1 - TV between N(0, I) and N(delta * e, I): 2 * Phi(-|delta| / 2)."""
    delta = torch.as_tensor(delta, dtype=torch.float64)
    return torch.erfc(delta.abs() / (2 * 2**0.5))


def _kinds(sp: torch.Tensor, sq: torch.Tensor, regular: torch.Tensor) -> torch.Tensor:
    """REFLECTION, RESIDUAL or FRESH per row (`regular`: the row's log-density ratio is finite)."""
    return torch.where(regular, torch.where((sp == sq).all(dim=1), REFLECTION, RESIDUAL), FRESH)


def _shared_point_masses(mp: torch.Tensor, sp: torch.Tensor, mq: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    """The coordinates that are the same point mass under p and q (std 0 under both, equal means)."""
    return (sp + sq == 0) & (mp == mq)


def _flat(*tensors: torch.Tensor) -> list[torch.Tensor]:
    n = tensors[0].shape[0]
    return [t.reshape(n, -1) for t in tensors]


def _log_density_ratio(x, mp, sp, mq, sq) -> torch.Tensor:
    """log q(x) - log p(x) per row of flattened (n, d) diagonal Gaussians, summed in float64.

    It is not finite exactly where the coupling must draw afresh from q, with no test of its own (IEEE arithmetic
    does it): a point mass of one law that the other lacks makes a coordinate's z = 0/0 or its log-std ratio
    infinite against an infinite square, and a non-finite x, mean_p or std_p makes a NaN or an infinite term.
    Coordinates that are the same point mass under both laws (std 0 and equal means: a final deterministic step)
    contribute 0.
    """
    fixed = _shared_point_masses(mp, sp, mq, sq)
    x, mp, sp, mq, sq = (t.double() for t in (x, mp, sp, mq, sq))
    z_p, z_q = (x - mp) / sp, (x - mq) / sq
    terms = z_p.square() - z_q.square() + 2 * torch.log(sp / sq)
    return 0.5 * torch.where(fixed, 0.0, terms).sum(dim=1)


def _inverse_temperature(temperature: torch.Tensor | float | None, n: int, device: torch.device) -> torch.Tensor | None:
    if temperature is None:
        return None
    temperature = torch.as_tensor(temperature, dtype=torch.float64, device=device)
    try:
        temperature = torch.broadcast_to(temperature.reshape(-1) if temperature.ndim else temperature, (n,))
    except RuntimeError:
        raise ValueError(f"temperature must be a scalar or have one value per sample ({n}), got {tuple(temperature.shape)}") from None
    if not torch.isfinite(temperature).all() or (temperature < 1).any():
        raise ValueError("temperature must be finite and >= 1 (1 is strict)")
    return 1.0 / temperature


def _whitened(std: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    return torch.where(fixed, 1.0, std.double())


def _reflection(x, mp, sp, mq, sq, fixed):
    """x reflected through the hyperplane bisecting mp and mq, in coordinates whitened by the common std."""
    std = _whitened(sp, fixed)
    x, mp, mq = x.double(), mp.double(), mq.double()
    z = (x - mp) / std
    delta = (mq - mp) / std
    delta_norm = delta.norm(dim=1)
    e = delta / torch.where(delta_norm > 0, delta_norm, torch.ones_like(delta_norm))[:, None]
    w = (z * e).sum(dim=1)  # projection of the whitened draft noise on the mean-difference direction
    return mq + std * (z - 2 * e * w[:, None])


def _fresh(x, mp, sp, mq, sq, fixed, generator):
    """A draw from q alone (TV = 1); q's point-mass coordinates are its mean."""
    noise = torch.randn(mq.shape, dtype=torch.float64, device=mq.device, generator=generator)
    return mq.double() + sq.double() * noise


def _residual(x, mp, sp, mq, sq, fixed, generator, max_candidates):
    """Draws from (q - p)+ / TV by rejection from q: a candidate is kept with probability 1 - min(1, p/q).

    A candidate is y = mq + sq * eps with eps ~ N(0, I), so log p(y) - log q(y) is a quadratic in eps with
    per-row coefficients computed once: sum(A eps^2 + B eps) + C, A = (1 - r^2) / 2, B = -r delta, C = sum(log r
    - delta^2 / 2), where r = sq / sp and delta = (mq - mp) / sp (whitened: a coordinate that is the same point
    mass under both laws has r = 1 and delta = 0, and y = mq there). Only the kept candidate is formed. eps is
    drawn in float32 (the precision of the plain sampler's own noise; several times faster to draw on a CPU) and
    the quadratic is summed in float64.
    """
    white_p = _whitened(sp, fixed)
    mp, mq, sq = mp.double(), mq.double(), sq.double()
    ratio, delta = _whitened(sq, fixed) / white_p, (mq - mp) / white_p
    quadratic, linear = 0.5 * (1 - ratio**2), -ratio * delta
    constant = (torch.log(ratio) - 0.5 * delta**2).sum(dim=1)
    y = torch.empty_like(mq)
    pending_rows = np.arange(mq.shape[0])  # on the host: the next chunk's shape depends on which rows are done
    # Most rejected drafts need one or two candidates (TV is not small where a draft is rejected), so a CPU, where
    # every candidate's d normal numbers cost time, starts with a few; a GPU draws 32 for the price of 4 and starts
    # there, since each further chunk is a wait for the device. The law is that of the first kept candidate either way.
    chunk, used = (4 if mq.device.type == "cpu" else 32), 0
    while pending_rows.size:
        if used >= max_candidates:
            raise ResidualSamplingError(
                f"residual sampling drew {used} candidates without success for {pending_rows.size} sample(s); "
                "this has probability < 1/(e * max_residual_candidates): raise max_residual_candidates"
            )
        chunk = min(chunk, max_candidates - used)
        eps = torch.randn(pending_rows.size, chunk, mq.shape[1], device=mq.device, generator=generator).double()  # (P, C, d)
        log_p_over_q = (eps * (quadratic[:, None] * eps + linear[:, None])).sum(-1) + constant[:, None]
        log_v = torch.log(torch.rand(pending_rows.size, chunk, dtype=mq.dtype, device=mq.device, generator=generator))
        keep = log_v >= log_p_over_q  # probability 1 - min(1, p/q) (log_v < 0 <= a positive log_p_over_q never keeps)
        (found,) = to_host([keep.any(dim=1)])  # the chunk's one read of the device
        found = found.astype(bool)
        if found.all():  # every pending row found its candidate: no index copies
            kept_eps = eps[torch.arange(found.size, device=mq.device), keep.float().argmax(dim=1)]
            if pending_rows.size == y.shape[0]:
                return mq + sq * kept_eps
            (kept,) = to_device([pending_rows], mq.device)
            y[kept] = mq + sq * kept_eps
            return y
        if found.any():
            rows, kept, still = to_device([np.flatnonzero(found), pending_rows[found], np.flatnonzero(~found)], mq.device)
            y[kept] = mq[rows] + sq[rows] * eps[rows, keep[rows].float().argmax(dim=1)]
            mq, sq, quadratic, linear, constant = (t[still] for t in (mq, sq, quadratic, linear, constant))
            pending_rows = pending_rows[~found]
        used += chunk
        chunk = min(chunk * 2, max(32, (1 << 22) // max(1, mq.shape[1])))
    return y
