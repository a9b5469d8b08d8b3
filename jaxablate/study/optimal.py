"""Optimal ablation in a study (Li & Janson, NeurIPS 2024, arXiv 2409.09951;
`jaxablate.optimal`): each component replaced by the constant that does the least damage, so
that its effect measures the information it carries about the input, not the damage of
pushing the network off its distribution.

fit         `optimal_replacement` of every single-component mask at once, on the study's
            reference prompts (`Study.reference`, the prompts mean ablation averages over: the
            task's own reference set when it has one, so the evaluated prompts are held out of
            the fit; else the evaluated prompts themselves), with a prompt-only objective
            (`oa_objective`: "kl_to_clean", KL(clean || ablated) of the next-token
            distribution at every position, or "loss", next-token cross-entropy; both in
            nats), `oa_steps` full-batch Adam steps of rate `oa_lr` from the study's own mean
            values, no held-out split (the evaluated prompts are the test set), key = the
            study's seed. Constants per position when the reference prompts have the
            evaluated length (as mean ablation), else one for every position. Made once per
            study (`Study.optimal_fit`); the iterate kept per component is the one of least
            damage on the fit prompts, the start included, so Delta_OA <= Delta_mean there.
values      `shared_from_singles`: one shared replacement in which each component holds its
            own single-component optimum, so every step (single, screening, cumulative,
            circuit, interactions, comparison) runs under "optimal" as under "mean". A set of
            components ablated together is each set to its own optimum, not to constants
            optimised for the set jointly.
section     the result's "optimal" section, when the fit ran (`optimal_section`): per component
            Delta_OA and Delta_mean on the fit prompts (objective units), the shift share
            (Delta_mean - Delta_OA) / Delta_mean (the part of the mean-ablation damage that was
            distribution shift), the step kept and the damage at every step; and, on the
            evaluated prompts, the study's effects under "optimal" and "mean" (metric units)
            where those were computed, with the same share of them.
complement  the circuit step with circuit_ablation="optimal" (`complement_section`): the
            circuit's complement (every studied component outside it) ablated jointly, ONE
            mask, with constants optimised for that set as a whole. A different problem from
            single-component optimal ablation: the constants may compensate for each other.

    fit(study, mask_set, step) -> (Replacement, OptimalAblation, seconds)
    optimal_section(study) -> dict          the "optimal" section
    complement_section(study, members, recovered) -> dict   the circuit's joint-OA numbers
    store_ablation(study, ablation) -> str  the ablation type a results store records
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxablate.ablation.masks import MaskSet, from_components
from jaxablate.model.replacement import Replacement
from jaxablate.optimal.search import OptimalAblation, optimal_replacement
from jaxablate.study.result import jsonable

if TYPE_CHECKING:  # the protocol imports this module; at run time only `study` is passed in
    from jaxablate.study.protocol import Study

UNITS = "nats"  # of both objectives
JOINT = "optimal_joint"  # the circuit complement's replacement, as sweep_sets names it
SHARE_RULE = ("shift share = (Delta_mean - Delta_OA) / Delta_mean: the part of the "
              "mean-ablation damage removed by the best constant, i.e. distribution shift "
              "rather than information (Li & Janson 2024); NaN where Delta_mean = 0")


def fit(study: Study, mask_set: MaskSet, step: str
        ) -> tuple[Replacement, OptimalAblation, float]:
    """`optimal_replacement` of `mask_set` (N masks) with the study's settings (see the module
    docstring): per-mask values [N, layer, seq|1, ...], the record (history [steps+1, N]) and
    the seconds it took. `step` names the fit in the study's progress callback.

    Example:
        >>> r, record, seconds = fit(study, study.single_masks, "optimal fit")
        >>> record.delta <= record.delta_init          # all True
    """
    report = None if study.progress is None else (
        lambda done, total: study.progress(step, done, total))
    same = study.reference.shape[1] == study.tokens.shape[1]
    start = time.perf_counter()
    replacement, record = optimal_replacement(
        study.model, study.reference, mask_set, study.oa_objective, steps=study.oa_steps,
        learning_rate=study.oa_lr, per_position=same, init="mean", key=study.seed,
        progress=report, held_out=0, devices=study.devices, mesh=study.mesh)
    return replacement, record, time.perf_counter() - start


def store_ablation(study: Study, ablation: str) -> str:
    """The ablation type a results store records for a study's sweep: `ablation` itself, with
    the fit's settings for optimal values (a store of other settings is refused, naming them).

    Example:
        >>> store_ablation(study, "optimal")
        'optimal[kl_to_clean, 100 steps, lr 0.01]'
    """
    if ablation not in ("optimal", JOINT):
        return ablation
    return f"{ablation}[{study.oa_objective}, {study.oa_steps} steps, lr {study.oa_lr:g}]"


def _settings(study: Study, record: OptimalAblation) -> dict[str, Any]:
    own = study.reference is study.tokens
    return {"objective": record.objective, "units": UNITS, "init": record.init,
            "steps": record.steps, "learning_rate": record.learning_rate,
            "per_position": study.reference.shape[1] == study.tokens.shape[1],
            "fit_prompts": "prompts" if own else "reference",
            "n_fit_prompts": len(study.reference),
            "note": ("the study has no reference set apart from its prompts: the constants "
                     "were fitted on the evaluated prompts themselves" if own else None)}


def _share(mean: np.ndarray, best: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean != 0, (mean - best) / mean, np.nan)


def optimal_section(study: Study) -> dict[str, Any]:
    """The result's "optimal" section (see the module docstring): the fit's settings,
    `components` (study order), per component `delta_optimal`, `delta_mean`, `shift_share`,
    `best_step` (fit prompts, objective units) and `history` [component][step] (damage at
    steps 0..oa_steps), and `effect_optimal`, `effect_mean`, `effect_shift_share` (evaluated
    prompts, the study's metric; None where that single step was not computed).

    Example:
        >>> section = optimal_section(study)
        >>> section["delta_mean"][0], section["delta_optimal"][0], section["shift_share"][0]
    """
    _, record, seconds = study.optimal_fit()
    effects = {t: study.effects(t).mean if study.has_single(t) else None
               for t in ("optimal", "mean")}
    both = effects["optimal"] is not None and effects["mean"] is not None
    return jsonable({
        **_settings(study, record), "metric": study.metric.name, "components": study.names,
        "delta_optimal": record.delta, "delta_mean": record.delta_init,
        "shift_share": record.shift_share(), "best_step": record.best_step,
        "history": record.history.T, "effect_optimal": effects["optimal"],
        "effect_mean": effects["mean"],
        "effect_shift_share": _share(effects["mean"], effects["optimal"]) if both else None,
        "rule": SHARE_RULE, "fit_seconds": seconds})


def complement_section(study: Study, members: list[str], recovered: float) -> dict[str, Any]:
    """The circuit's complement ablated jointly with constants optimised for it (one mask,
    one fit; see the module docstring): `complement`, `metric` (its batch mean on the
    evaluated prompts), `recovered` under it (the study's endpoints: 1 = clean, 0 = every
    studied component ablated under the study's ablation), beside `recovered_same` (the
    circuit's usual faithfulness); `delta_optimal`, `delta_mean`, `best_step`, `history`
    [step] of the fit (reference prompts, objective units) and its settings.

    Example:
        >>> complement_section(study, ["1.0", "1.1"], 0.82)["recovered"]
    """
    kept = set(members)
    complement = [n for n in study.names if n not in kept]
    section: dict[str, Any] = {"complement": complement, "recovered_same": recovered}
    if not complement:  # the circuit is every component: nothing is ablated
        base = float(study.baseline_values().mean())
        section.update(metric=base, recovered=float(study.recovered(np.array([base]))[0]),
                       note="the circuit holds every component: nothing to ablate")
        return jsonable(section)
    masks = from_components(study.model.cfg, [complement], seq_len=study.tokens.shape[1])
    replacement, record, seconds = fit(study, masks, "circuit optimal fit")
    values = study.sweep_sets(masks, JOINT, "circuit_optimal", False, replacement=replacement)
    metric = float(values[0].mean())
    section.update(
        _settings(study, record), metric=metric,
        recovered=float(study.recovered(np.array([metric]))[0]),
        delta_optimal=record.delta[0], delta_mean=record.delta_init[0],
        best_step=record.best_step[0], history=record.history[:, 0],
        fit_seconds=seconds)
    return jsonable(section)
