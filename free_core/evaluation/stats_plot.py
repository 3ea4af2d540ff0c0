"""Pictures of sampling runs for the canvas: a run's plot (acceptance per step, steps advanced per round) and a
side-by-side table of several runs, as RGB image tensors, readable at 100% zoom.

Drawn with Pillow (present wherever ComfyUI runs; imported only when a picture is drawn), no plotting library.
"""

from __future__ import annotations

import torch

from ..engine.stats import SamplingStats, speed_in_words

WIDTH, PANEL_HEIGHT, MARGIN, TITLE_HEIGHT = 720, 170, 44, 64
ACCEPT_COLOUR, ADVANCE_COLOUR, AXIS_COLOUR, MUTED = (52, 120, 246), (240, 130, 40), (40, 40, 40), (150, 150, 150)
TITLE_SIZE, LABEL_SIZE = 24, 16


def stats_text(stats: SamplingStats) -> str:
    """DiT calls saved, acceptance and wall time, then the full summary."""
    saved = stats.num_steps - stats.sequential_dit_calls
    head = f"DiT calls saved: {saved} of {stats.num_steps} steps ({stats.call_reduction():.2f}x fewer sequential calls)"
    return head + "\n" + stats.summary()


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _to_tensor(image) -> torch.Tensor:
    width, height = image.size
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(height, width, 3)
    return pixels.float() / 255.0


def render_stats_plot(stats: SamplingStats) -> torch.Tensor:
    """(H, W, 3) float image in [0, 1]: a two-line title, acceptance per step (top), steps advanced per round."""
    from PIL import Image, ImageDraw

    height = TITLE_HEIGHT + 2 * (PANEL_HEIGHT + MARGIN) + 10
    image = Image.new("RGB", (WIDTH, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    title = f"{stats.sequential_dit_calls} DiT calls for {stats.num_steps} steps ({stats.call_reduction():.2f}x fewer)"
    detail = f"{stats.sampler}, acceptance {stats.acceptance_rate:.2f}, {stats.wall_time_s:.2f} s"
    draw.text((MARGIN // 2, 6), title, fill=AXIS_COLOUR, font=_font(TITLE_SIZE))
    draw.text((MARGIN // 2, 6 + TITLE_SIZE + 6), detail, fill=MUTED, font=_font(LABEL_SIZE))
    top = TITLE_HEIGHT + MARGIN // 2
    _acceptance_panel(draw, stats, top)
    _advance_panel(draw, stats, top + PANEL_HEIGHT + MARGIN)
    return _to_tensor(image)


def _axes(draw, top: int, label: str) -> tuple[int, int, int, int]:
    left, right, bottom = MARGIN, WIDTH - MARGIN // 2, top + PANEL_HEIGHT
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS_COLOUR, width=2)
    draw.text((left + 4, top - LABEL_SIZE - 2), label, fill=AXIS_COLOUR, font=_font(LABEL_SIZE))
    return left, right, top, bottom


def _acceptance_panel(draw, stats: SamplingStats, top: int) -> None:
    font = _font(LABEL_SIZE)
    left, right, top, bottom = _axes(draw, top, "acceptance per step")
    draw.text((4, top), "1", fill=AXIS_COLOUR, font=font)
    draw.text((4, bottom - LABEL_SIZE), "0", fill=AXIS_COLOUR, font=font)
    rates = list(reversed(stats.acceptance_per_step))  # index 0 is the last step: show sampling order
    if not any(rate is not None for rate in rates):
        draw.text((left + 12, (top + bottom) // 2), "no drafts (plain sampler)", fill=MUTED, font=font)
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
    draw.text((left, bottom + 4), "step 1", fill=AXIS_COLOUR, font=font)
    draw.text((right - 80, bottom + 4), f"step {len(rates)}", fill=AXIS_COLOUR, font=font)


def _advance_panel(draw, stats: SamplingStats, top: int) -> None:
    font = _font(LABEL_SIZE)
    left, right, top, bottom = _axes(draw, top, f"steps advanced per round (mean {stats.mean_advance:.2f})")
    histogram = {int(k): v for k, v in stats.advance_histogram.items() if v}
    if not histogram:
        draw.text((left + 12, (top + bottom) // 2), "no rounds", fill=MUTED, font=font)
        return
    largest_advance, largest_count = max(histogram), max(histogram.values())
    width = (right - left - 2) / largest_advance
    for advance in range(1, largest_advance + 1):
        count = histogram.get(advance, 0)
        x0, x1 = left + 1 + (advance - 1) * width + 2, left + advance * width - 2
        if count:
            y = bottom - max(1.0, count / largest_count * (PANEL_HEIGHT - 2 * LABEL_SIZE))
            draw.rectangle([x0, y, max(x0, x1), bottom - 1], fill=ADVANCE_COLOUR)
            draw.text((x0, y - LABEL_SIZE - 2), str(count), fill=AXIS_COLOUR, font=font)
        draw.text(((x0 + x1) / 2 - 4, bottom + 4), str(advance), fill=AXIS_COLOUR, font=font)


COMPARISON_HEADER = ("run", "DiT calls", "fewer", "acceptance", "wall clock", "vs baseline")


def comparison_rows(runs: dict[str, SamplingStats]) -> list[tuple[str, ...]]:
    """One row per run: sequential DiT calls, how many times fewer than steps, acceptance, wall time, and the wall
    clock against the first run (the baseline) with its direction in words."""
    baseline = next(iter(runs.values()))
    rows = [COMPARISON_HEADER]
    for name, stats in runs.items():
        drafted = sum(stats.proposed_per_step) > 0
        ratio = baseline.wall_time_s / stats.wall_time_s if stats.wall_time_s else 0.0
        versus = "-" if stats is baseline else speed_in_words(ratio)
        rows.append((name, f"{stats.sequential_dit_calls} / {stats.num_steps}", f"{stats.call_reduction():.2f}x",
                     f"{stats.acceptance_rate:.2f}" if drafted else "-", f"{stats.wall_time_s:.2f} s", versus))
    return rows


def comparison_text(runs: dict[str, SamplingStats]) -> str:
    """One line per run, readable without column alignment (a node's text collapses spaces)."""
    lines = []
    for name, calls, fewer, acceptance, wall, versus in comparison_rows(runs)[1:]:
        line = f"{name}: {calls} DiT calls" + (f" ({fewer} fewer)" if fewer != "1.00x" else "")
        line += f", acceptance {acceptance}" if acceptance != "-" else ""
        line += f", {wall}" + (f", {versus} than the baseline" if versus != "-" else "")
        lines.append(line)
    return "\n".join(lines)


def render_comparison(runs: dict[str, SamplingStats]) -> torch.Tensor:
    """(H, W, 3) float image in [0, 1]: the comparison table, header in bold colour."""
    from PIL import Image, ImageDraw

    rows = comparison_rows(runs)
    font, row_height, column_width = _font(20), 34, 140
    image = Image.new("RGB", (16 + column_width * len(rows[0]) + 40, 16 + row_height * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            x = 12 + c * column_width + (40 if c else 0)
            draw.text((x, 10 + r * row_height), cell, fill=ACCEPT_COLOUR if r == 0 else AXIS_COLOUR, font=font)
        if r == 0:
            draw.line([(8, row_height + 4), (image.size[0] - 8, row_height + 4)], fill=MUTED, width=2)
    return _to_tensor(image)
