"""Pixel-space samples as images in the (N, H, W, 3) float [0, 1] layout that image tools (and ComfyUI) use."""

from __future__ import annotations

import torch


def samples_to_images(samples: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """(N, 3, H, W) samples in [-1, 1] to (N, H*scale, W*scale, 3) in [0, 1], upscaled by pixel repetition."""
    if samples.ndim != 4 or samples.shape[1] != 3:
        raise ValueError(
            f"expected pixel-space samples (N, 3, H, W), got shape {tuple(samples.shape)}; "
            "latents of a VAE model (4 channels) are decoded by a VAE decoder instead"
        )
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    images = ((samples.detach().float().cpu() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    if scale > 1:
        images = images.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return images.contiguous()
