"""The pack as ComfyUI, ComfyUI-Manager and the registry see it: metadata, requirements, imports, workflow files."""

import ast
import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
# The folder names ComfyUI scans for custom-node templates (app/custom_node_manager.py): a second one lists them twice.
TEMPLATE_FOLDERS = ["example_workflows", "example", "examples", "workflow", "workflows"]


def test_requirements_never_list_torch():
    for line in (REPO / "requirements.txt").read_text().splitlines():
        name = re.split(r"[<>=!~\[ ;]", line.strip(), maxsplit=1)[0].lower()
        assert name not in {"torch", "torchvision", "torchaudio"}, f"requirements.txt must not list {line!r}"


def test_pyproject_has_project_and_comfy_registry_metadata():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["name"] and meta["project"]["version"]
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"].startswith("https://")
    assert (REPO / "docs" / "images" / "icon.png").is_file()


def _imports(path: Path) -> list[ast.stmt]:
    return [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))]


@pytest.mark.parametrize("path", [REPO / "__init__.py", *sorted((REPO / "nodes").glob("*.py"))], ids=lambda p: p.name)
def test_pack_modules_import_their_own_code_relatively(path):
    """ComfyUI puts its own packages first on sys.path: an absolute `free_core` or `nodes` import could clash."""
    for node in _imports(path):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        if isinstance(node, ast.ImportFrom) and node.level:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top not in {"free_core", "nodes"}, f"{path.name}: use a relative import for {name}"
            assert top in {"comfy", "folder_paths", "server", "torch", "os", "logging", "__future__"} or importlib.util.find_spec(top), name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_files_are_consistent_ui_graphs(path):
    workflow = json.loads(path.read_text())
    nodes = {node["id"]: node for node in workflow["nodes"]}
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        assert link_id in nodes[origin]["outputs"][origin_slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[origin]["outputs"][origin_slot]["type"] == kind == nodes[target]["inputs"][target_slot]["type"]
    assert workflow["last_node_id"] == max(nodes) and workflow["last_link_id"] == len(workflow["links"])


def test_templates_come_from_one_folder_with_human_titles():
    assert [name for name in TEMPLATE_FOLDERS if (REPO / name).is_dir()] == ["example_workflows"]
    for path in WORKFLOWS:  # the frontend shows the file name as the title and, with - and _ as spaces, the description
        assert path.stem.startswith("FREE ") and "_" not in path.stem, path.name
        assert not set(path.stem) & set('<>:"/\\|?*'), f"{path.name}: not a portable file name"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_template_thumbnail_is_a_readable_jpeg(path):
    from PIL import Image

    thumbnail = path.with_suffix(".jpg")
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG" and image.size[0] >= 400 and image.size[1] >= 300, thumbnail.name


def test_workflow_files_match_their_generator():
    spec = importlib.util.spec_from_file_location("make_workflows", REPO / "tools" / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sorted(p.stem for p in WORKFLOWS) == sorted(title for title, _ in module.WORKFLOWS.values())
    for workflow_id, (title, build) in module.WORKFLOWS.items():
        shipped = json.loads((REPO / "example_workflows" / f"{title}.json").read_text())
        assert shipped == build() and shipped["extra"]["free_workflow"] == workflow_id, f"run tools/make_workflows.py ({title})"
