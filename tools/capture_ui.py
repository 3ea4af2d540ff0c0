"""Screenshots of the shipped workflows in a running ComfyUI's web UI: the template thumbnails
(example_workflows/*.jpg) and the README screenshot.

    python tools/capture_ui.py --url http://127.0.0.1:8188 [--run free_embedded free_compare_baseline_strict_relax]

Needs the ComfyUI-FREE pack loaded in that server, Playwright, and Debian's chromium (/usr/bin/chromium).
Workflows named in --run are queued first, so their screenshots show the outputs.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from playwright.sync_api import sync_playwright
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
FIT_GRAPH = """() => {
    let right = 0, bottom = 0;
    for (const node of window.app.graph._nodes) {
        right = Math.max(right, node.pos[0] + node.size[0]);
        bottom = Math.max(bottom, node.pos[1] + node.size[1]);
    }
    const scale = Math.min(1, 1540 / (right + 40), 800 / (bottom + 40));
    window.app.canvas.ds.scale = scale;
    window.app.canvas.ds.offset = [20, 80 / scale];
    window.app.graph.setDirtyCanvas(true, true);
}"""
WAIT_FOR_OUTPUTS = """() => window.app.graph._nodes
    .filter((node) => node.type === "SaveImage" || node.type === "PreviewImage")
    .every((node) => (node.imgs || []).length > 0 && node.imgs.every((img) => img.complete && img.naturalWidth > 0))"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--run", nargs="*", default=[], help="workflows to queue before the screenshot")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--readme-shot", default="free_embedded", help="workflow for docs/images/comfyui_embedded_workflow.png")
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(args.url)
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        for path in sorted((ROOT / "workflows").glob("*.json")):
            page.evaluate("async (workflow) => { await window.app.loadGraphData(workflow); }", json.loads(path.read_text()))
            page.keyboard.press("Escape")
            if path.stem in args.run:
                page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
                page.wait_for_function(WAIT_FOR_OUTPUTS, timeout=600_000)
            page.evaluate(FIT_GRAPH)
            page.wait_for_timeout(1000)
            png = page.screenshot()
            if path.stem == args.readme_shot:
                (ROOT / "docs" / "images" / "comfyui_embedded_workflow.png").write_bytes(png)
            thumbnail = Image.open(io.BytesIO(png)).convert("RGB")
            thumbnail.thumbnail((800, 450))
            thumbnail.save(ROOT / "example_workflows" / f"{path.stem}.jpg", quality=85)
            print("captured", path.stem)
        browser.close()


if __name__ == "__main__":
    main()
