"""The figure of a study's pair interactions (`result["interactions"]`): the symmetric matrix
of interaction = joint effect - single a - single b over the top components, diverging
colours centred at 0. The diagonal is no pair: it is drawn hatched grey and carries each
component's single effect as text (outside the colour scale, so the singles neither read as
a zero interaction nor wash out the interactions' colours).

    interactions_figure(result) -> Figure | None
    plot_interactions(result, path) -> Path | None

Example:
    >>> fig = interactions_figure(study.run().to_dict())
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxablate.report.canvas import (
    LABEL_ALL,
    TOP_LABELS,
    annotate_cells,
    as_float,
    colour_limit,
    figure_title,
    heatmap,
    new_figure,
    result_meta,
    save_figure,
    top_by_magnitude,
)


def single_effects(result: Mapping[str, Any], names: list[str]) -> np.ndarray:
    """Each component's single effect [n] as the interactions used it (a pair's single_a /
    single_b), else from the single section; NaN where neither has it."""
    known = {str(r.get("component")): as_float(r.get("effect"))
             for r in result.get("single") or ()}
    for pair in (result.get("interactions") or {}).get("pairs") or ():
        for side in ("a", "b"):
            if pair.get(f"single_{side}") is not None:
                known[str(pair.get(side))] = as_float(pair[f"single_{side}"])
    return np.array([known.get(name, math.nan) for name in names])


def interactions_figure(result: Mapping[str, Any]) -> Any | None:
    """Heatmap [component, component] of pair interactions; values written below the
    diagonal (every pair when at most 36, else the `TOP_LABELS` largest |interaction|); the
    diagonal hatched grey with the single effects; backup candidates outlined when there are
    any. None without an interactions section."""
    section = result.get("interactions") or None
    if section is None or not section.get("components"):
        return None
    names = [str(n) for n in section["components"]]
    matrix = np.array([[as_float(v) for v in row] for row in section["matrix"]], dtype=float)
    n = len(names)
    np.fill_diagonal(matrix, np.nan)  # no pair: drawn apart, below
    size = min(3.0 + 0.45 * n, 14.0)
    fig = new_figure(size + 1.2, size + 0.4)
    ax = fig.add_subplot()
    limit = colour_limit(matrix)
    metric = result_meta(result).get("metric", "the metric")
    heatmap(ax, matrix, f"interaction: joint - single a - single b (effect on {metric})",
            aspect="equal")
    lower = np.where(np.tri(n, k=-1, dtype=bool), matrix, np.nan)
    pairs = [tuple(int(v) for v in cell) for cell in np.argwhere(np.isfinite(lower))]
    every = len(pairs) <= LABEL_ALL
    if not every:
        pairs = [tuple(int(v) for v in np.unravel_index(i, lower.shape))
                 for i in top_by_magnitude(lower, TOP_LABELS)]
    annotate_cells(ax, matrix, pairs, limit=limit)
    from matplotlib.patches import Rectangle

    singles = single_effects(result, names)
    for i in range(n):
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, facecolor="0.88", edgecolor="0.6",
                               hatch="///", linewidth=0.5))
        if np.isfinite(singles[i]) and n <= 16:
            ax.text(i, i, f"{singles[i]:.2g}", ha="center", va="center", fontsize=7,
                    style="italic", bbox={"facecolor": "white", "edgecolor": "none",
                                          "pad": 0.5, "alpha": 0.8})
    where = {name: i for i, name in enumerate(names)}
    backups = [(where[p["a"]], where[p["b"]]) for p in section.get("pairs") or ()
               if p.get("backup_candidate") and p.get("a") in where and p.get("b") in where]
    for i, j in backups:
        for r, c in ((i, j), (j, i)):
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="black",
                                   linewidth=2))
    step = max(1, math.ceil(n / 40))  # at most ~40 names per axis
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=8)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=8)
    ax.set_xlabel("component b")
    ax.set_ylabel("component a")
    shown = np.isfinite(singles).any() and n <= 16
    notes = ["diagonal (hatched): single effects" if shown else "diagonal (hatched): no pair"]
    if not every:
        notes.append(f"values: the top {TOP_LABELS} pairs by |interaction|")
    if backups:
        notes.append("outlined: backup candidates")
    ax.set_title(figure_title(result, "pair interactions") + "\n" + "; ".join(notes),
                 fontsize=9)
    return fig


def plot_interactions(result: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """`interactions_figure` written to `path` as PNG; None without an interactions section.

    Example:
        >>> plot_interactions(result, "report/interactions.png")
    """
    fig = interactions_figure(result)
    return None if fig is None else save_figure(fig, path)
