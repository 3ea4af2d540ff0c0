"""A round's traffic between the host and the sampling device: small integer arrays, each direction in one copy.

The host decides a round's layout (which samples, how many drafts each, which verification rows) from its own copy
of the progress, in numpy; `to_device` sends those arrays in one copy that does not make the host wait for the
device (pinned memory, non-blocking, on CUDA). `to_host` brings the device's answers back in one copy, which waits
for the device: a round calls it once, for its accept decisions. On a CPU both are plain copies.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def to_device(arrays: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """The integer `arrays` as int64 tensors on `device`, sent in one copy (views of one tensor, in order)."""
    lengths = [int(np.size(array)) for array in arrays]
    packed = torch.from_numpy(np.concatenate([np.asarray(array, dtype=np.int64).reshape(-1) for array in arrays]
                                             or [np.zeros(0, dtype=np.int64)]))  # a fresh array: nothing else writes it
    if device.type == "cuda":  # a copy from pageable memory may wait for the device; from pinned memory it does not
        packed = packed.pin_memory()
    packed = packed.to(device, non_blocking=True)
    return list(packed.split(lengths))


def to_host(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """The integer (or bool) `tensors` as int64 numpy arrays, in one copy: the host waits for the device here."""
    lengths = [tensor.numel() for tensor in tensors]
    packed = np.asarray(torch.cat([tensor.reshape(-1).long() for tensor in tensors]).tolist(), dtype=np.int64)
    return np.split(packed, np.cumsum(lengths)[:-1])
