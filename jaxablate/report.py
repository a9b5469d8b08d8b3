"""The report folder of a study: every number as JSON, tables as CSV/Parquet, a Markdown
summary and the figures.

    write_report(result, folder) -> folder, holding
        study.json                the whole result dict (strict JSON: NaN/inf become null)
        single.csv/.parquet       one row per component, ranked: effect, sem, 95% CI, flags
        per_example.parquet       long format: component, example, effect
        screening.csv/.parquet    one row per component: screening estimate, exact effect
                                  where verified, difference, fails (when present)
        cumulative.csv            metric per number ablated (when the study ran that step)
        interactions.csv          one row per pair (when present)
        ablation_comparison.csv   effects and verdicts per ablation type (when present)
        summary.md                what a paper's methods/results paragraph needs, with links
                                  (`jaxablate.summary`)
        *.png                     the figures of `jaxablate.plots` (unless plots=False)

`result` is `StudyResult.to_dict()` (or the StudyResult itself): "meta", "baseline" and
"single" are required; "screening", "cumulative", "circuit", "interactions" and
"ablation_comparison" may
be missing or None (the step was skipped), and their files are then not written. pandas (and
pyarrow for Parquet) and matplotlib are imported only here: `pip install jaxablate[report]`.

Example:
    >>> result = Study(model, task).run()
    >>> write_report(result.to_dict(), "report")       # Path('report')
    >>> print(summary_markdown(result.to_dict()))
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxablate.errors import InputError

# cumulative_order is re-exported: jaxablate.plots imports it from here.
from jaxablate.study_result import _as_dict
from jaxablate.summary import cumulative_order, summary_markdown  # noqa: F401

SINGLE_COLUMNS = ("rank", "component", "kind", "layer", "index", "effect", "sem", "ci_low",
                  "ci_high", "critical", "negative", "no_effect")


def jsonable(value: Any) -> Any:
    """`value` with numpy scalars/arrays and tuples turned into Python lists and numbers, and
    non-finite floats into None (strict JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _check_lengths(section: str, columns: Mapping[str, Sequence[Any]]) -> None:
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
    _check_lengths("cumulative", columns)
    frame = pd.DataFrame(jsonable(columns)).rename(columns={"fractions": "fraction"})
    order = list(section.get("order") or [])
    if "n_ablated" in frame:
        frame["n_ablated"] = frame["n_ablated"].astype("Int64")
        frame["last_ablated"] = [order[n - 1] if n is not pd.NA and 0 < n <= len(order) else ""
                               for n in frame["n_ablated"]]
    return frame


SCREENING_COLUMNS = ("component", "screen_rank", "estimate", "estimate_sem", "verified",
                     "exact", "difference", "fails")


def screening_frame(result: Mapping[str, Any]) -> Any:
    """pandas DataFrame, one row per component in screen-rank order: estimate (± s.e.m.),
    whether it was verified, the exact effect (every component's when the study ran its
    single step, else the verified ones'), difference and fails."""
    import pandas as pd

    section = result["screening"]
    exact = section.get("exact_all") or section.get("exact")
    columns = {"component": [str(n) for n in section.get("components") or []],
               "screen_rank": section.get("screen_rank"), "estimate": section.get("estimate"),
               "estimate_sem": section.get("estimate_sem"),
               "verified": section.get("verified"), "exact": exact}
    _check_lengths("screening", columns)
    frame = pd.DataFrame(jsonable(columns))
    frame["exact"] = frame["exact"].astype("float64")
    frame["difference"] = frame["estimate"] - frame["exact"]
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
    _check_lengths("ablation_comparison", columns)
    frame = pd.DataFrame(jsonable(columns))
    changed = {str(c.get("component")) for c in section.get("changed") or []}
    frame["changed"] = [n in changed for n in names]
    return frame


def write_report(result: Any, folder: str | os.PathLike, *, plots: bool = True,
                 top: int = 15) -> Path:
    """Write the report folder (see the module docstring) and return its path.

    result: `StudyResult.to_dict()` or the StudyResult; folder: created if needed, files in it
    overwritten. plots: write the PNG figures (matplotlib); top: rows of the summary table.

    Example:
        >>> write_report(Study(model, task).run(), "jaxablate-report")
        PosixPath('jaxablate-report')
    """
    result = _as_dict(result)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} exists and is not a folder; choose another report folder")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "study.json", "w", encoding="utf-8") as out:
        json.dump(jsonable(result), out, indent=1, allow_nan=False)
        out.write("\n")
    files = ["study.json"]
    single = single_frame(result)
    single.to_csv(folder / "single.csv", index=False)
    single.to_parquet(folder / "single.parquet", index=False)
    per_example_frame(result).to_parquet(folder / "per_example.parquet", index=False)
    files += ["single.csv", "single.parquet", "per_example.parquet"]
    if result.get("screening"):
        screening = screening_frame(result)
        screening.to_csv(folder / "screening.csv", index=False)
        screening.to_parquet(folder / "screening.parquet", index=False)
        files += ["screening.csv", "screening.parquet"]
    for name, make in (("cumulative", cumulative_frame), ("interactions", interactions_frame),
                       ("ablation_comparison", ablation_comparison_frame)):
        if result.get(name):
            make(result).to_csv(folder / f"{name}.csv", index=False)
            files.append(f"{name}.csv")
    figures: dict[str, str] = {}
    if plots:
        from jaxablate.plots import plot_all

        figures = {k: p.name for k, p in plot_all(result, folder).items()}
    files += list(figures.values())
    text = summary_markdown(result, figures, files, top)
    (folder / "summary.md").write_text(text, encoding="utf-8")
    return folder
