"""A model tapped at its top block: what FREE needs from any DiT whose forward code it does not own.

Every DiT ends in a per-token final layer (norm + adaLN + linear, no attention) after its last block.
A forward pre-hook on that layer sees the top-block features (B, T, D) and the modulation the layer
receives; a tail replay empties the model's block lists, feeds given (e.g. drafted) features to the
final layer in their place, and lets the model's own code do the rest (cropping, unpatchify, the
prediction-to-denoised step, guidance). One model evaluation may call the diffusion model several
times (classifier-free guidance batches cond and uncond, or not): features are kept per call.

Some models put other tokens before a row's image tokens (Lumina 2: the caption, of a length per row). The final
layer does not see where a row's image tokens start; a model names a method that computes it in every call
(`ImageTokenOffsets`), and the tap records that method's answer with the call that follows it.

The hooks, the wrapped method and the emptied block lists live only inside `capturing` / `replaying`, and are
removed in `finally` on every exit, an interrupt or an error included. This module knows no ComfyUI.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class TopBlockCall:
    """The final layer's inputs in one call of the diffusion model."""

    features: torch.Tensor  # (B, T, D) top-block token features
    modulation: tuple[torch.Tensor, ...]  # the layer's other tensor inputs (its adaLN conditioning), in call order
    image_offsets: torch.Tensor | None = None  # (B,) long: the token where each row's image tokens start; None: 0


@dataclass(frozen=True)
class ImageTokenOffsets:
    """Where a model says, per call, at which token each row's image tokens start: item `item` of what its method
    `method` returns (one value per row), a method it calls once per diffusion-model call before the final layer."""

    owner: nn.Module
    method: str
    item: int


@dataclass(frozen=True)
class TopBlockFeatures:
    """Top-block features of one model evaluation: one entry per diffusion-model call, in call order."""

    calls: tuple[TopBlockCall, ...]

    def with_features(self, features: Sequence[torch.Tensor]) -> TopBlockFeatures:
        """The same calls with their features replaced (each of the same shape), e.g. by drafted ones."""
        if len(features) != len(self.calls):
            raise ValueError(f"got features for {len(features)} calls, the tapped evaluation made {len(self.calls)}")
        for index, (call, new) in enumerate(zip(self.calls, features)):
            if new.shape != call.features.shape:
                raise ValueError(f"call {index}: features of shape {tuple(new.shape)}, the tap saw {tuple(call.features.shape)}")
        return TopBlockFeatures(tuple(replace(call, features=new) for call, new in zip(self.calls, features)))


class TappedModel(Protocol):
    """A guided denoiser `(x, sigma, **extra) -> denoised` that can also hand out and take its top-block features."""

    def features(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> tuple[torch.Tensor, TopBlockFeatures]:
        """The model's own denoised output at (x, sigma), and the top-block features it computed on the way."""
        ...

    def replay(self, features: TopBlockFeatures, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        """The denoised output at (x, sigma) from the given top-block features: the final layer and tail only."""
        ...

    def replay_with(self, substitute: Substitute, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        """The denoised output at (x, sigma), the final layer fed `substitute(call)` in each diffusion-model call,
        where `call` holds what the emptied model hands the final layer (the modulation at this sigma)."""
        ...


# What a replay feeds the final layer in one call: a function of that call's inputs (the features seen are the
# model's embedding of x with no block run; the modulation is the model's own at this sigma and conditioning).
Substitute = Callable[[TopBlockCall], torch.Tensor]


class ModuleTap:
    """A TappedModel from a guided denoiser callable, its final layer and the block lists a replay empties."""

    def __init__(self, denoise: Callable[..., torch.Tensor], final_layer: nn.Module,
                 block_lists: Sequence[tuple[nn.Module, str]], image_offsets: ImageTokenOffsets | None = None):
        self.denoise, self.final_layer, self.block_lists = denoise, final_layer, list(block_lists)
        self.image_offsets = image_offsets

    def features(self, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> tuple[torch.Tensor, TopBlockFeatures]:
        """The model's own denoised output at (x, sigma), and the top-block features it computed on the way."""
        with capturing(self.final_layer, self.image_offsets) as calls:
            denoised = self.denoise(x, sigma, **extra)
        return denoised, TopBlockFeatures(tuple(calls))

    def replay(self, features: TopBlockFeatures, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        """The denoised output at (x, sigma) from the given top-block features: the final layer and tail only."""
        with replaying(self.final_layer, self.block_lists, given_features(features), self.image_offsets) as made:
            denoised = self.denoise(x, sigma, **extra)
        check_replayed(made, features)
        return denoised

    def replay_with(self, substitute: Substitute, x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        """The denoised output at (x, sigma), the final layer fed `substitute(call)` in each diffusion-model call."""
        with replaying(self.final_layer, self.block_lists, substitute, self.image_offsets):
            return self.denoise(x, sigma, **extra)


@contextmanager
def capturing(final_layer: nn.Module, image_offsets: ImageTokenOffsets | None = None) -> Iterator[list[TopBlockCall]]:
    """Record the final layer's inputs (and, given `image_offsets`, where each row's image tokens start) while the
    block runs; the list fills as the model is called."""
    calls: list[TopBlockCall] = []
    with watching_offsets(image_offsets) as offsets:

        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            features, modulation = _split_inputs(module, args, kwargs)
            calls.append(TopBlockCall(features.detach(), modulation, offsets.take(features.shape[0])))

        handle = final_layer.register_forward_pre_hook(record, with_kwargs=True)
        try:
            yield calls
        finally:
            handle.remove()


class OffsetWatch:
    """The image-token offsets a model's method handed out since the final layer last ran (None without a source)."""

    def __init__(self, source: ImageTokenOffsets | None):
        self.source, self.pending = source, None

    def seen(self, result: Any) -> None:
        self.pending = torch.as_tensor([int(value) for value in result[self.source.item]], dtype=torch.long)

    def take(self, rows: int) -> torch.Tensor | None:
        """The offsets of the call whose final layer runs now, each used once; refused if the method did not run."""
        if self.source is None:
            return None
        offsets, self.pending = self.pending, None
        name = f"{type(self.source.owner).__name__}.{self.source.method}"
        if offsets is None:
            raise RuntimeError(f"the final layer ran without a call of {name} before it, which says where the image "
                               "tokens start; this model's forward differs from the one the tap knows")
        if offsets.numel() != rows:
            raise RuntimeError(f"{name} gave image-token offsets for {offsets.numel()} rows, the final layer got {rows}")
        return offsets


@contextmanager
def watching_offsets(source: ImageTokenOffsets | None) -> Iterator[OffsetWatch]:
    """Wrap `source.method` on its module (this instance only) so that each call's offsets are seen; put it back on exit."""
    watch = OffsetWatch(source)
    if source is None:
        yield watch
        return
    owner, name = source.owner, source.method
    had_own = name in vars(owner)  # an instance attribute (another patch) is put back as it was
    own = vars(owner).get(name)
    original = getattr(owner, name)

    def watched(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        watch.seen(result)
        return result

    setattr(owner, name, watched)
    try:
        yield watch
    finally:
        if had_own:
            setattr(owner, name, own)
        else:
            delattr(owner, name)


def given_features(features: TopBlockFeatures) -> Substitute:
    """A Substitute that feeds tapped (or drafted) features back call by call, refusing a mismatched evaluation."""
    made = 0

    def substitute(call: TopBlockCall) -> torch.Tensor:
        nonlocal made
        if made >= len(features.calls):
            raise RuntimeError(f"the replayed evaluation called the model more than the {len(features.calls)} times it was tapped")
        given = features.calls[made].features
        if call.features.shape != given.shape:
            raise RuntimeError(f"replay call {made}: the model's final layer takes {tuple(call.features.shape)}, "
                               f"the features are {tuple(given.shape)}; replay on the batch and conditioning that were tapped")
        made += 1
        return given

    return substitute


@contextmanager
def replaying(final_layer: nn.Module, block_lists: Sequence[tuple[nn.Module, str]], substitute: Substitute,
              image_offsets: ImageTokenOffsets | None = None) -> Iterator[list[int]]:
    """Run the model without its blocks, the final layer fed `substitute(call)` call by call; yields the calls made
    so far. A caller replaying tapped features checks afterwards that it made as many calls (`check_replayed`)."""
    with watching_offsets(image_offsets) as offsets, _replaying(final_layer, block_lists, substitute, offsets) as made:
        yield made


@contextmanager
def _replaying(final_layer: nn.Module, block_lists: Sequence[tuple[nn.Module, str]], substitute: Substitute,
               offsets: OffsetWatch) -> Iterator[list[int]]:
    made: list[int] = []

    def feed(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        seen, modulation = _split_inputs(module, args, kwargs)
        given = substitute(TopBlockCall(seen, modulation, offsets.take(seen.shape[0])))
        made.append(len(made))
        given = given.to(device=seen.device, dtype=seen.dtype)
        if args:
            return (given, *args[1:]), kwargs
        first = next(iter(kwargs))
        return args, {**kwargs, first: given}

    originals = [(owner, name, getattr(owner, name)) for owner, name in block_lists]
    handle = final_layer.register_forward_pre_hook(feed, with_kwargs=True)
    try:
        for owner, name, _ in originals:
            setattr(owner, name, nn.ModuleList())
        yield made
    finally:
        handle.remove()
        for owner, name, blocks in originals:
            setattr(owner, name, blocks)


def check_replayed(made: list[int], features: TopBlockFeatures) -> None:
    """Refuse a replay whose evaluation used fewer calls than were tapped (a different batch or conditioning)."""
    if len(made) != len(features.calls):
        raise RuntimeError(f"the replayed evaluation called the model {len(made)} times, it was tapped over "
                           f"{len(features.calls)}; replay on the batch and conditioning that were tapped")


def _split_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(token features, the other tensor inputs) of a final-layer call, positional or keyword; a tuple or list input
    gives its tensors in order (Chroma's final layer takes its modulation as a (shift, scale) pair)."""
    inputs = list(args) + list(kwargs.values())
    if not inputs or not isinstance(inputs[0], torch.Tensor) or inputs[0].dim() != 3:
        raise RuntimeError(f"{type(module).__name__} did not get (B, T, D) token features as its first input")
    others = [part for value in inputs[1:] for part in (value if isinstance(value, (tuple, list)) else (value,))]
    return inputs[0], tuple(value.detach() for value in others if isinstance(value, torch.Tensor))
