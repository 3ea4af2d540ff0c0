"""The shipped workflows as the tests run them: unchanged, except that 'embedded' becomes a small random
DiT (and the frozen drafter) while the embedded weights are not in the checkout."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
EMBEDDED_FILES = [REPO / "free_core" / "weights" / name for name in ("dit_procedural.safetensors", "drafter_procedural.safetensors")]
MICRO_DIT = "dit_micro_random.safetensors"
FROZEN = "frozen (training-free)"


def embedded_weights_present() -> bool:
    return all(path.is_file() for path in EMBEDDED_FILES)


def load_workflow(name: str, workflows: Path = WORKFLOWS) -> dict:
    workflow = json.loads((workflows / f"{name}.json").read_text())
    if embedded_weights_present():
        return workflow
    for node in workflow["nodes"]:
        if node["type"] == "FREEDiTLoader" and node["widgets_values"] == ["embedded"]:
            node["widgets_values"] = [MICRO_DIT]
        if node["type"] == "FREEDrafterLoader" and node["widgets_values"] == ["embedded"]:
            node["widgets_values"] = [FROZEN]
    return workflow


def workflow_names(workflows: Path = WORKFLOWS) -> list[str]:
    return sorted(path.stem for path in workflows.glob("*.json"))
