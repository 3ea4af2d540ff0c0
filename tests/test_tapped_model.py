"""The top-block tap on the free_core DiT itself (no ComfyUI): capture, tail replay, and nothing left behind."""

import pytest
import torch

from free_core.engine.tapped_model import ImageTokenOffsets, ModuleTap, TopBlockFeatures
from free_core.models.dit import DiT, DiTConfig


def _dit() -> DiT:
    torch.manual_seed(0)
    dit = DiT(DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10))
    for parameter in dit.parameters():  # DiT zero-initialises its final layer: random weights make it matter
        parameter.data = torch.randn_like(parameter) * 0.1
    return dit.eval()


def _guided(dit: DiT, cfg: float = 2.0):
    """A guided denoiser over rows (cond, uncond) in one call, like ComfyUI's batched CFG."""

    def denoise(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows = dit(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, dit.null_class)]))
        cond, uncond = rows[:, :4].chunk(2)
        return uncond + cfg * (cond - uncond)

    return denoise


def _inputs(batch: int = 3):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, 4, 8, 8, generator=generator), torch.tensor([900.0, 500.0, 10.0][:batch]), torch.tensor([1, 2, 3][:batch])


def _tap(dit: DiT, cfg: float = 2.0) -> ModuleTap:
    return ModuleTap(_guided(dit, cfg), dit.final_layer, [(dit, "blocks")])


def _left_behind(dit: DiT, blocks) -> list:
    return [*dit.final_layer._forward_pre_hooks.values(), *([] if dit.blocks is blocks else ["block list"])]


@torch.no_grad()
def test_tapped_features_are_the_top_block_features_and_their_modulation():
    dit, (x, t, y) = _dit(), _inputs()
    denoised, tapped = _tap(dit).features(x, t, y=y)
    assert torch.equal(denoised, _guided(dit)(x, t, y))
    (call,) = tapped.calls
    rows = (torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, dit.null_class)]))
    assert torch.equal(call.features, dit.features(*rows))
    assert len(call.modulation) == 1 and torch.equal(call.modulation[0], dit.conditioning(*rows[1:]))


@torch.no_grad()
def test_tail_replay_on_tapped_features_is_the_model_output_bit_for_bit_without_running_a_block():
    dit, (x, t, y) = _dit(), _inputs()
    tap, blocks = _tap(dit), dit.blocks
    reference = _guided(dit)(x, t, y)
    _, tapped = tap.features(x, t, y=y)
    block_calls = []
    hook = dit.blocks[0].register_forward_hook(lambda *_: block_calls.append(1))
    try:
        replayed = tap.replay(tapped, x, t, y=y)
    finally:
        hook.remove()
    assert torch.equal(replayed, reference) and block_calls == []
    assert _left_behind(dit, blocks) == []
    moved = tap.replay(tapped.with_features([tapped.calls[0].features * 1.01]), x, t, y=y)
    assert not torch.allclose(moved, reference)  # the replay uses the given features, not the blocks'


@torch.no_grad()
def test_an_error_inside_the_tap_or_the_replay_leaves_no_hook_and_the_blocks_in_place():
    dit, (x, t, y) = _dit(), _inputs()
    tap, blocks = _tap(dit), dit.blocks
    _, tapped = tap.features(x, t, y=y)

    def interrupt(*_):
        raise KeyboardInterrupt

    hook = dit.final_layer.register_forward_hook(interrupt)
    for run in (lambda: tap.features(x, t, y=y), lambda: tap.replay(tapped, x, t, y=y)):
        with pytest.raises(KeyboardInterrupt):
            run()
        assert _left_behind(dit, blocks) == []
    hook.remove()
    with pytest.raises(RuntimeError, match="called the model 0 times, it was tapped over 1"):
        ModuleTap(lambda *_, **__: x, dit.final_layer, [(dit, "blocks")]).replay(tapped, x, t, y=y)
    assert _left_behind(dit, blocks) == []


@torch.no_grad()
def test_replay_on_another_batch_or_feature_shape_is_refused_naming_both_shapes():
    dit, (x, t, y) = _dit(), _inputs()
    tap = _tap(dit)
    _, tapped = tap.features(x, t, y=y)
    with pytest.raises(RuntimeError, match=r"takes \(4, 16, 32\), the features are \(6, 16, 32\)"):
        x2, t2, y2 = _inputs(batch=2)
        tap.replay(tapped, x2, t2, y=y2)
    with pytest.raises(ValueError, match=r"features of shape \(6, 16, 31\), the tap saw \(6, 16, 32\)"):
        tapped.with_features([torch.zeros(6, 16, 31)])
    with pytest.raises(ValueError, match="features for 2 calls, the tapped evaluation made 1"):
        tapped.with_features([tapped.calls[0].features] * 2)
    assert isinstance(tapped, TopBlockFeatures)


class _PairModulatedLayer(torch.nn.Module):
    """A final layer that takes its modulation as a (shift, scale) pair, as Chroma's does."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, vec: tuple) -> torch.Tensor:
        shift, scale = vec
        return self.linear(x * (1 + scale) + shift)


@torch.no_grad()
def test_a_modulation_pair_is_tapped_as_its_tensors_and_the_replay_is_the_output():
    torch.manual_seed(0)
    layer, blocks = _PairModulatedLayer(), torch.nn.Module()
    blocks.list = torch.nn.ModuleList([torch.nn.Linear(8, 8)])
    shift, scale = torch.randn(2, 1, 8), torch.randn(2, 1, 8)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        for block in blocks.list:
            x = block(x)
        return layer(x, vec=(shift * sigma, scale))

    x, sigma = torch.randn(2, 5, 8), torch.tensor(0.5)
    tap = ModuleTap(denoise, layer, [(blocks, "list")])
    denoised, tapped = tap.features(x, sigma)
    (call,) = tapped.calls
    assert len(call.modulation) == 2 and torch.equal(call.modulation[0], shift * sigma) and torch.equal(call.modulation[1], scale)
    assert torch.equal(tap.replay(tapped, x, sigma), denoised)


class _CaptionFirst(torch.nn.Module):
    """Each row's caption tokens (a length per row) before its image tokens, padding at the end, as Lumina 2 lays them
    out: `embed` returns (tokens, caption lengths), and the output reads row i's image from its caption length on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.caption, self.image = torch.nn.Linear(3, 8), torch.nn.Linear(4, 8)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8)])
        self.final_layer = _PairModulatedLayer()

    def embed(self, x: torch.Tensor, caption: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, list[int]]:
        tokens = torch.zeros(x.shape[0], max(lengths) + x.shape[1], 8)
        for row, length in enumerate(lengths):
            tokens[row, :length] = self.caption(caption[row, :length])
            tokens[row, length:length + x.shape[1]] = self.image(x[row])
        return tokens, lengths

    def forward(self, x: torch.Tensor, caption: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        tokens, lengths = self.embed(x, caption, lengths)
        for block in self.blocks:
            tokens = block(tokens)
        out = self.final_layer(tokens, vec=(torch.zeros(x.shape[0], 1, 8), torch.zeros(x.shape[0], 1, 8)))
        return torch.stack([out[row, length:length + x.shape[1]] for row, length in enumerate(lengths)])


def _caption_first_tap():
    model = _CaptionFirst()
    caption = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1))

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # two calls: captions of 2 and 5, then of 1 and 4
        return model(x, caption, [2, 5]) + model(x, caption, [1, 4]) * sigma

    return model, denoise, ModuleTap(denoise, model.final_layer, [(model, "blocks")], ImageTokenOffsets(model, "embed", 1))


@torch.no_grad()
def test_image_token_offsets_are_tapped_with_each_call_and_the_method_is_put_back():
    model, denoise, tap = _caption_first_tap()
    x, sigma = torch.randn(2, 6, 4), torch.tensor(0.5)
    denoised, tapped = tap.features(x, sigma)
    assert torch.equal(denoised, denoise(x, sigma))
    assert [call.image_offsets.tolist() for call in tapped.calls] == [[2, 5], [1, 4]]
    seen = []
    replayed = tap.replay_with(lambda call: seen.append(call.image_offsets.tolist()) or tapped.calls[len(seen) - 1].features,
                               x, sigma)
    assert seen == [[2, 5], [1, 4]] and torch.equal(replayed, denoised)
    assert "embed" not in vars(model)
    assert ModuleTap(denoise, model.final_layer, [(model, "blocks")]).features(x, sigma)[1].calls[0].image_offsets is None


@torch.no_grad()
def test_an_interrupt_or_a_missing_offsets_call_leaves_the_method_as_it_was():
    model, denoise, tap = _caption_first_tap()
    x, sigma = torch.randn(2, 6, 4), torch.tensor(0.5)
    _, tapped = tap.features(x, sigma)

    def interrupt(*_):
        raise KeyboardInterrupt

    hook = model.final_layer.register_forward_hook(interrupt)
    for run in (lambda: tap.features(x, sigma), lambda: tap.replay(tapped, x, sigma)):
        with pytest.raises(KeyboardInterrupt):
            run()
        assert "embed" not in vars(model) and not model.final_layer._forward_pre_hooks
    hook.remove()
    patched = lambda *args: _CaptionFirst.embed(model, *args)  # noqa: E731  another patch's instance attribute stays
    model.embed = patched
    tap.features(x, sigma)
    assert vars(model)["embed"] is patched
    lost = ModuleTap(denoise, model.final_layer, [(model, "blocks")], ImageTokenOffsets(model, "extra_repr", 0))
    with pytest.raises(RuntimeError, match="final layer ran without a call of _CaptionFirst.extra_repr before it"):
        lost.features(x, sigma)
    assert "extra_repr" not in vars(model) and not model.final_layer._forward_pre_hooks
