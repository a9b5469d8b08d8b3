"""What every figure of the report wing shares: an Agg-canvas Figure, the title, the
diverging heatmap, and the rule for which points get a text label.

    new_figure(width, height)            a Figure on its own Agg canvas (never in pyplot)
    save_figure(fig, path)               write it as PNG and clear it
    figure_title(result, what)           "what: model, task, ablation" from a result's meta
    heatmap(ax, grid, label)             diverging colours centred at 0 (symmetric limits),
                                         NaN cells grey ("not measured", never read as 0)
    top_by_magnitude(values, k)          the indices of the k largest |value|, NaN excluded
    annotate_cells(ax, grid, cells)      the value written in each of `cells`

Labels: a figure with more than `LABEL_ALL` values to write labels only the `TOP_LABELS`
largest by |value| and says so, so a paper figure stays readable at any size.

Example:
    >>> fig = new_figure(5.0, 4.0)
    >>> image = heatmap(fig.add_subplot(), grid, "effect on logit diff")   # grid [layer, head]
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

LABEL_ALL = 36  # at most this many values written on a figure before only the top ones are
TOP_LABELS = 12
MISSING_COLOUR = "0.82"  # grey: a cell nothing was measured for, distinct from RdBu's white 0
_DPI = 120


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure bound to an Agg canvas, with constrained layout: never registered
    in pyplot, so it changes no global state and a user's session never has to close it.

    Example:
        >>> fig = new_figure(6.0, 4.0); ax = fig.add_subplot()
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write `fig` to `path` as PNG (folders made), clear it, return the path.

    Example:
        >>> save_figure(fig, "report/single_heads.png")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, format="png")
    fig.clear()
    return path


def as_float(value: Any) -> float:
    """A float from a JSON number, NaN for null.

    Example:
        >>> as_float(None), as_float(2)
        (nan, 2.0)
    """
    return math.nan if value is None else float(value)


def colour_limit(values: np.ndarray) -> float:
    """A symmetric colour limit: the largest finite |value|, 1 when there is none.

    Example:
        >>> colour_limit(np.array([-3.0, 1.0, np.nan]))
        3.0
    """
    finite = np.abs(values[np.isfinite(values)])
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 else 1.0


def result_meta(result: Mapping[str, Any]) -> Mapping[str, Any]:
    """The result's "meta" section ({} when absent)."""
    return result.get("meta") or {}


def effect_label(result: Mapping[str, Any]) -> str:
    """The axis label of a study's effects: "effect on METRIC (ABLATION ablation)".

    Example:
        >>> effect_label({"meta": {"metric": "loss", "ablation": "mean"}})
        'effect on loss (mean ablation)'
    """
    meta = result_meta(result)
    return f"effect on {meta.get('metric', 'the metric')} ({meta.get('ablation', '?')} ablation)"


def figure_title(result: Mapping[str, Any], what: str, *, with_ablation: bool = True) -> str:
    """A figure's title: what it shows, the model, the task and (unless `what` names it, as
    patching's direction does: `with_ablation=False`) the study's ablation type.

    Example:
        >>> figure_title({"meta": {"model": "gpt2", "task": {"name": "ioi"},
        ...                        "ablation": "mean"}}, "single-head ablation")
        'single-head ablation: gpt2, ioi, mean ablation'
    """
    meta = result_meta(result)
    task = (meta.get("task") or {}).get("name", "task")
    parts = [str(meta.get("model", "model")), str(task)]
    if with_ablation:
        parts.append(f"{meta.get('ablation', '?')} ablation")
    return f"{what}: " + ", ".join(parts)


def significant(row: Mapping[str, Any]) -> bool:
    """Whether a result row's 95% CI excludes 0."""
    low, high = as_float(row.get("ci_low")), as_float(row.get("ci_high"))
    return bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))


def heatmap(ax: Any, grid: np.ndarray, label: str, *, limit: float | None = None,
            aspect: str = "auto") -> Any:
    """Draw `grid` [rows, columns] on `ax` in diverging colours centred at 0: limits
    -limit..+limit (default the largest |value|), NaN cells grey; a colour bar named `label`.
    Returns the AxesImage.

    Example:
        >>> image = heatmap(ax, np.array([[1.0, -2.0]]), "effect on loss")
        >>> image.get_clim()
        (-2.0, 2.0)
    """
    import matplotlib

    limit = colour_limit(grid) if limit is None else limit
    # A copy of the colour map: its "bad" colour is set here, not on the registered one.
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=MISSING_COLOUR)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-limit, vmax=limit,
                      aspect=aspect, interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, label=label)
    return image


def top_by_magnitude(values: Any, k: int) -> list[int]:
    """Indices of the `k` largest finite |value| (ties: the earlier first), largest first.

    Example:
        >>> top_by_magnitude([0.1, -3.0, np.nan, 2.0], 2)
        [1, 3]
    """
    values = np.asarray(values, dtype=float).ravel()
    finite = np.nonzero(np.isfinite(values))[0]
    order = finite[np.argsort(-np.abs(values[finite]), kind="stable")]
    return [int(i) for i in order[:k]]


def cells_to_label(grid: np.ndarray, k: int = TOP_LABELS) -> tuple[list[tuple[int, int]], bool]:
    """The cells of `grid` [rows, columns] to write values in: every finite one when there
    are at most `LABEL_ALL`, else the `k` largest by |value|. Returns (cells, all_of_them).

    Example:
        >>> cells_to_label(np.arange(4.0).reshape(2, 2))
        ([(0, 0), (0, 1), (1, 0), (1, 1)], True)
    """
    finite = np.argwhere(np.isfinite(grid))
    if len(finite) <= LABEL_ALL:
        return [(int(i), int(j)) for i, j in finite], True
    top = top_by_magnitude(grid, k)
    return [tuple(int(v) for v in np.unravel_index(i, grid.shape)) for i in top], False


def annotate_cells(ax: Any, grid: np.ndarray, cells: Any, *, limit: float,
                   fmt: str = "{:.2g}", suffix: Mapping[tuple[int, int], str] | None = None,
                   fontsize: float = 7.0) -> None:
    """Write grid[i, j] (with suffix[(i, j)], e.g. "*") in each cell (i, j) of `cells`,
    white on dark colours."""
    suffix = suffix or {}
    for i, j in cells:
        value = grid[i, j]
        colour = "white" if abs(value) > 0.6 * limit else "black"
        ax.text(j, i, fmt.format(value) + suffix.get((i, j), ""), ha="center", va="center",
                fontsize=fontsize, color=colour)


def label_points(ax: Any, x: np.ndarray, y: np.ndarray, names: Any,
                 k: int = TOP_LABELS) -> list[int]:
    """Name the `k` points with the largest |y| (finite x and y); returns their indices."""
    y_known = np.where(np.isfinite(x), y, np.nan)
    chosen = top_by_magnitude(y_known, k)
    for i in chosen:
        ax.annotate(str(names[i]), (x[i], y[i]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    return chosen
