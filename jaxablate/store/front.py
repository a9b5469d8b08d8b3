"""`jaxablate.sweep`: the engine's sweep, or, with `store=`, the same sweep committed to a
results store chunk by chunk (and resumed from it). It lives above both, so that the engine
never imports the store.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Float

from jaxablate.engine import sweeping
from jaxablate.engine.bars import sweep_progress
from jaxablate.model.gpt2 import GPT2
from jaxablate.store.results import ResultsStore


def sweep(model: GPT2, tokens: Any, masks: Any, replacement: Any, metric: Any,
          chunk_size: Any = None, *, progress: Any = None, reuse_prefix: bool = True,
          memory_budget: int | None = None, store: Any = None, devices: Any = None,
          mesh: Any = None) -> Float[np.ndarray, "*draws n batch"]:
    """The metric under each of N ablations, per example: numpy float32 `[N, batch]`
    (`[D, N, batch]` for a list of D replacements, e.g. resample draws).

    Arguments as `jaxablate.engine.sweep` (tokens int [batch, seq], masks a MaskSet or a
    stacked Mask, replacement, metric, chunk_size, progress (True: a tqdm bar on stderr; or
    a function progress(done, total) called after every chunk), reuse_prefix,
    memory_budget, devices / mesh), plus store: a folder (or a `ResultsStore`) where results
    are committed chunk by chunk; the same call again resumes, computing only the missing
    chunks, and a store made by other inputs is refused (`jaxablate.store.results`).

    Example:
        >>> out = sweep(model, tokens, masks.head_pairs(cfg), repl, metric, store="runs/pairs")
        >>> out.shape                                       # (10296, batch)
    """
    progress = sweep_progress(progress)  # True: one bar on stderr
    if store is None:
        return sweeping.sweep(model, tokens, masks, replacement, metric, chunk_size,
                              progress=progress, reuse_prefix=reuse_prefix,
                              memory_budget=memory_budget, devices=devices, mesh=mesh)
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    return store.sweep(model, tokens, masks, replacement, metric, chunk_size,
                       progress=progress, reuse_prefix=reuse_prefix,
                       memory_budget=memory_budget, devices=devices, mesh=mesh)
