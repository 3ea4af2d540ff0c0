"""Loading and saving DiT weights: safetensors first, `.pt`/`.pth` only with `weights_only=True`."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .dit import DiT, DiTConfig, config_from_state_dict

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # free_core/
WEIGHTS_DIR = PACKAGE_DIR / "weights"
EMBEDDED_DIT = WEIGHTS_DIR / "dit_procedural.safetensors"
EMBEDDED_DRAFTER = WEIGHTS_DIR / "drafter_procedural.safetensors"
EMBEDDED_CLASSIFIER = WEIGHTS_DIR / "classifier_procedural.safetensors"
# The embedded DiT draws its classes best near guidance 2 (MODEL_CARD.md: at 4 the colours saturate and disks
# lose their outline); the default of every sampler entry point on the embedded model.
EMBEDDED_CFG_SCALE = 2.0


def safetensors_keys_and_metadata(path: str | Path) -> tuple[set[str], dict[str, str]]:
    """A safetensors file's tensor names and metadata, reading the header only; a corrupt file is named."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return set(handle.keys()), handle.metadata() or {}
    except Exception as error:  # SafetensorError: a truncated download, or not a safetensors file at all
        raise ValueError(f"{Path(path).name} is not a readable .safetensors file ({error}); is the download "
                         "complete? download it again") from None


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata from a safetensors file, or tensors from a `.pt` via weights_only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    if path.suffix == ".safetensors":
        _, metadata = safetensors_keys_and_metadata(path)
        return load_file(str(path)), metadata
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # weights_only met an object that only unpickling code could build
            raise ValueError(f"{path.name} holds pickled Python objects besides tensors, which FREE never unpickles "
                             "(they can run code); use a .safetensors version of the weights") from None
        except Exception as error:  # not a torch file, or a truncated one
            raise ValueError(f"{path.name} is not a readable PyTorch weights file ({type(error).__name__}); is the "
                             "download complete? download it again, or use a .safetensors version") from None
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
        keys, _ = safetensors_keys_and_metadata(path)  # refuse other models before reading GBs of tensors
        if "x_embedder.proj.weight" not in keys:
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
    model.source_name = "the embedded DiT" if Path(path) == EMBEDDED_DIT else Path(path).name
    return model.to(device=device, dtype=dtype).eval()


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
