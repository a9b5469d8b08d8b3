"""A study's progress reports, one sweep at a time: the label a sweep's chunks are reported
under, and each count reported once.

    study.progress = progress_callback(progress)       # True: tqdm bars, a callable, None
    report = sweep_reporter(study, step, ablation)     # report(done, total) after a chunk
    # -> study.progress(label, done, total), label = progress_label(study, step, ablation)

Labels are the study's steps (or a part of one: "all_ablated", "minimality", "verify"): the
single-component sweeps that the comparison of ablation types runs under its other types
report as "comparison", not as "single". A results store reports a file's last count twice
(when its chunks finish and when the file is taken): the repeat is dropped, so that a
progress bar can tell the next sweep of a label by its counts starting again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jaxablate.engine.bars import ProgressBars

if TYPE_CHECKING:
    from jaxablate.study.protocol import Study


def progress_callback(progress: Any) -> Any:
    """A Study's `progress` argument as its callback `(step, done, total)`: True gives tqdm
    bars on stderr (`ProgressBars`; `Study.run` gives them the whole plan's totals before
    the first chunk), False or None nothing, a callable itself.

    Example:
        >>> type(progress_callback(True)).__name__
        'ProgressBars'
    """
    if progress is True:
        return ProgressBars()
    return None if progress is False else progress


def progress_label(study: Study, step: str, ablation: str) -> str:
    """The label of a sweep that `Study.sweep_sets` runs for `step` under `ablation`.

    Example:
        >>> progress_label(Study(model, task, ablation="mean"), "single", "zero")
        'comparison'
    """
    return "comparison" if step == "single" and ablation != study.ablation else step


def sweep_reporter(study: Study, step: str, ablation: str
                   ) -> Callable[[int, int], None] | None:
    """The `progress(done, total)` of one sweep: `study.progress(label, done, total)` for
    each new count (None when the study has no progress callback)."""
    if study.progress is None:
        return None
    label = progress_label(study, step, ablation)
    last: list[tuple[int, int]] = []

    def report(done: int, total: int) -> None:
        if last != [(done, total)]:  # a results store repeats a file's last count
            last[:] = [(done, total)]
            study.progress(label, done, total)

    return report
