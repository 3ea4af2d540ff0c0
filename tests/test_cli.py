"""`python -m free_core sample` writes a PNG grid and prints and saves the run statistics."""

import json

import pytest

from free_core.cli import main


def test_sample_command_writes_png_and_statistics(tmp_path, capsys):
    out, stats = tmp_path / "grid.png", tmp_path / "stats.json"
    code = main(["sample", "--model", "random:DiT-Micro/8", "--steps", "12", "--batch", "2", "--out", str(out),
                 "--json", str(stats), "--cfg", "1.5"])
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(stats.read_text())
    assert set(report) == {"baseline", "strict", "relax"}
    assert report["baseline"]["sequential_dit_calls"] == 12
    assert report["strict"]["sequential_dit_calls"] <= 12
    printed = capsys.readouterr().out
    assert "sequential DiT calls" in printed and "acceptance" in printed


def test_comma_separated_options_refuse_a_bad_value_naming_it(capsys):
    with pytest.raises(SystemExit):
        main(["train-drafter", "--sampling-steps", "50,abc"])
    error = capsys.readouterr().err
    assert "--sampling-steps" in error and "expected comma-separated int values" in error and "'50,abc'" in error
