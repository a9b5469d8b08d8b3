"""Constructors of replacement values: zero, mean over a reference set, resample, patch.

All of them come from clean forward passes (no ablation), so a component's replacement never
depends on which other components a mask ablates.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxablate.errors import InputError, InputTypeError
from jaxablate.model.batched import run_with_cache
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.replacement import Replacement
from jaxablate.model.validation import check_tokens

# Reference prompts are run in batches of this size so memory stays flat for large sets.
_REFERENCE_BATCH = 32


def zero_replacement(model: GPT2) -> Replacement:
    """Zeros at every ablation point (broadcast over positions).

    Zero-ablating a head zeroes its `z`, so its value-bias contribution goes too; this equals
    TransformerLens with `fold_value_biases=False` (with TL's default folding it differs).

    Example:
        >>> r = zero_replacement(model)
        >>> r.z.shape                                       # [layer, 1, head, d_head]
        (12, 1, 12, 64)
    """
    c = model.cfg
    sae = None if model.sae is None else jnp.zeros((1, model.sae.n_features), jnp.float32)
    heads = jnp.zeros((c.n_layers, 1, c.n_heads, c.d_head), jnp.float32)
    stream = jnp.zeros((c.n_layers, 1, c.d_model), jnp.float32)
    return Replacement(z=heads, mlp_out=stream, post=jnp.zeros((c.n_layers, 1, c.d_mlp),
                       jnp.float32), resid=stream, sae_features=sae, resid_mid=stream,
                       q=heads, k=heads, v=heads, kind="zero")


def _activations(model: GPT2, tokens: np.ndarray) -> dict[str, jnp.ndarray]:
    """Clean activations [batch, layer, seq, ...] of every ablation point for `tokens`."""
    _, cache = run_with_cache(model, tokens, names=("resid_pre", "z", "post", "mlp_out",
                                                    "resid_mid", "q", "k", "v"))
    acts = {"z": cache.z, "post": cache.post, "mlp_out": cache.mlp_out,
            "resid": cache.resid_pre[:, :-1], "resid_mid": cache.resid_mid, "q": cache.q,
            "k": cache.k, "v": cache.v}
    if model.sae is not None:
        acts["sae_features"] = jax.vmap(model.sae.encode)(cache.resid_pre[:, model.sae.layer])
    return acts


def mean_replacement(model: GPT2, reference_tokens: Any, per_position: bool = True
                     ) -> Replacement:
    """The mean activation over a reference set, per position or over batch and positions.

    reference_tokens: int [batch, seq]. It may differ from the prompts evaluated (IOI's "ABC"
    set); with `per_position=True` it must have their sequence length and be aligned so each
    position means the same thing (one template).

    Example:
        >>> r = mean_replacement(model, abc_tokens)              # z: [layer, seq, head, d_head]
        >>> r = mean_replacement(model, abc_tokens, per_position=False)   # seq axis 1
    """
    tokens = check_tokens(reference_tokens, model.cfg)
    totals: dict[str, jnp.ndarray] = {}
    for start in range(0, len(tokens), _REFERENCE_BATCH):
        acts = _activations(model, tokens[start:start + _REFERENCE_BATCH])
        for name, value in acts.items():
            seq_axis = 1 if name == "sae_features" else 2
            summed = value.sum(axis=0)
            if not per_position:
                summed = summed.sum(axis=seq_axis - 1, keepdims=True)
            totals[name] = totals[name] + summed if name in totals else summed
    count = len(tokens) * (1 if per_position else tokens.shape[1])
    means = {name: total / count for name, total in totals.items()}
    return Replacement(**means, kind="mean")


def check_key(key: Any) -> jax.Array:
    """One PRNG key: a typed key (`jax.random.key(0)`), a legacy uint32 [2] key
    (`jax.random.PRNGKey(0)`), or an int seed (read as `jax.random.key(seed)`)."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise InputError(f"key: expected one PRNG key, got an array of keys of shape "
                             f"{list(key.shape)}; make one replacement per key: "
                             "[resample_replacement(model, tokens, k) for k in keys]")
        return key
    array = np.asarray(key) if isinstance(key, (jax.Array, np.ndarray)) else None
    if array is not None and array.dtype == np.uint32 and array.shape == (2,):
        return jnp.asarray(array)  # a legacy jax.random.PRNGKey
    if array is not None and array.dtype == np.uint32 and array.ndim == 2 and \
            array.shape[1] == 2:
        raise InputError(f"key: expected one PRNG key, got {array.shape[0]} legacy keys "
                         f"{list(array.shape)}; make one replacement per key: "
                         "[resample_replacement(model, tokens, k) for k in keys]")
    raise InputTypeError(f"key: expected a PRNG key (jax.random.key(seed)) or an int seed, "
                         f"got {type(key).__name__}"
                         + (f" of shape {list(array.shape)}" if array is not None else ""))


def resample_replacement(model: GPT2, tokens: Any, key: Any, *,
                         n_examples: int | None = None) -> Replacement:
    """Per-example values taken from other prompts, chosen by `key` (reproducible).

    key: one PRNG key (`jax.random.key(0)`, or a legacy `jax.random.PRNGKey(0)`) or an int
    seed.

    With `n_examples=None` the evaluated prompts are `tokens` themselves and example b takes
    its values from a uniformly drawn *other* example (never itself). With `n_examples=B`,
    `tokens` is a separate source set and each of the B evaluated prompts draws a source
    uniformly. The chosen sources are in `.source_index`. Several draws for variance:
    `[resample_replacement(model, tokens, k) for k in jax.random.split(key, draws)]`.

    Example:
        >>> r = resample_replacement(model, tokens, jax.random.key(0))
        >>> r.per_example, r.z.shape              # [batch, layer, seq, head, d_head]
    """
    key = check_key(key)
    tokens = check_tokens(tokens, model.cfg)
    n_source = len(tokens)
    if n_examples is None:
        if n_source < 2:
            raise InputError("resample_replacement needs at least 2 prompts to resample from")
        offset = jax.random.randint(key, (n_source,), 1, n_source)
        source = np.asarray((np.arange(n_source) + np.asarray(offset)) % n_source)
    else:
        if n_examples < 1:
            raise InputError(f"n_examples must be positive, got {n_examples}")
        source = np.asarray(jax.random.randint(key, (n_examples,), 0, n_source))
    acts = _activations(model, tokens)
    values = {name: value[source] for name, value in acts.items()}
    return Replacement(**values, source_index=jnp.asarray(source, jnp.int32), kind="resample",
                       per_example=True)


def patch_replacement(model: GPT2, source_tokens: Any) -> Replacement:
    """Per-example values from a paired source run: example i of the evaluated prompts is
    blended towards example i of `source_tokens` (activation patching).

    source_tokens: int [batch, seq], the same shape as the prompts the sweep evaluates (the
    pairing is by index; `jaxablate.sweep` refuses another batch size or length). With it,
    `sweep(model, corrupted, masks, patch_replacement(model, clean), metric)` is
    "denoising" patching (clean activations into the corrupted run) and swapping the two
    prompt sets is "noising". Same shape contract as `resample_replacement`, with a fixed
    pairing: `.source_index` is 0 .. batch-1.

    Example:
        >>> r = patch_replacement(model, clean_tokens)
        >>> r.per_example, r.z.shape               # True, [batch, layer, seq, head, d_head]
        >>> out = sweep(model, corrupted_tokens, masks.positions(cfg, seq), r, metric)
    """
    tokens = check_tokens(source_tokens, model.cfg)
    values: dict[str, list] = {}
    for start in range(0, len(tokens), _REFERENCE_BATCH):
        for name, value in _activations(model, tokens[start:start + _REFERENCE_BATCH]).items():
            values.setdefault(name, []).append(value)
    joined = {name: jnp.concatenate(parts) for name, parts in values.items()}
    return Replacement(**joined, source_index=jnp.arange(len(tokens), dtype=jnp.int32),
                       kind="patch", per_example=True)
