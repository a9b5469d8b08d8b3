"""The figure of a study's gradient screening (`result["screening"]`): the screening estimate
of every component against its exact single-ablation effect, with the diagonal y = x.

    screening_figure(result, labels=12) -> Figure | None
    plot_screening(result, path, labels=12) -> Path | None

Hundreds of components make hundreds of points: only the `labels` largest by |exact effect|
are named (`canvas.label_points`).

Example:
    >>> fig = screening_figure(study.run().to_dict())
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxablate.report.canvas import (
    TOP_LABELS,
    as_float,
    effect_label,
    figure_title,
    label_points,
    new_figure,
    save_figure,
)


def screening_figure(result: Mapping[str, Any], labels: int = TOP_LABELS) -> Any | None:
    """Scatter of the screening estimate (x) against the exact single-ablation effect (y)
    for every component whose exact effect is known; verified top-k filled, the rest
    hollow, failures in red, the `labels` largest by |exact| named; y = x dashed.
    None without a screening section or a component known both ways."""
    section = result.get("screening") or None
    if section is None or not section.get("components"):
        return None
    names = [str(n) for n in section["components"]]
    x = np.array([as_float(v) for v in section.get("estimated_effect") or ()])
    exact = section.get("exact_effect_all") or section.get("exact_effect") or ()
    y = np.array([as_float(v) for v in exact])
    verified = np.array([bool(v) for v in section.get("verified") or [False] * len(names)])
    fails = np.array([bool(v) for v in section.get("fails") or [False] * len(names)])
    known = np.isfinite(x) & np.isfinite(y)
    if not known.any():
        return None
    fig = new_figure(5.4, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    rest = known & ~verified
    if rest.any():
        ax.scatter(x[rest], y[rest], s=14, facecolors="none", edgecolors="tab:gray",
                   label="not in the top k")
    for sel, colour, label in ((known & verified & ~fails, "tab:blue", "verified"),
                               (known & fails, "tab:red", "verified, estimate fails")):
        if sel.any():
            ax.scatter(x[sel], y[sel], s=22, color=colour, label=label)
    span = np.concatenate([x[known], y[known], np.zeros(1)])
    low, high = float(span.min()), float(span.max())
    ax.plot([low, high], [low, high], color="black", linewidth=0.8, linestyle="--")
    shown = label_points(ax, np.where(known, x, np.nan), y, names, labels)
    method = {"ig": f"integrated gradients, {section.get('steps')} steps",
              "grad": "gradient at the clean model"}.get(section.get("method"), "estimate")
    ax.set_xlabel(f"screening estimate of the effect ({method})")
    ax.set_ylabel("exact " + effect_label(result))
    rho = section.get("spearman_all")
    rho = section.get("spearman_top_k") if rho is None else rho
    notes = [f"Spearman {float(rho):.2f}"] if rho is not None else []
    if len(shown) < int(known.sum()):
        notes.append(f"named: the top {len(shown)} by |exact effect|")
    notes.append("dashed: estimate = exact")
    ax.set_title(figure_title(result, "screening vs exact") + "\n" + "; ".join(notes),
                 fontsize=9)
    ax.legend(fontsize=7)
    return fig


def plot_screening(result: Mapping[str, Any], path: str | os.PathLike,
                   labels: int = TOP_LABELS) -> Path | None:
    """`screening_figure` written to `path` as PNG; None without a screening section.

    Example:
        >>> plot_screening(result, "report/screening.png")
    """
    fig = screening_figure(result, labels)
    return None if fig is None else save_figure(fig, path)
