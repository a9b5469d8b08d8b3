"""The optimal-ablation wing: each component replaced by the constant that does least damage.

    search.py     `optimal_replacement` (Adam on every mask's constants at once) and its
                  record, `OptimalAblation`
    objective.py  the damage minimised (KL to clean, loss, or a metric) and its value and
                  gradient for a chunk of masks

Example:
    >>> r, record = jaxablate.optimal_replacement(model, tokens, masks.single_heads(cfg))
    >>> record.delta_held_out                       # Delta_OA per head, on held-out prompts
"""

from jaxablate.optimal.objective import OBJECTIVES, resolve_objective
from jaxablate.optimal.search import OptimalAblation, optimal_replacement

__all__ = ["OBJECTIVES", "OptimalAblation", "optimal_replacement", "resolve_objective"]
