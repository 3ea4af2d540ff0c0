"""The FREE drafter: small, saved with the identity of its DiT, and refused against another DiT."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from free_core.models.checkpoints import weights_fingerprint
from free_core.models.free_drafter import drafter_for, load_drafter, read_drafter_metadata, save_drafter
from free_core.models.dit import DiT, dit_config

EMBEDDED_CONFIG = {"hidden_size": 128, "depth": 6, "num_heads": 4}  # the shipped DiT's size


def _random_dit(seed=0, name="DiT-Micro/8", **overrides):
    torch.manual_seed(seed)
    model = DiT(dit_config(name, **overrides)).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model.weights_fingerprint = weights_fingerprint(model.state_dict())
    return model


def _flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("name, overrides", [("DiT-Tiny/4", EMBEDDED_CONFIG), ("DiT-XL/2", {}), ("DiT-XL/2", {"input_size": 64})])
def test_drafter_is_under_five_percent_of_the_dit(name, overrides):
    device = "cpu" if name == "DiT-Tiny/4" else "meta"
    with torch.device(device):
        dit = DiT(dit_config(name, **overrides))
        drafter = drafter_for(dit)
    assert sum(p.numel() for p in drafter.parameters()) <= 0.05 * sum(p.numel() for p in dit.parameters())
    with torch.device(device):
        x = torch.randn(1, dit.in_channels, dit.input_size, dit.input_size)
        t, y = torch.tensor([500]), torch.tensor([1])
        history = torch.randn(1, drafter.history_length, dit.num_tokens, dit.hidden_size)
    dit_flops = _flops(lambda: dit(x, t, y))
    # A drafted step: the drafter plus the DiT's own head that turns features into an output.
    draft_flops = _flops(lambda: dit.head(drafter.predict_features(dit, history, x, x, t, y), t, y))
    assert draft_flops <= 0.05 * dit_flops


def test_drafter_save_load_round_trip(tmp_path):
    dit = _random_dit()
    drafter = drafter_for(dit)
    for p in drafter.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = save_drafter(tmp_path / "d.safetensors", drafter, dit.source_name, train_steps=7, sampling_steps=(50, 250),
                        cfg_scales=(1.0, 2.5), final_loss=0.125)
    assert read_drafter_metadata(path) | {"config": "-"} == {
        "format": "free_core.drafter", "config": "-", "dit_fingerprint": dit.weights_fingerprint,
        "trained_for": dit.source_name, "train_steps": "7", "sampling_steps": "50,250", "cfg_scales": "1,2.5",
        "final_loss": "0.125000"}
    loaded = load_drafter(path, dit)
    history = torch.randn(2, 2, dit.num_tokens, dit.hidden_size)
    x, t, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 700]), torch.tensor([1, 10])
    previous_x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.predict_features(dit, history, x, previous_x, t, y),
                               drafter.predict_features(dit, history, x, previous_x, t, y))


def test_drafter_for_another_dit_is_refused_naming_both(tmp_path):
    dit = _random_dit(seed=0)
    path = save_drafter(tmp_path / "d.safetensors", drafter_for(dit), "DiT A")
    other_weights = _random_dit(seed=1)
    other_weights.source_name = "DiT B"
    with pytest.raises(ValueError, match=f"{dit.weights_fingerprint}.*DiT A.*DiT B.*{other_weights.weights_fingerprint}"):
        load_drafter(path, other_weights)
    other_width = _random_dit(seed=0, hidden_size=96)
    with pytest.raises(ValueError, match="width 64 .* width 96"):
        load_drafter(path, other_width)


def test_a_drafting_pass_reads_the_dits_own_conditioning_and_patch_embedding_change():
    """The sampler hands the drafter its adaLN modulations from a per-run table of every (step, sample), and the
    drafter takes the change of the patch embedding as one linear map of the state change: both must equal what the
    DiT's own embedders give for that row."""
    from free_core.engine.denoiser import GuidedDenoiser
    from free_core.engine.diffusion import GaussianDiffusion
    from free_core.engine.speculative import sample_speculative
    from free_core.models.free_drafter import patch_embedding_change

    dit = _random_dit()
    drafter = drafter_for(dit)
    for p in drafter.parameters():  # its adaLN starts at zero: random weights make every column of its table count
        torch.nn.init.normal_(p, std=0.05)
    seen = []
    propose = drafter.propose

    def recording(model, context):
        seen.append(context)
        return propose(model, context)

    drafter.propose = recording
    denoiser = GuidedDenoiser(dit, GaussianDiffusion.respaced(8), cfg_scale=2.0)
    x = torch.randn(3, dit.in_channels, dit.input_size, dit.input_size, generator=torch.Generator().manual_seed(0))
    sample_speculative(denoiser, drafter, x, torch.tensor([1, 2, 3]), torch.Generator().manual_seed(1), draft_length=3)
    assert seen
    with torch.no_grad():  # the contexts hold the sampler's inference tensors, which autograd cannot record
        for context in seen:
            # The sampler's table, indexed by (step, sample), must hold this row's own (t, y) terms.
            t = denoiser.diffusion.timestep_for(context.step)  # the rows' timesteps: the table stands in for them
            assert context.t is None
            torch.testing.assert_close(context.modulation, drafter.modulation(dit, dit.conditioning(t, context.y)),
                                       rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(patch_embedding_change(dit, context.x, context.previous_x),
                                       dit.x_embedder(context.x) - dit.x_embedder(context.previous_x), rtol=1e-4, atol=1e-5)


def test_a_proposal_from_tabled_modulations_and_shared_states_equals_the_plain_one():
    """With CFG a state is two model rows: the drafter embeds its change once and repeats it (`branches`), and reads
    its adaLN terms from rows of a table. Both must give the proposal of the row-by-row, compute-everything path."""
    from free_core.engine.drafter_interface import DraftContext

    dit = _random_dit()
    drafter = drafter_for(dit)
    for p in drafter.parameters():
        torch.nn.init.normal_(p, std=0.05)
    g = torch.Generator().manual_seed(3)
    states, previous = torch.randn(3, 3, 32, 32, generator=g), torch.randn(3, 3, 32, 32, generator=g)
    x, previous_x = states.repeat_interleave(2, dim=0), previous.repeat_interleave(2, dim=0)
    t, y = torch.tensor([3, 3, 500, 500, 900, 900]), torch.tensor([1, 10, 2, 10, 7, 10])
    history = torch.randn(6, 2, dit.num_tokens, dit.hidden_size, generator=g)
    common = dict(features=history, output=torch.zeros(6, dit.out_channels, 32, 32), x=x, previous_x=previous_x,
                  t=t, y=y, step=torch.zeros(6, dtype=torch.long))
    with torch.no_grad():
        plain_output, plain_features = drafter.propose(dit, DraftContext(**common))
        table = drafter.modulation(dit, dit.conditioning(t, y))
        output, features = drafter.propose(dit, DraftContext(**common, modulation=table, branches=2))
    torch.testing.assert_close(features, plain_features, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output, plain_output, rtol=1e-5, atol=1e-6)
    assert not torch.equal(features[0], features[1]), "the two rows of a state must differ in their features"
