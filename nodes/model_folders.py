"""Where the pack finds and stores weights inside ComfyUI's models folder."""

from __future__ import annotations

import os

import folder_paths

DRAFTER_FOLDER = "free_drafters"  # models/free_drafters: drafters trained by FREE Train Drafter, or downloaded
RECORDINGS_FOLDER = "free_recordings"  # models/free_recordings/<name>: FREE Record Trajectories' files, one folder per model


def dit_folder() -> str:
    """DiT checkpoints live with other diffusion models: `diffusion_models` (current ComfyUI) or `unet` (2024)."""
    return "diffusion_models" if "diffusion_models" in folder_paths.folder_names_and_paths else "unet"


def register_folders() -> None:
    """Add models/free_drafters and models/free_recordings (kept if extra_model_paths.yaml already names other places for it)."""
    for folder in (DRAFTER_FOLDER, RECORDINGS_FOLDER):
        default = os.path.join(folder_paths.models_dir, folder)
        known = folder_paths.folder_names_and_paths.get(folder, ([], set()))[0]
        if default not in known:
            folder_paths.add_model_folder_path(folder, default)


def recordings_folder(name: str, must_exist: bool = False) -> str:
    """models/free_recordings/<name>, refusing names with folders in them (and, if asked, a folder not recorded yet)."""
    if not name or os.path.basename(name) != name or name.startswith("."):
        raise ValueError(f"recordings must be a plain folder name like 'flux_dev', got {name!r}")
    path = os.path.join(folder_paths.get_folder_paths(RECORDINGS_FOLDER)[0], name)
    if must_exist and not os.path.isdir(path):
        raise ValueError(f"recordings: no folder {path}; sample with FREE Record Trajectories (recordings={name!r}) first")
    os.makedirs(path, exist_ok=True)
    return path


def list_files(folder: str, suffixes: tuple[str, ...]) -> list[str]:
    try:
        names = folder_paths.get_filename_list(folder)
    except KeyError:
        return []
    return [name for name in names if name.lower().endswith(suffixes)]


def full_path(folder: str, name: str) -> str:
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise ValueError(f"{name!r} is not in ComfyUI's {folder} model folder ({folder_paths.get_folder_paths(folder)}); refresh the list")
    return path


def drafter_save_path(filename: str) -> str:
    """models/free_drafters/<filename>.safetensors, refusing names with folders or other suffixes."""
    stem = filename[: -len(".safetensors")] if filename.endswith(".safetensors") else filename
    if not stem or os.path.basename(stem) != stem or stem.startswith("."):
        raise ValueError(f"filename must be a plain file name like 'my_drafter', got {filename!r}")
    return os.path.join(folder_paths.get_folder_paths(DRAFTER_FOLDER)[0], stem + ".safetensors")
