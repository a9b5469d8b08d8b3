"""The optimal-ablation wing: each component replaced by the constant that does least damage.

    search.py     `optimal_replacement` (Adam on every mask's constants at once) and its
                  record, `OptimalAblation`
    singles.py    `shared_from_singles`: single components' constants in one shared
                  replacement (each component at its own optimum, in any set)
    objective.py  the damage minimised (KL to clean, loss, or a metric) and its value and
                  gradient for a chunk of masks

Example:
    >>> r, record = jaxablate.optimal_replacement(model, tokens, masks.single_heads(cfg))
    >>> record.delta_held_out                       # Delta_OA per head, on held-out prompts
"""

from jaxablate.optimal.objective import OBJECTIVES, resolve_objective
from jaxablate.optimal.search import OptimalAblation, optimal_replacement
from jaxablate.optimal.singles import shared_from_singles

__all__ = ["OBJECTIVES", "OptimalAblation", "optimal_replacement", "resolve_objective",
           "shared_from_singles"]
