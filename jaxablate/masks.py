"""Stacked mask sets: N ablations described sparsely, materialised one chunk at a time.

A `MaskSet` lists, for each of its N masks, the components it touches and their keep-weights
(everything else keeps weight 1). A sweep materialises only the chunk it is about to run as a
dense stacked `Mask` `[chunk, ...]`, so a set of 36,864 single-neuron masks costs megabytes,
not the 5 GB a dense `[N, layer, neuron]` array would.

Enumeration is layer-major (head 0.0, 0.1, ..., 0.H-1, 1.0, ...); `head_pairs` lists pairs
(i, j), i < j, in lexicographic order of that enumeration.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxablate.components import Component, check_component, parse_component
from jaxablate.config import GPT2Config
from jaxablate.errors import InputError
from jaxablate.mask import KINDS, Mask, kind_shapes
from jaxablate.validation import check_mask


class MaskSet:
    """N masks over one model (and one sequence length where positions are involved).

    Attributes: cfg, seq_len (None unless a kind needs it), n_features (SAE), kinds (the
    Mask fields every materialised chunk has), names (one readable name per mask).

    Example:
        >>> pairs = head_pairs(model.cfg)
        >>> len(pairs), pairs.names[0]
        (10296, '0.0+0.1')
        >>> chunk = pairs.materialize(np.arange(8))            # Mask, heads [8, 12, 12]
    """

    def __init__(
        self,
        cfg: GPT2Config,
        entries: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
        names: list[str],
        *,
        seq_len: int | None = None,
        n_features: int | None = None,
    ):
        # entries[kind] = (mask_id [E], index [E, ndim], keep-weight [E])
        self.cfg, self.seq_len, self.n_features = cfg, seq_len, n_features
        for kind, (_, _, weight) in entries.items():
            bad = ~((weight >= 0.0) & (weight <= 1.0))  # NaN fails both comparisons
            if bad.any():
                raise InputError(f"keep-weight must lie in [0, 1], got {weight[bad][0]} "
                                 f"({kind})")
        self.entries = entries
        self.kinds = tuple(k for k in KINDS if k in entries)
        self.names = list(names)
        if not self.names:
            raise InputError("masks: the mask set is empty; give at least one mask")
        for kind, (mask_id, index, _) in entries.items():
            # A component listed twice in one mask would keep only one of its keep-weights.
            keys = np.column_stack([mask_id, index])
            unique, counts = np.unique(keys, axis=0, return_counts=True)
            if len(unique) < len(keys):
                row = unique[np.argmax(counts > 1)]
                name = Component(kind, tuple(int(v) for v in row[1:])).name
                raise InputError(f"masks: mask {int(row[0])} ({self.names[int(row[0])]!r}) "
                                 f"lists component {name!r} twice; list each component of "
                                 "a mask once")

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"MaskSet(n={len(self)}, kinds={self.kinds}, first={self.names[:3]})"

    def materialize(self, idx: Sequence[int] | np.ndarray) -> Mask:
        """Dense stacked `Mask` for masks `idx` (float32, leading axis len(idx))."""
        idx = np.asarray(idx, np.int64)
        where = np.full(len(self), -1, np.int64)
        where[idx] = np.arange(len(idx))
        shapes = kind_shapes(self.cfg, seq_len=self.seq_len, n_features=self.n_features)
        fields = {}
        for kind in self.kinds:
            mask_id, index, weight = self.entries[kind]
            dense = np.ones((len(idx),) + shapes[kind], np.float32)
            rows = where[mask_id]
            keep = rows >= 0
            dense[(rows[keep],) + tuple(index[keep].T)] = weight[keep]
            fields[kind] = jnp.asarray(dense)
        return Mask(**fields)

    def subset(self, idx: Sequence[int]) -> "MaskSet":
        """The masks `idx` (in that order) as a new MaskSet with the same kinds.

        Example:
            >>> head_pairs(cfg).subset(range(0, 10296, 100)).names[:2]
            ['0.0+0.1', '0.0+1.1']
        """
        idx = np.asarray(idx, np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise InputError(f"subset: index out of range for {len(self)} masks")
        idx = idx % len(self)
        where = np.full(len(self), -1, np.int64)
        where[idx] = np.arange(len(idx))
        if len(np.unique(idx)) != len(idx):
            raise InputError("subset: indices must be distinct")
        entries = {}
        for kind, (mask_id, index, weight) in self.entries.items():
            rows = where[mask_id]
            keep = rows >= 0
            entries[kind] = (rows[keep], index[keep], weight[keep])
        out = MaskSet(self.cfg, entries, [self.names[i] for i in idx], seq_len=self.seq_len,
                      n_features=self.n_features)
        out.kinds = self.kinds
        return out

    def mask(self, i: int) -> Mask:
        """Mask i, unstacked (for `jaxablate.forward`)."""
        stacked = self.materialize([i])
        return Mask(**{k: getattr(stacked, k)[0] for k in self.kinds})

    def entry_layers(self, kind: str, sae_layer: int | None = None) -> np.ndarray:
        """The layer each entry of `kind` acts on (the SAE's layer for SAE features)."""
        mask_id, index, _ = self.entries[kind]
        if kind == "sae_features":
            return np.full(len(mask_id), -1 if sae_layer is None else sae_layer, np.int64)
        return index[:, 0]

    def layer_span(self, sae_layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """For each mask, the first and the last layer it changes (n_layers, -1 if none)."""
        first = np.full(len(self), self.cfg.n_layers, np.int64)
        last = np.full(len(self), -1, np.int64)
        for kind in self.kinds:
            mask_id, _, weight = self.entries[kind]
            touched = weight != 1.0
            layer = self.entry_layers(kind, sae_layer)[touched]
            np.minimum.at(first, mask_id[touched], layer)
            np.maximum.at(last, mask_id[touched], layer)
        return first, last

    def first_layers(self, sae_layer: int | None = None) -> np.ndarray:
        """For each mask, the first layer whose computation it changes (n_layers if none)."""
        return self.layer_span(sae_layer)[0]

    def components(self, i: int) -> list[tuple[Component, float]]:
        """The components mask i touches, with their keep-weights."""
        out = []
        for kind in self.kinds:
            mask_id, index, weight = self.entries[kind]
            for row in np.nonzero(mask_id == i)[0]:
                out.append((Component(kind, tuple(int(v) for v in index[row])),
                            float(weight[row])))
        return out


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
    out = MaskSet(cfg, entries, ["clean"] * n, seq_len=seq_len, n_features=n_features)
    # Keep every kind the caller set, even one that no mask changes: same program shape.
    out.kinds = kinds
    out.names = [_name(out.components(i)) for i in range(n)]
    return out


def _seq_of(mask: Mask) -> int | None:
    for kind, axis in (("head_positions", 2), ("positions", 2)):
        value = getattr(mask, kind)
        if value is not None and np.ndim(value) > axis:
            return int(np.shape(value)[axis])
    return None


def concat(sets: Sequence[MaskSet]) -> MaskSet:
    """One MaskSet holding the masks of several (same model), in order."""
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
        for kind, (mask_id, index, weight) in s.entries.items():
            entries.setdefault(kind, []).append((mask_id + offset, index, weight))
        names += s.names
        offset += len(s)
    merged = {k: tuple(np.concatenate(parts) for parts in zip(*v)) for k, v in entries.items()}
    return MaskSet(first.cfg, merged, names, seq_len=seq_len, n_features=n_features)
