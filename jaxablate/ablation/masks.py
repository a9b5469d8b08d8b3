"""The mask-set constructors (`ja.masks.*`): one `MaskSet` of N ablations per call.

    single_heads  head_pairs  single_mlps  single_neurons  positions  single_features
    mid_positions  mlp_positions  head_vectors            (per position: activation patching)
    from_components  from_stacked  concat                 (MaskSet itself: `mask_set.py`)

Enumeration is layer-major (head 0.0, 0.1, ..., 0.H-1, 1.0, ...); `head_pairs` lists pairs
(i, j), i < j, in lexicographic order of that enumeration.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from jaxablate.ablation.components import Component, check_component, parse_component
from jaxablate.ablation.mask_set import MaskSet
from jaxablate.errors import InputError
from jaxablate.model.config import GPT2Config
from jaxablate.model.mask import POSITION_KINDS, Mask
from jaxablate.model.validation import check_mask

__all__ = ["MaskSet", "concat", "from_components", "from_stacked", "head_pairs", "head_vectors",
           "mid_positions", "mlp_positions", "positions", "single_features", "single_heads",
           "single_mlps", "single_neurons"]


def _name(touched: list[tuple[Component, float]]) -> str:
    parts = [c.name if w == 0.0 else f"{c.name}={w:g}" for c, w in touched if w != 1.0]
    return "+".join(parts) if parts else "clean"


def from_components(
    cfg: GPT2Config,
    sets: Iterable[Any],
    *,
    weight: float = 0.0,
    seq_len: int | None = None,
    n_features: int | None = None,
) -> MaskSet:
    """One mask per entry of `sets`; an entry is a component or a list of components that are
    ablated together (keep-weight `weight`, default 0 = full ablation).

    Example:
        >>> ms = from_components(cfg, ["9.6", ["9.6", "9.9"], "mlp0", "n3.1207"])
        >>> ms.names
        ['9.6', '9.6+9.9', 'mlp0', 'n3.1207']
    """
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"keep-weight must lie in [0, 1], got {weight}")
    rows: dict[str, list] = {}
    names = []
    for i, entry in enumerate(sets):
        group = entry if isinstance(entry, (list, set, frozenset)) else [entry]
        comps = [parse_component(c) for c in group]
        for c in comps:
            check_component(c, cfg, seq_len, n_features)
            rows.setdefault(c.kind, []).append((i, c.index))
        names.append(_name([(c, weight) for c in comps]) if comps else "clean")
    entries = {
        kind: (np.array([r[0] for r in rs], np.int64), np.array([r[1] for r in rs], np.int64),
               np.full(len(rs), weight, np.float32))
        for kind, rs in rows.items()
    }
    return MaskSet(cfg, entries, names, seq_len=seq_len, n_features=n_features)


def _grid(kind: str, index: np.ndarray, names: list[str], cfg, weight, **kw) -> MaskSet:
    n = len(index)
    entries = {kind: (np.arange(n), index.astype(np.int64), np.full(n, weight, np.float32))}
    return MaskSet(cfg, entries, names, **kw)


def _head_index(cfg: GPT2Config) -> np.ndarray:
    return np.array(list(itertools.product(range(cfg.n_layers), range(cfg.n_heads))))


def single_heads(cfg: GPT2Config, *, position: int | None = None, seq_len: int | None = None,
                 weight: float = 0.0) -> MaskSet:
    """One mask per head (layer-major). With `position` (and `seq_len`), each head is ablated
    only at that query position.

    Example:
        >>> single_heads(cfg).names[:3]
        ['0.0', '0.1', '0.2']
    """
    heads = _head_index(cfg)
    if position is None:
        names = [f"{layer}.{head}" for layer, head in heads]
        return _grid("heads", heads, names, cfg, weight)
    if seq_len is None or not -seq_len <= position < seq_len:
        raise InputError(f"single_heads: position {position} needs seq_len with "
                         f"-seq_len <= position < seq_len (seq_len={seq_len})")
    p = position % seq_len
    index = np.stack([heads[:, 0], np.full(len(heads), p), heads[:, 1]], axis=1)
    names = [f"{layer}.{head}@{p}" for layer, head in heads]
    return _grid("head_positions", index, names, cfg, weight, seq_len=seq_len)


def head_pairs(cfg: GPT2Config, heads: Sequence[Any] | None = None,
               weight: float = 0.0) -> MaskSet:
    """One mask per unordered pair of heads (i < j, lexicographic in layer-major order):
    n_heads_total * (n_heads_total - 1) / 2 masks, 10,296 for GPT-2 small.

    `heads` restricts the pairs to a subset (names or tuples), e.g. a study's top-k.

    Example:
        >>> head_pairs(cfg).names[:2]
        ['0.0+0.1', '0.0+0.2']
    """
    if heads is None:
        index = _head_index(cfg)
    else:
        comps = [parse_component(h) for h in heads]
        for c in comps:
            if c.kind != "heads":
                raise InputError(f"head_pairs takes heads, got {c.name!r}")
            check_component(c, cfg, None, None)
        index = np.array(sorted({c.index for c in comps}))
    if len(index) < 2:
        raise InputError("head_pairs needs at least two heads")
    i, j = np.triu_indices(len(index), k=1)
    n = len(i)
    mask_id = np.repeat(np.arange(n), 2)
    pair_index = np.stack([index[i], index[j]], axis=1).reshape(2 * n, 2)
    names = [f"{a[0]}.{a[1]}+{b[0]}.{b[1]}" for a, b in zip(index[i], index[j])]
    entries = {"heads": (mask_id, pair_index, np.full(2 * n, weight, np.float32))}
    return MaskSet(cfg, entries, names)


def single_mlps(cfg: GPT2Config, weight: float = 0.0) -> MaskSet:
    """One mask per MLP layer: names "mlp0" .. "mlp{L-1}"."""
    index = np.arange(cfg.n_layers)[:, None]
    return _grid("mlps", index, [f"mlp{i}" for i in range(cfg.n_layers)], cfg, weight)


def single_neurons(cfg: GPT2Config, layers: Sequence[int] | None = None,
                   neurons: Sequence[int] | None = None, weight: float = 0.0) -> MaskSet:
    """One mask per MLP neuron of `layers` (all by default), optionally only `neurons`.

    Example:
        >>> len(single_neurons(cfg, layers=[3]))                 # GPT-2 small
        3072
    """
    layers = list(range(cfg.n_layers)) if layers is None else list(layers)
    neurons = list(range(cfg.d_mlp)) if neurons is None else list(neurons)
    for layer in layers:
        check_component(Component("mlps", (layer,)), cfg, None, None)
    for neuron in neurons:
        check_component(Component("neurons", (0, neuron)), cfg, None, None)
    index = np.array(list(itertools.product(layers, neurons)))
    names = [f"n{layer}.{neuron}" for layer, neuron in index]
    return _grid("neurons", index, names, cfg, weight)


def positions(cfg: GPT2Config, seq_len: int, layers: Sequence[int] | None = None,
              weight: float = 0.0) -> MaskSet:
    """One mask per (layer, position) of the residual stream entering that layer.

    Example:
        >>> positions(cfg, seq_len=4, layers=[0]).names
        ['resid0@0', 'resid0@1', 'resid0@2', 'resid0@3']
    """
    layers = list(range(cfg.n_layers)) if layers is None else list(layers)
    for layer in layers:
        check_component(Component("positions", (layer, 0)), cfg, seq_len, None)
    index = np.array(list(itertools.product(layers, range(seq_len))))
    names = [f"resid{layer}@{pos}" for layer, pos in index]
    return _grid("positions", index, names, cfg, weight, seq_len=seq_len)


def _layer_positions(kind: str, prefix: str, cfg: GPT2Config, seq_len: int,
                     layers: Sequence[int] | None, weight: float) -> MaskSet:
    layers = list(range(cfg.n_layers)) if layers is None else list(layers)
    for layer in layers:
        check_component(Component(kind, (layer, 0)), cfg, seq_len, None)
    index = np.array(list(itertools.product(layers, range(seq_len)))).reshape(-1, 2)
    names = [f"{prefix}{layer}@{pos}" for layer, pos in index]
    return _grid(kind, index, names, cfg, weight, seq_len=seq_len)


def mid_positions(cfg: GPT2Config, seq_len: int, layers: Sequence[int] | None = None,
                  weight: float = 0.0) -> MaskSet:
    """One mask per (layer, position) of the stream after that layer's attention (TL
    `blocks.L.hook_resid_mid`), layer-major.

    Example:
        >>> mid_positions(cfg, seq_len=3, layers=[2]).names
        ['mid2@0', 'mid2@1', 'mid2@2']
    """
    return _layer_positions("mid_positions", "mid", cfg, seq_len, layers, weight)


def mlp_positions(cfg: GPT2Config, seq_len: int, layers: Sequence[int] | None = None,
                  weight: float = 0.0) -> MaskSet:
    """One mask per (layer, position) of an MLP's output (TL `blocks.L.hook_mlp_out[:, p]`),
    layer-major.

    Example:
        >>> mlp_positions(cfg, seq_len=2, layers=[0, 1]).names
        ['mlp0@0', 'mlp0@1', 'mlp1@0', 'mlp1@1']
    """
    return _layer_positions("mlp_positions", "mlp", cfg, seq_len, layers, weight)


def head_vectors(cfg: GPT2Config, which: str, seq_len: int, *, position: int | None = None,
                 weight: float = 0.0) -> MaskSet:
    """One mask per (layer, position, head) of a head's query, key or value vector
    (`which` = "q", "k" or "v"; TL `blocks.L.attn.hook_q/k/v[:, p, h]`), in TL's patching
    order [layer, pos, head]; with `position`, only that position.

    Example:
        >>> head_vectors(cfg, "k", seq_len=16).names[:2]         # 12 * 16 * 12 masks
        ['0.0.k@0', '0.1.k@0']
    """
    if which not in ("q", "k", "v"):
        raise InputError(f"head_vectors: which must be 'q', 'k' or 'v', got {which!r}")
    check_component(Component(f"{which}_positions", (0, 0, 0)), cfg, seq_len, None)
    if position is None:
        places = range(seq_len)
    elif not -seq_len <= position < seq_len:
        raise InputError(f"head_vectors: position {position} needs -seq_len <= position < "
                         f"seq_len (seq_len={seq_len})")
    else:
        places = [position % seq_len]
    index = np.array(list(itertools.product(range(cfg.n_layers), places, range(cfg.n_heads))))
    names = [f"{layer}.{head}.{which}@{p}" for layer, p, head in index]
    return _grid(f"{which}_positions", index, names, cfg, weight, seq_len=seq_len)


def single_features(cfg: GPT2Config, n_features: int,
                    features: Sequence[int] | None = None, weight: float = 0.0) -> MaskSet:
    """One mask per SAE feature (the model needs an attached SAE with `n_features`)."""
    features = list(range(n_features)) if features is None else list(features)
    for f in features:
        check_component(Component("sae_features", (f,)), cfg, None, n_features)
    index = np.array(features)[:, None]
    return _grid("sae_features", index, [f"sae{f}" for f in features], cfg, weight,
                 n_features=n_features)


def from_stacked(mask: Mask, cfg: GPT2Config, *, seq_len: int | None = None,
                 n_features: int | None = None) -> MaskSet:
    """A `MaskSet` from a dense stacked `Mask` (leading axis n), checked against the model."""
    check_mask(mask, cfg, seq_len if seq_len is not None else _seq_of(mask),
               stacked=True, n_features=n_features)
    if seq_len is None:
        seq_len = _seq_of(mask)
    kinds = mask.kinds()
    if not kinds:
        raise InputError("masks: a stacked Mask with no fields set describes no ablation")
    n = np.shape(getattr(mask, kinds[0]))[0]
    entries = {}
    for kind in kinds:
        dense = np.asarray(getattr(mask, kind), np.float32)
        touched = np.nonzero(dense != 1.0)
        entries[kind] = (touched[0].astype(np.int64),
                         np.stack(touched[1:], axis=1).astype(np.int64),
                         dense[touched])
    # Keep every kind the caller set, even one that no mask changes: same program shape.
    unnamed = MaskSet(cfg, entries, ["clean"] * n, seq_len=seq_len, n_features=n_features,
                      kinds=kinds)
    return MaskSet(cfg, entries, [_name(unnamed.components(i)) for i in range(n)],
                   seq_len=seq_len, n_features=n_features, kinds=kinds)


def _seq_of(mask: Mask) -> int | None:
    for kind in POSITION_KINDS:  # stacked: [n, layer, seq, ...]
        value = getattr(mask, kind)
        if value is not None and np.ndim(value) > 2:
            return int(np.shape(value)[2])
    return None


def concat(sets: Sequence[MaskSet]) -> MaskSet:
    """One MaskSet holding the masks of several (same model), in order, with every kind any
    of them has (so a set padded with clean masks keeps its program shape)."""
    if not sets:
        raise InputError("concat needs at least one MaskSet")
    first = sets[0]
    entries: dict[str, list] = {}
    names: list[str] = []
    offset = 0
    seq_len, n_features = first.seq_len, first.n_features
    for s in sets:
        if s.cfg != first.cfg:
            raise InputError("concat: mask sets were built for different models")
        if None not in (s.seq_len, seq_len) and s.seq_len != seq_len:
            raise InputError("concat: mask sets were built for different sequence lengths")
        seq_len = seq_len if s.seq_len is None else s.seq_len
        n_features = n_features if s.n_features is None else s.n_features
        for kind in s.kinds:
            mask_id, index, weight = s.entries_of(kind)
            entries.setdefault(kind, []).append((mask_id + offset, index, weight))
        names += s.names
        offset += len(s)
    merged = {k: tuple(np.concatenate(parts) for parts in zip(*v)) for k, v in entries.items()}
    return MaskSet(first.cfg, merged, names, seq_len=seq_len, n_features=n_features,
                   kinds=tuple(entries))
