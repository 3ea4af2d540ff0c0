"""FREE Train Drafter (the FREE DiT's drafter) and FREE Train Tapped Drafter (any tapped model, from recordings)."""

from __future__ import annotations

import os

import comfy.model_management
import comfy.utils

from ..free_core.models.free_drafter import save_drafter
from ..free_core.training.fit_in_process import fit_drafter
from ..free_core.training.train_drafter import DrafterTrainConfig
from ..free_core.training.train_tapped_drafter import (TappedDrafterTrainConfig, load_recordings, resumed_or_fresh_drafter,
                                                       save_trained, train_tapped_drafter)
from .comfy_model import free_dit_of
from .model_folders import drafter_save_path, recordings_folder


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


class FREETrainTappedDrafter:
    """Train a FREE drafter for any tapped model (Flux, SD3, Wan, Qwen-Image, ...) on FREE Record Trajectories' files.

    Progress bar; Cancel stops it and keeps what it learned as <filename>.resume, which the next run with the same
    filename carries on from. Saves models/free_drafters/<filename>.safetensors, for FREE Drafter Loader."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "recordings": ("STRING", {"default": "my_model", "tooltip": "the folder FREE Record Trajectories wrote"}),
            "filename": ("STRING", {"default": "my_model_drafter"}),
            "train_steps": ("INT", {"default": 1000, "min": 1, "max": 1_000_000}),
            "batch_size": ("INT", {"default": 16, "min": 1, "max": 4096}),
            "unroll": ("INT", {"default": 4, "min": 1, "max": 16, "tooltip": "drafts per training example (the K you sample with)"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
        }}

    RETURN_TYPES = ("FREE_DRAFTER",)
    FUNCTION = "train"
    OUTPUT_NODE = True
    CATEGORY = "FREE"

    def train(self, recordings: str, filename: str, train_steps: int, batch_size: int, unroll: int, seed: int):
        path = drafter_save_path(filename)
        recorded, identity = load_recordings(recordings_folder(recordings, must_exist=True))
        config = TappedDrafterTrainConfig(train_steps=train_steps, batch_size=batch_size, unroll=unroll, seed=seed % (2**31))
        resume = path + ".resume"  # an interrupted run of this filename: carry on where it stopped
        drafter = resumed_or_fresh_drafter(resume, recorded, identity, config)
        progress = comfy.utils.ProgressBar(train_steps)

        def on_progress(done: int, total: int, loss: float) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            progress.update_absolute(done, total)

        try:
            drafter, losses = train_tapped_drafter(recorded, identity, config, comfy.model_management.get_torch_device(),
                                                   on_progress, drafter=drafter)
        except comfy.model_management.InterruptProcessingException:
            save_trained(resume, drafter, config.losses, recorded)
            raise
        save_trained(path, drafter, losses, recorded)
        if os.path.isfile(resume):
            os.remove(resume)
        return {"ui": {"text": [f"saved {path} ({len(recorded)} recordings, {len(losses)} steps, "
                                f"final loss {losses[-1]:.4f} of copying the last features' 1.0)"]}, "result": (drafter,)}
