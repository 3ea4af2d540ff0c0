"""A row-independent model call that does not fit in memory, run in chunks of rows instead.

A verification batch holds up to (K + 1) x batch x CFG rows, which may not fit where one plain step does. The
DiT (and any denoiser the samplers accept) treats rows independently, so the same rows evaluated in smaller
chunks give the same outputs: on an out-of-memory error the chunk is halved and the call carried on from the
first row not yet evaluated, and the chunk size that fit is kept for the rest of the run. Only out-of-memory
errors are caught; a single row that does not fit is re-raised saying so.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import torch

LOG = logging.getLogger("free_core")
OUT_OF_MEMORY = (torch.OutOfMemoryError, torch.cuda.OutOfMemoryError)  # the same class in torch >= 2.5

Outputs = TypeVar("Outputs", torch.Tensor, tuple[torch.Tensor, ...])


class RowChunks:
    """Runs `call(start, stop)` over rows 0..n in the largest chunks that fit; remembers that size for the run."""

    def __init__(self, what: str = "verification batch"):
        self.what = what
        self.max_rows: int | None = None  # None until an out-of-memory error set a limit
        self.last_calls = 1  # sequential model calls the last `__call__` made

    def __call__(self, call: Callable[[int, int], Outputs], rows: int) -> Outputs:
        """`call(start, stop)` evaluates rows start..stop-1; its outputs (one tensor or a tuple) are joined on dim 0."""
        pieces, start = [], 0
        while start < rows:
            stop = rows if self.max_rows is None else min(rows, start + self.max_rows)
            piece = self._try(call, start, stop)
            if piece is None:  # did not fit: the chunk was halved, try again from the same row
                continue
            pieces.append(piece)
            start = stop
        self.last_calls = len(pieces)
        if len(pieces) == 1:
            return pieces[0]
        if isinstance(pieces[0], torch.Tensor):
            return torch.cat(pieces)
        return tuple(torch.cat(parts) for parts in zip(*pieces))

    def _try(self, call: Callable[[int, int], Outputs], start: int, stop: int) -> Outputs | None:
        try:
            return call(start, stop)
        except OUT_OF_MEMORY as error:
            tried = stop - start
            if tried == 1:
                raise type(error)(f"one row of the {self.what} does not fit in memory on its own ({error}); free memory "
                                  "(a smaller model, --dtype bfloat16, fewer other processes) or use a larger device"
                                  ) from error
        # Out of the except block, so the failed call's frames (and their tensors) are freed before the retry.
        self.max_rows = tried // 2
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        LOG.warning("the %s of %d rows did not fit in memory; evaluating it in chunks of %d rows for the rest of "
                    "the run (the same outputs, more sequential calls)", self.what, tried, self.max_rows)
        return None


def draft_length_that_fits(bytes_for_rows: Callable[[int], float], free_bytes: float, rows_per_state: int,
                           draft_length: int, headroom: float = 1.5) -> int:
    """The largest K <= draft_length whose verification batch, (K + 1) x rows_per_state rows, needs at most
    free_bytes / headroom (ComfyUI's own 1.5x margin when it batches cond and uncond); 1 when none does, and the
    batch is then split in chunks on an out-of-memory error like any other. Choosing K so, rather than always
    chunking, keeps a round one model call where memory allows only a shorter draft."""
    for length in range(draft_length, 0, -1):
        if bytes_for_rows((length + 1) * rows_per_state) * headroom <= free_bytes:
            return length
    return 1
