"""Loading and saving DiT weights: safetensors first, `.pt`/`.pth` only with `weights_only=True`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .dit import DiT, DiTConfig, config_from_state_dict

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_DIR / "weights"
EMBEDDED_DIT = WEIGHTS_DIR / "dit_procedural.safetensors"
EMBEDDED_DRAFTER = WEIGHTS_DIR / "drafter_procedural.safetensors"
EMBEDDED_CLASSIFIER = WEIGHTS_DIR / "classifier_procedural.safetensors"
# The embedded DiT draws its classes best near guidance 2 (MODEL_CARD.md: at 4 the colours saturate and disks
# lose their outline); the default of every sampler entry point on the embedded model.
EMBEDDED_CFG_SCALE = 2.0


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata from a safetensors file, or tensors from a `.pt` via weights_only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return load_file(str(path)), metadata
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:  # weights_only refuses anything but plain tensors and containers
            raise ValueError(
                f"{path} could not be read safely with torch.load(weights_only=True) ({error}); convert it to safetensors"
            ) from error
        for key in ("ema", "model", "state_dict"):
            if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(f"{path} does not hold a state dict of tensors")
        return obj, {}
    raise ValueError(f"unsupported weights format {path.suffix!r} for {path}; use .safetensors, .pt or .pth")


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """A short hash of parameter names, shapes and leading values: identifies one DiT's weights cheaply."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach()
        leading = tensor.flatten()[:4096].to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(leading.numpy().tobytes())
    return digest.hexdigest()[:16]


def save_dit(path: str | Path, model: DiT, extra_metadata: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": "free_core.dit", "config": json.dumps(model.config.to_dict()), **(extra_metadata or {})}
    save_file(state, str(path), metadata=metadata)
    return path


def load_dit(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DiT:
    """A DiT from our safetensors (config in metadata) or an official facebookresearch/DiT checkpoint."""
    if Path(path).suffix == ".safetensors" and Path(path).is_file():
        with safe_open(str(path), framework="pt") as handle:  # refuse other models before reading GBs of tensors
            if "x_embedder.proj.weight" not in set(handle.keys()):
                raise ValueError(f"{Path(path).name} is not a DiT checkpoint (no x_embedder.proj.weight); "
                                 "choose a facebookresearch/DiT or free_core DiT file")
    state, metadata = read_state_dict(path)
    if "config" in metadata:
        config = DiTConfig(**json.loads(metadata["config"]))
    else:
        config = config_from_state_dict(state)
    model = DiT(config)
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unexpected or missing:
        raise ValueError(f"{path}: not a DiT state dict (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.weights_fingerprint = weights_fingerprint(state)
    model.source_name = Path(path).name
    return model.to(device=device, dtype=dtype).eval()


def load_embedded_dit(device: str | torch.device = "cpu") -> DiT:
    if not EMBEDDED_DIT.is_file():
        raise FileNotFoundError(f"the embedded DiT weights are missing at {EMBEDDED_DIT}; reinstall the package")
    return load_dit(EMBEDDED_DIT, device=device)


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
