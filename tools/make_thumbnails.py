"""Template thumbnails (example_workflows/*.jpg) that show what each workflow makes, readable at card size.

    python tools/make_thumbnails.py

The embedded workflows are run with free_core at their own settings (FREE KSampler calls the same
`generate`, so these are the images the graph makes); the DiT-XL/2 workflows need weights that are not
shipped, so their cards say what to download instead of showing images they did not make.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from free_core import SamplerOptions, generate, resolve_dit, resolve_drafter  # noqa: E402
from free_core.frontdoor.image_tensors import samples_to_images  # noqa: E402
from free_core.models.class_labels import resolve_class  # noqa: E402

CARD = (640, 480)
INK, MUTED, BACKGROUND = (25, 25, 25), (110, 110, 110), (255, 255, 255)
TITLES = {"off": "baseline", "strict": "FREE strict", "relax": "FREE relax"}


def font(size: int):
    return ImageFont.load_default(size=size)


def nodes_of(workflow: dict, class_type: str) -> list[dict]:
    return [node for node in workflow["nodes"] if node["type"] == class_type]


def run_samplers(workflow: dict, dit, drafter) -> list[tuple[str, Image.Image, str]]:
    """(title, image grid, headline) per FREE KSampler of the workflow, at its widgets' settings: one strip per
    sampler when there are several, two rows when there is one (so the card is filled)."""
    (label_node,) = nodes_of(workflow, "FREEClassLabel")
    (latent_node,) = nodes_of(workflow, "FREEEmptyLatent")
    label, _ = resolve_class(label_node["widgets_values"][0], label_node["widgets_values"][1], dit.num_classes)
    batch = latent_node["widgets_values"][0]
    rows, samplers = [], nodes_of(workflow, "FREEKSampler")
    columns = batch if len(samplers) > 1 else (batch + 1) // 2
    for node in samplers:
        seed, _, steps, cfg, mode, draft_length, policy, strength = node["widgets_values"]
        options = SamplerOptions.from_node_widgets(mode, draft_length, policy, strength, steps=steps, cfg=cfg, seed=seed)
        samples, stats = generate(dit, drafter, torch.full((batch,), label), options)
        pixels = (samples_to_images(samples, scale=2) * 255).round().byte().numpy()
        side = pixels.shape[2] + 4
        strip = Image.new("RGB", (columns * side, ((batch + columns - 1) // columns) * side), BACKGROUND)
        for k in range(batch):
            strip.paste(Image.fromarray(pixels[k]), ((k % columns) * side, (k // columns) * side))
        calls = f"{stats.sequential_dit_calls} DiT calls for {stats.num_steps} steps"
        if stats.adaptive_drafted_nothing:  # this card was made on a CPU, where drafting cannot pay at 50 steps
            calls = f"{stats.sequential_dit_calls} DiT calls, {stats.num_steps} steps (plain on CPU)"
        rows.append((TITLES[mode], strip, calls))
    return rows


def sample_card(title: str, rows: list[tuple[str, Image.Image, str]]) -> Image.Image:
    card = Image.new("RGB", CARD, BACKGROUND)
    draw = ImageDraw.Draw(card)
    draw.text((16, 12), title, fill=INK, font=font(30))
    top = 64
    space = (CARD[1] - top - 8) // len(rows)
    for name, strip, calls in rows:
        draw.text((16, top), f"{name}: {calls}", fill=INK if name != "baseline" else MUTED, font=font(22))
        scale = min((CARD[0] - 32) / strip.size[0], (space - 36) / strip.size[1])
        shown = strip.resize((int(strip.size[0] * scale), int(strip.size[1] * scale)), Image.NEAREST)
        card.paste(shown, (16, top + 30))
        top += space
    return card


LOADER_FOLDERS = {"FREEDiTLoader": "diffusion_models", "UNETLoader": "diffusion_models", "DualCLIPLoader": "text_encoders",
                  "CLIPLoader": "text_encoders", "VAELoader": "vae"}
WHAT_IT_DOES = {
    "FREEDiTLoader": ["FREE strict on facebookresearch DiT-XL/2,", "training-free drafts; the same images'",
                      "distribution with fewer sequential calls."],
    "FREERecordTrajectories": ["Sample with your prompts: each run records", "a trajectory (plain euler_ancestral);",
                               "then train a drafter on them."],
    "FREESampler": ["FREE strict with your trained drafter:", "euler_ancestral's distribution with", "fewer sequential model calls."],
}


def download_card(title: str, workflow: dict) -> Image.Image:
    """A card for a graph whose weights are not shipped: what it does and the files it needs."""
    kind = next(k for k in WHAT_IT_DOES if nodes_of(workflow, k))
    needs = [f"  models/{LOADER_FOLDERS[node['type']]}/{name}" for node in workflow["nodes"] if node["type"] in LOADER_FOLDERS
             for name in node["widgets_values"] if isinstance(name, str) and name.endswith((".safetensors", ".pt"))]
    card = Image.new("RGB", CARD, BACKGROUND)
    draw = ImageDraw.Draw(card)
    draw.text((16, 12), title, fill=INK, font=font(30 if len(title) < 40 else 24))
    lines = WHAT_IT_DOES[kind] + ["", "Needs (not shipped):"] + needs
    top = 80
    for k, line in enumerate(lines):
        headline = k < 3
        draw.text((16, top), line, fill=INK if headline else MUTED, font=font(26 if headline else 20))
        top += 44 if headline else 32
    return card


def main() -> None:
    dit = resolve_dit("embedded")
    drafter = resolve_drafter("embedded", dit)
    for path in sorted((ROOT / "example_workflows").glob("*.json")):
        workflow = json.loads(path.read_text())
        if nodes_of(workflow, "VAELoader"):  # weights that are not shipped
            card = download_card(path.stem, workflow)
        else:
            card = sample_card(path.stem, run_samplers(workflow, dit, drafter))
        card.save(path.with_suffix(".jpg"), quality=90)
        print("wrote", path.with_suffix(".jpg").relative_to(ROOT))


if __name__ == "__main__":
    main()
