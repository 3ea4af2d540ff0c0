"""The DiT/ADM discrete diffusion: linear betas, respacing, and the ancestral Gaussian transition.

Step indices run over the respaced schedule: index `i` in [0, N) is the i-th kept timestep in
increasing order, so sampling goes i = N-1, ..., 0. `model_timesteps[i]` is the original training
timestep that the model is conditioned on. Every sampler (baseline and speculative) turns a model
output into a transition with `GaussianDiffusion.transition`, the one place that math lives.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

VarianceMode = Literal["learned", "fixed_small", "fixed_large"]
VARIANCE_MODES = ("learned", "fixed_small", "fixed_large")
NON_FINITE_OUTPUT = "model_output contains NaN or Inf; check the model weights and dtype (fp16 overflow?) or lower cfg"


def linear_betas(num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DiT/ADM "linear" schedule, scaled so that other step counts keep the same curve."""
    scale = 1000 / num_train_steps
    return np.linspace(scale * beta_start, scale * beta_end, num_train_steps, dtype=np.float64)


def spaced_timesteps(num_train_steps: int, num_steps: int) -> list[int]:
    """ADM `space_timesteps(T, str(N))`: N evenly strided timesteps including 0 and T-1."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {num_steps!r}")
    if num_steps > num_train_steps:
        raise ValueError(f"steps={num_steps} exceeds the {num_train_steps} training timesteps; use steps <= {num_train_steps}")
    if num_steps == 1:
        return [0]
    frac_stride = (num_train_steps - 1) / (num_steps - 1)
    return sorted({int(round(k * frac_stride)) for k in range(num_steps)})


def _log_variance(model_output: torch.Tensor, x_t: torch.Tensor, variance: VarianceMode, log_betas: torch.Tensor,
                  log_variance_clipped: torch.Tensor, fixed_large: torch.Tensor) -> torch.Tensor:
    """The reverse step's log variance from the per-step numbers (shaped to broadcast); `learned` interpolates DiT's
    learned range."""
    if variance == "learned":
        channels = x_t.shape[1]
        if model_output.shape[1] != 2 * channels:
            raise ValueError(
                f"variance='learned' needs a learned-sigma output with {2 * channels} channels, got "
                f"{model_output.shape[1]}; use variance='fixed_small' for this model"
            )
        frac = (model_output[:, channels:] + 1) / 2
        return torch.lerp(log_variance_clipped, log_betas, frac)  # frac * log_betas + (1 - frac) * log_variance_clipped
    if variance == "fixed_small":
        return log_variance_clipped.expand_as(x_t)
    if variance == "fixed_large":
        return fixed_large.expand_as(x_t)
    raise ValueError(f"variance must be one of {VARIANCE_MODES}, got {variance!r}")


# The numbers `transition` reads per step, in the order of its table (whose last column is i != 0).
_TRANSITION_COEFFICIENTS = ("sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_mean_coef1",
                            "posterior_mean_coef2", "log_betas", "posterior_log_variance_clipped",
                            "fixed_large_log_variance")


class GaussianDiffusion:
    """A (possibly respaced) DDPM schedule with posterior and model transitions."""

    def __init__(self, betas: np.ndarray, model_timesteps: np.ndarray | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        self.num_steps = len(betas)
        self.model_timesteps = np.arange(self.num_steps) if model_timesteps is None else np.asarray(model_timesteps)
        alphas = 1.0 - betas
        acp = np.cumprod(alphas)
        acp_prev = np.append(1.0, acp[:-1])
        posterior_variance = betas * (1.0 - acp_prev) / (1.0 - acp)
        clipped_start = posterior_variance[1] if self.num_steps > 1 else betas[0]
        tables = {
            "betas": betas,
            "alphas_cumprod": acp,
            "sqrt_alphas_cumprod": np.sqrt(acp),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - acp),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / acp),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / acp - 1.0),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": np.log(np.append(clipped_start, posterior_variance[1:])),
            "posterior_mean_coef1": betas * np.sqrt(acp_prev) / (1.0 - acp),
            "posterior_mean_coef2": (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
            "log_betas": np.log(betas),
            "fixed_large_log_variance": np.log(np.append(clipped_start, betas[1:])),
        }
        self.tables = {name: torch.from_numpy(value) for name, value in tables.items()}
        self._timesteps: dict[torch.device, torch.Tensor] = {}
        self._device_tables: dict[tuple[str, torch.device], torch.Tensor] = {}
        self._transition_tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @classmethod
    def respaced(cls, num_steps: int, num_train_steps: int = 1000) -> "GaussianDiffusion":
        """The linear schedule respaced to `num_steps` sampling steps (ADM respacing)."""
        base_acp = np.cumprod(1.0 - linear_betas(num_train_steps))
        kept = spaced_timesteps(num_train_steps, num_steps)
        betas, last = [], 1.0
        for t in kept:
            betas.append(1.0 - base_acp[t] / last)
            last = base_acp[t]
        return cls(np.array(betas), np.array(kept))

    @classmethod
    def training(cls, num_train_steps: int = 1000) -> "GaussianDiffusion":
        return cls(linear_betas(num_train_steps))

    def table(self, name: str, device: torch.device) -> torch.Tensor:
        """`tables[name]` (float64) on `device`, copied there once: a sampler indexes it with step indices on the device."""
        key = (name, device)
        if key not in self._device_tables:
            self._device_tables[key] = self.tables[name].to(device)
        return self._device_tables[key]

    def _gather(self, name: str, i: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        values = self.table(name, like.device)[i.to(like.device)].to(like.dtype)
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def timestep_for(self, i: torch.Tensor) -> torch.Tensor:
        """Model conditioning timestep for respaced step indices."""
        if i.device not in self._timesteps:
            self._timesteps[i.device] = torch.as_tensor(self.model_timesteps, device=i.device)
        return self._timesteps[i.device][i]

    def _transition_coefficients(self, i: torch.Tensor, like: torch.Tensor) -> list[torch.Tensor]:
        """The per-step numbers of `transition` at step indices i, gathered at once from one table per device and
        dtype (each float64 value rounded to `like`'s dtype, as a per-name gather would), shaped to broadcast."""
        key = (like.device, like.dtype)
        if key not in self._transition_tables:
            columns = [self.tables[name] for name in _TRANSITION_COEFFICIENTS]
            columns.append(torch.from_numpy(np.arange(self.num_steps) != 0).double())
            self._transition_tables[key] = torch.stack(columns, dim=1).to(like.device, like.dtype)
        rows = self._transition_tables[key][i.to(like.device)]  # (n, 8)
        return list(rows.reshape(-1, rows.shape[1], *([1] * (like.ndim - 1))).unbind(1))

    def q_sample(self, x0: torch.Tensor, i: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._gather("sqrt_alphas_cumprod", i, x0) * x0 + self._gather("sqrt_one_minus_alphas_cumprod", i, x0) * noise

    def predict_x0(self, x_t: torch.Tensor, i: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._gather("sqrt_recip_alphas_cumprod", i, x_t) * x_t - self._gather("sqrt_recipm1_alphas_cumprod", i, x_t) * eps

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self._gather("posterior_mean_coef1", i, x_t) * x0 + self._gather("posterior_mean_coef2", i, x_t) * x_t

    def log_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, i: torch.Tensor, variance: VarianceMode) -> torch.Tensor:
        """Log variance of the reverse step; `learned` interpolates DiT's learned range."""
        _, _, _, _, log_betas, log_variance_clipped, fixed_large, _ = self._transition_coefficients(i, x_t)
        return _log_variance(model_output, x_t, variance, log_betas, log_variance_clipped, fixed_large)

    def transition(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        i: torch.Tensor,
        variance: VarianceMode = "learned",
        clip_denoised: bool = False,
        check_finite: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian ancestral step p(x_{i-1} | x_i) = N(mean, std^2) from an eps-prediction model output.

        `i` holds one respaced step index per sample; the final step (i = 0) has std 0 (no noise). A model output
        with NaN or Inf is refused (a drafted one need not be checked: the coupling never accepts such a draft).
        """
        if model_output.shape[0] != x_t.shape[0] or model_output.shape[2:] != x_t.shape[2:]:
            raise ValueError(f"model_output shape {tuple(model_output.shape)} does not match x_t shape {tuple(x_t.shape)}")
        if check_finite and not torch.isfinite(model_output).all():
            raise ValueError(NON_FINITE_OUTPUT)
        channels = x_t.shape[1]
        eps = model_output[:, :channels]
        recip, recipm1, coef1, coef2, log_betas, log_variance_clipped, fixed_large, not_last = (
            self._transition_coefficients(i, x_t))
        # Fused multiply-adds where the formula has them: a transition is ~20 small ops, each a dispatch (a kernel
        # launch on a GPU), and the drafting passes and the verification of every round run one.
        x0 = torch.addcmul(recip * x_t, recipm1, eps, value=-1)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean = torch.addcmul(coef2 * x_t, coef1, x0)
        log_variance = _log_variance(model_output, x_t, variance, log_betas, log_variance_clipped, fixed_large)
        std = torch.exp(0.5 * log_variance) * not_last  # the final step (i = 0) has no noise
        return mean, std

    def kl_to_posterior(
        self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, i: torch.Tensor
    ) -> torch.Tensor:
        """Variational bound term per sample in nats/dim with the model mean detached (DiT's hybrid loss).

        At i = 0 the decoder term is the Gaussian negative log-likelihood of x0.
        """
        channels = x_t.shape[1]
        frozen = torch.cat([model_output[:, :channels].detach(), model_output[:, channels:]], dim=1)
        eps = frozen[:, :channels]
        model_mean = self.posterior_mean(self.predict_x0(x_t, i, eps), x_t, i)
        model_log_var = self.log_variance(frozen, x_t, i, "learned")
        true_mean = self.posterior_mean(x0, x_t, i)
        true_log_var = self._gather("posterior_log_variance_clipped", i, x_t)
        kl = 0.5 * (-1.0 + model_log_var - true_log_var + torch.exp(true_log_var - model_log_var)
                    + (true_mean - model_mean) ** 2 * torch.exp(-model_log_var))
        nll = 0.5 * (np.log(2 * np.pi) + model_log_var + (x0 - model_mean) ** 2 * torch.exp(-model_log_var))
        is_first = (i == 0).reshape(-1, *([1] * (x_t.ndim - 1)))
        return torch.where(is_first, nll, kl).flatten(1).mean(1)
