"""Fingerprints of a sweep's inputs, for the results store's manifest (`jaxablate.store`):
SHA-256 over arrays' dtype, shape and bytes, strings and numbers, and nested lists / dicts of
them, so that a stored sweep is resumed only with the inputs that made it.

    digest(*parts) -> hex str                      any numbers, strings, arrays, lists, dicts
    model_digest(model)                            the config and every weight (SAE included)
    masks_digest(mask_set)                         config, seq_len, SAE size, kinds, names, entries
    replacement_digest(replacement)                kind, per_example, every array (None allowed)
    metric_digest(metric, tokens, cfg)             kind, name, what it prepared for `tokens`
    _versions()                                    jaxablate, jax, jaxlib, numpy, equinox versions

Example:
    >>> masks_digest(masks.single_heads(cfg))[:12]      # the Study's key for a mask set
"""

from __future__ import annotations

import hashlib
from typing import Any

import equinox as eqx
import jax
import numpy as np

from jaxablate.masks import MaskSet
from jaxablate.metrics import Metric
from jaxablate.model import GPT2
from jaxablate.replacement import Replacement


def _feed(h: Any, x: Any) -> None:
    if x is None:
        h.update(b"N;")
    elif isinstance(x, (bool, int, float, str)):
        text = repr(x)
        h.update(f"{type(x).__name__}{len(text)}:{text};".encode())
    elif isinstance(x, (list, tuple)):
        h.update(f"L{len(x)}[".encode())
        for v in x:
            _feed(h, v)
        h.update(b"]")
    elif isinstance(x, dict):
        h.update(f"D{len(x)}{{".encode())
        for k in sorted(x):
            _feed(h, str(k))
            _feed(h, x[k])
        h.update(b"}")
    else:
        a = np.ascontiguousarray(np.asarray(x))
        h.update(f"A{a.dtype.str}{a.shape}:".encode())
        h.update(a.reshape(-1).view(np.uint8).data)


def digest(*parts: Any) -> str:
    """SHA-256 hex digest of numbers, strings, arrays and nested lists / dicts of them."""
    h = hashlib.sha256()
    for part in parts:
        _feed(h, part)
    return h.hexdigest()


def _arrays(tree: Any) -> dict[str, Any]:
    """The array leaves of a pytree by their path ("blocks.W_O", ...)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(eqx.filter(tree, eqx.is_array))
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def model_digest(model: GPT2) -> str:
    """Digest of a model's config and every weight array (its SAE included)."""
    return digest(repr(model.cfg), _arrays(model))


def masks_digest(mask_set: MaskSet) -> str:
    """Digest of a mask set: config, sequence length, SAE size, kinds, names, entries."""
    entries = {kind: list(arrays) for kind, arrays in mask_set.entries.items()}
    return digest(repr(mask_set.cfg), mask_set.seq_len, mask_set.n_features,
                  list(mask_set.kinds), mask_set.names, entries)


def replacement_digest(replacement: Replacement | None) -> str:
    if replacement is None:
        return digest(None)
    return digest(replacement.kind, replacement.per_example, _arrays(replacement))


def metric_digest(metric: Metric, tokens: np.ndarray, cfg: Any) -> str:
    """Digest of a metric's kind and what it prepared for `tokens` (positions, ids)."""
    positions, data = metric.prepare(tokens, cfg)
    return digest(type(metric).__qualname__, metric.name, positions, dict(data))


def _versions() -> dict[str, str]:
    import jaxlib

    from jaxablate import __version__

    return {"jaxablate": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "numpy": np.__version__, "equinox": eqx.__version__}
