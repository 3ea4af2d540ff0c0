"""free_core: FREE speculative sampling for Diffusion Transformers, without ComfyUI.

Subpackages: `engine` (the speculative round, couplings, schedules, samplers), `models` (the DiT, the
learned drafter, weights files), `training`, `evaluation` (metrics, exactness test, benchmark) and
`frontdoor` (options, `generate`, the CLI). The names below are the public API.
"""

from .engine.coupling import maximal_coupling
from .engine.denoiser import GuidedDenoiser
from .engine.diffusion import GaussianDiffusion
from .engine.drafter_interface import Drafter, FrozenDrafter
from .engine.k_diffusion_sampler import AncestralStep, sample_euler_ancestral, sample_free_euler_ancestral
from .engine.sampling import sample_ancestral
from .engine.speculative import sample_speculative
from .engine.stats import SamplingStats
from .frontdoor.generate import generate
from .frontdoor.options import OptionError, SamplerOptions
from .models.dit import DiT, DiTConfig, dit_config
from .models.free_drafter import FreeDrafter
from .models.model_specs import resolve_dit, resolve_drafter

__all__ = [
    "AncestralStep", "DiT", "DiTConfig", "Drafter", "FreeDrafter", "FrozenDrafter", "GaussianDiffusion", "GuidedDenoiser",
    "OptionError", "SamplerOptions", "SamplingStats", "dit_config", "generate", "maximal_coupling", "resolve_dit",
    "resolve_drafter", "sample_ancestral", "sample_euler_ancestral", "sample_free_euler_ancestral", "sample_speculative",
]
