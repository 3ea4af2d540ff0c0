"""FREE DiT Loader and FREE Drafter Loader."""

from __future__ import annotations

from ..free_core.models.model_specs import DTYPES, EMBEDDED, FROZEN, resolve_dit, resolve_drafter
from ..free_core.models.token_drafter import is_token_drafter_file, load_token_drafter
from .comfy_model import free_dit_of, inference_dtype, model_patcher_for
from .model_folders import DRAFTER_FOLDER, dit_folder, full_path, list_files
from .tap import tapped_identity

FROZEN_CHOICE = "frozen (training-free)"
DIT_SUFFIXES = (".safetensors", ".pt", ".pth")


class FREEDiTLoader:
    """A DiT as a MODEL: the embedded 32x32 pixel model, or a DiT checkpoint (e.g. DiT-XL-2-256x256.pt)."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"dit_name": ([EMBEDDED] + list_files(dit_folder(), DIT_SUFFIXES), {
                "tooltip": "'embedded' needs no download; official DiT checkpoints go in models/diffusion_models "
                           "(models/unet in older ComfyUI). .pt files are read with torch.load(weights_only=True)."})},
            "optional": {"dtype": (list(DTYPES), {
                "default": "float32",
                "tooltip": "the dtype the DiT and its drafter compute in (bfloat16: faster on GPUs, half the memory); "
                           "samples stay float32 and FREE strict keeps the law of the plain sampler in this dtype."})},
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "FREE"

    def load(self, dit_name: str, dtype: str = "float32"):
        spec = dit_name if dit_name == EMBEDDED else full_path(dit_folder(), dit_name)
        return (model_patcher_for(resolve_dit(spec, option="dit_name", dtype=inference_dtype(dtype))),)


class FREEDrafterLoader:
    """The drafter for a model: embedded, training-free (frozen), or a file from models/free_drafters (the FREE DiT's,
    or one trained for a tapped model such as Flux or Wan, which FREE Sampler takes)."""

    DESCRIPTION = __doc__  # shown by the ComfyUI frontend

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "drafter_name": ([EMBEDDED, FROZEN_CHOICE] + list_files(DRAFTER_FOLDER, (".safetensors",)), {
                "tooltip": "'embedded' belongs to the embedded DiT; 'frozen' reuses the last output and works with any "
                           "model; a file must have been trained for this model (FREE Train Drafter, or FREE Train "
                           "Tapped Drafter)."}),
        }}

    RETURN_TYPES = ("FREE_DRAFTER",)
    FUNCTION = "load"
    CATEGORY = "FREE"

    def load(self, model, drafter_name: str):
        if drafter_name == FROZEN_CHOICE:
            spec = FROZEN
        elif drafter_name != EMBEDDED and is_token_drafter_file(full_path(DRAFTER_FOLDER, drafter_name)):
            return (load_token_drafter(full_path(DRAFTER_FOLDER, drafter_name), tapped_identity(model)),)
        else:
            spec = drafter_name if drafter_name == EMBEDDED else full_path(DRAFTER_FOLDER, drafter_name)
        return (resolve_drafter(spec, free_dit_of(model), option="drafter_name"),)
