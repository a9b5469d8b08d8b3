"""The figure of a study's ablation-type comparison (`result["ablation_comparison"]`): each
component's effect under zero / mean / resample / optimal ablation.

    ablation_types_figure(result, top=12) -> Figure | None
    plot_ablation_types(result, path, top=12) -> Path | None

Left: each other type's effects against the study's own (resample +- std over draws), the
diagonal, the `TOP_LABELS` points of largest |effect| named. Right: grouped bars of the
`top` components by rank, named on the axis.

Example:
    >>> fig = ablation_types_figure(study.run().to_dict())
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxablate.report.canvas import (
    as_float,
    figure_title,
    label_points,
    new_figure,
    result_meta,
    save_figure,
)

COLOURS = {"zero": "tab:orange", "mean": "tab:blue", "resample": "tab:green",
           "optimal": "tab:purple"}


def ranked_positions(result: Mapping[str, Any], names: Sequence[str]) -> list[int]:
    """Indices into `names` ordered by the single-ablation rank (unranked last)."""
    rank = {str(r.get("component")): r.get("rank") for r in result.get("single") or ()}
    return sorted(range(len(names)),
                  key=lambda i: (rank.get(names[i]) is None, rank.get(names[i]) or 0, i))


def ablation_types_figure(result: Mapping[str, Any], top: int = 12) -> Any | None:
    """The comparison of ablation types (see the module docstring); None without an
    ablation_comparison section."""
    section = result.get("ablation_comparison") or None
    if section is None or not section.get("components") or not section.get("effects"):
        return None
    names = [str(n) for n in section["components"]]
    effects = {t: np.array([as_float(v) for v in section["effects"][t]])
               for t in section.get("types") or section["effects"] if t in section["effects"]}
    std = np.array([as_float(v) for v in section.get("resample_std") or [None] * len(names)])
    with_std = bool(np.isfinite(std).any())
    base = result_meta(result).get("ablation")
    base = base if base in effects else next(iter(effects))
    metric = result_meta(result).get("metric", "the metric")
    fig = new_figure(11.0, 4.6)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    x = effects[base]
    others = [kind for kind in effects if kind != base]
    points_x, points_y, points_name = [], [], []
    for kind in others:
        y = effects[kind]
        yerr = np.nan_to_num(std) if kind == "resample" and with_std else None
        left.errorbar(x, y, yerr=yerr, fmt="o", markersize=4, capsize=2, label=kind,
                      color=COLOURS.get(kind))
        points_x.append(x)
        points_y.append(y)
        points_name += names
    shown, n_points = [], 0
    if others:
        flat_x, flat_y = np.concatenate(points_x), np.concatenate(points_y)
        shown = label_points(left, flat_x, flat_y, points_name)
        n_points = int((np.isfinite(flat_x) & np.isfinite(flat_y)).sum())
    span = np.concatenate([v[np.isfinite(v)] for v in effects.values()] + [np.zeros(1)])
    low, high = float(span.min()), float(span.max())
    left.plot([low, high], [low, high], color="black", linewidth=0.8, linestyle="--")
    left.set_xlabel(f"effect on {metric}, {base} ablation")
    other = f"{others[0]} ablation" if len(others) == 1 else "other ablation types"
    left.set_ylabel(f"effect on {metric}, {other}" + (
        " (± std over draws)" if "resample" in others and with_std else ""))
    spearman = section.get("spearman") or {}
    pairs = [f"{k} {float(v):.2f}" for k, v in spearman.items() if v is not None]
    text = ",\n".join(", ".join(pairs[i:i + 3]) for i in range(0, len(pairs), 3))  # 3 a line
    notes = [f"named: the top {len(shown)} by |effect|"] if len(shown) < n_points else []
    notes.append("dashed: equal effects")
    left.set_title(("Spearman: " + text + "\n" if text else "") + "; ".join(notes), fontsize=8)
    if len(others) > 1:
        left.legend(fontsize=8)

    order = ranked_positions(result, names)[:top]
    width = 0.8 / len(effects)
    for k, (kind, y) in enumerate(effects.items()):
        yerr = np.nan_to_num(std[order]) if kind == "resample" and with_std else None
        right.bar(np.arange(len(order)) + (k - (len(effects) - 1) / 2) * width,
                  np.nan_to_num(y[order]), width, yerr=yerr, capsize=2, label=kind,
                  color=COLOURS.get(kind))
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set_xticks(np.arange(len(order)), [names[i] for i in order], rotation=90, fontsize=8)
    right.set_xlabel(f"component (the top {len(order)} by rank)")
    right.set_ylabel(f"effect on {metric}")
    if "resample" in effects and with_std:
        right.set_title("resample: ± std over draws", fontsize=8)
    if len(effects) > 1:
        right.legend(fontsize=8, title="ablation", title_fontsize=8)
    fig.suptitle(figure_title(result, f"effects by ablation type ({', '.join(effects)})",
                              with_ablation=False), fontsize=9)
    return fig


def plot_ablation_types(result: Mapping[str, Any], path: str | os.PathLike,
                        top: int = 12) -> Path | None:
    """`ablation_types_figure` written to `path` as PNG; None without the section.

    Example:
        >>> plot_ablation_types(result, "report/ablation_types.png")
    """
    fig = ablation_types_figure(result, top)
    return None if fig is None else save_figure(fig, path)
