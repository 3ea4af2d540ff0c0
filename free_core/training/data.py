"""Procedural class-conditional images: shapes and textures generated in code, deterministic by seed.

Images are RGB in [-1, 1]. Each class is one shape or texture drawn with a random foreground and
background colour, position, size and (for textures) period and phase.
"""

from __future__ import annotations

import torch

CLASS_NAMES = (
    "disk",
    "square",
    "triangle",
    "ring",
    "plus",
    "horizontal stripes",
    "vertical stripes",
    "checkerboard",
    "diagonal stripes",
    "polka dots",
)
NUM_CLASSES = len(CLASS_NAMES)
_EDGE_SHARPNESS = 1.5  # pixels^-1: anti-aliased edges that a 32x32 model can reproduce


def _soft(signed_distance: torch.Tensor) -> torch.Tensor:
    """Coverage from a signed distance in pixels (positive inside)."""
    return torch.sigmoid(_EDGE_SHARPNESS * signed_distance)


def _masks(labels: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    n = labels.shape[0]
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    yy, xx = yy.expand(n, size, size), xx.expand(n, size, size)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, generator=g)).view(n, 1, 1)

    radius = uniform(0.18, 0.36) * size
    cy = uniform(0.0, 1.0) * (size - 2 * radius) + radius
    cx = uniform(0.0, 1.0) * (size - 2 * radius) + radius
    dy, dx = yy - cy, xx - cx
    period = uniform(5.0, 9.0)
    phase = uniform(0.0, 1.0) * period
    angle = uniform(0.0, 2 * torch.pi)

    def stripes(coordinate: torch.Tensor) -> torch.Tensor:
        wave = torch.cos(2 * torch.pi * (coordinate + phase) / period)
        return torch.sigmoid(4.0 * wave)

    distance = torch.sqrt(dx**2 + dy**2)
    # Equilateral-ish triangle: inside three rotated half-planes.
    tri = []
    for k in range(3):
        theta = angle + 2 * torch.pi * k / 3
        tri.append(radius * 0.5 - (dx * torch.cos(theta) + dy * torch.sin(theta)))
    arm = radius * 0.35
    candidates = torch.stack(
        [
            _soft(radius - distance),
            _soft(torch.minimum(radius * 0.85 - dx.abs(), radius * 0.85 - dy.abs())),
            _soft(torch.minimum(torch.minimum(tri[0], tri[1]), tri[2]) * 1.0),
            _soft(torch.minimum(radius - distance, distance - radius * 0.55)),
            _soft(torch.maximum(
                torch.minimum(arm - dx.abs(), radius - dy.abs()), torch.minimum(arm - dy.abs(), radius - dx.abs())
            )),
            stripes(yy),
            stripes(xx),
            torch.sigmoid(4.0 * torch.cos(torch.pi * (xx + phase) / (period / 2 + 1))
                          * torch.cos(torch.pi * (yy + phase) / (period / 2 + 1)) * 2),
            stripes((xx + yy) / 1.41421356),
            _soft(period * 0.28 - torch.sqrt(
                (torch.remainder(xx + phase, period) - period / 2) ** 2 + (torch.remainder(yy + phase, period) - period / 2) ** 2
            )),
        ],
        dim=1,
    )  # (N, classes, H, W)
    return candidates[torch.arange(n), labels]  # (N, H, W)


def _colours(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background colours at least 0.6 apart (RGB in [0, 1]) so every shape is visible."""
    foreground = torch.rand(n, 3, generator=g)
    background = torch.rand(n, 3, generator=g)
    for _ in range(8):
        too_close = (foreground - background).norm(dim=1) < 0.6
        if not too_close.any():
            break
        background = torch.where(too_close[:, None], torch.rand(n, 3, generator=g), background)
    too_close = (foreground - background).norm(dim=1) < 0.6
    background = torch.where(too_close[:, None], 1.0 - foreground.round(), background)
    return foreground, background


def make_images(labels: torch.Tensor, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Images (N, 3, size, size) in [-1, 1] for the given class labels, deterministic in `seed`."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D tensor of class indices, got shape {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"labels must lie in [0, {NUM_CLASSES}), got min {labels.min()} max {labels.max()}")
    g = torch.Generator().manual_seed(seed)
    mask = _masks(labels, size, g).unsqueeze(1)  # (N, 1, H, W)
    foreground, background = _colours(labels.shape[0], g)
    image = mask * foreground[:, :, None, None] + (1 - mask) * background[:, :, None, None]
    return image * 2 - 1


ClassWeights = torch.Tensor | list[float] | tuple[float, ...]


def make_batch(n: int, size: int = 32, seed: int = 0,
               class_weights: ClassWeights | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images with random labels, uniform or drawn in proportion to `class_weights`: (images, labels),
    deterministic in `seed`."""
    g = torch.Generator().manual_seed(seed)
    if class_weights is None:
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    else:
        labels = torch.multinomial(check_class_weights(class_weights), n, replacement=True, generator=g)
    return make_images(labels, size=size, seed=seed + 1), labels


def check_class_weights(class_weights: ClassWeights) -> torch.Tensor:
    """The weights as a float tensor, or a ValueError naming what is wrong with them."""
    weights = torch.as_tensor(class_weights, dtype=torch.float64)
    if weights.shape != (NUM_CLASSES,):
        raise ValueError(f"class weights need one value per class ({NUM_CLASSES}: {', '.join(CLASS_NAMES)}), "
                         f"got {weights.numel()}")
    if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"class weights must be finite, >= 0 and not all 0, got {weights.tolist()}")
    return weights
