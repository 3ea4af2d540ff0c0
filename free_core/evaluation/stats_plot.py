"""Plots of a sampling run: acceptance per step and steps advanced per round, as an RGB image tensor.

Drawn with Pillow (present wherever ComfyUI runs; imported only when a plot is drawn), no plotting library.
"""

from __future__ import annotations

import torch

from ..engine.stats import SamplingStats

WIDTH, PANEL_HEIGHT, MARGIN = 640, 150, 40
ACCEPT_COLOUR, ADVANCE_COLOUR, AXIS_COLOUR, MUTED = (52, 120, 246), (240, 130, 40), (60, 60, 60), (170, 170, 170)


def stats_text(stats: SamplingStats) -> str:
    """DiT calls saved, acceptance and wall time, then the full summary."""
    saved = stats.num_steps - stats.sequential_dit_calls
    head = f"DiT calls saved: {saved} of {stats.num_steps} steps ({stats.call_reduction():.2f}x fewer sequential calls)"
    return head + "\n" + stats.summary()


def render_stats_plot(stats: SamplingStats) -> torch.Tensor:
    """(H, W, 3) float image in [0, 1]: acceptance per step (top) and steps advanced per round (bottom)."""
    from PIL import Image, ImageDraw

    height = 3 * MARGIN + 2 * PANEL_HEIGHT + 30
    image = Image.new("RGB", (WIDTH, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    title = (f"{stats.sampler}: {stats.sequential_dit_calls} DiT calls for {stats.num_steps} steps "
             f"({stats.call_reduction():.2f}x), acceptance {stats.acceptance_rate:.2f}, {stats.wall_time_s:.2f} s")
    draw.text((MARGIN // 2, 8), title, fill=AXIS_COLOUR)

    top = MARGIN + 10
    _acceptance_panel(draw, stats, top)
    _advance_panel(draw, stats, top + PANEL_HEIGHT + MARGIN + 10)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(height, WIDTH, 3)
    return pixels.float() / 255.0


def _axes(draw, top: int, label: str) -> tuple[int, int, int, int]:
    left, right, bottom = MARGIN, WIDTH - MARGIN // 2, top + PANEL_HEIGHT
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS_COLOUR)
    draw.text((left + 4, top - 14), label, fill=AXIS_COLOUR)
    return left, right, top, bottom


def _acceptance_panel(draw, stats: SamplingStats, top: int) -> None:
    left, right, top, bottom = _axes(draw, top, "acceptance of drafted transitions per step (first step left)")
    draw.text((4, top - 4), "1.0", fill=AXIS_COLOUR)
    draw.text((4, bottom - 8), "0.0", fill=AXIS_COLOUR)
    rates = list(reversed(stats.acceptance_per_step))  # index 0 is the last step: show sampling order
    if not any(rate is not None for rate in rates):
        draw.text((left + 12, (top + bottom) // 2), "no drafted transitions (plain sampler)", fill=MUTED)
        return
    width = (right - left - 2) / max(1, len(rates))
    for k, rate in enumerate(rates):
        x0 = left + 1 + k * width
        x1 = max(x0, x0 + width - 1)
        if rate is None:
            draw.line([(x0, bottom - 2), (x1, bottom - 2)], fill=MUTED)
        else:
            height = max(1.0, rate * (PANEL_HEIGHT - 4))
            draw.rectangle([x0, bottom - height, x1, bottom - 1], fill=ACCEPT_COLOUR)
    draw.text((left, bottom + 4), "step 1", fill=AXIS_COLOUR)
    draw.text((right - 60, bottom + 4), f"step {len(rates)}", fill=AXIS_COLOUR)


def _advance_panel(draw, stats: SamplingStats, top: int) -> None:
    left, right, top, bottom = _axes(draw, top, "steps advanced per round (all samples), mean "
                                     f"{stats.mean_advance:.2f}")
    histogram = {int(k): v for k, v in stats.advance_histogram.items() if v}
    if not histogram:
        draw.text((left + 12, (top + bottom) // 2), "no rounds", fill=MUTED)
        return
    largest_advance, largest_count = max(histogram), max(histogram.values())
    width = (right - left - 2) / largest_advance
    for advance in range(1, largest_advance + 1):
        count = histogram.get(advance, 0)
        x0, x1 = left + 1 + (advance - 1) * width + 2, left + advance * width - 2
        if count:
            y = bottom - max(1.0, count / largest_count * (PANEL_HEIGHT - 18))
            draw.rectangle([x0, y, max(x0, x1), bottom - 1], fill=ADVANCE_COLOUR)
            draw.text((x0, y - 12), str(count), fill=AXIS_COLOUR)
        draw.text(((x0 + x1) / 2 - 3, bottom + 4), str(advance), fill=AXIS_COLOUR)
