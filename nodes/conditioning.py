"""FREE Class Label and FREE Empty Latent."""

from __future__ import annotations

import torch

from ..free_core.models.class_labels import class_choices, resolve_class
from .comfy_model import class_conditioning, free_dit_of


class FREEClassLabel:
    """Positive conditioning for one class, negative for the null class (classifier-free guidance)."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "class_name": (class_choices(), {"tooltip": "type to search: ImageNet-1k classes for DiT-XL/2, "
                                                         "[embedded] classes for the embedded model"}),
            "class_index": ("INT", {"default": -1, "min": -1, "max": 99999,
                                    "tooltip": "-1 uses class_name; otherwise this class index"}),
        }}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "encode"
    CATEGORY = "FREE"

    def encode(self, model, class_name: str, class_index: int):
        dit = free_dit_of(model)
        label, name = resolve_class(class_name, class_index, dit.num_classes)
        return (class_conditioning(label, name), class_conditioning(dit.null_class, "null class (unconditional)"))


class FREEEmptyLatent:
    """An empty LATENT of the DiT's own size: 3x32x32 pixels for the embedded model, 4xSxS SD-VAE latents for DiT-XL/2."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "batch_size": ("INT", {"default": 4, "min": 1, "max": 256})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"
    CATEGORY = "FREE"

    def generate(self, model, batch_size: int):
        dit = free_dit_of(model)
        return ({"samples": torch.zeros(batch_size, dit.in_channels, dit.input_size, dit.input_size)},)
