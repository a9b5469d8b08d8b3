"""Progress bars on stderr for sweeps and studies: one tqdm bar per progress label (a study's
step, or "sweep" for `jaxablate.sweep(..., progress=True)`), with an ETA and a total known
before the first chunk, so that it never grows.

    bars = ProgressBars(planned={"single": 144, "comparison": 288})
    bars("single", done, total)        # the (label, done, total) a Study reports
    bars.close()

`progress=True` in `jaxablate.sweep` and `jaxablate.Study` makes one of these; the
command line's study uses it with the plan's totals (`jaxablate.study.estimate`). Without
tqdm installed, a plain "label: n ablations" line per label.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


class ProgressBars:
    """A Study progress callback `(step, done, total)`: one tqdm bar on stderr per progress
    label (the study's step, or a part of one: "all_ablated", "minimality", "optimal fit"),
    with an ETA. With the plan's totals (`planned`, label -> the planned sum of its sweeps'
    totals, `StudyPlan.progress_totals`) a bar's total is the step's whole planned work from
    its first chunk on, whatever the number of sweeps (resample's draws, the comparison's
    ablation types, the circuit's greedy steps): it never grows. Where the plan is an upper
    bound (`bounded` labels: the circuit's) the bar ends at the work done; a label that
    comes back after another (the comparison after its optimal fit) gets the rest of its
    plan. A label the plan does not know gets the total of its first sweep, grown by each
    further one. Silent when disabled; a plain "step: n ablations" line per step without
    tqdm.

    A further sweep of the same label is recognised by its counts: its `done` starts again
    (below the last one), its total differs, or the last sweep had finished.
    """

    def __init__(self, enabled: bool = True, planned: dict[str, int] | None = None,
                 bounded: Any = ()):
        self.enabled = enabled
        self.planned = dict(planned or {})
        self.bounded = set(bounded)  # labels whose planned total is an upper bound
        self.bar: Any = None
        self.step = ""
        self.done = 0  # within the current sweep
        self.total = 0  # of the current sweep
        self.count = 0  # ablations of the current bar so far
        self.base = 0  # ablations of the current bar's earlier sweeps

    def __call__(self, step: str, done: int | np.integer, total: int | np.integer) -> None:
        if not self.enabled:
            return
        done, total = int(done), int(total)
        if step != self.step or self.bar is None:
            self.close()
            self.step, self.done, self.total, self.count, self.base = step, 0, total, 0, 0
            self.bar = self._new(step, max(self.planned.get(step, 0), total))
        elif self.done >= self.total or done < self.done or total != self.total:
            self.base, self.done, self.total = self.base + self.done, 0, total  # next sweep
        count = self.base + done
        if self.bar and count > self.bar.total:  # more than planned (or not planned)
            self.bar.total = count + (total - done)
            self.bar.refresh()
        if self.bar:
            self.bar.update(count - self.count)
        self.count, self.done = count, done

    def _new(self, step: str, total: int) -> Any:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return False
        return tqdm(total=total, desc=step, file=sys.stderr, unit="ablation",
                    dynamic_ncols=True)

    def close(self) -> None:
        if self.step in self.planned:  # what is left of the label's plan, if it comes back
            self.planned[self.step] = max(0, self.planned[self.step] - self.count)
        if self.bar:
            if self.step in self.bounded and self.bar.n < self.bar.total:
                self.bar.total = self.bar.n  # an upper bound: the work that was needed
                self.bar.refresh()
            self.bar.close()
        elif self.bar is False:
            print(f"{self.step}: {self.count} ablations", file=sys.stderr)
        self.bar = None


def sweep_progress(progress: Any) -> Any:
    """A sweep's `progress` argument as its callback `(done, total)`: True gives one bar
    labelled "sweep" (its total is the sweep's, known at the first chunk) that closes when
    the sweep is done; False or None nothing; a callable itself.

    Example:
        >>> report = sweep_progress(True)
        >>> report(4, 8); report(8, 8)         # a bar on stderr, closed at 8/8
    """
    if progress is not True:
        return None if progress is False else progress
    bars = ProgressBars()
    finished: list[bool] = []

    def report(done: int, total: int) -> None:
        if finished:  # a results store repeats a file's last count
            return
        bars("sweep", done, total)
        if done >= total:
            bars.close()
            finished.append(True)

    return report
