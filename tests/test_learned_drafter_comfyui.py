"""Learned drafters for the models ComfyUI runs, through the pack's nodes in real ComfyUI trees.

One runner subprocess per tree runs the learned_drafter scenario (tests/comfyui/learned_drafter_scenario.py):
record with FREE Record Trajectories, train with FREE Train Tapped Drafter, load with FREE Drafter Loader and
sample held-out seeds with FREE Sampler (strict, K 4), frozen against learned; tiny random models built from
ComfyUI's own classes (current tree: Flux, SD3, Wan, Qwen-Image) and the FREE DiT as a plain MODEL (both trees).
"""

import pytest

from comfyui.tiny_comfy_models import FAMILIES
from comfyui_trees import TREE_NAMES, scenario_in_tree

CURRENT_FAMILIES = list(FAMILIES)  # tiny models from ComfyUI's own classes (tests/comfyui/tiny_comfy_models.py)
ALPHA = 0.01


@pytest.fixture(scope="module", params=TREE_NAMES)
def learned(request, tmp_path_factory):
    return scenario_in_tree(request.param, tmp_path_factory, "learned_drafter", timeout=1200)


def _assert_learned_beats_frozen(result: dict, family: str) -> None:
    assert "crashed" not in result, f"{family}:\n{result.get('crashed')}"
    frozen, learned = result["runs"]["frozen"], result["runs"]["learned"]
    assert learned["acceptance"] > frozen["acceptance"] + 0.05, f"{family}: learned {learned} vs frozen {frozen}"
    assert learned["calls"] < learned["steps"], f"{family}: drafting saved no model call"
    assert result["hooks_left"] == 0, f"{family}: hooks left on the final layer"
    adaptive = result["runs"]["adaptive"]  # the nodes' default policy prices the learned drafting pass and samples
    assert adaptive["draft_length"] == "adaptive" and adaptive["calls"] <= adaptive["steps"]
    assert result["ui_text"].startswith("saved ") and f"{result['recordings']} recordings" in result["ui_text"]


def test_free_dit_drafter_is_recorded_trained_loaded_and_sampled_with_through_the_nodes(learned):
    """The FREE DiT (EPS, pixel space) as a plain MODEL: the whole path runs in both trees. Its token drafter does
    not beat frozen drafts at these step counts (docs/DESIGN.md says why); FREE KSampler's own drafter serves it."""
    _, scenario = learned
    result = scenario["free_dit"]
    assert "crashed" not in result, result.get("crashed")
    assert result["ui_text"].startswith("saved ") and f"{result['recordings']} recordings" in result["ui_text"]
    assert result["hooks_left"] == 0
    for run in ("frozen", "learned", "adaptive"):
        assert result["runs"][run]["calls"] <= result["runs"][run]["steps"]


@pytest.mark.parametrize("family", CURRENT_FAMILIES)
def test_comfyui_family_learned_drafter_beats_frozen_drafts_on_held_out_seeds(learned, family):
    tree, scenario = learned
    if tree != "current":
        pytest.skip(f"{family} is not in the {tree} ComfyUI")
    _assert_learned_beats_frozen(scenario[family], family)


@pytest.mark.parametrize("family", CURRENT_FAMILIES)
def test_comfyui_family_strict_with_a_learned_drafter_through_sampler_custom_has_core_euler_ancestral_law(learned, family):
    """1500 samples, 8 steps, K 4: the energy test against core euler_ancestral passes, and fails for the negative
    control that accepts every draft (the same test without ComfyUI: tests/test_tapped_sigma_space.py)."""
    tree, scenario = learned
    if tree != "current":
        pytest.skip(f"{family} is not in the {tree} ComfyUI")
    law = scenario[f"law_{family}"]
    assert "crashed" not in law, law.get("crashed")
    # Drafts were accepted and rejected (both coupling paths ran); with 1500 samples in one batch a round waits for
    # its slowest sample, so the batch saves no call: this test is about the law, not the speed.
    assert 0.1 < law["acceptance"] < 0.95
    assert law["strict_p"] > ALPHA
    assert law["always_accept_p"] < ALPHA


def test_a_flux_drafter_on_an_sd3_model_is_refused_naming_both(learned):
    tree, scenario = learned
    if tree != "current":
        pytest.skip("Flux and SD3 are not in the 2024 ComfyUI")
    message = scenario["mismatch_message"]
    assert message is not None and "was trained for comfy.ldm.flux.model.Flux" in message
    assert "but the model is comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper" in message


def test_caching_or_block_replacing_model_patches_are_refused_naming_them(learned):
    """TeaCache-style patches answer a batch of several steps' states differently from one step's: strict refuses them."""
    tree, scenario = learned
    messages = scenario["patched_model_messages"]
    assert sorted(messages) == (["diffusion_model_wrapper", "function_wrapper"] if tree == "current" else ["function_wrapper"])
    assert "model function wrapper" in messages["function_wrapper"] and "use mode off" in messages["function_wrapper"]
    if tree == "current":
        assert "a diffusion_model wrapper (test_cache)" in messages["diffusion_model_wrapper"]
