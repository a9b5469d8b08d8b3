"""The result of `Study.run()`: `StudyResult`, one JSON-able section per step of the study;
the one JSON form of every number (`jsonable`) and the check every reader of a result's dict
form applies (`as_result_dict`, used by `jaxablate.report`).

    result = Study(model, task).run()
    result.to_dict()      # {"meta", "baseline", "single", "screening", ..., "ablation_comparison"}
                          # "patching" when that optional step ran, "optimal" when optimal
                          # ablation did (`jaxablate.study.optimal`)
    print(result.table(10))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxablate.errors import InputError, InputTypeError


@dataclasses.dataclass(frozen=True)
class StudyResult:
    """Every step of a `Study.run()`, each a JSON-able section (None where skipped).
    `patching`, a step off by default, and `optimal`, the optimal-ablation fit (present when
    optimal ablation ran: the study's ablation or a type of the comparison), are left out of
    `to_dict()` when None, so results without them keep their keys."""

    meta: dict[str, Any]
    baseline: dict[str, Any]
    single: list[dict[str, Any]]
    screening: dict[str, Any] | None = None
    cumulative: dict[str, Any] | None = None
    circuit: dict[str, Any] | None = None
    interactions: dict[str, Any] | None = None
    ablation_comparison: dict[str, Any] | None = None
    patching: dict[str, Any] | None = None
    optimal: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The whole result as plain JSON types (`json.dumps(..., allow_nan=False)` works)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("patching", "optimal") or getattr(self, f.name) is not None}

    def table(self, k: int = 10) -> str:
        """The k largest effects as a ranked text table: rank, component, effect ± s.e.,
        95% CI, flags."""
        m, b = self.meta, self.baseline
        lines = [f"{m['ablation']} ablation, {m['metric']} (effect > 0: the component helps); "
                 f"baseline {b['mean']:.4f} ± {b['sem']:.4f} over {m['n_prompts']} prompts; "
                 f"critical above {m['threshold']:.4g}",
                 f"{'rank':>4}  {'component':<12} {'effect ± s.e.':>21}  {'95% CI':^21}  flags"]
        for r in sorted(self.single, key=lambda r: r["rank"])[:k]:
            flags = [f for f, key in (("critical", "critical"), ("negative", "negative"),
                                      ("no effect", "no_effect")) if r[key]]
            lines.append(f"{r['rank']:>4}  {r['component']:<12} {r['effect']:+10.4f} ± "
                         f"{r['sem']:<8.4f}  [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]  "
                         f"{', '.join(flags)}")
        return "\n".join(lines)


def as_result_dict(result: Any) -> dict[str, Any]:
    """`result` (a StudyResult or its dict) as a dict, refused unless it has the sections
    every reader needs ("meta", "baseline", "single")."""
    if hasattr(result, "to_dict"):
        result = result.to_dict()
    if not isinstance(result, Mapping):
        raise InputTypeError(f"expected a study result dict (StudyResult.to_dict()), got "
                             f"{type(result).__name__}")
    missing = [k for k in ("meta", "baseline", "single") if k not in result]
    if missing:
        raise InputError(f"the study result has no {', '.join(missing)} section; expected the "
                         "dict of StudyResult.to_dict()")
    return dict(result)


def jsonable(value: Any) -> Any:
    """`value` as strict JSON types: numpy scalars and arrays, tuples and lists become Python
    lists and numbers, mapping keys strings, and non-finite floats None (JSON has no NaN).

    Example:
        >>> jsonable({"a": np.array([1.0, np.nan]), "b": np.int64(3)})
        {'a': [1.0, None], 'b': 3}
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
