"""The figure of the study's patching step (`jaxablate.study.patching`): a heatmap of the
restored fraction, one row per patched component, one column per position, with the
component's output patched at every position and along the direct path alone as two columns
on the right. One of `jaxablate.report.plots.OPT_IN_FIGURES` ("patching"), drawn like the
others (the Agg canvas of `canvas.new_figure`, no pyplot).

    patching_figure(result) -> Figure | None
    plot_patching(result, path) -> Path | None

Example:
    >>> plot_patching(study.run(steps=STEPS).to_dict(), "report/patching.png")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxablate.report.canvas import (
    TOP_LABELS,
    annotate_cells,
    cells_to_label,
    colour_limit,
    figure_title,
    heatmap,
    new_figure,
    save_figure,
)


def _floats(values: Any) -> np.ndarray:
    """A float array from JSON numbers (null: NaN)."""
    return np.array([[np.nan if v is None else float(v) for v in row] for row in values],
                    dtype=float)


def patching_figure(result: Mapping[str, Any]) -> Any | None:
    """Heatmap [component, position] of the restored fraction (denoising: 1 = the clean metric,
    0 = the counterfactual's), diverging colours centred at 0 and saturating at +-1 or the
    largest |value|; two more columns, split off by a line: "all" (every position patched)
    and "direct" (path patching to the final residual stream). Values (2 decimals) are
    written in every cell of a table of at most 36, else in the `TOP_LABELS` cells of
    largest |value|. None without a patching section or patched components."""
    section = result.get("patching") or None
    if section is None or not section.get("components") or not section.get("by_position"):
        return None
    names = [str(n) for n in section["components"]]
    grid = _floats(section["by_position"]["restored"])
    extra = [(label, section.get(part) or {}) for label, part in
             (("all", "all_positions"), ("direct", "direct"))]
    columns = [np.array([np.nan if v is None else float(v) for v in
                         (values.get("restored") or [None] * len(names))]) for _, values in extra]
    table = np.concatenate([grid, np.stack(columns, axis=1)], axis=1)
    n, seq = grid.shape
    fig = new_figure(min(max(5.5, 3.0 + 0.32 * (seq + 2)), 18.0), min(2.4 + 0.4 * n, 12.0))
    ax = fig.add_subplot()
    limit = max(1.0, colour_limit(table))
    heatmap(ax, table, "restored (1 = clean, 0 = counterfactual)", limit=limit)
    cells, every = cells_to_label(table)
    cells = [(i, j) for i, j in cells if abs(table[i, j]) >= 0.005]  # not float32 noise (1e-8)
    annotate_cells(ax, table, cells, limit=limit, fmt="{:.2f}", fontsize=6.0)
    ax.axvline(seq - 0.5, color="black", linewidth=1.5)
    every_tick = max(1, -(-seq // 32))  # at most ~32 position labels
    ticks = list(range(0, seq, every_tick)) + [seq, seq + 1]
    ax.set_xticks(ticks, [str(t) for t in ticks[:-2]] + [label for label, _ in extra],
                  fontsize=7)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("position (the component's output patched there alone) | all positions, "
                  "direct path")
    ax.set_ylabel("component")
    notes = [f"clean values into the counterfactual run; {section.get('metric', '')}"]
    if not every:
        notes.append(f"values: the top {TOP_LABELS} by |restored|")
    ax.set_title(figure_title(result, f"{section.get('direction', 'denoising')} patching",
                              with_ablation=False) + "\n" + "; ".join(notes), fontsize=9)
    return fig


def plot_patching(result: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """`patching_figure` written to `path` as PNG; None without a patching section.

    Example:
        >>> plot_patching(result, "report/patching.png")
    """
    fig = patching_figure(result)
    return None if fig is None else save_figure(fig, path)
