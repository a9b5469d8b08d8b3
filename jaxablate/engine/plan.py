"""What a sweep runs, decided on the host before anything compiles: the layer each mask
resumes at, the first row it recomputes, the parents that masks spanning several layers
share, and the chunk size.

    mask_set = as_mask_set(masks, model, seq_len)           # a MaskSet, checked
    plan = plan_sweep(model, mask_set, batch, seq, n_read, metric, chunk_size, budget, True)
    plan.own, plan.row_start, plan.blocks, plan.chunk_size  # what `sweeping.sweep` runs
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxablate.ablation.masks import MaskSet, from_stacked
from jaxablate.ablation.metrics import Metric
from jaxablate.engine.schedule import budget_bytes, default_chunk_size, plan_chunk_size
from jaxablate.errors import InputError, InputTypeError
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.mask import POSITION_KINDS, Mask

PARENT_BLOCK = 16  # parents' trajectories per compiled call, at most
# Row skipping: a mask whose first changed position is p leaves rows < p clean at every
# layer. Each recomputes the seq - p rows from p on, rounded up to a row count of a few
# fixed sizes, one compiled program per size present: the multiples of seq / ROW_GROUPS,
# and below the smallest of them the powers of two (a mask at the last position computes
# one row, not seq / ROW_GROUPS). Fewer sizes: fewer compilations, more rows recomputed.
ROW_GROUPS = 4


def as_mask_set(masks: Any, model: GPT2, seq_len: int) -> MaskSet:
    """Accept a MaskSet or a dense stacked Mask; check it against the model and prompts."""
    n_features = None if model.sae is None else model.sae.n_features
    if isinstance(masks, Mask):
        return from_stacked(masks, model.cfg, seq_len=seq_len, n_features=n_features)
    if not isinstance(masks, MaskSet):
        raise InputTypeError(f"masks: expected a MaskSet (jaxablate.masks.*) or a stacked Mask, "
                             f"got {type(masks).__name__}")
    if masks.cfg != model.cfg:
        raise InputError(f"masks were built for another model ({masks.cfg}) than this one "
                         f"({model.cfg}); build them from this model's config, e.g. "
                         "masks.single_heads(model.cfg)")
    if masks.seq_len is not None and masks.seq_len != seq_len:
        raise InputError(f"masks were built for sequence length {masks.seq_len}, the prompts "
                         f"have length {seq_len}")
    if "sae_features" in masks.kinds and n_features is None:
        raise InputError("masks ablate SAE features but the model has no SAE; attach one with "
                         "jaxablate.attach_sae")
    if "sae_features" in masks.kinds and masks.n_features != n_features:
        raise InputError(f"masks ablate {masks.n_features} SAE features, the model's SAE has "
                         f"{n_features}")
    return masks


def first_rows(mask_set: MaskSet, seq: int) -> np.ndarray:
    """For each mask, the first position it changes: an entry of a kind indexed by position
    changes that position on (causal attention), any other entry position 0; seq if the
    mask changes nothing.

    Example:
        >>> first_rows(single_heads(cfg, position=-1, seq_len=16), 16)[:3]     # [15 15 15]
    """
    rows = np.full(len(mask_set), seq, np.int64)
    for kind in mask_set.kinds:
        mask_id, index, weight = mask_set.entries_of(kind)
        touched = weight != 1.0
        row = index[:, 1] if kind in POSITION_KINDS else np.zeros(len(mask_id), np.int64)
        np.minimum.at(rows, mask_id[touched], row[touched])
    return rows


def row_counts(seq: int) -> np.ndarray:
    """The row counts a chunk may recompute, ascending: powers of two below seq /
    ROW_GROUPS, then its multiples up to seq (at most ROW_GROUPS + log2(seq / ROW_GROUPS)
    sizes, so at most that many compiled programs per sweep, whatever the masks).

    Example:
        >>> row_counts(16)                         # [ 1  2  4  8 12 16]
    """
    step = max(1, -(-seq // ROW_GROUPS))
    coarse = [min(seq, k * step) for k in range(1, ROW_GROUPS + 1)]
    fine = [1 << k for k in range(max(0, step - 1).bit_length()) if 1 << k < step]
    return np.unique(np.array(fine + coarse, np.int64))


def row_groups(rows: np.ndarray, seq: int) -> np.ndarray:
    """Each mask's row start: seq minus its rows from the first changed position on
    (seq - p), rounded up to one of `row_counts(seq)` (a few fixed shapes, so a few
    compilations). A mask that changes nothing (row seq) reads the clean logits from any
    program: it joins the most common row start of the others (0 if there are none), so
    it adds no program of its own.

    Example:
        >>> row_groups(np.array([15, 13, 9, 2, 16]), 16)   # [15 12  8  0  0]
    """
    counts = row_counts(seq)
    needed = np.maximum(seq - np.asarray(rows, np.int64), 1)
    starts = seq - counts[np.searchsorted(counts, needed)]
    clean = rows >= seq
    if clean.any():
        values, n_each = np.unique(starts[~clean], return_counts=True)
        starts[clean] = values[np.argmax(n_each)] if len(values) else 0
    return starts


def shared_parents(mask_set: MaskSet, first: np.ndarray, last: np.ndarray,
                   sae_layer: int | None) -> tuple[MaskSet | None, np.ndarray, np.ndarray]:
    """Shared prefixes of masks that touch several layers.

    A mask touching layers first < last leaves the stream entering `last` as its "parent"
    (the mask restricted to layers < last) leaves it: pairs (i, j) across layers share the
    parent {i}. A mask of the set that *is* a parent (the single head i, in a set of singles
    and pairs) is read off its parent's trajectory instead of run again ("served").
    Returns the parent MaskSet (None if reuse does not pay), per mask its parent's index or
    -1, and per mask whether it is served. first, last: int [N], each mask's first and last
    touched layer.

    Example:
        >>> parents, parent_of, served = shared_parents(pairs, *pairs.layer_span(), None)
        >>> len(parents), parent_of[:3]        # GPT-2 small's head pairs: 132 parents
    """
    n = len(mask_set)
    multi = first < last
    parent_of = np.full(n, -1, np.int64)
    served = np.zeros(n, bool)
    if not multi.any():
        return None, parent_of, served
    keys: list[list] = [[] for _ in range(n)]
    whole: list[list] = [[] for _ in range(n)]  # every changed entry (single-layer masks)
    for kind in mask_set.kinds:
        mask_id, index, weight = mask_set.entries_of(kind)
        layer = mask_set.entry_layers(kind, sae_layer)
        changed = weight != 1.0
        sel = multi[mask_id] & changed & (layer < last[mask_id])
        for m, idx, w in zip(mask_id[sel], index[sel], weight[sel]):
            keys[m].append((kind, tuple(int(v) for v in idx), float(w)))
        sel = ~multi[mask_id] & changed
        for m, idx, w in zip(mask_id[sel], index[sel], weight[sel]):
            whole[m].append((kind, tuple(int(v) for v in idx), float(w)))
    ids: dict[tuple, int] = {}
    for m in np.nonzero(multi)[0]:
        parent_of[m] = ids.setdefault(tuple(sorted(keys[m])), len(ids))
    # A parent run costs about what one child saves: worth it only when parents are shared.
    if multi.sum() < 2 * len(ids):
        return None, np.full(n, -1, np.int64), served
    for m in np.nonzero(~multi)[0]:
        p = ids.get(tuple(sorted(whole[m])), -1) if whole[m] else -1
        parent_of[m], served[m] = p, p >= 0
    rows = {k: [] for k in mask_set.kinds}
    for key, p in ids.items():
        for kind, idx, w in key:
            rows[kind].append((p, idx, w))
    entries = {}
    for kind in mask_set.kinds:
        ndim = mask_set.entries_of(kind)[1].shape[1]
        entries[kind] = (np.array([r[0] for r in rows[kind]], np.int64),
                         np.array([r[1] for r in rows[kind]], np.int64).reshape(-1, ndim),
                         np.array([r[2] for r in rows[kind]], np.float32))
    parents = MaskSet(mask_set.cfg, entries, [f"parent{p}" for p in range(len(ids))],
                      seq_len=mask_set.seq_len, n_features=mask_set.n_features,
                      kinds=mask_set.kinds)  # the children's program shape
    return parents, parent_of, served


@dataclasses.dataclass
class Plan:
    """What the sweep runs, decided on the host before anything compiles."""

    first: np.ndarray  # per mask, the first layer it touches (0 without prefix reuse)
    last: np.ndarray  # per mask, the last layer it touches
    parents: MaskSet | None  # shared prefixes of multi-layer masks
    parent_of: np.ndarray  # per mask, its parent's index or -1
    resume_at: np.ndarray  # per child, the layer it resumes at on its parent's stream:
    # its last touched layer, or n_layers for a served mask (the parent itself: the
    # parent's final stream, unembedded)
    own: np.ndarray  # masks without a parent, by row start, then first layer
    row_start: np.ndarray  # per mask, the first row its own chunk recomputes (0: all)
    blocks: list[tuple[np.ndarray, np.ndarray]]  # (parents, their children by last layer)
    block: int  # parents per trajectory call
    chunk_size: int


def plan_sweep(model: GPT2, mask_set: MaskSet, batch: int, seq: int, n_read: int,
               metric: Metric, chunk_size: Any, memory_budget: int | None,
               reuse_prefix: bool, share_parents: bool = True) -> Plan:
    """The plan of a sweep of `mask_set` over `batch` prompts of `seq` tokens whose metric
    reads `n_read` positions: each mask's start layer, the parents and their children, the
    chunk size (the given one, else the cheapest that fits `memory_budget`).
    share_parents=False: every mask resumes from the clean stream (per-mask replacement
    values: a parent's ablation would differ from child to child).

    Example:
        >>> plan = plan_sweep(model, masks.single_heads(cfg), 8, 16, 1, metric, None, None,
        ...                   True)
        >>> plan.chunk_size, plan.first[:3]                   # e.g. 12, [0 0 0]
    """
    n = len(mask_set)
    budget = budget_bytes(memory_budget)
    sae_layer = None if model.sae is None else model.sae.layer
    first, last = mask_set.layer_span(sae_layer)
    if not reuse_prefix:
        first[:] = 0
    parents, parent_of, served = (
        shared_parents(mask_set, first, last, sae_layer) if reuse_prefix and share_parents
        else (None, np.full(n, -1, np.int64), np.zeros(n, bool)))
    resume_at = np.where(served, model.cfg.n_layers, last)

    # The schedule, on the host. Masks without a parent, by row start (one program shape
    # each), then by first touched layer: each chunk resumes from the clean stream at its
    # earliest mask's layer (a chunk that straddles two layers recomputes a few clean layers
    # for some masks: same numbers up to rounding) and at its row start.
    row_start = (row_groups(first_rows(mask_set, seq), seq) if reuse_prefix
                 else np.zeros(n, np.int64))
    own = np.nonzero(parent_of < 0)[0]
    own = own[np.lexsort((first[own], row_start[own]))]
    # Masks with a parent: blocks of parents' trajectories run once each, then every child
    # resumes from its parent's stream at the child's last touched layer (a served mask,
    # the parent itself, at n_layers: its metric is read off the parent's final stream).
    blocks: list[tuple[np.ndarray, np.ndarray]] = []  # (parents, their children by layer)
    block = 1
    if parents is not None:
        p_first = parents.first_layers(sae_layer)
        # Streams entering and leaving attention, and z, per layer; x4 for the loop's copies.
        per_parent = 4 * 3 * batch * (model.cfg.n_layers + 1) * seq * model.cfg.d_model * 4
        # One fixed block shape (padded), whatever the number of parents: no recompilation.
        # Padding costs at most PARENT_BLOCK - 1 runs, small against the children (parents
        # are only used when shared by two children each or more).
        block = int(max(1, min(PARENT_BLOCK, budget // per_parent)))
        p_order = np.argsort(p_first, kind="stable")
        for begin in range(0, len(parents), block):
            p_idx = p_order[begin:begin + block]
            kids = np.nonzero(np.isin(parent_of, p_idx))[0]
            blocks.append((p_idx, kids[np.argsort(resume_at[kids], kind="stable")]))
    if chunk_size is None:
        max_chunk = default_chunk_size(model, batch, seq, n_read, n, memory_budget)
        groups = [first[own]] + [resume_at[kids] for _, kids in blocks]
        n_columns = len(metric.columns) if metric.columns else None
        chunk_size = plan_chunk_size(groups, model.cfg, batch * seq, n_read, seq, max_chunk,
                                     n_columns)
    chunk_size = min(int(chunk_size), n)
    return Plan(first, last, parents, parent_of, resume_at, own, row_start, blocks, block,
                chunk_size)


