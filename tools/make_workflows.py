"""Write the shipped ComfyUI workflows (UI format) to workflows/ and example_workflows/.

    python tools/make_workflows.py

Each graph is declared below as nodes with their widget values in INPUT_TYPES order (a seed widget is
followed by its "control after generate" value) and links by (node, output slot). The tests convert
every file to API format and run it in real ComfyUI, so a widget list that does not match a node's
inputs fails there.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from free_core.models.checkpoints import EMBEDDED_CFG_SCALE  # noqa: E402

DIT_XL_CFG_SCALE = 4.0  # the DiT paper's scale for its sample figures

# Output types by class: what links carry and what the frontend shows on each output slot.
OUTPUTS = {
    "FREEDiTLoader": [("MODEL", "MODEL")],
    "FREEDrafterLoader": [("FREE_DRAFTER", "FREE_DRAFTER")],
    "FREEClassLabel": [("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
    "FREEEmptyLatent": [("LATENT", "LATENT")],
    "FREEKSampler": [("LATENT", "LATENT"), ("stats", "FREE_STATS")],
    "FREEStats": [("plot", "IMAGE"), ("summary", "STRING")],
    "FREEDecode": [("IMAGE", "IMAGE")],
    "VAELoader": [("VAE", "VAE")],
    "VAEDecode": [("IMAGE", "IMAGE")],
    "SaveImage": [],
    "PreviewImage": [],
}
# Linked inputs by class, in order: (name, type).
INPUTS = {
    "FREEDrafterLoader": [("model", "MODEL")],
    "FREEClassLabel": [("model", "MODEL")],
    "FREEEmptyLatent": [("model", "MODEL")],
    "FREEKSampler": [("model", "MODEL"), ("drafter", "FREE_DRAFTER"), ("positive", "CONDITIONING"),
                     ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
    "FREEStats": [("stats", "FREE_STATS")],
    "FREEDecode": [("samples", "LATENT")],
    "VAEDecode": [("samples", "LATENT"), ("vae", "VAE")],
    "SaveImage": [("images", "IMAGE")],
    "PreviewImage": [("images", "IMAGE")],
}
SIZES = {"FREEKSampler": [320, 330], "FREEStats": [300, 80], "FREEDecode": [300, 80], "SaveImage": [420, 460],
         "PreviewImage": [320, 300]}


class Graph:
    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, class_type: str, pos: tuple[int, int], widgets: list, title: str | None = None, **linked) -> int:
        node_id = len(self.nodes) + 1
        inputs = []
        for name, kind in INPUTS.get(class_type, []):
            link = None
            if name in linked:
                origin, slot = linked[name]
                link = len(self.links) + 1
                self.links.append([link, origin, slot, node_id, len(inputs), kind])
                self._node(origin)["outputs"][slot]["links"].append(link)
            inputs.append({"name": name, "type": kind, "link": link})
        node = {
            "id": node_id, "type": class_type, "pos": list(pos), "size": SIZES.get(class_type, [300, 110]),
            "flags": {}, "order": node_id - 1, "mode": 0, "inputs": inputs,
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": k} for k, (n, t) in enumerate(OUTPUTS[class_type])],
            "properties": {"Node name for S&R": class_type}, "widgets_values": widgets,
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node_id

    def _node(self, node_id: int) -> dict:
        return self.nodes[node_id - 1]

    def to_json(self) -> dict:
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}},
                "version": 0.4}


def sampler_widgets(mode: str, steps: int, cfg: float, seed: int = 42, draft_length: int = 6,
                    relax_strength: float = 8.0) -> list:
    return [seed, "fixed", steps, cfg, mode, draft_length, "fixed", relax_strength]


def embedded() -> dict:
    g = Graph()
    dit = g.add("FREEDiTLoader", (0, 0), ["embedded"])
    drafter = g.add("FREEDrafterLoader", (0, 160), ["embedded"], model=(dit, 0))
    label = g.add("FREEClassLabel", (0, 320), ["3 ring [embedded]", -1], model=(dit, 0))
    latent = g.add("FREEEmptyLatent", (0, 480), [8], model=(dit, 0))
    sampler = g.add("FREEKSampler", (360, 0), sampler_widgets("strict", 50, EMBEDDED_CFG_SCALE), model=(dit, 0), drafter=(drafter, 0),
                    positive=(label, 0), negative=(label, 1), latent_image=(latent, 0))
    decode = g.add("FREEDecode", (700, 0), [4], samples=(sampler, 0))
    g.add("SaveImage", (1040, 0), ["FREE_embedded"], images=(decode, 0))
    stats = g.add("FREEStats", (700, 130), [], stats=(sampler, 1))
    g.add("PreviewImage", (700, 260), [], images=(stats, 0))
    return g.to_json()


def dit_xl(resolution: int, batch: int) -> dict:
    g = Graph()
    dit = g.add("FREEDiTLoader", (0, 0), [f"DiT-XL-2-{resolution}x{resolution}.pt"])
    drafter = g.add("FREEDrafterLoader", (0, 160), ["frozen (training-free)"], model=(dit, 0))
    label = g.add("FREEClassLabel", (0, 320), ["207 Golden Retriever", -1], model=(dit, 0))
    latent = g.add("FREEEmptyLatent", (0, 480), [batch], model=(dit, 0))
    sampler = g.add("FREEKSampler", (360, 0), sampler_widgets("strict", 50, DIT_XL_CFG_SCALE), model=(dit, 0), drafter=(drafter, 0),
                    positive=(label, 0), negative=(label, 1), latent_image=(latent, 0))
    vae = g.add("VAELoader", (360, 380), ["vae-ft-mse-840000-ema-pruned.safetensors"])
    decode = g.add("VAEDecode", (700, 0), [], samples=(sampler, 0), vae=(vae, 0))
    g.add("SaveImage", (1040, 0), [f"FREE_DiT-XL-2-{resolution}"], images=(decode, 0))
    stats = g.add("FREEStats", (700, 130), [], stats=(sampler, 1))
    g.add("PreviewImage", (700, 260), [], images=(stats, 0))
    return g.to_json()


def compare() -> dict:
    g = Graph()
    dit = g.add("FREEDiTLoader", (0, 0), ["embedded"])
    drafter = g.add("FREEDrafterLoader", (0, 160), ["embedded"], model=(dit, 0))
    label = g.add("FREEClassLabel", (0, 320), ["7 checkerboard [embedded]", -1], model=(dit, 0))
    latent = g.add("FREEEmptyLatent", (0, 480), [8], model=(dit, 0))
    for row, (mode, title) in enumerate([("off", "baseline (plain ancestral)"), ("strict", "FREE strict"), ("relax", "FREE relax")]):
        y = row * 380
        sampler = g.add("FREEKSampler", (360, y), sampler_widgets(mode, 50, EMBEDDED_CFG_SCALE), title=title, model=(dit, 0),
                        drafter=(drafter, 0), positive=(label, 0), negative=(label, 1), latent_image=(latent, 0))
        decode = g.add("FREEDecode", (700, y), [4], samples=(sampler, 0))
        g.add("PreviewImage", (1040, y), [], images=(decode, 0))
        stats = g.add("FREEStats", (700, y + 130), [], stats=(sampler, 1))
        g.add("PreviewImage", (1380, y), [], images=(stats, 0))
    return g.to_json()


WORKFLOWS = {
    "free_embedded": embedded,
    "free_dit_xl_2_256": lambda: dit_xl(256, 2),
    "free_dit_xl_2_512": lambda: dit_xl(512, 1),
    "free_compare_baseline_strict_relax": compare,
}


def main() -> None:
    for folder in ("workflows", "example_workflows"):
        (ROOT / folder).mkdir(exist_ok=True)
    for name, build in WORKFLOWS.items():
        path = ROOT / "workflows" / f"{name}.json"
        path.write_text(json.dumps(build(), indent=1) + "\n")
        shutil.copyfile(path, ROOT / "example_workflows" / path.name)
        print("wrote", path.relative_to(ROOT))


if __name__ == "__main__":
    main()
