"""Figures of a study's result dict (`StudyResult.to_dict()`), as PNG files: one module per
section of the result, this one the index and `plot_all`.

  single_heads       layer x head heatmap of single-head effects        (single_plots.py)
  single_layers      MLP layers (and the top neurons) as bars, 95% CIs  (single_plots.py)
  screening          screening estimate vs exact effect per component   (screening_plot.py)
  cumulative         metric vs fraction ablated, cliff, recovered       (cumulative_plot.py)
  interactions       pair interaction matrix, singles on the diagonal   (interactions_plot.py)
  ablation_types     zero / mean / resample / optimal effects           (comparison_plot.py)
  patching, optimal  restored fraction by position; optimal ablation's damage per Adam step
                     (patching_plot.py, optimal_plot.py; sections only some runs have)

Each `plot_NAME(result, path)` returns the path it wrote, or None when its section is absent
(or holds no component of its kind); each `NAME_figure(result)` returns the Figure itself.
Every figure has a title naming the model, the task and the ablation, labelled axes, and a
legend or note only when it distinguishes something; a figure with many points names only
the largest by |value| (`canvas`). matplotlib is imported inside the functions and drives
its Agg canvas directly (no pyplot, no global backend switch, no figure left open), so
`import jaxablate` stays light and plotting never touches a user's interactive session.

Example:
    >>> from jaxablate.report.plots import plot_all
    >>> plot_all(study.run().to_dict(), "report")       # {"single_heads": Path(...), ...}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxablate.report.canvas import colour_limit, figure_title, new_figure, save_figure
from jaxablate.report.comparison_plot import ablation_types_figure, plot_ablation_types
from jaxablate.report.cumulative_plot import cumulative_figure, plot_cumulative
from jaxablate.report.interactions_plot import interactions_figure, plot_interactions
from jaxablate.report.optimal_plot import optimal_figure, plot_optimal
from jaxablate.report.patching_plot import patching_figure, plot_patching
from jaxablate.report.screening_plot import plot_screening, screening_figure
from jaxablate.report.single_plots import (
    plot_single_heads,
    plot_single_layers,
    single_heads_figure,
    single_layers_figure,
)

__all__ = ["FIGURES", "OPT_IN_FIGURES", "ablation_types_figure", "colour_limit",
           "cumulative_figure", "figure_title", "interactions_figure", "new_figure",
           "optimal_figure", "patching_figure", "plot_ablation_types", "plot_all",
           "plot_cumulative", "plot_interactions", "plot_optimal", "plot_patching",
           "plot_screening", "plot_single_heads", "plot_single_layers", "save_figure",
           "screening_figure", "single_heads_figure", "single_layers_figure"]

FIGURES = ("single_heads", "single_layers", "screening", "cumulative", "interactions",
           "ablation_types")
OPT_IN_FIGURES = ("patching", "optimal")  # of sections only some runs have
MAKERS = {"single_heads": plot_single_heads, "single_layers": plot_single_layers,
          "screening": plot_screening, "cumulative": plot_cumulative,
          "interactions": plot_interactions, "ablation_types": plot_ablation_types,
          "patching": plot_patching, "optimal": plot_optimal}


def plot_all(result: Mapping[str, Any], folder: str | os.PathLike) -> dict[str, Path]:
    """Write every figure whose section is present into `folder` as NAME.png.

    Returns {name: path} for the figures written, names from `FIGURES` + `OPT_IN_FIGURES`.

    Example:
        >>> sorted(plot_all(result, "report"))
        ['ablation_types', 'cumulative', 'interactions', 'screening', 'single_heads']
    """
    folder = Path(folder)
    written = {}
    for name in FIGURES + OPT_IN_FIGURES:
        path = MAKERS[name](result, folder / f"{name}.png")
        if path is not None:
            written[name] = path
    return written
