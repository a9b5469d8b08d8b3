"""The sweep: thousands of ablations as one compiled, vectorised program.

How it stays fast:
  * one clean pass caches the residual stream entering every layer; masks are grouped by the
    first layer they touch and each resumes from the cached stream there (the clean prefix
    is computed once, not once per mask);
  * the start layer is data, and chunks have one fixed shape (the last is padded with
    keep-all masks), so a single program is compiled and reused for every group and chunk;
  * logits are computed only at the positions the metric reads;
  * the chunk size follows a memory budget: peak memory grows with the chunk, not with N.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from jaxablate import masks as masks_lib
from jaxablate.forward import run_with_cache, validate_call
from jaxablate.mask import Mask
from jaxablate.masks import MaskSet
from jaxablate.metrics import Metric
from jaxablate.model import GPT2
from jaxablate.replacement import Replacement
from jaxablate.validation import check_replacement

DEFAULT_CPU_BUDGET = 1 << 30  # bytes of live activations per chunk on CPU


def as_mask_set(masks: Any, model: GPT2, seq_len: int) -> MaskSet:
    """Accept a MaskSet or a dense stacked Mask; check it against the model and prompts."""
    n_features = None if model.sae is None else model.sae.n_features
    if isinstance(masks, Mask):
        return masks_lib.from_stacked(masks, model.cfg, seq_len=seq_len, n_features=n_features)
    if not isinstance(masks, MaskSet):
        raise TypeError(f"masks: expected a MaskSet (jaxablate.masks.*) or a stacked Mask, "
                        f"got {type(masks).__name__}")
    if masks.cfg != model.cfg:
        raise ValueError(f"masks were built for another model ({masks.cfg}) than this one "
                         f"({model.cfg})")
    if masks.seq_len is not None and masks.seq_len != seq_len:
        raise ValueError(f"masks were built for sequence length {masks.seq_len}, the prompts "
                         f"have length {seq_len}")
    if "sae_features" in masks.kinds and n_features is None:
        raise ValueError("masks ablate SAE features but the model has no SAE; attach one with "
                         "jaxablate.attach_sae")
    if "sae_features" in masks.kinds and masks.n_features != n_features:
        raise ValueError(f"masks ablate {masks.n_features} SAE features, the model's SAE has "
                         f"{n_features}")
    return masks


def bytes_per_example(model: GPT2, seq_len: int, n_read: int) -> int:
    """Rough live float32 bytes of one (mask, example) forward inside a layer."""
    c = model.cfg
    per_position = 12 * c.d_model + 3 * c.d_mlp + 3 * c.n_heads * seq_len
    return 4 * (seq_len * per_position + 3 * n_read * c.d_vocab)


def default_chunk_size(model: GPT2, batch: int, seq_len: int, n_read: int, n_masks: int,
                       memory_budget: int | None = None) -> int:
    """Masks per chunk so that chunk * batch forwards fit `memory_budget` bytes.

    The budget defaults to 1 GiB on CPU and a quarter of an accelerator's memory.
    """
    per_mask = batch * bytes_per_example(model, seq_len, n_read)
    return int(max(1, min(n_masks, _budget(memory_budget) // per_mask)))


def _budget(memory_budget: int | None) -> int:
    """Bytes of live activations allowed: as given, else 1 GiB on CPU and a quarter of an
    accelerator's memory."""
    if memory_budget is not None:
        if not isinstance(memory_budget, int) or memory_budget < 1:
            raise ValueError(f"memory_budget must be a positive number of bytes, got "
                             f"{memory_budget!r}")
        return memory_budget
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] // 4
    return DEFAULT_CPU_BUDGET


@eqx.filter_jit
def _clean_pass(model, tokens, positions):
    """Residual stream entering every layer [batch, layer+1, seq, d] and clean logits at k."""
    def one(tokens, positions):
        logits, acts = model.run(tokens, positions=positions, collect=("resid_pre",))
        return acts["resid_pre"], logits

    return jax.vmap(one)(tokens, positions)


@eqx.filter_jit
def _run_chunk(model, x0, start, masks, replacement, tokens, positions, clean, data, score,
               n_masks):
    """Metric [chunk, batch] of a chunk of masks resumed at layer `start` from `x0`.

    x0 is the stream entering `start`: [batch, seq, d] shared by the chunk (the clean one),
    or [chunk, batch, seq, d], one per mask (each resumed from its parent's stream).
    """
    def one(mask, x, repl, tok, pos, cl, d):
        return score(model.resume(x, start, mask, repl, pos), tok, cl, d)

    r_axis = 0 if replacement is not None and replacement.per_example else None
    per_example = jax.vmap(one, in_axes=(None, 0, r_axis, 0, 0, 0, 0))
    x_axis = 0 if x0.ndim == 4 else None
    # axis_size: a chunk of clean masks only is a Mask with no fields (nothing to map over).
    return jax.vmap(per_example, in_axes=(0, x_axis) + (None,) * 5, axis_size=n_masks)(
        masks, x0, replacement, tokens, positions, clean, data)


@eqx.filter_jit
def _run_trajectories(model, resid, start, masks, replacement):
    """Residual stream entering every layer under each mask: [chunk, batch, layer+1, seq, d]."""
    def one(mask, r, repl):
        return model.trajectory(r, start, mask, repl)

    r_axis = 0 if replacement is not None and replacement.per_example else None
    per_example = jax.vmap(one, in_axes=(None, 0, r_axis))
    return jax.vmap(per_example, in_axes=(0, None, None))(masks, resid, replacement)


def _pad(tree: Any, size: int, fill: float = 1.0) -> Any:
    """Pad every leaf's leading axis to `size` (keep-all masks, or zeros for streams); the
    results of padding are dropped."""
    def pad(a):
        extra = size - a.shape[0]
        return a if extra == 0 else jnp.concatenate(
            [a, jnp.full((extra,) + a.shape[1:], fill, a.dtype)])
    return jax.tree_util.tree_map(pad, tree)


def _parents(mask_set: MaskSet, first: np.ndarray, last: np.ndarray, sae_layer: int | None
             ) -> tuple[MaskSet | None, np.ndarray]:
    """Shared prefixes of masks that touch several layers.

    A mask touching layers first < last leaves the stream entering `last` as its "parent"
    (the mask restricted to layers < last) leaves it: pairs (i, j) across layers share the
    parent {i}. Returns the parent MaskSet (None if reuse does not pay) and, per mask, its
    parent's index or -1.
    """
    n = len(mask_set)
    multi = first < last
    parent_of = np.full(n, -1, np.int64)
    if not multi.any():
        return None, parent_of
    keys: list[list] = [[] for _ in range(n)]
    for kind in mask_set.kinds:
        mask_id, index, weight = mask_set.entries[kind]
        layer = mask_set.entry_layers(kind, sae_layer)
        sel = multi[mask_id] & (weight != 1.0) & (layer < last[mask_id])
        for m, idx, w in zip(mask_id[sel], index[sel], weight[sel]):
            keys[m].append((kind, tuple(int(v) for v in idx), float(w)))
    ids: dict[tuple, int] = {}
    for m in np.nonzero(multi)[0]:
        parent_of[m] = ids.setdefault(tuple(sorted(keys[m])), len(ids))
    # A parent run costs about what one child saves: worth it only when parents are shared.
    if multi.sum() < 2 * len(ids):
        return None, np.full(n, -1, np.int64)
    rows = {k: [] for k in mask_set.kinds}
    for key, p in ids.items():
        for kind, idx, w in key:
            rows[kind].append((p, idx, w))
    entries = {}
    for kind in mask_set.kinds:
        ndim = mask_set.entries[kind][1].shape[1]
        entries[kind] = (np.array([r[0] for r in rows[kind]], np.int64),
                         np.array([r[1] for r in rows[kind]], np.int64).reshape(-1, ndim),
                         np.array([r[2] for r in rows[kind]], np.float32))
    parents = MaskSet(mask_set.cfg, entries, [f"parent{p}" for p in range(len(ids))],
                      seq_len=mask_set.seq_len, n_features=mask_set.n_features)
    parents.kinds = mask_set.kinds  # same program shape as the children
    return parents, parent_of


def sweep(
    model: GPT2,
    tokens: Any,
    masks: MaskSet | Mask,
    replacement: Replacement | None,
    metric: Metric,
    chunk_size: int | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    reuse_prefix: bool = True,
    memory_budget: int | None = None,
) -> Float[np.ndarray, "n batch"]:
    """The metric under each of N ablations, per example: numpy float32 `[N, batch]`.

    tokens: int [batch, seq]. masks: a `MaskSet` from `jaxablate.masks` (or a dense stacked
    `Mask` with leading axis N). replacement: from zero/mean/resample_replacement. metric:
    from `jaxablate.metrics`. chunk_size: masks per compiled call (default: from
    `memory_budget` bytes). progress(done, total) is called after every chunk.
    reuse_prefix=False runs every mask from layer 0 (slower; same numbers up to rounding).

    Example:
        >>> out = sweep(model, tokens, masks.single_heads(model.cfg),
        ...             mean_replacement(model, abc_tokens), metrics.logit_diff(io, s))
        >>> effect = clean_metric[None, :] - out            # [144, batch]
    """
    if not isinstance(metric, Metric):
        raise TypeError(f"metric: expected one of jaxablate.metrics (logit_diff, accuracy, "
                        f"prob, loss, kl_to_clean), got {type(metric).__name__}")
    tokens = validate_call(model, tokens, None, None)
    batch, seq = tokens.shape
    mask_set = as_mask_set(masks, model, seq)
    n_features = None if model.sae is None else model.sae.n_features
    check_replacement(replacement, mask_set.kinds, model.cfg, seq, batch, n_features)
    positions, data = metric.prepare(tokens, model.cfg)
    n = len(mask_set)
    if chunk_size is None:
        chunk_size = default_chunk_size(model, batch, seq, positions.shape[1], n, memory_budget)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    chunk_size = min(chunk_size, n)

    tokens_j, positions_j = jnp.asarray(tokens), jnp.asarray(positions)
    data_j = {k: jnp.asarray(v) for k, v in data.items()}
    resid, clean = _clean_pass(model, tokens_j, positions_j)
    sae_layer = None if model.sae is None else model.sae.layer
    first, last = mask_set.layer_span(sae_layer)
    if not reuse_prefix:
        first[:] = 0
    parents, parent_of = (_parents(mask_set, first, last, sae_layer) if reuse_prefix
                          else (None, np.full(n, -1, np.int64)))
    out = np.empty((n, batch), np.float32)
    done = 0

    def run(idx: np.ndarray, start: int, x0: jax.Array) -> None:
        nonlocal done
        chunk = _pad(mask_set.materialize(idx), chunk_size)
        values = _run_chunk(model, x0, jnp.int32(start), chunk, replacement, tokens_j,
                            positions_j, clean, data_j, metric.score, chunk_size)
        out[idx] = np.asarray(values)[: len(idx)]
        done += len(idx)
        if progress is not None:
            progress(done, n)

    # Masks without a parent, sorted by first touched layer; each chunk resumes from the
    # clean stream at its earliest mask's layer. A chunk that straddles two layers recomputes
    # a few clean layers for some masks (same numbers up to rounding) instead of padding.
    own = np.nonzero(parent_of < 0)[0]
    own = own[np.argsort(first[own], kind="stable")]
    for begin in range(0, len(own), chunk_size):
        idx = own[begin:begin + chunk_size]
        run(idx, int(first[idx[0]]), resid[:, int(first[idx[0]])])

    # Masks with a parent: run a block of parents' trajectories once, then resume each child
    # from its parent's stream at the child's last touched layer.
    if parents is not None:
        p_first = parents.first_layers(sae_layer)
        per_parent = 8 * batch * resid[0].size * resid.dtype.itemsize
        # A fixed block shape (padded), whatever the number of parents: no recompilation.
        block = int(max(1, min(chunk_size, _budget(memory_budget) // per_parent)))
        p_order = np.argsort(p_first, kind="stable")
        for begin in range(0, len(parents), block):
            p_idx = p_order[begin:begin + block]
            local = np.full(len(parents), -1, np.int64)
            local[p_idx] = np.arange(len(p_idx))
            traj = _run_trajectories(model, resid, jnp.int32(p_first[p_idx[0]]),
                                     _pad(parents.materialize(p_idx), block), replacement)
            kids = np.nonzero((parent_of >= 0) & (local[parent_of] >= 0))[0]
            kids = kids[np.argsort(last[kids], kind="stable")]
            for k in range(0, len(kids), chunk_size):
                idx = kids[k:k + chunk_size]
                start = int(last[idx[0]])
                x0 = traj[jnp.asarray(local[parent_of[idx]]), :, start]
                run(idx, start, _pad(x0, chunk_size, 0.0))
    return out

def clean_metric(model: GPT2, tokens: Any, metric: Metric) -> Float[np.ndarray, " batch"]:
    """The metric without ablation, per example: numpy `[batch]`.

    Example:
        >>> baseline = clean_metric(model, tokens, metrics.logit_diff(io, s))
    """
    tokens = validate_call(model, tokens, None, None)
    positions, data = metric.prepare(tokens, model.cfg)
    logits, _ = run_with_cache(model, tokens, names=(), positions=positions)
    score = jax.vmap(metric.score)
    return np.asarray(score(logits, jnp.asarray(tokens), logits,
                            {k: jnp.asarray(v) for k, v in data.items()}))
