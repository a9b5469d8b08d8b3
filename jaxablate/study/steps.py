"""The protocol's later steps as functions of a `Study` (its public building blocks only:
`effects`, `sweep_sets`, `effect_of`, `stats_of`, `recovered`, `all_ablated`, ...). The effect,
threshold, flags and recovered fraction they use are defined in `jaxablate.study.protocol`.

cumulative  components ordered by |effect|, least important first; fraction f ablates the
            round(f * N) least important together. Cliff: the step (from the previous point,
            the first from the clean model) with the largest drop in `recovered`;
            `below_half` is the first fraction where recovered < 0.5.
circuit     greedy restoration from everything ablated: each step evaluates every candidate
            (the circuit so far plus one component kept, all else ablated) in ONE sweep and
            keeps the one of highest recovered, until recovered >= target. faithfulness =
            recovered of the circuit alone. Minimality: a member "hurts" when the circuit
            without it recovers less by more than float32 rounding (`stats.recovered_tolerance`:
            the sweep's determinism bound carried through the recovered fraction); minimal =
            every member hurts. Cost: up to
            N (N + 1) / 2 masks (10,440 for GPT-2 small's heads); `max_size` caps the steps.
            circuit_ablation="optimal": then the complement (every studied component outside
            the circuit) is ablated jointly, one mask, with constants optimised for that set
            as a whole (`jaxablate.study.optimal.complement_section`), and the circuit's
            recovered fraction under it is reported beside the usual one (same endpoints).
interactions  interaction = joint effect - effect(a) - effect(b) over the top-k components
            by |effect| (default: every head when only heads are studied and there are <= 200,
            else the 20 most important), listed in study order. Backup candidate: neither
            single ablation is measurable (both CIs contain 0) but the joint effect is (its
            CI lies above 0).
comparison  the single study under several ablation types; resample = the mean over
            `resample_draws` draws (keys from `jax.random.split`), per example; optimal =
            each component at its own optimal constant (`jaxablate.study.optimal`); Spearman
            correlation of effects (average ranks for ties); components whose verdict differs
            (one threshold, the study's, for every type).

    cumulative(study, fractions)          the least important components ablated together
    minimal_circuit(study, target, max)   greedy restoration, faithfulness, minimality
    interactions(study, top_k)            joint - singles over the top-k pairs by |effect|
    compare_ablations(study, types)       zero vs mean vs resample vs optimal
    replacement_values(study, ablation)   the replacement(s) of an ablation type
    single_records(study)                 the single step's records
    threshold(study, given)               the critical effect and the rule that set it
    study_meta(study, seconds)            the result's "meta" section
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jaxtyping import Float

from jaxablate.ablation.components import parse_component
from jaxablate.ablation.replacements import mean_replacement, resample_replacement, zero_replacement
from jaxablate.model.replacement import Replacement
from jaxablate.model.validation import check_int
from jaxablate.optimal.singles import shared_from_singles
from jaxablate.study.checks import (
    STUDY_KINDS,
    check_circuit_ablation,
    check_fractions,
    check_target,
    check_types,
)
from jaxablate.study.optimal import complement_section
from jaxablate.study.result import jsonable
from jaxablate.study.stats import (
    CI_LEVEL,
    find_cliff,
    interaction_table,
    recovered_tolerance,
    spearman,
)
from jaxablate.version import VERSION

if TYPE_CHECKING:  # the protocol imports this module; at run time only `study` is passed in
    from jaxablate.study.protocol import Study

THRESHOLD_FRACTION = 0.1


def replacement_values(study: Study, ablation: str) -> list[Replacement]:
    """One replacement (zero, mean, optimal) or `resample_draws` of them (resample).

    mean: `mean_replacement` of the reference prompts, per position when they have the
    evaluated length. resample: each prompt's values from another prompt of the reference
    set (never itself when the reference set is the evaluated prompts; the evaluated
    prompts when the lengths differ). optimal: `shared_from_singles` of the study's fit
    (`Study.optimal_fit`), each component at its own single-component optimum.

    Example:
        >>> replacement_values(study, "optimal")[0].kind
        'optimal'
    """
    seq = study.tokens.shape[1]
    same = study.reference.shape[1] == seq
    if ablation == "zero":
        return [zero_replacement(study.model)]
    if ablation == "mean":
        return [mean_replacement(study.model, study.reference, per_position=same)]
    if ablation == "optimal":
        return [shared_from_singles(study.optimal_fit()[0], study.single_masks)]
    keys = jax.random.split(jax.random.key(study.seed), study.resample_draws)
    own = study.reference is study.tokens or not same
    return [resample_replacement(study.model, study.tokens, k) if own else
            resample_replacement(study.model, study.reference, k,
                                 n_examples=study.tokens.shape[0]) for k in keys]


def single_records(study: Study) -> list[dict[str, Any]]:
    """One record per component (study order): effect, sem, CI, rank, flags, per example."""
    e = study.effects()
    records = []
    for i, name in enumerate(study.names):
        c = parse_component(name)
        records.append({
            "component": name, "kind": STUDY_KINDS[c.kind], "layer": c.index[0],
            "index": c.index[1] if len(c.index) > 1 else None, "effect": e.mean[i],
            "sem": e.sem[i], "ci_low": e.ci_low[i], "ci_high": e.ci_high[i],
            "rank": e.rank[i], "critical": e.critical[i], "negative": e.negative[i],
            "no_effect": e.no_effect[i], "per_example": e.per_example[i]})
    return jsonable(records)


def threshold(study: Study, given: float | None) -> tuple[float, str]:
    """The critical effect and its rule: `given`, else THRESHOLD_FRACTION x |baseline mean|,
    else (a baseline of 0, kl_to_clean) of |metric(all studied components ablated) -
    baseline|."""
    if given is not None:
        return given, "given (threshold=)"
    base = float(study.baseline_values().mean())
    if abs(base) > 1e-6:
        return THRESHOLD_FRACTION * abs(base), f"{THRESHOLD_FRACTION:g} x |baseline mean|"
    rule = (f"{THRESHOLD_FRACTION:g} x |metric(all studied components ablated) - baseline| "
            "(the baseline is 0)")
    return THRESHOLD_FRACTION * abs(float(study.all_ablated(study.ablation).mean()) - base), rule


def cumulative(study: Study, fractions: Sequence[float]) -> dict[str, Any]:
    """Ablate the round(f * N) least important components (smallest |effect|) together,
    for each fraction f."""
    fractions = check_fractions(fractions)
    e = study.effects()
    order = [study.names[i] for i in np.argsort(np.abs(e.mean), kind="stable")]
    n_ablated = np.array([math.floor(f * len(order) + 0.5) for f in fractions], np.int64)
    values = study.sweep_sets([order[:k] for k in n_ablated], study.ablation,
                              "cumulative").mean(0)
    metric = values.mean(1)
    recovered = study.recovered(metric)
    return jsonable({"order": order, "fractions": fractions, "n_ablated": n_ablated,
                     "metric": metric,
                     "sem": values.std(1, ddof=1) / math.sqrt(values.shape[1]),
                     "recovered": recovered,
                     "cliff": find_cliff(fractions, n_ablated, recovered)})

def minimal_circuit(study: Study, target: float | int, max_size: int | None,
                    circuit_ablation: str = "same") -> dict[str, Any]:
    """Greedy restoration from everything ablated until `target` is recovered (at most
    `max_size` members): each step is one sweep over every candidate addition.

    circuit_ablation "same": the study's ablation throughout. "optimal": the circuit is
    found the same way, then its complement is also ablated jointly with constants
    optimised for that set (`optimal_complement`: its recovered fraction beside the usual
    `faithfulness`). That is a different problem from single-component optimal ablation:
    the constants of the complement's components are fitted together and may compensate
    for each other.

    Example:
        >>> minimal_circuit(study, 0.8, None, "optimal")["optimal_complement"]["recovered"]
    """
    target = check_target(target)
    limit = len(study.names) if max_size is None else check_int(max_size, "max_size", 1)
    circuit_ablation = check_circuit_ablation(circuit_ablation)
    floor = float(study.all_ablated(study.ablation).mean())
    members: list[str] = []
    steps: list[dict[str, Any]] = []
    recovered, metric = float(study.recovered(np.array([floor]))[0]), floor
    while (not recovered >= target) and len(members) < limit and math.isfinite(recovered):
        candidates = [n for n in study.names if n not in members]
        kept = set(members)
        sets = [[n for n in study.names if n not in kept and n != c] for c in candidates]
        values = study.sweep_sets(sets, study.ablation, "circuit", False).mean(0).mean(1)
        scores = study.recovered(values)
        best = int(np.argmax(scores))
        members.append(candidates[best])
        recovered, metric = float(scores[best]), float(values[best])
        steps.append({"added": candidates[best], "recovered": recovered})
    minimality = []
    if members:
        sets = [[n for n in study.names if n not in members or n == m] for m in members]
        without = study.recovered(study.sweep_sets(sets, study.ablation, "minimality", False)
                                  .mean(0).mean(1))
        base = float(study.baseline_values().mean())
        minimality = [{"component": m, "recovered_without": float(w),
                       "hurts": bool(w < recovered - recovered_tolerance(
                           (recovered, w), base, floor)),
                       "below_target": bool(w < target)}
                      for m, w in zip(members, without)]
    return jsonable({"target": target, "members": members, "size": len(members),
                     "share": len(members) / len(study.names), "faithfulness": recovered,
                     "reached": bool(recovered >= target), "metric_all_ablated": floor,
                     "metric_circuit": metric, "steps": steps, "minimality": minimality,
                     "minimal": all(m["hurts"] for m in minimality),
                     "circuit_ablation": circuit_ablation,
                     "optimal_complement": complement_section(study, members, recovered)
                     if circuit_ablation == "optimal" else None})

def single_values(study: Study, ablation: str) -> Float[np.ndarray, "draws n batch"]:
    """The metric under each single component, per draw and example. When the study also
    tests every pair under this ablation (`study.pairs_with_singles`, set by `run`), one
    sweep of the singles and all pairs: a single head that is a pair's shared prefix (its
    parent) is read off the parent's trajectory instead of run again, and the pairs' values
    are kept in `study.pair_values` for `interactions`. Same numbers up to float32 rounding
    (tests/test_study_shared.py)."""
    if not (study.pairs_with_singles and ablation == study.ablation):
        return study.sweep_sets(study.single_masks, ablation, "single")
    n = len(study.names)
    pairs = [[a, b] for a, b in itertools.combinations(study.names, 2)]
    values = study.sweep_sets([[c] for c in study.names] + pairs, ablation,
                              "single_interactions")
    study.pair_values[ablation] = values[:, n:]
    return values[:, :n]


def interactions(study: Study, top_k: int | None) -> dict[str, Any]:
    """Joint ablation of every pair of the top-k components by importance, |effect| (a
    strongly negative component, e.g. a negative name mover, is tested too), listed in
    study order; the table stays signed."""
    k = study.interaction_top_k(top_k)
    e = study.effects()
    chosen = np.sort(np.argsort(-np.abs(e.mean), kind="stable")[:k])
    names = [study.names[i] for i in chosen]
    pairs = [[a, b] for a, b in itertools.combinations(names, 2)]
    ablated = (study.pair_values[study.ablation] if k == len(study.names)
               and study.ablation in study.pair_values
               else study.sweep_sets(pairs, study.ablation, "interactions"))
    joint = study.stats_of(study.effect_of(ablated))
    matrix, records = interaction_table(names, e.mean[chosen], e.no_effect[chosen], joint)
    return jsonable({"components": names, "matrix": matrix, "pairs": records})

def compare_ablations(study: Study, types: Sequence[str]) -> dict[str, Any]:
    """The single study under each ablation type: effects, Spearman correlations, verdict
    changes; resample effects are means over draws, with their std over draws; optimal:
    each component at its own optimal constant (the study's fit, made once)."""
    types = check_types(types)
    found = {t: study.single_effects(t) for t in types}
    verdicts = {t: found[t][0].verdicts() for t in types}
    changed = [{"component": name, "verdicts": {t: verdicts[t][i] for t in types}}
               for i, name in enumerate(study.names)
               if len({verdicts[t][i] for t in types}) > 1]
    spread = None
    if "resample" in types:
        per_draw = found["resample"][1]
        spread = per_draw.std(0, ddof=1) if len(per_draw) > 1 else np.zeros(len(study.names))
    return jsonable({
        "types": types, "components": study.names,
        "effects": {t: found[t][0].mean for t in types}, "resample_std": spread,
        "spearman": {f"{a}~{b}": spearman(found[a][0].mean, found[b][0].mean)
                     for a, b in itertools.combinations(types, 2)},
        "verdicts": verdicts, "changed": changed})


def study_meta(study: Study, seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """What was studied, how, with which versions, when: a result's "meta" section."""
    batch, seq = study.tokens.shape
    task = ({"name": study.task.name, **study.task.info} if study.task is not None
            else {"name": "tokens"})
    cfg = study.model.cfg
    return jsonable({
        "model": study.model_name or f"gpt2 ({cfg.n_layers} layers x {cfg.n_heads} heads)",
        "model_config": dataclasses.asdict(cfg), "task": task, "ablation": study.ablation,
        "metric": study.metric.name, "higher_is_better": study.metric.higher_is_better,
        "seed": study.seed, "n_prompts": batch, "seq_len": seq,
        "components": [k for k in study.kinds], "n_components": len(study.names),
        "neuron_layers": study.neuron_layers, "threshold": study.threshold,
        "threshold_rule": study.threshold_rule, "n_bootstrap": study.n_bootstrap,
        "ci_level": CI_LEVEL,
        "replacement": {"n_reference": len(study.reference),
                        "mean_per_position": study.reference.shape[1] == seq,
                        "resample_draws": study.resample_draws},
        "optimal": {"objective": study.oa_objective, "steps": study.oa_steps,
                    "learning_rate": study.oa_lr},
        "versions": {"jaxablate": VERSION, "jax": jax.__version__,
                     "numpy": np.__version__},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": seconds or {}})
