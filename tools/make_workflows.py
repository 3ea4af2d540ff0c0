"""Write the shipped ComfyUI workflows (UI format) to example_workflows/, named by their template titles.

    python tools/make_workflows.py

Each graph is declared below as nodes with their widget values in INPUT_TYPES order (a seed widget is
followed by its "control after generate" value) and links by (node, output slot). The tests convert
every file to API format and run it in real ComfyUI, so a widget list that does not match a node's
inputs fails there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from free_core.frontdoor.options import DEFAULT_DRAFT_LENGTH, DEFAULT_DRAFT_POLICY  # noqa: E402
from free_core.models.checkpoints import EMBEDDED_CFG_SCALE  # noqa: E402

DIT_XL_CFG_SCALE = 4.0  # the DiT paper's scale for its sample figures
# The embedded graphs' class: the one the embedded DiT draws best at their settings (`python tools/measure_graph_defaults.py
# classes`: plain ancestral, 50 steps, CFG 2, 20 per class at seeds 0 and 1, recognised by the shipped classifier):
# disk 31/40, square 33/40, triangle 9/40, ring 40/40, plus 13/40, the three stripes 40/40 each, checkerboard 36/40,
# polka dots 40/40. Rings score 40/40 with the classifier but look ragged to people; polka dots look regular.
EMBEDDED_CLASS = "9 polka dots [embedded]"
# `python tools/measure_graph_defaults.py relax --label 9` (the compare graph's batch, seeds 0-7): mean sequential DiT
# calls of 50, strict 33.4; relax at strength 2: 32.4, at 8: 29.5, at 32: 22.3. Strength 8 (the nodes' default, whose
# quality cost docs/benchmarks.md measures) is faster than strict on average.
RELAX_STRENGTH = 8.0
RELAX_NOTE = ("Relax at strength 8 took 29.5 sequential DiT calls on average against strict's 33.4 (8 seeds at these "
              "settings; strength 32: 22.3). On one seed it can lose: a batch's rounds wait for its slowest sample.")

# Output types by class: what links carry and what the frontend shows on each output slot.
OUTPUTS = {
    "FREEDiTLoader": [("MODEL", "MODEL")],
    "FREEDrafterLoader": [("FREE_DRAFTER", "FREE_DRAFTER")],
    "FREEClassLabel": [("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
    "FREEEmptyLatent": [("LATENT", "LATENT")],
    "FREEKSampler": [("LATENT", "LATENT"), ("stats", "FREE_STATS")],
    "FREEStats": [("plot", "IMAGE"), ("summary", "STRING")],
    "FREECompare": [("table", "IMAGE"), ("text", "STRING")],
    "Note": [],
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
    "FREECompare": [("baseline", "FREE_STATS"), ("strict", "FREE_STATS"), ("relax", "FREE_STATS")],
    "FREEDecode": [("samples", "LATENT")],
    "VAEDecode": [("samples", "LATENT"), ("vae", "VAE")],
    "SaveImage": [("images", "IMAGE")],
    "PreviewImage": [("images", "IMAGE")],
}
SIZES = {"FREEKSampler": [320, 410], "FREEStats": [300, 160], "FREEDecode": [300, 80], "SaveImage": [420, 460],
         "PreviewImage": [320, 300], "FREECompare": [600, 200], "Note": [600, 190]}


class Graph:
    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, class_type: str, pos: tuple[int, int], widgets: list, title: str | None = None,
            size: list[int] | None = None, **linked) -> int:
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
            "id": node_id, "type": class_type, "pos": list(pos), "size": size or SIZES.get(class_type, [300, 110]),
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

    def to_json(self, workflow_id: str) -> dict:
        """The UI-format graph; extra.free_workflow names it for the tests, whatever its file is called."""
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 1.0, "offset": [40, 40]}, "free_workflow": workflow_id}, "version": 0.4}


def sampler_widgets(mode: str, steps: int, cfg: float, seed: int = 42, draft_length: int = DEFAULT_DRAFT_LENGTH,
                    draft_policy: str = DEFAULT_DRAFT_POLICY, relax_strength: float = 8.0) -> list:
    return [seed, "fixed", steps, cfg, mode, draft_length, draft_policy, relax_strength]


def embedded() -> dict:
    g = Graph()
    dit = g.add("FREEDiTLoader", (0, 0), ["embedded"])
    drafter = g.add("FREEDrafterLoader", (0, 160), ["embedded"], model=(dit, 0))
    label = g.add("FREEClassLabel", (0, 320), [EMBEDDED_CLASS, -1], model=(dit, 0))
    latent = g.add("FREEEmptyLatent", (0, 480), [8], model=(dit, 0))
    sampler = g.add("FREEKSampler", (360, 0), sampler_widgets("strict", 50, EMBEDDED_CFG_SCALE), model=(dit, 0), drafter=(drafter, 0),
                    positive=(label, 0), negative=(label, 1), latent_image=(latent, 0))
    decode = g.add("FREEDecode", (700, 0), [4], samples=(sampler, 0))
    g.add("SaveImage", (1040, 0), ["FREE_embedded"], images=(decode, 0))
    stats = g.add("FREEStats", (700, 130), [], stats=(sampler, 1))
    g.add("PreviewImage", (700, 320), [], images=(stats, 0))
    return g.to_json("free_embedded")


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
    g.add("PreviewImage", (700, 320), [], images=(stats, 0))
    return g.to_json(f"free_dit_xl_2_{resolution}")


COMPARE_NOTE = (
    "Same seed, same noise, three samplers. FREE strict has exactly the baseline's distribution, not its images: "
    "it draws its randomness in another order, so its row shows other samples of the same law. FREE relax trades "
    "a measured amount of quality for fewer calls.\n\n"
    "FREE Compare (right) lists sequential DiT calls, acceptance and wall time. On a CPU a FREE round costs about as "
    "much as the steps it saves (the DiT's cost grows with the rows it verifies), so fewer calls do not mean less time "
    "there; a GPU verifies the rows in parallel.\n\n" + "{relax_note}"
)


def compare() -> dict:
    g = Graph()
    dit = g.add("FREEDiTLoader", (0, 0), ["embedded"])
    drafter = g.add("FREEDrafterLoader", (0, 160), ["embedded"], model=(dit, 0))
    label = g.add("FREEClassLabel", (0, 320), [EMBEDDED_CLASS, -1], model=(dit, 0))
    latent = g.add("FREEEmptyLatent", (0, 480), [8], model=(dit, 0))
    samplers = []
    runs = [("off", "baseline (plain ancestral)", 8.0), ("strict", "FREE strict", 8.0), ("relax", "FREE relax", RELAX_STRENGTH)]
    for row, (mode, title, strength) in enumerate(runs):
        y = row * 440
        # Fixed K 6: the graph shows what drafting saves in calls; the note's averages were measured at K 6.
        sampler = g.add("FREEKSampler", (360, y), sampler_widgets(mode, 50, EMBEDDED_CFG_SCALE, draft_length=6,
                                                                  draft_policy="fixed", relax_strength=strength),
                        title=title, model=(dit, 0), drafter=(drafter, 0), positive=(label, 0), negative=(label, 1),
                        latent_image=(latent, 0))
        decode = g.add("FREEDecode", (700, y), [4], samples=(sampler, 0))
        g.add("PreviewImage", (1020, y), [], title=f"{title}: samples", images=(decode, 0))
        samplers.append(sampler)
    table = g.add("FREECompare", (1360, 0), [], baseline=(samplers[0], 1), strict=(samplers[1], 1), relax=(samplers[2], 1))
    g.add("PreviewImage", (1360, 230), [], title="calls, acceptance, wall clock", size=[620, 240], images=(table, 0))
    g.add("Note", (1360, 580), [COMPARE_NOTE.format(relax_note=RELAX_NOTE)], title="What this graph shows")
    return g.to_json("free_compare_baseline_strict_relax")


WORKFLOWS = {  # workflow id -> (template title = file name, builder)
    "free_embedded": ("FREE embedded DiT (no download)", embedded),
    "free_compare_baseline_strict_relax": ("FREE baseline vs strict vs relax", compare),
    "free_dit_xl_2_256": ("FREE DiT-XL 2 at 256 (ImageNet)", lambda: dit_xl(256, 2)),
    "free_dit_xl_2_512": ("FREE DiT-XL 2 at 512 (ImageNet)", lambda: dit_xl(512, 1)),
}


def main() -> None:
    folder = ROOT / "example_workflows"  # the one folder ComfyUI lists as templates
    folder.mkdir(exist_ok=True)
    for title, build in WORKFLOWS.values():
        path = folder / f"{title}.json"
        path.write_text(json.dumps(build(), indent=1) + "\n")
        print("wrote", path.relative_to(ROOT))


if __name__ == "__main__":
    main()
