"""FREE Stats (plot and text of a run) and FREE Decode (pixel-space samples to IMAGE)."""

from __future__ import annotations

from ..free_core.frontdoor.image_tensors import samples_to_images
from ..free_core.evaluation.stats_plot import comparison_text, render_comparison, render_stats_plot, stats_text
from .canvas_text import show_on_node


class FREEStats:
    """Acceptance per step and steps advanced per round (IMAGE); DiT calls saved, acceptance, wall time (STRING,
    and on the node). Reads FREE KSampler's stats, or FREE Sampler's after the SamplerCustom wired to 'after'."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"stats": ("FREE_STATS",)},
                "optional": {"after": ("LATENT", {"tooltip": "FREE Sampler only: SamplerCustom's output, so that the "
                                                             "statistics are read after it has sampled"})},
                "hidden": {"node_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("plot", "summary")
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = "FREE"

    def report(self, stats, after=None, node_id: str | None = None):
        stats = _latest(stats)
        text = stats_text(stats)
        show_on_node(node_id, stats.canvas_text())
        return {"ui": {"text": [text]}, "result": (render_stats_plot(stats).unsqueeze(0), text)}


def _latest(stats):
    """FREE KSampler's statistics, or the latest run of FREE Sampler's channel."""
    return stats.read() if hasattr(stats, "read") else stats


class FREECompare:
    """Baseline, FREE strict and FREE relax side by side: sequential DiT calls, acceptance, wall time and the wall clock
    against the baseline, as a table (IMAGE, STRING and on the node). Same law is not same images: strict's samples
    differ from the baseline's for the same seed, and have the same distribution."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"baseline": ("FREE_STATS",), "strict": ("FREE_STATS",)},
                "optional": {"relax": ("FREE_STATS",)},
                "hidden": {"node_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("table", "text")
    FUNCTION = "compare"
    OUTPUT_NODE = True
    CATEGORY = "FREE"

    def compare(self, baseline, strict, relax=None, node_id: str | None = None):
        runs = {"baseline": _latest(baseline), "FREE strict": _latest(strict)}
        if relax is not None:
            runs["FREE relax"] = _latest(relax)
        text = comparison_text(runs)
        show_on_node(node_id, text)
        return {"ui": {"text": [text]}, "result": (render_comparison(runs).unsqueeze(0), text)}


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
