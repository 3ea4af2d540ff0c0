"""The 1000 ImageNet-1k class names in index order (the labels of the official DiT-XL/2 checkpoints)."""

from __future__ import annotations

from pathlib import Path

IMAGENET_CLASSES: tuple[str, ...] = tuple(
    line.strip() for line in (Path(__file__).with_name("imagenet_classes.txt")).read_text(encoding="utf-8").splitlines() if line.strip()
)
if len(IMAGENET_CLASSES) != 1000:
    raise RuntimeError(f"imagenet_classes.txt must list 1000 class names, found {len(IMAGENET_CLASSES)}; the package is damaged")
