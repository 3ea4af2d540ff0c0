"""ComfyUI-FREE in the real ComfyUI executor (no mock): every shipped workflow, progress, interrupt, core samplers.

One subprocess per tree runs tests/comfyui/runner.py, which converts each workflow from UI to API
format, validates and executes it with ComfyUI's own PromptExecutor, and reports every node's outputs.
"""

import pytest

from comfyui.workflow_files import CLASS_FRACTION_FLOOR, IMAGE_STD_FLOOR, SEED_DIFF_FLOOR
from comfyui_trees import TREE_NAMES, run_runner, tree_for

IMAGE_SIDE = {"free_embedded": 128, "free_compare_baseline_strict_relax": 128, "free_dit_xl_2_256": 256, "free_dit_xl_2_512": 512}


@pytest.fixture(scope="module", params=TREE_NAMES)
def report(request, tmp_path_factory):
    tree = tree_for(request.param)
    data = run_runner(tree, tmp_path_factory.mktemp(f"comfyui_{tree.name}"))
    crashed = {name: s["crashed"] for name, s in data["scenarios"].items() if "crashed" in s}
    assert not crashed, f"runner scenarios crashed: {crashed}"
    return data


def _ok(result: dict) -> None:
    assert result["valid"], result.get("node_errors")
    assert result["success"], result["errors"]


def _outputs(result: dict, class_type: str) -> list:
    return [node["outputs"] for node in result["nodes"].values() if node["class_type"] == class_type]


def _check_images(result: dict, class_type: str, side: int, batch: int | None = None, std_floor: float = 0.0) -> None:
    images = _outputs(result, class_type)
    assert images, f"no {class_type} output"
    for (image,) in images:
        assert image["kind"] == "tensor" and image["finite"]
        assert image["shape"][1:] == [side, side, 3] and (batch is None or image["shape"][0] == batch)
        assert 0.0 <= image["min"] <= image["max"] <= 1.0
        if std_floor:
            assert min(image["item_std"]) > std_floor, (
                f"{class_type} made (nearly) constant images: per-image std {image['item_std']}")


def test_every_shipped_workflow_runs_in_the_executor(report):
    workflows = report["scenarios"]["workflows"]
    assert sorted(workflows) == sorted(IMAGE_SIDE)
    for name, result in workflows.items():
        _ok(result)
        decoder = "VAEDecode" if "dit_xl" in name else "FREEDecode"
        _check_images(result, decoder, IMAGE_SIDE[name])
        for latent, stats in _outputs(result, "FREEKSampler"):
            assert latent["kind"] in ("latent", "tensor") and latent["finite"]  # the 2024 executor keeps the samples
            assert stats["kind"] == "stats" and stats["num_steps"] == 50
            if stats["sampler"] == "free-strict" and stats["draft_length"] != "adaptive":
                assert stats["rounds"] < stats["num_steps"], f"{name}: strict FREE made no saving"
                assert 0 < stats["acceptance_rate"] <= 1
            if stats["draft_length"] == "adaptive":  # the default: plain steps where drafting cannot pay (a CPU)
                assert stats["rounds"] <= stats["num_steps"]
            if stats["sampler"] == "ancestral":
                assert stats["rounds"] == stats["num_steps"]
        for plot, summary in _outputs(result, "FREEStats"):
            assert plot["shape"][0] == 1 and plot["shape"][3] == 3 and plot["finite"]
            assert "DiT calls saved" in summary["text"]


def test_embedded_workflow_images_are_not_constant(report):
    workflows, determinism = report["scenarios"]["workflows"], report["scenarios"]["determinism_and_interrupt"]
    runs = [workflows["free_embedded"], workflows["free_compare_baseline_strict_relax"],
            determinism["first"], determinism["other_seed"]]
    for result in runs:
        _ok(result)
        _check_images(result, "FREEDecode", 128, batch=8, std_floor=IMAGE_STD_FLOOR)


def test_different_seeds_give_different_images(report):
    scenario = report["scenarios"]["determinism_and_interrupt"]
    _ok(scenario["other_seed"])
    seed, other = scenario["seeds"]
    assert seed != other
    assert scenario["other_seed_mean_abs_diff"] > SEED_DIFF_FLOOR, (
        f"FREE KSampler gave (nearly) the same latent for seeds {seed} and {other}: "
        f"mean |difference| {scenario['other_seed_mean_abs_diff']}")


def test_shipped_classifier_finds_the_requested_class_in_the_embedded_workflow(report):
    if not report["embedded_present"]:
        pytest.skip("the embedded weights are not in this checkout: the workflow ran on a random stand-in")
    # free_embedded and the determinism runs (the compare workflow's three runs are in the report, not asserted).
    verdicts = report["scenarios"]["determinism_and_interrupt"]["classifier"]
    assert [v["seed"] for v in verdicts] == report["scenarios"]["determinism_and_interrupt"]["seeds"]
    (workflow,) = report["scenarios"]["workflows"]["free_embedded"]["classifier"].values()
    assert workflow == verdicts[0]  # the workflow scenario's run and the determinism scenario's first run agree
    for verdict in verdicts:
        assert verdict["fraction"] >= CLASS_FRACTION_FLOOR, (
            f"seed {verdict['seed']}: the classifier found class {verdict['requested']} in only {verdict['fraction']:.3f} "
            f"of the images (predictions {verdict['predictions']})")


def test_compare_workflow_runs_baseline_strict_and_relax_from_one_seed(report):
    result = report["scenarios"]["workflows"]["free_compare_baseline_strict_relax"]
    samplers = sorted(stats["sampler"] for _, stats in _outputs(result, "FREEKSampler"))
    assert samplers == ["ancestral", "free-relax", "free-strict"]
    rounds = {stats["sampler"]: stats["rounds"] for _, stats in _outputs(result, "FREEKSampler")}
    # A batch's rounds are set by its slowest sample, so relax need not beat strict on one seed; both must save.
    assert rounds["free-strict"] < rounds["ancestral"] and rounds["free-relax"] < rounds["ancestral"]
    (table, text), = _outputs(result, "FREECompare")  # one side-by-side table of the three runs
    assert table["kind"] == "tensor" and table["shape"][0] == 1 and table["finite"]
    lines = text["text"].splitlines()
    assert [line.split(":")[0] for line in lines] == ["baseline", "FREE strict", "FREE relax"]
    for line, sampler in zip(lines, ("ancestral", "free-strict", "free-relax")):
        assert f": {rounds[sampler]} / 50 DiT calls" in line
        assert line.startswith("baseline") or ("x faster than the baseline" in line) != ("x slower than the baseline" in line)


def test_same_graph_same_seed_same_image(report):
    scenario = report["scenarios"]["determinism_and_interrupt"]
    _ok(scenario["first"])
    assert scenario["second_success"] and scenario["same_seed_same_bits"]


def test_progress_bar_advances_with_the_committed_steps(report):
    scenario = report["scenarios"]["determinism_and_interrupt"]
    values = [value for value, _ in scenario["progress"]]
    (_, stats), = _outputs(scenario["first"], "FREEKSampler")
    assert values[0] == 0 and values[-1] == stats["num_steps"]
    assert all(b > a for a, b in zip(values, values[1:]))
    assert len(values) == stats["rounds"] + 1 < stats["num_steps"]  # one update per round, not per step


def test_interrupt_between_rounds_leaves_nothing_behind(report):
    scenario = report["scenarios"]["determinism_and_interrupt"]
    assert scenario["interrupted_success"] is False
    assert "execution_interrupted" in scenario["interrupted_events"]
    assert scenario["new_files_after_interrupt"] == []
    assert scenario["rerun_after_interrupt_success"] and scenario["rerun_after_interrupt_same_bits"]


def test_free_sampler_plugs_into_core_sampler_custom(report):
    scenario = report["scenarios"]["core_samplers"]
    for name in ("SamplerCustom_strict", "SamplerCustom_off", "KSampler_euler"):
        _ok(scenario[name])
        _check_images(scenario[name], "FREEDecode", 32, batch=3, std_floor=IMAGE_STD_FLOOR)
    for name in ("SamplerCustom_strict", "SamplerCustom_off"):
        assert scenario[name]["progress"][-1] == [30, 30]
    (strict,), (plain,) = scenario["SamplerCustom_strict"]["sampler_stats"], scenario["SamplerCustom_off"]["sampler_stats"]
    assert strict["sampler"] == "free-euler-ancestral-strict" and strict["num_steps"] == 30 and strict["batch_size"] == 3
    assert plain["rounds"] == 30 and strict["rounds"] <= 30
    assert strict["dit_states"] > strict["rounds"] * 3  # drafted states were verified in the same calls
    if report["embedded_present"]:  # a trained DiT: the frozen drafts are accepted often enough to save calls
        assert strict["rounds"] < 30
    if report["tree"] == "current":
        _ok(scenario["SamplerCustomAdvanced_relax"])
        _check_images(scenario["SamplerCustomAdvanced_relax"], "FREEDecode", 32, batch=3, std_floor=IMAGE_STD_FLOOR)


def test_free_sampler_draws_its_own_noise_from_noise_seed(report):
    # add_noise off: ComfyUI adds no initial noise, so only FREE Sampler's generator (seeded with noise_seed) varies
    scenario = report["scenarios"]["core_samplers"]["FREE_Sampler_own_seed"]
    for result in scenario["runs"]:
        _ok(result)
        _check_images(result, "FREEDecode", 32, batch=3, std_floor=IMAGE_STD_FLOOR)
    assert scenario["same_seed_same_bits"], "FREE Sampler in SamplerCustom: noise_seed 5 twice gave different latents"
    assert scenario["other_seed_mean_abs_diff"] > SEED_DIFF_FLOOR, (
        f"FREE Sampler ignores noise_seed: seeds 5 and 6 differ by {scenario['other_seed_mean_abs_diff']} on average")


def test_train_drafter_node_saves_a_drafter_that_loads_and_samples(report):
    scenario = report["scenarios"]["train_drafter"]
    _ok(scenario["trained"])
    totals = {total for _, total in scenario["train_progress"]}
    assert len(totals) == 1 and scenario["train_progress"][-1][0] == totals.pop()
    _ok(scenario["used"])
    (_, stats), = _outputs(scenario["used"], "FREEKSampler")
    assert stats["sampler"] == "free-strict" and stats["drafter_calls"] > 0
    assert scenario["files"] == ["micro_drafter.safetensors"]  # the interrupted run wrote nothing


def test_interrupting_drafter_training_stops_it(report):
    scenario = report["scenarios"]["train_drafter"]
    assert scenario["interrupted_success"] is False and "execution_interrupted" in scenario["interrupted_events"]


def test_drafter_for_another_dit_is_refused_naming_both(report):
    refused = report["scenarios"]["train_drafter"]["refused"]
    assert refused["success"] is False
    (error,) = refused["errors"]
    assert error["node_type"] == "FREEDrafterLoader"
    assert "dit_micro_random.safetensors" in error["message"] and "dit_micro_other.safetensors" in error["message"]


def test_user_errors_name_the_problem(report):
    cases = report["scenarios"]["errors"]
    (error,) = cases["imagenet_class_on_embedded_model"]["errors"]
    assert error["node_type"] == "FREEClassLabel" and "ImageNet class" in error["message"]
    (error,) = cases["sd_latent_on_pixel_model"]["errors"]
    assert error["node_type"] == "FREEKSampler" and "FREE Empty Latent" in error["message"]


def test_free_sampler_mode_off_is_core_euler_ancestral_and_strict_runs_on_eps_flow_const_and_flux_models(report):
    """Mode off gives core euler_ancestral's latent bit for bit (its rectified-flow form on the CONST models: the FREE
    DiT under ModelSamplingSD3, and a tiny random Flux built from ComfyUI's own classes in the current tree), and strict
    samples on every family with the matching transition (its law is tested in tests/test_exact_law.py)."""
    scenario = report["scenarios"]["sampler_law"]
    families = ["eps"] + (["flow_const", "flux"] if report["tree"] == "current" else [])  # 2024: no CONST sampling
    assert sorted(k for k in scenario if k not in ("timestep_range_strict", "stats_before_sampling")) == sorted(families)
    for family in families:
        for run in ("core", "off", "strict"):
            _ok(scenario[family][run])
        assert scenario[family]["off_equals_core"], f"{family}: FREE Sampler mode off differs from core euler_ancestral"
        (stats,) = scenario[family]["strict_stats"]
        assert stats["sampler"] == "free-euler-ancestral-strict" and stats["num_steps"] == 12
        assert stats["rounds"] <= 12 and stats["dit_states"] >= stats["rounds"] * 2
        # rows through the model: CFG evaluates cond and uncond per state (cfg 2), Flux at cfg 1 the cond only
        assert stats["dit_rows"] == stats["dit_states"] * (1 if family == "flux" else 2)


def test_free_sampler_statistics_reach_free_stats_and_the_canvas_flux_const_included(report):
    """FREE Stats wired to FREE Sampler's stats output (and after SamplerCustom) shows that run's numbers; the current
    tree also shows them on both nodes' canvas text, round by round on the sampler; without the ordering wire FREE
    Stats fails with the fix named instead of showing nothing."""
    scenario = report["scenarios"]["sampler_law"]
    for family in [f for f in ("eps", "flow_const", "flux") if f in scenario]:
        (stats,) = scenario[family]["strict_stats"]
        calls, steps = stats["sequential_dit_calls"], stats["num_steps"]
        (outputs,) = _outputs(scenario[family]["strict"], "FREEStats")
        text = outputs[1]["text"]
        assert outputs[0]["kind"] == "tensor" and f"sequential DiT calls {calls} " in text
        assert f"acceptance           {stats['acceptance_rate']:.3f}" in text
        canvas = scenario[family]["strict_canvas"]
        if report["tree"] == "2024":  # that ComfyUI has no progress text
            assert canvas == {}
            continue
        assert canvas["stats"][-1].startswith(f"{calls} DiT calls for {steps} steps") and canvas["stats"][-1] == canvas["sampler"][-1]
        assert len(canvas["sampler"]) == stats["rounds"] + 1  # one line per round, then the result
        assert canvas["sampler"][-2].startswith(f"free-euler-ancestral-strict: {calls} DiT calls so far")
        wall_clock = canvas["sampler"][-1].splitlines()[-1]  # against one measured plain call, in words
        assert wall_clock.startswith("wall clock: ") and ("x faster than" in wall_clock) != ("x slower than" in wall_clock)
    unwired = scenario["stats_before_sampling"]
    assert not unwired["success"]
    (error,) = unwired["errors"]
    assert error["node_type"] == "FREEStats" and "'after' input" in error["message"]


def test_free_sampler_serves_a_timestep_range_by_verifying_each_side_of_it_apart(report):
    """ComfyUI tests a timestep range on a batch's first sigma: strict verifies the rows on each side of the range's
    boundary in their own call (law: tests/test_exact_law.py), and counts every call."""
    ranged = report["scenarios"]["sampler_law"]["timestep_range_strict"]
    _ok(ranged)
    (stats,) = ranged["strict_stats"]
    assert stats["sampler"] == "free-euler-ancestral-strict"
    # One range boundary: a round makes one call, or two when its rows straddle the boundary (some round does).
    assert stats["rounds"] < stats["sequential_dit_calls"] <= 2 * stats["rounds"]


MODEL_FILES = {  # the files the workflows/ graphs name (README: "Flux and Wan")
    "free_flux": {"flux1-dev.safetensors", "clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors", "ae.safetensors",
                  "flux1-dev_drafter.safetensors"},
    "free_flux_record": {"flux1-dev.safetensors", "clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors", "ae.safetensors"},
    "free_wan": {"wan2.1_t2v_1.3B_fp16.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                 "wan_2.1_vae.safetensors", "wan2.1_t2v_1.3B_drafter.safetensors"},
    "free_wan_record": {"wan2.1_t2v_1.3B_fp16.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                        "wan_2.1_vae.safetensors"},
}


def test_flux_and_wan_graphs_are_valid_in_current_comfyui_but_for_the_model_files_they_name(report):
    """Converted with the current tree's node definitions and validated: every widget list matches its node and
    every link its types; the only errors are the model files a user downloads (named in the README)."""
    if report["tree"] != "current":
        pytest.skip("the 2024 ComfyUI has no Flux or Wan nodes")
    graphs = report["scenarios"]["model_workflows"]
    assert sorted(graphs) == sorted(MODEL_FILES)
    for name, graph in graphs.items():
        missing = set()
        for node in graph["node_errors"].values():
            for kind, input_name, received in node["errors"]:
                assert kind == "value_not_in_list", f"{name}: {node['class_type']}.{input_name}: {kind}"
                missing.add(received)
        assert missing == MODEL_FILES[name], name
        assert "FREESampler" in graph["class_types"] or "FREERecordTrajectories" in graph["class_types"]
        assert "FREETrainTappedDrafter" not in graph["class_types"]  # muted until recordings exist
