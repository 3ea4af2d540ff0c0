"""The generic top-block tap (nodes/tap.py) in real ComfyUI trees: tap identity per model family.

One runner subprocess per tree runs the top_block_tap scenario (tests/comfyui/tap_scenario.py): tiny random
models built from ComfyUI's own classes (current tree) and the FREE DiT as a plain MODEL (both trees), probed
inside comfy.sample.sample_custom at CFG 2 on a batch of 2.
"""

import pytest

from comfyui.tiny_comfy_models import FAMILIES
from comfyui_trees import TREE_NAMES, scenario_in_tree

CURRENT_FAMILIES = list(FAMILIES)  # tiny models from ComfyUI's own classes (tests/comfyui/tiny_comfy_models.py)


@pytest.fixture(scope="module", params=TREE_NAMES)
def tapped(request, tmp_path_factory):
    return scenario_in_tree(request.param, tmp_path_factory, "top_block_tap", timeout=600)


def _families(tree: str) -> list[str]:
    return ["free_dit"] + (CURRENT_FAMILIES if tree == "current" else [])


def _assert_tap_identity(result: dict, family: str) -> None:
    assert "crashed" not in result, f"{family}:\n{result.get('crashed')}"
    assert result["batch"] == 2 and result["calls"] >= 1
    assert sum(shape[0] for shape in result["feature_shapes"]) == 2 * result["batch"]  # cond and uncond rows (CFG 2)
    assert all(len(shape) == 3 for shape in result["feature_shapes"])  # (B, T, D)
    assert result["tap_equals_model"], f"{family}: the tapped evaluation changed the model's output"
    assert result["replay_equals_model"], f"{family}: tail replay differs from the model by {result['replay_max_abs_diff']}"
    assert result["block_count"] > 0 and result["replay_block_calls"] == 0, f"{family}: the replay ran blocks"
    assert result["moved_features_move_output"], f"{family}: the replay ignores the features it is given"
    assert result["left_behind_after_run"] == [], f"{family}: {result['left_behind_after_run']} left after a run"
    assert result["left_behind_after_interrupt"] == {"features": [], "replay": []}, (
        f"{family}: {result['left_behind_after_interrupt']} left after an interrupt")


def test_free_dit_tail_replay_is_the_model_output_bit_for_bit_and_leaves_nothing_behind(tapped):
    _, scenario = tapped
    _assert_tap_identity(scenario["free_dit"], "free_dit")


@pytest.mark.parametrize("family", CURRENT_FAMILIES)
def test_comfyui_family_tail_replay_is_the_model_output_bit_for_bit_and_leaves_nothing_behind(tapped, family):
    tree, scenario = tapped
    if tree != "current":
        pytest.skip(f"{family} is not in the {tree} ComfyUI")
    _assert_tap_identity(scenario[family], family)


def test_an_unsupported_model_is_refused_naming_it_and_the_families_the_tap_knows(tapped):
    _, scenario = tapped
    message = scenario["unsupported_message"]
    assert message.startswith("FREE cannot tap the top block of torch.nn.modules.linear.Linear")
    assert "Flux" in message and "Wan" in message and "frozen drafts" in message
    assert sorted(f for f in scenario if f not in ("unsupported_message", "lumina_alignment")) == sorted(_families(tree=tapped[0]))


def test_lumina_drafted_state_change_lands_on_the_image_tokens_the_model_itself_reads(tapped):
    """Lumina 2 puts each row's caption before its image tokens. With a cond caption of 3 tokens and an uncond caption
    of 5 (two calls), each row's token offset + j must be where the model's output reads latent patch j (moving that
    token's features moves exactly that patch), and where the drafter puts patch j's state change. (Rows of one call
    with captions of different lengths: tests/test_tapped_model.py and test_tapped_sigma_space.py, on toy models.)"""
    tree, scenario = tapped
    if tree != "current":
        pytest.skip(f"Lumina 2 is not in the {tree} ComfyUI")
    result = scenario["lumina_alignment"]
    assert "crashed" not in result, result.get("crashed")
    offsets, patches = result["offsets_in_features"], result["patches"]
    assert sorted(offsets) == [[3, 3], [5, 5]]  # each call's rows start their image tokens after their caption
    assert result["image_offsets"] == offsets  # the drafting replay sees what the tap saw
    for reads, row_offsets in zip(result["model_reads"], offsets):
        for read, offset in zip(reads, row_offsets):
            assert read == [-1] * offset + list(range(patches)) + [-1] * (len(read) - offset - patches), (offset, read)
    assert result["drafter_places"] == result["model_reads"]
