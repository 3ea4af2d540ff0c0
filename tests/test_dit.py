"""The DiT loads the official checkpoints' layout and its forward splits at the top block."""

import pickle
import re
import traceback
from pathlib import Path

import pytest
import torch

from free_core.models.checkpoints import load_dit, save_dit
from free_core.models.dit import DiT, config_from_state_dict, dit_config


def _published_dit_xl2_table(latent_size: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of facebookresearch/DiT DiT-XL/2 (depth 28, width 1152, 16 heads, patch 2,
    4 latent channels, learned sigma, 1000 classes + null), written out by hand from the paper's
    architecture, not from our code."""
    width, mlp, tokens = 1152, 4608, (latent_size // 2) ** 2
    table = {
        "pos_embed": (1, tokens, width),
        "x_embedder.proj.weight": (width, 4, 2, 2),
        "x_embedder.proj.bias": (width,),
        "t_embedder.mlp.0.weight": (width, 256),
        "t_embedder.mlp.0.bias": (width,),
        "t_embedder.mlp.2.weight": (width, width),
        "t_embedder.mlp.2.bias": (width,),
        "y_embedder.embedding_table.weight": (1001, width),
        "final_layer.linear.weight": (2 * 2 * 8, width),
        "final_layer.linear.bias": (2 * 2 * 8,),
        "final_layer.adaLN_modulation.1.weight": (2 * width, width),
        "final_layer.adaLN_modulation.1.bias": (2 * width,),
    }
    for i in range(28):
        table |= {
            f"blocks.{i}.attn.qkv.weight": (3 * width, width),
            f"blocks.{i}.attn.qkv.bias": (3 * width,),
            f"blocks.{i}.attn.proj.weight": (width, width),
            f"blocks.{i}.attn.proj.bias": (width,),
            f"blocks.{i}.mlp.fc1.weight": (mlp, width),
            f"blocks.{i}.mlp.fc1.bias": (mlp,),
            f"blocks.{i}.mlp.fc2.weight": (width, mlp),
            f"blocks.{i}.mlp.fc2.bias": (width,),
            f"blocks.{i}.adaLN_modulation.1.weight": (6 * width, width),
            f"blocks.{i}.adaLN_modulation.1.bias": (6 * width,),
        }
    return table


@pytest.mark.parametrize("latent_size, total", [(32, 675_129_632), (64, 676_014_368)])
def test_dit_xl2_state_dict_matches_the_published_layout(latent_size, total):
    with torch.device("meta"):
        model = DiT(dit_config("DiT-XL/2", input_size=latent_size))
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert ours == _published_dit_xl2_table(latent_size)
    assert sum(p.numel() for p in model.parameters()) == total  # DiT-XL/2-256 has 675,129,632 parameters


@pytest.mark.parametrize("name", ["DiT-XL/2", "DiT-L/4", "DiT-B/8", "DiT-S/2"])
def test_config_is_recovered_from_checkpoint_shapes(name):
    with torch.device("meta"):
        model = DiT(dit_config(name))
    assert config_from_state_dict(model.state_dict()) == model.config


def _small_model(seed=0, learn_sigma=True):
    torch.manual_seed(seed)
    model = DiT(dit_config("DiT-Micro/8", learn_sigma=learn_sigma)).eval()
    for p in model.parameters():  # adaLN-Zero init makes blocks identities: randomise everything
        torch.nn.init.normal_(p, std=0.05)
    return model


def test_forward_is_head_of_features():
    model = _small_model()
    x, t, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 500, 999]), torch.tensor([1, 2, 10])
    h = model.features(x, t, y)
    assert h.shape == (3, model.num_tokens, model.hidden_size)
    assert torch.equal(model(x, t, y), model.head(h, t, y))
    assert model(x, t, y).shape == (3, 6, 32, 32)


def test_mixed_timestep_batch_equals_separate_calls():
    model = _small_model()
    x, t, y = torch.randn(4, 3, 32, 32), torch.tensor([3, 250, 600, 999]), torch.tensor([0, 5, 9, 10])
    batched = model(x, t, y)
    separate = torch.cat([model(x[k : k + 1], t[k : k + 1], y[k : k + 1]) for k in range(4)])
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batched[0], model(x[:1], t[3:4], y[:1])[0])  # the timestep matters per row


def test_safetensors_and_weights_only_pt_round_trip(tmp_path):
    model = _small_model(seed=1)
    loaded = load_dit(save_dit(tmp_path / "m.safetensors", model))
    x, t, y = torch.randn(2, 3, 32, 32), torch.tensor([10, 900]), torch.tensor([1, 2])
    torch.testing.assert_close(loaded(x, t, y), model(x, t, y))
    torch.save({"ema": model.state_dict()}, tmp_path / "official_style.pt")
    from_pt = load_dit(tmp_path / "official_style.pt")
    assert from_pt.config.hidden_size == model.config.hidden_size and from_pt.config.depth == model.config.depth
    assert loaded.weights_fingerprint == from_pt.weights_fingerprint


class CreatesFileWhenUnpickled:
    """A pickle payload: unpickling it calls open(path, "w"), which creates `path`. Loading with
    weights_only=True refuses the global before calling it; weights_only=False would create the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _payload_file(path, sentinel):
    torch.save({"model": {"w": torch.zeros(2)}, "payload": CreatesFileWhenUnpickled(sentinel)}, path)
    assert not sentinel.exists()
    return path


def _refused_without_running(sentinel, load, match):
    """`load()` raises an error matching `match`, and the payload's file was never created."""
    with pytest.raises(Exception) as info:
        load()
    assert not sentinel.exists(), f"the pickle payload ran (created {sentinel.name}): the file was unpickled unsafely"
    assert re.search(match, str(info.value), re.DOTALL), f"{type(info.value).__name__}: {info.value}"
    return info.value


def _raised_at(error, source):
    """Whether `error` came through a free_core line containing `source` (which torch.load refused)."""
    return any(source in (frame.line or "") for frame in traceback.extract_tb(error.__traceback__)
               if "free_core" in frame.filename)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin"])
def test_pickled_code_is_refused_before_it_runs_by_load_dit(tmp_path, suffix):
    sentinel = tmp_path / "payload_ran"
    path = _payload_file(tmp_path / f"evil{suffix}", sentinel)
    error = _refused_without_running(sentinel, lambda: load_dit(path), r"pickled Python objects.*never unpickles.*\.safetensors")
    assert isinstance(error, ValueError)
    # A plain nested state dict (no payload) in the same layout still loads through the same path.
    state = _small_model().state_dict()
    torch.save({"model": state}, tmp_path / f"plain{suffix}")
    loaded = load_dit(tmp_path / f"plain{suffix}").state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_pickle_renamed_to_safetensors_is_refused_before_it_runs(tmp_path):
    from free_core.models.free_drafter import load_drafter

    sentinel = tmp_path / "payload_ran"
    path = _payload_file(tmp_path / "evil.safetensors", sentinel)
    _refused_without_running(sentinel, lambda: load_dit(path), r"header")  # safetensors' own parse error
    _refused_without_running(sentinel, lambda: load_drafter(path, _small_model()), r"header")


def test_the_payload_is_live(tmp_path):
    """The control: an unsafe torch.load of the same payload file does create the file."""
    sentinel = tmp_path / "payload_ran"
    obj = torch.load(_payload_file(tmp_path / "evil.pt", sentinel), weights_only=False)
    obj["payload"].close()
    assert sentinel.exists()


def test_drafter_loader_refuses_pt_files_before_reading_them(tmp_path):
    from free_core.models.free_drafter import load_drafter

    sentinel = tmp_path / "payload_ran"
    path = _payload_file(tmp_path / "drafter.pt", sentinel)
    error = _refused_without_running(sentinel, lambda: load_drafter(path, _small_model()), r"stored as \.safetensors")
    assert isinstance(error, ValueError)


def test_training_resume_files_are_read_with_weights_only(tmp_path):
    """The resumable state and trajectory caches in a run directory are .pt files too: a planted payload never runs.
    (These raise torch's own UnpicklingError naming weights_only, not the loaders' ValueError.)"""
    from free_core.training.train_dit import DiTTrainConfig, train_dit
    from free_core.training.train_drafter import DrafterTrainConfig, train_drafter

    sentinel = tmp_path / "payload_ran"
    dit_run = tmp_path / "dit_run"
    dit_run.mkdir()
    _payload_file(dit_run / "train_state.pt", sentinel)
    error = _refused_without_running(sentinel, lambda: train_dit(DiTTrainConfig(out=str(dit_run), steps=1, device="cpu")),
                                     "weights_only")
    assert isinstance(error, pickle.UnpicklingError) and _raised_at(error, "torch.load(resume_path")

    dit = _small_model()
    cfg = DrafterTrainConfig(out=str(tmp_path / "drafter_run"), sampling_steps=(2,), trajectories=1, cfg_scales=(1.0,),
                             train_steps=1, device="cpu")
    Path(cfg.out).mkdir()
    cache = Path(cfg.out) / "trajectories_unknown_cfg1_steps2_n1_rank0_seed0.pt"  # the name _collect_or_load reads
    _payload_file(cache, sentinel)
    error = _refused_without_running(sentinel, lambda: train_drafter(cfg, dit=dit), "weights_only")
    assert isinstance(error, pickle.UnpicklingError) and _raised_at(error, "torch.load(cache")
    features = torch.randn(1, 2, 2, dit.num_tokens, dit.hidden_size).half()
    torch.save({"states": torch.zeros(1, 2, 3, 32, 32).half(), "features": features, "labels": torch.zeros(1, dtype=torch.long)},
               cache)
    _payload_file(Path(cfg.out) / "drafter_state_rank0.pt", sentinel)
    error = _refused_without_running(sentinel, lambda: train_drafter(cfg, dit=dit), "weights_only")
    assert isinstance(error, pickle.UnpicklingError)
    assert _raised_at(error, "torch.load(resume_path")
