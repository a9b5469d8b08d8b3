"""The mask: keep-weights in [0, 1] for every component kind, as a pytree of float arrays.

Semantics (one place for them): for a component whose output is `h` and whose replacement
value is `r`, the ablated output is

    h_ablated = m * h + (1 - m) * r

so `m = 1` keeps the component, `m = 0` ablates it fully and fractions interpolate (which is
what gradients with respect to the mask need). What "the component's output" is:

    heads           [layer, head]       the head's `z` (TL `blocks.L.attn.hook_z`), all positions
    head_positions  [layer, seq, head]  the head's `z` at single query positions
    mlps            [layer]             the MLP's output (TL `blocks.L.hook_mlp_out`)
    neurons         [layer, neuron]     a post-GELU activation (TL `blocks.L.mlp.hook_post`)
    positions       [layer, seq]        the residual stream entering the layer at a position
                                        (TL `blocks.L.hook_resid_pre`)
    mid_positions   [layer, seq]        the stream after the layer's attention at a position
                                        (TL `blocks.L.hook_resid_mid`)
    mlp_positions   [layer, seq]        the MLP's output at a position (TL `hook_mlp_out[:, p]`)
    q_positions     [layer, seq, head]  a head's query vector at a position (TL `attn.hook_q`);
    k_positions, v_positions            its key and value vectors (`attn.hook_k`, `hook_v`)
    sae_features    [feature]           an SAE feature at the SAE's hook point:
                                        x - (1 - m_f) * (a_f - r_f) * d_f

A field left as `None` is not touched and costs nothing. Masks are data, never structure: two
masks with the same fields (and shapes) run through the same compiled program. A stacked mask
(a sweep's) has a leading axis `n` on every field.
"""

from __future__ import annotations

from collections.abc import Iterable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxablate.errors import InputError
from jaxablate.model.config import GPT2Config

MASK_KINDS = ("heads", "head_positions", "mlps", "neurons", "positions", "sae_features",
              "mid_positions", "mlp_positions", "q_positions", "k_positions", "v_positions")
# Kinds indexed by token position: a mask set of them needs seq_len.
POSITION_KINDS = ("head_positions", "positions", "mid_positions", "mlp_positions",
                  "q_positions", "k_positions", "v_positions")
# Kinds that change a layer's attention itself (its queries, keys or values), or the stream
# entering it: a sweep cannot reuse that layer's clean attention for them.
REATTEND_BREAKING = ("positions", "sae_features", "q_positions", "k_positions", "v_positions")


class Mask(eqx.Module):
    """Keep-weights per component kind; `None` fields are untouched (see module docstring).

    Shapes without the optional leading mask axis `n`:
    heads [layer, head], head_positions [layer, seq, head], mlps [layer],
    neurons [layer, neuron], positions [layer, seq], sae_features [feature],
    mid_positions and mlp_positions [layer, seq], q/k/v_positions [layer, seq, head].

    Example:
        >>> m = Mask.keep_all(model.cfg)                       # heads, mlps, neurons = 1
        >>> m = eqx.tree_at(lambda m: m.heads, m, m.heads.at[9, 6].set(0.0))
        >>> logits = jaxablate.forward(model, tokens, m, jaxablate.zero_replacement(model))
    """

    heads: Float[Array, "*n layer head"] | None = None
    head_positions: Float[Array, "*n layer seq head"] | None = None
    mlps: Float[Array, "*n layer"] | None = None
    neurons: Float[Array, "*n layer neuron"] | None = None
    positions: Float[Array, "*n layer seq"] | None = None
    sae_features: Float[Array, "*n feature"] | None = None
    mid_positions: Float[Array, "*n layer seq"] | None = None
    mlp_positions: Float[Array, "*n layer seq"] | None = None
    q_positions: Float[Array, "*n layer seq head"] | None = None
    k_positions: Float[Array, "*n layer seq head"] | None = None
    v_positions: Float[Array, "*n layer seq head"] | None = None

    @classmethod
    def keep_all(
        cls,
        cfg: GPT2Config,
        kinds: Iterable[str] = ("heads", "mlps", "neurons"),
        *,
        seq_len: int | None = None,
        n_features: int | None = None,
    ) -> "Mask":
        """A mask of ones for the given kinds (it reproduces the clean forward exactly).

        `seq_len` is needed for the kinds indexed by position (`POSITION_KINDS`),
        `n_features` for "sae_features". Used as the point where gradients are taken (attribution).

        Example:
            >>> Mask.keep_all(cfg).heads.shape
            (12, 12)
        """
        kinds = tuple(kinds)
        unknown = [k for k in kinds if k not in MASK_KINDS]
        if unknown:
            raise InputError(f"unknown mask kinds {unknown}; known kinds are {list(MASK_KINDS)}")
        if seq_len is None and set(kinds) & set(POSITION_KINDS):
            raise InputError(f"Mask.keep_all needs seq_len for "
                             f"{[k for k in kinds if k in POSITION_KINDS]}")
        if n_features is None and "sae_features" in kinds:
            raise InputError("Mask.keep_all needs n_features for 'sae_features'")
        shapes = kind_shapes(cfg, seq_len=seq_len, n_features=n_features)
        fields = {k: jnp.ones(shapes[k], jnp.float32) for k in kinds}
        return cls(**fields)

    def kinds(self) -> tuple[str, ...]:
        """The kinds this mask touches (its non-None fields), in canonical order."""
        return tuple(k for k in MASK_KINDS if getattr(self, k) is not None)


def kind_shapes(
    cfg: GPT2Config, *, seq_len: int | None = None, n_features: int | None = None
) -> dict[str, tuple[int, ...]]:
    """The per-mask shape of every kind for this model (no leading mask axis).

    Example:
        >>> kind_shapes(cfg, seq_len=16)["head_positions"]
        (12, 16, 12)
    """
    return {
        "heads": (cfg.n_layers, cfg.n_heads),
        "head_positions": (cfg.n_layers, seq_len, cfg.n_heads),
        "mlps": (cfg.n_layers,),
        "neurons": (cfg.n_layers, cfg.d_mlp),
        "positions": (cfg.n_layers, seq_len),
        "sae_features": (n_features,),
        "mid_positions": (cfg.n_layers, seq_len),
        "mlp_positions": (cfg.n_layers, seq_len),
        "q_positions": (cfg.n_layers, seq_len, cfg.n_heads),
        "k_positions": (cfg.n_layers, seq_len, cfg.n_heads),
        "v_positions": (cfg.n_layers, seq_len, cfg.n_heads),
    }
