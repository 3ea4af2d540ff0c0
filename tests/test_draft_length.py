"""The adaptive draft length picks the K that maximises expected steps per second."""

import pytest

from free_core.engine.cost import interpolate_cost
from free_core.engine.draft_policy import AdaptiveDraftLength, FixedDraftLength
from free_core.engine.stats import SamplingStats


def _stats_with(accepted: int, proposed: int) -> SamplingStats:
    stats = SamplingStats("free-strict", 10, 1)
    stats.proposed_per_step[3], stats.accepted_per_step[3] = proposed, accepted
    return stats


def test_high_acceptance_and_cheap_batches_draft_long():
    policy = AdaptiveDraftLength(max_length=8, cost_curve={1: 1.0, 9: 1.2}, draft_cost_ratio=0.0, smoothing=1.0)
    policy.start_run(1)
    lengths = [policy.next_length(_stats_with(95, 100)) for _ in range(10)]
    assert lengths == [1, 2, 3, 4, 5, 6, 7, 8, 8, 8]  # K rises by one a round (a probe starts short), up to the most


def test_low_acceptance_or_linear_cost_fall_back_to_plain_steps():
    policy = AdaptiveDraftLength(max_length=8, cost_curve={1: 1.0, 9: 1.2}, smoothing=1.0)
    policy.start_run(1)
    assert policy.next_length(_stats_with(5, 100)) == 0
    linear = AdaptiveDraftLength(max_length=8, cost_curve={1: 1.0, 9: 9.0}, smoothing=1.0)
    linear.start_run(1)
    assert linear.next_length(_stats_with(80, 100)) == 0  # verification costs as much as sequential calls
    medium = AdaptiveDraftLength(max_length=8, cost_curve={1: 1.0, 9: 1.2}, draft_cost_ratio=0.0, smoothing=1.0)
    medium.start_run(1)
    assert 1 <= [medium.next_length(_stats_with(50, 100)) for _ in range(10)][-1] < 8


def test_policy_measures_its_curve_once_per_run_and_only_from_the_past():
    calls = []
    policy = AdaptiveDraftLength(max_length=4)
    policy.start_run(2, lambda sizes: calls.append(sizes) or {s: 1.0 + 0.01 * s for s in sizes})
    assert calls == [[2, 4, 6, 8, 10]]
    again = AdaptiveDraftLength(max_length=4)
    again.start_run(2, lambda sizes: {s: 1.0 + 0.01 * s for s in sizes})
    # The choices depend on the rounds seen (and the policy's own earlier choices) only: the same past, the same K.
    assert [policy.next_length(_stats_with(0, 0)) for _ in range(3)] == [again.next_length(_stats_with(0, 0)) for _ in range(3)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_fixed_length_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="draft_length"):
        FixedDraftLength(bad)


def test_cost_curve_interpolates_between_and_extrapolates_past_the_measured_rows():
    curve = {1: 1.0, 2: 2.0, 4: 3.0}
    assert interpolate_cost(curve, 2) == 2.0
    assert interpolate_cost(curve, 3) == pytest.approx(2.5)
    assert interpolate_cost(curve, 6) == pytest.approx(4.0)  # the last segment's slope, not proportional to rows
    assert AdaptiveDraftLength(cost_curve=curve)._cost(6) == pytest.approx(4.0)


def test_adaptive_policy_prices_drafts_at_the_measured_drafting_pass():
    """With a measured drafting pass the policy uses its seconds, not the 0.1 x verification assumption: drafts
    that cost as much as a verification make drafting unprofitable on a flat curve that otherwise pays."""
    def flat(sizes: list[int]) -> dict[int, float]:
        return {rows: 1.0 for rows in sizes}

    cheap, dear = AdaptiveDraftLength(max_length=4), AdaptiveDraftLength(max_length=4)
    cheap.start_run(2, flat, measure_draft=lambda: 0.01)
    dear.start_run(2, flat, measure_draft=lambda: 5.0)
    assert cheap.draft_cost_s == 0.01 and dear.draft_cost_s == 5.0
    assert max(range(5), key=cheap.expected_rate) == 4 and max(range(5), key=dear.expected_rate) == 0


def test_a_cached_curve_never_prices_more_rows_below_fewer(tmp_path, monkeypatch):
    """Timing noise can make a larger batch look cheaper; the policy must not believe it (it would draft long on a
    machine where that is slower), while the file keeps what was measured."""
    import json

    from free_core.engine.cost import disk_cached_curve

    monkeypatch.setenv("FREE_COST_CACHE", str(tmp_path))
    measured = {2: 0.020, 4: 0.015, 6: 0.030, 8: 0.025}
    curve = disk_cached_curve({"kind": "test"}, lambda counts: {rows: measured[rows] for rows in counts}, [2, 4, 6, 8])
    assert curve == {2: 0.020, 4: 0.020, 6: 0.030, 8: 0.030}
    stored = json.loads(next(tmp_path.glob("*.json")).read_text())["curve"]
    assert {int(rows): seconds for rows, seconds in stored.items()} == measured


def test_a_cached_curve_is_one_sessions_measurement_never_merged_with_other_counts(tmp_path, monkeypatch):
    """A run's curve is timed in one session: counts that another run (another batch size) timed earlier, maybe on a
    busy machine, never enter it. Merged, a 4-row forward timed under load made drafting look cheap next to it."""
    from free_core.engine.cost import disk_cached_curve

    monkeypatch.setenv("FREE_COST_CACHE", str(tmp_path))
    busy = {2: 0.050, 4: 0.090}  # a batch-1 run measured while something else ran
    quiet = {4: 0.020, 6: 0.030, 8: 0.040}
    sessions = []

    def measure_with(times):
        def measure(counts):
            sessions.append(counts)
            return {rows: times[rows] for rows in counts}
        return measure

    assert disk_cached_curve({"kind": "test"}, measure_with(busy), [2, 4]) == busy
    assert disk_cached_curve({"kind": "test"}, measure_with(quiet), [4, 6, 8]) == quiet
    assert sessions == [[2, 4], [4, 6, 8]]  # the second run timed all its counts, the 4 included
    assert disk_cached_curve({"kind": "test"}, measure_with({}), [4, 6, 8]) == quiet  # and reads them back, untimed
    assert len(sessions) == 2


@pytest.mark.parametrize("slow_calls", [0, 3, 7])
def test_a_slow_spell_while_timing_does_not_price_the_drafting_pass(tmp_path, monkeypatch, slow_calls):
    """The drafting pass the adaptive policy prices is a median over enough passes that a slow spell of the machine
    covering several of them (here 3x slower) is not what it reads. With the median of 3, as before, a spell over
    two timed passes priced every draft of every later run (kept on disk) at 3x its cost."""
    import types

    import torch

    from free_core.engine import cost
    from free_core.engine.denoiser import GuidedDenoiser
    from free_core.engine.diffusion import GaussianDiffusion
    from free_core.models.checkpoints import EMBEDDED_CFG_SCALE
    from free_core.models.model_specs import EMBEDDED, resolve_dit, resolve_drafter

    monkeypatch.setenv("FREE_COST_CACHE", str(tmp_path))
    clock, passes = [0.0], [0]
    monkeypatch.setattr(cost, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(cost, "_measured", {})  # this process's copy of the curves, as well as the disk's
    model = resolve_dit(EMBEDDED)
    drafter = resolve_drafter(EMBEDDED, model)
    propose = drafter.propose

    def timed_propose(*args, **kwargs):
        passes[0] += 1
        clock[0] += 0.003 if 2 <= passes[0] < 2 + slow_calls else 0.001  # pass 1 is the untimed warm-up
        return propose(*args, **kwargs)

    monkeypatch.setattr(drafter, "propose", timed_propose)
    denoiser = GuidedDenoiser(model, GaussianDiffusion.respaced(20), cfg_scale=EMBEDDED_CFG_SCALE)
    x = torch.zeros(1, model.in_channels, model.input_size, model.input_size)
    seconds = cost.cached_draft_cost(denoiser, drafter, x, torch.zeros(1, dtype=torch.long))
    assert seconds == pytest.approx(0.001)
    assert passes[0] == 1 + cost.DRAFT_TIMING_REPEATS


def _probe_rounds(policy: AdaptiveDraftLength, rounds: int, accept: float) -> list[int]:
    """The rounds in which `policy` drafts, when a drafted transition is accepted with frequency `accept`."""
    stats = SamplingStats("free-strict", 10, 1)
    stats.rounds = 2  # past the first round, as in a run
    drafted = []
    for round_index in range(rounds):
        k = policy.next_length(stats)
        if k:
            drafted.append(round_index)
            stats.proposed_per_step[0] += k
            stats.accepted_per_step[0] += int(round(accept * k))
    return drafted


def test_probes_grow_rarer_each_time_drafting_stops_paying():
    """Where drafts keep failing (50 steps on this CPU), every probe costs a round dearer than a plain step; the return
    to the prior halves each time drafting stops paying, so the gaps between probes grow. A run whose drafts are
    accepted drafts on, as before."""
    curve = {2: 1.0, 4: 1.3, 6: 1.6, 8: 1.9, 10: 2.2}
    failing = AdaptiveDraftLength(max_length=4, cost_curve=curve, draft_cost_ratio=0.05)
    failing.start_run(2)
    drafted = _probe_rounds(failing, 300, accept=0.0)
    gaps = [b - a for a, b in zip(drafted, drafted[1:])]
    assert len(gaps) >= 3 and gaps[2] >= 2 * gaps[0] and gaps == sorted(gaps)
    flat = AdaptiveDraftLength(max_length=4, cost_curve=curve, draft_cost_ratio=0.05, max_backoffs=0)
    flat.start_run(2)
    assert len(_probe_rounds(flat, 300, accept=0.0)) > 2 * len(drafted)  # the old behaviour: a probe every few rounds
    accepting = AdaptiveDraftLength(max_length=4, cost_curve=curve, draft_cost_ratio=0.05)
    accepting.start_run(2)
    assert len(_probe_rounds(accepting, 300, accept=1.0)) == 300
