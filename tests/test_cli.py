"""`python -m free_core sample` writes a PNG grid and prints and saves the run statistics."""

import json

import pytest

from free_core.frontdoor.cli import main
from one_line_errors import refused_in_one_line


def test_sample_command_writes_a_labelled_grid_statistics_and_a_summary_in_words(tmp_path, capsys):
    from PIL import Image

    from free_core.frontdoor.demo_grid import HEADER_HEIGHT, LABEL_WIDTH, PADDING

    out, stats = tmp_path / "grid.png", tmp_path / "stats.json"
    code = main(["sample", "--model", "random:DiT-Micro/8", "--steps", "12", "--batch", "2", "--out", str(out),
                 "--json", str(stats), "--cfg", "1.5", "--scale", "2", "--repeats", "2",
                 "--draft-length", "3"])  # fixed K: adaptive K's choice depends on this machine's measured costs
    assert code == 0
    with Image.open(out) as image:  # 3 labelled rows (baseline, strict, relax) of 2 classes at 32 x 2 pixels
        assert image.format == "PNG"
        assert image.size == (LABEL_WIDTH + 2 * (64 + PADDING) + PADDING, HEADER_HEIGHT + 3 * (64 + PADDING) + PADDING)
        label_column = image.crop((0, HEADER_HEIGHT, LABEL_WIDTH, image.size[1])).convert("L")
        assert label_column.getextrema()[0] < 100  # the row titles are drawn
    report = json.loads(stats.read_text())
    assert set(report) == {"baseline", "strict", "relax"}
    assert report["baseline"]["sequential_dit_calls"] == 12
    assert report["strict"]["sequential_dit_calls"] <= 12
    assert len(report["strict"]["wall_times_s"]) == 2 and report["strict"]["options"]["mode"] == "strict"
    printed = capsys.readouterr().out
    assert "sequential DiT calls" in printed and "acceptance" in printed
    strict_line = next(line for line in printed.splitlines() if line.startswith("FREE strict: "))
    assert f"{report['strict']['sequential_dit_calls']} sequential DiT calls instead of 12" in strict_line
    assert ("x faster than the baseline" in strict_line) != ("x slower than the baseline" in strict_line)
    assert "(median of 2 runs)" in strict_line
    assert "the baseline's distribution, not its images" in printed


def test_comma_separated_options_refuse_a_bad_value_naming_it(capsys):
    with pytest.raises(SystemExit):
        main(["train-drafter", "--sampling-steps", "50,abc"])
    error = capsys.readouterr().err
    assert "--sampling-steps" in error and "expected comma-separated int values" in error and "'50,abc'" in error


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """A truncated safetensors file, a pickled .pt whose payload would create a file, a drafter of another DiT."""
    import torch

    from free_core.models.checkpoints import load_dit, save_dit
    from free_core.models.dit import DiT, dit_config
    from free_core.models.free_drafter import drafter_for, save_drafter

    folder = tmp_path_factory.mktemp("bad_inputs")
    (folder / "corrupt.safetensors").write_bytes(b"garbage that is not a safetensors header" * 3)
    torch.save({"weight": torch.zeros(2), "payload": _Payload(str(folder / "PAYLOAD_RAN"))}, folder / "pickled.pt")
    save_dit(folder / "other.safetensors", DiT(dit_config("DiT-Micro/8")))
    other = load_dit(folder / "other.safetensors")
    save_drafter(folder / "other_drafter.safetensors", drafter_for(other), other.source_name)
    return folder


class _Payload:
    """Unpickling this opens (creates) a file: the test checks that it never ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


BAD_INPUTS = [  # (arguments, words the one-line message must contain)
    (["--draft-length", "0"], ["--draft-length", "= 0", "from 1 to 64"]),
    (["--draft-length", "-3"], ["--draft-length", "= -3"]),
    (["--relax-strength", "-1"], ["--relax-strength", "= -1.0", ">= 0"]),
    (["--batch", "0"], ["--batch 0", ">= 1"]),
    (["--model", "{dir}/missing.safetensors"], ["--model", "missing.safetensors", "no such file"]),
    (["--model", "{dir}/corrupt.safetensors"], ["--model", "corrupt.safetensors", "not a readable .safetensors file"]),
    (["--model", "{dir}/pickled.pt"], ["--model", "pickled.pt", "never unpickles", ".safetensors"]),
    (["--labels", "a,b"], ["--labels", "'a,b'", "class indices"]),
    (["--labels", "3,12"], ["--labels", "[12] out of range", "0..9"]),
    (["--model", "random:Foo/2"], ["--model random:Foo/2", "unknown DiT config", "DiT-Micro/8"]),
    (["--drafter", "{dir}/other_drafter.safetensors"], ["--drafter", "other_drafter.safetensors", "other.safetensors",
                                                        "width 64", "width 128"]),
    (["--mode", "strict", "--relax-strength", "3"], ["--relax-strength", "mode relax only", "strict"]),
    (["--mode", "off", "--relax-strength", "3"], ["--relax-strength", "mode relax only"]),
    (["--steps", "0"], ["--steps", "= 0", "from 1 to 1000"]),
    (["--cfg", "-2"], ["--cfg", "= -2.0", ">= 0"]),
    (["--seed", "-1"], ["--seed", "= -1"]),
    (["--device", "tpu:9"], ["--device", "tpu:9"]),
]


@pytest.mark.parametrize("arguments, words", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_each_bad_input_is_one_line_exit_2_before_any_model_runs(arguments, words, bad_files, monkeypatch, capsys):
    import free_core.frontdoor.cli

    arguments = [a.format(dir=bad_files) for a in arguments]
    line = refused_in_one_line(free_core.frontdoor.cli, ["sample", "--steps", "250", "--out", str(bad_files / "never.png"),
                                                         *arguments], "sample", monkeypatch, capsys)
    for word in words:
        assert word.format(dir=bad_files) in line, (word, line)
    assert "weights_only=False" not in line and not (bad_files / "never.png").exists()  # line: all it printed
    assert not (bad_files / "PAYLOAD_RAN").exists()


def test_a_bad_input_in_a_real_process_has_no_traceback_and_debug_shows_it(bad_files):
    import subprocess
    import sys

    command = [sys.executable, "-m", "free_core", "sample", "--model", str(bad_files / "pickled.pt")]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and len(quiet.stderr.strip().splitlines()) == 1
    loud = subprocess.run(command + ["--debug"], capture_output=True, text=True, timeout=300)
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "OptionError" in loud.stderr
    assert not (bad_files / "PAYLOAD_RAN").exists()


def test_sample_help_shows_every_default():
    from free_core.frontdoor.cli import build_parser

    sample = build_parser()._subparsers._group_actions[0].choices["sample"]
    text = sample.format_help()
    for option in ("--steps", "--batch", "--draft-length", "--out", "--cfg", "--seed", "--repeats", "--scale"):
        action = next(a for a in sample._actions if option in a.option_strings)
        assert action.help, f"{option} has no help text"
        assert f"(default: {action.default})" in " ".join(text.split()), option


@pytest.mark.parametrize("mode, policy, strength", [("strict", "fixed", None), ("relax", "adaptive", 2.0), ("off", "fixed", None)])
def test_cli_flags_node_widgets_and_bench_rows_build_the_same_sampler_options(mode, policy, strength):
    """One front door: the same settings typed as CLI flags, set on the FREE KSampler's widgets, or run as a bench
    row become equal SamplerOptions (the node's relax-strength widget always has a value; it counts in relax only)."""
    from free_core.evaluation.bench import BenchConfig, bench_options
    from free_core.frontdoor.cli import build_parser, sample_options
    from free_core.frontdoor.options import DEFAULT_DRAFT_LENGTH, SamplerOptions

    k = "adaptive" if policy == "adaptive" else str(DEFAULT_DRAFT_LENGTH)
    flags = ["sample", "--mode", mode, "--steps", "40", "--cfg", "3.0", "--draft-length", k, "--seed", "5"] + (
        ["--relax-strength", str(strength)] if strength is not None else [])
    from_cli = sample_options(build_parser().parse_args(flags))
    from_node = SamplerOptions.from_node_widgets(mode, DEFAULT_DRAFT_LENGTH, policy, 8.0 if strength is None else strength,
                                                 steps=40, cfg=3.0, seed=5)
    bench_k = "adaptive" if policy == "adaptive" else DEFAULT_DRAFT_LENGTH
    from_bench = bench_options(BenchConfig(cfg_scale=3.0, seed=5), 40, mode, bench_k, strength or 0.0)
    assert from_cli == from_node == from_bench
    assert from_cli.strength == (strength or 0.0)


def test_adaptive_draft_length_gives_the_same_image_in_two_processes_from_the_curve_kept_on_disk(tmp_path):
    """The adaptive policy reads a cost curve measured once per machine and kept on disk, never the run's own timings:
    two processes with the same seed write the same PNG, and a third, given another curve in that file, chooses
    other draft lengths (so the file, not a fresh measurement, decides)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "FREE_COST_CACHE": str(tmp_path / "curves")}

    def run(name: str) -> dict:
        command = [sys.executable, "-m", "free_core", "sample", "--model", "random:DiT-Micro/8", "--mode", "strict",
                   "--steps", "16", "--batch", "2", "--draft-length", "adaptive", "--seed", "3",
                   "--out", str(tmp_path / f"{name}.png"), "--json", str(tmp_path / f"{name}.json")]
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
        return json.loads((tmp_path / f"{name}.json").read_text())["strict"]

    first, second = run("first"), run("second")
    assert (tmp_path / "first.png").read_bytes() == (tmp_path / "second.png").read_bytes()
    assert first["draft_lengths"] == second["draft_lengths"] and first["draft_length"] == "adaptive"
    stored_files = {json.loads(json.loads(path.read_text())["key"])["kind"]: path for path in (tmp_path / "curves").glob("*.json")}
    assert sorted(stored_files) == ["dit", "drafting pass"]  # the DiT's cost curve and one drafting pass, measured once
    curve_file = stored_files["dit"]
    stored = json.loads(curve_file.read_text())
    rows = sorted(int(r) for r in stored["curve"])
    chosen = {}
    for name, curve in (("flat", {str(r): 1.0 for r in rows}),  # extra rows cost nothing: draft whenever acceptance pays
                        ("steep", {str(r): float(r) ** 3 for r in rows})):  # extra rows cost more than drafts save
        curve_file.write_text(json.dumps({**stored, "curve": curve}))
        chosen[name] = run(name)["draft_lengths"][1:]  # the first round has nothing to draft from
    assert set(chosen["steep"]) == {0} and max(chosen["flat"]) > 1, chosen


def test_the_summary_says_when_adaptive_k_took_plain_steps():
    from free_core.frontdoor.cli import comparison_text

    row = {"num_steps": 50, "sequential_dit_calls": 50, "call_reduction": 1.0, "wall_clock_speedup": 1.0,
           "draft_length": "adaptive", "draft_lengths": [0] * 50}
    assert "took plain steps; --draft-length 4" in comparison_text({"strict": row}, ("strict",), 3)
    drafted = {**row, "draft_lengths": [0, 2] + [0] * 48}
    assert "took plain steps" not in comparison_text({"strict": drafted}, ("strict",), 3)
