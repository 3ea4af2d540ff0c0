"""Maximal couplings of diagonal Gaussians: the accept/replace step of speculative sampling.

Given a draft x ~ p = N(mean_p, std_p^2), `maximal_coupling` returns y ~ q = N(mean_q, std_q^2)
exactly, with y = x (accepted) as often as any coupling allows: P(accept) = 1 - TV(p, q).

* Equal stds: reflection coupling. Accept with probability min(1, q(x)/p(x)); otherwise reflect x
  through the hyperplane bisecting the two means (in whitened coordinates). No loops.
* Unequal stds: accept with min(1, q(x)/p(x)); otherwise draw from the residual (q - p)+ / TV by
  rejection from q with acceptance 1 - min(1, p/q), in log space, in growing vectorized chunks.
  The loop is bounded: past `max_residual_candidates` it raises instead of returning a wrong law.
* Point masses (std 0, e.g. the final deterministic step) are coupled exactly: equal points are
  accepted, anything else is TV = 1 and y is drawn from q.

All work is per sample (dim 0) in float64; `y` is returned in `x_draft`'s dtype, and accepted rows
are `x_draft` itself, bit for bit.
"""

from __future__ import annotations

import torch

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
    named = {"mean_p": mean_p, "std_p": std_p, "mean_q": mean_q, "std_q": std_q}
    flat = {}
    for name, value in named.items():
        value = torch.as_tensor(value, device=x_draft.device)
        try:
            value = torch.broadcast_to(value, shape)
        except RuntimeError:
            raise ValueError(f"{name} with shape {tuple(value.shape)} does not broadcast to x_draft's shape {tuple(shape)}") from None
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or Inf")
        flat[name] = value.reshape(shape[0], -1).double()
    if not torch.isfinite(x_draft).all():
        raise ValueError("x_draft contains NaN or Inf")
    for name in ("std_p", "std_q"):
        if (flat[name] < 0).any():
            raise ValueError(f"{name} must be >= 0 everywhere")
    if max_residual_candidates < 1:
        raise ValueError(f"max_residual_candidates must be >= 1, got {max_residual_candidates}")
    n = shape[0]
    log_temperature_inv = _inverse_temperature(temperature, n, x_draft.device)

    x = x_draft.reshape(n, -1).double()
    mp, sp, mq, sq = flat["mean_p"], flat["std_p"], flat["mean_q"], flat["std_q"]
    point_p, point_q = sp == 0, sq == 0
    disjoint = ((point_p != point_q) | (point_p & point_q & (mp != mq))).any(dim=1)
    # Coordinates that are the same point mass under p and q carry no randomness: use unit std there.
    fixed = point_p & point_q
    sp = torch.where(fixed, torch.ones_like(sp), sp)
    sq = torch.where(fixed, torch.ones_like(sq), sq)
    same_std = (sp == sq).all(dim=1) & ~disjoint

    log_u = torch.log(torch.rand(n, dtype=torch.float64, device=x.device, generator=generator))
    y = torch.empty_like(x)
    accepted = torch.zeros(n, dtype=torch.bool, device=x.device)

    rows = same_std.nonzero().flatten()
    if rows.numel():
        y[rows], accepted[rows] = _reflection(x[rows], mp[rows], mq[rows], sp[rows], log_u[rows], log_temperature_inv[rows])

    rows = (~same_std & ~disjoint).nonzero().flatten()
    if rows.numel():
        y[rows], accepted[rows] = _residual(
            x[rows], mp[rows], sp[rows], mq[rows], sq[rows], log_u[rows], log_temperature_inv[rows],
            generator, max_residual_candidates,
        )

    rows = disjoint.nonzero().flatten()
    if rows.numel():
        noise = torch.randn(rows.numel(), x.shape[1], dtype=torch.float64, device=x.device, generator=generator)
        y[rows] = mq[rows] + sq[rows] * torch.where(fixed[rows], torch.zeros_like(noise), noise)

    y = y.reshape(shape).to(x_draft.dtype)
    y = torch.where(accepted.reshape(-1, *([1] * (len(shape) - 1))), x_draft, y)
    return y, accepted


def acceptance_probability_equal_std(delta: torch.Tensor | float) -> torch.Tensor:
    """1 - TV between N(0, I) and N(delta * e, I): 2 * Phi(-|delta| / 2)."""
    delta = torch.as_tensor(delta, dtype=torch.float64)
    return torch.erfc(delta.abs() / (2 * 2**0.5))


def _inverse_temperature(temperature: torch.Tensor | float | None, n: int, device: torch.device) -> torch.Tensor:
    if temperature is None:
        return torch.ones(n, dtype=torch.float64, device=device)
    temperature = torch.as_tensor(temperature, dtype=torch.float64, device=device)
    try:
        temperature = torch.broadcast_to(temperature.reshape(-1) if temperature.ndim else temperature, (n,))
    except RuntimeError:
        raise ValueError(f"temperature must be a scalar or have one value per sample ({n}), got {tuple(temperature.shape)}") from None
    if not torch.isfinite(temperature).all() or (temperature < 1).any():
        raise ValueError("temperature must be finite and >= 1 (1 is strict)")
    return 1.0 / temperature


def _reflection(x, mp, mq, std, log_u, inv_temperature):
    z = (x - mp) / std
    delta = (mq - mp) / std
    delta_norm = delta.norm(dim=1)
    safe_norm = torch.where(delta_norm > 0, delta_norm, torch.ones_like(delta_norm))
    e = delta / safe_norm[:, None]
    w = (z * e).sum(dim=1)  # projection of the whitened draft noise on the mean-difference direction
    log_ratio = delta_norm * w - 0.5 * delta_norm**2  # log q(x) - log p(x)
    accepted = log_u < log_ratio * inv_temperature
    reflected = mq + std * (z - 2 * e * w[:, None])
    return reflected, accepted


def _log_density_ratio(v, m_num, s_num, m_den, s_den):
    """log N(v; m_num, s_num) - log N(v; m_den, s_den), summed over coordinates."""
    num = -0.5 * ((v - m_num) / s_num) ** 2 - torch.log(s_num)
    den = -0.5 * ((v - m_den) / s_den) ** 2 - torch.log(s_den)
    return (num - den).sum(dim=-1)


def _residual(x, mp, sp, mq, sq, log_u, inv_temperature, generator, max_candidates):
    log_ratio = _log_density_ratio(x, mq, sq, mp, sp)  # log q(x) - log p(x)
    accepted = log_u < log_ratio * inv_temperature
    y = x.clone()
    pending = (~accepted).nonzero().flatten()
    chunk, used = 8, 0
    while pending.numel():
        if used >= max_candidates:
            raise ResidualSamplingError(
                f"residual sampling drew {used} candidates without success for {pending.numel()} sample(s); "
                "this has probability < 1/(e * max_residual_candidates): raise max_residual_candidates"
            )
        chunk = min(chunk, max_candidates - used)
        noise = torch.randn(pending.numel(), chunk, x.shape[1], dtype=x.dtype, device=x.device, generator=generator)
        candidates = mq[pending, None] + sq[pending, None] * noise  # (P, C, d) draws from q
        log_p_over_q = _log_density_ratio(candidates, mp[pending, None], sp[pending, None], mq[pending, None], sq[pending, None])
        log_v = torch.log(torch.rand(pending.numel(), chunk, dtype=x.dtype, device=x.device, generator=generator))
        keep = log_v >= torch.clamp(log_p_over_q, max=0.0)  # probability 1 - min(1, p/q)
        found = keep.any(dim=1)
        first = keep.float().argmax(dim=1)
        rows = found.nonzero().flatten()
        y[pending[rows]] = candidates[rows, first[rows]]
        pending = pending[~found]
        used += chunk
        chunk = min(chunk * 2, max(8, (1 << 22) // max(1, x.shape[1])))
    return y, accepted
