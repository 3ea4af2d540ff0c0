"""ComfyUI-FREE behind a real ComfyUI server (main.py --cpu): HTTP POST /prompt + GET /history, and the
web UI in headless Chromium (Debian's chromium driven by Playwright; no browser is downloaded).
"""

import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch

from comfyui.ui_to_api import convert, node_defs_from_object_info
from comfyui.workflow_files import (CLASS_FRACTION_FLOOR, IMAGE_STD_FLOOR, MICRO_DIT, embedded_weights_present,
                                    load_workflow, workflow_files)
from comfyui_trees import REPO, TREE_NAMES, tree_for
from free_core.models.checkpoints import save_dit
from free_core.models.dit import DiT, dit_config
from free_core.evaluation.metrics import class_accuracy, load_classifier

STARTUP_TIMEOUT_S = 180
RUN_TIMEOUT_S = 300
# Page errors that are not ours, by exact (kind, message, URL path); any other fails the browser test.
NOT_FOUND = "Failed to load resource: the server responded with a status of 404 (Not Found)"
ALLOWED_PAGE_ERRORS = {
    # Chromium asks for /favicon.ico by itself; the 2024 ComfyUI serves none.
    ("console.error", NOT_FOUND, "/favicon.ico"),
    # The current frontend probes a fresh user's optional files (user.css, the saved-workflows folder, the templates
    # index); the server answers 404 for each while the user has none, and the frontend carries on.
    ("console.error", NOT_FOUND, "/api/userdata/user.css"),
    ("console.error", NOT_FOUND, "/user.css"),
    ("console.error", NOT_FOUND, "/api/userdata"),
    ("console.error", NOT_FOUND, "/api/userdata/comfy.templates.json"),
}


class Server:
    def __init__(self, url: str, tree, work: Path, log: Path):
        self.url, self.tree, self.work, self.log = url, tree, work, log

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            body = response.read()
        return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, payload: dict) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module", params=TREE_NAMES)
def server(request, tmp_path_factory):
    tree = tree_for(request.param)
    work = tmp_path_factory.mktemp(f"server_{tree.name}")
    models = work / "models"
    for folder in ("diffusion_models", "free_drafters"):
        (models / folder).mkdir(parents=True)
    if not embedded_weights_present():
        torch.manual_seed(0)
        micro = DiT(dit_config("DiT-Micro/8"))
        for name, parameter in micro.named_parameters():
            if name != "pos_embed":
                parameter.data = torch.randn(parameter.shape) * 0.02
        save_dit(models / "diffusion_models" / MICRO_DIT, micro)
    (work / "custom_nodes").mkdir()
    (work / "custom_nodes" / "ComfyUI-FREE").symlink_to(REPO, target_is_directory=True)
    for folder in ("output", "input", "user/default"):
        (work / folder).mkdir(parents=True)
    (work / "user" / "default" / "comfy.settings.json").write_text(json.dumps({
        "Comfy.TutorialCompleted": True,
        # The current frontend (1.27) registers Comfy.Canvas.NavigationMode, whose onChange sets these two before they
        # are registered: with a fresh user that throws "Cannot read properties of undefined (reading 'id')" in its
        # setting store. Their legacy values, stored, make those sets no-ops (the 2024 UI ignores them).
        "Comfy.Canvas.LeftMouseClickBehavior": "panning", "Comfy.Canvas.MouseWheelScroll": "zoom",
    }))
    paths = work / "extra_model_paths.yaml"
    paths.write_text(
        "free_tests:\n"
        f"    custom_nodes: {work / 'custom_nodes'}\n"
        f"    diffusion_models: {models / 'diffusion_models'}\n"
        f"    unet: {models / 'diffusion_models'}\n"
        f"    free_drafters: {models / 'free_drafters'}\n"
    )
    port = _free_port()
    command = [tree.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--extra-model-paths-config", str(paths), "--output-directory", str(work / "output"),
               "--temp-directory", str(work / "output"), "--input-directory", str(work / "input")]
    if tree.is_current:
        command += ["--user-directory", str(work / "user"), "--disable-api-nodes"]
    log = work / "server.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, cwd=tree.path, env=tree.env(), stdout=log_file, stderr=subprocess.STDOUT)
    running = Server(f"http://127.0.0.1:{port}", tree, work, log)
    try:
        deadline = time.time() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI ({tree.name}) exited with {process.returncode}:\n{running.log_tail()}")
            try:
                if "FREEKSampler" in running.get("/object_info/FREEKSampler"):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.time() > deadline:
                pytest.fail(f"ComfyUI ({tree.name}) did not serve the FREE nodes within {STARTUP_TIMEOUT_S} s:\n{running.log_tail()}")
            time.sleep(0.5)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_embedded_workflow_through_post_prompt_and_get_history(server):
    from PIL import Image

    workflow = load_workflow("free_embedded")
    prompt = convert(workflow, node_defs_from_object_info(server.get("/object_info")))
    save_id = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    prompt[save_id]["inputs"]["filename_prefix"] = "FREE_http"  # so the browser test's run saves (not caches) its own
    queued = server.post("/prompt", {"prompt": prompt, "client_id": "free-tests"})
    assert queued.get("node_errors") == {}, queued
    prompt_id = queued["prompt_id"]
    deadline = time.time() + RUN_TIMEOUT_S
    while not (history := server.get(f"/history/{prompt_id}")).get(prompt_id):
        assert time.time() < deadline, f"no history for {prompt_id}:\n{server.log_tail()}"
        time.sleep(0.5)
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"], server.log_tail()
    stats_id = next(k for k, v in prompt.items() if v["class_type"] == "FREEStats")
    images = entry["outputs"][save_id]["images"]
    assert len(images) == 8  # one file per batch item
    pixels = []
    for saved in images:
        png = server.get(f"/view?filename={saved['filename']}&subfolder={saved['subfolder']}&type=output")
        image = Image.open(io.BytesIO(png))
        assert image.size == (128, 128) and image.mode == "RGB"
        pixels.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(128, 128, 3))
    pixels = torch.stack(pixels).float() / 255  # (8, 128, 128, 3) in [0, 1]
    summary = entry["outputs"][stats_id]["text"][0]
    assert "DiT calls saved" in summary and "free-strict" in summary
    # Values, not only sizes: the floors and what they were measured on are in tests/comfyui/workflow_files.py.
    std = pixels.flatten(1).std(1)
    assert std.min() > IMAGE_STD_FLOOR, f"the saved images are (nearly) constant: per-image std {std.tolist()}"
    if embedded_weights_present():  # FREE Decode repeats each pixel 4x4: every 4th pixel is the 32x32 sample
        samples = pixels[:, ::4, ::4].permute(0, 3, 1, 2) * 2 - 1
        label = next(v for v in prompt.values() if v["class_type"] == "FREEClassLabel")["inputs"]["class_name"]
        fraction = class_accuracy(load_classifier(), samples, torch.full((8,), int(label.split()[0])))
        assert fraction >= CLASS_FRACTION_FLOOR, (
            f"the classifier found {label!r} in only {fraction:.3f} of the saved images")


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _browser():
    """(chromium path, sync_playwright), or a skip naming what is missing (a failure in CI, which installs both)."""
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium is None or sync_playwright is None:
        missing = "Debian chromium (apt-get install chromium)" if chromium is None else "playwright (pip install playwright)"
        if os.environ.get("CI"):
            pytest.fail(f"the browser test needs {missing}; .ci/run installs it")
        pytest.skip(f"the browser test needs {missing}")
    return chromium, sync_playwright


def test_web_ui_loads_queues_and_shows_the_embedded_workflow(server):
    chromium, sync_playwright = _browser()
    workflow = load_workflow("free_embedded")
    save_id = next(node["id"] for node in workflow["nodes"] if node["type"] == "SaveImage")
    shots = Path(os.environ.get("FREE_SCREENSHOT_DIR") or server.work)
    shots.mkdir(parents=True, exist_ok=True)
    screenshot = shots / f"comfyui_{server.tree.name}_embedded_workflow.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            errors: list[tuple[str, str, str]] = []  # (kind, message, URL path): ANY page error fails the test
            stacks: list[str] = []  # the uncaught exceptions' stacks, for the failure message

            def on_page_error(error) -> None:
                errors.append(("pageerror", error.message, ""))
                stacks.append(error.stack or "")

            page.on("pageerror", on_page_error)
            page.on("console", lambda message: message.type == "error" and errors.append(
                ("console.error", message.text, urllib.parse.urlsplit(message.location.get("url") or "").path)))
            page.goto(server.url + "/")
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            page.evaluate("async (workflow) => { await window.app.loadGraphData(workflow); }", workflow)
            page.keyboard.press("Escape")
            page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
            page.wait_for_function(
                """(id) => {
                    const node = window.app.graph.getNodeById(id);
                    const imgs = (node && node.imgs) || [];
                    return imgs.length > 0 && imgs.every((img) => img.complete && img.naturalWidth > 0);
                }""",
                arg=save_id, timeout=RUN_TIMEOUT_S * 1000,
            )
            sources = page.evaluate("(id) => window.app.graph.getNodeById(id).imgs.map((img) => img.src)", save_id)
            page.evaluate("() => { window.app.canvas.ds.offset = [40, 60]; window.app.canvas.ds.scale = 0.95; "
                          "window.app.graph.setDirtyCanvas(true, true); }")
            page.wait_for_timeout(1000)
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    assert len(sources) == 8 and all("FREE_embedded" in src for src in sources), sources
    assert screenshot.stat().st_size > 10_000
    unexpected = [error for error in errors if error not in ALLOWED_PAGE_ERRORS]
    assert not unexpected, "page errors:\n" + "\n".join(map(repr, unexpected)) + "\nstacks:\n" + "\n".join(stacks)


TEXT_PREVIEW = "$$node-text-preview"  # the current frontend's widget for a node's progress text


def test_template_list_has_each_workflow_once_and_the_template_shows_its_savings_on_the_canvas(server):
    """Current ComfyUI only (templates of custom nodes and progress text are 2025 features): the pack's templates are
    listed once each, under their titles; opening one from the template dialog and running it shows the calls saved
    (or why none were) and the wall clock on FREE KSampler and FREE Stats, in the page (not only in the console)."""
    if not server.tree.is_current:
        pytest.skip("the 2024 ComfyUI has no template list for custom nodes and no progress text")
    chromium, sync_playwright = _browser()
    titles = sorted(path.stem for path in (REPO / "example_workflows").glob("*.json"))
    listed = server.get("/api/workflow_templates")
    assert listed.get("ComfyUI-FREE") and sorted(listed["ComfyUI-FREE"]) == titles  # each once, nothing else
    title = workflow_files()["free_embedded"].stem
    shots = Path(os.environ.get("FREE_SCREENSHOT_DIR") or server.work)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(server.url + "/")
            page.wait_for_function("() => window.app && window.app.graph && window.app.extensionManager", timeout=120_000)
            page.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.BrowseTemplates'); }")
            page.get_by_text("ComfyUI-FREE", exact=True).first.click(timeout=60_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / "comfyui_current_template_list.png"))
            page.get_by_text(title, exact=True).first.click(timeout=60_000)
            page.wait_for_function("() => window.app.graph._nodes.some((node) => node.type === 'FREEKSampler')",
                                   timeout=60_000)
            loaded = page.evaluate("() => window.app.graph.extra && window.app.graph.extra.free_workflow")
            # Another seed than the earlier runs of this workflow on this server: a cached prompt would run no node.
            page.evaluate("""() => window.app.graph._nodes.filter((node) => node.type === 'FREEKSampler')
                .forEach((node) => { node.widgets.find((w) => w.name === 'seed').value = 4242; })""")
            page.keyboard.press("Escape")
            page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
            page.wait_for_function(
                """(name) => ['FREEKSampler', 'FREEStats'].every((type) => window.app.graph._nodes.some((node) =>
                    node.type === type && (node.widgets || []).some((w) => w.name === name
                        && String(w.value).includes('DiT calls for 50 steps') && String(w.value).includes('wall clock'))))""",
                arg=TEXT_PREVIEW, timeout=RUN_TIMEOUT_S * 1000)
            texts = page.evaluate("""(name) => Object.fromEntries(window.app.graph._nodes
                .filter((node) => (node.widgets || []).some((w) => w.name === name))
                .map((node) => [node.type, node.widgets.find((w) => w.name === name).value]))""", TEXT_PREVIEW)
            page.evaluate("() => { window.app.canvas.ds.offset = [20, 40]; window.app.canvas.ds.scale = 1.0; "
                          "window.app.graph.setDirtyCanvas(true, true); }")
            page.wait_for_timeout(1000)
            visible = page.get_by_text("DiT calls for 50 steps").first.is_visible()
            page.screenshot(path=str(shots / "comfyui_current_embedded_after_run.png"))
        finally:
            browser.close()
    assert loaded == "free_embedded"
    assert visible, f"the savings text is not visible on the canvas: {texts}"
    sampler = texts["FREEKSampler"]
    # The calls saved, or (adaptive K, the default, where drafting cannot pay: this CPU at 50 steps) why none were.
    assert ("x fewer)" in sampler) != ("adaptive K: no gain on this device" in sampler), texts
    assert ("x faster than" in sampler) != ("x slower than" in sampler), texts
