"""The store wing: long sweeps committed chunk by chunk, resumed after any interruption.

    results.py  ResultsStore: atomic checksummed files and a manifest of what made them
    files.py    atomic writes and checked reads
    digest.py   fingerprints of a sweep's inputs
    front.py    `jaxablate.sweep`: the engine's sweep, with `store=` routed through a store

The store wraps the engine, never the reverse.
"""

from jaxablate.store.front import sweep
from jaxablate.store.results import ResultsStore, StoreMismatchError, StoreWarning

__all__ = ["ResultsStore", "StoreMismatchError", "StoreWarning", "sweep"]
