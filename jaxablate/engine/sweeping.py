"""The sweep: thousands of ablations as one compiled, vectorised program.

How it stays fast:
  * one clean pass caches the residual stream entering every layer; masks are grouped by the
    first layer they touch and each resumes from the cached stream there (the clean prefix
    is computed once, not once per mask);
  * the start layer is data, and chunks have one fixed shape (the last is padded with
    keep-all masks), so a single program is compiled and reused for every group and chunk;
  * rows before a mask's first changed position stay clean (causal attention) and are not
    recomputed: one more program per row count, at most `len(plan.row_counts(seq))` of them
    whatever the masks (the rows a mask needs are rounded up to one of a few sizes; a mask
    at the last position computes one row), so masks still never recompile past those;
  * masks touching several layers resume from a shared parent's trajectory (pairs i, j
    share the parent {i}), and a mask that is itself a parent (the single i in a set of
    singles and pairs) is read off that trajectory instead of run again;
  * a list of D replacements (resample draws) runs as one more vmapped axis inside each
    chunk: the clean pass, dispatch and compilation are shared by the draws;
  * logits are computed only at the positions the metric reads, and only for the token ids
    it reads when it declares them (a logit difference: two columns of the unembedding);
  * the chunk size is the one of least estimated cost (`schedule.py`) within a memory budget:
    peak memory grows with the chunk, not with N.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from jaxablate.ablation.masks import MaskSet
from jaxablate.ablation.metrics import check_metric, vocab_columns
from jaxablate.engine.bars import sweep_progress
from jaxablate.engine.draws import check_draws, is_drawn, stack_draws
from jaxablate.engine.plan import as_mask_set, plan_sweep
from jaxablate.engine.resume import resume, trajectory
from jaxablate.engine.schedule import check_chunk_size
from jaxablate.engine.sharding import placement
from jaxablate.model.batched import validate_call
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.mask import REATTEND_BREAKING, Mask
from jaxablate.model.replacement import Replacement
from jaxablate.model.validation import check_int, check_progress, check_replacement


class NonFiniteMetricError(ValueError):
    """The metric came out NaN or inf for some masks (an overflow, not a bad argument).

    Attributes: names (the masks that produced it, by `MaskSet.names`), values (the whole
    result as the sweep returns it, `[N, batch]` or `[draws, N, batch]`, non-finite entries
    included), bad (bool, the same shape).
    """

    def __init__(self, names: list[str], values: np.ndarray, offset: int = 0,
                 where: str = ""):
        # values: [n, batch] or [draws, n, batch] of the masks names[offset:offset + n]
        bad = ~np.isfinite(values)
        per_mask = bad if bad.ndim == 2 else bad.any(0)  # [n, batch]
        rows = [int(i) for i in np.nonzero(per_mask.any(1))[0]]
        self.names = [names[offset + i] for i in rows]
        self.values, self.bad = values, bad

        def examples(i: int) -> str:
            which = np.nonzero(per_mask[i])[0]
            return ", ".join(str(e) for e in which[:4]) + (", ..." if len(which) > 4 else "")

        shown = ", ".join(f"{names[offset + i]} (examples {examples(i)})" for i in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        super().__init__(
            f"the metric is NaN or inf under {len(rows)} mask{'s' * (len(rows) != 1)}: "
            f"{shown}{more}{where}; look for values large enough to overflow in the weights "
            "or the replacement (a bfloat16 model: try dtype='float32')")


@eqx.filter_jit
def _clean_pass(model, tokens, positions, columns):
    """The clean cache and logits: the residual stream entering every layer
    [batch, layer+1, seq, d], the stream after each layer's attention [batch, layer, seq, d],
    each layer's z [batch, layer, seq, head, d_head], keys and values (k, v) (the same
    shape, for row skipping), and the logits at the metric's positions [batch, k, n]
    (n: the vocabulary, or the metric's columns)."""
    def one(tokens, positions, columns):
        _, acts = model.run(tokens, collect=("resid_pre", "resid_mid", "z", "k", "v"))
        resid = acts["resid_pre"]
        logits = model.unembed(resid[-1][positions], columns)
        return resid, (acts["resid_mid"], acts["z"]), (acts["k"], acts["v"]), logits

    return jax.vmap(one)(tokens, positions, columns)


@eqx.filter_jit
def _run_chunk(model, x0, attended, start, masks, replacement, tokens, positions, columns,
               clean, data, score, n_masks, prefix=None, drawn=False):
    """Metric [chunk, batch] (drawn: [chunk, draw, batch]) of a chunk of masks resumed at
    layer `start` from `x0`.

    x0 is the stream entering `start`: [batch, rows, d] shared by the chunk (the clean one),
    or [chunk, (draw,) batch, seq, d], one per mask (each resumed from its parent's stream).
    attended: None, or the unablated (resid_mid, z) of layer `start` with x0's leading axes:
    the layer's attention is then reused, not recomputed. prefix: None, or the clean keys
    and values [batch, layer, r, head, d_head] of the r = seq - rows positions x0 leaves
    out (row skipping: no mask of the chunk changes them). drawn: the replacement's fields
    carry a leading draw axis (resample draws), and every mask runs under each draw.
    """
    def one(mask, x, att, pre, repl, tok, pos, cols, cl, d):
        logits = resume(model, x, start, mask, repl, pos, cols, att, pre, cl)
        return score(logits, tok, cl, d)

    r_axis = 0 if replacement is not None and replacement.per_example else None
    per_example = jax.vmap(one, in_axes=(None, 0, 0, 0, r_axis, 0, 0, 0, 0, 0))
    per_stream = x0.ndim == (5 if drawn else 4)  # one stream per mask (from its parent)
    if drawn:  # the draws inside a mask: the mask axis stays leading (it is the one split)
        d_axis = 0 if per_stream else None
        per_example = jax.vmap(per_example, in_axes=(None, d_axis, d_axis, None, 0)
                               + (None,) * 5)
    x_axis = 0 if per_stream else None
    m_axis = 0 if replacement is not None and replacement.per_mask else None
    # axis_size: a chunk of clean masks only is a Mask with no fields (nothing to map over).
    return jax.vmap(per_example, in_axes=(0, x_axis, x_axis, None, m_axis) + (None,) * 5,
                    axis_size=n_masks)(masks, x0, attended, prefix, replacement, tokens,
                                       positions, columns, clean, data)


@eqx.filter_jit
def _run_trajectories(model, resid, attended, start, masks, replacement, drawn=False):
    """Residual stream entering every layer under each mask:
    [chunk, (draw,) batch, layer+1, seq, d]; with `attended` (the clean resid_mid and z),
    also those under each mask. drawn: as `_run_chunk`'s."""
    def one(mask, r, att, repl):
        return trajectory(model, r, start, mask, repl, att)

    r_axis = 0 if replacement is not None and replacement.per_example else None
    per_example = jax.vmap(one, in_axes=(None, 0, 0, r_axis))
    if drawn:
        per_example = jax.vmap(per_example, in_axes=(None, None, None, 0))
    return jax.vmap(per_example, in_axes=(0, None, None, None))(masks, resid, attended,
                                                                 replacement)


def check_sweep(model: GPT2, tokens: Any, masks: MaskSet | Mask, replacement: Any,
                metric: Any, chunk_size: Any, memory_budget: int | None,
                progress: Any = None
                ) -> tuple[np.ndarray, MaskSet, np.ndarray, dict[str, np.ndarray], int | None]:
    """A sweep's arguments checked on the host before anything compiles: (tokens int32
    [batch, seq], the MaskSet, the metric's positions [batch, k] and data, the explicit chunk
    size or None). `replacement` may be a list of draws (`engine.draws`). Raises the
    ValueError/TypeError that names the problem."""
    check_metric(metric)
    check_progress(progress)
    tokens = validate_call(model, tokens, None, None)
    batch, seq = tokens.shape
    mask_set = as_mask_set(masks, model, seq)
    n_features = None if model.sae is None else model.sae.n_features
    for r in check_draws(replacement) if is_drawn(replacement) else [replacement]:
        check_replacement(r, mask_set.kinds, model.cfg, seq, batch, n_features,
                          n_masks=len(mask_set))
    positions, data = metric.prepare(tokens, model.cfg)
    if chunk_size is not None:
        chunk_size = check_chunk_size(model, batch, seq, positions.shape[1], chunk_size,
                                      memory_budget)
    return tokens, mask_set, positions, data, chunk_size


def planned_chunk_size(model: GPT2, tokens: Any, masks: MaskSet | Mask, metric: Any, *,
                       reuse_prefix: bool = True, memory_budget: int | None = None,
                       draws: int = 1) -> int:
    """The chunk size `sweep` picks for these arguments (masks per compiled call; with
    `draws` replacements, each mask of a chunk runs under every draw).

    Pass it as `chunk_size=` to a warm-up sweep on a few masks to compile the same programs
    the full sweep will run (benchmarks time compilation apart this way).

    Example:
        >>> c = planned_chunk_size(model, tokens, masks.head_pairs(cfg), metric)   # e.g. 48
    """
    check_metric(metric)
    tokens = validate_call(model, tokens, None, None)
    batch, seq = tokens.shape
    mask_set = as_mask_set(masks, model, seq)
    positions, _ = metric.prepare(tokens, model.cfg)
    return plan_sweep(model, mask_set, batch * check_int(draws, "draws", 1), seq,
                      positions.shape[1], metric, None, memory_budget, reuse_prefix).chunk_size


def sweep(
    model: GPT2,
    tokens: Any,
    masks: MaskSet | Mask,
    replacement: Replacement | list[Any] | None,  # a list: draws, checked by check_draws
    metric: Any,
    chunk_size: int | np.integer | None = None,
    *,
    progress: Any = None,
    reuse_prefix: bool = True,
    memory_budget: int | None = None,
    devices: Any = None,
    mesh: Any = None,
) -> Float[np.ndarray, "*draws n batch"]:
    """The metric under each of N ablations, per example: numpy float32 `[N, batch]`
    (`[D, N, batch]` for a list of D replacements). (`jaxablate.sweep` is this with
    `store=`, see `jaxablate.store.front`.)

    tokens: int [batch, seq]. masks: a `MaskSet` from `jaxablate.masks` (or a dense stacked
    `Mask` with leading axis N). replacement: from zero/mean/resample/patch_replacement,
    shared by every mask, or per-mask values (leading mask axis N, `optimal_replacement`:
    mask n is blended towards its own; masks then resume from the clean stream, never from a
    shared parent's, whose ablation would differ from child to child), or a list of D
    replacements of one kind and shape (resample draws, `engine.draws`): every mask runs
    under each, the draws vmapped inside the same compiled calls. metric:
    from `jaxablate.metrics`. chunk_size: masks per compiled call (default: the size of least
    estimated cost that fits `memory_budget` bytes, see `jaxablate.engine.schedule`; with
    draws, each mask of a chunk runs D times).
    progress: True for a progress bar on stderr, or progress(done, total) called after
    every chunk. reuse_prefix=False runs every mask from layer 0 (slower; same numbers up to rounding).
    devices: the devices the mask axis is split over (None: every local device; an int n:
    the first n; a list of jax devices), or mesh: a `jax.sharding.Mesh` (see
    `jaxablate.engine.sharding`); chunks then hold a multiple of the device count (the default
    chunk size is the planned one per device), weights and replacement values are copied to
    every device once, and results equal a single device's up to float32 rounding.
    Raises `NonFiniteMetricError` (a ValueError) naming the masks whose metric is NaN or inf.

    Example:
        >>> out = sweep(model, tokens, masks.single_heads(model.cfg),
        ...             mean_replacement(model, abc_tokens), metrics.logit_diff(io, s))
        >>> effect = metrics.effect(metric, out, clean_metric(model, tokens, metric))
    """
    place = placement(devices, mesh)
    tokens, mask_set, positions, data, chunk_size = check_sweep(
        model, tokens, masks, replacement, metric, chunk_size, memory_budget, progress)
    progress = sweep_progress(progress)  # True: one bar on stderr
    drawn = is_drawn(replacement)
    n_draws = len(replacement) if drawn else 1
    batch, seq = tokens.shape
    n = len(mask_set)
    explicit = chunk_size is not None
    per_mask = replacement is not None and not drawn and replacement.per_mask
    plan = plan_sweep(model, mask_set, batch * n_draws, seq, positions.shape[1], metric,
                      chunk_size, memory_budget, reuse_prefix, share_parents=not per_mask)
    first, parents, parent_of = plan.first, plan.parents, plan.parent_of
    own, blocks, block, chunk_size = plan.own, plan.blocks, plan.block, plan.chunk_size
    # Several devices: whole chunks of masks per device (the planned size each), padded.
    size = plan.chunk_size if explicit else plan.chunk_size * place.n_devices
    chunk_size = min(place.round_up(size), place.round_up(n))
    block = place.round_up(block)
    p_first = None if parents is None else parents.first_layers(
        None if model.sae is None else model.sae.layer)

    columns, data = vocab_columns(metric, data)
    # Copied to every device once (a no-op on one device); the clean pass then runs on each.
    # A bfloat16 model's layers travel as bits: slicing them in the loop copies nothing.
    model = place.replicate(model.with_weight_bits())
    shared = None if per_mask else place.replicate(
        stack_draws(list(replacement)) if drawn else replacement)  # checked above
    tokens_j, positions_j = place.replicate((jnp.asarray(tokens), jnp.asarray(positions)))
    columns_j = None if columns is None else place.replicate(jnp.asarray(columns))
    data_j = place.replicate({k: jnp.asarray(v) for k, v in data.items()})
    resid, attended, keys_values, clean = _clean_pass(model, tokens_j, positions_j, columns_j)
    # A mask set that never changes the stream entering a layer or its attention's inputs
    # (no positions, SAE features, q, k, v) reuses the clean attention of the layer it
    # resumes at: only the ablated heads' z change there, by a delta through W_O.
    if not reuse_prefix or set(REATTEND_BREAKING) & set(mask_set.kinds):
        attended = None
    out = np.empty((n, n_draws, batch) if drawn else (n, batch), np.float32)
    done = 0
    top = model.cfg.n_layers - 1

    def run(idx: np.ndarray, start: int, x0: jax.Array, att: Any, prefix: Any = None
            ) -> None:
        nonlocal done
        chunk = place.split(mask_set.materialize(idx, chunk_size))
        if x0.ndim > 3:  # one stream per mask (resumed from its parent's)
            x0, att = place.split((x0, att))
        # Per-mask values travel with their masks (padding masks keep all: any values do,
        # here mask 0's).
        repl = shared if not per_mask else place.split(
            replacement.take(jnp.asarray(np.pad(idx, (0, chunk_size - len(idx))))))
        values = _run_chunk(model, x0, att, jnp.int32(start), chunk, repl, tokens_j,
                            positions_j, columns_j, clean, data_j, metric.score, chunk_size,
                            prefix, drawn)
        out[idx] = np.asarray(values)[: len(idx)]
        done += len(idx)
        if progress is not None:
            progress(done, n)

    def at_layer(tree: Any, layer: int) -> Any:
        # Layer `layer` of the clean [batch, layer, ...], clamped: clean masks start past
        # the last layer and read nothing there.
        return jax.tree_util.tree_map(lambda a: a[:, min(layer, top)], tree)

    # Masks without a parent, one row start at a time (`own` is sorted by it): the first r
    # rows are clean at every layer, so the chunk resumes from rows r.. of the clean stream
    # with the clean keys and values of rows < r.
    for r in np.unique(plan.row_start[own]):
        group = own[plan.row_start[own] == r]
        prefix = None if r == 0 else jax.tree_util.tree_map(lambda a, r=r: a[:, :, :r],
                                                            keys_values)
        for begin in range(0, len(group), chunk_size):
            idx = group[begin:begin + chunk_size]
            start = int(first[idx[0]])
            run(idx, start, resid[:, start, r:], at_layer(attended, start), prefix)
    # Streams per parent: [parent, (draw,) batch, layer(+1), ...]; the layer axis after them.
    layer_axis = 3 if drawn else 2
    for p_idx, kids in blocks:
        local = np.full(len(parents), -1, np.int64)
        local[p_idx] = np.arange(len(p_idx))
        traj = _run_trajectories(model, resid, attended, jnp.int32(p_first[p_idx[0]]),
                                 place.split(parents.materialize(p_idx, block)),
                                 shared, drawn)
        traj_resid, traj_att = traj if attended is not None else (traj, None)
        for k in range(0, len(kids), chunk_size):
            idx = kids[k:k + chunk_size]
            start = int(plan.resume_at[idx[0]])
            # Padding masks (keep-all) read the first parent's stream; their results drop.
            rows = jnp.asarray(np.pad(local[parent_of[idx]], (0, chunk_size - len(idx))))
            x0 = jnp.take(traj_resid[rows], start, axis=layer_axis)
            att = jax.tree_util.tree_map(
                lambda a: jnp.take(a[rows], min(start, top), axis=layer_axis), traj_att)
            run(idx, start, x0, att)
    out = np.moveaxis(out, 1, 0) if drawn else out  # [draw, n, batch]
    if not np.isfinite(out).all():
        raise NonFiniteMetricError(mask_set.names, out)
    return out


def clean_metric(model: GPT2, tokens: Any, metric: Any) -> Float[np.ndarray, " batch"]:
    """The metric without ablation, per example: numpy `[batch]`.

    Example:
        >>> baseline = clean_metric(model, tokens, metrics.logit_diff(io, s))
    """
    check_metric(metric)
    tokens = validate_call(model, tokens, None, None)
    positions, data = metric.prepare(tokens, model.cfg)
    columns, data = vocab_columns(metric, data)
    # The sweep's own clean pass: the same unembedding (columns included) as every mask's.
    _, _, _, logits = _clean_pass(model, jnp.asarray(tokens), jnp.asarray(positions),
                               None if columns is None else jnp.asarray(columns))
    score = jax.vmap(metric.score)
    return np.asarray(score(logits, jnp.asarray(tokens), logits,
                            {k: jnp.asarray(v) for k, v in data.items()}))
