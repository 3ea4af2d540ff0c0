"""FREE Train Drafter: a drafter for the loaded DiT, saved to models/free_drafters."""

from __future__ import annotations

import os

import comfy.model_management
import comfy.utils

from ..free_core.models.free_drafter import save_drafter
from ..free_core.training.fit_in_process import fit_drafter
from ..free_core.training.train_drafter import DrafterTrainConfig
from .comfy_model import free_dit_of
from .model_folders import drafter_save_path


class FREETrainDrafter:
    """Train a FREE drafter on the DiT's own trajectories (progress bar, interruptible); saves a .safetensors."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "filename": ("STRING", {"default": "free_drafter"}),
            "sampling_steps": ("INT", {"default": 50, "min": 2, "max": 1000, "tooltip": "use the steps you sample with"}),
            "trajectories": ("INT", {"default": 32, "min": 1, "max": 100000}),
            "train_steps": ("INT", {"default": 300, "min": 1, "max": 1000000}),
            "batch_size": ("INT", {"default": 16, "min": 1, "max": 4096}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
        }}

    RETURN_TYPES = ("FREE_DRAFTER",)
    FUNCTION = "train"
    OUTPUT_NODE = True
    CATEGORY = "FREE"

    def train(self, model, filename: str, sampling_steps: int, trajectories: int, train_steps: int, batch_size: int, seed: int):
        dit = free_dit_of(model)
        path = drafter_save_path(filename)
        comfy.model_management.load_models_gpu([model])
        cfg = DrafterTrainConfig(sampling_steps=sampling_steps, trajectories=trajectories, train_steps=train_steps,
                                 batch_size=batch_size, seed=seed % (2**31), collect_batch=min(32, trajectories))
        progress = comfy.utils.ProgressBar(1)

        def on_progress(done: int, total: int) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            progress.update_absolute(done, total)

        drafter, losses = fit_drafter(dit, cfg, on_progress)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = path + ".partial"
        save_drafter(partial, drafter, dit.source_name, train_steps=len(losses), sampling_steps=cfg.sampling_steps,
                     cfg_scales=cfg.cfg_scales, final_loss=losses[-1])
        os.replace(partial, path)
        return {"ui": {"text": [f"saved {path} (final loss {losses[-1]:.4f})"]}, "result": (drafter,)}
