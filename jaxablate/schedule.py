"""How many masks go into one compiled call of the sweep: a small cost model.

The sweep runs masks in chunks of one fixed size (one compiled program). Masks are sorted by
the layer they resume at, and a chunk starts at its earliest mask's layer, so a chunk that
straddles layers recomputes some clean layers for its later masks. Big chunks straddle more;
small chunks pay a per-call overhead and run matmuls too small to be efficient. On GPT-2 small
with 8 x 16-token prompts the 144 single heads take 16.2 s in chunks of 73 (the largest the
memory budget allows) and 8.7 s in chunks of 12 (one layer's heads per chunk): the choice is
worth a factor of two, so it is made by counting rather than by the memory budget alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxablate.config import GPT2Config

# Below this many rows (masks x examples x positions) a chunk's matmuls run well under the
# machine's rate: a smaller chunk is charged as if it had this many.
MIN_EFFICIENT_ROWS = 1024
# Fixed cost of one call (dispatch, mask materialisation, host transfer), in row-layers.
CALL_OVERHEAD_ROW_LAYERS = 1024


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
