"""The figure of a study's optimal-ablation fit (`jaxablate.study.optimal`): the damage of
each component's ablation at every Adam step, from its mean-ablation value (step 0) down to
Delta_OA, on the fit prompts. One of `jaxablate.report.plots.OPT_IN_FIGURES` ("optimal"),
drawn like the others (the Agg canvas of `canvas.new_figure`, no pyplot).

    optimal_figure(result, top=6) -> Figure | None
    plot_optimal(result, path, top=6) -> Path | None

Example:
    >>> plot_optimal(Study(model, task, ablation="optimal").run().to_dict(), "optimal.png")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxablate.report.canvas import figure_title, new_figure, save_figure

OBJECTIVE_LABELS = {"kl_to_clean": "KL(clean || ablated), mean over positions",
                    "loss": "next-token loss increase"}


def optimal_figure(result: Mapping[str, Any], top: int = 6) -> Any | None:
    """Damage (the objective's increase, e.g. KL in nats, on the fit prompts) against the
    Adam step, one line per component: the `top` components by Delta_mean (step 0) in
    colour with their kept step marked and named in the legend with Delta_mean -> Delta_OA,
    the others thin and grey. Log y axis when every damage is positive. None without an
    optimal section or curves."""
    section = result.get("optimal") or None
    if section is None or not section.get("history") or not section.get("components"):
        return None
    names = [str(n) for n in section["components"]]
    curves = np.array([[np.nan if v is None else float(v) for v in row]
                       for row in section["history"]], dtype=float)  # [component, step]
    best = [None if b is None else int(b) for b in
            section.get("best_step") or [None] * len(names)]
    start = np.nan_to_num(curves[:, 0], nan=-np.inf)
    chosen = [int(i) for i in np.argsort(-start, kind="stable")[:top]]
    steps = np.arange(curves.shape[1])
    fig = new_figure(7.0, 4.4)
    ax = fig.add_subplot()
    for i in range(len(names)):
        if i not in chosen:
            ax.plot(steps, curves[i], color="0.6", linewidth=0.7, alpha=0.5)
    colours = [f"C{k}" for k in range(10)]
    for k, i in enumerate(chosen):
        end = curves[i, best[i]] if best[i] is not None else curves[i, -1]
        ax.plot(steps, curves[i], color=colours[k % 10], linewidth=1.6,
                label=f"{names[i]}: {curves[i, 0]:.3g} → {end:.3g}")
        if best[i] is not None:
            ax.plot([best[i]], [end], "o", color=colours[k % 10], markersize=4)
    finite = curves[np.isfinite(curves)]
    if finite.size and (finite > 0).all():
        ax.set_yscale("log")
    objective = str(section.get("objective", "objective"))
    units = section.get("units") or ""
    what = OBJECTIVE_LABELS.get(objective, objective)
    ax.set_xlabel("Adam step (0: the mean-ablation values)")
    ax.set_ylabel(f"damage: {what}" + (f" ({units})" if units else ""))
    others = len(names) - len(chosen)
    ax.set_title(figure_title(result, "optimal ablation fit", with_ablation=False)
                 + f"\n{objective} on {section.get('n_fit_prompts', '?')} "
                 f"{section.get('fit_prompts', 'fit')} prompts, lr "
                 f"{section.get('learning_rate', '?')}; top {len(chosen)} by Δ_mean"
                 + (f", {others} more in grey" if others else ""), fontsize=9)
    ax.legend(fontsize=7, title="Δ_mean → Δ_OA", title_fontsize=7)
    return fig


def plot_optimal(result: Mapping[str, Any], path: str | os.PathLike,
                 top: int = 6) -> Path | None:
    """`optimal_figure` written to `path` as PNG; None without an optimal section.

    Example:
        >>> plot_optimal(result, "report/optimal.png")
    """
    fig = optimal_figure(result, top)
    return None if fig is None else save_figure(fig, path)
