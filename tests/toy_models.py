"""Closed-form denoisers for Gaussian-mixture data: the exact eps-prediction, split as features/head."""

from __future__ import annotations

import os

import torch
from torch import nn

from free_core.engine.diffusion import GaussianDiffusion

TEST_DEVICE = torch.device(os.environ.get("FREE_TEST_DEVICE", "cpu"))  # where the device-aware tests put their tensors


def random_micro_dit(std: float = 0.02, seed: int = 0):
    """DiT-Micro/8 with every weight but the fixed positional embedding drawn N(0, std): a DiT whose outputs depend on
    its input (a fresh DiT's zero-initialised final layer would answer 0)."""
    from free_core.models.dit import DiT, dit_config

    torch.manual_seed(seed)
    model = DiT(dit_config("DiT-Micro/8")).eval()
    for name, parameter in model.named_parameters():
        if name != "pos_embed":
            torch.nn.init.normal_(parameter, std=std)
    return model


class GaussianMixtureDenoiser(nn.Module):
    """Data x0 ~ sum_k w_k N(mu_k, s^2 I) in d dims, shaped (d, 1, 1); eps(x_t, t) is exact.

    features() is the exact eps as one token of width d; head() reshapes it. With learn_sigma the
    head adds a variance channel that depends on the state, so drafts and targets differ in std.
    """

    def __init__(self, means: torch.Tensor, data_std: float, learn_sigma: bool = False):
        super().__init__()
        self.means = means.double()
        self.data_std = data_std
        self.in_channels = means.shape[1]
        self.learn_sigma = learn_sigma
        self.null_class = 0
        self.alphas_cumprod = GaussianDiffusion.training().tables["alphas_cumprod"]

    def features(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        acp = self.alphas_cumprod[t.cpu()].to(x.device).double()[:, None, None]
        points = x.flatten(1).double()[:, None, :]  # (N, 1, d)
        centres = acp.sqrt() * self.means.to(x.device)[None]  # (N, K, d)
        var = acp * self.data_std**2 + 1 - acp  # (N, 1, 1)
        log_w = -((points - centres) ** 2).sum(-1) / (2 * var[:, :, 0])  # (N, K)
        resp = torch.softmax(log_w, dim=1)[:, :, None]
        score = -((points - centres) * resp).sum(1) / var[:, :, 0]  # (N, d)
        eps = -(1 - acp[:, :, 0]).sqrt() * score
        return eps.to(x.dtype)[:, None, :]  # (N, 1, d)

    def head(self, h: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = h[:, 0, :, None, None]
        if not self.learn_sigma:
            return eps
        var_values = torch.tanh(eps.mean(dim=1, keepdim=True) * 3).expand_as(eps)
        return torch.cat([eps, var_values], dim=1)


def mixture(dim: int, components: int = 3, seed: int = 0, spread: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return spread * torch.randn(components, dim, generator=g, dtype=torch.float64)


class LinearGaussianDenoiser(GaussianMixtureDenoiser):
    """Data x0 ~ N(mu, s^2 I): the exact eps is linear in x_t, so the ancestral chain is a linear Gaussian chain
    and its law at every step has a closed form (`tests/exact_law.py`).

    With learn_sigma the variance channel depends on the timestep only (never on the state), so the chain stays
    linear Gaussian while a drafter that proposes another variance exercises the unequal-std coupling.
    """

    def __init__(self, mean: torch.Tensor, data_std: float, learn_sigma: bool = False, null_class: int = 0):
        super().__init__(mean.reshape(1, -1), data_std, learn_sigma)
        self.null_class = null_class

    def head(self, h: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = h[:, 0, :, None, None]
        if not self.learn_sigma:
            return eps
        var_values = (0.8 * torch.cos(t.to(eps.dtype) / 150.0))[:, None, None, None].expand_as(eps)
        return torch.cat([eps, var_values], dim=1)


class PerturbedDrafter:
    """A state-dependent test drafter: the exact features of a nearby model at `x`, moved by terms in the state
    change `x - previous_x` and the feature history, so that its drafts depend on everything a learned drafter
    may read. `eps_bias` sets how wrong the drafts are (hence the acceptance); `variance_shift` moves the variance
    channel so drafts and targets differ in std (the coupling's residual path)."""

    history_length = 2
    name = "perturbed"

    def __init__(self, eps_bias: float | torch.Tensor, variance_shift: float = 0.0):
        self.eps_bias = torch.as_tensor(eps_bias, dtype=torch.float64)  # a scalar, or one value per step index
        self.variance_shift = variance_shift

    def propose(self, model, context):
        exact = model.features(context.x, context.t, context.y)  # (R, 1, d)
        change = (context.x - context.previous_x).flatten(1)[:, None, :]
        trend = context.features[:, -1] - context.features[:, -2]
        bias = self.eps_bias[context.step.cpu()][:, None, None] if self.eps_bias.ndim else self.eps_bias
        features = exact + bias.to(exact) + 0.05 * change + 0.05 * trend
        output = model.head(features, context.t, context.y)
        if model.learn_sigma and self.variance_shift:
            channels = model.in_channels
            output = torch.cat([output[:, :channels], (output[:, channels:] + self.variance_shift).clamp(-1, 1)], dim=1)
        return output, features


class MixtureSigmaDenoiser:
    """Exact E[x0 | x0 + sigma n] for x0 ~ mean of N(mu_k, s^2 I): a k-diffusion black-box model. With one
    component it is linear in x, so Euler-ancestral is a linear Gaussian chain."""

    def __init__(self, dim: int, components: int = 3, data_std: float = 0.3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.means = 2.0 * torch.randn(components, dim, generator=g, dtype=torch.float64)
        self.data_std = data_std
        self.calls: list[int] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        self.calls.append(x.shape[0])
        points = x.flatten(1).double()[:, None, :]  # (N, 1, d)
        var = self.data_std**2 + sigma.double()[:, None] ** 2  # (N, 1): one sigma per row
        means = self.means.to(x.device)
        log_w = -((points - means[None]) ** 2).sum(-1) / (2 * var)  # (N, K)
        resp = torch.softmax(log_w, dim=1)[:, :, None]
        posterior = means[None] + (self.data_std**2 / var)[:, :, None] * (points - means[None])
        return (resp * posterior).sum(1).reshape(x.shape).to(x.dtype)


def karras_sigmas(steps: int, sigma_max: float = 10.0, sigma_min: float = 0.02, rho: float = 7.0) -> torch.Tensor:
    """Karras et al.'s schedule of `steps` sigmas, then 0 (k-diffusion's get_sigmas_karras)."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


class FlowGaussianDenoiser:
    """Exact E[x0 | (1 - sigma) x0 + sigma n] for x0 ~ N(mu, s^2 I) (a rectified-flow model, ComfyUI's CONST
    sampling): linear in x, so the flow form of Euler-ancestral is a linear Gaussian chain."""

    def __init__(self, mean: torch.Tensor, data_std: float):
        self.mean, self.data_std = mean.double(), data_std

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        points = x.flatten(1).double()
        alpha, sigma = (1 - sigma.double())[:, None], sigma.double()[:, None]
        gain = alpha * self.data_std**2 / (alpha**2 * self.data_std**2 + sigma**2)
        mean = self.mean.to(x.device)
        return (mean + gain * (points - alpha * mean)).reshape(x.shape).to(x.dtype)


def flow_sigmas(steps: int, shift: float = 3.0) -> torch.Tensor:
    """`steps` flow sigmas from 1 down, time-shifted as ComfyUI's ModelSamplingSD3 does (shift 3), then 0."""
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)[:-1]
    sigmas = shift * t / (1 + (shift - 1) * t)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


class FirstRowSwitch:
    """A black-box model that conditions a whole batch by its first row's sigma, as ComfyUI does for a timestep
    range: `early` while sigma[0] >= `boundary`, `late` below it."""

    def __init__(self, early, late, boundary: float):
        self.early, self.late, self.boundary = early, late, boundary

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        return (self.early if sigma[0] >= self.boundary else self.late)(x, sigma, **extra_args)


class ToyFlowDiT(nn.Module):
    """A tiny rectified-flow DiT with the layout the top-block tap expects: patch embedding, blocks (token mixing
    + MLP, adaLN on the sigma and a per-row conditioning vector), a per-token final layer (norm + adaLN + linear),
    unpatchify. Predicts the velocity v; ComfyUI's CONST sampling makes denoised = x - sigma v."""

    def __init__(self, channels: int = 2, size: int = 4, patch: int = 2, width: int = 16, depth: int = 2,
                 condition_width: int = 4, seed: int = 0):
        super().__init__()
        self.channels, self.size, self.patch_size, self.width = channels, size, patch, width
        tokens = (size // patch) ** 2
        self.embed = nn.Linear(channels * patch * patch, width)
        self.positions = nn.Parameter(torch.zeros(tokens, width))
        self.condition = nn.Linear(condition_width + 1, width)
        self.blocks = nn.ModuleList(nn.ModuleDict({"mix": nn.Linear(tokens, tokens), "mlp": nn.Linear(width, width),
                                                   "modulation": nn.Linear(width, 2 * width)}) for _ in range(depth))
        self.final_layer = ToyFinalLayer(width, channels * patch * patch)
        generator = torch.Generator().manual_seed(seed)
        for parameter in self.parameters():
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.3

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        from einops import rearrange
        p = self.patch_size
        tokens = self.embed(rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)) + self.positions
        vector = torch.nn.functional.silu(self.condition(torch.cat([condition, sigma[:, None].to(x)], dim=1)))
        for block in self.blocks:
            shift, scale = block["modulation"](vector).chunk(2, dim=1)
            mixed = tokens + block["mix"](tokens.transpose(1, 2)).transpose(1, 2)
            tokens = mixed + torch.tanh(block["mlp"](mixed * (1 + scale[:, None]) + shift[:, None]))
        out = self.final_layer(tokens, vector)
        side = self.size // p
        return rearrange(out, "b (h w) (c p q) -> b c (h p) (w q)", h=side, w=side, p=p, q=p)


class ToyFinalLayer(nn.Module):
    def __init__(self, width: int, outputs: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, outputs)

    def forward(self, tokens: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(vector).chunk(2, dim=1)
        return self.linear(self.norm(tokens) * (1 + scale[:, None]) + shift[:, None])


class GuidedToyFlow:
    """A guided flow denoiser over ToyFlowDiT, as ComfyUI's CFG calls it: cond and uncond rows in one model call
    (cond_scale != 1), one conditioning vector per branch; denoised = x - sigma v."""

    def __init__(self, model: ToyFlowDiT, cond_scale: float = 2.0, seed: int = 1):
        self.model, self.cond_scale = model, cond_scale
        generator = torch.Generator().manual_seed(seed)
        width = model.condition.in_features - 1
        self.cond, self.uncond = torch.randn(2, width, generator=generator)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        n = x.shape[0]
        xf = x.float()
        if self.cond_scale == 1:
            v = self.model(xf, sigma.float(), self.cond.expand(n, -1))
        else:
            both = self.model(torch.cat([xf, xf]), torch.cat([sigma, sigma]).float(),
                              torch.cat([self.cond.expand(n, -1), self.uncond.expand(n, -1)]))
            cond, uncond = both.chunk(2)
            v = uncond + self.cond_scale * (cond - uncond)
        return (xf - sigma.float().reshape(-1, 1, 1, 1) * v).to(x.dtype)


def toy_tap(model: ToyFlowDiT, cond_scale: float = 2.0):
    """(guided denoiser, TappedModel, TappedModelIdentity) of a ToyFlowDiT."""
    from free_core.engine.tapped_model import ModuleTap
    from free_core.models.token_drafter import TappedModelIdentity, final_layer_fingerprint

    denoise = GuidedToyFlow(model, cond_scale)
    identity = TappedModelIdentity("tests.ToyFlowDiT", final_layer_fingerprint(model.final_layer), model.width,
                                   (model.patch_size, model.patch_size))
    return denoise, ModuleTap(denoise, model.final_layer, [(model, "blocks")]), identity
