"""Screen, then verify: score every component of a study by gradients of the mask in one pass
(`jaxablate.attribute`), ablate the top-k candidates exactly (`sweep`), and measure how far
the screen can be trusted.

    section = screen_and_verify(study, method="ig", steps=16, top_k=None)

Definitions (the report quotes them):

estimated_effect  the screen's estimate of each component's single-ablation effect, in
            the study's sign (an effect: positive = the component helps; the negated
            metric change `attribute` returns for a higher-is-better metric), per example,
            then averaged;
            resample ablation: averaged over the study's draws too. "grad" is first order at
            the clean point (attribution patching: one forward + backward per prompt); "ig"
            integrates the gradient along the path that ablates every studied component
            together (`steps` forward + backward passes per prompt).
screen rank components ordered by |estimate|, largest first; the top-k are verified exactly.
agreement   Spearman correlation of estimate and exact effect over the verified top-k, and
            over every component when the study has every exact single effect (its `single`
            step); precision at k: the share of the screened top-k that is in the exact top-k
            (both by |effect|); critical found: how many of the exactly critical components
            the screened top-k holds.
fails       |estimate - exact| > the study's critical threshold AND > 50% of |exact|: the
            first-order picture is wrong for that component, not merely rounded.

What IG estimates: along the common path it splits the effect of ablating *every studied
component at once* among them (completeness: the estimates sum to that joint effect, up to
the midpoint rule's error, reported as `completeness`). That equals each component's single
ablation effect only where components do not interact. Where they do (backup heads that take
over, redundant heads that only matter together, saturated attention) the estimate and the
exact effect differ, and that difference is itself a signal: the components flagged `fails`
are where to look for interactions and backup paths (compare the study's interactions step).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxablate.errors import InputError
from jaxablate.model.validation import check_int
from jaxablate.screening.attribution import METHODS, attribute
from jaxablate.study.stats import Effects, spearman

if TYPE_CHECKING:
    from jaxablate.study.protocol import Study

FAIL_RULE = ("fails: |estimate - exact| > the critical threshold and > 50% of |exact| "
             "(the estimate is wrong, not merely rounded)")
FAIL_RELATIVE = 0.5
IG_NOTE = ("integrated gradients along the common path split the effect of ablating every "
           "studied component together among them (they sum to it); they equal single-"
           "ablation effects only where components do not interact, so disagreement marks "
           "interactions, backup paths and saturation")
GRAD_NOTE = ("first-order estimate at the clean model (attribution patching); it misses "
             "saturation (a component whose removal matters although the metric is flat at "
             "the clean point) and every interaction")


def default_screen_top_k(n: int) -> int:
    """Components verified exactly when `top_k` is not given: 20, or all when fewer."""
    return min(20, n)


def screen_and_verify(study: "Study", method: str = "ig", steps: int = 16,
                      top_k: int | None = None, chunk_size: int | None = None
                      ) -> dict[str, Any]:
    """The screening section of a study: estimates for every component, exact effects of
    the top-k, agreement figures and failures (definitions in the module docstring).

    study: a `jaxablate.Study` (its model, prompts, metric, ablation type, components).
    method: "grad" or "ig"; steps: IG's midpoint-rule points (ignored for "grad"); top_k:
    components verified exactly (default 20, or all when fewer); chunk_size: prompts per
    compiled attribution call (default all).

    Returns a JSON-able dict: "components" [n] and per-component lists "estimated_effect",
    "estimated_effect_sem", "screen_rank", "exact_effect" (None where not verified), "verified",
    "fails"; "spearman_top_k", "spearman_all", "precision_at_k", "critical_found",
    "completeness" (IG), "seconds", "rule", "note".

    Example:
        >>> section = screen_and_verify(Study(model, task), "ig", steps=16, top_k=10)
        >>> section["spearman_all"], section["precision_at_k"]
    """
    if method not in METHODS:
        raise InputError(f"screening method must be one of {list(METHODS)}, got {method!r}")
    names = study.names
    n = len(names)
    k = default_screen_top_k(n) if top_k is None else top_k
    k = min(check_int(k, "screening top_k", 1), n)  # "the top 20" of 4 components: all 4
    sign = 1.0 if study.metric.higher_is_better else -1.0
    # With neurons of some layers only, IG's path must ablate exactly the studied components.
    path = list(names) if method == "ig" and study.neuron_layers is not None else None

    start = time.perf_counter()
    per_draw, joint = [], []
    for replacement in study.replacements(study.ablation):
        att = attribute(study.model, study.tokens, replacement, study.metric, method,
                        kinds=study.kinds, steps=steps, chunk_size=chunk_size,
                        components=path, devices=study.devices, mesh=study.mesh)
        # attribute's sign: metric(ablated) - metric(clean); the study's: + = helps.
        per_draw.append(-sign * att.per_example(names).astype(np.float64))
        if att.ablated is not None:
            joint.append(-sign * (np.asarray(att.ablated, np.float64)
                                  - np.asarray(att.clean, np.float64)))
    estimate = np.mean(per_draw, axis=0)  # [n, batch]
    screen_seconds = time.perf_counter() - start

    mean = estimate.mean(axis=1)
    sem = estimate.std(axis=1, ddof=1) / math.sqrt(estimate.shape[1])
    order = np.argsort(-np.abs(mean), kind="stable")
    screen_rank = np.empty(n, np.int64)
    screen_rank[order] = np.arange(1, n + 1)
    top = np.sort(order[:k])

    start = time.perf_counter()
    have_all = study.has_single(study.ablation)
    if have_all:  # the study's own single step: every exact effect, no extra sweep
        exact_all = study.effects()
        exact = Effects(**{f.name: getattr(exact_all, f.name)[top]
                           for f in dataclasses.fields(Effects)})
    else:  # per draw: with resample, the CI includes the variance between draws
        ablated = study.sweep_sets(study.single_masks.subset(top.tolist()), study.ablation,
                                   "verify")
        exact = study.stats_of(study.effect_of(ablated))
    verify_seconds = time.perf_counter() - start

    exact_mean = np.full(n, np.nan)
    exact_mean[top] = exact.mean
    verified = np.zeros(n, bool)
    verified[top] = True
    difference = mean - exact_mean
    fails = (np.abs(difference) > study.threshold) & (
        np.abs(difference) > FAIL_RELATIVE * np.abs(exact_mean))  # NaN compares False

    section: dict[str, Any] = {
        "method": method, "steps": steps if method == "ig" else None, "top_k": k,
        "components": list(names), "estimated_effect": mean, "estimated_effect_sem": sem,
        "screen_rank": screen_rank, "exact_effect": exact_mean, "verified": verified,
        "fails": fails, "failures": [names[i] for i in np.nonzero(fails)[0]],
        "records": [
            {"component": names[i], "screen_rank": int(screen_rank[i]),
             "estimated_effect": float(mean[i]), "exact_effect": float(exact.mean[j]),
             "exact_effect_sem": float(exact.sem[j]), "exact_effect_ci_low": float(exact.ci_low[j]),
             "exact_effect_ci_high": float(exact.ci_high[j]), "difference": float(difference[i]),
             "fails": bool(fails[i])}
            for j, i in sorted(enumerate(top), key=lambda t: screen_rank[t[1]])],
        "spearman_top_k": spearman(mean[top], exact.mean) if k > 1 else None,
        "spearman_all": None, "precision_at_k": None, "critical_found": None,
        "exact_effect_all": None, "completeness": None,
        "rule": FAIL_RULE, "note": IG_NOTE if method == "ig" else GRAD_NOTE,
        "seconds": {"screening": screen_seconds,
                    "verification": None if have_all else verify_seconds},
        "verified_from": "single step" if have_all else f"{k} exact ablations",
    }
    if have_all:
        full = exact_all.mean
        section["exact_effect_all"] = full
        section["spearman_all"] = spearman(mean, full) if n > 1 else None
        exact_top = set(np.argsort(-np.abs(full), kind="stable")[:k].tolist())
        section["precision_at_k"] = len(exact_top & set(top.tolist())) / k
        critical = set(np.nonzero(exact_all.critical)[0].tolist())
        section["critical_found"] = {"found": len(critical & set(top.tolist())),
                                     "total": len(critical)}
    if joint:
        effect_all = float(np.mean(joint, axis=0).mean())
        total = float(mean.sum())
        section["completeness"] = {"sum_of_estimates": total,
                                   "effect_all_ablated": effect_all,
                                   "error": total - effect_all}
    return section
