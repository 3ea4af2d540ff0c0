"""`python -m free_core sample-ddp`: sharded over processes, class-balanced, resumable, one .npz in the ADM layout."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from free_core.frontdoor.cli import main
from free_core.frontdoor.sample_ddp import SUMMED_COUNTS, batch_path, parts_dir, stats_path
from one_line_errors import refused_in_one_line

REPO = Path(__file__).resolve().parents[1]
RUN = ["sample-ddp", "--model", "random:DiT-Micro/8", "--mode", "strict", "--steps", "8", "--draft-length", "3",
       "--num-samples", "20", "--batch", "4", "--device", "cpu"]  # 5 batches; 10 classes, 2 samples each
COUNT_KEYS = (*SUMMED_COUNTS, "samples", "batches", "proposed_per_step", "accepted_per_step", "advance_histogram")


@pytest.fixture(autouse=True)
def cost_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FREE_COST_CACHE", str(tmp_path_factory.getbasetemp() / "cost_curves"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run on one process, uninterrupted: its .npz and statistics."""
    out = tmp_path_factory.mktemp("reference") / "samples.npz"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FREE_COST_CACHE", str(tmp_path_factory.getbasetemp() / "cost_curves"))
        assert main([*RUN, "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}, json.loads(stats_path(out).read_text())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_npz_has_the_evaluators_layout_and_balanced_classes(reference, tmp_path):
    arrays, report = reference
    assert sorted(arrays) == ["arr_0", "arr_1"]
    assert arrays["arr_0"].dtype == np.uint8 and arrays["arr_0"].shape == (20, 32, 32, 3)
    assert arrays["arr_0"].std() > 0  # images, not a constant fill
    assert arrays["arr_1"].tolist() == [i % 10 for i in range(20)]  # labels cycle over the classes
    assert np.bincount(arrays["arr_1"]).tolist() == [2] * 10
    assert report["total"]["samples"] == 20 and report["total"]["batches"] == 5
    assert report["total"]["sequential_dit_calls"] <= 5 * 8 and sum(report["total"]["proposed_per_step"]) > 0
    chosen = tmp_path / "chosen.npz"
    assert main([*RUN, "--num-samples", "6", "--labels", "3,7", "--out", str(chosen)]) == 0
    with np.load(chosen) as stored:
        assert stored["arr_1"].tolist() == [3, 7, 3, 7, 3, 7]
    assert not parts_dir(chosen).exists()  # the parts go once the .npz is written


def test_a_sample_depends_on_the_seed_and_its_batch_not_on_the_run_length(reference, tmp_path):
    arrays, _ = reference
    shorter, other_seed = tmp_path / "shorter.npz", tmp_path / "other_seed.npz"
    assert main([*RUN, "--num-samples", "10", "--out", str(shorter)]) == 0  # batches 0 and 1 as before, a shorter 2
    assert main([*RUN, "--num-samples", "8", "--seed", "1", "--out", str(other_seed)]) == 0
    with np.load(shorter) as short, np.load(other_seed) as other:
        assert np.array_equal(short["arr_0"][:8], arrays["arr_0"][:8])
        assert not np.array_equal(short["arr_0"][8:], arrays["arr_0"][8:10])  # batch 2 now holds 2 samples, not 4
        assert not np.array_equal(other["arr_0"], arrays["arr_0"][:8])


def test_two_processes_crashed_midway_resume_to_the_one_process_npz_and_sum_their_statistics(reference, tmp_path):
    """Rank 0 of 2 (batches 0, 2, 4) crashes writing batch 4; the same command again samples only what is missing,
    and the .npz and statistics equal the uninterrupted single-process run's."""
    arrays, single = reference
    out = tmp_path / "samples.npz"
    obstacle = batch_path(parts_dir(out), 4)
    obstacle.mkdir(parents=True)  # batch 4 cannot be written: rank 0 dies there, torchrun ends rank 1
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "free_core", *RUN, "--out", str(out)]
    crashed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert crashed.returncode != 0 and not out.exists()
    written = sorted(path.name for path in parts_dir(out).iterdir())
    assert {"batch_000000.npz", "batch_000002.npz"} <= set(written), (written, crashed.stderr[-3000:])
    assert not [name for name in written if name.endswith(".partial")]  # no half-written batch left behind
    obstacle.rmdir()

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with np.load(out, allow_pickle=False) as stored:
        assert np.array_equal(stored["arr_0"], arrays["arr_0"]) and np.array_equal(stored["arr_1"], arrays["arr_1"])
    report = json.loads(stats_path(out).read_text())
    assert report["processes"] == 2 and report["resumed_batches"] >= 2 and not parts_dir(out).exists()
    total, per_rank = report["total"], report["per_rank"]
    assert [rank["batches"] for rank in per_rank] == [3, 2]
    for key in COUNT_KEYS:
        assert total[key] == single["total"][key], key  # sharding and resumption change no sample and no count
    for key in (*SUMMED_COUNTS, "samples", "batches"):
        assert total[key] == sum(rank[key] for rank in per_rank), key
    for key in ("proposed_per_step", "accepted_per_step"):
        assert total[key] == [sum(column) for column in zip(*(rank[key] for rank in per_rank))], key
    for advance, count in total["advance_histogram"].items():
        assert count == sum(rank["advance_histogram"].get(advance, 0) for rank in per_rank)
    assert "20 samples on 2 process(es)" in resumed.stdout and "acceptance" in resumed.stdout


def test_resuming_with_other_settings_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "samples.npz"
    obstacle = batch_path(parts_dir(out), 1)
    obstacle.mkdir(parents=True)
    with pytest.raises(OSError):  # batch 0 is written, batch 1 cannot be
        main([*RUN, "--out", str(out)])
    obstacle.rmdir()
    assert sorted(path.name for path in parts_dir(out).glob("batch_*")) == ["batch_000000.npz"]
    assert main([*RUN, "--batch", "5", "--out", str(out)]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("python -m free_core sample-ddp: error: --out ")
    assert "batch 4 there, 5 now" in line and "same options" in line
    assert batch_path(parts_dir(out), 0).is_file()  # the refused run touched nothing
    assert main([*RUN, "--dtype", "bfloat16", "--out", str(out)]) == 2  # another dtype draws other samples
    assert "dtype 'float32' there, 'bfloat16' now" in capsys.readouterr().err
    # random:DiT-Micro/8 drafts frozen, which has nothing to compile: refused before the settings are read
    assert main([*RUN, "--compile-drafter", "--out", str(out)]) == 2
    assert "--compile-drafter with --drafter frozen" in capsys.readouterr().err


BAD_INPUTS = [  # (arguments, words the one-line message must contain)
    (["--num-samples", "0"], ["--num-samples 0", ">= 1"]),
    (["--batch", "0"], ["--batch 0", ">= 1"]),
    (["--out", "samples.png"], ["--out samples.png", ".npz"]),
    (["--steps", "0"], ["--steps", "= 0", "from 1 to 1000"]),
    (["--mode", "strict", "--relax-strength", "3"], ["--relax-strength", "mode relax only"]),
    (["--labels", "3,12"], ["--labels", "[12] out of range", "0..9"]),
    (["--model", "random:Foo/2"], ["--model random:Foo/2", "unknown DiT config"]),
]


@pytest.mark.parametrize("arguments, words", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_each_bad_input_is_one_line_exit_2_before_any_sample_is_drawn(arguments, words, tmp_path, monkeypatch, capsys):
    import free_core.frontdoor.sample_ddp

    monkeypatch.chdir(tmp_path)
    line = refused_in_one_line(free_core.frontdoor.sample_ddp, [*RUN, "--out", str(tmp_path / "never.npz"), *arguments],
                               "sample-ddp", monkeypatch, capsys)
    for word in words:
        assert word in line, (word, line)
    assert not list(tmp_path.iterdir())


def test_a_latent_dit_is_refused_naming_the_missing_vae(tmp_path, capsys):
    from free_core.models.checkpoints import save_dit
    from free_core.models.dit import DiT, dit_config

    latent = tmp_path / "latent.safetensors"
    save_dit(latent, DiT(dit_config("DiT-Micro/8", in_channels=4, input_size=16)))
    assert main([*RUN, "--model", str(latent), "--out", str(tmp_path / "never.npz")]) == 2
    error = capsys.readouterr().err
    assert "latent DiT (4 channels)" in error and "no VAE decoder" in error
    assert not (tmp_path / "never.npz").exists() and not parts_dir(tmp_path / "never.npz").exists()
