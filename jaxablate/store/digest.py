"""Fingerprints of a sweep's inputs, for the results store's manifest (`jaxablate.store`):
SHA-256 over arrays' dtype, shape and bytes, strings and numbers, and nested lists / dicts of
them, so that a stored sweep is resumed only with the inputs that made it.

    digest(*parts) -> hex str                      any numbers, strings, arrays, lists, dicts
    model_digest(model)                            structure with static fields (the config, the
                                                   SAE's layer) and every weight array
    masks_digest(mask_set)                         config, seq_len, SAE size, kinds, names, entries
    replacement_digest(replacement)                kind, per_example, per_mask, every array
    metric_digest(metric, tokens, cfg)             class, attributes, the code of its score
                                                   function, what it prepared for `tokens`
    versions()                                     jaxablate, jax, jaxlib, numpy, equinox versions

Example:
    >>> masks_digest(masks.single_heads(cfg))[:12]      # the Study's key for a mask set
"""

from __future__ import annotations

import hashlib
import inspect
import re
import types
from typing import Any

import equinox as eqx
import jax
import numpy as np

from jaxablate.ablation.masks import MaskSet
from jaxablate.ablation.metrics import Metric
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.replacement import Replacement
from jaxablate.version import VERSION


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
    """Digest of a model's structure, static fields included (the config; an SAE's hook
    layer, so the same SAE attached at another layer differs), and every weight array."""
    return digest(str(jax.tree_util.tree_structure(model)), _arrays(model))


def masks_digest(mask_set: MaskSet) -> str:
    """Digest of a mask set: config, sequence length, SAE size, kinds, names, entries."""
    entries = {kind: list(mask_set.entries_of(kind)) for kind in mask_set.kinds}
    return digest(repr(mask_set.cfg), mask_set.seq_len, mask_set.n_features,
                  list(mask_set.kinds), mask_set.names, entries)


def replacement_digest(replacement: Replacement | None) -> str:
    if replacement is None:
        return digest(None)
    if replacement.per_mask:  # (the flag joins only here: earlier stores keep their digests)
        return digest(replacement.kind, replacement.per_example, "per_mask",
                      _arrays(replacement))
    return digest(replacement.kind, replacement.per_example, _arrays(replacement))


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _plain(x: Any) -> Any:
    """What `_feed` takes: numbers, strings, arrays, lists and dicts as they are, anything
    else by its repr."""
    if x is None or isinstance(x, (bool, int, float, str, np.ndarray, jax.Array)):
        return x
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, np.generic):
        return x.item()
    if callable(x) and hasattr(x, "__code__"):
        return function_digest(x)
    return _ADDRESS.sub("", repr(x))  # "<object at 0x7f...>" differs from run to run


def _code(code: types.CodeType) -> list[Any]:
    consts = [_code(c) if isinstance(c, types.CodeType) else _plain(c) for c in code.co_consts]
    return [code.co_code.hex(), consts, list(code.co_names), list(code.co_varnames)]


def function_digest(fn: Any, _seen: set[int] | None = None) -> list[Any]:
    """What a function computes, as data: its module, name, bytecode, constants, defaults,
    closure values, and the same for the functions of its own module it calls by name (a
    helper edited in place changes the digest too)."""
    # The function itself, not a decorator's wrapper (e.g. the runtime type checker the
    # test suite installs): the same metric must give the same digest in every process.
    fn = inspect.unwrap(getattr(fn, "__func__", fn))
    code = getattr(fn, "__code__", None)
    if code is None:
        return [repr(fn)]
    seen = set() if _seen is None else _seen
    seen.add(id(fn))
    cells = [_plain(c.cell_contents) for c in (fn.__closure__ or ())
             if not callable(c.cell_contents)]
    out = [fn.__module__, fn.__qualname__, _code(code), _plain(fn.__defaults__), cells]
    module_globals = getattr(fn, "__globals__", {})
    for name in code.co_names:
        helper = module_globals.get(name)
        if isinstance(helper, types.FunctionType) and helper.__module__ == fn.__module__ \
                and id(helper) not in seen:
            out.append([name, function_digest(helper, seen)])
    return out


def metric_digest(metric: Metric, tokens: np.ndarray, cfg: Any) -> str:
    """Digest of a metric: its class, its attributes, the code of its score function (so a
    custom `Metric` subclass that computes something else differs, whatever its name), and
    what it prepared for `tokens` (positions, ids)."""
    positions, data = metric.prepare(tokens, cfg)
    kind = type(metric)
    flags = {name: _plain(getattr(metric, name)) for name in
             ("name", "reads_clean", "higher_is_better", "columns", "differentiable",
              "stationary_at_clean")}
    return digest(f"{kind.__module__}.{kind.__qualname__}", flags, _plain(vars(metric)),
                  function_digest(metric.score), positions, dict(data))


def versions() -> dict[str, str]:
    import jaxlib

    return {"jaxablate": VERSION, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "numpy": np.__version__, "equinox": eqx.__version__}
