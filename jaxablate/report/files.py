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
        patching_positions.csv    restored fraction per patched component and position, and
        patching_paths.csv        per component: every position vs the direct path (when
                                  the optional patching step ran)
        optimal.csv               per component: Delta_OA beside Delta_mean on the fit
                                  prompts, the shift share, and the study's effects under
                                  optimal and mean ablation (when optimal ablation ran)
        summary.md                what a paper's methods/results paragraph needs, with links
                                  (`jaxablate.report.summary`)
        *.png                     the figures of `jaxablate.report.plots` (unless plots=False)
        .jaxablate-report.json    what write_report wrote, for which run: the run's settings
                                  (`report_fingerprint`) and each file's SHA-256

The CSVs read back with `pandas.read_csv(path)` and its default arguments, names as strings:
a head is written "head 1.10" there (a bare "1.10" would read back as the number 1.1; other
names as they are: `jaxablate.report.tables.csv_frame`); study.json and the Parquet files
keep the library's names ("1.10") and the tables' dtypes.

It never replaces a file it did not write. Before writing, `check_report_folder` refuses a
folder holding a file of a report's name (`report_names()`) that its record does not list,
or that changed since it was written (a user's own summary.md, an edited table), and a
folder holding the report of a run with other settings ("ablation: mean there, zero now")
unless overwrite=True, which replaces that earlier report's own files. The same settings
again (a resumed run) replace the earlier report without asking. Files of other names (the
sweeps/ folder, a user's notes) are never touched and never cause a refusal.

`result` is `StudyResult.to_dict()` (or the StudyResult itself): "meta", "baseline" and
"single" are required; "screening", "cumulative", "circuit", "interactions",
"ablation_comparison", "patching" and "optimal" may be missing or None (the step was skipped), and
their files are then not written. pandas (and pyarrow for Parquet) and matplotlib are
imported only here: `pip install jaxablate[report]`.

Example:
    >>> result = Study(model, task).run()
    >>> write_report(result.to_dict(), "report")       # Path('report')
    >>> print(summary_markdown(result.to_dict()))
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxablate.errors import InputError
from jaxablate.report.summary import summary_markdown
from jaxablate.report.tables import (
    ablation_comparison_frame,
    csv_frame,
    cumulative_frame,
    interactions_frame,
    optimal_frame,
    patching_paths_frame,
    patching_positions_frame,
    per_example_frame,
    screening_frame,
    single_frame,
)
from jaxablate.study.result import as_result_dict, jsonable
from jaxablate.version import VERSION

REPORT_MARKER = ".jaxablate-report.json"
# The settings a report's numbers depend on, in the order a refusal lists them.
FINGERPRINT_KEYS = ("model", "task", "template", "prompts", "prepend_bos", "n_prompts", "metric",
                    "ablation", "components", "neuron_layers", "seed", "threshold", "oa_objective",
                    "oa_steps", "oa_lr")


def report_names() -> tuple[str, ...]:
    """Every file name `write_report` can write into a report folder, in the order it writes
    them (the folder checks name the first one in this order).

    Example:
        >>> report_names()[:3]
        ('study.json', 'single.csv', 'single.parquet')
    """
    # at call time: plots imports this module's helpers
    from jaxablate.report.plots import FIGURES, OPT_IN_FIGURES

    return ("study.json", "single.csv", "single.parquet", "per_example.parquet",
            "screening.csv", "screening.parquet", "cumulative.csv", "interactions.csv",
            "ablation_comparison.csv", "patching_positions.csv", "patching_paths.csv",
            "optimal.csv",
            *(f"{name}.png" for name in FIGURES + OPT_IN_FIGURES), "summary.md")


def report_fingerprint(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a study run that its report's numbers depend on, from a result's
    `meta` (timings, dates and versions left out), as a flat JSON-ready dict.

    meta: `StudyResult.meta`, or a dict with some of its keys (the command line builds one
    from its options before anything loads): "model", "task" ({"name", "template" (IOI),
    "source" (a prompts file), "prepend_bos"}), "n_prompts", "metric", "ablation", "components",
    "neuron_layers", "seed", "threshold" with "threshold_rule", "optimal" ({"objective",
    "steps", "learning_rate"}: oa_objective, oa_steps, oa_lr). Keys absent from `meta` are
    absent from the fingerprint, and `fingerprint_differences` compares only the keys both
    sides have. The threshold is its value when given (threshold_rule "given ..."), else
    "default" (the study's rule, which follows from the other settings).

    Example:
        >>> report_fingerprint({"model": "gpt2", "task": {"name": "ioi", "template": 3},
        ...                     "ablation": "mean", "components": ("heads",)})
        {'model': 'gpt2', 'task': 'ioi', 'template': 3, 'ablation': 'mean', 'components': ['heads']}
    """
    task = meta.get("task")
    task = task if isinstance(task, Mapping) else {}
    found: dict[str, Any] = {}
    if "model" in meta:
        found["model"] = meta["model"]
    if "name" in task:
        found["task"] = task["name"]
    if "template" in task:
        found["template"] = task["template"]
    if "source" in task:
        found["prompts"] = task["source"]
    if "prepend_bos" in task:
        found["prepend_bos"] = bool(task["prepend_bos"])
    for key in ("n_prompts", "metric", "ablation", "components", "neuron_layers", "seed"):
        if key in meta:
            found[key] = meta[key]
    if "threshold" in meta or "threshold_rule" in meta:
        given = str(meta.get("threshold_rule") or "").startswith("given")
        found["threshold"] = meta.get("threshold") if given else "default"
    optimal = meta.get("optimal")
    if isinstance(optimal, Mapping):
        for key, name in (("objective", "oa_objective"), ("steps", "oa_steps"),
                          ("learning_rate", "oa_lr")):
            if key in optimal:
                found[name] = optimal[key]
    return jsonable({key: found[key] for key in FINGERPRINT_KEYS if key in found})


def fingerprint_differences(there: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The settings that differ between two fingerprints, compared on the keys both have:
    ["ablation: mean there, zero now", ...] (empty when they agree).

    Example:
        >>> fingerprint_differences({"ablation": "mean", "seed": 0}, {"ablation": "zero"})
        ['ablation: mean there, zero now']
    """
    def show(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value)) or "none"
        return "none" if value is None else str(value)

    return [f"{key}: {show(there[key])} there, {show(now[key])} now" for key in FINGERPRINT_KEYS
            if key in there and key in now and jsonable(there[key]) != jsonable(now[key])]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_marker(folder: Path) -> tuple[dict[str, Any] | None, bool]:
    """(the folder's record of what write_report wrote, whether a record file exists but
    cannot be read as one)."""
    path = folder / REPORT_MARKER
    if not path.is_file():
        return None, path.exists()
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, True
    ok = (isinstance(marker, dict) and isinstance(marker.get("files"), dict)
          and isinstance(marker.get("settings"), dict))
    return (marker, False) if ok else (None, True)


def _write_marker(folder: Path, settings: Mapping[str, Any], files: Mapping[str, str | None],
                  complete: bool) -> None:
    """The record, replaced atomically (a kill leaves the old record or the new one)."""
    record = {"written_by": f"jaxablate {VERSION}", "complete": complete,
              "settings": dict(settings), "files": dict(files)}
    temporary = folder / (REPORT_MARKER + ".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, folder / REPORT_MARKER)


def check_report_folder(folder: str | os.PathLike, settings: Mapping[str, Any], *,
                        overwrite: bool = False, command_line: bool = False) -> None:
    """Refuse (`InputError`) to write a report into `folder` where it would replace a file
    jaxablate did not write, or, unless `overwrite`, the report of a run with other settings.

    folder: the report folder (absent or empty: fine). settings: `report_fingerprint` of the
    run about to write (compared on the keys both runs have). A file of a report's name
    (`report_names()`) that the folder's record does not list, or whose content changed
    since it was written, is refused even with overwrite; files of other names are ignored.
    command_line: word the fixes for `jaxablate study` (--out, --overwrite).

    Example:
        >>> check_report_folder("report", report_fingerprint(result["meta"]))
        Traceback (most recent call last):
        jaxablate.errors.InputError: report folder report: summary.md was not written by
        jaxablate (the folder has no record .jaxablate-report.json), and a report would
        replace it; move the file out of the folder or pass another folder
    """
    folder = Path(folder)
    where = f"--out {folder}" if command_line else f"report folder {folder}"
    other = "choose another --out" if command_line else "pass another folder"
    if not folder.exists():
        return
    if not folder.is_dir():
        raise InputError(f"{where} exists and is not a folder; {other}")
    marker, damaged = _read_marker(folder)
    files = marker["files"] if marker is not None else {}
    present = []
    for name in report_names():
        path = folder / name
        if not (path.exists() or path.is_symlink()):
            continue
        if name not in files or path.is_symlink() or not path.is_file():
            why = (f"its record {REPORT_MARKER} cannot be read" if damaged else
                   f"the folder has no record {REPORT_MARKER}" if marker is None else
                   f"its record {REPORT_MARKER} does not list it" if name not in files else
                   "it is not a plain file")
            why = f" ({why})"
            raise InputError(f"{where}: {name} was not written by jaxablate{why}, and a report "
                             f"would replace it; move the file out of the folder or {other}")
        if files[name] is not None and files[name] != _sha256(path):
            raise InputError(f"{where}: {name} changed since jaxablate wrote it, and a report "
                             f"would replace it; move the file out of the folder or {other}")
        present.append(name)
    if marker is None or not present or overwrite:
        return
    differences = fingerprint_differences(marker["settings"], settings)
    if differences:
        again = (f"--overwrite to start afresh (it replaces that report's files and empties "
                 f"{folder / 'sweeps'}" if command_line else
                 "overwrite=True to replace that report's files (")
        raise InputError(f"{where} holds the report of a run with other settings "
                         f"({'; '.join(differences)}); pass {again}; files jaxablate did not "
                         f"write are kept), or {other}")


def write_report(result: Any, folder: str | os.PathLike, *, plots: bool = True,
                 top: int = 15, overwrite: bool = False) -> Path:
    """Write the report folder (see the module docstring) and return its path.

    result: `StudyResult.to_dict()` or the StudyResult; folder: created if needed.
    plots: write the PNG figures (matplotlib); top: rows of the summary table.
    overwrite: replace the report of a run with other settings (its own files only).
    Refused with `InputError` before anything is written, by `check_report_folder`, where a
    file of a report's name is not jaxablate's or the folder holds another run's report.
    Files of the earlier report that this one does not write (a section now skipped) are
    removed, so the folder holds one report; the record `.jaxablate-report.json` lists what
    was written, with the run's `report_fingerprint`.

    Example:
        >>> write_report(Study(model, task).run(), "jaxablate-report")
        PosixPath('jaxablate-report')
    """
    result = as_result_dict(result)
    folder = Path(folder)
    settings = report_fingerprint(result["meta"])
    check_report_folder(folder, settings, overwrite=overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    previous, _ = _read_marker(folder)
    # Recorded first, with no digests yet: every file of a report's name here is jaxablate's
    # (just checked), so a kill part-way leaves files that a re-run may replace.
    _write_marker(folder, settings, dict.fromkeys(report_names()), complete=False)
    with open(folder / "study.json", "w", encoding="utf-8") as out:
        json.dump(jsonable(result), out, indent=1, allow_nan=False)
        out.write("\n")
    files = ["study.json"]
    single = single_frame(result)
    csv_frame(single).to_csv(folder / "single.csv", index=False)
    single.to_parquet(folder / "single.parquet", index=False)
    per_example_frame(result).to_parquet(folder / "per_example.parquet", index=False)
    files += ["single.csv", "single.parquet", "per_example.parquet"]
    if result.get("screening"):
        screening = screening_frame(result)
        csv_frame(screening).to_csv(folder / "screening.csv", index=False)
        screening.to_parquet(folder / "screening.parquet", index=False)
        files += ["screening.csv", "screening.parquet"]
    for name, section, make in (
            ("cumulative", "cumulative", cumulative_frame),
            ("interactions", "interactions", interactions_frame),
            ("ablation_comparison", "ablation_comparison", ablation_comparison_frame),
            ("patching_positions", "patching", patching_positions_frame),
            ("patching_paths", "patching", patching_paths_frame),
            ("optimal", "optimal", optimal_frame)):
        if result.get(section):
            csv_frame(make(result)).to_csv(folder / f"{name}.csv", index=False)
            files.append(f"{name}.csv")
    figures: dict[str, str] = {}
    if plots:
        from jaxablate.report.plots import plot_all

        figures = {k: p.name for k, p in plot_all(result, folder).items()}
    files += list(figures.values())
    text = summary_markdown(result, figures, files, top)
    (folder / "summary.md").write_text(text, encoding="utf-8")
    files.append("summary.md")
    # The earlier report's files this one did not write (checked unchanged above) would
    # mislead beside it: remove them.
    for name in (previous or {}).get("files", {}):
        if name in report_names() and name not in files and (folder / name).is_file():
            (folder / name).unlink()
    _write_marker(folder, settings, {name: _sha256(folder / name) for name in files},
                  complete=True)
    return folder
