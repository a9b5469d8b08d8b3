"""What `ja.plot`'s figures accept, turned into one value per component and a label.

Three forms of input, checked before anything is drawn:

    sweep values + MaskSet   [N, batch] as `ja.sweep` returns (also [N], or [D, N, batch]
                             draws of a list of replacements: the draws are averaged first);
                             the components come from the set's names (`parse_component`)
    a pandas DataFrame       one row per mask with columns layer, head, position, neuron and
                             effect, metric_change or mean, as `ja.to_frame` gives (the first
                             of those present is drawn)
    a plain array            already on the figure's grid, e.g. [layer, head]

    sweep_means(values, masks, metric, baseline, what) -> ([N] means, label)
    mask_cells(masks, means, kinds, what) -> (kind, {index: value})
    frame_cells(frame, fields, what, metric) -> ({index: value}, label, kind text or None)
    is_frame(obj), metric_name(metric), grid_of(cells, shape)

An index is a `Component.index` of its kind: heads (layer, head), head_positions
(layer, position, head), neurons (layer, neuron), positions (layer, position).

Example:
    >>> means, label = sweep_means(out, single_heads(cfg), metric, None, "heads")
    >>> label
    'logit diff (mean over prompts)'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxablate.ablation.components import parse_component
from jaxablate.ablation.mask_set import MaskSet
from jaxablate.ablation.metrics import Metric, effect
from jaxablate.errors import InputError, InputTypeError

COMPONENT_COLUMNS = ("layer", "head", "position", "neuron", "feature")
# A frame's value columns, the first present drawn, and the label each gives (of a name).
VALUE_COLUMNS = (("effect", "effect on {}"), ("metric_change", "change in {} (ablated - clean)"),
                 ("mean", "{} (mean over prompts)"))


def metric_name(metric: Any) -> str:
    """A metric's name for a label: a string as given, a `Metric`'s name with spaces.

    Example:
        >>> metric_name(ja.metrics.logit_diff(io, s)), metric_name("accuracy")
        ('logit diff', 'accuracy')
    """
    if isinstance(metric, Metric):
        return metric.name.replace("_", " ")
    if isinstance(metric, str) and metric.strip():
        return metric.strip()
    raise InputTypeError(f"metric: expected a metric name (str) or a jaxablate Metric, got "
                         f"{type(metric).__name__}")


def is_frame(obj: Any) -> bool:
    """Whether `obj` is a pandas DataFrame (without importing pandas)."""
    return type(obj).__module__.split(".")[0] == "pandas" and hasattr(obj, "columns")


def _floats(values: Any, what: str, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputTypeError(f"{what}: {name} must be numbers, got {type(values).__name__}"
                             ) from None
    return array


def sweep_means(values: Any, masks: Any, metric: Any, baseline: Any,
                what: str) -> tuple[np.ndarray, str]:
    """The mean over prompts [N] of each mask's values, and its label.

    values: [N, batch] (one sweep), [D, N, batch] (draws, averaged first) or [N] (one
    value per mask). baseline: None, or the clean metric (a float or [batch]); then the
    values are the effect in the study's sign, `ja.metrics.effect(metric, values, baseline)`
    (positive = the component helps), which needs `metric` to be the `Metric` itself.

    Example:
        >>> sweep_means(out, masks, metric, clean, "heads")[1]
        'effect on logit diff (clean - ablated)'
    """
    if not isinstance(masks, MaskSet):
        raise InputTypeError(f"{what}: masks must be the MaskSet the values were swept over "
                             f"(e.g. ja.masks.single_heads(cfg)), got {type(masks).__name__}")
    array = _floats(values, what, "values")
    n = len(masks)
    if array.ndim not in (1, 2, 3) or array.shape[-2 if array.ndim > 1 else 0] != n:
        raise InputError(f"{what}: expected values [N, batch] (or [N], or [draws, N, batch]) "
                         f"with N = {n} masks, got shape {array.shape}")
    if array.ndim == 3:
        array = array.mean(axis=0)
    name = metric_name(metric)
    if baseline is None:
        return (array.mean(axis=-1) if array.ndim == 2 else array), (
            f"{name} (mean over prompts)" if array.ndim == 2 else name)
    if not isinstance(metric, Metric):
        raise InputTypeError(f"{what}: with a baseline, pass the Metric itself (e.g. "
                             "ja.metrics.logit_diff(...)), not a name: the effect's sign "
                             "depends on whether higher is better")
    clean = _floats(baseline, what, "baseline")
    batch = array.shape[-1] if array.ndim == 2 else 1
    if clean.ndim > 1 or (clean.ndim == 1 and (array.ndim == 1 or clean.shape[0] != batch)):
        expected = f"a float or [batch] = [{batch}]" if array.ndim == 2 else "a float"
        raise InputError(f"{what}: baseline must be the clean metric, {expected}; got shape "
                         f"{clean.shape}")
    effects = effect(metric, array, clean)
    means = effects.mean(axis=-1) if array.ndim == 2 else effects
    signed = "clean - ablated" if metric.higher_is_better else "ablated - clean"
    return means, f"effect on {name} ({signed})"


def mask_cells(masks: MaskSet, means: np.ndarray, kinds: Sequence[str],
               what: str) -> tuple[str, dict[tuple[int, ...], float]]:
    """{component index: value} of a set whose masks each ablate one component of one of
    `kinds` (all of the same kind); the kind. Pairs, sets and other kinds are refused."""
    cells: dict[tuple[int, ...], float] = {}
    kind = None
    for name, value in zip(masks.names, means):
        try:
            component = parse_component(name)
        except InputError:
            component = None
        if component is None or component.kind not in kinds:
            raise InputError(f"{what}: mask {name!r} is not a single component of the kinds "
                             f"this figure draws ({', '.join(kinds)}); pass a set of single "
                             "components such as the one ja.masks builds")
        if kind is not None and component.kind != kind:
            raise InputError(f"{what}: the set mixes {kind} and {component.kind} masks; draw "
                             "one kind at a time (masks.subset)")
        kind = component.kind
        if component.index in cells:
            raise InputError(f"{what}: the set has two masks for {name!r}")
        cells[component.index] = float(value)
    return str(kind), cells


def frame_cells(frame: Any, fields: Sequence[str], what: str, metric: Any
                ) -> tuple[dict[tuple[int, ...], float], str, str | None]:
    """{(row's fields): value} of the frame's rows that name one component by exactly
    `fields` (the other component columns empty); the value is the first of `effect`,
    `metric_change` and `mean` the frame holds. Returns the cells, the label and the rows'
    `kind` when they share one."""
    import pandas as pd

    columns = list(frame.columns)
    missing = [f for f in fields if f not in columns]
    held = [(c, text) for c, text in VALUE_COLUMNS if c in columns and frame[c].notna().any()]
    if missing or not held:
        raise InputError(f"{what}: the frame needs columns {', '.join(fields)} and effect, "
                         f"metric_change or mean (as ja.to_frame gives), got {columns}")
    value, text = held[0]
    keep = np.ones(len(frame), dtype=bool)
    for column in COMPONENT_COLUMNS:
        if column in columns:
            present = frame[column].notna().to_numpy(dtype=bool)
            keep &= present if column in fields else ~present
    rows = frame[keep]
    if not len(rows):
        raise InputError(f"{what}: no row of the frame names a single component by "
                         f"{', '.join(fields)} alone")
    index = np.stack([pd.to_numeric(rows[f]).to_numpy(dtype=np.int64) for f in fields], 1)
    values = pd.to_numeric(rows[value]).to_numpy(dtype=np.float64, na_value=np.nan)
    cells: dict[tuple[int, ...], float] = {}
    for key, v in zip(map(tuple, index.tolist()), values):
        if key in cells:
            raise InputError(f"{what}: two rows for {dict(zip(fields, key))}; pass one row "
                             "per component (the wide frame, not long=True)")
        cells[key] = float(v)
    if (index < 0).any():
        raise InputError(f"{what}: negative {', '.join(fields)} in the frame")
    kinds = sorted(set(rows["kind"].astype(str))) if "kind" in columns else []
    if len(kinds) > 1:
        raise InputError(f"{what}: the frame mixes kinds {kinds}; draw one kind at a time")
    return cells, text.format(metric_name(metric)), kinds[0] if kinds else None


def grid_of(cells: dict[tuple[int, ...], float], shape: Sequence[int] | None) -> np.ndarray:
    """A NaN-filled array of `shape` (default: just large enough) holding `cells`.

    Example:
        >>> grid_of({(0, 1): 2.0}, (2, 2))
        array([[nan,  2.], [nan, nan]])
    """
    index = np.array(list(cells), dtype=np.int64)
    shape = tuple(shape) if shape is not None else tuple(index.max(axis=0) + 1)
    grid = np.full(shape, np.nan)
    grid[tuple(index.T)] = list(cells.values())
    return grid
