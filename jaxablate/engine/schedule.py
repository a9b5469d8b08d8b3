"""How many masks go into one compiled call of the sweep: a small cost model.

The sweep runs masks in chunks of one fixed size (one compiled program). Masks are sorted by
the layer they resume at, and a chunk starts at its earliest mask's layer, so a chunk that
straddles layers recomputes some clean layers for its later masks. Big chunks straddle more;
small chunks pay a per-call overhead and run matmuls too small to be efficient. On GPT-2 small
with 8 x 16-token prompts the 144 single heads take 16.2 s in chunks of 73 (the largest the
memory budget allows) and 8.7 s in chunks of 12 (one layer's heads per chunk): the choice is
worth a factor of two, so it is made by counting rather than by the memory budget alone.

The memory side lives here too: the rough bytes of one (mask, example) forward, the budget a
chosen chunk must fit (1 GiB on CPU, a quarter of an accelerator's memory), and the up-front
refusal of an explicit chunk size that cannot fit in the device's memory at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxablate.errors import InputError
from jaxablate.model.config import GPT2Config
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.validation import check_int

# Below this many rows (masks x examples x positions) a chunk's matmuls run well under the
# machine's rate: a smaller chunk is charged as if it had this many.
MIN_EFFICIENT_ROWS = 1024
# Fixed cost of one call (dispatch, mask materialisation, host transfer), in row-layers.
CALL_OVERHEAD_ROW_LAYERS = 1024
DEFAULT_CPU_BUDGET = 1 << 30  # bytes of live activations per chunk on CPU


def layer_costs(cfg: GPT2Config, seq_len: int, n_read: int, n_columns: int | None = None
                ) -> np.ndarray:
    """Relative cost of each layer for one (mask, example), a full layer being 1: `[layer]`.

    The last layer computes keys and values at every position but queries, the MLP and the
    unembedding only at the `n_read` rows the metric reads, over `n_columns` token ids (the
    whole vocabulary when None).

    Example:
        >>> layer_costs(cfg, seq_len=16, n_read=1)[-1]    # GPT-2 small: about 0.56
    """
    d, mlp = cfg.d_model, cfg.d_mlp
    full = (4 * d * d + 2 * d * mlp) * seq_len
    vocab = cfg.d_vocab if n_columns is None else n_columns
    last = 2 * d * d * seq_len + (2 * d * d + 2 * d * mlp + d * vocab) * n_read
    costs = np.ones(cfg.n_layers)
    costs[-1] = last / full
    return costs


def chunk_cost(starts: np.ndarray, chunk: int, costs: np.ndarray, rows_per_mask: int) -> float:
    """Estimated cost (row-layers) of running masks resuming at sorted `starts` in chunks."""
    remaining = np.concatenate([np.cumsum(costs[::-1])[::-1], [0.0]])  # cost from layer l on
    firsts = starts[::chunk]  # each chunk resumes at its earliest (first, as sorted) mask
    rows = max(chunk * rows_per_mask, MIN_EFFICIENT_ROWS)
    return float(rows * remaining[firsts].sum() + CALL_OVERHEAD_ROW_LAYERS * len(firsts))


def plan_chunk_size(groups: Sequence[np.ndarray], cfg: GPT2Config, rows_per_mask: int,
                    n_read: int, seq_len: int, max_chunk: int, n_columns: int | None = None
                    ) -> int:
    """The chunk size in [1, max_chunk] of least estimated cost over every group of masks.

    groups: per group (masks resuming from one shared stream, chunked together), the layer
    each mask resumes at, sorted. rows_per_mask: batch * seq_len. n_read, n_columns: the
    rows and token ids the metric reads (see `layer_costs`).

    Example:
        >>> starts = np.repeat(np.arange(12), 12)            # the 144 single heads
        >>> plan_chunk_size([starts], cfg, 8 * 16, 1, 16, max_chunk=73)
        12
    """
    costs = layer_costs(cfg, seq_len, n_read, n_columns)
    groups = [np.asarray(g, np.int64) for g in groups if len(g)]
    if not groups:
        return 1
    best, best_cost = max_chunk, float("inf")
    # Every size up to 512 (beyond, the per-call overhead no longer matters), and the largest.
    for chunk in sorted(set(range(1, min(max_chunk, 512) + 1)) | {max_chunk}):
        total = sum(chunk_cost(g, chunk, costs, rows_per_mask) for g in groups)
        if total < best_cost * (1 - 1e-9):  # ties go to the smaller chunk (less memory)
            best, best_cost = chunk, total
    return best


# ---------------------------------------------------------------------------------------------
# Memory: the largest chunk that fits.


def bytes_per_example(model: GPT2, seq_len: int, n_read: int) -> int:
    """Rough live float32 bytes of one (mask, example) forward inside a layer."""
    c = model.cfg
    per_position = 12 * c.d_model + 3 * c.d_mlp + 3 * c.n_heads * seq_len
    return 4 * (seq_len * per_position + 3 * n_read * c.d_vocab)


def default_chunk_size(model: GPT2, batch: int, seq_len: int, n_read: int, n_masks: int,
                       memory_budget: int | None = None) -> int:
    """Masks per chunk so that chunk * batch forwards fit `memory_budget` bytes.

    The budget defaults to 1 GiB on CPU and a quarter of an accelerator's memory.
    """
    per_mask = batch * bytes_per_example(model, seq_len, n_read)
    return int(max(1, min(n_masks, budget_bytes(memory_budget) // per_mask)))


def accelerator_memory() -> int | None:
    """Bytes of memory of the default device when it is an accelerator (its allocator's
    limit), None on CPU."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def device_memory() -> int:
    """Bytes of memory of the default device: an accelerator's limit, else the host's RAM."""
    limit = accelerator_memory()
    if limit is not None:
        return limit
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not POSIX: no up-front check
        return 1 << 62


def _size(n: int | float) -> str:
    """Bytes in readable units: "1.5 GiB"."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return ""


def check_chunk_size(model: GPT2, batch: int, seq: int, n_read: int, chunk_size: Any,
                     memory_budget: int | None = None, what: str = "chunk_size") -> int:
    """An explicit chunk size as an int, refused up front when its activations cannot fit:
    more than `memory_budget` bytes when given, else more than the device's memory (an
    accelerator's limit, the host's RAM on CPU). `what` names the option in messages.

    Example:
        >>> check_chunk_size(model, 8, 16, 1, 10**6)     # GPT-2 small on a 16 GiB GPU
        ValueError: chunk_size 1000000 needs about 13.2 TiB of activations ...
    """
    chunk_size = check_int(chunk_size, what, 1)
    per_mask = batch * bytes_per_example(model, seq, n_read)
    limit = budget_bytes(memory_budget) if memory_budget is not None else device_memory()
    if int(chunk_size) * per_mask > limit:
        where = ("the memory budget" if memory_budget is not None
                 else f"the memory of this {jax.devices()[0].platform.upper()} device")
        raise InputError(
            f"{what} {int(chunk_size)} needs about {_size(int(chunk_size) * per_mask)} of "
            f"activations ({batch} prompts x {seq} tokens per mask), more than the "
            f"{_size(limit)} of {where}; pass {what} <= {max(1, limit // per_mask)}, or leave "
            "it out to have one chosen within the memory budget")
    return int(chunk_size)


def budget_bytes(memory_budget: int | None) -> int:
    """Bytes of live activations allowed: as given, else 1 GiB on CPU and a quarter of an
    accelerator's memory."""
    if memory_budget is not None:
        return check_int(memory_budget, "memory_budget (bytes)", 1)
    limit = accelerator_memory()
    return DEFAULT_CPU_BUDGET if limit is None else limit // 4
