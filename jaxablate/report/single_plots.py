"""The figures of a study's single-ablation section (`result["single"]`).

    single_heads_figure(result) -> Figure | None     layer x head heatmap of head effects
    single_layers_figure(result, top=20) -> Figure | None
                                                     MLP layers and the top neurons as bars
    plot_single_heads(result, path), plot_single_layers(result, path, top=20)
                                                     the same, written as PNG (None: no rows)

Notes on a figure ("* 95% CI excludes 0", "outlined: critical", the colours of the bars)
appear only when they distinguish something on it: an outline on every head, or on none,
says nothing, so neither is drawn nor noted.

Example:
    >>> fig = single_heads_figure(study.run().to_dict())
    >>> fig.axes[0].images[0].get_array()                 # [layer, head] effects, NaN masked
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxablate.report.canvas import (
    TOP_LABELS,
    annotate_cells,
    as_float,
    cells_to_label,
    colour_limit,
    effect_label,
    figure_title,
    heatmap,
    new_figure,
    result_meta,
    save_figure,
    significant,
)


def head_grid(result: Mapping[str, Any]) -> tuple[np.ndarray, list[Mapping[str, Any]]]:
    """The single-head effects as a [layer, head] grid (NaN: not ablated) and the head rows.

    Example:
        >>> grid, rows = head_grid(result)          # grid [n_layers, n_heads]
    """
    rows = [r for r in result.get("single") or () if r.get("kind") == "head"]
    if not rows:
        return np.zeros((0, 0)), rows
    config = result_meta(result).get("model_config") or {}
    n_layers = int(config.get("n_layers") or 1 + max(int(r["layer"]) for r in rows))
    n_heads = int(config.get("n_heads") or 1 + max(int(r["index"]) for r in rows))
    grid = np.full((n_layers, n_heads), np.nan)
    for r in rows:
        grid[int(r["layer"]), int(r["index"])] = as_float(r.get("effect"))
    return grid, rows


def single_heads_figure(result: Mapping[str, Any]) -> Any | None:
    """Heatmap [layer, head] of single-head effects, diverging colours centred at 0.

    Values are written in every cell of a small grid (at most 36 heads), else in the
    `TOP_LABELS` heads of largest |effect|; "*" marks a CI that excludes 0; an outline marks
    critical heads when some heads are critical and others not; grey: not ablated.
    None without head rows.
    """
    grid, rows = head_grid(result)
    if not rows:
        return None
    n_layers, n_heads = grid.shape
    fig = new_figure(min(max(5.0, 2.5 + 0.6 * n_heads), 16.0), min(2.5 + 0.45 * n_layers, 12.0))
    ax = fig.add_subplot()
    limit = colour_limit(grid)
    heatmap(ax, grid, effect_label(result))
    cells, every = cells_to_label(grid)
    stars = {(int(r["layer"]), int(r["index"])): "*" for r in rows if significant(r)}
    stars = {cell: star for cell, star in stars.items() if cell in set(cells)}
    annotate_cells(ax, grid, cells, limit=limit, suffix=stars)
    critical = [r for r in rows if r.get("critical")]
    notes = []
    if not every:
        notes.append(f"values: the top {TOP_LABELS} by |effect|")
    if stars:
        notes.append("* 95% CI excludes 0")
    if 0 < len(critical) < len(rows):
        from matplotlib.patches import Rectangle

        for r in critical:
            ax.add_patch(Rectangle((int(r["index"]) - 0.5, int(r["layer"]) - 0.5), 1, 1,
                                   fill=False, edgecolor="black", linewidth=2))
        notes.append("outlined: critical")
    elif critical and len(rows) > 1:
        notes.append(f"all {len(rows)} heads critical")
    if np.isnan(grid).any():
        notes.append("grey: no value")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_title(figure_title(result, "single-head ablation")
                 + ("\n" + "; ".join(notes) if notes else ""), fontsize=9)
    return fig


def plot_single_heads(result: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """`single_heads_figure` written to `path` as PNG; None without head rows.

    Example:
        >>> plot_single_heads(result, "report/single_heads.png")
    """
    fig = single_heads_figure(result)
    return None if fig is None else save_figure(fig, path)


_BAR_COLOURS = (("tab:red", "red: critical"), ("tab:blue", "blue: 95% CI excludes 0"),
                ("0.6", "grey: neither"))


def _bar_colour(row: Mapping[str, Any]) -> str:
    return "tab:red" if row.get("critical") else "tab:blue" if significant(row) else "0.6"


def _bars(ax: Any, rows: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> bool:
    """Bars of the rows' effects with 95% CIs; whether any CI was drawn."""
    effect = np.array([as_float(r.get("effect")) for r in rows])
    low = np.array([as_float(r.get("ci_low")) for r in rows])
    high = np.array([as_float(r.get("ci_high")) for r in rows])
    err = np.stack([np.clip(effect - low, 0, None), np.clip(high - effect, 0, None)])
    x = np.arange(len(rows))
    ax.bar(x, np.nan_to_num(effect), yerr=np.nan_to_num(err),
           color=[_bar_colour(r) for r in rows], capsize=3)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, labels, rotation=90 if len(rows) > 12 else 0, fontsize=8)
    return bool(np.isfinite(err).any())


def single_layers_figure(result: Mapping[str, Any], top: int = 20) -> Any | None:
    """Bars with 95% CIs: one per MLP layer, and the `top` neurons by rank (= by |effect|)
    (red: critical, blue: CI excludes 0, grey: neither; the colours used are named unless
    every bar is grey).
    None without MLP or neuron rows."""
    single = result.get("single") or ()
    mlps = sorted((r for r in single if r.get("kind") == "mlp"), key=lambda r: int(r["layer"]))
    neurons = [r for r in single if r.get("kind") == "neuron"]
    neurons = sorted(neurons, key=lambda r: (r.get("rank") is None, r.get("rank") or 0))[:top]
    panels = [p for p in (("MLP layer", mlps),
                          (f"neuron (layer.index), the top {len(neurons)} by |effect|", neurons))
              if p[1]]
    if not panels:
        return None
    fig = new_figure(max(6.0, 0.3 * max(len(p[1]) for p in panels) + 2.0), 3.2 * len(panels))
    with_ci = False
    for i, (what, rows) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        with_ci |= _bars(ax, rows, [str(r["component"]) for r in rows])
        ax.set_ylabel(effect_label(result), fontsize=8)
        ax.set_xlabel(what, fontsize=8)
    used = {_bar_colour(r) for _, rows in panels for r in rows}
    # Grey alone distinguishes nothing; one other colour still says what every bar is.
    notes = [text for colour, text in _BAR_COLOURS if colour in used] if used != {"0.6"} else []
    notes += ["bars: 95% CI"] if with_ci else []
    fig.suptitle(figure_title(result, "single ablation")
                 + ("\n" + ", ".join(notes) if notes else ""), fontsize=9)
    return fig


def plot_single_layers(result: Mapping[str, Any], path: str | os.PathLike,
                       top: int = 20) -> Path | None:
    """`single_layers_figure` written to `path` as PNG; None without MLP or neuron rows.

    Example:
        >>> plot_single_layers(result, "report/single_layers.png")
    """
    fig = single_layers_figure(result, top)
    return None if fig is None else save_figure(fig, path)
