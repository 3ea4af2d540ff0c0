"""FREE with a learned token drafter on a tapped model (engine/tapped_sigma_space.py), on a tiny flow DiT.

Strict mode must keep exactly the law of plain (rectified-flow) Euler-ancestral whatever the drafter proposes,
with guidance in the batch (two feature slots per state); recording is the plain sampler itself; a drafter
trained on recorded trajectories beats frozen drafts on held-out seeds; a drafter for another model is refused.
"""

import json

import pytest
import torch

from exact_law import accept_every_draft
from free_core.engine.k_diffusion_sampler import AncestralStep, sample_euler_ancestral, sample_free_euler_ancestral
from free_core.engine.tapped_model import TopBlockCall
from free_core.engine.tapped_sigma_space import call_patch_index, modulation_vector
from free_core.evaluation.two_sample import energy_test
from free_core.models.token_drafter import (TappedModelIdentity, image_patch_index, latent_patches, load_token_drafter,
                                            save_token_drafter, token_drafter_for)
from free_core.training.train_tapped_drafter import (TappedDrafterTrainConfig, load_recordings, record_trajectories,
                                                     recorded_token_layout, save_recording, train_tapped_drafter)
from toy_models import ToyFlowDiT, flow_sigmas, toy_tap

FLOW = AncestralStep(flow=True)
ALPHA = 0.01


@pytest.fixture(scope="module")
def toy():
    model = ToyFlowDiT()
    denoise, tapped, identity = toy_tap(model)
    return model, denoise, tapped, identity


def _perturbed_drafter(identity, seed: int = 0, scale: float = 0.05):
    """A drafter whose drafts move away from 'copy the last features': some accepted, some not."""
    with torch.random.fork_rng():  # nn.Linear initialises from the global generator
        torch.manual_seed(seed)
        drafter = token_drafter_for(identity, modulation_width=identity.width, channels=2)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in drafter.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return drafter


def _noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(seed))


def _free(denoise, tapped, drafter, x, seed, **options):
    sink = []
    out = sample_free_euler_ancestral(denoise, x, flow_sigmas(12), {"seed": seed}, step=FLOW, stats_sink=sink,
                                      drafter=drafter, tapped=tapped, **options)
    return out, sink[0]


def test_strict_with_a_learned_drafter_has_the_plain_flow_euler_ancestral_law(toy):
    _, denoise, tapped, identity = toy
    baseline = sample_euler_ancestral(denoise, _noise(2000, 1), flow_sigmas(12), {"seed": 0}, step=FLOW)
    free, stats = _free(denoise, tapped, _perturbed_drafter(identity), _noise(2000, 2), seed=1, draft_length=4)
    assert 0.2 < stats.acceptance_rate < 0.9, "the drafter must be imperfect so that both coupling paths run"
    assert stats.mean_advance > 1.3
    _, p_value = energy_test(baseline, free)
    assert p_value > ALPHA


def test_energy_test_rejects_always_accepting_the_learned_drafts(toy, monkeypatch):
    """Negative control: the same drafts accepted without the coupling have another law, and the test sees it."""
    _, denoise, tapped, identity = toy
    baseline = sample_euler_ancestral(denoise, _noise(2000, 1), flow_sigmas(12), {"seed": 0}, step=FLOW)
    accept_every_draft(monkeypatch)
    wrong, _ = _free(denoise, tapped, _perturbed_drafter(identity), _noise(2000, 2), seed=1, draft_length=4)
    _, p_value = energy_test(baseline, wrong)
    assert p_value < ALPHA


def test_learned_drafts_depend_on_the_drafter_and_runs_are_reproducible(toy):
    _, denoise, tapped, identity = toy
    x = _noise(8, 3)
    first, stats = _free(denoise, tapped, _perturbed_drafter(identity), x, seed=5, draft_length=3)
    again, _ = _free(denoise, tapped, _perturbed_drafter(identity), x, seed=5, draft_length=3)
    other, other_stats = _free(denoise, tapped, _perturbed_drafter(identity, seed=1, scale=0.3), x, seed=5, draft_length=3)
    assert torch.equal(first, again)
    assert stats.accepted_per_step != other_stats.accepted_per_step  # the drafter decides what is accepted
    assert stats.sequential_dit_calls < 12  # drafting saved model calls
    assert stats.drafter == "learned" and "(learned drafts)" in stats.canvas_text().splitlines()[1]
    assert "learned drafts" in stats.summary() and stats.to_dict()["drafter"] == "learned"


def test_recording_is_the_plain_sampler_and_keeps_every_branch_and_step(toy, tmp_path):
    _, denoise, tapped, identity = toy
    x = _noise(3, 4)
    samples, recording = record_trajectories(tapped, identity, x, flow_sigmas(6), {"seed": 2}, FLOW, max_tokens=3)
    assert torch.equal(samples, sample_euler_ancestral(denoise, x, flow_sigmas(6), {"seed": 2}, step=FLOW))
    assert recording["features"].shape == (6, 3, 2, 3, 16)  # steps, rows, guidance slots, kept tokens, width
    assert recording["modulation"].shape == (6, 3, 2, 16)
    assert recording["state_patches"][0].abs().max() == 0 and recording["state_patches"][1].abs().max() > 0
    save_recording(tmp_path / "a.safetensors", recording, identity)
    loaded, loaded_identity = load_recordings(tmp_path)
    assert loaded_identity == identity and torch.equal(loaded[0]["features"], recording["features"])
    other = TappedModelIdentity("other.Model", "0" * 16, 16, (2, 2))
    save_recording(tmp_path / "b.safetensors", recording, other)
    with pytest.raises(ValueError, match="2 different models.*other.Model"):
        load_recordings(tmp_path)


def test_a_drafter_trained_on_recordings_beats_frozen_drafts_on_held_out_seeds(toy, tmp_path):
    _, denoise, tapped, identity = toy
    recordings = [record_trajectories(tapped, identity, _noise(16, seed), flow_sigmas(12), {"seed": seed}, FLOW)[1]
                  for seed in range(6)]
    drafter, losses = train_tapped_drafter(recordings, identity, TappedDrafterTrainConfig(train_steps=250, batch_size=32))
    assert sum(losses[-25:]) / 25 < 0.8 * sum(losses[:25]) / 25
    path = save_token_drafter(tmp_path / "toy.safetensors", drafter, losses, len(recordings), (12,))
    drafter = load_token_drafter(path, identity)
    held_out = _noise(64, 100)
    _, learned = _free(denoise, tapped, drafter, held_out, seed=7, draft_length=4)
    frozen_stats = []
    sample_free_euler_ancestral(denoise, held_out, flow_sigmas(12), {"seed": 7}, step=FLOW, stats_sink=frozen_stats,
                                draft_length=4)
    assert learned.acceptance_rate > frozen_stats[0].acceptance_rate + 0.05
    assert learned.sequential_dit_calls <= frozen_stats[0].sequential_dit_calls


def test_a_drafter_for_another_model_is_refused_naming_both(toy, tmp_path):
    _, _, _, identity = toy
    path = save_token_drafter(tmp_path / "d.safetensors", token_drafter_for(identity, 16, 2), [], 0, (12,))
    other_weights = TappedModelIdentity(identity.model_class, "f" * 16, identity.width, identity.patch_size)
    with pytest.raises(ValueError, match=f"trained for tests.ToyFlowDiT .*{identity.fingerprint}.*but the model is .*ffff"):
        load_token_drafter(path, other_weights)
    wider = TappedModelIdentity("comfy.ldm.flux.model.Flux", identity.fingerprint, 3072, (2, 2))
    with pytest.raises(ValueError, match="but the model is comfy.ldm.flux.model.Flux \\(width 3072"):
        load_token_drafter(path, wider)


def test_per_token_modulation_is_refused_and_reference_tokens_get_no_state_change():
    features = torch.zeros(2, 6, 8)
    with pytest.raises(RuntimeError, match="each token with its own timestep"):
        modulation_vector(TopBlockCall(features, (torch.zeros(2, 6, 8),)))
    assert modulation_vector(TopBlockCall(features, (torch.zeros(2, 1, 8),))).shape == (2, 8)
    patches = latent_patches(torch.ones(1, 3, 5, 4), (2, 2))  # padded to 6 x 4: 3 x 2 patches
    assert patches.shape == (1, 6, 12) and patches[0, -1].sum() == 6  # the last row of patches is half padding
    video = latent_patches(torch.ones(1, 3, 2, 4, 4), (1, 2, 2))
    assert video.shape == (1, 8, 12)


def test_train_tapped_drafter_command_stops_leaves_a_resume_file_and_carries_on(toy, tmp_path):
    from free_core.frontdoor.cli import main

    _, _, tapped, identity = toy
    for seed in range(2):
        recording = record_trajectories(tapped, identity, _noise(4, seed), flow_sigmas(8), {"seed": seed}, FLOW)[1]
        save_recording(tmp_path / "recordings" / f"{seed}.safetensors", recording, identity)
    out = tmp_path / "drafter.safetensors"
    command = ["train-tapped-drafter", "--recordings", str(tmp_path / "recordings"), "--out", str(out), "--steps", "30",
               "--batch-size", "4", "--device", "cpu"]
    assert main(command + ["--max-minutes", "0"]) == 0  # stops after its first step
    resume = tmp_path / "drafter.safetensors.resume"
    assert resume.is_file() and not out.exists()
    assert len(load_token_drafter(resume, identity).losses) == 1
    assert main(command) == 0
    drafter = load_token_drafter(out, identity)
    assert len(drafter.losses) == 30 and not resume.exists()


def test_rows_verified_in_groups_keep_their_features_in_row_order(toy):
    """A timestep range makes SigmaSpace verify each side of its boundary in its own call; the features by state
    must come back in verification row order, or histories would be swapped between samples."""
    from free_core.engine.tapped_sigma_space import TappedSigmaSpace, slots_by_state

    _, denoise, tapped, identity = toy
    sigmas = flow_sigmas(6)
    states, progress = _noise(6, 8), torch.tensor([0, 3, 1, 4, 0, 5])
    groups = lambda sigma_rows: (sigma_rows < sigmas[2]).long()  # noqa: E731
    space = TappedSigmaSpace(denoise, tapped, _perturbed_drafter(identity), sigmas, {}, FLOW, states, row_groups=groups)
    space.begin_round(torch.arange(6))
    space.verify(states, progress, torch.arange(6))
    assert space.verify_calls == 2
    _, features = tapped.features(states, sigmas[progress].float())
    assert torch.allclose(space.verified_features, slots_by_state(features, 6), atol=1e-5)
    assert not torch.allclose(space.verified_features, space.verified_features.flip(0), atol=1e-3)


def test_train_tapped_drafter_under_torchrun_averages_two_processes(toy, tmp_path):
    """Two gloo processes: each draws its own minibatches and DDP averages their gradients, so the drafter differs from
    the one process's with the same seed; rank 0 alone writes it."""
    import os
    import subprocess
    import sys

    from test_sample_ddp import REPO, free_port

    _, _, tapped, identity = toy
    recording = record_trajectories(tapped, identity, _noise(4, 0), flow_sigmas(8), {"seed": 0}, FLOW)[1]
    save_recording(tmp_path / "recordings" / "0.safetensors", recording, identity)
    arguments = ["train-tapped-drafter", "--recordings", str(tmp_path / "recordings"), "--steps", "4", "--batch-size",
                 "2", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), "-m", "free_core", *arguments, "--out", str(tmp_path / "two.safetensors")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "free_core", *arguments, "--out", str(tmp_path / "one.safetensors")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.stdout.count("saved ") == 1  # rank 0 only
    both, alone = (load_token_drafter(tmp_path / f"{name}.safetensors", identity) for name in ("two", "one"))
    assert len(both.losses) == len(alone.losses) == 4
    assert not torch.equal(both.fc1.weight, alone.fc1.weight)


def test_adaptive_draft_length_times_a_learned_drafting_pass_and_samples_reproducibly(toy, tmp_path, monkeypatch):
    """The nodes' default policy prices a learned drafting pass (a tail replay with the drafter in it) once, on disk,
    and then samples the same bits in a second run."""
    from free_core.engine.draft_policy import AdaptiveDraftLength

    monkeypatch.setenv("FREE_COST_CACHE", str(tmp_path / "costs"))
    _, denoise, tapped, identity = toy
    drafter, x = _perturbed_drafter(identity), _noise(8, 9)
    runs = [_free(denoise, tapped, drafter, x, seed=3, draft_length=AdaptiveDraftLength(max_length=4), cost_key="toy")
            for _ in range(2)]
    (first, stats), (second, _) = runs
    assert torch.equal(first, second) and stats.draft_length == "adaptive"
    keys = [json.loads(path.read_text())["key"] for path in (tmp_path / "costs").iterdir()]
    assert any("sigma drafting pass" in key and "TokenDrafterConfig" in key for key in keys)  # the learned pass, priced
    # where verification is (said to be) free, adaptive drafts with the learned drafter, and strict stays exact in law
    # (the energy tests above); here: it drafts and saves calls
    flat = AdaptiveDraftLength(max_length=4, cost_curve={rows: 1.0 for rows in range(1, 41)})
    _, drafting = _free(denoise, tapped, drafter, x, seed=3, draft_length=flat)
    assert max(drafting.draft_lengths) > 0 and drafting.sequential_dit_calls < 12


@torch.no_grad()
def test_each_rows_state_change_lands_on_its_image_tokens_from_its_offset_on(toy):
    """Lumina 2 puts captions of per-row lengths first: patch j's state change must reach token offset + j of that row
    and no other token; without offsets, token j."""
    _, _, _, identity = toy
    drafter = _perturbed_drafter(identity)
    rows, tokens, patches = 2, 9, 4
    history = torch.randn(rows, 2, tokens, identity.width, generator=torch.Generator().manual_seed(0))
    modulation = torch.randn(rows, identity.width, generator=torch.Generator().manual_seed(1))
    state = torch.zeros(rows, patches, drafter.config.patch_inputs)

    def landed(patch_index):
        still = drafter(history, state, modulation, patch_index)
        places = []
        for j in range(patches):
            moved = state.clone()
            moved[:, j] = 1.0
            places.append((drafter(history, moved, modulation, patch_index) != still).any(-1).nonzero().tolist())
        return places

    offsets = image_patch_index(torch.tensor([3, 5]), torch.arange(tokens), patches)
    assert landed(offsets) == [[[0, 3 + j], [1, 5 + j]] for j in range(patches)]
    assert landed(None) == [[[0, j], [1, j]] for j in range(patches)]
    assert offsets[0].tolist() == [-1, -1, -1, 0, 1, 2, 3, -1, -1]  # caption and padding tokens: no state change
    call = TopBlockCall(history[:, -1], (modulation,), torch.tensor([3, 6]))
    with pytest.raises(RuntimeError, match=r"offsets \[3, 6\] put 4 latent patches outside the 9 tokens"):
        call_patch_index(call, patches)


def test_an_older_recording_without_offsets_trains_on_the_same_state_change_per_kept_token(toy):
    """Recordings now keep every state patch and each slot's image-token offset; older files kept the patches of the
    kept tokens below the latent's patch count. Both give each kept token the same state patch (offset 0)."""
    _, _, tapped, identity = toy
    _, recording = record_trajectories(tapped, identity, _noise(3, 4), flow_sigmas(6), {"seed": 2}, FLOW, max_tokens=3)
    assert recording["image_offsets"].shape == (6, 3, 2) and recording["image_offsets"].abs().max() == 0
    tokens = recording["tokens"]
    older = {key: value for key, value in recording.items() if key != "image_offsets"}
    older["state_patches"] = recording["state_patches"][:, :, tokens[tokens < recording["state_patches"].shape[2]]]

    def patch_per_token(rec):
        positions, offsets = recorded_token_layout(rec)
        index = image_patch_index(offsets[2, 1, 0:1], positions, rec["state_patches"].shape[2])[0]
        return [rec["state_patches"][2, 1, i].tolist() if i >= 0 else None for i in index.tolist()]

    assert patch_per_token(older) == patch_per_token(recording)
    assert any(patch is not None for patch in patch_per_token(recording))
    train_tapped_drafter([older], identity, TappedDrafterTrainConfig(train_steps=2, batch_size=2, unroll=2))
