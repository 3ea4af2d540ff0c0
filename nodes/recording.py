"""FREE Record Trajectories: a SAMPLER that samples plain euler_ancestral and records what a drafter learns from."""

from __future__ import annotations

import os
import time

import comfy.samplers

from ..free_core.engine.k_diffusion_sampler import AncestralStep
from ..free_core.training.train_tapped_drafter import record_trajectories, save_recording
from .canvas_text import show_on_node
from .model_folders import recordings_folder
from .sampling import is_flow_model, model_input_of
from .tap import tapped_identity, top_block_tap


class FREERecordTrajectories:
    """A SAMPLER for SamplerCustom that records trajectories for FREE Train Tapped Drafter while it samples.

    It is FREE Sampler's plain law itself (euler_ancestral, the flow form on flow models), so the images are what
    FREE strict would give; each run adds one file under models/free_recordings/<recordings>: the model's top-block
    features, their modulation and the state changes, per step. Run your own prompts, resolutions and step counts."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "recordings": ("STRING", {"default": "my_model", "tooltip": "folder under models/free_recordings: one per model"}),
            "max_tokens": ("INT", {"default": 1024, "min": 0, "max": 1_000_000, "tooltip":
                                   "tokens kept per image, drawn at random (the drafter is per token); 0 keeps all"}),
        }, "optional": {
            "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": False}),
            "s_noise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": False}),
        }, "hidden": {"node_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    CATEGORY = "FREE"

    def get_sampler(self, recordings: str, max_tokens: int, eta: float = 1.0, s_noise: float = 1.0,
                    node_id: str | None = None):
        folder = recordings_folder(recordings)  # a bad name is refused here, before any model runs
        AncestralStep(eta=eta, s_noise=s_noise).check_stochastic()
        return (comfy.samplers.KSAMPLER(_record, extra_options={"folder": folder, "max_tokens": max_tokens or None,
                                                               "eta": eta, "s_noise": s_noise, "node_id": node_id}),)


def _record(model, x, sigmas, extra_args=None, callback=None, disable=None, folder="", max_tokens=None, eta=1.0,
            s_noise=1.0, node_id=None):
    identity, tapped = tapped_identity(model), top_block_tap(model)
    step = AncestralStep(flow=is_flow_model(model), eta=eta, s_noise=s_noise)
    samples, recording = record_trajectories(tapped, identity, x, sigmas, extra_args or {}, step, max_tokens, callback,
                                             model_input_of(model))
    name = f"{time.strftime('%Y%m%d-%H%M%S')}_{(extra_args or {}).get('seed', 0)}_{os.getpid()}.safetensors"
    path = save_recording(os.path.join(folder, name), recording, identity)
    count = len([f for f in os.listdir(folder) if f.endswith(".safetensors")])
    show_on_node(node_id, f"recorded {x.shape[0]} trajectories of {len(sigmas) - 1} steps: {count} files in {folder}")
    return samples
