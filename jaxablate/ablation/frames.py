"""Labelled results: a sweep's `[N, batch]` output as a pandas DataFrame, or a head grid.

    to_frame(masks, values, baseline)   one row per mask (or per mask and example, long=True)
    by_layer_head(masks, values)        the batch mean as [layer, head] ([layer, seq, head]
                                        for heads at one query position), NaN where no mask
    scores_frame(scores)                the same table from Mask-shaped per-example scores
                                        (`Attribution.to_frame()` calls it)

Each row carries the component its mask ablates, split into columns: `kind` names it as the
tuple form of `parse_component` does ("head", "mlp", "neuron", "resid", "sae", "mid", "q", "k",
"v"), with "@position" where the same word also names an all-positions kind ("head@position"
for "5.2@7", "mlp@position" for "mlp8@7"); a mask of several components is a "pair" or a
"set" ("clean" for none), its per-component columns empty. `layer head position neuron
feature` are pandas nullable Int64 (NA where a kind has no such index), so `layer` stays an
integer column. pandas is imported only when a frame is built (`pip install
jaxablate[report]`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from jaxtyping import Float

from jaxablate.ablation.components import Component
from jaxablate.ablation.mask_set import MaskSet
from jaxablate.ablation.metrics import check_metric, effect
from jaxablate.errors import InputError, InputTypeError
from jaxablate.model.mask import Mask

# Kind labels: the first word of a component's tuple form ("head", 5, 2, 7) -> ...
KIND_LABELS = {"heads": "head", "head_positions": "head@position", "mlps": "mlp",
               "neurons": "neuron", "positions": "resid", "sae_features": "sae",
               "mid_positions": "mid", "mlp_positions": "mlp@position", "q_positions": "q",
               "k_positions": "k", "v_positions": "v"}
# What each axis of a kind's per-mask index is (model/mask.py's shapes, seq -> position).
KIND_AXES = {"heads": ("layer", "head"), "head_positions": ("layer", "position", "head"),
             "mlps": ("layer",), "neurons": ("layer", "neuron"),
             "positions": ("layer", "position"), "sae_features": ("feature",),
             "mid_positions": ("layer", "position"), "mlp_positions": ("layer", "position"),
             "q_positions": ("layer", "position", "head"),
             "k_positions": ("layer", "position", "head"),
             "v_positions": ("layer", "position", "head")}
INDEX_COLUMNS = ("layer", "head", "position", "neuron", "feature")


class _Rows(NamedTuple):
    """The labels of N rows: name, kind label, index columns (-1: none), component count."""

    names: list[str]
    kinds: np.ndarray  # object [N]
    index: dict[str, np.ndarray]  # int64 [N] per INDEX_COLUMNS entry, -1 where empty
    n_components: np.ndarray  # int64 [N]


def _pandas(what: str) -> Any:
    try:
        import pandas as pd
    except ImportError as error:
        raise ModuleNotFoundError(f"{what} builds a pandas DataFrame and pandas is not "
                                  "installed: pip install 'jaxablate[report]'") from error
    return pd


def _check_masks(masks: Any, what: str) -> MaskSet:
    if not isinstance(masks, MaskSet):
        raise InputTypeError(f"{what}: masks: expected a jaxablate.MaskSet (ja.masks."
                             f"single_heads(cfg), ...), got {type(masks).__name__}")
    return masks


def _per_example(values: Any, n: int, what: str) -> np.ndarray:
    """values as float64 [n, batch]; [draws, n, batch] averaged over draws first."""
    try:
        array = np.asarray(values)
    except Exception as error:  # ragged lists and the like
        raise InputTypeError(f"{what}: values: expected a numeric array [N, batch], got "
                             f"{type(values).__name__} ({error})") from error
    if array.dtype.kind not in "fiu":
        raise InputTypeError(f"{what}: values: expected a numeric array [N, batch], got "
                             f"dtype {array.dtype}")
    shape = list(array.shape)
    fits = (array.ndim in (2, 3) and array.shape[-2] == n and array.shape[-1] > 0
            and array.size > 0)
    if not fits:
        raise InputError(f"{what}: values of shape {shape} do not fit the mask set of {n} "
                         f"masks: expected [N, batch] = [{n}, batch] (a sweep's output) or "
                         f"[draws, N, batch] = [D, {n}, batch]")
    array = array.astype(np.float64)
    return array.mean(axis=0) if array.ndim == 3 else array


def _baseline(baseline: Any, batch: int, what: str) -> np.ndarray | None:
    """None, or the baseline as float64 [batch] (a number broadcast)."""
    if baseline is None:
        return None
    if isinstance(baseline, (bool, np.bool_)):
        raise InputTypeError(f"{what}: baseline: expected a number or a [batch] array of the "
                             f"clean metric, got {baseline!r}")
    try:
        array = np.asarray(baseline)
    except Exception as error:
        raise InputTypeError(f"{what}: baseline: expected a number or a [batch] array, got "
                             f"{type(baseline).__name__}") from error
    if array.dtype.kind not in "fiu":
        raise InputTypeError(f"{what}: baseline: expected a number or a [batch] array, got "
                             f"dtype {array.dtype}")
    if array.ndim == 0:
        return np.full(batch, float(array))
    if array.shape != (batch,):
        raise InputError(f"{what}: baseline of shape {list(array.shape)} does not fit values "
                         f"with batch {batch}: expected a number or [batch] = [{batch}] (the "
                         "clean metric per example, ja.clean_metric)")
    return array.astype(np.float64)


def _mask_rows(masks: MaskSet) -> _Rows:
    """One row per mask: its components (keep-weight 1 entries change nothing: not counted,
    as in `ms.names`)."""
    n = len(masks)
    count = np.zeros(n, np.int64)
    label = np.full(n, "", object)
    index = {column: np.full(n, -1, np.int64) for column in INDEX_COLUMNS}
    for kind in masks.kinds:
        mask_id, entry_index, weight = masks.entries_of(kind)
        touched = weight != 1.0
        ids, rows = mask_id[touched], entry_index[touched]
        np.add.at(count, ids, 1)
        label[ids] = KIND_LABELS[kind]
        for axis, column in enumerate(KIND_AXES[kind]):
            index[column][ids] = rows[:, axis]
    single = count == 1
    label[count == 0] = "clean"
    label[count == 2] = "pair"
    label[count > 2] = "set"
    for column in INDEX_COLUMNS:  # several components: no one layer, head, ...
        index[column][~single] = -1
    return _Rows(list(masks.names), label, index, count)


def _score_rows(scores: Mask) -> tuple[_Rows, np.ndarray]:
    """One row per component of each kind set in a Mask with a leading example axis
    (canonical kind order, then layer-major), with its values float64 [n, batch]."""
    names, labels, parts = [], [], []
    index: dict[str, list[np.ndarray]] = {column: [] for column in INDEX_COLUMNS}
    for kind in scores.kinds():
        array = np.asarray(getattr(scores, kind), np.float64)  # [batch, *shape]
        shape = array.shape[1:]
        where = np.indices(shape).reshape(len(shape), -1).T  # [n, ndim], C order
        parts.append(array.reshape(array.shape[0], -1).T)
        names += [Component(kind, tuple(int(i) for i in row)).name for row in where]
        labels += [KIND_LABELS[kind]] * len(where)
        for column in INDEX_COLUMNS:
            axes = KIND_AXES[kind]
            index[column].append(where[:, axes.index(column)] if column in axes
                                 else np.full(len(where), -1, np.int64))
    if not parts:
        raise InputError("scores: the Mask has no kind set, so there is nothing to tabulate")
    rows = _Rows(names, np.array(labels, object),
                 {c: np.concatenate(v).astype(np.int64) for c, v in index.items()},
                 np.ones(len(names), np.int64))
    return rows, np.concatenate(parts)


def _sem(per_example: np.ndarray) -> np.ndarray:
    """Standard error of the mean over the example axis (NaN for one example)."""
    batch = per_example.shape[1]
    if batch < 2:
        return np.full(per_example.shape[0], np.nan)
    return per_example.std(axis=1, ddof=1) / np.sqrt(batch)


def _frame(rows: _Rows, per_example: np.ndarray, baseline: np.ndarray | None, metric: Any,
           long: bool) -> Any:
    pd = _pandas("to_frame")
    n, batch = per_example.shape
    repeat = batch if long else 1

    def labels(values: Any) -> Any:
        return np.repeat(np.asarray(values, object), repeat)

    columns: dict[str, Any] = {"component": pd.Series(labels(rows.names), dtype="str"),
                               "kind": pd.Series(labels(rows.kinds), dtype="str")}
    for column in INDEX_COLUMNS:
        values = np.repeat(rows.index[column], repeat)
        columns[column] = pd.arrays.IntegerArray(values, values < 0)  # Int64, NA where < 0
    columns["n_components"] = np.repeat(rows.n_components, repeat)
    change = None if baseline is None else per_example - baseline[None]
    helps = None if metric is None else effect(metric, per_example, baseline[None])
    if long:
        columns["example"] = np.tile(np.arange(batch, dtype=np.int64), n)
        columns["value"] = per_example.reshape(-1)
        if change is not None:
            columns["metric_change"] = change.reshape(-1)
        if helps is not None:
            columns["effect"] = helps.reshape(-1)
    else:
        columns["mean"] = per_example.mean(axis=1)
        columns["sem"] = _sem(per_example)
        if change is not None:
            columns["metric_change"] = change.mean(axis=1)
            columns["metric_change_sem"] = _sem(change)
        if helps is not None:
            columns["effect"] = helps.mean(axis=1)
            columns["effect_sem"] = _sem(helps)
    return pd.DataFrame(columns)


def to_frame(masks: Any, values: Any, baseline: Any = None, *, long: bool = False,
             metric: Any = None) -> Any:
    """A pandas DataFrame of a sweep's output, one row per mask of `masks` (in its order).

    masks: the `MaskSet` swept (N masks). values: the metric per mask and example, [N, batch]
    as `ja.sweep` returns it; [D, N, batch] (a sweep under a list of D replacements, e.g.
    resample draws) is averaged over the draws first, so `sem` is then over examples only
    (the study's s.e. adds the variance between draws: `jaxablate.study.stats`).
    baseline: the clean metric, a number or [batch] (`ja.clean_metric`); adds
    `metric_change` = mean of (value - baseline) per example and `metric_change_sem`, the
    s.e.m. of those differences (docs/conventions.md: metric(ablated) - metric(clean)).
    metric: the metric swept (needs baseline); adds `effect` and `effect_sem` in the study's
    sign, positive when the component helps (`ja.metrics.effect`).

    Columns: component (the mask's name, `masks.names`), kind (module docstring), layer, head,
    position, neuron, feature (Int64, NA where the kind has none or the mask holds several
    components), n_components, mean and sem (over the batch axis), then the baseline's and
    metric's columns. long=True: one row per (mask, example), with `example` and `value`
    (and `metric_change`, `effect`) instead of the means.

    Example:
        >>> heads = ja.masks.single_heads(model.cfg)
        >>> out = ja.sweep(model, tokens, heads, repl, metric)                 # [N, batch]
        >>> df = ja.to_frame(heads, out, ja.clean_metric(model, tokens, metric), metric=metric)
        >>> df.sort_values("effect", ascending=False).head(3)[["component", "effect"]]
    """
    masks = _check_masks(masks, "to_frame")  # annotated Any: this names the fix
    per_example = _per_example(values, len(masks), "to_frame")
    base = _baseline(baseline, per_example.shape[1], "to_frame")
    if metric is not None:
        check_metric(metric, "to_frame: metric")
        if base is None:
            raise InputError("to_frame: metric= gives the effect relative to the clean "
                             "metric; pass baseline too (ja.clean_metric(model, tokens, "
                             "metric))")
    return _frame(_mask_rows(masks), per_example, base, metric, long)


def scores_frame(scores: Any, *, long: bool = False) -> Any:
    """`to_frame`'s table for Mask-shaped per-example scores (a leading example axis on every
    field set, e.g. `Attribution.metric_change`: heads [batch, layer, head], ...): one row
    per component, kinds in `Mask` order, layer-major; `mean`/`sem` over the examples (or
    long=True: `example` and `value`).

    Example:
        >>> scores_frame(att.metric_change).head(2)[["component", "kind", "mean"]]
    """
    if not isinstance(scores, Mask):
        raise InputTypeError(f"scores_frame: expected a jaxablate.Mask of scores, got "
                             f"{type(scores).__name__}")
    rows, per_example = _score_rows(scores)
    return _frame(rows, per_example, None, None, long)


def by_layer_head(masks: Any, values: Any) -> Float[np.ndarray, "layer *seq head"]:
    """The batch mean of a sweep of single heads as a grid: float64 [layer, head] for heads
    over all positions (`ja.masks.single_heads(cfg)`), [layer, seq, head] for heads at query
    positions ("5.2@7": `single_heads(cfg, position=p, seq_len=s)`, or any set of head@p
    masks); NaN where the set has no mask for that cell. values: [N, batch] (or [D, N, batch],
    averaged over draws) as for `to_frame`. A set holding anything but single heads of one of
    these two kinds is refused: use `to_frame`.

    Example:
        >>> heads = ja.masks.single_heads(model.cfg)
        >>> grid = ja.by_layer_head(heads, ja.sweep(model, tokens, heads, repl, metric))
        >>> grid.shape                                              # (12, 12) for GPT-2 small
    """
    masks = _check_masks(masks, "by_layer_head")
    per_example = _per_example(values, len(masks), "by_layer_head")
    rows = _mask_rows(masks)
    heads = (rows.n_components == 1) & np.isin(rows.kinds, ["head", "head@position"])
    if not heads.all():
        i = int(np.argmin(heads))
        raise InputError(f"by_layer_head: mask {i} ({rows.names[i]!r}, {rows.kinds[i]}) is not "
                         "a single head; it takes sets of single heads (ja.masks.single_heads) "
                         "or of heads at positions (head@p masks); use ja.to_frame for others")
    kinds = sorted(set(rows.kinds))
    if len(kinds) > 1:
        raise InputError("by_layer_head: the set mixes heads over all positions with heads at "
                         "one position ('5.2' and '5.2@7'); grid them separately")
    cfg = masks.cfg
    if kinds == ["head"]:
        shape = (cfg.n_layers, cfg.n_heads)
        cells = (rows.index["layer"], rows.index["head"])
    else:
        shape = (cfg.n_layers, masks.seq_len, cfg.n_heads)
        cells = (rows.index["layer"], rows.index["position"], rows.index["head"])
    flat = np.ravel_multi_index(cells, shape)
    unique, counts = np.unique(flat, return_counts=True)
    if (counts > 1).any():
        cell = unique[np.argmax(counts > 1)]
        twice = np.nonzero(flat == cell)[0][:2]
        raise InputError(f"by_layer_head: masks {int(twice[0])} ({rows.names[twice[0]]!r}) and "
                         f"{int(twice[1])} ({rows.names[twice[1]]!r}) ablate the same head; "
                         "a grid holds one value per head")
    grid = np.full(shape, np.nan)
    grid[cells] = per_example.mean(axis=1)
    return grid
