"""The demo's picture: one labelled row of samples per sampler, one column per requested class (Pillow)."""

from __future__ import annotations

from pathlib import Path

import torch

from .image_tensors import samples_to_images

PADDING, LABEL_WIDTH, HEADER_HEIGHT = 4, 112, 18
BACKGROUND, INK = (255, 255, 255), (30, 30, 30)


def labelled_grid(rows: dict[str, torch.Tensor], column_names: list[str], scale: int = 4):
    """A PIL image: row titles on the left, column names on top, each row's (N, 3, H, W) samples in [-1, 1]."""
    from PIL import Image, ImageDraw

    pictures = {title: samples_to_images(samples, scale) for title, samples in rows.items()}
    n, side = len(column_names), next(iter(pictures.values())).shape[1]
    if any(images.shape[0] != n for images in pictures.values()):
        raise ValueError(f"every row needs {n} samples, one per column name")
    width = LABEL_WIDTH + n * (side + PADDING) + PADDING
    height = HEADER_HEIGHT + len(pictures) * (side + PADDING) + PADDING
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for column, name in enumerate(column_names):
        left = LABEL_WIDTH + PADDING + column * (side + PADDING)
        draw.text((left, 4), name[: max(4, side // 6)], fill=INK)  # the default font is about 6 px per letter
    for row, (title, images) in enumerate(pictures.items()):
        top = HEADER_HEIGHT + row * (side + PADDING)
        draw.text((PADDING, top + side // 2 - 6), title, fill=INK)
        pixels = (images * 255).round().to(torch.uint8).numpy()
        for column in range(n):
            canvas.paste(Image.fromarray(pixels[column]), (LABEL_WIDTH + PADDING + column * (side + PADDING), top))
    return canvas


def save_labelled_grid(path: str | Path, rows: dict[str, torch.Tensor], column_names: list[str], scale: int = 4) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(rows, column_names, scale).save(path)
    return path
