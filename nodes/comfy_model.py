"""A free_core DiT as a ComfyUI MODEL: a `BaseModel` on a `BASE` config, wrapped in a `ModelPatcher`.

Core samplers see an eps-prediction model on DiT's schedule (linear betas 1e-4..0.02 over 1000
steps, which ComfyUI calls "sqrt_linear"); class labels reach the DiT as the `y` keyword, taken from
the `free_class_label` entry of the conditioning (FREE Class Label). The learned-sigma channels are
dropped for core samplers; FREE KSampler runs the free_core engine on the same DiT, with them.
"""

from __future__ import annotations

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base

from ..free_core.models.dit import DiT
from ..free_core.models.model_specs import resolve_dtype

LABEL_KEY = "free_class_label"


class PixelSpace(comfy.latent_formats.LatentFormat):
    """RGB pixels in [-1, 1] (the embedded 32x32 DiT): no VAE, no scaling."""

    latent_channels = 3
    scale_factor = 1.0
    latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    latent_rgb_factors_bias = None


class DiTLatentConfig(comfy.supported_models_base.BASE):
    """DiT on SD-VAE latents (DiT-XL/2): the SD1.5 latent format (scale 0.18215), DiT's linear betas."""

    unet_config: dict = {}
    unet_extra_config: dict = {}
    latent_format = comfy.latent_formats.SD15
    sampling_settings = {"beta_schedule": "sqrt_linear", "linear_start": 1e-4, "linear_end": 0.02}
    memory_usage_factor = 1.0
    # The DiT computes in its weights' dtype (FREE DiT Loader's `dtype`): ComfyUI's BaseModel feeds it that dtype
    # (get_dtype, from DiTEpsAdapter.dtype) and casts its output to float32, as the free_core engine does.
    supported_inference_dtypes = [torch.float32, torch.bfloat16, torch.float16]


class DiTPixelConfig(DiTLatentConfig):
    latent_format = PixelSpace


class DiTEpsAdapter(torch.nn.Module):
    """The diffusion_model seen by ComfyUI: (x, timesteps, y) -> eps, the learned-sigma channels dropped."""

    def __init__(self, dit: DiT):
        super().__init__()
        self.dit = dit

    @property
    def dtype(self) -> torch.dtype:
        return next(self.dit.parameters()).dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context=None, y: torch.Tensor | None = None,
                control=None, transformer_options=None, **kwargs) -> torch.Tensor:
        if y is None:
            raise ValueError(
                "the FREE DiT got no class label: connect its positive and negative conditioning to FREE Class Label "
                "(text conditioning from CLIP does not apply to a class-conditional DiT)"
            )
        out = self.dit(x, timesteps, y.long().reshape(-1))  # (N, C', H, W)
        return out[:, : self.dit.in_channels]


class FreeDiTModel(comfy.model_base.BaseModel):
    """BaseModel for a free_core DiT; `free_dit` is the DiT itself (FREE KSampler runs it directly)."""

    def __init__(self, model_config: comfy.supported_models_base.BASE, dit: DiT, device=None):
        adapter = DiTEpsAdapter(dit)
        super().__init__(model_config, comfy.model_base.ModelType.EPS, device=device, unet_model=lambda **_: adapter)

    @property
    def free_dit(self) -> DiT:
        return self.diffusion_model.dit

    def extra_conds(self, **kwargs) -> dict:
        out = {}
        label = kwargs.get(LABEL_KEY)
        if label is not None:
            out["y"] = comfy.conds.CONDRegular(label)
        return out


def model_patcher_for(dit: DiT) -> comfy.model_patcher.ModelPatcher:
    """A ComfyUI MODEL for `dit` (pixel-space or SD-VAE latent space, chosen by its channel count)."""
    config_class = DiTPixelConfig if dit.in_channels == 3 else DiTLatentConfig
    if dit.in_channels not in (3, 4):
        raise ValueError(f"a DiT with {dit.in_channels} input channels is neither RGB pixels (3) nor SD-VAE latents (4)")
    config = config_class({})
    # No manual cast: the DiT is built from torch.nn layers, not comfy.ops, so ComfyUI could cast its inputs but not
    # its weights; the loader puts the weights in a dtype the device computes in, or refuses the dtype.
    config.set_inference_dtype(next(dit.parameters()).dtype, None)
    model = FreeDiTModel(config, dit, device="cpu")
    return comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(), offload_device=comfy.model_management.unet_offload_device()
    )


def inference_dtype(name: str) -> torch.dtype:
    """FREE DiT Loader's `dtype` choice, refused (naming the input) where ComfyUI's device cannot compute in it."""
    return resolve_dtype(name, comfy.model_management.get_torch_device(), option="dtype")


def free_dit_of(model) -> DiT:
    """The free_core DiT inside a MODEL from FREE DiT Loader; a clear error for any other MODEL."""
    inner = getattr(model, "model", None)
    if not isinstance(inner, FreeDiTModel):
        raise ValueError(
            f"this node needs a MODEL from FREE DiT Loader, got {type(inner).__name__}; "
            "FREE Sampler (with SamplerCustom) works with any model"
        )
    return inner.free_dit


def labels_from_conditioning(conditioning: list, what: str) -> torch.Tensor:
    """The class label tensor of a conditioning made by FREE Class Label."""
    labels = [entry[1].get(LABEL_KEY) for entry in conditioning if len(entry) > 1 and isinstance(entry[1], dict)]
    labels = [label for label in labels if label is not None]
    if not labels:
        raise ValueError(f"the {what} conditioning carries no class label: connect it to FREE Class Label")
    return labels[0].long().reshape(-1)


def class_conditioning(label: int, name: str) -> list:
    """CONDITIONING holding one class label (the cross-attention tensor is a placeholder the DiT ignores)."""
    return [[torch.zeros(1, 1, 1), {LABEL_KEY: torch.tensor([label], dtype=torch.long), "free_class_name": name}]]


def wrapped_with(model, attribute: str):
    """The first object along the k-diffusion model wrapper's `inner_model` chain (KSamplerX0Inpaint -> guider ->
    BaseModel) that has `attribute`; None if none has."""
    inner = model
    while inner is not None and not hasattr(inner, attribute):
        inner = getattr(inner, "inner_model", None)
    return inner


def base_model(model):
    """The BaseModel inside the k-diffusion model wrapper (KSamplerX0Inpaint -> guider -> BaseModel)."""
    return wrapped_with(model, "model_sampling")
