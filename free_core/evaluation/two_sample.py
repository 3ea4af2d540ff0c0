"""Two-sample tests for "same law?" questions: energy distance with a permutation p-value."""

from __future__ import annotations

import torch


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| between samples (n, ...) and (m, ...)."""
    points, n = _as_points(x, y)
    membership = torch.zeros(points.shape[0], 1, dtype=points.dtype)
    membership[:n] = 1
    return float(_energy(torch.cdist(points, points), membership, n)[0])


def energy_test(x: torch.Tensor, y: torch.Tensor, permutations: int = 500, seed: int = 0) -> tuple[float, float]:
    """(energy distance, permutation p-value) for H0: x and y are drawn from the same distribution."""
    points, n = _as_points(x, y)
    distances = torch.cdist(points, points)
    total = points.shape[0]
    g = torch.Generator().manual_seed(seed)
    membership = torch.zeros(total, permutations + 1, dtype=points.dtype)
    membership[:n, 0] = 1
    for k in range(1, permutations + 1):
        membership[torch.randperm(total, generator=g)[:n], k] = 1
    statistics = _energy(distances, membership, n)
    exceed = int((statistics[1:] >= statistics[0]).sum())
    return float(statistics[0]), (1 + exceed) / (1 + permutations)


def _as_points(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    x, y = x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).double()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples have different dimensions: {x.shape[1]} and {y.shape[1]}")
    return torch.cat([x, y]), x.shape[0]


def _energy(distances: torch.Tensor, membership: torch.Tensor, n: int) -> torch.Tensor:
    """Energy distance for each column of a 0/1 membership matrix (1 = first sample)."""
    m = distances.shape[0] - n
    other = 1 - membership
    d_a = distances @ membership  # (N, P)
    d_b = distances @ other
    sum_aa = (membership * d_a).sum(0)
    sum_bb = (other * d_b).sum(0)
    sum_ab = (membership * d_b).sum(0)
    return 2 * sum_ab / (n * m) - sum_aa / (n * n) - sum_bb / (m * m)
