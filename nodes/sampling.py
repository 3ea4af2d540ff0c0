"""FREE KSampler (the free_core engine on a FREE DiT) and FREE Sampler (a SAMPLER for SamplerCustom)."""

from __future__ import annotations

import logging
import time

import torch

import comfy.k_diffusion.sampling
import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import comfy.utils

from ..free_core.batch_conditioning import boundary_groups, refuse_row_dependent_conditioning, timestep_boundaries
from ..free_core.checkpoints import EMBEDDED_CFG_SCALE
from ..free_core.generate import DRAFT_POLICIES, SAMPLER_MODES, draft_length_policy, generate
from ..free_core.k_diffusion_sampler import AncestralStep, sample_free_euler_ancestral
from ..free_core.stats import SamplingStats
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
    """A SAMPLER for SamplerCustom / SamplerCustomAdvanced: speculative euler_ancestral with frozen drafts (any model).

    Its plain law is core euler_ancestral's, with the same eta and s_noise: the variance-exploding step, or the
    rectified-flow step on flow models (Flux, SD3, Wan, ...). Mode off runs core euler_ancestral itself."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": dict(DRAFT_INPUTS), "optional": {  # optional: graphs saved before they existed still load
            "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": False,
                              "tooltip": "euler_ancestral's eta (noise per step); FREE needs eta > 0"}),
            "s_noise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": False,
                                  "tooltip": "euler_ancestral's s_noise; FREE needs s_noise > 0"}),
        }}

    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    CATEGORY = "FREE"

    def get_sampler(self, mode: str, draft_length: int, draft_policy: str, relax_strength: float, eta: float = 1.0,
                    s_noise: float = 1.0):
        if mode == "off":
            return (comfy.samplers.KSAMPLER(_core_euler_ancestral, extra_options={"eta": eta, "s_noise": s_noise}),)
        AncestralStep(eta=eta, s_noise=s_noise).check_stochastic()  # before any model runs
        options = {"draft_length": draft_length_policy(draft_length, draft_policy), "mode": mode,
                   "relax_strength": relax_strength if mode == "relax" else 0.0, "eta": eta, "s_noise": s_noise}
        return (comfy.samplers.KSAMPLER(_free_euler_ancestral, extra_options=options),)


def base_model(model):
    """The BaseModel inside the k-diffusion model wrapper (KSamplerX0Inpaint -> guider -> BaseModel)."""
    inner = model
    while inner is not None and not hasattr(inner, "model_sampling"):
        inner = getattr(inner, "inner_model", None)
    return inner


def is_flow_model(model) -> bool:
    """Whether the k-diffusion model wrapper holds a rectified-flow (CONST) model, found the way core finds it."""
    const = getattr(comfy.model_sampling, "CONST", None)  # absent from ComfyUI before SD3 support
    inner = base_model(model)
    return const is not None and inner is not None and isinstance(inner.model_sampling, const)


def processed_conds(model, extra_args: dict | None) -> list:
    """The cond lists of a run: in extra_args (ComfyUI 2024) or on the guider inside the model wrapper (current)."""
    extra_args = extra_args or {}
    guider_conds = getattr(getattr(model, "inner_model", None), "conds", None)
    return [extra_args.get("cond"), extra_args.get("uncond"), *(guider_conds.values() if isinstance(guider_conds, dict) else [])]


def _free_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, **options):
    conds = processed_conds(model, extra_args)
    refuse_row_dependent_conditioning(conds)  # before any model call
    boundaries = timestep_boundaries(conds)  # timestep / ControlNet ranges: verify each side of a boundary apart
    row_groups = (lambda sigma_rows: boundary_groups(sigma_rows, boundaries)) if boundaries else None
    step = AncestralStep(flow=is_flow_model(model), eta=eta, s_noise=s_noise)
    sink: list = []
    out = sample_free_euler_ancestral(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                                      step=step, stats_sink=sink, cost_key=id(base_model(model)), row_groups=row_groups,
                                      **options)
    _log(sink[0])
    return out


def _core_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """Core euler_ancestral itself (its rectified-flow form on flow models), with the run's statistics logged."""
    stats = SamplingStats("euler-ancestral (core)", len(sigmas) - 1, x.shape[0])
    started = time.perf_counter()
    out = comfy.k_diffusion.sampling.sample_euler_ancestral(model, x, sigmas, extra_args=extra_args, callback=callback,
                                                            disable=disable, **options)
    for _ in range(len(sigmas) - 1):
        stats.record_round(states=x.shape[0], rows=x.shape[0], advances=torch.ones(x.shape[0], dtype=torch.long))
    stats.wall_time_s = time.perf_counter() - started
    _log(stats)
    return out


def _log(stats: SamplingStats) -> None:
    """SamplerCustom has no output for a sampler's statistics: they go to the log (and the tests read them there)."""
    logging.info("FREE Sampler\n%s", stats.summary(), extra={"free_stats": stats.to_dict()})
