"""Single components' optimal constants joined into one replacement every mask can share.

`optimal_replacement` on single-component masks gives mask n the values a_n, where only
component n's slot matters. `shared_from_singles` writes each component's slot from its own
mask into one shared `Replacement`: ablating any set of those components with it sets each
one to its own single-component optimum (not to constants optimised for the set jointly;
for that, run `optimal_replacement` on the set's mask).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxablate.ablation.masks import MaskSet
from jaxablate.errors import InputError
from jaxablate.model.mask import POSITION_KINDS
from jaxablate.model.replacement import FIELD_FOR_KIND, Replacement


def _slot(kind: str, index: tuple[int, ...]) -> tuple:
    """Where a component of `kind` at mask index `index` lives in its replacement field
    (fields are [layer, seq, ...]; SAE features [seq, feature])."""
    every = slice(None)
    if kind == "heads":
        return (index[0], every, index[1])
    if kind in ("head_positions", "q_positions", "k_positions", "v_positions"):
        return (index[0], index[1], index[2])
    if kind == "mlps":
        return (index[0],)
    if kind == "neurons":
        return (index[0], every, index[1])
    if kind in ("positions", "mid_positions", "mlp_positions"):
        return (index[0], index[1])
    if kind == "sae_features":
        return (every, index[0])
    raise AssertionError(f"no replacement slot for mask kind {kind!r}")  # a kind added later


def shared_from_singles(replacement: Replacement, mask_set: MaskSet) -> Replacement:
    """One shared Replacement holding each component's values from its own mask.

    replacement: per-mask values for `mask_set` (`optimal_replacement`), whose masks each
    touch one component, every component at most once. Slots of no mask keep mask 0's
    values (the initial ones, e.g. the mean).

    Example:
        >>> singles = masks.single_heads(cfg)
        >>> r, _ = optimal_replacement(model, tokens, singles)
        >>> shared = shared_from_singles(r, singles)     # z [layer, 1, head, d_head]
        >>> sweep(model, tokens, masks.head_pairs(cfg), shared, metric)   # each at its own OA
    """
    if not replacement.per_mask:
        raise InputError("shared_from_singles: expected per-mask values (optimal_replacement)")
    if replacement.per_example:
        raise InputError("shared_from_singles: per-example values have no single constant")
    values = {f: np.array(getattr(replacement, f)[0]) for f in replacement.fields()}
    seq = mask_set.seq_len
    taken: dict[tuple, int] = {}
    for kind in mask_set.kinds:
        field = FIELD_FOR_KIND[kind]
        mask_id, index, weight = mask_set.entries_of(kind)
        seq_axis = 0 if field == "sae_features" else 1
        if kind in POSITION_KINDS and values[field].shape[seq_axis] == 1:
            # one constant per mask, but components sit at different positions
            values[field] = np.repeat(values[field], seq, axis=seq_axis)
        per_mask = np.asarray(getattr(replacement, field))
        for m, idx, w in zip(mask_id, index, weight):
            if w == 1.0:
                continue
            component = (kind, tuple(int(i) for i in idx))
            if component in taken and taken[component] != m:
                raise InputError(f"shared_from_singles: {mask_set.names[m]!r} and "
                                 f"{mask_set.names[taken[component]]!r} both ablate one "
                                 "component; each needs masks of one component each")
            taken[component] = int(m)
            slot = _slot(kind, component[1])
            source = per_mask[m]
            if kind in POSITION_KINDS and source.shape[seq_axis] == 1:
                source = np.repeat(source, seq, axis=seq_axis)
            values[field][slot] = source[slot]
    counts = np.bincount(np.fromiter(taken.values(), np.int64), minlength=len(mask_set))
    if (counts > 1).any():
        m = int(np.argmax(counts > 1))
        raise InputError(f"shared_from_singles: mask {mask_set.names[m]!r} ablates "
                         "several components; its constants were optimised for them "
                         "jointly, not one by one")
    return Replacement(**{f: jnp.asarray(v) for f, v in values.items()}, kind=replacement.kind)
