"""FREE KSampler (the free_core engine on a FREE DiT) and FREE Sampler (a SAMPLER for SamplerCustom)."""

from __future__ import annotations

import copy
import logging
import math
import time

import torch

import comfy.k_diffusion.sampling
import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import comfy.utils

from ..free_core.engine.batch_conditioning import boundary_groups, refuse_row_dependent_conditioning, timestep_boundaries
from ..free_core.models.checkpoints import EMBEDDED_CFG_SCALE
from ..free_core.frontdoor.generate import generate
from ..free_core.frontdoor.options import (DEFAULT_DRAFT_LENGTH, DEFAULT_DRAFT_POLICY, DEFAULT_RELAX_STRENGTH, DEFAULT_STEPS, DRAFT_POLICIES,
                                 MAX_DRAFT_LENGTH, MAX_STEPS, SAMPLER_MODES, SamplerOptions)
from ..free_core.engine.k_diffusion_sampler import AncestralStep, sample_free_euler_ancestral
from ..free_core.engine.chunking import draft_length_that_fits
from ..free_core.engine.draft_policy import DraftLengthPolicy
from ..free_core.engine.drafter_interface import FrozenDrafter
from ..free_core.engine.stats import SamplingStats
from ..free_core.models.token_drafter import TokenDrafter
from .canvas_text import show_on_node
from .comfy_model import base_model, free_dit_of, labels_from_conditioning, wrapped_with
from .tap import tapped_identity, top_block_tap

MODE_TOOLTIP = "strict: exactly the plain sampler's law; relax: faster, approximate; off: plain ancestral baseline"
DRAFT_INPUTS = {
    "mode": (list(SAMPLER_MODES), {"tooltip": MODE_TOOLTIP}),
    "draft_length": ("INT", {"default": DEFAULT_DRAFT_LENGTH, "min": 1, "max": MAX_DRAFT_LENGTH,
                             "tooltip": "K: transitions drafted per round (adaptive: the largest K tried)"}),
    "draft_policy": (list(DRAFT_POLICIES), {"default": DEFAULT_DRAFT_POLICY, "tooltip":
                     "adaptive: each round's K (up to draft_length) from the acceptance so far and this device's measured "
                     "cost, plain steps where drafting cannot pay; fixed: always draft_length"}),
    "relax_strength": ("FLOAT", {"default": DEFAULT_RELAX_STRENGTH, "min": 0.0, "max": 100.0, "step": 0.1,
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
            "steps": ("INT", {"default": DEFAULT_STEPS, "min": 1, "max": MAX_STEPS}),
            "cfg": ("FLOAT", {"default": EMBEDDED_CFG_SCALE, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            **DRAFT_INPUTS,
        }, "hidden": {"node_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("LATENT", "FREE_STATS")
    RETURN_NAMES = ("LATENT", "stats")
    FUNCTION = "sample"
    CATEGORY = "FREE"

    def sample(self, model, drafter, positive, negative, latent_image, seed: int, steps: int, cfg: float,
               mode: str, draft_length: int, draft_policy: str, relax_strength: float, node_id: str | None = None):
        options = SamplerOptions.from_node_widgets(mode, draft_length, draft_policy, relax_strength, steps=steps, cfg=cfg,
                                                   seed=seed)
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
            show_on_node(node_id, f"step {info['steps_done']} of {info['total_steps']}, "
                                  f"{info['round']} DiT calls so far")

        x0, stats = generate(dit, drafter, labels, options, device, on_round)
        logging.info("FREE KSampler\n%s", stats.summary())
        show_on_node(node_id, stats.canvas_text())
        out = dict(latent_image)
        out["samples"] = model.model.process_latent_out(x0).float().cpu()
        return (out, stats)


class SamplerStatsChannel:
    """FREE Sampler's FREE_STATS output: the statistics of the sampler's latest run, filled when SamplerCustom runs.

    SamplerCustom has no output for a sampler's statistics, so FREE Stats reads them here; wiring SamplerCustom's
    LATENT into FREE Stats orders the reading after the run."""

    def __init__(self) -> None:
        self.latest: SamplingStats | None = None

    def read(self) -> SamplingStats:
        if self.latest is None:
            raise ValueError("FREE Stats ran before the FREE Sampler it reads had sampled: connect the sampler node's "
                             "output LATENT (SamplerCustom) to FREE Stats's 'after' input")
        return self.latest


class FREESampler:
    """A SAMPLER for SamplerCustom / SamplerCustomAdvanced: speculative euler_ancestral, frozen drafts (any model) or
    a learned drafter for the model (FREE Drafter Loader, trained with FREE Train Tapped Drafter).

    Its plain law is core euler_ancestral's, with the same eta and s_noise: the variance-exploding step, or the
    rectified-flow step on flow models (Flux, SD3, Wan, ...). Mode off runs core euler_ancestral itself. The
    statistics of each run are shown on this node and reach FREE Stats through the 'stats' output."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": dict(DRAFT_INPUTS), "optional": {  # optional: graphs saved before they existed still load
            "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": False,
                              "tooltip": "euler_ancestral's eta (noise per step); FREE needs eta > 0"}),
            "s_noise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": False,
                                  "tooltip": "euler_ancestral's s_noise; FREE needs s_noise > 0"}),
            "drafter": ("FREE_DRAFTER", {"tooltip": "a learned drafter for this model (FREE Drafter Loader); "
                                                    "unconnected: frozen drafts, which need no training"}),
        }, "hidden": {"node_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("SAMPLER", "FREE_STATS")
    RETURN_NAMES = ("SAMPLER", "stats")
    OUTPUT_TOOLTIPS = ("for SamplerCustom / SamplerCustomAdvanced",
                       "the latest run's statistics, for FREE Stats (wire the sampler's LATENT into its 'after' input)")
    FUNCTION = "get_sampler"
    CATEGORY = "FREE"

    def get_sampler(self, mode: str, draft_length: int, draft_policy: str, relax_strength: float, eta: float = 1.0,
                    s_noise: float = 1.0, drafter=None, node_id: str | None = None):
        # steps, cfg and seed are SamplerCustom's
        options = SamplerOptions.from_node_widgets(mode, draft_length, draft_policy, relax_strength)
        channel = SamplerStatsChannel()
        report = {"stats_channel": channel, "node_id": node_id}
        if mode == "off":
            sampler = comfy.samplers.KSAMPLER(_core_euler_ancestral, extra_options={"eta": eta, "s_noise": s_noise, **report})
            return (sampler, channel)
        AncestralStep(eta=eta, s_noise=s_noise).check_stochastic()  # before any model runs
        extra = {"draft_length": options.policy(), "mode": mode, "relax_strength": options.strength, "eta": eta,
                 "s_noise": s_noise, "token_drafter": learned_drafter(drafter), **report}
        return (comfy.samplers.KSAMPLER(_free_euler_ancestral, extra_options=extra), channel)


def is_flow_model(model) -> bool:
    """Whether the k-diffusion model wrapper holds a rectified-flow (CONST) model, found the way core finds it."""
    const = getattr(comfy.model_sampling, "CONST", None)  # absent from ComfyUI before SD3 support
    inner = base_model(model)
    return const is not None and inner is not None and isinstance(inner.model_sampling, const)


def model_input_of(model):
    """(x, sigma rows) -> the model's input (`calculate_input`: x / sqrt(sigma^2 + 1) for EPS, x for flow models)."""
    sampling = base_model(model).model_sampling
    return lambda x, sigma: sampling.calculate_input(sigma.to(x), x)


def compute_dtype(model) -> torch.dtype:
    """The dtype a ComfyUI model computes in (its manual-cast dtype when its weights are stored in another)."""
    base = base_model(model)
    return getattr(base, "manual_cast_dtype", None) or base.get_dtype()


def architecture_key(base) -> str:
    """What a model's forward cost depends on, stable across processes: its classes and parameter count."""
    inner = getattr(base, "diffusion_model", base)
    return f"{type(base).__name__}/{type(inner).__name__}/{sum(p.numel() for p in inner.parameters())} parameters"


def processed_conds(model, extra_args: dict | None) -> list:
    """The cond lists of a run: in extra_args (ComfyUI 2024) or on the guider inside the model wrapper (current)."""
    extra_args = extra_args or {}
    guider_conds = getattr(getattr(model, "inner_model", None), "conds", None)
    return [extra_args.get("cond"), extra_args.get("uncond"), *(guider_conds.values() if isinstance(guider_conds, dict) else [])]


def cfg_branches(model, extra_args: dict | None) -> int:
    """Model rows per state in a guided call: the cond lists the guider evaluates (the uncond is skipped at cfg 1)."""
    extra_args = extra_args or {}
    guider = getattr(model, "inner_model", None)
    if isinstance(getattr(guider, "conds", None), dict):  # current ComfyUI: a guider holds its conds and cfg
        conds, cfg = guider.conds, getattr(guider, "cfg", None)
        branches = sum(1 for cond in conds.values() if cond)
        skipped = "negative" in conds and cfg is not None and math.isclose(cfg, 1.0)
    else:  # ComfyUI 2024: cond, uncond and cond_scale in extra_args
        branches = 1 + (extra_args.get("uncond") is not None)
        skipped = extra_args.get("uncond") is not None and math.isclose(extra_args.get("cond_scale", 1.0), 1.0)
    model_options = extra_args.get("model_options") or {}
    if skipped and not model_options.get("disable_cfg1_optimization", False):
        branches -= 1
    return max(branches, 1)


UNVOUCHED_WRAPPERS = ("calc_cond_batch", "apply_model", "diffusion_model")  # WrappersMP kinds around a model call


def model_patches_that_break_rows(model_options: dict | None) -> list[str]:
    """Model patches strict cannot vouch for: wrappers of the model call and block replacements. A FREE round evaluates
    states of several steps in one call; a patch that caches across calls (TeaCache, MagCache, EasyCache, FBCache)
    or skips blocks on what it saw at the previous call would then compute other outputs than for the plain sampler."""
    model_options = model_options or {}
    found = []
    if model_options.get("model_function_wrapper") is not None:
        found.append("a model function wrapper (set_model_unet_function_wrapper)")
    transformer_options = model_options.get("transformer_options") or {}
    for kind in UNVOUCHED_WRAPPERS:
        keys = [key for key, wrappers in (transformer_options.get("wrappers") or {}).get(kind, {}).items() if wrappers]
        found += [f"a {kind} wrapper ({key})" for key in keys]
    if (transformer_options.get("patches_replace") or {}).get("dit"):
        found.append("block replacements (patches_replace['dit'])")
    return found


def refuse_model_patches(model_options: dict | None) -> None:
    found = model_patches_that_break_rows(model_options)
    if found:
        raise ValueError(f"FREE Sampler (strict/relax) cannot vouch for these model patches: {', '.join(found)}. A round evaluates "
                         "several steps' states in one call, which caching or block-skipping patches (TeaCache, MagCache, "
                         "EasyCache, FBCache) answer differently from the plain sampler; remove the patch node, or use mode off")


def policy_that_fits(policy: DraftLengthPolicy, model, x: torch.Tensor, branches: int) -> DraftLengthPolicy:
    """On a GPU: first ask ComfyUI's memory management for the largest verification batch, (K + 1) x batch x branches
    rows by the model's own estimate (`memory_required`), as its prepare_sampling asked for one step's, so that it
    offloads other models now; then lower K until that batch fits in what is free, so a round stays one call. A copy,
    since a cached node hands the same policy to later runs. A lowered K changes the image, not the law. On the CPU,
    out-of-memory chunking alone serves."""
    if x.device.type == "cpu":
        return policy
    base = base_model(model)
    rows_per_state = x.shape[0] * branches

    def bytes_for_rows(rows: int) -> float:
        return base.memory_required([rows, *x.shape[1:]])

    patcher = _model_patcher(model)
    if patcher is not None:  # the guider's MODEL: current ComfyUI; 2024 ComfyUI keeps no reference to it here
        comfy.model_management.load_models_gpu([patcher], memory_required=bytes_for_rows((policy.longest + 1) * rows_per_state))
    fits = draft_length_that_fits(bytes_for_rows, comfy.model_management.get_free_memory(x.device), rows_per_state,
                                  policy.longest)
    if fits < policy.longest:
        logging.info("FREE Sampler: K lowered from %d to %d so that a round's verification batch fits in memory",
                     policy.longest, fits)
    fitted = copy.copy(policy)
    fitted.limit(fits)
    return fitted


def _model_patcher(model):
    """The ModelPatcher of the guider inside the k-diffusion model wrapper, if this ComfyUI keeps one there."""
    guider = wrapped_with(model, "model_patcher")
    return None if guider is None else guider.model_patcher


def learned_drafter(drafter) -> TokenDrafter | None:
    """FREE Sampler's drafter input: a token drafter, or None for frozen drafts; the FREE DiT's own drafter is refused."""
    if drafter is None or isinstance(drafter, (FrozenDrafter, TokenDrafter)):
        return drafter if isinstance(drafter, TokenDrafter) else None
    raise ValueError(f"drafter: the {getattr(drafter, 'name', type(drafter).__name__)} drafter belongs to the FREE DiT and "
                     "drafts for FREE KSampler; FREE Sampler takes a drafter trained for its model with FREE Train Tapped "
                     "Drafter, or none (frozen drafts)")


def _free_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                          stats_channel=None, node_id=None, token_drafter=None, **options):
    conds = processed_conds(model, extra_args)
    refuse_row_dependent_conditioning(conds)  # before any model call
    refuse_model_patches((extra_args or {}).get("model_options"))
    if token_drafter is not None:  # refused now, before any model call, if it was trained for another model
        token_drafter.check_fits(tapped_identity(model), "the drafter")
        options.update(drafter=token_drafter.to(device=x.device, dtype=compute_dtype(model)), tapped=top_block_tap(model),
                       model_input=model_input_of(model))
    boundaries = timestep_boundaries(conds)  # timestep / ControlNet ranges: verify each side of a boundary apart
    row_groups = (lambda sigma_rows: boundary_groups(sigma_rows, boundaries)) if boundaries else None
    step = AncestralStep(flow=is_flow_model(model), eta=eta, s_noise=s_noise)
    branches = cfg_branches(model, extra_args)
    options["draft_length"] = policy_that_fits(options["draft_length"], model, x, branches)
    sink: list = []
    out = sample_free_euler_ancestral(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                                      step=step, stats_sink=sink, cost_key=architecture_key(base_model(model)), row_groups=row_groups,
                                      cfg_branches=branches, measure_plain_step=True,
                                      on_round=lambda stats: show_on_node(node_id, stats.progress_line()), **options)
    _report(sink[0], stats_channel, node_id)
    return out


def _core_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, stats_channel=None,
                          node_id=None, **options):
    """Core euler_ancestral itself (its rectified-flow form on flow models), with the run's statistics reported."""
    stats = SamplingStats("euler-ancestral (core)", len(sigmas) - 1, x.shape[0])
    started = time.perf_counter()
    out = comfy.k_diffusion.sampling.sample_euler_ancestral(model, x, sigmas, extra_args=extra_args, callback=callback,
                                                            disable=disable, **options)
    n, branches = x.shape[0], cfg_branches(model, extra_args)
    for _ in range(len(sigmas) - 1):
        stats.record_round(states=n, rows=n * branches, advances=torch.ones(n, dtype=torch.long))
    stats.wall_time_s = time.perf_counter() - started
    _report(stats, stats_channel, node_id)
    return out


def _report(stats: SamplingStats, channel: SamplerStatsChannel | None, node_id: str | None) -> None:
    """A run's statistics: on the FREE Sampler node, in its FREE_STATS output, and in the log."""
    if channel is not None:
        channel.latest = stats
    show_on_node(node_id, stats.canvas_text())
    logging.info("FREE Sampler\n%s", stats.summary(), extra={"free_stats": stats.to_dict()})
