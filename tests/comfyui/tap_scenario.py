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

from tiny_comfy_models import FAMILIES, text_conditioning, tiny_comfy_model  # this script's folder


def run(runner) -> dict:
    """{family: probe results} for every family this tree has, and the unsupported-model message."""
    import comfy.supported_models

    tap = importlib.import_module(runner.pack_module.__name__ + ".nodes.tap")
    families = {"free_dit": lambda: _free_dit(runner)}
    for family, (config_name, *_) in FAMILIES.items():
        if hasattr(comfy.supported_models, config_name):
            families[family] = lambda spec=FAMILIES[family]: tiny_comfy_model(*spec)
    results: dict = {}
    for family, build in families.items():
        try:
            results[family] = _probe(tap, *build())
        except Exception:  # the report carries it; the pytest side names the family
            results[family] = {"crashed": traceback.format_exc()}
    if hasattr(comfy.supported_models, FAMILIES["lumina"][0]):
        try:
            results["lumina_alignment"] = _image_token_alignment(runner, tap)
        except Exception:
            results["lumina_alignment"] = {"crashed": traceback.format_exc()}
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

    offsets = tapped_model.image_offsets  # Lumina 2: a method wrapped while the tap runs

    def left_behind() -> list[str]:
        left = [f"{len(final_layer._forward_pre_hooks)} pre-hooks"] if final_layer._forward_pre_hooks else []
        if offsets is not None and offsets.method in vars(offsets.owner):
            left.append(f"{offsets.method} wrapper")
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


def _image_token_alignment(runner, tap) -> dict:
    """Tiny Lumina 2, batch 2, CFG 2, a cond caption of 3 tokens and an uncond caption of 5 (two calls: their token
    counts differ). Rows of one call cannot have captions of different lengths in this NextDiT: a padded caption mask
    with more than one row fails in its attention (sub-quadratic and PyTorch alike), so free_core's tests cover that.
    For every call, row and token: which latent patch of that row the model's own output reads from the token (found
    by moving the token's features in a tail replay: the final layer is per token, so exactly that patch's pixels
    move), and which patch's state change the drafter places on it (moving one state patch at a time); -1 for none."""
    import comfy.sample
    import comfy.samplers

    pack = runner.pack_module.__name__
    sigma_space = importlib.import_module(pack + ".free_core.engine.tapped_sigma_space")
    token_drafter = importlib.import_module(pack + ".free_core.models.token_drafter")
    config_name, unet, _, latent_shape = FAMILIES["lumina"]
    patcher, positive, _, latent = tiny_comfy_model(config_name, unet, text_conditioning(3, 32, attended=3), latent_shape)
    negative = text_conditioning(5, 32, attended=5)(torch.Generator().manual_seed(1))
    found: dict = {}

    def probe(model, x, sigmas, extra_args=None, callback=None, disable=None):
        found.update(_reads_and_places(tap, sigma_space, token_drafter, model, x, sigmas[0] * x.new_ones(x.shape[0]),
                                       extra_args or {}))
        return x

    sigmas = torch.tensor([float(patcher.model.model_sampling.sigma_max) * 0.5, 0.0])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(4))
    comfy.sample.sample_custom(patcher, noise, 2.0, comfy.samplers.KSAMPLER(probe), sigmas, positive, negative, latent, seed=4)
    return found


@torch.no_grad()
def _reads_and_places(tap, sigma_space, token_drafter, model, x: torch.Tensor, sigma: torch.Tensor, extra_args: dict
                      ) -> dict:
    tapped_model = tap.top_block_tap(model)
    identity = tap.tapped_identity(model)
    patch = identity.patch_size[-1]
    _, features = tapped_model.features(x, sigma, **extra_args)
    reference = tapped_model.replay(features, x, sigma, **extra_args)
    patches = token_drafter.latent_patches(x, identity.patch_size).shape[1]
    model_reads = []
    for index, call in enumerate(features.calls):
        reads = []
        for row in range(call.features.shape[0]):
            read = []
            for token in range(call.features.shape[1]):
                moved = [other.features.clone() for other in features.calls]
                moved[index][row, token] += 1.0
                changed = tapped_model.replay(features.with_features(moved), x, sigma, **extra_args) != reference
                changed_rows = changed.flatten(1).any(1).nonzero().flatten().tolist()
                pixels = changed[row % x.shape[0]].any(0).nonzero()  # (k, 2): latent (y, x) that moved
                read_patches = sorted({int(y // patch) * (x.shape[-1] // patch) + int(col // patch) for y, col in pixels})
                if changed_rows not in ([], [row % x.shape[0]]) or len(read_patches) > 1:
                    read_patches = [f"rows {changed_rows}, patches {read_patches}"]  # not one token of one patch
                read.append(read_patches[0] if read_patches else -1)
            reads.append(read)
        model_reads.append(reads)

    drafter = token_drafter.token_drafter_for(identity, modulation_width=sigma_space.modulation_vector(features.calls[0]).shape[1],
                                              channels=x.shape[1])
    generator = torch.Generator().manual_seed(0)
    for parameter in drafter.parameters():  # a fresh drafter's last layers are zero: its drafts would copy the history
        parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    drafter_places, offsets = [], []

    def substitute(call):
        history = call.features.unsqueeze(1).expand(-1, drafter.history_length, -1, -1)
        state = torch.zeros(call.features.shape[0], patches, drafter.config.patch_inputs)
        draft = lambda state_patches: drafter(history, state_patches, sigma_space.modulation_vector(call),  # noqa: E731
                                              sigma_space.call_patch_index(call, patches))
        still = draft(state)
        places, hits = torch.full(call.features.shape[:2], -1), torch.zeros(call.features.shape[:2], dtype=torch.long)
        for j in range(patches):
            moved = state.clone()
            moved[:, j] = 1.0
            lands = (draft(moved) != still).any(-1)  # (rows, T): the tokens patch j's state change reached
            places[lands], hits = j, hits + lands.long()
        drafter_places.append(torch.where(hits > 1, -2, places).tolist())  # -2: more than one patch lands there
        offsets.append(call.image_offsets.tolist())
        return call.features

    tapped_model.replay_with(substitute, x, sigma, **extra_args)
    return {"model_reads": model_reads, "drafter_places": drafter_places, "image_offsets": offsets, "patches": patches,
            "offsets_in_features": [call.image_offsets.tolist() for call in features.calls]}
