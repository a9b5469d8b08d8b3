"""Running a study's steps (`Study.run`): every option checked before any work, then the steps
in protocol order (STEPS), each timed, gathered in a `StudyResult`, with the "optimal"
section (`jaxablate.study.optimal`) when the study's optimal-ablation fit ran (optimal as the
study's ablation or one of the comparison's types).

    run_steps(study, *, fractions, target, top_k, types, steps, screen_method, screen_steps,
              screen_top_k, circuit_ablation) -> StudyResult
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jaxablate.engine.bars import ProgressBars
from jaxablate.errors import InputError
from jaxablate.study import optimal as optimal_step
from jaxablate.study import patching as patching_step
from jaxablate.study.checks import (
    STEPS,
    check_circuit_ablation,
    check_fractions,
    check_screening,
    check_target,
    check_types,
)
from jaxablate.study.estimate import plan_study
from jaxablate.study.result import StudyResult
from jaxablate.study.speed import Speed

# A plan made only for its progress totals needs no measured speed (no probes run).
TOTALS_ONLY = Speed(flops=1e12, host=1.0, seconds=0.0)

if TYPE_CHECKING:  # the protocol imports this module; at run time only `study` is passed in
    from jaxablate.study.protocol import Study


def run_steps(study: Study, *, fractions: Sequence[float], target: float | int,
              top_k: int | None, types: Sequence[str], steps: Sequence[str],
              screen_method: str, screen_steps: int, screen_top_k: int | None,
              circuit_ablation: str) -> StudyResult:
    """The steps in `steps` (baseline and single always) as a `StudyResult`; the arguments
    are `Study.run`'s, all checked (InputError) before the first sweep.

    Example:
        >>> run_steps(study, fractions=(0.5, 1.0), target=0.8, top_k=None,
        ...           types=("zero", "mean"), steps=("baseline", "single"),
        ...           screen_method="ig", screen_steps=16, screen_top_k=None,
        ...           circuit_ablation="same").single[0]["effect"]
    """
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise InputError(f"unknown steps {bad}; known: {STEPS}")
    check_fractions(fractions)
    check_target(target)
    check_types(types)
    study.interaction_top_k(top_k)
    check_screening(screen_method, screen_steps, screen_top_k, len(study.names))
    check_circuit_ablation(circuit_ablation)
    if "patching" in steps:
        patching_step.check_patching(study)
    calls = {"baseline": study.baseline, "single": study.single,
             "screening": lambda: study.screen(screen_method, screen_steps, screen_top_k),
             "cumulative": lambda: study.cumulative(fractions),
             "circuit": lambda: study.minimal_circuit(target, circuit_ablation=circuit_ablation),
             "interactions": lambda: study.interactions(top_k),
             "ablation_comparison": lambda: study.compare_ablations(types),
             "patching": study.patching}
    # Every pair tested: the singles come from the pairs' sweep (their shared prefixes).
    study.pairs_with_singles = ("interactions" in steps and not study.has_single(study.ablation)
                                and study.interaction_top_k(top_k) == len(study.names))
    bars = study.progress if isinstance(study.progress, ProgressBars) else None
    if bars is not None and not bars.planned:  # progress=True: the whole plan's totals first
        plan = plan_study(study, steps=steps, fractions=fractions, target=target, top_k=top_k,
                          types=types, screen_method=screen_method, screen_steps=screen_steps,
                          screen_top_k=screen_top_k, circuit_ablation=circuit_ablation,
                          chunk_size=study._chunk, speed=TOTALS_ONLY)
        bars.planned, bars.bounded = plan.progress_totals(), plan.bounded_labels()
    out: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    try:
        for step in ("baseline", "single") + tuple(s for s in STEPS[2:] if s in steps):
            start = time.perf_counter()
            out[step] = calls[step]()
            seconds[step] = time.perf_counter() - start
    finally:
        if bars is not None:
            bars.close()
    optimal = optimal_step.optimal_section(study) if study.has_optimal_fit() else None
    seconds["total"] = sum(seconds.values())
    return StudyResult(meta=study.meta(seconds), baseline=out["baseline"],
                       single=out["single"], screening=out.get("screening"),
                       cumulative=out.get("cumulative"), circuit=out.get("circuit"),
                       interactions=out.get("interactions"),
                       ablation_comparison=out.get("ablation_comparison"),
                       patching=out.get("patching"), optimal=optimal)
