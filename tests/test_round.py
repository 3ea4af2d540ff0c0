"""One speculative round, deterministically: the layout, the accept step and what a round hands the drafter.

The accept step is run on hand-built inputs where each draft is either certain to pass (draft law = target law)
or certain to fail (means 1000 stds apart), so every outcome is known in advance: the stop position of each
sample, the rejected rows (the reflection of the draft), the bonus transition drawn from the generator's next
numbers, and the per-step counts. A whole run with a recording model and drafter then checks what the drafter
is handed in every round against the chain the sampler actually moved through.
"""

import numpy as np
import pytest
import torch

from free_core.engine.denoiser import GuidedDenoiser
from free_core.engine.diffusion import GaussianDiffusion
from free_core.engine.draft_policy import DraftLengthPolicy
from free_core.engine.rounds import accept_prefix, verification_layout
from free_core.engine.speculative import sample_speculative
from toy_models import LinearGaussianDenoiser, PerturbedDrafter


def test_verification_layout_of_a_ragged_batch():
    offsets, sample, position = verification_layout(np.array([0, 2, 3, 1]))
    assert offsets.tolist() == [0, 1, 4, 8]
    assert sample.tolist() == [0, 1, 1, 1, 2, 2, 2, 2, 3, 3]
    assert position.tolist() == [0, 0, 1, 2, 0, 1, 2, 3, 0, 1]


DIM = 3
DRAFTS = np.array([0, 2, 3, 1])  # K_b per sample (on the host, as the round keeps it): no drafts, two, three, one
A_STEP = torch.tensor([5, 7, 9, 4])  # the step index each sample starts the round at
# Per sample, whether each of its drafts passes: sample 1 passes draft 0 and fails draft 1; sample 2 passes all
# three (then takes the bonus transition); sample 3 fails draft 0.
PASSES = {1: [True, False], 2: [True, True, True], 3: [False]}
EXPECTED_STOP = [0, 1, 3, 0]


def _hand_built_round(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    samples, rows = len(DRAFTS), int((DRAFTS + 1).sum())
    offsets = torch.from_numpy(verification_layout(DRAFTS)[0])
    mean_q = torch.randn(rows, DIM, generator=g, dtype=torch.float64)
    std_q = 0.1 + torch.rand(rows, DIM, generator=g, dtype=torch.float64)
    states = [torch.randn(samples, DIM, generator=g, dtype=torch.float64)]
    draft_means, draft_stds = [], []
    for j in range(int(DRAFTS.max())):
        mean_p, std_p = torch.zeros(samples, DIM, dtype=torch.float64), torch.ones(samples, DIM, dtype=torch.float64)
        for b, passes in PASSES.items():
            if j < len(passes):
                row = offsets[b] + j
                std_p[b] = std_q[row]
                mean_p[b] = mean_q[row] if passes[j] else mean_q[row] + 1000 * std_q[row]
        draft_means.append(mean_p)
        draft_stds.append(std_p)
        states.append(mean_p + std_p * torch.randn(samples, DIM, generator=g, dtype=torch.float64))
    return states, draft_means, draft_stds, offsets, mean_q, std_q


def _accept(seed: int, temperature_of=None):
    states, draft_means, draft_stds, offsets, mean_q, std_q = _hand_built_round()
    proposed, accepted = np.zeros(10, dtype=np.int64), np.zeros(10, dtype=np.int64)
    new_state, stop, stop_on_host = accept_prefix(
        states, draft_means, draft_stds, DRAFTS, offsets, mean_q, std_q, torch.Generator().manual_seed(seed),
        step_of=lambda samples, positions: A_STEP[samples] - positions, temperature_of=temperature_of, proposed=proposed, accepted_count=accepted,
    )
    assert stop.tolist() == stop_on_host.tolist()
    return new_state, stop, proposed, accepted, (states, draft_means, offsets, mean_q, std_q)


def test_each_sample_stops_at_its_first_rejection():
    _, stop, _, _, _ = _accept(seed=1)
    assert stop.tolist() == EXPECTED_STOP


def test_rejected_rows_are_the_reflection_of_the_draft_onto_the_target():
    """Equal stds: the coupling's output on rejection is the draft reflected through the bisecting hyperplane."""
    new_state, _, _, _, (states, draft_means, offsets, mean_q, std_q) = _accept(seed=1)
    for b, j in ((1, 1), (3, 0)):  # (sample, position of its rejected draft)
        row = offsets[b] + j
        z = (states[j + 1][b] - draft_means[j][b]) / std_q[row]
        delta = (mean_q[row] - draft_means[j][b]) / std_q[row]
        e = delta / delta.norm()
        expected = mean_q[row] + std_q[row] * (z - 2 * e * (z @ e))
        torch.testing.assert_close(new_state[b], expected, rtol=1e-12, atol=1e-12)


def test_all_accepted_and_undrafted_samples_take_the_exact_transition_with_the_next_random_numbers():
    seed = 2
    new_state, _, _, _, (_, _, offsets, mean_q, std_q) = _accept(seed=seed)
    # The accept step draws one uniform per draft (3 + 2 + 1 here, in one batch), then the bonus noise.
    g = torch.Generator().manual_seed(seed)
    torch.rand(6, generator=g, dtype=torch.float64)
    noise = torch.randn(2, DIM, generator=g, dtype=torch.float64)
    for k, (b, position) in enumerate(((0, 0), (2, 3))):
        row = offsets[b] + position
        torch.testing.assert_close(new_state[b], mean_q[row] + std_q[row] * noise[k], rtol=0, atol=0)


def test_per_step_counts_and_relax_temperature_see_the_drafts_step_indices():
    seen = []

    def temperature_of(step_index):
        seen.append(step_index.tolist())
        return torch.ones(step_index.numel(), dtype=torch.float64)

    _, stop, proposed, accepted, _ = _accept(seed=3, temperature_of=temperature_of)
    # Drafts 0 of samples 1, 2, 3 sit at steps 7, 9, 4; drafts 1 of samples 1, 2 at 6, 8; draft 2 of sample 2 at 7
    # (all decided in one batch, position-major).
    assert seen == [[7, 9, 4, 6, 8, 7]]
    assert proposed.tolist() == [0, 0, 0, 0, 1, 0, 1, 2, 1, 1]
    assert accepted.tolist() == [0, 0, 0, 0, 0, 0, 0, 2, 1, 1]
    assert stop.tolist() == EXPECTED_STOP  # temperature 1 is strict


class RecordingModel(LinearGaussianDenoiser):
    """Records every verification forward: its states, timesteps and sample labels."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events: list = []

    def features(self, x, t, y):
        self.events.append(("verify", x.clone(), t.clone(), y.clone()))
        return super().features(x, t, y)

    def exact_features(self, x, t, y):
        return super().features(x, t, y)


class RecordingDrafter(PerturbedDrafter):
    """A state-dependent drafter that records what each drafting pass is handed."""

    def __init__(self, model: RecordingModel, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model = model

    def propose(self, model, context):
        self.model.events.append(("draft", context))
        original, model.features = model.features, model.exact_features  # drafting is not a verification
        try:
            output, features = super().propose(model, context)
        finally:
            model.features = original
        self.model.events[-1] = ("draft", context, features.clone())
        return output, features


class CyclingDraftLength(DraftLengthPolicy):
    """K from a fixed cycle that includes 0: plain-step rounds between drafted ones, as adaptive K takes them."""

    label = "cycling"

    def __init__(self, cycle: list[int]):
        self.cycle, self.rounds = cycle, 0

    def next_length(self, stats) -> int:
        self.rounds += 1
        return self.cycle[self.rounds % len(self.cycle)]

    @property
    def longest(self) -> int:
        return max(self.cycle)

    def limit(self, longest: int) -> None:
        self.cycle = [min(k, longest) for k in self.cycle]


@pytest.mark.parametrize("policy", [lambda: 3, lambda: CyclingDraftLength([0, 3, 0, 0, 2, 1])], ids=["K=3", "K cycles through 0"])
def test_the_drafter_reads_the_verified_chain_and_never_the_state_its_transition_produces(policy):
    """Per round and sample: the history, previous state and output handed to the first drafting pass are those of
    the states the chain moved through; later passes get the drafted states and features of this round; and no pass
    is handed the state that its own drafted transition produces. With K cycling through 0, plain-step rounds (with
    every sample active, and with some finished) sit between drafted ones and must keep the same bookkeeping."""
    steps, batch, m = 16, 5, 2
    model = RecordingModel(torch.tensor([0.5, -1.0]), 0.5, null_class=batch)  # labels 0..4 name the samples
    denoiser = GuidedDenoiser(model, GaussianDiffusion.respaced(steps))
    drafter = RecordingDrafter(model, eps_bias=0.3)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(batch, 2, 1, 1, generator=g, dtype=torch.float64)
    _, stats = sample_speculative(denoiser, drafter, x_T, torch.arange(batch), g, draft_length=policy())
    if isinstance(drafter_policy := policy(), CyclingDraftLength):
        assert 0 in stats.draft_lengths[1:], f"no plain round mid-run with {drafter_policy.cycle}"

    # Rounds from the event log: drafting passes, then one verification forward.
    rounds, current = [], []
    for event in model.events:
        current.append(event)
        if event[0] == "verify":
            rounds.append((current[:-1], event))
            current = []
    assert len(rounds) < steps and not current

    # The chain per sample, by step index: verified states s_0..s_stop of each round (stop read off the next round).
    timestep_to_index = {int(t): i for i, t in enumerate(denoiser.diffusion.model_timesteps)}
    chain = {b: {steps - 1: x_T[b]} for b in range(batch)}
    verified = []  # per round: {sample: [(step index, state), ...]}
    for _, (_, x, t, y) in rounds:
        per_sample = {}
        for row in range(x.shape[0]):
            per_sample.setdefault(int(y[row]), []).append((timestep_to_index[int(t[row])], x[row]))
        verified.append(per_sample)
    for r, per_sample in enumerate(verified):
        for b, rows in per_sample.items():
            start = rows[0][0]
            assert [i for i, _ in rows] == list(range(start, start - len(rows), -1))  # s_0..s_K at consecutive steps
            later = [v[b][0][0] for v in verified[r + 1:] if b in v]
            stop = start - later[0] - 1 if later else len(rows) - 1
            for i, state in rows[: stop + 1]:
                chain[b][i] = state

    def exact(state, i):
        t = torch.as_tensor(denoiser.diffusion.model_timesteps[i]).reshape(1)
        return model.exact_features(state[None], t, torch.zeros(1, dtype=torch.long))[0]

    checked_first, checked_later = 0, 0
    for r, (drafts, (_, verify_x, verify_t, verify_y)) in enumerate(rounds):
        rows_of = {}
        for row in range(verify_x.shape[0]):
            rows_of.setdefault(int(verify_y[row]), []).append(verify_x[row])
        for j, (_, context, drafted_features) in enumerate(drafts):
            for row, b in enumerate(context.y.tolist()):
                i = int(context.step[row])
                s = rows_of[b]  # this round's s_0..s_K of sample b
                torch.testing.assert_close(context.x[row], s[j], rtol=0, atol=0)
                assert not torch.equal(context.x[row], s[j + 1]), "the drafter was handed its own transition's result"
                assert not torch.equal(context.previous_x[row], s[j + 1])
                if j == 0:
                    torch.testing.assert_close(context.previous_x[row], chain[b][i + 1], rtol=0, atol=0)
                    for k in range(m):  # oldest first; before the chain has m states, the first one repeats
                        back = min(i + m - k, steps - 1)
                        torch.testing.assert_close(context.features[row, k], exact(chain[b][back], back), rtol=1e-12, atol=1e-12)
                    torch.testing.assert_close(context.output[row], model.head(exact(chain[b][i + 1], i + 1)[None], None, None)[0])
                    checked_first += 1
                else:
                    torch.testing.assert_close(context.previous_x[row], s[j - 1], rtol=0, atol=0)
                    before = drafts[j - 1]
                    previous_row = before[1].y.tolist().index(b)
                    torch.testing.assert_close(context.features[row, -1], before[2][previous_row], rtol=0, atol=0)
                    torch.testing.assert_close(context.features[row, 0], before[1].features[previous_row, -1], rtol=0, atol=0)
                    checked_later += 1
    assert checked_first > batch and checked_later > batch  # both kinds of pass were seen, in several rounds
