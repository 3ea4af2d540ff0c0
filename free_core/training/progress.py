"""A dependency-free progress line for training: bar on a terminal, periodic lines in a log."""

from __future__ import annotations

import sys
import time


class Progress:
    """Shows step/total, rate, ETA and the latest scalars; prints a plain line every `log_every` steps."""

    def __init__(self, total: int, label: str, enabled: bool = True, start: int = 0, log_every: int = 25):
        self.total, self.label, self.enabled = total, label, enabled
        self.start_step, self.started = start, time.time()
        self.log_every = log_every
        self.interactive = sys.stderr.isatty()
        self.last: dict[str, float] = {}

    def update(self, step: int, **scalars: float) -> None:
        if not self.enabled:
            return
        self.last = {**self.last, **scalars}
        elapsed = time.time() - self.started
        rate = (step - self.start_step) / max(elapsed, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        values = " ".join(f"{k}={v:.4f}" for k, v in self.last.items())
        if self.interactive:
            filled = int(30 * step / max(self.total, 1))
            bar = "#" * filled + "-" * (30 - filled)
            sys.stderr.write(f"\r{self.label} [{bar}] {step}/{self.total} {rate:.2f} it/s eta {eta:.0f}s {values}")
            sys.stderr.flush()
        elif step % self.log_every == 0 or step == self.total:
            print(f"{self.label} {step}/{self.total} {rate:.2f} it/s eta {eta:.0f}s {values}", flush=True)

    def close(self) -> None:
        if self.enabled and self.interactive:
            sys.stderr.write("\n")
