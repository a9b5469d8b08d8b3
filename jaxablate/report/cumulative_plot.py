"""The figure of a study's cumulative ablation (`result["cumulative"]`): the metric as more
components are ablated together, from the clean model, with "recovered" on the right axis.

    cumulative_figure(result) -> Figure | None
    plot_cumulative(result, path) -> Path | None

Example:
    >>> fig = cumulative_figure(study.run().to_dict())
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxablate.report.canvas import as_float, figure_title, new_figure, result_meta, save_figure
from jaxablate.report.summary import cumulative_order


def cumulative_figure(result: Mapping[str, Any]) -> Any | None:
    """The metric as more components are ablated together (in `cumulative.order`), from the
    clean model, with a +- s.e.m. band, the clean baseline, the cliff, and "recovered" (1 =
    clean, 0 = all ablated) on the right axis. None without a cumulative section."""
    cumulative = result.get("cumulative") or None
    if cumulative is None or not cumulative.get("fractions"):
        return None
    x = np.array([as_float(v) for v in cumulative["fractions"]])
    y = np.array([as_float(v) for v in cumulative["metric"]])
    sem = np.array([as_float(v) for v in cumulative.get("sem") or [None] * len(y)])
    recovered = np.array([as_float(v) for v in cumulative.get("recovered") or [None] * len(y)])
    baseline = result.get("baseline") or {}
    if baseline.get("mean") is not None and x[0] > 0:  # start at the clean model
        x, y = np.r_[0.0, x], np.r_[float(baseline["mean"]), y]
        sem, recovered = np.r_[as_float(baseline.get("sem")), sem], np.r_[1.0, recovered]
    fig = new_figure(6.5, 4.0)
    ax = fig.add_subplot()
    order = cumulative_order(result)
    ax.plot(x, y, marker="o", markersize=3, color="tab:blue",
            label="ablated together" + (f" ({order})" if order else ""))
    band = np.isfinite(sem)
    if band.any():
        ax.fill_between(x, y - np.where(band, sem, 0), y + np.where(band, sem, 0),
                        color="tab:blue", alpha=0.25, linewidth=0, label="± s.e.m.")
    if baseline.get("mean") is not None:
        ax.axhline(float(baseline["mean"]), color="black", linestyle="--", linewidth=1,
                   label="clean baseline")
    cliff = cumulative.get("cliff") or {}
    if cliff.get("fraction") is not None:
        drop = cliff.get("drop")
        text = f"cliff: {cliff.get('n_ablated')} ablated" + (
            f", drop {float(drop):.3g}" if drop is not None else "")
        ax.axvline(float(cliff["fraction"]), color="tab:red", linewidth=1.2, label=text)
    _recovered_axis(ax, y, recovered)
    ax.set_xlabel("fraction of components ablated")
    ax.set_ylabel(f"{result_meta(result).get('metric', 'metric')} (mean over prompts)")
    ax.set_title(figure_title(result, "cumulative ablation"), fontsize=9)
    ax.legend(fontsize=8)
    return fig


def _recovered_axis(ax: Any, metric: np.ndarray, recovered: np.ndarray) -> None:
    """A right-hand axis in units of `recovered`, an affine function of the metric."""
    ok = np.isfinite(metric) & np.isfinite(recovered)
    if ok.sum() < 2 or np.ptp(metric[ok]) == 0:
        return
    slope, offset = np.polyfit(metric[ok], recovered[ok], 1)
    if not np.isfinite(slope) or abs(slope) < 1e-12:
        return
    axis = ax.secondary_yaxis("right", functions=(lambda m: slope * m + offset,
                                                  lambda r: (r - offset) / slope))
    axis.set_ylabel("recovered (1 = clean, 0 = all ablated)")


def plot_cumulative(result: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """`cumulative_figure` written to `path` as PNG; None without a cumulative section.

    Example:
        >>> plot_cumulative(result, "report/cumulative.png")
    """
    fig = cumulative_figure(result)
    return None if fig is None else save_figure(fig, path)
