"""Paper figures of a plain sweep, as `ja.plot`: heads, positions, neurons.

    ja.plot.heads(values_or_frame, masks=None, *, metric=, baseline=, title=, ax=)
        layer x head heatmap                          (a single_heads set, [layer, head])
    ja.plot.positions(values_or_frame, masks=None, *, metric=, baseline=, tokens=, title=, ax=)
        layer x position heatmap for residual-stream / MLP-output positions ([layer, pos]),
        (layer.head) x position for head@position sets ([layer, pos, head], one row per
        head, layers split by lines), token strings as the position labels when given
    ja.plot.neurons(values_or_frame, masks=None, *, metric=, baseline=, k=20, title=, ax=)
        bars of the k neurons of largest |value|, labelled "layer.neuron"

Each takes sweep values with their MaskSet, a DataFrame like `ja.to_frame`'s, or a plain
array on the figure's grid (`figure_inputs`); `metric` names the values (a string, or the
`Metric`, whose name is used); with `baseline` (the clean metric, a float or [batch]) the
values drawn are the effect in the study's sign, `ja.metrics.effect` (+ = the component
helps), averaged over prompts. Heatmaps use diverging colours centred at 0 with symmetric
limits, grey where nothing was measured. Each returns the matplotlib Figure; with `ax` it
draws on that Axes and returns its figure. Nothing is shown, saved or registered in pyplot
and no global style changes (the figure sits on its own Agg canvas): save it with
`fig.savefig(path)`; a notebook displays it as the cell's value.

Example:
    >>> out = ja.sweep(model, tokens, ja.masks.single_heads(model.cfg), repl, metric)
    >>> fig = ja.plot.heads(out, ja.masks.single_heads(model.cfg), metric=metric,
    ...                     baseline=ja.clean_metric(model, tokens, metric))
    >>> fig.savefig("heads.pdf")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxablate.errors import InputError, InputTypeError
from jaxablate.report.canvas import (
    TOP_LABELS,
    annotate_cells,
    cells_to_label,
    colour_limit,
    heatmap,
    new_figure,
    top_by_magnitude,
)
from jaxablate.report.figure_inputs import (
    frame_cells,
    grid_of,
    is_frame,
    mask_cells,
    metric_name,
    sweep_means,
)

__all__ = ["heads", "neurons", "positions"]

POSITION_KINDS = {  # mask kind -> what its cells are, for the default title
    "positions": "residual stream entering the layer", "mid_positions":
    "residual stream after attention", "mlp_positions": "MLP output",
    "head_positions": "head output", "q_positions": "head query", "k_positions": "head key",
    "v_positions": "head value"}
HEAD_POSITION_KINDS = ("head_positions", "q_positions", "k_positions", "v_positions")


def _resolve(values: Any, masks: Any, metric: Any, baseline: Any, kinds: Sequence[str],
             fields: Sequence[Sequence[str]], what: str
             ) -> tuple[dict[tuple[int, ...], float] | np.ndarray, str, str | None, Any]:
    """(cells or a plain array, label, kind, the MaskSet or None) from any accepted input;
    `fields`: the frame's component columns to try, in order."""
    if is_frame(values):
        if masks is not None or baseline is not None:
            raise InputError(f"{what}: a frame names its components and holds its effect; "
                             "pass no masks or baseline with it")
        for i, columns in enumerate(fields):
            try:
                cells, label, kind = frame_cells(values, columns, what, metric)
            except InputError:
                if i == len(fields) - 1:
                    raise
                continue
            return cells, label, kind, None
    if masks is None:
        if baseline is not None:
            raise InputError(f"{what}: baseline needs per-prompt sweep values and their masks")
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputTypeError(f"{what}: expected sweep values and their MaskSet, a frame "
                                 f"or an array of numbers, got {type(values).__name__}"
                                 ) from None
        return array, metric_name(metric), None, None
    means, label = sweep_means(values, masks, metric, baseline, what)
    kind, cells = mask_cells(masks, means, kinds, what)
    return cells, label, kind, masks


def _axes(ax: Any, width: float, height: float) -> tuple[Any, Any]:
    if ax is None:
        fig = new_figure(width, height)
        return fig, fig.add_subplot()
    if not hasattr(ax, "imshow"):
        raise InputTypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
    return ax.figure, ax


def _write_values(ax: Any, grid: np.ndarray) -> str:
    """The values in the cells (all of a small grid, else the top ones); a note or ""."""
    cells, every = cells_to_label(grid)
    annotate_cells(ax, grid, cells, limit=colour_limit(grid))
    return "" if every else f"\nvalues: the top {TOP_LABELS} by |value|"


def heads(values_or_frame: Any, masks: Any = None, *, metric: Any = "metric",
          baseline: Any = None, title: str | None = None, ax: Any = None) -> Any:
    """A layer x head heatmap of one value per head.

    values_or_frame: sweep values [N, batch] of a set of single heads (`masks`, e.g.
    `ja.masks.single_heads(cfg)`; [N] or [D, N, batch] too), a DataFrame with layer, head
    and effect, metric_change or mean columns (`ja.to_frame`), or a [layer, head] array. The colour bar is named after the
    metric ("logit diff (mean over prompts)", "effect on logit diff ..."); integer ticks;
    values written in each cell (the top 12 by |value| on grids of more than 36 heads).
    Returns the Figure.

    Example:
        >>> fig = ja.plot.heads(out, ja.masks.single_heads(cfg), metric=metric)  # out [N, b]
        >>> fig.axes[0].images[0].get_array().shape
        (12, 12)
    """
    found, label, _, masks = _resolve(values_or_frame, masks, metric, baseline, ("heads",),
                                      [("layer", "head")], "heads")
    if isinstance(found, np.ndarray):
        if found.ndim != 2:
            raise InputError(f"heads: expected a [layer, head] array (or sweep values with "
                             f"their masks), got shape {found.shape}")
        grid = found
    else:
        shape = None if masks is None else (masks.cfg.n_layers, masks.cfg.n_heads)
        grid = grid_of(found, shape)
    n_layers, n_heads = grid.shape
    fig, ax = _axes(ax, min(max(5.0, 2.5 + 0.6 * n_heads), 16.0),
                    min(2.5 + 0.45 * n_layers, 12.0))
    heatmap(ax, grid, label)
    note = _write_values(ax, grid)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_title((title if title is not None else "by head") + note, fontsize=9)
    return fig


def positions(values_or_frame: Any, masks: Any = None, *, metric: Any = "metric",
              baseline: Any = None, tokens: Sequence[str] | None = None,
              title: str | None = None, ax: Any = None) -> Any:
    """A heatmap of one value per (layer, position), or per (layer, position, head).

    values_or_frame: sweep values [N, batch] of a set of single position components
    (`masks`: `ja.masks.positions`, `mid_positions`, `mlp_positions`, head@position sets
    such as `from_components(cfg, ["0.1@3", ...], seq_len=)` or `head_vectors`), a
    DataFrame with layer, position (and head) columns, or an array [layer, pos] or
    [layer, pos, head] (as `ja.patching.resid_pre` / `attn_head_out_by_pos` return).
    Rows: layers, or one per head "layer.head" (layers split by lines); columns:
    positions, labelled with `tokens` (one string per position) when given. Returns the
    Figure.

    Example:
        >>> fig = ja.plot.positions(out, ja.masks.positions(cfg, seq_len), metric=metric,
        ...                         tokens=tok.convert_ids_to_tokens(tokens[0]))
    """
    kinds = tuple(POSITION_KINDS)
    found, label, kind, masks = _resolve(
        values_or_frame, masks, metric, baseline, kinds,
        [("layer", "position", "head"), ("layer", "position")], "positions")
    if isinstance(found, np.ndarray):
        if found.ndim not in (2, 3):
            raise InputError(f"positions: expected an array [layer, pos] or [layer, pos, "
                             f"head] (or sweep values with their masks), got {found.shape}")
        grid = found
    else:
        per_head = len(next(iter(found))) == 3
        shape = None
        if masks is not None and masks.seq_len is not None:
            shape = (masks.cfg.n_layers, masks.seq_len) + ((masks.cfg.n_heads,) if per_head
                                                           else ())
        grid = grid_of(found, shape)
    n_layers, seq = grid.shape[:2]
    if tokens is not None:
        tokens = [str(t) for t in tokens]
        if len(tokens) != seq:
            raise InputError(f"positions: expected one token string per position, {seq}, "
                             f"got {len(tokens)}")
    per_head = grid.ndim == 3
    n_heads = grid.shape[2] if per_head else 1
    # [layer, pos, head] -> rows (layer, head) in layer-major order, as the masks enumerate.
    table = grid.transpose(0, 2, 1).reshape(n_layers * n_heads, seq) if per_head else grid
    rows = table.shape[0]
    fig, ax = _axes(ax, min(max(5.5, 3.0 + 0.32 * seq), 18.0), min(2.5 + 0.3 * rows, 14.0))
    heatmap(ax, table, label)
    note = _write_values(ax, table)
    step = 1 if tokens is not None and seq <= 64 else max(1, math.ceil(seq / 32))
    ticks = list(range(0, seq, step))
    ax.set_xticks(ticks, [tokens[t] for t in ticks] if tokens is not None else ticks,
                  rotation=90 if tokens is not None else 0, fontsize=8)
    ax.set_xlabel("token (position)" if tokens is not None else "position")
    if per_head:
        for layer in range(1, n_layers):
            ax.axhline(layer * n_heads - 0.5, color="black", linewidth=0.8)
        if rows <= 64:
            ax.set_yticks(range(rows), [f"{r // n_heads}.{r % n_heads}" for r in range(rows)],
                          fontsize=7)
        else:  # one label per layer, at its first head
            ax.set_yticks(range(0, rows, n_heads), [f"{layer}.0" for layer in range(n_layers)],
                          fontsize=7)
        ax.set_ylabel("head (layer.head)")
    else:
        ax.set_yticks(range(n_layers))
        ax.set_ylabel("layer")
    what = POSITION_KINDS.get(kind or "", kind or ("head" if per_head else "component"))
    ax.set_title((title if title is not None else f"{what} by position") + note, fontsize=9)
    return fig


def neurons(values_or_frame: Any, masks: Any = None, *, metric: Any = "metric",
            baseline: Any = None, k: int = 20, title: str | None = None,
            ax: Any = None) -> Any:
    """Bars of the `k` neurons of largest |value|, largest first, labelled "layer.neuron"
    (red: positive, blue: negative, as the heatmaps' colours).

    values_or_frame: sweep values [N, batch] of a set of single neurons (`masks`:
    `ja.masks.single_neurons(cfg, layers)`), a DataFrame with layer, neuron and effect,
    metric_change or mean columns, or a [layer, neuron] array (NaN: not measured). Ranking raw metric values
    by size says little: pass `baseline` (the clean metric) to rank effects. Returns the
    Figure.

    Example:
        >>> fig = ja.plot.neurons(out, ja.masks.single_neurons(cfg, layers=[5]), metric=metric,
        ...                       baseline=ja.clean_metric(model, tokens, metric), k=15)
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"neurons: k must be a positive integer, got {k!r}")
    found, label, _, _ = _resolve(values_or_frame, masks, metric, baseline, ("neurons",),
                                  [("layer", "neuron")], "neurons")
    if isinstance(found, np.ndarray):
        if found.ndim != 2:
            raise InputError(f"neurons: expected a [layer, neuron] array (or sweep values "
                             f"with their masks), got shape {found.shape}")
        found = {(int(layer), int(n)): float(found[layer, n])
                 for layer, n in np.argwhere(np.isfinite(found))}
    index = list(found)
    values = np.array([found[i] for i in index])
    chosen = top_by_magnitude(values, int(k))
    if not chosen:
        raise InputError("neurons: no finite value to draw")
    heights = values[chosen]
    names = [f"{index[i][0]}.{index[i][1]}" for i in chosen]
    fig, ax = _axes(ax, max(5.0, 1.5 + 0.32 * len(chosen)), 3.8)
    x = np.arange(len(chosen))
    ax.bar(x, heights, color=["tab:red" if h > 0 else "tab:blue" for h in heights])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, names, rotation=90, fontsize=8)
    ax.set_xlabel("neuron (layer.neuron)")
    ax.set_ylabel(label, fontsize=8)
    default = f"the top {len(chosen)} of {len(index)} neurons by |value|"
    ax.set_title(title if title is not None else default, fontsize=9)
    return fig
