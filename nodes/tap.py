"""The top-block tap for the DiTs ComfyUI runs: where each model's final layer and block lists sit.

A sampler function gets ComfyUI's k-diffusion model wrapper (KSamplerX0Inpaint -> guider -> BaseModel);
`top_block_tap` turns it into a free_core TappedModel whose features and replays go through the
model's own forward, guidance and `calculate_denoised` (free_core.engine.tapped_model says how).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

import comfy.model_patcher

from ..free_core.engine.tapped_model import ImageTokenOffsets, ModuleTap
from ..free_core.models.token_drafter import TappedModelIdentity, final_layer_fingerprint
from .comfy_model import DiTEpsAdapter, base_model


@dataclass(frozen=True)
class TapSite:
    """Attribute paths, from a diffusion model, of its per-token final layer and of the block lists before it."""

    family: str
    final_layer: str
    block_lists: tuple[str, ...]
    patch_size: str = "patch_size"  # an int (square patches) or one size per latent axis
    # Where each row's image tokens start, if not at token 0: (method of the diffusion model, called once per call
    # before the final layer, and the item of its output that holds one offset per row). None: at token 0.
    image_offsets: tuple[str, int] | None = None


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


TAP_SITES: dict[str, TapSite] = {  # a subclass (Kontext's Flux, VACE Wan, ...) is found through its base class
    _qualified(DiTEpsAdapter): TapSite("FREE DiT", "dit.final_layer", ("dit.blocks",), "dit.x_embedder.patch_size"),
    "comfy.ldm.flux.model.Flux": TapSite("Flux", "final_layer", ("double_blocks", "single_blocks")),
    "comfy.ldm.chroma.model.Chroma": TapSite("Chroma", "final_layer", ("double_blocks", "single_blocks")),
    "comfy.ldm.modules.diffusionmodules.mmdit.MMDiT": TapSite("SD3", "final_layer", ("joint_blocks",)),
    "comfy.ldm.hunyuan_video.model.HunyuanVideo": TapSite("HunyuanVideo", "final_layer", ("double_blocks", "single_blocks")),
    # Lumina 2 / Z-Image: each row's caption tokens come first; patchify_and_embed returns
    # (tokens, mask, image sizes, caption lengths, rope), and unpatchify reads row i's image from caption length i on
    "comfy.ldm.lumina.model.NextDiT": TapSite("Lumina 2", "final_layer", ("layers",), image_offsets=("patchify_and_embed", 3)),
    "comfy.ldm.wan.model.WanModel": TapSite("Wan", "head", ("blocks",)),
    "comfy.ldm.qwen_image.model.QwenImageTransformer2DModel": TapSite("Qwen-Image", "norm_out", ("transformer_blocks",)),  # then proj_out
}


def tap_site(diffusion_model: nn.Module) -> TapSite:
    """Where the tap sits in this diffusion model; a clear error naming an unsupported one."""
    for cls in type(diffusion_model).__mro__:
        site = TAP_SITES.get(_qualified(cls))
        if site is not None:
            return site
    supported = ", ".join(site.family for site in TAP_SITES.values())
    raise ValueError(f"FREE cannot tap the top block of {_qualified(type(diffusion_model))}: the tap knows {supported}; "
                     "frozen drafts (FREE Sampler without a drafter) work with any model")


def diffusion_model_of(model) -> nn.Module:
    """The diffusion model inside a k-diffusion model wrapper (what a sampler function gets) or a MODEL (ModelPatcher)."""
    base = base_model(model.model if isinstance(model, comfy.model_patcher.ModelPatcher) else model)
    if base is None or not hasattr(base, "diffusion_model"):
        raise ValueError(f"FREE found no ComfyUI model inside {type(model).__name__} to tap")
    return base.diffusion_model


def tapped_identity(model) -> TappedModelIdentity:
    """What a token drafter for this model must have been trained for: class, final-layer weights, width, patch."""
    diffusion_model = diffusion_model_of(model)
    site = tap_site(diffusion_model)
    final_layer = _attribute(diffusion_model, site.final_layer)
    norms = [m for m in final_layer.modules() if isinstance(m, nn.LayerNorm) and m.normalized_shape]
    if not norms:
        raise ValueError(f"FREE cannot read the feature width of {site.family}'s final layer (no LayerNorm in it)")
    patch = _attribute(diffusion_model, site.patch_size)
    patch = (int(patch), int(patch)) if isinstance(patch, (int, float)) else tuple(int(p) for p in patch)
    return TappedModelIdentity(_qualified(type(diffusion_model)), final_layer_fingerprint(final_layer),
                               int(norms[0].normalized_shape[-1]), patch)


def top_block_tap(model) -> ModuleTap:
    """A TappedModel over the k-diffusion model wrapper a sampler function gets."""
    diffusion_model = diffusion_model_of(model)
    site = tap_site(diffusion_model)
    block_lists = []
    for path in site.block_lists:
        owner_path, _, name = path.rpartition(".")
        block_lists.append((_attribute(diffusion_model, owner_path), name))
    offsets = None
    if site.image_offsets is not None:
        method, item = site.image_offsets
        offsets = ImageTokenOffsets(diffusion_model, method, item)
    return ModuleTap(model, _attribute(diffusion_model, site.final_layer), block_lists, offsets)


def _attribute(module: nn.Module, path: str):
    for name in filter(None, path.split(".")):
        module = getattr(module, name)
    return module
