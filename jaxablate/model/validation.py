"""Input checks run on the host before anything is traced or compiled.

Every check raises ValueError (TypeError for a wrong kind of object) with a message that names
the argument, what was expected and what was given, e.g.
"tokens: expected int [batch, seq], got shape (16,)".
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from jaxablate.errors import InputError, InputTypeError
from jaxablate.model.config import GPT2Config
from jaxablate.model.mask import Mask, kind_shapes
from jaxablate.model.replacement import FIELD_FOR_KIND, Replacement


def check_tokens(tokens: Any, cfg: GPT2Config) -> np.ndarray:
    """Tokens as int32 numpy `[batch, seq]`, or a ValueError naming what is wrong.

    JAX gathers clamp out-of-range indices silently, so ids outside the vocabulary would give
    plausible-looking wrong logits: they are refused here.

    Example:
        >>> check_tokens([[15496, 995, 0]], cfg).shape
        (1, 3)
    """
    array = np.asarray(tokens)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"tokens: expected integer token ids, got dtype {array.dtype}; pass "
                         "the tokenizer's ids (e.g. tokens.astype(np.int32))")
    if array.ndim != 2:
        hint = " (wrap one sequence as tokens[None])" if array.ndim == 1 else ""
        raise InputError(f"tokens: expected int [batch, seq], got shape {array.shape}{hint}")
    batch, seq = array.shape
    if batch == 0 or seq == 0:
        raise InputError(f"tokens: expected a non-empty [batch, seq], got shape {array.shape}")
    if seq > cfg.n_ctx:
        raise InputError(f"tokens: sequence length {seq} exceeds the model's n_ctx {cfg.n_ctx}; "
                         f"shorten the prompts to at most {cfg.n_ctx} tokens")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= cfg.d_vocab:
        bad = low if low < 0 else high
        raise InputError(
            f"tokens: id {bad} is outside the vocabulary [0, {cfg.d_vocab}); "
            "was the prompt tokenized for another model?"
        )
    return array.astype(np.int32)


def check_positions(positions: Any, batch: int, seq: int, what: str = "positions",
                    *, per_example: bool = False) -> np.ndarray:
    """Positions as int32 `[batch, k]` in [0, seq); negative values count from the end.

    Accepts an int, `[batch, k]`, and a 1-D sequence read as `[k]` positions shared by all
    examples, or, with `per_example=True` (metrics reading one position), as `[batch]`.
    """
    array = np.asarray(positions)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{what}: expected integer positions, got dtype {array.dtype}")
    if array.ndim == 0:
        array = np.full((batch, 1), int(array))
    elif array.ndim == 1 and per_example:
        if array.shape[0] != batch:
            raise InputError(f"{what}: expected one position per example [batch] = [{batch}], "
                             f"got shape {array.shape}")
        array = array[:, None]
    elif array.ndim == 1:
        array = np.broadcast_to(array[None, :], (batch, array.shape[0]))
    elif array.ndim != 2 or array.shape[0] != batch:
        raise InputError(f"{what}: expected [k] or [batch, k] with batch={batch}, "
                         f"got shape {array.shape}")
    if array.size and (array.min() < -seq or array.max() >= seq):
        raise InputError(f"{what}: position out of range for sequence length {seq} "
                         f"(got values from {array.min()} to {array.max()}); positions must lie "
                         f"in [-{seq}, {seq})")
    return (array % seq).astype(np.int32)


def check_mask(
    mask: Any,
    cfg: GPT2Config,
    seq_len: int | None,
    *,
    stacked: bool,
    n_features: int | None,
) -> None:
    """Check a `Mask` (stacked: with a leading mask axis) against the model and prompts."""
    if not isinstance(mask, Mask):
        raise InputTypeError(f"mask: expected a jaxablate.Mask, got {type(mask).__name__}")
    kinds = mask.kinds()
    shapes = kind_shapes(cfg, seq_len=seq_len, n_features=n_features)
    leading = None
    for kind in kinds:
        array = np.asarray(getattr(mask, kind))
        if kind == "sae_features" and n_features is None:
            raise InputError("mask.sae_features is set but the model has no SAE; "
                             "attach one with jaxablate.attach_sae")
        want = shapes[kind]
        have = array.shape[1:] if stacked else array.shape
        if stacked and array.ndim == 0:
            have = ()
        if have != want:
            axes = {"heads": "layer, head", "head_positions": "layer, seq, head",
                    "mlps": "layer", "neurons": "layer, neuron", "positions": "layer, seq",
                    "sae_features": "feature", "mid_positions": "layer, seq",
                    "mlp_positions": "layer, seq", "q_positions": "layer, seq, head",
                    "k_positions": "layer, seq, head", "v_positions": "layer, seq, head"}[kind]
            prefix = "n, " if stacked else ""
            raise InputError(f"mask.{kind}: expected [{prefix}{axes}] = "
                             f"{([array.shape[0]] if stacked and array.ndim else []) + list(want)}"
                             f", got {list(array.shape)} (built for another model or "
                             "sequence length?)")
        if stacked:
            if leading is not None and array.shape[0] != leading:
                raise InputError(f"mask.{kind}: leading mask axis is {array.shape[0]} but "
                                 f"other kinds have {leading}")
            leading = array.shape[0]
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"mask.{kind}: keep-weights must be floats, got {array.dtype}")
        if not np.isfinite(array).all():
            where = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
            raise InputError(f"mask.{kind}: keep-weights must lie in [0, 1], got "
                             f"{array[where]} at index {list(where)}")
        if array.min(initial=0.0) < 0 or array.max(initial=1.0) > 1:
            raise InputError(f"mask.{kind}: keep-weights must lie in [0, 1], got values from "
                             f"{array.min()} to {array.max()}")
    if stacked and leading == 0:
        raise InputError("masks: the mask set is empty (leading axis 0)")


def check_replacement(
    replacement: Any,
    mask_kinds: tuple[str, ...],
    cfg: GPT2Config,
    seq_len: int,
    batch: int,
    n_features: int | None,
    n_masks: int | None = None,
) -> None:
    """Check that `replacement` has values, of the right shapes, for every kind masked.

    n_masks: the number of masks of a sweep (which alone takes a per-mask replacement, with
    a leading axis of that length); None for a call that applies one mask."""
    if isinstance(replacement, Replacement) and replacement.per_mask:
        if n_masks is None:
            raise InputError("replacement: per-mask values (one per mask of a sweep, e.g. from "
                             "optimal_replacement) but this call applies one mask; pass "
                             "replacement.for_mask(n), the values of mask n")
    if not mask_kinds:
        return
    if replacement is None:
        raise InputError("replacement: a mask is given but no replacement; use "
                         "jaxablate.zero_replacement(model) or mean_replacement/resample")
    if not isinstance(replacement, Replacement):
        raise InputTypeError(f"replacement: expected a jaxablate.Replacement, got "
                             f"{type(replacement).__name__}")
    d = cfg
    per_layer = {
        "z": (d.n_layers, None, d.n_heads, d.d_head),
        "mlp_out": (d.n_layers, None, d.d_model),
        "post": (d.n_layers, None, d.d_mlp),
        "resid": (d.n_layers, None, d.d_model),
        "sae_features": (None, n_features),
        "resid_mid": (d.n_layers, None, d.d_model),
        "q": (d.n_layers, None, d.n_heads, d.d_head),
        "k": (d.n_layers, None, d.n_heads, d.d_head),
        "v": (d.n_layers, None, d.n_heads, d.d_head),
    }
    for kind in mask_kinds:
        field = FIELD_FOR_KIND[kind]
        value = getattr(replacement, field)
        if value is None:
            raise InputError(f"replacement has no {field!r} values, needed to ablate {kind}; "
                             "zero_replacement, mean_replacement and resample_replacement fill "
                             "every field")
        shape = np.shape(value)
        want = per_layer[field]
        seq_axis = want.index(None)
        if replacement.kind == "patch" and len(shape) == len(want) + 1:
            # Paired by index, position by position: a length-1 source is no broadcast here.
            source = [shape[0], shape[seq_axis + 1]]
            if source != [batch, seq_len]:
                raise InputError(f"replacement.{field}: the source prompts have shape "
                                 f"{source} and the evaluated ones {[batch, seq_len]}; "
                                 "patching pairs them by index (example i, position p of the "
                                 "source into example i, position p), so build the "
                                 "replacement with patch_replacement(model, source_tokens) "
                                 "from source prompts of the evaluated prompts' shape")
        if replacement.per_mask:
            if not shape or shape[0] != n_masks:
                raise InputError(f"replacement.{field}: per-mask values for "
                                 f"{shape[0] if shape else None} masks, but the sweep runs "
                                 f"{n_masks}; build the replacement for these masks")
            shape = shape[1:]
        if replacement.per_example:
            if not shape or shape[0] != batch:
                raise InputError(f"replacement.{field}: per-example values for batch "
                                 f"{shape[0] if shape else None}, but {batch} prompts are "
                                 "evaluated")
            shape = shape[1:]
        ok = len(shape) == len(want) and all(
            w is None or s == w for s, w in zip(shape, want)
        ) and shape[seq_axis] in (1, seq_len)
        if not ok:
            shown = ["seq|1" if w is None else w for w in want]
            raise InputError(f"replacement.{field}: expected {shown} with seq={seq_len}, "
                             f"got {list(shape)} (built for another model or sequence length?)")
        if not np.isfinite(np.asarray(value)).all():
            raise InputError(f"replacement.{field} contains NaN or inf; build it from finite "
                             "values (zero_replacement, mean_replacement, resample_replacement)")


def check_progress(progress: Any) -> None:
    """A sweep's progress is None, a bool (True: a progress bar, `engine.bars`) or a
    callable `(done, total)`; anything else is refused before a sweep compiles (it would
    fail only after the first chunk)."""
    if progress is not None and not isinstance(progress, bool) and not callable(progress):
        raise InputTypeError(f"progress: expected True (a progress bar), None "
                             f"or a function progress(done, total), got "
                             f"{type(progress).__name__} {progress!r}")


def check_int(value: Any, name: str, least: int | None = None, most: int | None = None) -> int:
    """`value` as an int in [least, most) (either bound optional; bools refused), or an
    InputError "{name} must be an int >= {least}, got {value!r}" (or "in [least, most - 1]").

    Example:
        >>> check_int(4, "chunk_size", 1)
        4
    """
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Integral) and (
        least is None or value >= least) and (most is None or value < most)
    if not ok:
        bounds = ("" if least is None else f" >= {least}") if most is None else (
            f" in [{least if least is not None else '-inf'}, {most - 1}]")
        raise InputError(f"{name} must be an int{bounds}, got {value!r}")
    return int(value)
