"""FREE Stats (plot and text of a run) and FREE Decode (pixel-space samples to IMAGE)."""

from __future__ import annotations

from ..free_core.image_tensors import samples_to_images
from ..free_core.stats_plot import render_stats_plot, stats_text


class FREEStats:
    """Acceptance per step and steps advanced per round (IMAGE); DiT calls saved, acceptance, wall time (STRING)."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"stats": ("FREE_STATS",)}}

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("plot", "summary")
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = "FREE"

    def report(self, stats):
        text = stats_text(stats)
        return {"ui": {"text": [text]}, "result": (render_stats_plot(stats).unsqueeze(0), text)}


class FREEDecode:
    """LATENT of the pixel-space embedded model to IMAGE (no VAE), upscaled by pixel repetition for viewing."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "scale": ("INT", {"default": 4, "min": 1, "max": 32})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "FREE"

    def decode(self, samples, scale: int):
        return (samples_to_images(samples["samples"], scale),)
