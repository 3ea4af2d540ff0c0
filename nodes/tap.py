"""The top-block tap for the DiTs ComfyUI runs: where each model's final layer and block lists sit.

A sampler function gets ComfyUI's k-diffusion model wrapper (KSamplerX0Inpaint -> guider -> BaseModel);
`top_block_tap` turns it into a free_core TappedModel whose features and replays go through the
model's own forward, guidance and `calculate_denoised` (free_core.engine.tapped_model says how).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..free_core.engine.tapped_model import ModuleTap
from .comfy_model import DiTEpsAdapter
from .sampling import base_model


@dataclass(frozen=True)
class TapSite:
    """Attribute paths, from a diffusion model, of its per-token final layer and of the block lists before it."""

    family: str
    final_layer: str
    block_lists: tuple[str, ...]


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


TAP_SITES: dict[str, TapSite] = {  # a subclass (Kontext's Flux, VACE Wan, ...) is found through its base class
    _qualified(DiTEpsAdapter): TapSite("FREE DiT", "dit.final_layer", ("dit.blocks",)),
    "comfy.ldm.flux.model.Flux": TapSite("Flux", "final_layer", ("double_blocks", "single_blocks")),
    "comfy.ldm.chroma.model.Chroma": TapSite("Chroma", "final_layer", ("double_blocks", "single_blocks")),
    "comfy.ldm.modules.diffusionmodules.mmdit.MMDiT": TapSite("SD3", "final_layer", ("joint_blocks",)),
    "comfy.ldm.hunyuan_video.model.HunyuanVideo": TapSite("HunyuanVideo", "final_layer", ("double_blocks", "single_blocks")),
    "comfy.ldm.lumina.model.NextDiT": TapSite("Lumina 2", "final_layer", ("layers",)),
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


def top_block_tap(model) -> ModuleTap:
    """A TappedModel over the k-diffusion model wrapper a sampler function gets."""
    base = base_model(model)
    if base is None or not hasattr(base, "diffusion_model"):
        raise ValueError(f"FREE found no ComfyUI model inside {type(model).__name__} to tap")
    diffusion_model = base.diffusion_model
    site = tap_site(diffusion_model)
    block_lists = []
    for path in site.block_lists:
        owner_path, _, name = path.rpartition(".")
        block_lists.append((_attribute(diffusion_model, owner_path), name))
    return ModuleTap(model, _attribute(diffusion_model, site.final_layer), block_lists)


def _attribute(module: nn.Module, path: str) -> nn.Module:
    for name in filter(None, path.split(".")):
        module = getattr(module, name)
    return module
