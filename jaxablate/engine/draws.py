"""Several draws of a replacement in one sweep: resample ablation's draws as a vmapped axis.

A sweep given a list of D replacements (one kind, one shape: e.g. D resample draws) runs
every mask under each of them in the same compiled calls, the draws a vmapped axis inside
each mask, and returns `[D, N, batch]`. The clean pass, the masks' materialisation, the
dispatch of every chunk and the compilation are shared by the draws instead of repeated
once per draw; the numbers are those of D separate sweeps up to float32 rounding.

    stacked = stack_draws(replacements)     # one Replacement, fields [D, ...]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxablate.errors import InputError, InputTypeError
from jaxablate.model.replacement import FIELDS, Replacement


def is_drawn(replacement: object) -> bool:
    """Whether a sweep's `replacement` argument is a list of draws (a list or tuple)."""
    return isinstance(replacement, (list, tuple))


def check_draws(replacements: Sequence[object]) -> list[Replacement]:
    """The draws as a list, refused (naming the problem) unless they are one or more
    Replacements of one kind, one shape and shared by every mask (not per-mask values).

    Example:
        >>> check_draws([resample_replacement(model, ref, b, key=k) for k in keys])
    """
    draws = list(replacements)
    if not draws:
        raise InputError("replacement: an empty list of draws; pass one Replacement, or a "
                         "list of one or more")
    for d, r in enumerate(draws):
        if not isinstance(r, Replacement):
            raise InputTypeError(f"replacement: draw {d} is a {type(r).__name__}, expected a "
                                 "jaxablate.Replacement")
        if r.per_mask:
            raise InputError(f"replacement: draw {d} has per-mask values; draws must be "
                             "shared by every mask (sweep per-mask values on their own)")
    first = draws[0]
    structure = jax.tree_util.tree_structure(first)
    for d, r in enumerate(draws[1:], 1):
        if jax.tree_util.tree_structure(r) != structure:
            raise InputError(
                f"replacement: draw {d} differs from draw 0 in kind or fields ({r.kind!r}, "
                f"per_example={r.per_example} vs {first.kind!r}, per_example="
                f"{first.per_example}); draws of one sweep must be alike")
        for field in FIELDS:
            a, b = getattr(first, field), getattr(r, field)
            if a is not None and a.shape != b.shape:
                raise InputError(f"replacement: draw {d}'s {field} has shape {list(b.shape)}, "
                                 f"draw 0's {list(a.shape)}; draws of one sweep must be alike")
    return draws


def stack_draws(replacements: Sequence[Replacement]) -> Replacement:
    """D checked draws as one Replacement whose every field has a leading draw axis [D, ...]
    (what the sweep's compiled calls vmap over).

    Example:
        >>> stack_draws([r0, r1, r2]).z.shape        # (3, *r0.z.shape)
    """
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *replacements)
