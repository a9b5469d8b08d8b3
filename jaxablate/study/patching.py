"""The study's optional step `patching`: where, position by position, the critical components
carry the task, and how much of it they pass straight to the logits, by activation patching
and path patching from the task's counterfactual prompts.

Not among the default steps: it needs a counterfactual source set paired with the prompts
by index (`Task.counterfactual`: IOI's ABC version of each prompt, induction's [y, x]; or
`Study(..., counterfactual=)`). A study without one refuses the step (`InputError`) before
anything compiles.

direction   denoising: the run patched into is the counterfactual, the values come from the
            clean prompts (the study's own), example i from example i. The ablation steps ask
            whether a component is necessary; denoising asks whether its clean activation
            (at one position, or along one path) is enough to bring the behaviour back into
            a run that lacks it. Noising (the reverse) is not run; `jaxablate.patching` does
            either direction for any component.
metric      the study's metric, computed on the run patched into: answer ids (IOI's IO and
            S) are the clean prompts'; a metric that reads its targets from the tokens
            (induction's loss on the repeated half) reads the counterfactual's, which keep
            the clean repeated half. A counterfactual given by hand should likewise keep the
            positions the metric reads. kl_to_clean is refused: it compares each run with
            the unpatched run of its own prompts, so clean and counterfactual both score 0.
restored    (m_patched - m_cf) / (m_clean - m_cf), batch means: 1 = the clean metric is
            restored, 0 = the counterfactual's is left; sign-free, so the same for loss-type
            and logit-type metrics (like `recovered`, with the counterfactual run in place
            of the all-ablated one). NaN (null in JSON) when the two runs' means agree.
uncertainty the ratio's per-example influence values u_i = r + (N_i - r D_i) / mean(D),
            N_i = m_patched,i - m_cf,i and D_i = m_clean,i - m_cf,i (each example paired
            with its own counterfactual), go through the study's `stats_of`: their mean is r,
            their s.e. the delta-method s.e. of the ratio (it includes the spread of the gap
            D, not only of the patched runs) and their percentile bootstrap (a linearised
            bootstrap of the ratio, with the study's resamples) the 95% CI. `gap` reports
            D's mean and s.e.
components  the study's critical heads and MLPs (effect above the study's threshold, CI above
            0, under the study's ablation), in computation order (layer, heads before the
            MLP). Not patched: critical neurons (listed under `left_out`) and components
            flagged negative (their removal helps the task). None critical: nothing is swept.
by position one sweep, through the study's `sweep_sets` (stored and resumed like every step):
            "c@p" for every critical component c and every position p (a head's z at query
            position p; an MLP's output at p), and "c" itself (every position at once,
            `all_positions`).
direct      path patching (`jaxablate.patching.path_patch`, Wang et al. 2022) of each
            critical component to "resid_final": its clean output (every position) reaches
            the logits through no other head (every other head's z frozen at the
            counterfactual run; MLPs and LayerNorms recomputed, so paths through later MLPs
            count). all_positions - direct is roughly what it passes on through later heads
            (patching effects need not add up). Not stored: recomputed when a run resumes.

    patching(study) -> section dict        the step (`Study.patching()` caches it)
    check_patching(study)                  InputError: no counterfactual, or kl_to_clean
    restored_stats(study, patched, clean, counterfactual) -> (restored, Effects)
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from jaxtyping import Float

from jaxablate.ablation.components import parse_component
from jaxablate.ablation.masks import from_components
from jaxablate.ablation.replacements import patch_replacement
from jaxablate.engine.sweeping import clean_metric
from jaxablate.errors import InputError
from jaxablate.patching.paths import path_patch
from jaxablate.study.result import jsonable
from jaxablate.study.stats import Effects

if TYPE_CHECKING:  # the protocol imports this module; at run time only `study` is passed in
    from jaxablate.study.protocol import Study

DIRECTION = "denoising"
RECEIVER = "resid_final"
RESTORED_RULE = ("restored = (m_patched - m_cf) / (m_clean - m_cf) over batch means: 1 = the "
                 "clean metric restored, 0 = the counterfactual's; denoising (clean values "
                 "patched into the counterfactual run, example by example); s.e. and CI from "
                 "the ratio's per-example influence values (delta method)")


def check_patching(study: Study) -> None:
    """Refuse (`InputError`) the patching step of a study without counterfactual prompts, or
    with a metric that compares each run with its own unpatched run (kl_to_clean)."""
    if study.counterfactual is None:
        what = f"the task {study.task.name!r} has none" if study.task is not None else (
            "pass counterfactual= (int [batch, seq], paired with tokens by index)")
        raise InputError("the patching step needs counterfactual prompts paired with the "
                         f"prompts by index (Task.counterfactual, e.g. IOI's ABC prompts or "
                         f"induction's [y, x]); {what}")
    if study.metric.reads_clean:
        raise InputError(f"the patching step needs a metric of the prompts' answers (logit "
                         f"difference, loss, ...), not {study.metric.name}: it compares each "
                         "run with the unpatched run of the same prompts (the counterfactual "
                         "run here), so clean and counterfactual would both score 0")


def restored_stats(study: Study, patched: Float[np.ndarray, "n batch"],
                   clean: Float[np.ndarray, " batch"],
                   counterfactual: Float[np.ndarray, " batch"]
                   ) -> tuple[Float[np.ndarray, " n"], Effects]:
    """The restored fraction of each row of `patched` (metric per example, [n, batch]) and its
    statistics (`Effects` of the per-example influence values; see the module docstring).
    Rows are NaN when the clean and counterfactual means agree.

    Example:
        >>> r, e = restored_stats(study, np.array([[1.0, 2.0]]), np.array([1.0, 2.0]),
        ...                       np.array([0.0, 0.0]))      # r == [1.], e.sem == [0.]
    """
    patched = np.asarray(patched, np.float64).reshape(-1, len(clean))
    gap = clean - counterfactual  # D_i
    mean_gap = float(gap.mean())
    if mean_gap == 0 or not math.isfinite(mean_gap):
        nan = np.full(patched.shape, np.nan)
        return nan[:, 0], study.stats_of(nan[None])
    num = patched - counterfactual[None]  # N_i
    restored = num.mean(1) / mean_gap
    influence = restored[:, None] + (num - restored[:, None] * gap[None]) / mean_gap
    return restored, study.stats_of(influence[None])


def _order(name: str) -> tuple[int, int, int]:
    c = parse_component(name)
    return (c.index[0], 1 if c.kind == "mlps" else 0, c.index[-1])


def _summary(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()),
            "sem": float(values.std(ddof=1) / math.sqrt(len(values)))}


def _rows(restored: np.ndarray, stats: Effects, metric: np.ndarray,
          influence: bool) -> dict[str, Any]:
    rows = {"restored": restored, "sem": stats.sem, "ci_low": stats.ci_low,
            "ci_high": stats.ci_high, "metric": metric.mean(-1)}
    if influence:  # per example: their mean is `restored`
        rows["influence"] = stats.per_example
    return rows


def patching(study: Study) -> dict[str, Any]:
    """The patching section (see the module docstring): components, positions, the clean,
    counterfactual and gap means, `by_position` ([component][position] restored, sem, CI,
    metric: the patched run's batch mean), `all_positions` and `direct` ([component] the same,
    and `influence` [component][example]), the rule, the components left out, a note and the
    seconds each part took."""
    check_patching(study)
    e = study.effects()
    critical = [n for n, c in zip(study.names, e.critical) if c]
    patched_kinds = ("heads", "mlps")
    names = sorted((n for n in critical if parse_component(n).kind in patched_kinds), key=_order)
    left_out = [n for n in critical if parse_component(n).kind not in patched_kinds]
    seq = study.tokens.shape[1]
    clean = study.baseline_values()
    counterfactual = clean_metric(study.model, study.counterfactual,
                                  study.metric).astype(np.float64)
    section: dict[str, Any] = {
        "direction": DIRECTION, "patched_into": "counterfactual", "source": "clean",
        "receiver": RECEIVER, "rule": RESTORED_RULE, "metric": study.metric.name,
        "threshold": study.threshold, "components": names, "left_out": left_out,
        "positions": list(range(seq)), "clean": _summary(clean),
        "counterfactual": _summary(counterfactual), "gap": _summary(clean - counterfactual),
        "by_position": None, "all_positions": None, "direct": None, "note": None,
        "seconds": {}}
    gap = section["gap"]
    if not abs(gap["mean"]) > 2 * gap["sem"]:
        section["note"] = ("the clean and counterfactual metrics differ by less than two s.e. "
                           "of their gap: restored fractions are barely defined")
    if not names:
        section["note"] = (f"no critical head or MLP (threshold {study.threshold:.4g}): "
                           "nothing to patch")
        return jsonable(section)
    start = time.perf_counter()
    groups = [[n] for n in names] + [[f"{n}@{p}"] for n in names for p in range(seq)]
    masks = from_components(study.model.cfg, groups, seq_len=seq)
    values = study.sweep_sets(masks, "patch", "patching", tokens=study.counterfactual,
                              replacement=patch_replacement(study.model, study.tokens))[0]
    k = len(names)
    section["all_positions"] = _rows(*restored_stats(study, values[:k], clean, counterfactual),
                                     values[:k], True)
    grid = _rows(*restored_stats(study, values[k:], clean, counterfactual), values[k:], False)
    section["by_position"] = {key: np.reshape(v, (k, seq)) for key, v in grid.items()}
    section["seconds"]["activation"] = time.perf_counter() - start
    start = time.perf_counter()
    direct = np.asarray(path_patch(study.model, study.counterfactual, study.tokens, names,
                                   [RECEIVER], study.metric), np.float64)
    restored, stats = restored_stats(study, direct, clean, counterfactual)
    section["direct"] = _rows(restored, stats, direct, True)
    section["seconds"]["path"] = time.perf_counter() - start
    return jsonable(section)

