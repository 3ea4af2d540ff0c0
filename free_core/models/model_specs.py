"""Which DiT and which drafter a run uses, from what the user typed: one resolver, one set of messages.

A DiT is `embedded` (the shipped 32x32 model), a weights file, or `random:<config>` (random weights, to try
the engine); a drafter is `embedded` (the shipped drafter of the embedded DiT), `frozen` (training-free:
reuses the last DiT output) or a drafter file. Every failure is an `OptionError` naming the option, the value
and the fix, in one line; a file that cannot be read is named, and pickled files are never unpickled.
`--dtype` names the dtype the DiT (and its drafter) compute in; the sampler's states stay float32.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import EMBEDDED_DIT, EMBEDDED_DRAFTER, load_dit
from .dit import DIT_CONFIGS, DiT, dit_config
from .free_drafter import load_drafter
from ..engine.drafter_interface import Drafter, FrozenDrafter
from ..frontdoor.options import OptionError

EMBEDDED = "embedded"
FROZEN = "frozen"
RANDOM_PREFIX = "random:"
DIT_CHOICES = f"'{EMBEDDED}', a DiT weights file (.safetensors, .pt) or {RANDOM_PREFIX}<config>"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DRAFTER_CHOICES = f"'{EMBEDDED}' (the embedded DiT's), '{FROZEN}' (training-free, any DiT) or a drafter .safetensors file"


def check_dit_spec(spec: str, option: str = "--model") -> None:
    """What can be checked without loading anything: the embedded weights exist, a random config is known."""
    if spec == EMBEDDED:
        if not EMBEDDED_DIT.is_file():
            raise OptionError(f"{option} {EMBEDDED}: the embedded DiT weights are missing at {EMBEDDED_DIT}; "
                              f"reinstall ComfyUI-FREE, or use {RANDOM_PREFIX}DiT-Micro/8 to try the engine")
    elif spec.startswith(RANDOM_PREFIX):
        name = spec[len(RANDOM_PREFIX):]
        if name not in DIT_CONFIGS:
            raise OptionError(f"{option} {spec}: unknown DiT config {name!r}; use one of {', '.join(sorted(DIT_CONFIGS))}")
    elif not Path(spec).is_file():
        raise OptionError(f"{option} {spec}: no such file; use {DIT_CHOICES}")


def resolve_dtype(name: str, device: str | torch.device = "cpu", option: str = "--dtype") -> torch.dtype:
    """The torch dtype named `name`, refused where this torch cannot compute in it on `device` (float16 on some CPUs)."""
    if name not in DTYPES:
        raise OptionError(f"{option} {name}: not a supported dtype; use {', '.join(DTYPES)}")
    dtype = DTYPES[name]
    if dtype != torch.float32 and not _runs_in(dtype, torch.device(device)):
        raise OptionError(f"{option} {name}: this torch cannot run a DiT in {name} on {torch.device(device).type}; "
                          f"use {option} bfloat16 or float32 there, or a CUDA device for {name}")
    return dtype


def resolve_dit(spec: str, device: str | torch.device = "cpu", option: str = "--model",
                dtype: torch.dtype = torch.float32) -> DiT:
    """The DiT named by `spec`, on `device`, in `dtype`, in eval mode."""
    check_dit_spec(spec, option)
    if spec.startswith(RANDOM_PREFIX):
        with torch.random.fork_rng(devices=[]):  # the same random weights in every process, the caller's RNG untouched
            torch.manual_seed(0)
            model = DiT(dit_config(spec[len(RANDOM_PREFIX):]))
            for parameter in model.final_layer.parameters():  # adaLN-Zero init outputs zeros: give the head a signal
                torch.nn.init.normal_(parameter, std=0.02)
        model.source_name = spec
        return model.to(device=device, dtype=dtype).eval()
    path = EMBEDDED_DIT if spec == EMBEDDED else Path(spec)
    try:
        return load_dit(path, device=device, dtype=dtype)
    except (OSError, ValueError) as error:  # unreadable, corrupt, pickled or not a DiT: say which file and why
        raise OptionError(f"{option} {spec}: {_one_line(error)}") from error


def check_drafter_spec(spec: str, option: str = "--drafter") -> None:
    if spec == FROZEN:
        return
    path = EMBEDDED_DRAFTER if spec == EMBEDDED else Path(spec)
    if not path.is_file():
        missing = "the embedded drafter is missing" if spec == EMBEDDED else "no such file"
        raise OptionError(f"{option} {spec}: {missing} at {path}; use {DRAFTER_CHOICES}")
    if path.suffix != ".safetensors":
        raise OptionError(f"{option} {spec}: drafters are .safetensors files; use {DRAFTER_CHOICES}")


def resolve_drafter(spec: str, dit: DiT, device: str | torch.device = "cpu", option: str = "--drafter") -> Drafter:
    """The drafter named by `spec` for `dit`, in the DiT's dtype; one trained for another DiT is refused naming both."""
    check_drafter_spec(spec, option)
    if spec == FROZEN:
        return FrozenDrafter()
    try:
        return load_drafter(EMBEDDED_DRAFTER if spec == EMBEDDED else spec, dit, device=device)
    except (OSError, ValueError) as error:
        raise OptionError(f"{option} {spec}: {_one_line(error)}") from error


def default_drafter(dit_spec: str) -> str:
    """The embedded DiT has a learned drafter; any other DiT starts with the training-free one."""
    return EMBEDDED if dit_spec == EMBEDDED else FROZEN


def _runs_in(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the DiT's operations (conv, linear, layer norm, attention, GELU) run in `dtype` on `device`."""
    try:
        with torch.no_grad():
            x = torch.ones(1, 4, 4, 4, dtype=dtype, device=device)
            h = torch.nn.functional.conv2d(x, torch.ones(8, 4, 2, 2, dtype=dtype, device=device), stride=2)
            h = torch.nn.functional.layer_norm(h.flatten(2).transpose(1, 2), (8,))  # (1, 4, 8)
            h = torch.nn.functional.scaled_dot_product_attention(h[:, None], h[:, None], h[:, None])[:, 0]
            torch.nn.functional.gelu(torch.nn.functional.linear(h, torch.ones(8, 8, dtype=dtype, device=device)),
                                     approximate="tanh")
        return True
    except RuntimeError:  # "... not implemented for 'Half'"
        return False


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
