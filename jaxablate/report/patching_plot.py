"""The figure of the study's patching step (`jaxablate.study.patching`): a heatmap of the
restored fraction, one row per patched component, one column per position, with the
component's output patched at every position and along the direct path alone as two columns
on the right. One of `jaxablate.report.plots.FIGURES` ("patching"), drawn like the others
(the Agg canvas of `plots.new_figure`, no pyplot).

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

from jaxablate.report.plots import colour_limit, figure_title, new_figure, save_figure


def _floats(values: Any) -> np.ndarray:
    """A float array from JSON numbers (null: NaN)."""
    return np.array([[np.nan if v is None else float(v) for v in row] for row in values],
                    dtype=float)


def plot_patching(result: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Heatmap [component, position] of the restored fraction (denoising: 1 = the clean metric,
    0 = the counterfactual's), diverging colours centred at 0 and saturating at +-1 or the
    largest |value|; two more columns, split off by a line: "all" (every position patched)
    and "direct" (path patching to the final residual stream). Cells are annotated (2
    decimals; blank below 0.005) when there are at most 400. None without a patching
    section or patched components."""
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
    fig = new_figure(min(max(5.5, 3.0 + 0.32 * (seq + 2)), 18.0), min(2.0 + 0.4 * n, 12.0))
    ax = fig.add_subplot()
    limit = max(1.0, colour_limit(table))
    image = ax.imshow(np.ma.masked_invalid(table), cmap="RdBu_r", vmin=-limit, vmax=limit,
                      aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="restored (1 = clean, 0 = counterfactual)")
    if table.size <= 400:
        for (i, j), value in np.ndenumerate(table):
            if np.isfinite(value) and abs(value) >= 0.005:  # not float32 noise (1e-8)
                colour = "white" if abs(value) > 0.6 * limit else "black"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color=colour)
    ax.axvline(seq - 0.5, color="black", linewidth=1.5)
    every = max(1, -(-seq // 32))  # at most ~32 position labels
    ticks = list(range(0, seq, every)) + [seq, seq + 1]
    ax.set_xticks(ticks, [str(t) for t in ticks[:-2]] + [label for label, _ in extra],
                  fontsize=7)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("position (the component's output patched there alone) | all positions, "
                  "direct path")
    ax.set_ylabel("component")
    ax.set_title(figure_title(result, f"{section.get('direction', 'denoising')} patching")
                 + f"\nclean values into the counterfactual run; {section.get('metric', '')}",
                 fontsize=9)
    return save_figure(fig, path)
