"""The few tensor transforms ComfyUI imports at module level, on plain torch."""

import enum

import torch
import torch.nn.functional as F


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def normalize(tensor, mean, std, inplace=False):
    shape = (-1, 1, 1)
    mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).reshape(shape)
    std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).reshape(shape)
    return tensor.sub_(mean).div_(std) if inplace else (tensor - mean) / std


def resize(img, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True):
    size = [size, size] if isinstance(size, int) else list(size)
    mode = interpolation.value if isinstance(interpolation, InterpolationMode) else str(interpolation)
    batch = img if img.ndim == 4 else img.unsqueeze(0)
    options = {} if mode.startswith("nearest") else {"align_corners": False, "antialias": antialias}
    out = F.interpolate(batch.float(), size=size, mode=mode, **options).to(img.dtype)
    return out if img.ndim == 4 else out.squeeze(0)


def rotate(img, angle, interpolation=InterpolationMode.NEAREST, expand=False, center=None, fill=None):
    if angle % 90:
        raise NotImplementedError("the test torchvision stand-in rotates by multiples of 90 degrees only")
    return torch.rot90(img, int(angle // 90) % 4, dims=(-2, -1))
