"""What a study will run and how long it will take on this machine, before anything runs:
its sweeps step by step (the progress label, ablation type, number of masks, draws) and the
estimated seconds of each, from the engine's cost model (`jaxablate.study.cost`) at the
machine's measured speed (`jaxablate.study.speed`). Nothing is swept or compiled but the
speed probes (a matmul and a tiny loop, well under a second).

    plan = plan_study(study, steps=DEFAULT_STEPS)        # arguments as Study.run's
    print("\\n".join(plan.lines()))
    plan.seconds, plan.upper_seconds                    # the estimate; its upper bound
    plan.progress_totals()                              # {"single": 144, ...} per label

The sweeps mirror the protocol (`jaxablate.study.protocol`, `steps`, `screen`, `optimal`,
`patching`): the same mask sets, padded as `Study.sweep_seps` pads them, the same chunk, the
same draws. What only a run can tell is bounded or assumed, and each step says which
(`StepPlan.bound`):

exact        the masks are known: single, interactions of every component, the comparison.
estimate     sizes known, contents assumed: cumulative (each set from layer 0), the pairs
             of a top-k that is not every component (k spread over the layers).
upper bound  circuit: the greedy search ends when the target is recovered, after at most N
             steps of N, N - 1, ... candidates (N (N + 1) / 2 masks); the estimate assumes
             ceil(sqrt(N)) members (ASSUMED_CIRCUIT), the upper bound all N. patching: the
             critical components are not known; the estimate assumes ceil(sqrt(N)) of the
             heads and MLPs are, the upper bound that all are.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from jaxablate.engine.sweeping import planned_chunk_size
from jaxablate.study.checks import DEFAULT_FRACTIONS, DEFAULT_STEPS, DEFAULT_TYPES, STEPS
from jaxablate.study.planner import Planner, StepPlan
from jaxablate.study.speed import Speed, measure_speed

if TYPE_CHECKING:
    from jaxablate.study.protocol import Study


@dataclasses.dataclass
class StudyPlan:
    """The plan of a study run: steps (in run order), the machine's speed, planning_s (the
    seconds planning took, the probes included).

    Example:
        >>> plan = plan_study(study)
        >>> round(plan.seconds), plan.steps[1].sweeps[0].n_masks      # e.g. 41, 144
    """

    steps: list[StepPlan]
    speed: Speed
    planning_s: float

    @property
    def seconds(self) -> float:
        """The estimated seconds of the whole run (the stated estimates of bounded steps)."""
        return sum(s.seconds for s in self.steps)

    @property
    def upper_seconds(self) -> float:
        """The seconds with every bounded step at its upper bound."""
        return sum(s.seconds if s.upper_s is None else s.upper_s for s in self.steps)

    def progress_totals(self) -> dict[str, int]:
        """Per progress label, the planned sum of its sweeps' totals (upper bounds where a
        step has one): what a progress bar's total is before its first chunk."""
        totals: dict[str, int] = {}
        for step in self.steps:
            for label, n in step.progress.items():
                totals[label] = totals.get(label, 0) + n
        return totals

    def bounded_labels(self) -> set[str]:
        """The progress labels whose planned total is an upper bound (the circuit's)."""
        return {label for step in self.steps for label in step.bounded}

    def lines(self) -> list[str]:
        """The plan as text: a line per step and per sweep, then the total."""
        n = sum(len(s.sweeps) for s in self.steps)
        out = [(f"plan: {n} sweep{'s' * (n != 1)}; this machine now: "
                f"{self.speed.flops / 1e9:.0f} GFLOP/s (float32 matmul), compiling "
                f"{self.speed.host:.1f}x slower than on an idle host (load)")]
        for step in self.steps:
            bound = "" if step.bound == "exact" else (
                f" [{step.bound}" + (f"; at most {duration(step.upper_s)}"
                                     if step.upper_s is not None else "") + "]")
            out.append(f"  {step.name:<20} ~{duration(step.seconds):>8} "
                       f"(compile ~{duration(step.compile_s)}){bound}")
            # Consecutive sweeps of one label and type (the circuit's steps) on one line.
            for _, group in itertools.groupby(step.sweeps,
                                              key=lambda s: (s.label, s.ablation, s.draws)):
                group = list(group)
                s, n = group[0], sum(g.n_masks for g in group)
                draws = f" x {s.draws} draws" if s.draws > 1 else ""
                several = f" in {len(group)} sweeps" if len(group) > 1 else ""
                out.append(f"      {s.label:<20} {s.ablation:<9} {n:>7,} masks{draws}{several}"
                           f"  ~{duration(sum(g.seconds for g in group))}")
            for what, seconds in step.other:
                out.append(f"      {what:<40} ~{duration(seconds)}")
            if step.note:
                out.append(f"      ({step.note})")
        upper = (f"; at most {duration(self.upper_seconds)}"
                 if self.upper_seconds > self.seconds * 1.05 else "")
        out.append(f"estimated time: ~{duration(self.seconds)}{upper} on this machine "
                   "(fresh compilation; an earlier run's cached programs make it shorter)")
        return out


def duration(seconds: float | int) -> str:
    """Seconds as a short duration: "45 s", "12 min", "1.6 h", "3.2 days"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} days"


def plan_study(study: Study, *, steps: Sequence[str] = DEFAULT_STEPS,
               fractions: Sequence[float] = DEFAULT_FRACTIONS, target: float | int = 0.8,
               top_k: int | None = None, types: Sequence[str] = DEFAULT_TYPES,
               screen_method: str = "ig", screen_steps: int = 16,
               screen_top_k: int | None = None, circuit_ablation: str = "same",
               chunk_size: int | None = None, speed: Speed | None = None) -> StudyPlan:
    """The plan of `study.run(steps=..., ...)` (the same arguments; chunk_size: the study's
    when it was given one): every step's sweeps and estimated seconds on this machine
    (`speed`: measured now when not given). Runs no sweep and compiles nothing but the
    speed probes.

    Example:
        >>> plan = plan_study(Study(model, task), steps=("baseline", "single"))
        >>> [s.name for s in plan.steps], plan.steps[1].sweeps[0].n_masks   # ..., 144
    """
    start = time.perf_counter()
    if speed is None:
        chunk = chunk_size or planned_chunk_size(study.model, study.tokens, study.single_masks,
                                                 study.metric)
        speed = measure_speed(study.model.cfg, rows=chunk * study.tokens.size)
    planner = Planner(study, speed, chunk_size, tuple(steps), top_k)
    calls = {"baseline": planner.baseline, "single": planner.single,
             "screening": lambda: planner.screening(screen_method, screen_steps),
             "cumulative": lambda: planner.cumulative(fractions),
             "circuit": lambda: planner.circuit(circuit_ablation),
             "interactions": planner.interactions,
             "ablation_comparison": lambda: planner.comparison(types),
             "patching": planner.patching}
    planned = [calls[name]() for name in ("baseline", "single")
               + tuple(s for s in STEPS[2:] if s in steps)]
    return StudyPlan(planned, speed, time.perf_counter() - start)

