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
    if memory_budget is None:
        memory_budget = DEFAULT_CPU_BUDGET
        stats = jax.devices()[0].memory_stats() if jax.devices()[0].platform != "cpu" else None
        if stats and "bytes_limit" in stats:
            memory_budget = stats["bytes_limit"] // 4
    per_mask = batch * bytes_per_example(model, seq_len, n_read)
    return int(max(1, min(n_masks, memory_budget // per_mask)))


@eqx.filter_jit
def _clean_pass(model, tokens, positions):
    """Residual stream entering every layer [batch, layer+1, seq, d] and clean logits at k."""
    def one(tokens, positions):
        logits, acts = model.run(tokens, positions=positions, collect=("resid_pre",))
        return acts["resid_pre"], logits

    return jax.vmap(one)(tokens, positions)


@eqx.filter_jit
def _run_chunk(model, resid, start, masks, replacement, tokens, positions, clean, data, score):
    """Metric [chunk, batch] of a chunk of masks that all leave layers < start untouched."""
    x0 = resid[:, start]

    def one(mask, x, repl, tok, pos, cl, d):
        return score(model.resume(x, start, mask, repl, pos), tok, cl, d)

    r_axis = 0 if replacement is not None and replacement.per_example else None
    per_example = jax.vmap(one, in_axes=(None, 0, r_axis, 0, 0, 0, 0))
    return jax.vmap(per_example, in_axes=(0,) + (None,) * 6)(
        masks, x0, replacement, tokens, positions, clean, data)


def _pad(mask: Mask, size: int) -> Mask:
    """Pad a stacked mask to `size` with keep-all masks (results of padding are dropped)."""
    def pad(a):
        extra = size - a.shape[0]
        return a if extra == 0 else jnp.concatenate([a, jnp.ones((extra,) + a.shape[1:],
                                                                  a.dtype)])
    return jax.tree_util.tree_map(pad, mask)


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
    starts = mask_set.first_layers(sae_layer) if reuse_prefix else np.zeros(n, np.int64)
    # Masks sorted by first touched layer; each chunk resumes at its earliest mask's layer.
    # A chunk that straddles two groups recomputes a few clean layers for some of its masks
    # (same numbers up to rounding) instead of padding every group to a full chunk.
    order = np.argsort(starts, kind="stable")
    out = np.empty((n, batch), np.float32)
    for begin in range(0, n, chunk_size):
        idx = order[begin:begin + chunk_size]
        chunk = _pad(mask_set.materialize(idx), chunk_size)
        values = _run_chunk(model, resid, jnp.int32(starts[idx[0]]), chunk, replacement,
                            tokens_j, positions_j, clean, data_j, metric.score)
        out[idx] = np.asarray(values)[: len(idx)]
        if progress is not None:
            progress(begin + len(idx), n)
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
