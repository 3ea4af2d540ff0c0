"""One check for every command's bad inputs: exit status 2 and one error line, before any model runs."""

from __future__ import annotations

from types import ModuleType

from free_core.frontdoor.cli import main


def refused_in_one_line(module: ModuleType, argv: list[str], command: str, monkeypatch, capsys) -> str:
    """Runs `python -m free_core` with `argv`, `module.generate` forbidden; returns the one error line it printed."""

    def no_sampling(*args, **kwargs):
        raise AssertionError("a model ran before the bad input was refused")

    monkeypatch.setattr(module, "generate", no_sampling)
    code = main(argv)
    error = capsys.readouterr().err
    assert code == 2, error
    lines = error.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"python -m free_core {command}: error: "), error
    return lines[0]
