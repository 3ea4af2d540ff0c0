"""The CLI's process keeps freed memory, so a speculative round does not fault its activations in afresh."""

import os
import subprocess
import sys
import textwrap

import pytest

ROUNDS_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from free_core.engine.cpu_allocator import keep_freed_memory
    from free_core.engine.denoiser import GuidedDenoiser
    from free_core.engine.diffusion import GaussianDiffusion
    from free_core.engine.sampling import initial_noise
    from free_core.engine.speculative import sample_speculative
    from free_core.models.model_specs import EMBEDDED, resolve_dit, resolve_drafter

    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    model = resolve_dit(EMBEDDED)
    drafter = resolve_drafter(EMBEDDED, model)
    denoiser = GuidedDenoiser(model, GaussianDiffusion.respaced(40), cfg_scale=4.0)
    x = initial_noise((1, 3, 32, 32), torch.Generator().manual_seed(0))
    labels = torch.zeros(1, dtype=torch.long)
    run = lambda: sample_speculative(denoiser, drafter, x, labels, torch.Generator().manual_seed(1), draft_length=2)[1]
    run()  # the first run grows the heap to its working size
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    stats = run()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / stats.rounds)
""")


def _faults_per_round(mode: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", ROUNDS_SCRIPT, mode], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_kept_memory_spares_a_speculative_round_its_page_faults():
    """K = 2 rounds verify 6 rows and draft between: with glibc's defaults each round gives the larger forward's
    memory back and faults it in again (hundreds of faults a round); kept, a warm round faults (almost) none."""
    assert _faults_per_round("keep") < 20


def test_the_cli_entry_point_keeps_freed_memory():
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    code = "import runpy, sys; sys.argv = ['free_core', '--help']\ntry:\n    runpy.run_module('free_core', run_name='__main__')\n" \
           "except SystemExit:\n    pass\nfrom free_core.engine.cpu_allocator import keeps_freed_memory\nprint(keeps_freed_memory())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == str(sys.platform.startswith("linux")), done.stderr


def test_a_cost_curve_measured_with_kept_memory_is_cached_apart(monkeypatch):
    """Kept memory changes what a large forward costs on a CPU, so adaptive K's cached curves are keyed by it."""
    from free_core.engine import cpu_allocator
    from free_core.engine.cost import machine_key

    monkeypatch.setattr(cpu_allocator, "_kept", False)
    default = machine_key("cpu")
    monkeypatch.setattr(cpu_allocator, "_kept", True)
    assert machine_key("cpu") != default
