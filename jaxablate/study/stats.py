"""The study's statistics, pure numpy: bootstrap effects, ranks, Spearman, the cumulative
curve's cliff and the pair-interaction table (tested on synthetic numbers in test_study.py)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Bool, Float, Int

from jaxablate.errors import InputError

CI_LEVEL = 0.95
CLIFF_RULE = ("cliff = the step with the largest drop in recovered = (m - m_all) / "
              "(baseline - m_all) between consecutive fractions (the first step starts at the "
              "clean model, recovered 1); below_half = the first fraction with recovered < 0.5")
BOOT_ROWS = 2048  # components per bootstrap matrix product (memory stays O(rows * n_bootstrap))


@dataclasses.dataclass(frozen=True)
class Effects:
    """Signed effects of N ablations: per example [n, batch] and their summaries [n]."""

    per_example: Float[np.ndarray, "n batch"]
    mean: Float[np.ndarray, " n"]
    sem: Float[np.ndarray, " n"]
    ci_low: Float[np.ndarray, " n"]
    ci_high: Float[np.ndarray, " n"]
    rank: Int[np.ndarray, " n"]  # importance: 1 = largest |effect|
    critical: Bool[np.ndarray, " n"]
    negative: Bool[np.ndarray, " n"]
    no_effect: Bool[np.ndarray, " n"]

    def verdicts(self) -> list[str]:
        """"critical", "negative" or "none" per ablation."""
        return ["critical" if c else "negative" if g else "none"
                for c, g in zip(self.critical, self.negative)]


def bootstrap_counts(batch: int, n_bootstrap: int, seed: int) -> Float[np.ndarray, "boot batch"]:
    """How often each example appears in each of `n_bootstrap` resamples (with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(batch, np.full(batch, 1.0 / batch), size=n_bootstrap).astype(float)


def effect_stats(per_example: Float[np.ndarray, "*draws n batch"],
                 counts: Float[np.ndarray, "boot batch"], threshold: float,
                 draw_counts: Float[np.ndarray, "boot draws"] | None = None) -> Effects:
    """Mean, s.e., 95% percentile bootstrap CI, rank and flags of per-example effects.

    per_example: [n, batch], or [draws, n, batch] for several draws of a random replacement
    (resample ablation). With draws, the uncertainty includes the variance between draws,
    not only between examples: the bootstrap resamples the draws too (`draw_counts`, drawn
    like `counts`: each replicate weighs draw d by how often it was drawn), and the
    s.e. is sqrt(s_examples^2 / batch + s_draws^2 / draws), where s_examples is the spread of
    the per-example effects averaged over draws and s_draws that of the per-draw effects
    averaged over examples. `Effects.per_example` is then the mean over draws.

    Example:
        >>> e = effect_stats(np.array([[1.0, 1.2, 0.9]]), bootstrap_counts(3, 1000, 0), 0.5)
        >>> bool(e.critical[0]), bool(e.no_effect[0])
        (True, False)
    """
    values = np.asarray(per_example, np.float64)
    if values.ndim == 2:
        values = values[None]
    draws, n, batch = values.shape
    if draws > 1 and (draw_counts is None or np.shape(draw_counts) != (len(counts), draws)):
        raise InputError(f"effect_stats: {draws} draws need draw_counts [boot, draws] = "
                         f"[{len(counts)}, {draws}] (bootstrap_counts(draws, boot, seed))")
    per_example = values.mean(axis=0)
    mean = per_example.mean(axis=1)
    sem2 = per_example.var(axis=1, ddof=1) / batch
    if draws > 1:
        sem2 = sem2 + values.mean(axis=2).var(axis=0, ddof=1) / draws
    sem = np.sqrt(sem2)
    tail = 100 * (1 - CI_LEVEL) / 2
    low, high = np.empty(n), np.empty(n)
    weights = np.ones((len(counts), 1)) if draws == 1 else np.asarray(draw_counts, np.float64)
    for begin in range(0, n, BOOT_ROWS):
        rows = values[:, begin:begin + BOOT_ROWS]  # [draws, rows, batch]
        by_draw = rows @ counts.T / batch  # [draws, rows, boot]
        boot = np.einsum("drk,kd->rk", by_draw, weights) / draws  # [rows, boot]
        low[begin:begin + BOOT_ROWS], high[begin:begin + BOOT_ROWS] = np.percentile(
            boot, [tail, 100 - tail], axis=1)
    rank = np.empty(n, np.int64)  # importance: by |effect|, largest first
    rank[np.argsort(-np.abs(mean), kind="stable")] = np.arange(1, n + 1)
    no_effect = (low <= 0.0) & (high >= 0.0)
    return Effects(per_example, mean, sem, low, high, rank,
                   critical=(mean > threshold) & (low > 0.0), negative=high < 0.0,
                   no_effect=no_effect)


# float32 rounding between two compiled programs computing the same metric, relative to
# max(1, |metric|): the sweep's measured determinism bound is 2.2e-6 (jaxablate.store), so a
# difference below this is noise, not a result.
METRIC_ROUNDING = 1e-5


def recovered_tolerance(recovered: Sequence[float], baseline: float, floor: float) -> float:
    """How far apart two recovered fractions r = (m - m_all) / (baseline - m_all) can be from
    float32 rounding alone. dr = (dm - r dbaseline - (1 - r) dm_all) / gap, so each moves by
    at most eps (1 + |r| + |1 - r|) / |baseline - m_all| (first order), with
    eps = METRIC_ROUNDING x max(1, |baseline|, |m_all|, |m|) on every metric value.

    Example:
        >>> recovered_tolerance((0.9, 0.85), baseline=3.5, floor=0.2)     # ~1.8e-5
    """
    gap = abs(baseline - floor)
    if not gap > 0:
        return math.inf
    scale = max([1.0, abs(baseline), abs(floor)] +
                [abs(floor + r * (baseline - floor)) for r in recovered])
    eps = METRIC_ROUNDING * scale
    return sum(eps * (1 + abs(r) + abs(1 - r)) / gap for r in recovered)


def rankdata(x: Float[np.ndarray, " n"]) -> Float[np.ndarray, " n"]:
    """Ranks 1..n, ties given their average rank (scipy.stats.rankdata's "average")."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ordered = x[order]
    new = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    group = np.cumsum(new)  # 1-based tie group of each sorted entry
    starts = np.concatenate([np.nonzero(new)[0], [len(x)]])
    ranks = np.empty(len(x))
    ranks[order] = 0.5 * (starts[group] + starts[group - 1] + 1)
    return ranks


def spearman(a: Float[np.ndarray, " n"], b: Float[np.ndarray, " n"]) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); NaN if either is
    constant."""
    ra, rb = rankdata(a) - (len(a) + 1) / 2, rankdata(b) - (len(b) + 1) / 2
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else math.nan


def find_cliff(fractions: Float[np.ndarray, " p"], n_ablated: Int[np.ndarray, " p"],
               recovered: Float[np.ndarray, " p"]) -> dict[str, Any]:
    """The cumulative curve's cliff (see CLIFF_RULE); None fields where there is none."""
    previous = np.concatenate([[1.0], recovered[:-1]])
    drops = np.where(np.isfinite(previous - recovered), previous - recovered, -np.inf)
    i = int(np.argmax(drops))
    found = bool(drops[i] > 0)
    half = np.nonzero(recovered < 0.5)[0]
    return {"fraction": float(fractions[i]) if found else None,
            "n_ablated": int(n_ablated[i]) if found else None,
            "drop": float(drops[i]) if found else None,
            "below_half": float(fractions[half[0]]) if len(half) else None,
            "rule": CLIFF_RULE}


def interaction_table(names: Sequence[str], single: Float[np.ndarray, " k"],
                      no_effect: Bool[np.ndarray, " k"], joint: Effects
                      ) -> tuple[list[list[float | None]], list[dict[str, Any]]]:
    """Interaction matrix [k, k] (None on the diagonal) and one record per pair.

    `joint` holds the pairs (i, j), i < j, in lexicographic order of `names`.
    interaction = joint - single[i] - single[j]; backup_candidate: both singles have no
    measurable effect and the joint CI lies above 0.
    """
    k = len(names)
    matrix: list[list[float | None]] = [[None] * k for _ in range(k)]
    pairs = []
    for p, (i, j) in enumerate(itertools.combinations(range(k), 2)):
        value = float(joint.mean[p] - single[i] - single[j])
        matrix[i][j] = matrix[j][i] = value
        pairs.append({"a": names[i], "b": names[j], "joint": float(joint.mean[p]),
                      "joint_ci_low": float(joint.ci_low[p]),
                      "joint_ci_high": float(joint.ci_high[p]),
                      "single_a": float(single[i]), "single_b": float(single[j]),
                      "interaction": value,
                      "backup_candidate": bool(no_effect[i] and no_effect[j]
                                               and joint.ci_low[p] > 0.0)})
    return matrix, pairs
