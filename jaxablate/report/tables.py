"""A study result's sections as pandas DataFrames (the report's CSV and Parquet tables).

    single_frame(result)               one row per component, in rank order
    per_example_frame(result)          long format: component, example, effect
    cumulative_frame(result)           one row per point of the cumulative curve
    screening_frame(result)            one row per component in screen-rank order
    interactions_frame(result)         one row per pair
    ablation_comparison_frame(result)  effects and verdicts per ablation type
    patching_positions_frame(result)   long format: component, position, restored fraction
    patching_paths_frame(result)       one row per component: every position vs direct path
    optimal_frame(result)              one row per component: Delta_OA beside Delta_mean

`result` is `StudyResult.to_dict()`. pandas is imported only when a frame is built.

The frames keep component names as the library writes them ("1.10"); `csv_frame` is what the
report's CSVs hold: a cell of a name column (component, a, b, last_ablated) that is exactly a
head's name is written "head 1.10", because "1.10" is a number to a CSV reader
(`pandas.read_csv` with default arguments would read it back as 1.1, and "0.1" and "0.10"
as the same number). Every other name ("mlp0", "n3.1207", "1.10@3", "0.1+1.10") reads back
as text as it is. Strip the prefix to get the library's name back:
`table["component"].str.removeprefix("head ")`. Parquet files keep the names and dtypes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from jaxablate.errors import InputError
from jaxablate.study.result import jsonable

SINGLE_COLUMNS = ("rank", "component", "kind", "layer", "index", "effect", "sem", "ci_low",
                  "ci_high", "critical", "negative", "no_effect")


# The report's columns that hold component names, and a head's name ("1.10"): see above.
NAME_COLUMNS = ("component", "a", "b", "last_ablated")
HEAD_NAME = re.compile(r"^\d+\.\d+$")
CSV_HEAD_PREFIX = "head "


def csv_name(name: Any) -> Any:
    """The name as the report's CSVs write it: "head 1.10" for a head, others unchanged.

    Example:
        >>> csv_name("1.10"), csv_name("mlp0"), csv_name("0.1+1.10")
        ('head 1.10', 'mlp0', '0.1+1.10')
    """
    if isinstance(name, str) and HEAD_NAME.match(name):
        return CSV_HEAD_PREFIX + name
    return name


def csv_frame(frame: Any) -> Any:
    """A copy of a report table with its name columns as `csv_name` writes them, so that
    `pandas.read_csv(path)` with default arguments reads every name back as a string (one
    row per row of `frame`, the same columns and dtypes otherwise).

    Example:
        >>> csv_frame(single_frame(result)).to_csv("single.csv", index=False)
    """
    frame = frame.copy()
    for column in NAME_COLUMNS:
        if column in frame:
            frame[column] = frame[column].map(csv_name)
    return frame


def check_lengths(section: str, columns: Mapping[str, Sequence[Any]]) -> None:
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise InputError(f"{section}: lists of different lengths {lengths}")


def single_frame(result: Mapping[str, Any]) -> Any:
    """pandas DataFrame, one row per component, in rank order, without per-example values."""
    import pandas as pd

    rows = [{k: v for k, v in row.items() if k != "per_example"} for row in result["single"]]
    extra = [k for row in rows for k in row if k not in SINGLE_COLUMNS]
    columns = list(SINGLE_COLUMNS) + list(dict.fromkeys(extra))
    frame = pd.DataFrame(jsonable(rows), columns=columns)
    for name in ("rank", "layer", "index"):
        frame[name] = frame[name].astype("Int64")
    for name in ("effect", "sem", "ci_low", "ci_high"):
        frame[name] = frame[name].astype("float64")
    frame = frame.sort_values("rank", kind="stable", na_position="last")
    return frame.reset_index(drop=True)


def per_example_frame(result: Mapping[str, Any]) -> Any:
    """pandas DataFrame in long format: component, example, effect."""
    import pandas as pd

    names, examples, effects = [], [], []
    for row in result["single"]:
        values = row.get("per_example") or []
        names += [str(row["component"])] * len(values)
        examples += list(range(len(values)))
        effects += [math.nan if v is None else float(v) for v in values]
    return pd.DataFrame({"component": pd.Series(names, dtype="str"),
                         "example": pd.Series(examples, dtype="int64"),
                         "effect": pd.Series(effects, dtype="float64")})


def cumulative_frame(result: Mapping[str, Any]) -> Any:
    """pandas DataFrame, one row per point of the cumulative curve; `last_ablated` names the
    last component of the ablated set (each point ablates the first n_ablated of `order`)."""
    import pandas as pd

    section = result["cumulative"]
    columns = {k: section[k] for k in ("n_ablated", "fractions", "metric", "sem", "recovered")
               if section.get(k) is not None}
    check_lengths("cumulative", columns)
    frame = pd.DataFrame(jsonable(columns)).rename(columns={"fractions": "fraction"})
    order = list(section.get("order") or [])
    if "n_ablated" in frame:
        frame["n_ablated"] = frame["n_ablated"].astype("Int64")
        frame["last_ablated"] = [order[n - 1] if n is not pd.NA and 0 < n <= len(order) else ""
                               for n in frame["n_ablated"]]
    return frame


SCREENING_COLUMNS = ("component", "screen_rank", "estimated_effect", "estimated_effect_sem",
                     "verified", "exact_effect", "difference", "fails")


def screening_frame(result: Mapping[str, Any]) -> Any:
    """pandas DataFrame, one row per component in screen-rank order: estimate (± s.e.m.),
    whether it was verified, the exact effect (every component's when the study ran its
    single step, else the verified ones'), difference and fails."""
    import pandas as pd

    section = result["screening"]
    exact = section.get("exact_effect_all") or section.get("exact_effect")
    columns = {"component": [str(n) for n in section.get("components") or []],
               "screen_rank": section.get("screen_rank"),
               "estimated_effect": section.get("estimated_effect"),
               "estimated_effect_sem": section.get("estimated_effect_sem"),
               "verified": section.get("verified"), "exact_effect": exact}
    check_lengths("screening", columns)
    frame = pd.DataFrame(jsonable(columns))
    frame["exact_effect"] = frame["exact_effect"].astype("float64")
    frame["difference"] = frame["estimated_effect"] - frame["exact_effect"]
    frame["fails"] = [bool(v) for v in section.get("fails") or [False] * len(frame)]
    frame["screen_rank"] = frame["screen_rank"].astype("Int64")
    return frame.sort_values("screen_rank", kind="stable").reset_index(drop=True)


def interactions_frame(result: Mapping[str, Any]) -> Any:
    """pandas DataFrame, one row per pair: a, b, joint, single_a, single_b, interaction,
    backup_candidate."""
    import pandas as pd

    columns = ["a", "b", "joint", "single_a", "single_b", "interaction", "backup_candidate"]
    pairs = jsonable(result["interactions"].get("pairs") or [])
    extra = [k for pair in pairs for k in pair if k not in columns]
    return pd.DataFrame(pairs, columns=columns + list(dict.fromkeys(extra)))


def ablation_comparison_frame(result: Mapping[str, Any]) -> Any:
    """pandas DataFrame, one row per component: effect_TYPE and verdict_TYPE per ablation
    type, resample_std, and `changed` (the verdict differs between types)."""
    import pandas as pd

    section = result["ablation_comparison"]
    names = [str(n) for n in section.get("components") or []]
    types = list(section.get("types") or section.get("effects") or [])
    columns: dict[str, Sequence[Any]] = {"component": names}
    for kind in types:
        if kind in (section.get("effects") or {}):
            columns[f"effect_{kind}"] = section["effects"][kind]
    if section.get("resample_std") is not None:
        columns["resample_std"] = section["resample_std"]
    for kind in types:
        if kind in (section.get("verdicts") or {}):
            columns[f"verdict_{kind}"] = section["verdicts"][kind]
    check_lengths("ablation_comparison", columns)
    frame = pd.DataFrame(jsonable(columns))
    changed = {str(c.get("component")) for c in section.get("changed") or []}
    frame["changed"] = [n in changed for n in names]
    return frame


def patching_positions_frame(result: Mapping[str, Any]) -> Any:
    """pandas DataFrame in long format, one row per patched component and position (component
    order, then position): restored (1 = clean, 0 = counterfactual), sem, ci_low, ci_high,
    metric (the batch mean of the patched run)."""
    import pandas as pd

    section = result["patching"]
    names = [str(n) for n in section.get("components") or []]
    positions = list(section.get("positions") or [])
    grid = section.get("by_position") or {}
    keys = [k for k in ("restored", "sem", "ci_low", "ci_high", "metric") if k in grid]
    rows = {"component": [n for n in names for _ in positions],
            "position": [p for _ in names for p in positions]}
    for key in keys:
        check_lengths("patching by_position", {"components": names, key: grid[key]})
        rows[key] = [v for row in grid[key] for v in row]
    check_lengths("patching by_position", rows)
    frame = pd.DataFrame(jsonable(rows), columns=["component", "position", *keys])
    frame["component"] = frame["component"].astype("str")
    frame["position"] = frame["position"].astype("int64")
    for key in keys:
        frame[key] = frame[key].astype("float64")
    return frame


def patching_paths_frame(result: Mapping[str, Any]) -> Any:
    """pandas DataFrame, one row per patched component: the restored fraction (± sem, 95% CI)
    with its output patched at every position (`all_*`) and through the direct path to the
    final residual stream only (`direct_*`; absent columns where path patching did not run)."""
    import pandas as pd

    section = result["patching"]
    columns: dict[str, Sequence[Any]] = {
        "component": [str(n) for n in section.get("components") or []]}
    for part, prefix in (("all_positions", "all"), ("direct", "direct")):
        values = section.get(part) or {}
        for key in ("restored", "sem", "ci_low", "ci_high", "metric"):
            if values.get(key) is not None:
                columns[f"{prefix}_{key}"] = values[key]
    check_lengths("patching", columns)
    frame = pd.DataFrame(jsonable(columns))
    for name in frame.columns[1:]:
        frame[name] = frame[name].astype("float64")
    return frame


OPTIMAL_COLUMNS = ("component", "delta_mean", "delta_optimal", "shift_share", "best_step",
                   "effect_mean", "effect_optimal", "effect_shift_share")


def optimal_frame(result: Mapping[str, Any]) -> Any:
    """pandas DataFrame, one row per component, by delta_mean (largest first): on the fit
    prompts (the reference set; the objective's units, e.g. KL in nats) delta_mean (the
    mean-ablation damage, the fit's start), delta_optimal (Delta_OA) and shift_share =
    (delta_mean - delta_optimal) / delta_mean, best_step (the Adam step kept); on the
    evaluated prompts (the study's metric) effect_mean, effect_optimal and
    effect_shift_share likewise (NaN where that single step was not computed).

    Example:
        >>> optimal_frame(Study(model, task, ablation="optimal").run().to_dict()).columns[:3]
        Index(['component', 'delta_mean', 'delta_optimal'], dtype='object')
    """
    import pandas as pd

    section = result["optimal"]
    names = [str(n) for n in section.get("components") or []]
    columns: dict[str, Sequence[Any]] = {"component": names}
    for key in OPTIMAL_COLUMNS[1:]:
        values = section.get(key)
        columns[key] = [None] * len(names) if values is None else values
    check_lengths("optimal", columns)
    frame = pd.DataFrame(jsonable(columns), columns=list(OPTIMAL_COLUMNS))
    frame["component"] = frame["component"].astype("str")
    frame["best_step"] = frame["best_step"].astype("Int64")
    for key in OPTIMAL_COLUMNS[1:]:
        if key != "best_step":
            frame[key] = frame[key].astype("float64")
    frame = frame.sort_values("delta_mean", ascending=False, kind="stable", na_position="last")
    return frame.reset_index(drop=True)
