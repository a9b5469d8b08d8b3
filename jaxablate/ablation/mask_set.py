"""`MaskSet`: N ablations described sparsely, materialised one chunk at a time.

A `MaskSet` lists, for each of its N masks, the components it touches and their keep-weights
(everything else keeps weight 1). A sweep materialises only the chunk it is about to run as a
dense stacked `Mask` `[chunk, ...]`, so a set of 36,864 single-neuron masks costs megabytes,
not the 5 GB a dense `[N, layer, neuron]` array would. Its entries are read-only; the
constructors (`single_heads`, `head_pairs`, ...) are `jaxablate.ablation.masks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jaxablate.ablation.components import Component
from jaxablate.errors import InputError
from jaxablate.model.config import GPT2Config
from jaxablate.model.mask import MASK_KINDS, Mask, kind_shapes


def _frozen(array: np.ndarray) -> np.ndarray:
    """A read-only copy: a MaskSet's entries are never changed from outside."""
    array = np.array(array)
    array.flags.writeable = False
    return array


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
        kinds: Sequence[str] | None = None,
    ):
        # entries[kind] = (mask_id [E], index [E, ndim], keep-weight [E]); `kinds` adds kinds
        # no mask changes (materialised as ones), so that two sets share a program shape.
        self.cfg, self.seq_len, self.n_features = cfg, seq_len, n_features
        for kind, (_, _, weight) in entries.items():
            bad = ~((weight >= 0.0) & (weight <= 1.0))  # NaN fails both comparisons
            if bad.any():
                raise InputError(f"keep-weight must lie in [0, 1], got {weight[bad][0]} "
                                 f"({kind})")
        wanted = set(entries) | set(kinds or ())
        unknown = sorted(wanted - set(MASK_KINDS))
        if unknown:
            raise InputError(f"unknown mask kinds {unknown}; known kinds are {list(MASK_KINDS)}")
        self._entries = {k: tuple(_frozen(a) for a in v) for k, v in entries.items()}
        self._kinds = tuple(k for k in MASK_KINDS if k in wanted)
        self.names = list(names)
        if not self.names:
            raise InputError("masks: the mask set is empty; give at least one mask")
        for kind, (mask_id, index, _) in self._entries.items():
            # A component listed twice in one mask would keep only one of its keep-weights.
            keys = np.column_stack([mask_id, index])
            unique, counts = np.unique(keys, axis=0, return_counts=True)
            if len(unique) < len(keys):
                row = unique[np.argmax(counts > 1)]
                name = Component(kind, tuple(int(v) for v in row[1:])).name
                raise InputError(f"masks: mask {int(row[0])} ({self.names[int(row[0])]!r}) "
                                 f"lists component {name!r} twice; list each component of "
                                 "a mask once")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The Mask fields every materialised chunk has, in canonical order."""
        return self._kinds

    def entries_of(self, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The entries of one kind (read-only arrays): mask_id int [E], index int [E, ndim]
        (the per-mask array's index, e.g. (layer, head)), keep-weight float32 [E]. A kind in
        `kinds` that no mask changes has no entries.

        Example:
            >>> mask_id, index, weight = head_pairs(cfg).entries_of("heads")   # E = 2 N
        """
        if kind not in self._kinds:
            raise InputError(f"this mask set has no {kind!r} kind; its kinds are {self._kinds}")
        ndim = len(kind_shapes(self.cfg, seq_len=self.seq_len, n_features=self.n_features)[kind])
        empty = (np.zeros(0, np.int64), np.zeros((0, ndim), np.int64), np.zeros(0, np.float32))
        return self._entries.get(kind, tuple(_frozen(a) for a in empty))

    def with_kinds(self, kinds: Sequence[str]) -> "MaskSet":
        """The same masks, materialised with (at least) these kinds: one program shape for
        two sets, e.g. a set padded with clean masks keeps the kinds of the set it pads."""
        return MaskSet(self.cfg, self._entries, self.names, seq_len=self.seq_len,
                       n_features=self.n_features, kinds=tuple(self._kinds) + tuple(kinds))

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"MaskSet(n={len(self)}, kinds={self.kinds}, first={self.names[:3]})"

    def materialize(self, idx: Sequence[int] | np.ndarray, size: int | None = None) -> Mask:
        """Dense stacked `Mask` for masks `idx` (float32, leading axis len(idx)), padded
        with keep-all masks to `size` when given (on the host: a sweep's last, partial
        chunk then compiles nothing of its own)."""
        idx = np.asarray(idx, np.int64)
        where = np.full(len(self), -1, np.int64)
        where[idx] = np.arange(len(idx))
        shapes = kind_shapes(self.cfg, seq_len=self.seq_len, n_features=self.n_features)
        fields = {}
        for kind in self.kinds:
            mask_id, index, weight = self.entries_of(kind)
            dense = np.ones((max(len(idx), size or 0),) + shapes[kind], np.float32)
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
        for kind, (mask_id, index, weight) in self._entries.items():
            rows = where[mask_id]
            keep = rows >= 0
            entries[kind] = (rows[keep], index[keep], weight[keep])
        return MaskSet(self.cfg, entries, [self.names[i] for i in idx], seq_len=self.seq_len,
                       n_features=self.n_features, kinds=self.kinds)

    def mask(self, i: int) -> Mask:
        """Mask i, unstacked (for `jaxablate.forward`)."""
        stacked = self.materialize([i])
        return Mask(**{k: getattr(stacked, k)[0] for k in self.kinds})

    def entry_layers(self, kind: str, sae_layer: int | None = None) -> np.ndarray:
        """The layer each entry of `kind` acts on (the SAE's layer for SAE features)."""
        mask_id, index, _ = self.entries_of(kind)
        if kind == "sae_features":
            return np.full(len(mask_id), -1 if sae_layer is None else sae_layer, np.int64)
        return index[:, 0]

    def layer_span(self, sae_layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """For each mask, the first and the last layer it changes (n_layers, -1 if none)."""
        first = np.full(len(self), self.cfg.n_layers, np.int64)
        last = np.full(len(self), -1, np.int64)
        for kind in self.kinds:
            mask_id, _, weight = self.entries_of(kind)
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
            mask_id, index, weight = self.entries_of(kind)
            for row in np.nonzero(mask_id == i)[0]:
                out.append((Component(kind, tuple(int(v) for v in index[row])),
                            float(weight[row])))
        return out
