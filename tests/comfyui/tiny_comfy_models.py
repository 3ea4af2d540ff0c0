"""Tiny random models built from ComfyUI's own classes (supported_models configs, model_base models), one per family.

Each family: its supported_models class, a unet config small enough for CPU tests, a conditioning factory and
a latent shape (batch 2). Random weights from a fixed seed: ComfyUI's layers skip initialization.
"""

from __future__ import annotations

import torch


def text_conditioning(tokens: int, width: int, pooled: int | None = None, attended: int | None = None, **extra):
    """A conditioning factory: random text tokens (and a pooled vector) from a seeded generator; `attended` gives an
    attention mask over the tokens whose first `attended` are real (the rest padding), as LLM text encoders return."""

    def make(generator: torch.Generator) -> list:
        options = dict(extra)
        if pooled:
            options["pooled_output"] = torch.randn(1, pooled, generator=generator)
        if attended is not None:
            options["attention_mask"] = (torch.arange(tokens) < attended).long().unsqueeze(0)
        return [[torch.randn(1, tokens, width, generator=generator), options]]

    return make


# family: (supported_models class, unet config, conditioning factory, latent shape (batch 2))
FAMILIES = {
    "flux": ("Flux", {"image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16, "vec_in_dim": 16,
                      "context_in_dim": 32, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
                      "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True},
             text_conditioning(4, 32, pooled=16, guidance=3.5), (2, 16, 8, 8)),
    "sd3": ("SD3", {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 2, "input_size": None,
                    "adm_in_channels": 16, "num_patches": 64, "pos_embed_max_size": 8, "pos_embed_scaling_factor": None,
                    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}},
                    "x_block_self_attn_layers": []},
            text_conditioning(4, 32, pooled=16), (2, 16, 8, 8)),
    "wan": ("WAN21_T2V", {"image_model": "wan2.1", "model_type": "t2v", "dim": 64, "out_dim": 16, "num_heads": 2, "ffn_dim": 128,
                          "num_layers": 2, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
                          "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16, "text_dim": 32, "text_len": 8},
            text_conditioning(4, 32), (2, 16, 2, 8, 8)),
    "qwen": ("QwenImage", {"image_model": "qwen_image", "in_channels": 64, "num_layers": 2, "attention_head_dim": 32,
                           "num_attention_heads": 2, "joint_attention_dim": 32, "axes_dims_rope": (8, 12, 12)},
             text_conditioning(4, 32), (2, 16, 1, 8, 8)),
    # Chroma: Flux's blocks with modulations from its own approximator (timestep and guidance, no pooled text; T5 gives
    # pooled_output None); patches are packed into the linear img_in (in_channels = 16 x 2 x 2)
    "chroma": ("Chroma", {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": 32,
                          "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
                          "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True,
                          "in_dim": 64, "out_dim": 64, "hidden_dim": 64, "n_layers": 1},
               text_conditioning(4, 32, pooled_output=None, guidance=0.0), (2, 16, 8, 8)),
    # HunyuanVideo (T2V, guidance-distilled): LLM tokens, CLIP-L pooled vector, 3D patches. No attention mask (its
    # text encoder drops an all-ones one): ComfyUI's HunyuanVideo builds a mask for one row, so batch 2 needs none
    "hunyuan": ("HunyuanVideo", {"image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16, "vec_in_dim": 16,
                                 "context_in_dim": 32, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
                                 "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 256, "patch_size": [1, 2, 2],
                                 "qkv_bias": True, "guidance_embed": True, "byt5": False, "meanflow": False},
                text_conditioning(4, 32, pooled=16, guidance=6.0), (2, 16, 2, 8, 8)),
    # Lumina 2 (NextDiT): caption tokens come first in its token order; Gemma's attention mask gives num_tokens
    "lumina": ("Lumina2", {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64, "cap_feat_dim": 32,
                           "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "multiple_of": 16,
                           "qk_norm": True, "axes_dims": [8, 12, 12], "axes_lens": [300, 512, 512]},
               text_conditioning(4, 32, attended=4), (2, 16, 8, 8)),
}


def tiny_comfy_model(config_name: str, unet: dict, conds, latent_shape: tuple):
    """A tiny random model from ComfyUI's own config and model classes (fp32, CPU), its conditionings and latent."""
    import comfy.model_patcher
    import comfy.supported_models

    config = getattr(comfy.supported_models, config_name)(dict(unet))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    generator = torch.Generator().manual_seed(0)
    for parameter in model.diffusion_model.parameters():  # ComfyUI's layers skip initialization
        parameter.data = torch.randn(parameter.shape, generator=generator) * 0.05
    # Some buffers are torch.empty too (SD3's pos_embed): arbitrary memory, NaN included, different in every process.
    for buffer in model.diffusion_model.buffers():
        if buffer.is_floating_point():
            buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.05)
    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    return patcher, conds(generator), conds(generator), torch.zeros(latent_shape)
