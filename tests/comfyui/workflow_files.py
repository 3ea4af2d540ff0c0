"""The shipped workflows as the tests run them: unchanged, except that 'embedded' becomes a small random
DiT (and the frozen drafter) while the embedded weights are not in the checkout."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "example_workflows"
EMBEDDED_FILES = [REPO / "free_core" / "weights" / name for name in ("dit_procedural.safetensors", "drafter_procedural.safetensors")]
MICRO_DIT = "dit_micro_random.safetensors"
FROZEN = "frozen (training-free)"

# What the tests expect of the values, not only the shapes (a clamp keeps any image in [0, 1]), measured on the
# embedded model at free_embedded's settings (class "9 polka dots", 8 images, 50 steps, CFG 2, strict, K = 6) with
# free_core.frontdoor.generate, which gives FREE KSampler's bits, for seeds 0-11, 42 and 43:
# * per-image pixel std (images in [0, 1]): 0.24 at the least (0.27 for the workflow's seed 42; 0.25-0.45 in the
#   SamplerCustom(Advanced) runs of "1 square"); a constant image, e.g. from an all-zero latent, has 0.
IMAGE_STD_FLOOR = 0.05
# * two seeds' latents (pixels in [-1, 1]) differ by 0.69 on average (42 vs 43; 0.95 for FREE Sampler's noise_seed 5
#   vs 6); a sampler that ignores the seed, 0.
SEED_DIFF_FLOOR = 0.1
# * the shipped classifier finds the requested class in 8/8 of the images for every one of those seeds; chance is 0.1,
#   and it calls an all-zero latent "2 triangle" and pure noise "7 checkerboard".
CLASS_FRACTION_FLOOR = 0.5


# Graphs for models a user downloads (Flux, Wan): validated in a current tree, not run (tools/make_workflows.py).
MODEL_WORKFLOWS = {"free_flux_record", "free_flux", "free_wan_record", "free_wan"}


def embedded_weights_present() -> bool:
    return all(path.is_file() for path in EMBEDDED_FILES)


def workflow_files(workflows: Path = WORKFLOWS) -> dict[str, Path]:
    """Workflow id (extra.free_workflow, e.g. free_embedded) -> its file, named by its template title."""
    return {json.loads(path.read_text())["extra"]["free_workflow"]: path for path in sorted(workflows.glob("*.json"))}


def load_workflow(name: str, workflows: Path = WORKFLOWS) -> dict:
    """The workflow with id `name`."""
    workflow = json.loads(workflow_files(workflows)[name].read_text())
    if embedded_weights_present():
        return workflow
    for node in workflow["nodes"]:
        if node["type"] == "FREEDiTLoader" and node["widgets_values"] == ["embedded"]:
            node["widgets_values"] = [MICRO_DIT]
        if node["type"] == "FREEDrafterLoader" and node["widgets_values"] == ["embedded"]:
            node["widgets_values"] = [FROZEN]
    return workflow


def workflow_names(workflows: Path = WORKFLOWS) -> list[str]:
    return sorted(workflow_files(workflows))
