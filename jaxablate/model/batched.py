"""The batched entry points: validate on the host, then one jitted vmap over examples.

`forward` gives logits; `run_with_cache` also returns a `Cache` of activations, read by their
TransformerLens names (`cache["blocks.5.attn.hook_z"]`): every common hook of TL's GPT-2, from
`hook_embed` to `ln_final.hook_normalized`, with TL's shapes.
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


# TransformerLens hook names inside block L ("blocks.L." + suffix) -> Cache field.
BLOCK_HOOKS = {"hook_resid_pre": "resid_pre", "attn.hook_q": "q", "attn.hook_k": "k",
               "attn.hook_v": "v", "attn.hook_attn_scores": "attn_scores",
               "attn.hook_pattern": "pattern", "attn.hook_z": "z",
               "hook_attn_out": "attn_out", "hook_resid_mid": "resid_mid",
               "mlp.hook_pre": "pre", "mlp.hook_post": "post", "hook_mlp_out": "mlp_out",
               "hook_resid_post": "resid_post"}
# The model's hooks outside the blocks -> Cache field.
MODEL_HOOKS = {"hook_embed": "embed", "hook_pos_embed": "pos_embed",
               "ln_final.hook_normalized": "ln_final"}
# TransformerLens's short names (`utils.get_act_name`) for `cache[name, layer]`.
SHORT_NAMES = {"attn": "pattern", "attn_logits": "attn_scores", "query": "q", "key": "k",
               "value": "v", "mlp_pre": "pre", "mlp_post": "post"}


def hook_field(name: str, n_layers: int | None) -> tuple[str, int | None]:
    """The `Cache` field holding TransformerLens hook `name`, and its block (None for
    hook_embed, hook_pos_embed and ln_final.hook_normalized); InputError for a name TL's
    GPT-2 does not have or a block outside `n_layers` (None: not checked).

    Example:
        >>> hook_field("blocks.5.attn.hook_z", 12), hook_field("hook_embed", 12)
        (('z', 5), ('embed', None))
    """
    if not isinstance(name, str):
        raise InputTypeError(f"hook name: expected a str, got {type(name).__name__} {name!r}")
    if name in MODEL_HOOKS:
        return MODEL_HOOKS[name], None
    parts = name.split(".", 2)
    field = BLOCK_HOOKS.get(parts[2]) if len(parts) == 3 else None
    if parts[0] != "blocks" or field is None or not parts[1].isdigit():
        raise InputError(f"unknown hook name {name!r}; known: {', '.join(MODEL_HOOKS)} and "
                         f"blocks.L.{{{', '.join(BLOCK_HOOKS)}}}")
    layer = int(parts[1])
    if n_layers is not None and layer >= n_layers:  # a JAX index would clamp, silently
        raise InputError(f"hook {name!r}: layer {layer} is out of range for a model with "
                         f"{n_layers} layers (0 to {n_layers - 1})")
    return field, layer


class Cache(eqx.Module):
    """Activations of a batch, fields None unless collected, each named after its
    TransformerLens hook; `cache["blocks.5.attn.hook_z"]` reads one as TL's cache does.

    Per layer: resid_pre [batch, layer+1, seq, d_model] (row n_layers is the final residual
    stream), q, k, v, z [batch, layer, seq, head, d_head], attn_scores and pattern
    [batch, layer, head, seq, key], attn_out, resid_mid, mlp_out, resid_post
    [batch, layer, seq, d_model], pre and post [batch, layer, seq, neuron]. Whole model:
    embed, pos_embed, ln_final [batch, seq, d_model] (ln_final: TL's
    ln_final.hook_normalized, the final LayerNorm before its gain and bias).

    attn_scores are as TL's hook_attn_scores holds them: q.k / sqrt(d_head), with -inf
    above the diagonal (a query's later keys), so softmax over the last axis is `pattern`.
    Ablated runs record the ablated values (z after its blend, the stream after a position's).
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
    resid_post: Float[Array, "batch layer seq d_model"] | None = None
    attn_out: Float[Array, "batch layer seq d_model"] | None = None
    attn_scores: Float[Array, "batch layer head seq key"] | None = None
    pre: Float[Array, "batch layer seq neuron"] | None = None
    embed: Float[Array, "batch seq d_model"] | None = None
    pos_embed: Float[Array, "batch seq d_model"] | None = None
    ln_final: Float[Array, "batch seq d_model"] | None = None

    def _n_layers(self) -> int | None:
        """The model's layer count, read off a per-layer field (None when none is held)."""
        for field in BLOCK_HOOKS.values():
            value = getattr(self, field)
            if value is not None:
                return value.shape[1] - (field == "resid_pre")
        return None

    def hook(self, name: str) -> Array:
        """The value TransformerLens's hook `name` records, e.g. "blocks.5.attn.hook_z":
        [batch, seq, head, d_head] for attn.hook_q/k/v/z; [batch, head, seq, key] for
        attn.hook_attn_scores and attn.hook_pattern; [batch, seq, d_model] for hook_resid_pre,
        hook_attn_out, hook_resid_mid, hook_mlp_out, hook_resid_post, hook_embed,
        hook_pos_embed and ln_final.hook_normalized; [batch, seq, neuron] for mlp.hook_pre and
        mlp.hook_post. hook_resid_post of layer L reads resid_post, or resid_pre's row L + 1
        when only resid_pre was collected (`run_with_cache` collects resid_post too where a
        mask blends the stream entering a layer and the two differ).

        Example:
            >>> cache.hook("blocks.11.hook_resid_post").shape     # the final residual stream
            (batch, seq, 768)
        """
        field, layer = hook_field(name, self._n_layers())
        if field == "resid_post" and self.resid_post is None and self.resid_pre is not None:
            return self.resid_pre[:, layer + 1]
        value = getattr(self, field)
        if value is None:
            raise InputError(f"{field!r} was not collected; pass names=(..., {field!r})")
        return value if layer is None else value[:, layer]

    def __getitem__(self, key: Any) -> Array:
        """TransformerLens's indexing: a hook name, or (short name, layer) as TL's
        `utils.get_act_name` reads it (a field name or TL's alias; a negative layer counts
        from the end). Shapes as `hook`.

        Example:
            >>> cache["blocks.0.attn.hook_z"].shape               # [batch, seq, head, d_head]
            >>> cache["pattern", -1].shape                        # the last layer's pattern
        """
        if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str) and \
                isinstance(key[1], (int, np.integer)) and not isinstance(key[1], bool):
            field = SHORT_NAMES.get(key[0], key[0])
            suffix = {f: h for h, f in BLOCK_HOOKS.items()}.get(field)
            if suffix is None:
                raise InputError(f"unknown activation {key[0]!r} for cache[name, layer]; "
                                 f"known: {', '.join(BLOCK_HOOKS.values())}")
            n_layers = self._n_layers() or 0
            layer = int(key[1]) + n_layers if key[1] < 0 else int(key[1])
            if layer < 0:
                raise InputError(f"cache[{key[0]!r}, {key[1]}]: layer out of range for a model "
                                 f"with {n_layers} layers")
            return self.hook(f"blocks.{layer}.{suffix}")
        if isinstance(key, str):
            return self.hook(key)
        raise InputTypeError(f"cache[...]: expected a hook name or (name, layer), got {key!r}")

    def keys(self) -> list[str]:
        """The TransformerLens names of every activation this cache holds.

        Example:
            >>> run_with_cache(model, tokens, names=("embed", "z"))[1].keys()[:2]
            ['hook_embed', 'blocks.0.attn.hook_z']
        """
        held = {f for f in ACTIVATIONS if getattr(self, f) is not None}
        if "resid_pre" in held:  # hook_resid_post falls back to resid_pre's next row
            held.add("resid_post")
        names = [h for h in ("hook_embed", "hook_pos_embed") if MODEL_HOOKS[h] in held]
        for layer in range(self._n_layers() or 0):
            names += [f"blocks.{layer}.{h}" for h, f in BLOCK_HOOKS.items() if f in held]
        return names + (["ln_final.hook_normalized"] if "ln_final" in held else [])


def activation_names(names: Any, n_layers: int, mask: Mask | None) -> tuple[str, ...]:
    """The fields `run_with_cache` collects for `names` (fields or TL hook names; None: all),
    plus resid_post where only resid_pre was asked for and `mask` blends the stream entering
    a layer (row L + 1 of resid_pre is then no longer TL's hook_resid_post of layer L).

    Example:
        >>> activation_names(("z", "blocks.3.mlp.hook_pre"), 12, None)
        ('z', 'pre')
    """
    if names is None:
        return ACTIVATIONS
    if isinstance(names, str):
        names = (names,)
    if not isinstance(names, (tuple, list)):
        raise InputTypeError(f"names: expected a tuple of activation or hook names (or None "
                             f"for all), got {type(names).__name__}")
    wrong = [name for name in names if not isinstance(name, str)]
    if wrong:
        raise InputTypeError(f"names: expected str entries, got {wrong!r}")
    unknown = [name for name in names if name not in ACTIVATIONS and "hook_" not in name]
    if unknown:
        raise InputError(f"unknown activation names {unknown}; choose from "
                         f"{list(ACTIVATIONS)} or TransformerLens hook names")
    fields = [name if name in ACTIVATIONS else hook_field(name, n_layers)[0] for name in names]
    blends_entry = mask is not None and (mask.positions is not None
                                         or mask.sae_features is not None)
    if "resid_pre" in fields and blends_entry:
        fields.append("resid_post")
    return tuple(dict.fromkeys(fields))


def run_with_cache(
    model: GPT2,
    tokens: Any,
    mask: Mask | None = None,
    replacement: Replacement | None = None,
    *,
    names: Any = ("resid_pre", "z", "post", "mlp_out"),
    positions: Any = None,
) -> tuple[Float[Array, "batch seq_or_k vocab"], Cache]:
    """Logits and a `Cache` of the activations named in `names`, with the mask applied.

    tokens: int [batch, seq]; mask, replacement, positions: as `forward` (positions limits
    the logits only; activations cover every position). names: Cache fields ("z",
    "attn_scores", ...) or TransformerLens hook names ("blocks.3.mlp.hook_pre" collects the
    field `pre` of every layer); None collects everything (TL's default). Returns logits
    [batch, seq_or_k, vocab] and the Cache.

    Example:
        >>> logits, cache = run_with_cache(model, tokens, names=("z", "pattern"))
        >>> cache["blocks.5.attn.hook_z"].shape        # [batch, seq, head, d_head]
        >>> _, everything = run_with_cache(model, tokens, names=None)
    """
    tokens = validate_call(model, tokens, mask, replacement)
    names = activation_names(names, model.cfg.n_layers, mask)
    if positions is not None:
        positions = jnp.asarray(check_positions(positions, *tokens.shape))
    logits, acts = _forward(model, jnp.asarray(tokens), mask, replacement, positions, names)
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
