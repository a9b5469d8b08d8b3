"""What optimal ablation minimises, and its value and gradient for a chunk of masks at once.

The objective is a `Metric` read as damage: the increase of the loss (or KL) when a mask is
applied, the decrease of a higher-is-better metric (a logit difference), per example:

    damage(mask, values, x) = sign * (metric(model with mask -> values, x) - metric(model, x))
    sign = -1 for a higher-is-better metric, +1 for loss and KL

Averaged over a batch of prompts, per mask, it is Li & Janson's L(model with c := a) - L(model)
for that mask's constants `a`. The chunk's total is a sum over masks, and each mask's damage
depends on its own values only, so one backward pass gives every mask's values their own
gradient (`damage_and_grad`).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxablate.ablation import metrics
from jaxablate.ablation.metrics import Metric, check_metric
from jaxablate.engine.resume import resume_differentiable
from jaxablate.errors import InputError
from jaxablate.model.replacement import Replacement

# The objectives by name: next-token loss, and KL to the clean distribution at every position.
OBJECTIVES = ("kl_to_clean", "loss")


def resolve_objective(objective: Any) -> Metric:
    """The `Metric` an objective names: "kl_to_clean" (KL(clean || ablated) of the next-token
    distribution averaged over every position), "loss" (next-token cross-entropy), or a
    differentiable `Metric` itself (its `higher_is_better` gives the direction).

    Example:
        >>> resolve_objective("kl_to_clean").positions is None     # every position
        True
    """
    if isinstance(objective, str):
        if objective == "kl_to_clean":
            return metrics.kl_to_clean(positions=None)
        if objective == "loss":
            return metrics.loss()
        raise InputError(f"objective: expected one of {list(OBJECTIVES)} or a "
                         f"jaxablate.metrics Metric, got {objective!r}")
    metric = check_metric(objective, "objective")
    if not metric.differentiable:
        raise InputError(f"objective: the {metric.name} metric is piecewise constant, so its "
                         "gradient is 0 wherever it exists and no constant can be optimised "
                         "for it; use 'kl_to_clean', 'loss', logit_diff or prob")
    return metric


def damage_sign(metric: Metric) -> float:
    """+1 where a larger metric is worse (loss, KL), -1 where it is better."""
    return -1.0 if metric.higher_is_better else 1.0


def _damage(model, resid, start, masks, values, tokens, positions, columns, clean_logits,
            clean_score, data, score, sign):
    """Mean damage over the batch, per mask [chunk]."""
    x0 = resid[:, jnp.minimum(start, model.cfg.n_layers)]
    def one(mask, vals, x, tok, pos, cols, cl, cs, d):
        logits = resume_differentiable(model, x, start, mask, Replacement(**vals), pos, cols)
        return sign * (score(logits, tok, cl, d) - cs)

    per_example = jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0, 0, 0, 0))
    per_mask = jax.vmap(per_example, in_axes=(0, 0) + (None,) * 7)
    return per_mask(masks, values, x0, tokens, positions, columns, clean_logits, clean_score,
                    data).mean(axis=1)


@eqx.filter_jit
def damage_and_grad(model, resid, start, masks, values, tokens, positions, columns,
                    clean_logits, clean_score, data, score, sign):
    """(damage [chunk], d(sum of damage)/d values: the values' shapes) of a chunk of masks
    resumed at layer `start` from the clean stream `resid` [batch, layer+1, seq, d_model]
    (the stream entering every layer).

    values: dict of replacement fields, each [chunk, ...] (mask n's own values). The rest:
    the metric's arrays per example (`Metric.prepare`, `vocab_columns`), the clean logits at
    its positions and the clean metric [batch].
    """
    def total(values):
        damage = _damage(model, resid, start, masks, values, tokens, positions, columns,
                         clean_logits, clean_score, data, score, sign)
        return damage.sum(), damage

    (_, damage), grads = jax.value_and_grad(total, has_aux=True)(values)
    return damage, grads


@eqx.filter_jit
def damage_only(model, resid, start, masks, values, tokens, positions, columns,
                clean_logits, clean_score, data, score, sign):
    """The damage [chunk] alone (`damage_and_grad` without the backward pass)."""
    return _damage(model, resid, start, masks, values, tokens, positions, columns, clean_logits,
                   clean_score, data, score, sign)
