"""FREE KSampler (the free_core engine on a FREE DiT) and FREE Sampler (a SAMPLER for SamplerCustom)."""

from __future__ import annotations

import logging

import torch

import comfy.model_management
import comfy.samplers
import comfy.utils

from ..free_core.checkpoints import EMBEDDED_CFG_SCALE
from ..free_core.generate import DRAFT_POLICIES, SAMPLER_MODES, draft_length_policy, generate
from ..free_core.k_diffusion_sampler import sample_euler_ancestral, sample_free_euler_ancestral
from .comfy_model import free_dit_of, labels_from_conditioning

MODE_TOOLTIP = "strict: exactly the plain sampler's law; relax: faster, approximate; off: plain ancestral baseline"
DRAFT_INPUTS = {
    "mode": (list(SAMPLER_MODES), {"tooltip": MODE_TOOLTIP}),
    "draft_length": ("INT", {"default": 6, "min": 1, "max": 64, "tooltip": "K: transitions drafted per round"}),
    "draft_policy": (list(DRAFT_POLICIES), {"tooltip": "fixed K, or adaptive K from the acceptance so far"}),
    "relax_strength": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                 "tooltip": "relax mode only: how much to temper acceptance in the last steps"}),
}


class FREEKSampler:
    """Class-conditional DiT sampling with FREE: fewer sequential DiT calls for the same steps."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "drafter": ("FREE_DRAFTER",),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT", {"tooltip": "gives the batch size and shape (FREE Empty Latent); sampling starts from noise"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000}),
            "cfg": ("FLOAT", {"default": EMBEDDED_CFG_SCALE, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            **DRAFT_INPUTS,
        }}

    RETURN_TYPES = ("LATENT", "FREE_STATS")
    RETURN_NAMES = ("LATENT", "stats")
    FUNCTION = "sample"
    CATEGORY = "FREE"

    def sample(self, model, drafter, positive, negative, latent_image, seed: int, steps: int, cfg: float,
               mode: str, draft_length: int, draft_policy: str, relax_strength: float):
        dit = free_dit_of(model)
        samples = latent_image["samples"]
        expected = (dit.in_channels, dit.input_size, dit.input_size)
        if samples.ndim != 4 or tuple(samples.shape[1:]) != expected:
            raise ValueError(f"latent_image has shape {tuple(samples.shape)}, but this DiT samples (batch, {expected[0]}, "
                             f"{expected[1]}, {expected[2]}); make it with FREE Empty Latent")
        if latent_image.get("noise_mask") is not None:
            raise ValueError("FREE KSampler samples from pure noise and does not support a noise mask (inpainting)")
        labels = labels_from_conditioning(positive, "positive")
        if labels.numel() == 1:
            labels = labels.repeat(samples.shape[0])
        if labels.numel() != samples.shape[0]:
            raise ValueError(f"positive conditioning has {labels.numel()} labels for a batch of {samples.shape[0]}")
        null = labels_from_conditioning(negative, "negative")
        if (null != dit.null_class).any():
            raise ValueError(f"the negative conditioning must be the null class {dit.null_class} (FREE Class Label's "
                             f"'negative' output), got {null.tolist()}")

        comfy.model_management.load_models_gpu([model])
        device = model.load_device
        if isinstance(drafter, torch.nn.Module):
            drafter = drafter.to(device)
        progress = comfy.utils.ProgressBar(steps)

        def on_round(info: dict) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            progress.update_absolute(info["steps_done"], info["total_steps"])

        x0, stats = generate(dit, drafter, labels, seed, steps, cfg, mode, draft_length_policy(draft_length, draft_policy),
                             relax_strength, device, on_round)
        logging.info("FREE KSampler\n%s", stats.summary())
        out = dict(latent_image)
        out["samples"] = model.model.process_latent_out(x0).float().cpu()
        return (out, stats)


class FREESampler:
    """A SAMPLER for SamplerCustom / SamplerCustomAdvanced: speculative Euler-ancestral with frozen drafts (any model)."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": dict(DRAFT_INPUTS)}

    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    CATEGORY = "FREE"

    def get_sampler(self, mode: str, draft_length: int, draft_policy: str, relax_strength: float):
        if mode == "off":
            return (comfy.samplers.KSAMPLER(_logged(sample_euler_ancestral)),)
        options = {"draft_length": draft_length_policy(draft_length, draft_policy), "mode": mode,
                   "relax_strength": relax_strength if mode == "relax" else 0.0}
        return (comfy.samplers.KSAMPLER(_logged(sample_free_euler_ancestral), extra_options=options),)


def _logged(sampler):
    """The sampler, logging its statistics after each run (SamplerCustom has no output for them)."""

    def run(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        sink: list = []
        out = sampler(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, stats_sink=sink, **options)
        logging.info("FREE Sampler\n%s", sink[0].summary(), extra={"free_stats": sink[0].to_dict()})
        return out

    return run
