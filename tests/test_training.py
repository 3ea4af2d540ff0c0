"""Training pipelines: deterministic data, short runs lower the loss, torchrun (DDP over gloo) works."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from free_core.models.checkpoints import load_dit, save_dit
from free_core.training.data import CLASS_NAMES, make_batch, make_images
from free_core.models.free_drafter import load_drafter
from free_core.engine.diffusion import GaussianDiffusion
from free_core.training.train_dit import DiTTrainConfig, min_snr_weight, train_dit
from free_core.training.train_drafter import DrafterTrainConfig, train_drafter

REPO = Path(__file__).resolve().parents[1]


def test_procedural_dataset_is_deterministic_and_classes_differ():
    first, labels = make_batch(64, seed=11)
    second, labels_again = make_batch(64, seed=11)
    assert torch.equal(first, second) and torch.equal(labels, labels_again)
    assert not torch.equal(first, make_batch(64, seed=12)[0])
    assert first.shape == (64, 3, 32, 32) and first.min() >= -1 and first.max() <= 1
    per_class = make_images(torch.arange(len(CLASS_NAMES)), seed=0)
    distances = torch.cdist(per_class.flatten(1), per_class.flatten(1))
    assert (distances + torch.eye(len(CLASS_NAMES)) * 1e9).min() > 1.0


def test_class_weights_set_the_training_frequency_of_each_class():
    weights = [3.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    images, labels = make_batch(6000, seed=5, class_weights=weights)
    counts = torch.bincount(labels, minlength=len(CLASS_NAMES)).double()
    assert counts[2] == 0
    expected = 6000 * torch.tensor(weights, dtype=torch.float64) / sum(weights)
    assert ((counts - expected).abs() <= 4 * expected.sqrt() + 1e-9).all()  # binomial counts within 4 sd
    again, labels_again = make_batch(6000, seed=5, class_weights=weights)
    assert torch.equal(images, again) and torch.equal(labels, labels_again)
    for bad, problem in (([1.0, 2.0], "one value per class"), ([0.0] * 10, "not all 0"), ([-1.0] + [1.0] * 9, ">= 0")):
        with pytest.raises(ValueError, match=problem):
            make_batch(4, class_weights=bad)


def test_min_snr_weight_caps_only_the_low_noise_steps():
    diffusion = GaussianDiffusion.training()
    i = torch.arange(diffusion.num_steps)
    acp = diffusion.tables["alphas_cumprod"].float()
    snr = acp / (1 - acp)
    weight = min_snr_weight(diffusion, i, gamma=5.0)
    high_snr = snr > 5.0
    assert high_snr.any() and (~high_snr).any()
    assert torch.allclose(weight[~high_snr], torch.ones(int((~high_snr).sum())))
    assert torch.allclose(weight[high_snr], 5.0 / snr[high_snr])
    assert weight[0] < 0.01  # the first step's SNR is in the thousands
    assert torch.equal(min_snr_weight(diffusion, i, gamma=None), torch.ones(diffusion.num_steps))
    with pytest.raises(ValueError, match="min_snr_gamma"):
        min_snr_weight(diffusion, i, gamma=0.0)


def _mean(values):
    return sum(values) / len(values)


def test_short_dit_training_lowers_the_loss(tmp_path):
    config = DiTTrainConfig(out=str(tmp_path / "dit"), model="DiT-Micro/8", steps=80, batch_size=32, lr=2e-3, warmup=10,
                            checkpoint_every=1000, device="cpu")
    path, losses = train_dit(config)
    assert _mean(losses[-15:]) < 0.8 * _mean(losses[:15])
    assert load_dit(path).config.hidden_size == 64


def _micro_dit_file(tmp_path) -> Path:
    torch.manual_seed(0)
    from free_core.models.dit import DiT, dit_config

    model = DiT(dit_config("DiT-Micro/8"))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return save_dit(tmp_path / "micro.safetensors", model)


def test_dit_training_can_start_from_existing_weights_and_refuses_another_config(tmp_path):
    initial_path = _micro_dit_file(tmp_path)
    initial = load_dit(initial_path).state_dict()
    config = DiTTrainConfig(out=str(tmp_path / "finetune"), model="DiT-Micro/8", steps=0, device="cpu",
                            init_from=str(initial_path))
    path, _ = train_dit(config)
    saved = load_dit(path).state_dict()
    assert all(torch.equal(saved[name], initial[name]) for name in initial)  # EMA starts at the given weights
    config.steps, config.batch_size, config.warmup = 2, 4, 1
    path, losses = train_dit(config)
    assert len(losses) == 2 and not torch.equal(load_dit(path).state_dict()["final_layer.linear.weight"],
                                                initial["final_layer.linear.weight"])
    mismatched = DiTTrainConfig(out=str(tmp_path / "other"), model="DiT-Micro/8", hidden_size=32, num_heads=2, steps=1,
                                device="cpu", init_from=str(initial_path))
    with pytest.raises(ValueError, match="--init-from .* pass the same --config"):
        train_dit(mismatched)
    assert not (tmp_path / "other").exists()


def test_short_drafter_training_lowers_the_loss_and_resumes(tmp_path):
    dit_path = _micro_dit_file(tmp_path)
    config = DrafterTrainConfig(dit=str(dit_path), out=str(tmp_path / "drafter"), sampling_steps=20, trajectories=6,
                                cfg_scales=(1.0, 3.0), train_steps=60, batch_size=16, unroll=3, lr=3e-3, device="cpu",
                                checkpoint_every=30)
    path, losses = train_drafter(config)
    assert _mean(losses[-10:]) < 0.9 * _mean(losses[:10])
    dit = load_dit(dit_path)
    load_drafter(path, dit)  # records and matches the DiT it was trained for
    config.train_steps = 70
    _, resumed = train_drafter(config)
    assert len(resumed) == 10  # resumed from the step-60 checkpoint, not from scratch


def test_drafter_trains_on_several_sampling_step_counts_at_once(tmp_path):
    dit_path = _micro_dit_file(tmp_path)
    config = DrafterTrainConfig(dit=str(dit_path), out=str(tmp_path / "mixed"), sampling_steps=(6, 10), trajectories=2,
                                cfg_scales=(1.0, 3.0), train_steps=4, batch_size=4, unroll=2, device="cpu")
    path, losses = train_drafter(config)
    assert len(losses) == 4 and all(l == l for l in losses)
    collected = sorted(p.name.split("_steps")[1].split("_")[0] for p in (tmp_path / "mixed").glob("trajectories_*.pt"))
    assert collected == ["10", "10", "6", "6"]  # one set per (step count, CFG scale)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["sampling_steps"] == "6,10"
    assert DrafterTrainConfig(sampling_steps=50).sampling_steps == (50,)
    for bad in ((), (1,), (50, 2.5), True):
        with pytest.raises(ValueError, match="sampling_steps"):
            DrafterTrainConfig(sampling_steps=bad)


def test_drafter_training_runs_under_torchrun_with_two_processes(tmp_path):
    dit_path = _micro_dit_file(tmp_path)
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               "-m", "free_core", "train-drafter", "--dit", str(dit_path), "--out", str(out), "--sampling-steps", "10",
               "--trajectories", "4", "--cfg-scales", "1", "--steps", "6", "--batch-size", "4", "--unroll", "2",
               "--device", "cpu"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "drafter.safetensors").is_file()
    assert len(list(out.glob("trajectories_*_rank*.pt"))) == 2  # each rank collected its own share
