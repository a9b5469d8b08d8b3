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
import numpy as np

from jaxablate.ablation import metrics
from jaxablate.ablation.masks import MaskSet
from jaxablate.ablation.metrics import Metric, check_metric, vocab_columns
from jaxablate.engine.resume import resume_differentiable
from jaxablate.engine.schedule import budget_bytes, bytes_per_example
from jaxablate.engine.sharding import Placement
from jaxablate.errors import InputError
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.replacement import Replacement

# A backward pass keeps about this many times a forward's live activations (the scan's
# residuals of every layer, and their cotangents).
_BACKWARD_FACTOR = 3

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


@eqx.filter_jit
def _clean(model, tokens, positions, columns):
    """The clean stream entering every layer [batch, layer+1, seq, d] and the logits at the
    metric's positions [batch, k, n]."""
    def one(tok, pos, cols):
        _, acts = model.run(tok, collect=("resid_pre",))
        resid = acts["resid_pre"]
        return resid, model.unembed(resid[-1][pos], cols)

    return jax.vmap(one)(tokens, positions, columns)


class MaskObjective:
    """The damage of N masks as a function of their values, on chosen prompts, in chunks.

    Masks are held in order of their first layer (`order`: mask index at each row), padded
    to `n_pad` rows with keep-all masks; chunks of one fixed shape resume from the clean
    stream at their earliest mask's layer, split over `place`'s devices. Values are dicts
    of replacement fields with a leading axis of n_pad rows in that order.

    Example:
        >>> objective = MaskObjective(model, tokens, heads, metrics.loss(), None, 3, place)
        >>> batch = objective.prompts(np.arange(len(tokens)))
        >>> damage, grads = objective.damage_and_grad(values, batch)      # [n_pad], like values
    """

    def __init__(self, model: GPT2, tokens: np.ndarray, mask_set: MaskSet, metric: Metric,
                 chunk_size: int | None, batch_size: int, place: Placement,
                 memory_budget: int | None = None):
        n = len(mask_set)
        positions, data = metric.prepare(tokens, model.cfg)
        columns, data = vocab_columns(metric, data)
        sae_layer = None if model.sae is None else model.sae.layer
        first = mask_set.layer_span(sae_layer)[0]
        self.order = np.argsort(first, kind="stable")
        if chunk_size is None:
            per_mask = _BACKWARD_FACTOR * batch_size * bytes_per_example(
                model, tokens.shape[1], positions.shape[1])
            chunk_size = max(1, min(n, budget_bytes(memory_budget) // per_mask))
        chunk = place.round_up(min(int(chunk_size), place.round_up(n)))
        self.n_pad = -(-n // chunk) * chunk
        self.chunks = []
        for begin in range(0, self.n_pad, chunk):
            idx = self.order[begin:begin + chunk]
            m = jax.tree_util.tree_map(lambda a, k=len(idx): a if k == chunk else jnp.concatenate(
                [a, jnp.ones((chunk - k,) + a.shape[1:], a.dtype)]), mask_set.materialize(idx))
            self.chunks.append((slice(begin, begin + chunk), jnp.int32(first[idx[0]]),
                                place.split(m)))
        self.model, self.place = place.replicate(model), place
        self.score, self.sign = metric.score, damage_sign(metric)
        tokens_j, data_j = jnp.asarray(tokens), {k: jnp.asarray(v) for k, v in data.items()}
        columns_j = None if columns is None else jnp.asarray(columns)
        resid, clean_logits = _clean(self.model, tokens_j, jnp.asarray(positions), columns_j)
        clean_score = jax.vmap(metric.score)(clean_logits, tokens_j, clean_logits, data_j)
        self.arrays = {"resid": resid, "tokens": tokens_j, "positions": jnp.asarray(positions),
                       "columns": columns_j, "clean_logits": clean_logits,
                       "clean_score": clean_score, "data": data_j}

    def prompts(self, idx: np.ndarray) -> dict[str, Any]:
        """The prompts `idx`' arrays (clean streams, logits, metric data), on every device."""
        return self.place.replicate(jax.tree_util.tree_map(lambda a: a[jnp.asarray(idx)],
                                                           self.arrays))

    def _run(self, fn: Any, values: dict[str, jax.Array], batch: dict[str, Any]) -> list:
        out = []
        for rows, start, m in self.chunks:
            v = self.place.split({f: a[rows] for f, a in values.items()})
            out.append(fn(self.model, batch["resid"], start, m, v, batch["tokens"],
                          batch["positions"], batch["columns"], batch["clean_logits"],
                          batch["clean_score"], batch["data"], self.score, self.sign))
        return out

    def damage(self, values: dict[str, jax.Array], batch: dict[str, Any]) -> np.ndarray:
        """Mean damage over the batch's prompts per row [n_pad] (numpy)."""
        return np.concatenate([np.asarray(d) for d in self._run(damage_only, values, batch)])

    def damage_and_grad(self, values: dict[str, jax.Array], batch: dict[str, Any]
                        ) -> tuple[np.ndarray, dict[str, jax.Array]]:
        """(damage [n_pad], its gradient with respect to `values`: row n's damage moves only
        with row n's values, so this is every row's own gradient)."""
        parts = self._run(damage_and_grad, values, batch)
        grads = {f: jnp.concatenate([g[f] for _, g in parts]) for f in values}
        return np.concatenate([np.asarray(d) for d, _ in parts]), grads
