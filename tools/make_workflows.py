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
    # the model graphs (workflows/): core loaders and SamplerCustom around FREE Sampler
    "UNETLoader": [("MODEL", "MODEL")],
    "DualCLIPLoader": [("CLIP", "CLIP")],
    "CLIPLoader": [("CLIP", "CLIP")],
    "CLIPTextEncode": [("CONDITIONING", "CONDITIONING")],
    "FluxGuidance": [("CONDITIONING", "CONDITIONING")],
    "ConditioningZeroOut": [("CONDITIONING", "CONDITIONING")],
    "ModelSamplingSD3": [("MODEL", "MODEL")],
    "EmptySD3LatentImage": [("LATENT", "LATENT")],
    "EmptyHunyuanLatentVideo": [("LATENT", "LATENT")],
    "BasicScheduler": [("SIGMAS", "SIGMAS")],
    "FREESampler": [("SAMPLER", "SAMPLER"), ("stats", "FREE_STATS")],
    "FREERecordTrajectories": [("SAMPLER", "SAMPLER")],
    "FREETrainTappedDrafter": [("FREE_DRAFTER", "FREE_DRAFTER")],
    "SamplerCustom": [("output", "LATENT"), ("denoised_output", "LATENT")],
    "SaveAnimatedWEBP": [],
}
# Linked inputs by class, in order: (name, type).
INPUTS = {
    "FREEDrafterLoader": [("model", "MODEL")],
    "FREEClassLabel": [("model", "MODEL")],
    "FREEEmptyLatent": [("model", "MODEL")],
    "FREEKSampler": [("model", "MODEL"), ("drafter", "FREE_DRAFTER"), ("positive", "CONDITIONING"),
                     ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
    "FREEStats": [("stats", "FREE_STATS"), ("after", "LATENT")],
    "FREECompare": [("baseline", "FREE_STATS"), ("strict", "FREE_STATS"), ("relax", "FREE_STATS")],
    "FREEDecode": [("samples", "LATENT")],
    "VAEDecode": [("samples", "LATENT"), ("vae", "VAE")],
    "SaveImage": [("images", "IMAGE")],
    "PreviewImage": [("images", "IMAGE")],
    "CLIPTextEncode": [("clip", "CLIP")],
    "FluxGuidance": [("conditioning", "CONDITIONING")],
    "ConditioningZeroOut": [("conditioning", "CONDITIONING")],
    "ModelSamplingSD3": [("model", "MODEL")],
    "BasicScheduler": [("model", "MODEL")],
    "FREESampler": [("drafter", "FREE_DRAFTER")],
    "SamplerCustom": [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                      ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"), ("latent_image", "LATENT")],
    "SaveAnimatedWEBP": [("images", "IMAGE")],
}
SIZES = {"FREEKSampler": [320, 410], "FREEStats": [300, 160], "FREEDecode": [300, 80], "SaveImage": [420, 460],
         "PreviewImage": [320, 300], "FREECompare": [600, 200], "Note": [600, 190]}


class Graph:
    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, class_type: str, pos: tuple[int, int], widgets: list, title: str | None = None,
            size: list[int] | None = None, mode: int = 0, **linked) -> int:
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
            "flags": {}, "order": node_id - 1, "mode": mode, "inputs": inputs,
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


MUTED = 2  # a node the frontend skips until the user un-mutes it (Ctrl+M)
FLUX_FILES = {"model": "flux1-dev.safetensors", "clip_l": "clip_l.safetensors", "t5": "t5xxl_fp8_e4m3fn.safetensors",
              "vae": "ae.safetensors", "recordings": "flux1-dev", "drafter": "flux1-dev_drafter"}
WAN_FILES = {"model": "wan2.1_t2v_1.3B_fp16.safetensors", "t5": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
             "vae": "wan_2.1_vae.safetensors", "recordings": "wan2.1_t2v_1.3B", "drafter": "wan2.1_t2v_1.3B_drafter"}
FLUX_PROMPT = "a red fox in a snowy birch forest at dawn, photograph, shallow depth of field"
WAN_PROMPT = "a paper boat drifting down a rain-soaked street, slow camera pan, cinematic lighting"
WAN_NEGATIVE = "blurry, low quality, static, distorted"
RECORD_NOTE = (
    "1. Record. Run this graph with your own prompts, resolutions and steps: every run samples plain euler_ancestral "
    "(FREE Sampler's law, so these images are what FREE strict gives) and adds one recording to "
    "models/free_recordings/{recordings}. The seed increments on each run. Some 30-100 runs are a good start.\n\n"
    "2. Train. Un-mute FREE Train Tapped Drafter (select it, Ctrl+M) and run once: it trains on the recordings and "
    "saves models/free_drafters/{drafter}.safetensors. Cancel keeps its progress; the next run carries on.\n\n"
    "3. Sample with the drafter in the other graph ({sample_graph})."
)
SAMPLE_NOTE = (
    "FREE Sampler (strict) with the drafter you trained: exactly the law of euler_ancestral with these settings, in "
    "fewer sequential model calls. Train it first with the graph '{record_graph}'. Without a drafter (unplug it), "
    "FREE Sampler uses frozen drafts, which need no training and save fewer calls. euler_ancestral is a stochastic "
    "sampler: its images differ from euler's (ODE) at the same seed.\n\nFREE Stats shows the calls saved, the "
    "acceptance and the wall clock against the plain sampler."
)


def flux_conditioning(g: Graph, model: int) -> tuple[int, int, int]:
    """(positive, negative, latent) node ids of the Flux dev text-to-image graph (guidance 3.5, cfg 1)."""
    clip = g.add("DualCLIPLoader", (0, 140), [FLUX_FILES["clip_l"], FLUX_FILES["t5"], "flux", "default"])
    text = g.add("CLIPTextEncode", (340, 140), [FLUX_PROMPT], size=[400, 160], clip=(clip, 0))
    positive = g.add("FluxGuidance", (780, 140), [3.5], conditioning=(text, 0))
    negative = g.add("ConditioningZeroOut", (780, 260), [], conditioning=(text, 0))  # cfg 1: unused by the guider
    latent = g.add("EmptySD3LatentImage", (0, 340), [1024, 1024, 1])
    return positive, negative, latent


def flux(record: bool) -> dict:
    g = Graph()
    model = g.add("UNETLoader", (0, 0), [FLUX_FILES["model"], "default"])
    positive, negative, latent = flux_conditioning(g, model)
    sigmas = g.add("BasicScheduler", (340, 340), ["simple", 20, 1.0], model=(model, 0))
    return model_graph(g, "free_flux", record, FLUX_FILES, model, positive, negative, latent, sigmas, cfg=1.0,
                       save=("SaveImage", ["FREE_flux"]), max_tokens=1024)


def wan(record: bool) -> dict:
    g = Graph()
    loaded = g.add("UNETLoader", (0, 0), [WAN_FILES["model"], "default"])
    model = g.add("ModelSamplingSD3", (340, 0), [8.0], model=(loaded, 0))
    clip = g.add("CLIPLoader", (0, 140), [WAN_FILES["t5"], "wan", "default"])
    positive = g.add("CLIPTextEncode", (340, 140), [WAN_PROMPT], size=[400, 140], clip=(clip, 0))
    negative = g.add("CLIPTextEncode", (340, 300), [WAN_NEGATIVE], size=[400, 100], clip=(clip, 0))
    latent = g.add("EmptyHunyuanLatentVideo", (0, 440), [832, 480, 33, 1])
    sigmas = g.add("BasicScheduler", (780, 140), ["simple", 30, 1.0], model=(model, 0))
    return model_graph(g, "free_wan", record, WAN_FILES, model, positive, negative, latent, sigmas, cfg=6.0,
                       save=("SaveAnimatedWEBP", ["FREE_wan", 16.0, False, 90, "default"]), max_tokens=2048)


def model_graph(g: Graph, workflow_id: str, record: bool, files: dict, model: int, positive: int, negative: int,
                latent: int, sigmas: int, cfg: float, save: tuple[str, list], max_tokens: int) -> dict:
    """The sampling half of a model graph: FREE Record Trajectories (+ a muted FREE Train Tapped Drafter) or FREE
    Sampler with the trained drafter (+ FREE Stats), in SamplerCustom; decode, save and the note."""
    if record:
        sampler = g.add("FREERecordTrajectories", (780, 380), [files["recordings"], max_tokens, 1.0, 1.0])
    else:
        drafter = g.add("FREEDrafterLoader", (340, 480), [files["drafter"] + ".safetensors"], model=(model, 0))
        sampler = g.add("FREESampler", (780, 380), ["strict", 8, "adaptive", 0.0, 1.0, 1.0], drafter=(drafter, 0))
    custom = g.add("SamplerCustom", (1140, 0), [True, 42, "increment" if record else "fixed", cfg], size=[320, 330],
                   model=(model, 0), positive=(positive, 0), negative=(negative, 0), sampler=(sampler, 0),
                   sigmas=(sigmas, 0), latent_image=(latent, 0))
    vae = g.add("VAELoader", (1140, 380), [files["vae"]])
    decode = g.add("VAEDecode", (1500, 0), [], samples=(custom, 0), vae=(vae, 0))
    g.add(save[0], (1840, 0), save[1], images=(decode, 0))
    if record:
        g.add("FREETrainTappedDrafter", (1140, 480), [files["recordings"], files["drafter"], 1000, 16, 4, 0, "fixed"],
              size=[340, 200], mode=MUTED)
        note = RECORD_NOTE.format(sample_graph=MODEL_WORKFLOWS[workflow_id][0], **files)
    else:
        stats = g.add("FREEStats", (1500, 330), [], stats=(sampler, 1), after=(custom, 0))
        g.add("PreviewImage", (1840, 480), [], images=(stats, 0))
        note = SAMPLE_NOTE.format(record_graph=MODEL_WORKFLOWS[workflow_id + "_record"][0])
    g.add("Note", (0, 620), [note], title="How to use this graph", size=[700, 220])
    return g.to_json(workflow_id + ("_record" if record else ""))


MODEL_WORKFLOWS = {  # graphs for models the user downloads (the tests validate them; they cannot run them here)
    "free_flux_record": ("FREE Flux dev 1 - record and train a drafter", lambda: flux(record=True)),
    "free_flux": ("FREE Flux dev 2 - sample with the drafter", lambda: flux(record=False)),
    "free_wan_record": ("FREE Wan 2.1 1 - record and train a drafter", lambda: wan(record=True)),
    "free_wan": ("FREE Wan 2.1 2 - sample with the drafter", lambda: wan(record=False)),
}
WORKFLOWS.update(MODEL_WORKFLOWS)


def main() -> None:
    folder = ROOT / "example_workflows"  # the one folder ComfyUI lists as templates
    folder.mkdir(exist_ok=True)
    for title, build in WORKFLOWS.values():
        path = folder / f"{title}.json"
        path.write_text(json.dumps(build(), indent=1) + "\n")
        print("wrote", path.relative_to(ROOT))


if __name__ == "__main__":
    main()
