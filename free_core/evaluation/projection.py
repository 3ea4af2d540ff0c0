"""Project wall-clock speedups from measured acceptance and a batch-cost curve.

A run's cost is sum over rounds of cost(rows in that round's verification) plus its drafting passes; the
baseline's is steps x cost(rows of one state). On this CPU the curve is measured and the projection can
be checked against the measured ratio. For DiT-XL/2 on a GPU we have no GPU here: the curve is a roofline
model with stated assumptions (`GpuAssumptions`), labelled as a projection; a CUDA run of the bench
measures its own curve instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..engine.cost import interpolate_cost
from ..engine.stats import SamplingStats


def projected_speedup(stats: SamplingStats, curve: dict[int, float], branches: int = 1, draft_cost_ratio: float = 0.0) -> float:
    """Baseline time / speculative time for the rounds recorded in `stats` under the cost `curve`."""
    one_state = interpolate_cost(curve, stats.batch_size * branches)
    baseline = stats.num_steps * one_state
    drafting = draft_cost_ratio * one_state * sum(stats.draft_lengths)
    speculative = sum(interpolate_cost(curve, states * branches) for states in stats.states_per_round) + drafting
    return baseline / speculative


@dataclass(frozen=True)
class GpuAssumptions:
    """A roofline for one DiT forward on a GPU: max(compute, weight traffic) + per-forward launch overhead."""

    name: str = "A100-80GB, bf16"
    peak_tflops: float = 312.0
    utilisation: float = 0.5  # sustained fraction of peak in large matmuls
    bandwidth_gbs: float = 2000.0
    launch_overhead_ms: float = 1.5  # ~28 blocks x ~10 kernels x ~5 us

    def to_dict(self) -> dict:
        return asdict(self)


# Forward GFLOPs per image from the DiT paper (Peebles & Xie 2023, Table 4); 675M parameters.
DIT_XL2_GFLOPS = {256: 118.6, 512: 524.6}
DIT_XL2_PARAMETERS = 675_129_632


def roofline_curve(resolution: int, assumptions: GpuAssumptions = GpuAssumptions(), max_rows: int = 128) -> dict[int, float]:
    """Seconds per forward of DiT-XL/2 at `resolution` for 1..max_rows rows under the roofline assumptions."""
    flops = DIT_XL2_GFLOPS[resolution] * 1e9
    weight_bytes = 2 * DIT_XL2_PARAMETERS
    curve = {}
    for rows in range(1, max_rows + 1):
        compute = rows * flops / (assumptions.peak_tflops * 1e12 * assumptions.utilisation)
        memory = weight_bytes / (assumptions.bandwidth_gbs * 1e9)
        curve[rows] = max(compute, memory) + assumptions.launch_overhead_ms / 1e3
    return curve
