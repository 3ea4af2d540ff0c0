"""The runner's top_block_tap scenario: the generic top-block tap (nodes/tap.py) on tiny random models built from
ComfyUI's own classes (and the FREE DiT as a plain MODEL), inside a real sampling run.

A probe sampler (a KSAMPLER function run by comfy.sample.sample_custom, so guidance, conditioning and
calculate_denoised are ComfyUI's) compares, at one sigma, the model's own denoised output with the tap's and
with the tail replay on the tapped features, bit for bit (fp32, CFG 2, batch 2); checks that the replay ran no
block and uses the given features; and that an interrupt inside the model leaves no hook and the blocks in place.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import torch

from tiny_comfy_models import FAMILIES, tiny_comfy_model  # this script's folder


def run(runner) -> dict:
    """{family: probe results} for every family this tree has, and the unsupported-model message."""
    import comfy.supported_models

    tap = importlib.import_module(runner.pack_module.__name__ + ".nodes.tap")
    families = {"free_dit": lambda: _free_dit(runner)}
    for family, (config_name, *_) in FAMILIES.items():
        if hasattr(comfy.supported_models, config_name):
            families[family] = lambda spec=FAMILIES[family]: tiny_comfy_model(*spec)
    results = {}
    for family, build in families.items():
        try:
            results[family] = _probe(tap, *build())
        except Exception:  # the report carries it; the pytest side names the family
            results[family] = {"crashed": traceback.format_exc()}
    try:
        tap.tap_site(torch.nn.Linear(2, 2))
        results["unsupported_message"] = None
    except ValueError as error:
        results["unsupported_message"] = str(error)
    return results


def _free_dit(runner):
    """The FREE DiT (DiT-Micro/8, random weights) as the plain MODEL FREE DiT Loader gives, class conditionings."""
    pack = runner.pack_module.__name__
    dit_module = sys.modules[pack + ".free_core.models.dit"]
    comfy_model = importlib.import_module(pack + ".nodes.comfy_model")
    dit = dit_module.DiT(dit_module.dit_config("DiT-Micro/8"))
    generator = torch.Generator().manual_seed(3)
    for parameter in dit.parameters():  # DiT zero-initialises its final layer: random weights make the tail matter
        parameter.data = torch.randn(parameter.shape, generator=generator) * 0.05
    patcher = comfy_model.model_patcher_for(dit)
    shape = (2, dit.in_channels, dit.input_size, dit.input_size)
    return patcher, comfy_model.class_conditioning(1, "one"), comfy_model.class_conditioning(5, "five"), torch.zeros(shape)


def _probe(tap, patcher, positive: list, negative: list, latent: torch.Tensor) -> dict:
    """Sample one step with a probe sampler that runs the checks on the k-diffusion model it is given."""
    import comfy.model_management
    import comfy.sample
    import comfy.samplers

    found: dict = {}

    def probe(model, x, sigmas, extra_args=None, callback=None, disable=None):
        found.update(_checks(tap, comfy.model_management.InterruptProcessingException, model, x,
                             sigmas[0] * x.new_ones(x.shape[0]), extra_args or {}))
        return x

    sampling = patcher.model.model_sampling
    sigmas = torch.tensor([float(sampling.sigma_max) * 0.5, 0.0])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(4))
    comfy.sample.sample_custom(patcher, noise, 2.0, comfy.samplers.KSAMPLER(probe), sigmas, positive, negative, latent, seed=4)
    return found


def _checks(tap, interrupt: type, model, x: torch.Tensor, sigma: torch.Tensor, extra_args: dict) -> dict:
    tapped_model = tap.top_block_tap(model)
    final_layer, block_lists = tapped_model.final_layer, tapped_model.block_lists
    blocks_before = [getattr(owner, name) for owner, name in block_lists]

    def left_behind() -> list[str]:
        left = [f"{len(final_layer._forward_pre_hooks)} pre-hooks"] if final_layer._forward_pre_hooks else []
        return left + [name for (owner, name), blocks in zip(block_lists, blocks_before) if getattr(owner, name) is not blocks]

    with torch.no_grad():
        reference = model(x, sigma, **extra_args)
        denoised, features = tapped_model.features(x, sigma, **extra_args)
        block_calls: list = []
        hooks = [block.register_forward_hook(lambda *_: block_calls.append(1)) for blocks in blocks_before for block in blocks]
        try:
            replayed = tapped_model.replay(features, x, sigma, **extra_args)
        finally:
            for hook in hooks:
                hook.remove()
        after_run = left_behind()
        moved = tapped_model.replay(features.with_features([call.features * 1.01 for call in features.calls]), x, sigma, **extra_args)
        interrupted = {}
        for name, run in (("features", lambda: tapped_model.features(x, sigma, **extra_args)),
                          ("replay", lambda: tapped_model.replay(features, x, sigma, **extra_args))):
            hook = final_layer.register_forward_hook(_raiser(interrupt))
            try:
                run()
                interrupted[name] = "not interrupted"
            except interrupt:
                hook.remove()
                interrupted[name] = left_behind()
    return {
        "batch": int(x.shape[0]), "calls": len(features.calls),
        "feature_shapes": [list(call.features.shape) for call in features.calls],
        "modulation_shapes": [[list(m.shape) for m in call.modulation] for call in features.calls],
        "tap_equals_model": bool(torch.equal(denoised, reference)),
        "replay_equals_model": bool(torch.equal(replayed, reference)),
        "replay_max_abs_diff": float((replayed - reference).abs().max()),
        "replay_block_calls": len(block_calls), "block_count": sum(len(blocks) for blocks in blocks_before),
        "moved_features_move_output": not bool(torch.allclose(moved, reference)),
        "left_behind_after_run": after_run, "left_behind_after_interrupt": interrupted,
    }


def _raiser(interrupt: type):
    def hook(*_):
        raise interrupt()

    return hook
