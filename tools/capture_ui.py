"""Screenshots of the shipped workflows after a run, at 100% zoom, for the README (docs/images/).

    python tools/capture_ui.py --url http://127.0.0.1:8188

Needs a current ComfyUI (progress text on nodes) with the ComfyUI-FREE pack loaded, Playwright, and Debian's
chromium (/usr/bin/chromium). Each embedded workflow is loaded, run, and photographed at 100% zoom with the view
on its results (the text on the FREE nodes); the template list is photographed too. Template thumbnails are
made by tools/make_thumbnails.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHOTS = {  # workflow id -> (screenshot, canvas offset that puts the results in view at 100% zoom)
    "free_embedded": ("comfyui_embedded_after_run.png", [20, 40]),
    "free_compare_baseline_strict_relax": ("comfyui_compare_after_run.png", [-640, 30]),
}
STATIC_SHOTS = {  # workflow id -> (screenshot, canvas scale, offset): graphs whose models are not here, shown unrun
    "free_flux": ("comfyui_flux_graph.png", 0.75, [30, 30]),
}
DONE = """() => window.app.graph._nodes.filter((node) => ['FREEStats', 'FREECompare'].includes(node.type))
    .every((node) => (node.widgets || []).some((w) => w.name === '$$node-text-preview' && w.value))"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--only", nargs="*", help="screenshot file names to take (default: all)")
    args = parser.parse_args()
    wanted = lambda name: not args.only or name in args.only  # noqa: E731
    workflows = {json.loads(p.read_text())["extra"]["free_workflow"]: p for p in (ROOT / "example_workflows").glob("*.json")}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(args.url)
        page.wait_for_function("() => window.app && window.app.graph && window.app.extensionManager", timeout=120_000)
        for workflow_id, (name, offset) in SHOTS.items():
            if not wanted(name):
                continue
            page.evaluate("async (workflow) => { await window.app.loadGraphData(workflow); }",
                          json.loads(workflows[workflow_id].read_text()))
            page.keyboard.press("Escape")
            page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
            page.wait_for_function(DONE, timeout=600_000)
            page.evaluate("(offset) => { window.app.canvas.ds.scale = 1.0; window.app.canvas.ds.offset = offset; "
                          "window.app.graph.setDirtyCanvas(true, true); }", offset)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ROOT / "docs" / "images" / name))
            print("captured", name)
        for workflow_id, (name, scale, offset) in STATIC_SHOTS.items():
            if not wanted(name):
                continue
            page.evaluate("async (workflow) => { await window.app.loadGraphData(workflow); }",
                          json.loads(workflows[workflow_id].read_text()))
            page.keyboard.press("Escape")
            page.evaluate("([scale, offset]) => { window.app.canvas.ds.scale = scale; window.app.canvas.ds.offset = offset; "
                          "window.app.graph.setDirtyCanvas(true, true); }", [scale, offset])
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ROOT / "docs" / "images" / name))
            print("captured", name)
        if wanted("comfyui_template_list.png"):
            page.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.BrowseTemplates'); }")
            page.get_by_text("ComfyUI-FREE", exact=True).first.click(timeout=60_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ROOT / "docs" / "images" / "comfyui_template_list.png"))
            print("captured comfyui_template_list.png")
        browser.close()


if __name__ == "__main__":
    main()
