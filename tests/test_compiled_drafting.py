"""The drafter's proposal through torch.compile: the same drafts up to rounding, the same run, refused where there is
nothing to compile. Its exactness is tested with the others (tests/test_exact_law.py, the compiled-drafter case)."""

import pytest
import torch
from torch._dynamo.utils import counters

from free_core.engine.compiled_drafting import CompiledDrafter, compile_mode
from free_core.engine.drafter_interface import DraftContext, FrozenDrafter
from free_core.frontdoor.cli import main
from free_core.frontdoor.generate import generate
from free_core.frontdoor.options import OptionError, SamplerOptions
from free_core.models.dit import DiT
from free_core.models.free_drafter import drafter_for
from toy_models import random_micro_dit


@pytest.fixture(scope="module")
def dit_and_drafter():
    dit = random_micro_dit()
    drafter = drafter_for(dit).eval()
    for parameter in drafter.parameters():  # a fresh drafter's last layers are zero: it would copy the features
        torch.nn.init.normal_(parameter, std=0.05)
    return dit, drafter


def _context(dit: DiT, rows: int) -> DraftContext:
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, dit.in_channels, dit.input_size, dit.input_size, generator=g)
    t = torch.randint(0, 1000, (rows,), generator=g)
    y = torch.randint(0, dit.num_classes, (rows,), generator=g)
    features = torch.randn(rows, 2, dit.num_tokens, dit.hidden_size, generator=g)
    return DraftContext(features=features, output=torch.zeros(rows, dit.out_channels, *x.shape[2:]), x=x, t=t, y=y,
                        step=t, previous_x=x + 0.1 * torch.randn(x.shape, generator=g))


@torch.inference_mode()
def test_compiled_proposal_is_the_eager_one_up_to_rounding_at_every_row_count(dit_and_drafter):
    dit, drafter = dit_and_drafter
    compiled = CompiledDrafter(drafter, "cpu")
    assert compiled.history_length == drafter.history_length and compiled.compile_mode == compile_mode("cpu") == "default"
    graphs_before = counters["stats"]["unique_graphs"]
    for rows in (2, 3, 6):  # a round drafts for fewer rows as samples stop: the batch axis varies
        context = _context(dit, rows)
        eager_output, eager_features = drafter.propose(dit, context)
        output, features = compiled.propose(dit, context)
        assert output.shape == eager_output.shape and features.shape == eager_features.shape
        torch.testing.assert_close(output, eager_output, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(features, eager_features, rtol=1e-4, atol=1e-5)
        assert not torch.equal(features, context.features[:, -1])  # the drafter moved the features: a real draft
    assert counters["stats"]["unique_graphs"] > graphs_before  # dynamo compiled the proposal, not just ran it eagerly


def test_a_strict_run_with_the_compiled_drafter_takes_the_same_decisions(dit_and_drafter):
    dit, drafter = dit_and_drafter
    labels = torch.tensor([1, 2, 3])
    options = SamplerOptions(mode="strict", steps=16, cfg=2.0, seed=4, draft_policy="fixed", draft_length=3)
    eager, eager_stats = generate(dit, drafter, labels, options)
    compiled, stats = generate(dit, drafter, labels, SamplerOptions(**{**options.to_dict(), "compile_drafter": True}))
    # Drafts differ in their last bits only, so no accept decision flips for this seed: the same rounds, the same
    # samples up to rounding (the law is tested in tests/test_exact_law.py)
    assert stats.sequential_dit_calls == eager_stats.sequential_dit_calls < 16
    assert stats.advance_histogram == eager_stats.advance_histogram
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_compiling_the_frozen_drafter_is_refused_naming_the_option(dit_and_drafter, capsys):
    dit, _ = dit_and_drafter
    with pytest.raises(ValueError, match=r"compile_drafter \(--compile-drafter\).*frozen drafter has no network"):
        generate(dit, FrozenDrafter(), torch.tensor([0]), SamplerOptions(steps=4, compile_drafter=True))
    with pytest.raises(OptionError, match=r"compile_drafter \(--compile-drafter\) = 'yes': must be True or False"):
        SamplerOptions(compile_drafter="yes")
    code = main(["sample", "--model", "random:DiT-Micro/8", "--compile-drafter", "--steps", "4", "--out", "unused.png"])
    error = capsys.readouterr().err
    assert code == 2 and "--compile-drafter with --drafter frozen" in error and "drop --compile-drafter" in error


def test_a_compiler_failure_names_the_option_to_drop_and_the_device_check_reports_it(dit_and_drafter, monkeypatch):
    import free_core.engine.compiled_drafting as compiled_drafting
    from free_core.evaluation.device_report import large_lines

    def broken_compile(function, **options):
        def compiled(*args, **kwargs):
            raise OSError("no C++ compiler found\nlong inductor log")
        return compiled

    monkeypatch.setattr(compiled_drafting.torch, "compile", broken_compile)
    dit, drafter = dit_and_drafter
    with pytest.raises(RuntimeError) as failure:
        CompiledDrafter(drafter, "cpu").propose(dit, _context(dit, 2))
    message = str(failure.value)
    assert "\n" not in message and message.startswith("compile_drafter (--compile-drafter): torch.compile failed")
    assert "OSError: no C++ compiler found" in message and "run without the option" in message

    lines = large_lines("bf16", [{"model": "DiT-XL/2 256px", "parameters": 675e6, "batch_cost_curve": {"2": 0.01},
                                  "compiled_drafting_error": "RuntimeError: " + message}])
    assert any(line.startswith("The drafter could not be compiled here: RuntimeError: compile_drafter") for line in lines)
