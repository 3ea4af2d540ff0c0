"""Image grids and PNG files without an imaging library (zlib + the PNG chunk format)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] to (N, H, W, 3) uint8; values outside the range saturate, as any display does."""
    return ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def grid(images: torch.Tensor, columns: int = 8, padding: int = 2) -> torch.Tensor:
    """Tile (N, 3, H, W) images in [-1, 1] into one (H', W', 3) uint8 image."""
    pixels = to_uint8(images)
    n, h, w, c = pixels.shape
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    canvas = torch.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), 255, dtype=torch.uint8)
    for k in range(n):
        r, col = divmod(k, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        canvas[top : top + h, left : left + w] = pixels[k]
    return canvas


def write_png(path: str | Path, pixels: torch.Tensor, scale: int = 1) -> Path:
    """Write an (H, W, 3) uint8 image as PNG, optionally upscaled by pixel repetition."""
    if pixels.dtype != torch.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"write_png needs an (H, W, 3) uint8 tensor, got {tuple(pixels.shape)} {pixels.dtype}")
    if scale > 1:
        pixels = pixels.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].contiguous().numpy().tobytes() for row in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path
