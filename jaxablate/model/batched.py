"""The batched entry points: validate on the host, then one jitted vmap over examples.

`forward` gives logits; `run_with_cache` also returns activations at the ablation points, with
the TransformerLens names researchers know (`hook_z`, `mlp.hook_post`, `hook_mlp_out`,
`hook_resid_pre`, `hook_resid_mid`, `attn.hook_pattern`, `attn.hook_q/k/v`).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxablate.errors import InputError, InputTypeError
from jaxablate.model.gpt2 import ACTIVATIONS, GPT2
from jaxablate.model.mask import Mask
from jaxablate.model.replacement import Replacement
from jaxablate.model.sae import SAE
from jaxablate.model.validation import check_mask, check_positions, check_replacement, check_tokens


def _n_features(model: GPT2) -> int | None:
    return None if model.sae is None else model.sae.n_features


def validate_call(model: GPT2, tokens: Any, mask: Mask | None,
                  replacement: Replacement | None) -> np.ndarray:
    """Shared checks of `forward` and `run_with_cache`; returns int32 tokens [batch, seq]."""
    if not isinstance(model, GPT2):
        raise InputTypeError(f"model: expected a jaxablate GPT2 (see load_gpt2), got "
                             f"{type(model).__name__}")
    tokens = check_tokens(tokens, model.cfg)
    batch, seq = tokens.shape
    kinds: tuple[str, ...] = ()
    if mask is not None:
        check_mask(mask, model.cfg, seq, stacked=False, n_features=_n_features(model))
        kinds = mask.kinds()
    check_replacement(replacement, kinds, model.cfg, seq, batch, _n_features(model))
    return tokens


def _replacement_axis(replacement: Replacement | None):
    return 0 if replacement is not None and replacement.per_example else None


@eqx.filter_jit
def _forward(model, tokens, mask, replacement, positions, collect):
    def one(tokens, replacement, positions):
        return model.run(tokens, mask, replacement, positions=positions, collect=collect)

    r_axis = _replacement_axis(replacement)
    p_axis = None if positions is None else 0
    return jax.vmap(one, in_axes=(0, r_axis, p_axis))(tokens, replacement, positions)


def forward(
    model: GPT2,
    tokens: Any,
    mask: Mask | None = None,
    replacement: Replacement | None = None,
    *,
    positions: Any = None,
) -> Float[Array, "batch seq_or_k vocab"]:
    """Logits of a batch of prompts, optionally with one ablation applied to every prompt.

    tokens: int [batch, seq]. mask: an unstacked `Mask` (None: clean run). replacement: the
    values ablated components are blended towards (required when a mask is given).
    positions: None for logits at every position ([batch, seq, vocab]); an int, [k] or
    [batch, k] (negative counts from the end) for logits only there ([batch, k, vocab]),
    skipping the unembedding elsewhere.

    Example:
        >>> logits = forward(model, tokens)                             # [batch, seq, vocab]
        >>> last = forward(model, tokens, positions=-1)[:, 0]           # [batch, vocab]
        >>> mask = Mask(heads=jnp.ones((12, 12)).at[9, 9].set(0.0))
        >>> ablated = forward(model, tokens, mask, zero_replacement(model))
    """
    tokens = validate_call(model, tokens, mask, replacement)
    if positions is not None:
        positions = jnp.asarray(check_positions(positions, *tokens.shape))
    return _forward(model, jnp.asarray(tokens), mask, replacement, positions, ())[0]


class Cache(eqx.Module):
    """Activations of a batch at the ablation points (fields are None unless collected).

    resid_pre [batch, layer+1, seq, d_model] (row n_layers is the final residual stream),
    z [batch, layer, seq, head, d_head], post [batch, layer, seq, neuron],
    mlp_out [batch, layer, seq, d_model], pattern [batch, layer, head, seq, key],
    q, k, v [batch, layer, seq, head, d_head], resid_mid [batch, layer, seq, d_model].
    """

    resid_pre: Float[Array, "batch layer_plus_1 seq d_model"] | None = None
    z: Float[Array, "batch layer seq head d_head"] | None = None
    post: Float[Array, "batch layer seq neuron"] | None = None
    mlp_out: Float[Array, "batch layer seq d_model"] | None = None
    pattern: Float[Array, "batch layer head seq key"] | None = None
    q: Float[Array, "batch layer seq head d_head"] | None = None
    k: Float[Array, "batch layer seq head d_head"] | None = None
    v: Float[Array, "batch layer seq head d_head"] | None = None
    resid_mid: Float[Array, "batch layer seq d_model"] | None = None

    def hook(self, name: str) -> Array:
        """The value TransformerLens's hook `name` sees, e.g. "blocks.5.attn.hook_z":
        [batch, seq, head, d_head] for hook_z and attn.hook_q/k/v, [batch, seq, d_model] for
        hook_resid_pre, hook_resid_mid, hook_resid_post (the stream leaving layer L) and
        hook_mlp_out, [batch, seq, neuron] for mlp.hook_post, [batch, head, seq, key] for
        attn.hook_pattern.

        Example:
            >>> cache.hook("blocks.11.hook_resid_post").shape     # the final residual stream
            (batch, seq, 768)
        """
        parts = name.split(".")
        table = {"attn.hook_z": "z", "mlp.hook_post": "post", "hook_mlp_out": "mlp_out",
                 "hook_resid_pre": "resid_pre", "hook_resid_post": "resid_pre",
                 "attn.hook_pattern": "pattern", "attn.hook_q": "q", "attn.hook_k": "k",
                 "attn.hook_v": "v", "hook_resid_mid": "resid_mid"}
        field = table.get(".".join(parts[2:])) if len(parts) > 2 else None
        if parts[0] != "blocks" or field is None or not parts[1].isdigit():
            raise InputError(f"unknown hook name {name!r}; known: blocks.L.{{{', '.join(table)}}}")
        value = getattr(self, field)
        if value is None:
            raise InputError(f"{field!r} was not collected; pass names=(..., {field!r})")
        # resid_pre holds n_layers + 1 streams (the last is the final one); the rest n_layers.
        n_layers = value.shape[1] - 1 if field == "resid_pre" else value.shape[1]
        layer = int(parts[1])
        if layer >= n_layers:  # a JAX index would clamp to the last layer, silently
            raise InputError(f"hook {name!r}: layer {layer} is out of range for a model with "
                             f"{n_layers} layers (0 to {n_layers - 1})")
        return value[:, layer + 1 if name.endswith("hook_resid_post") else layer]


def run_with_cache(
    model: GPT2,
    tokens: Any,
    mask: Mask | None = None,
    replacement: Replacement | None = None,
    *,
    names: tuple[str, ...] = ("resid_pre", "z", "post", "mlp_out"),
    positions: Any = None,
) -> tuple[Float[Array, "batch seq_or_k vocab"], Cache]:
    """Logits and a `Cache` of the activations named in `names` (see `Cache`).

    Example:
        >>> logits, cache = run_with_cache(model, tokens, names=("z", "pattern"))
        >>> cache.hook("blocks.5.attn.hook_z").shape        # [batch, seq, head, d_head]
    """
    unknown = [n for n in names if n not in ACTIVATIONS]
    if unknown:
        raise InputError(f"unknown activation names {unknown}; choose from {list(ACTIVATIONS)}")
    tokens = validate_call(model, tokens, mask, replacement)
    if positions is not None:
        positions = jnp.asarray(check_positions(positions, *tokens.shape))
    logits, acts = _forward(model, jnp.asarray(tokens), mask, replacement, positions,
                            tuple(names))
    return logits, Cache(**acts)


def attach_sae(model: GPT2, sae: SAE) -> GPT2:
    """A copy of `model` whose features of `sae` can be ablated (mask.sae_features).

    Example:
        >>> model = attach_sae(model, SAE.create(W_enc, b_enc, W_dec, b_dec,
        ...                                      "blocks.3.hook_resid_pre"))
    """
    if not isinstance(sae, SAE):
        raise InputTypeError(f"expected a jaxablate.SAE, got {type(sae).__name__}")
    if sae.W_enc.shape[0] != model.cfg.d_model:
        raise InputError(f"SAE reads d_model={sae.W_enc.shape[0]}, the model has "
                         f"d_model={model.cfg.d_model}")
    if not 0 <= sae.layer < model.cfg.n_layers:
        raise InputError(f"SAE hook point layer {sae.layer} is outside the model's "
                         f"{model.cfg.n_layers} layers")
    return eqx.tree_at(lambda m: m.sae, model, sae, is_leaf=lambda x: x is None)
