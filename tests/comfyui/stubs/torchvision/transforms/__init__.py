"""Compose / Normalize / Resize over the functional stand-ins."""

import torch

from . import functional  # noqa: F401
from .functional import InterpolationMode


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x


class Normalize(torch.nn.Module):
    def __init__(self, mean, std, inplace=False):
        super().__init__()
        self.mean, self.std, self.inplace = mean, std, inplace

    def forward(self, x):
        return functional.normalize(x, self.mean, self.std, self.inplace)


class Resize(torch.nn.Module):
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True):
        super().__init__()
        self.size, self.interpolation, self.antialias = size, interpolation, antialias

    def forward(self, x):
        return functional.resize(x, self.size, self.interpolation, antialias=self.antialias)
