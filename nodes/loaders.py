"""FREE DiT Loader and FREE Drafter Loader."""

from __future__ import annotations

from ..free_core.checkpoints import EMBEDDED_DIT, EMBEDDED_DRAFTER, load_dit
from ..free_core.drafter import load_drafter
from ..free_core.drafting import FrozenDrafter
from .comfy_model import free_dit_of, model_patcher_for
from .model_folders import DRAFTER_FOLDER, dit_folder, full_path, list_files

EMBEDDED = "embedded"
FROZEN = "frozen (training-free)"
DIT_SUFFIXES = (".safetensors", ".pt", ".pth")


class FREEDiTLoader:
    """A DiT as a MODEL: the embedded 32x32 pixel model, or a DiT checkpoint (e.g. DiT-XL-2-256x256.pt)."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"dit_name": ([EMBEDDED] + list_files(dit_folder(), DIT_SUFFIXES), {
            "tooltip": "'embedded' needs no download; official DiT checkpoints go in models/diffusion_models "
                       "(models/unet in older ComfyUI). .pt files are read with torch.load(weights_only=True)."})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "FREE"

    def load(self, dit_name: str):
        if dit_name == EMBEDDED:
            if not EMBEDDED_DIT.is_file():
                raise FileNotFoundError(f"the embedded DiT weights are missing at {EMBEDDED_DIT}; reinstall ComfyUI-FREE")
            path = EMBEDDED_DIT
        else:
            path = full_path(dit_folder(), dit_name)
        dit = load_dit(path)
        dit.source_name = f"DiT {dit_name!r}"
        return (model_patcher_for(dit),)


class FREEDrafterLoader:
    """The drafter for a DiT: embedded, training-free (frozen), or a file from models/free_drafters."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "drafter_name": ([EMBEDDED, FROZEN] + list_files(DRAFTER_FOLDER, (".safetensors",)), {
                "tooltip": "'embedded' belongs to the embedded DiT; 'frozen' reuses the last DiT output and works with "
                           "any DiT; a file must have been trained for this DiT (FREE Train Drafter)."}),
        }}

    RETURN_TYPES = ("FREE_DRAFTER",)
    FUNCTION = "load"
    CATEGORY = "FREE"

    def load(self, model, drafter_name: str):
        if drafter_name == FROZEN:
            return (FrozenDrafter(),)
        dit = free_dit_of(model)
        if drafter_name == EMBEDDED:
            if not EMBEDDED_DRAFTER.is_file():
                raise FileNotFoundError(f"the embedded drafter is missing at {EMBEDDED_DRAFTER}; reinstall ComfyUI-FREE")
            path = EMBEDDED_DRAFTER
        else:
            path = full_path(DRAFTER_FOLDER, drafter_name)
        return (load_drafter(path, dit),)
