"""Gradient screening: estimate every component's ablation effect from gradients of the mask.

Keep-weights are real numbers (`mask.py`: h_ablated = m * h + (1 - m) * r), so the metric is a
differentiable function f(m) of the whole mask, and one backward pass scores every component.
Every score here is an *estimate of the metric change when the component's keep-weight goes
from 1 to 0*, per example, with the sign convention of `sweep` outputs:

    estimate_i  ~  f(m with m_i = 0) - f(1)          (metric(ablated) - metric(clean))

so for a higher-is-better metric (logit difference) an important component has a negative
estimate. Two methods:

    "grad"  first order at the clean point:  estimate_i = -df/dm_i (m = 1).
            One forward and one backward per example. Exact where f is linear in m_i.
    "ig"    integrated gradients along the straight path that ablates every scored component
            together, m(t) = 1 - t * s (s: 1 for scored components, 0 for the rest), t: 0 -> 1:

                estimate_i = -s_i * integral_0^1 df/dm_i (m(t)) dt

            with the midpoint rule over `steps` points t_k = (k + 1/2) / steps (error
            O(1/steps^2) for a smooth f). Completeness: sum_i estimate_i equals
            f(all scored components ablated) - f(1) up to that discretisation error
            (`Attribution.ablated - Attribution.clean` is the exact value, computed too).

IG splits the effect of ablating *everything scored at once* among the components. It equals
each component's single-ablation effect only where components do not interact (f additive in
them), e.g. when one component is scored alone (`components=["5.2"]`). Verify the top
candidates with an exact `sweep`. Gradients of a piecewise-constant metric (accuracy) are 0,
so `attribute` refuses it: use logit_diff, prob, loss or kl_to_clean. kl_to_clean is minimal
at the clean point, so its gradient there is 0 too: "grad" refuses it, use "ig".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxablate.ablation.components import Component, check_component, parse_component
from jaxablate.ablation.frames import scores_frame
from jaxablate.ablation.metrics import check_metric
from jaxablate.engine.sharding import placement
from jaxablate.errors import InputError
from jaxablate.model.batched import validate_call
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.mask import MASK_KINDS, Mask
from jaxablate.model.replacement import Replacement
from jaxablate.model.validation import check_int, check_replacement

METHODS = ("grad", "ig")


class Attribution(eqx.Module):
    """Estimated ablation effects, per example, in the shape of a `Mask` with a leading batch
    axis: heads [batch, layer, head], mlps [batch, layer], neurons [batch, layer, neuron],
    head_positions [batch, layer, seq, head], positions [batch, layer, seq],
    sae_features [batch, feature] (only the kinds scored are set).

    metric_change: the estimated metric(component ablated) - metric(clean) (module
    docstring; the sign vocabulary is docs/conventions.md's: a *metric change*, negative for
    an important component under a higher-is-better metric). `.estimate` is the same Mask.
    clean: the metric without ablation [batch]. ablated: for "ig", the exact metric with every
    scored component ablated together [batch] (the value the IG estimates sum to); None for
    "grad".

    Example:
        >>> att = attribute(model, tokens, zero_replacement(model), metrics.logit_diff(io, s))
        >>> att.heads.shape                              # [layer, head]: the batch mean
        >>> att.to_frame()                               # one row per component (pandas)
        >>> att.ranking()[:5]                            # [("9.9", -1.3), ("mlp0", -0.8), ...]
    """

    metric_change: Mask
    clean: Float[Array, " batch"]
    ablated: Float[Array, " batch"] | None
    method: str = eqx.field(static=True)
    steps: int = eqx.field(static=True)

    @property
    def estimate(self) -> Mask:
        """The same as `metric_change` (its earlier name)."""
        return self.metric_change

    def mean(self) -> Mask:
        """The estimates averaged over examples: a `Mask` of floats (heads [layer, head], ...)."""
        return jax.tree_util.tree_map(lambda a: a.mean(axis=0), self.metric_change)

    @property
    def heads(self) -> Float[np.ndarray, "layer head"]:
        """The heads' estimates averaged over examples, numpy float64 [layer, head].

        Example:
            >>> att.heads[9, 6]                     # estimated metric change of ablating 9.6
        """
        if self.metric_change.heads is None:
            raise InputError("Attribution.heads: heads were not scored; attribute(..., "
                             "kinds=('heads', ...)) scores them")
        return np.asarray(self.metric_change.heads, np.float64).mean(axis=0)

    def to_frame(self, *, long: bool = False) -> Any:
        """A pandas DataFrame, one row per scored component, with the columns of
        `ja.to_frame` (component, kind, layer, head, position, neuron, feature,
        n_components, mean, sem): `mean` and `sem` are the estimated metric change over the
        examples; long=True gives one row per (component, example) with `value`.

        Example:
            >>> att.to_frame().sort_values("mean").head(3)[["component", "mean", "sem"]]
        """
        return scores_frame(self.metric_change, long=long)

    def ranking(self, top: int | None = None) -> list[tuple[str, float]]:
        """(component name, mean estimate) sorted by |mean estimate|, largest first.

        Names as `jaxablate.masks` and reports write them: "1.2", "mlp0", "n1.5", "1.2@3",
        "resid1@3", "sae7". Feed the top names to `masks.from_components` for an exact sweep.

        Example:
            >>> [name for name, _ in att.ranking(top=10)]
        """
        rows = self.components()
        rows.sort(key=lambda row: -abs(row[1]))
        return rows if top is None else rows[:top]

    def per_example(self, names: Sequence[Any]) -> Float[np.ndarray, "n batch"]:
        """The estimates of the components `names` ("1.2", "mlp0", "n1.5", ...), per example:
        numpy `[len(names), batch]`, in the order given.

        Example:
            >>> att.per_example(["0.1", "mlp1"]).shape               # (2, batch)
        """
        fields = {k: np.asarray(getattr(self.metric_change, k))
                  for k in self.metric_change.kinds()}
        rows = []
        for spec in names:
            c = parse_component(spec)
            if c.kind not in fields:
                raise InputError(f"{c.name!r} is of kind {c.kind!r}, not among the kinds "
                                 f"scored {list(fields)}")
            values = fields[c.kind]
            if any(not 0 <= i < n for i, n in zip(c.index, values.shape[1:])):
                raise InputError(f"{c.name!r} is out of range for the scored {c.kind} of "
                                 f"shape {list(values.shape[1:])}")
            rows.append(values[(slice(None),) + c.index])
        return np.stack(rows) if rows else np.zeros((0, len(self.clean)), np.float32)

    def components(self) -> list[tuple[str, float]]:
        """(component name, mean estimate) for every scored component, layer-major order."""
        means = self.mean()
        rows = []
        for kind in means.kinds():
            values = np.asarray(getattr(means, kind))
            for index in np.ndindex(values.shape):
                rows.append((Component(kind, tuple(int(i) for i in index)).name,
                             float(values[index])))
        return rows


def _select_mask(ones: Mask, components: Sequence[Any] | None, cfg: Any, seq: int,
                 n_features: int | None) -> Mask:
    """1 where a component moves along the IG path, 0 where it stays kept."""
    if components is None:
        return ones
    fields = {k: np.zeros(np.shape(getattr(ones, k)), np.float32) for k in ones.kinds()}
    for spec in components:
        c = parse_component(spec)
        if c.kind not in fields:
            raise InputError(f"components: {c.name!r} is of kind {c.kind!r}, not among the "
                             f"kinds scored {list(fields)}")
        check_component(c, cfg, seq, n_features)
        fields[c.kind][c.index] = 1.0
    return Mask(**{k: jnp.asarray(v) for k, v in fields.items()})


@eqx.filter_jit
def _attribute_chunk(model, tokens, positions, data, replacement, ones, select, ts, score,
                     reads_clean, method):
    """(estimate Mask [chunk, ...], clean [chunk], ablated [chunk] or None) for a chunk."""

    def one(tok, repl, pos, d):
        clean_logits = (jax.lax.stop_gradient(model.run(tok, positions=pos)[0]) if reads_clean
                        else jnp.zeros((pos.shape[0], model.cfg.d_vocab), jnp.float32))

        def f(m):
            return score(model.run(tok, m, repl, positions=pos)[0], tok, clean_logits, d)

        if method == "grad":
            value, g = jax.value_and_grad(f)(ones)
            return jax.tree_util.tree_map(jnp.negative, g), value, None

        def step(total, t):
            m = jax.tree_util.tree_map(lambda o, s: o - t * s, ones, select)
            g = jax.grad(f)(m)
            return jax.tree_util.tree_map(jnp.add, total, g), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, ones)
        total, _ = jax.lax.scan(step, zeros, ts)
        n = jnp.float32(ts.shape[0])
        estimate = jax.tree_util.tree_map(lambda g, s: -s * g / n, total, select)
        ablated = f(jax.tree_util.tree_map(lambda o, s: o - s, ones, select))
        return estimate, f(ones), ablated

    r_axis = 0 if replacement is not None and replacement.per_example else None
    return jax.vmap(one, in_axes=(0, r_axis, 0, 0))(tokens, replacement, positions, data)


def _take(tree: Any, idx: np.ndarray) -> Any:
    """Rows `idx` of every leaf's leading (example) axis."""
    return jax.tree_util.tree_map(lambda a: a[jnp.asarray(idx)], tree)


def attribute(
    model: GPT2,
    tokens: Any,
    replacement: Replacement | None,
    metric: Any,
    method: str = "grad",
    *,
    kinds: Sequence[str] = ("heads",),
    steps: int = 16,
    chunk_size: int | None = None,
    components: Sequence[Any] | None = None,
    devices: Any = None,
    mesh: Any = None,
) -> Attribution:
    """Estimated ablation effect of every component of `kinds`, per example (see module doc).

    tokens: int [batch, seq]. replacement: the values ablated components are blended towards
    (zero/mean/resample_replacement). metric: from `jaxablate.metrics`. method: "grad"
    (first order at the clean point: one forward + backward) or "ig" (integrated gradients
    along the path ablating every scored component together, midpoint rule with `steps`
    points). kinds: mask kinds scored: "heads", "mlps", "neurons", "head_positions",
    "positions", "sae_features" (the last needs an attached SAE). components: for "ig", only
    these (names like "5.2", "mlp0", "n1.5") move along the path, the rest stay kept and get
    estimate 0; one component alone gives its exact single-ablation effect up to
    discretisation. chunk_size: examples per compiled call (fixed shape, the last chunk padded;
    default: all at once). devices / mesh: split each chunk's examples over these devices
    (as `sweep`'s; default every local device), the chunk rounded up to a multiple of them.

    Returns an `Attribution`: `.metric_change` Mask-shaped [batch, ...] (e.g. heads
    [batch, layer, head]), `.mean()`, `.ranking()`, `.clean` and for "ig" `.ablated`.

    Example:
        >>> att = attribute(model, tokens, mean_replacement(model, abc), logit_diff(io, s),
        ...                 "ig", kinds=("heads", "mlps"), steps=32)
        >>> att.mean().heads            # [layer, head]: estimated change of the logit diff
    """
    if method not in METHODS:
        raise InputError(f"method: expected one of {list(METHODS)}, got {method!r}")
    check_int(steps, "steps", 1)
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", 1)
    check_metric(metric)
    if not metric.differentiable:
        raise InputError(f"attribute: the {metric.name} metric is piecewise constant, so its "
                         "gradient is 0 wherever it exists; screen with logit_diff, prob, loss "
                         "or kl_to_clean and check accuracy with an exact sweep")
    if method == "grad" and metric.stationary_at_clean:
        raise InputError(f"attribute: {metric.name} is minimal at the clean model, so its "
                         "gradient there is 0 for every component; use method='ig' (it "
                         "integrates along the ablation path) or another metric")
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in MASK_KINDS]
    if unknown or not kinds:
        raise InputError(f"kinds: unknown mask kinds {unknown or kinds}; known kinds are "
                         f"{list(MASK_KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise InputError(f"kinds: repeated kinds in {list(kinds)}")
    if components is not None and method != "ig":
        raise InputError("components= selects the integrated-gradients path; with "
                         "method='grad' every component's gradient is taken at m = 1 anyway")
    if components is not None:
        if isinstance(components, str):
            components = [components]
        components = list(components)
        if not components:
            raise InputError("components: an empty list moves nothing along the path (every "
                             "estimate would be 0); give the components to score, or None "
                             "for all of `kinds`")
    tokens = validate_call(model, tokens, None, None)
    batch, seq = tokens.shape
    n_features = None if model.sae is None else model.sae.n_features
    if "sae_features" in kinds and n_features is None:
        raise InputError("kinds: 'sae_features' needs a model with an SAE; attach one with "
                         "jaxablate.attach_sae")
    kinds = tuple(k for k in MASK_KINDS if k in kinds)  # canonical order
    check_replacement(replacement, kinds, model.cfg, seq, batch, n_features)
    positions, data = metric.prepare(tokens, model.cfg)

    ones = Mask.keep_all(model.cfg, kinds, seq_len=seq, n_features=n_features)
    select = _select_mask(ones, components, model.cfg, seq, n_features)
    ts = jnp.asarray((np.arange(steps) + 0.5) / steps, jnp.float32)  # midpoint rule

    # Several devices: the example axis of each chunk is split among them (padded).
    place = placement(devices, mesh)
    chunk = place.round_up(batch if chunk_size is None else min(int(chunk_size), batch))
    per_example = replacement is not None and replacement.per_example
    model, ones, select, ts = place.replicate((model, ones, select, ts))
    if not per_example:
        replacement = place.replicate(replacement)
    arrays = (jnp.asarray(tokens), jnp.asarray(positions),
              {k: jnp.asarray(v) for k, v in data.items()})
    parts = []
    for begin in range(0, batch, chunk):
        idx = np.arange(begin, min(begin + chunk, batch))
        padded = np.concatenate([idx, np.full(chunk - len(idx), idx[0])])  # fixed shape
        tok, pos, d = place.split(_take(arrays, padded))
        repl = place.split(_take(replacement, padded)) if per_example else replacement
        out = _attribute_chunk(model, tok, pos, d, repl, ones, select, ts, metric.score,
                               metric.reads_clean, method)
        parts.append(jax.tree_util.tree_map(lambda a, n=len(idx): a[:n], out))
    estimate, clean, ablated = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts)
    return Attribution(estimate, clean, ablated, method, int(steps))
