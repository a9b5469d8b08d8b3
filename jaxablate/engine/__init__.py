"""The engine wing: thousands of ablations as one compiled, vectorised program.

    sweeping.py  sweep (N masks x a batch of prompts), clean_metric, planned_chunk_size
    plan.py      what a sweep runs, decided on the host: start layers, shared parents, chunks
    resume.py    resuming the forward from a cached stream (prefix reuse), trajectories
    schedule.py  the chunk-size cost model and the memory budget
    sharding.py  the mask axis split over devices

`jaxablate.sweep` (the public front, in `jaxablate.store.front`) adds `store=` on top.
"""

from jaxablate.engine.sweeping import (
                                       NonFiniteMetricError,
                                       check_sweep,
                                       clean_metric,
                                       planned_chunk_size,
                                       sweep,
)

__all__ = ["NonFiniteMetricError", "check_sweep", "clean_metric", "planned_chunk_size", "sweep"]
