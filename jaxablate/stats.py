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
    rank: Int[np.ndarray, " n"]  # 1 = largest effect
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


def effect_stats(per_example: Float[np.ndarray, "n batch"], counts: Float[np.ndarray, "boot batch"],
                 threshold: float) -> Effects:
    """Mean, s.e., 95% percentile bootstrap CI, rank and flags of per-example effects.

    Example:
        >>> e = effect_stats(np.array([[1.0, 1.2, 0.9]]), bootstrap_counts(3, 1000, 0), 0.5)
        >>> bool(e.critical[0]), bool(e.no_effect[0])
        (True, False)
    """
    per_example = np.asarray(per_example, np.float64)
    n, batch = per_example.shape
    mean = per_example.mean(axis=1)
    sem = per_example.std(axis=1, ddof=1) / math.sqrt(batch)
    tail = 100 * (1 - CI_LEVEL) / 2
    low, high = np.empty(n), np.empty(n)
    for begin in range(0, n, BOOT_ROWS):
        boot = per_example[begin:begin + BOOT_ROWS] @ counts.T / batch  # [rows, boot]
        low[begin:begin + BOOT_ROWS], high[begin:begin + BOOT_ROWS] = np.percentile(
            boot, [tail, 100 - tail], axis=1)
    rank = np.empty(n, np.int64)
    rank[np.argsort(-mean, kind="stable")] = np.arange(1, n + 1)
    no_effect = (low <= 0.0) & (high >= 0.0)
    return Effects(per_example, mean, sem, low, high, rank,
                   critical=(mean > threshold) & (low > 0.0), negative=high < 0.0,
                   no_effect=no_effect)


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
