"""A learned drafter's proposal (its network and the DiT's head) run through `torch.compile`.

A drafting pass is a few hundred small ops (docs/benchmarks.md, "round costs"): on a GPU each is a kernel
launch, so the pass is launch-bound, and on a CPU each is a dispatch. Compiling the proposal fuses them; on CUDA
the compiled proposal also replays as a CUDA graph ("reduce-overhead"), one launch per pass.

The law is untouched: a compiled proposal rounds differently from the eager one, so drafts differ in their last
bits, but the coupling reads the very draft the compiled proposal made, and strict mode is exact for any drafter
(tested with its own exactness case). Compiling costs seconds to tens of seconds once per process and shape
family, so it pays only over many drafting passes: it is off by default, and the benchmark prints both passes.
"""

from __future__ import annotations

import torch

from .drafter_interface import DraftContext, Drafter


def compile_mode(device: torch.device | str) -> str:
    """CUDA graphs where launches dominate (CUDA); fused kernels elsewhere."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"


class CompiledDrafter:
    """`drafter` with its `propose` compiled for `device`; the same interface, history and identity."""

    def __init__(self, drafter: Drafter, device: torch.device | str):
        if not drafter.history_length:
            raise ValueError(f"compile_drafter (--compile-drafter): the {getattr(drafter, 'name', 'given')} drafter has no "
                             "network to compile (it reuses the last output); use a learned drafter, or drop the option")
        self.drafter, self.history_length = drafter, drafter.history_length
        self.name = getattr(drafter, "name", type(drafter).__name__)
        self.config = getattr(drafter, "config", None)
        if hasattr(drafter, "modulation"):  # the sampler tables it once per run, outside the compiled pass
            self.modulation = drafter.modulation
        self.compile_mode = compile_mode(device)
        # dynamic=None: the first shape compiles static; a second row count recompiles once with a dynamic batch axis
        self._compiled = torch.compile(drafter.propose, mode=self.compile_mode, dynamic=None)
        self._compiled_before = False  # a failure in the first call is the compiler's; later ones are the drafter's

    def propose(self, model: torch.nn.Module, context: DraftContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        try:
            output, features = self._compiled(model, context)
        except Exception as error:  # noqa: BLE001 - a compiler missing or failing here: say which option to drop
            if self._compiled_before:
                raise
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise RuntimeError(f"compile_drafter (--compile-drafter): torch.compile failed on this machine "
                               f"({type(error).__name__}: {first_line}); run without the option") from error
        self._compiled_before = True
        if self.compile_mode != "reduce-overhead":
            return output, features
        # A CUDA graph's outputs are buffers the next replay overwrites; the round keeps drafted outputs and
        # features across passes, so it gets copies.
        return output.clone(), None if features is None else features.clone()
