"""The bar chart of `fastseg benchmark RAW_DATASET`: fastseg / nnU-Net per stage, as a PNG.

Two bars per stage, from 1 (the line where both tools are equal) up or down on a logarithmic axis:
throughput (fastseg's cases, samples or iterations per second over nnU-Net's: above 1, fastseg is
faster) and peak memory (fastseg's peak PSS over nnU-Net's: below 1, fastseg needs less). A stage
without nnU-Net's figure has no bar. Without any ratio (fastseg alone), the chart shows fastseg's
wall time per stage instead. Drawn with matplotlib's Agg canvas (no display, no global backend
switch) and written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path


def plot_ratios(
    rows: Sequence[tuple[str, float | None, float | None, float | None]],
    path: str | os.PathLike,
    title: str,
) -> Path:
    """Writes the chart.

    Args:
        rows: per stage (name, throughput ratio, memory ratio, fastseg's wall seconds); a ratio is
            None where it is unknown.
        path: the .png file (its folder must exist).
        title: the chart's title (dataset, configuration, workers).

    Returns:
        The path written.

    Raises:
        ValueError: no rows, or a path that does not end in .png.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from fastseg.io.atomic import atomic_path

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"the chart is written as PNG; give a file name ending in .png, got {path}")
    if not rows:
        raise ValueError("no stage to draw: the benchmark ran no stage")
    names = [r[0] for r in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(max(5.0, 1.4 + 1.1 * len(rows)), 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if any(r[1] is not None or r[2] is not None for r in rows):
        width = 0.38
        drawn = []
        for offset, index, label, colour in ((-width / 2, 1, "throughput (>1: fastseg faster)", "tab:blue"),
                                             (width / 2, 2, "peak memory (<1: fastseg smaller)", "tab:orange")):
            values = [r[index] for r in rows]
            shown = [(i, v) for i, v in enumerate(values) if v is not None and v > 0 and math.isfinite(v)]
            if not shown:
                continue
            # Each bar grows from 1 (equal) up to its ratio, or down to it.
            ax.bar([x[i] + offset for i, _ in shown], [v - 1.0 for _, v in shown], width, bottom=1.0, label=label, color=colour)
            drawn += [v for _, v in shown]
            for i, v in shown:
                ax.annotate(f"{v:.2g}x", (x[i] + offset, v), ha="center",
                            va="bottom" if v >= 1 else "top", fontsize=8, xytext=(0, 2 if v >= 1 else -2),
                            textcoords="offset points")
        ax.set_yscale("log")
        low, high = min(drawn + [1.0]), max(drawn + [1.0])
        ax.set_ylim(low / 2.5, high * 2.5)  # room for the labels above and below the bars
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel("fastseg / nnU-Net")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    else:
        walls = [r[3] if r[3] is not None else 0.0 for r in rows]
        ax.bar(x, walls, 0.6, color="tab:blue")
        ax.set_ylabel("fastseg wall time (s)")
    ax.set_xticks(x, names)
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.set_title(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
