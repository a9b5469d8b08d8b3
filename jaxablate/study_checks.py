"""The host-side checks of a `Study`'s arguments (run before anything compiles), and the
names they accept: ABLATIONS (ablation types) and KINDS (study component kind -> the kind a
report row names).

    _check_int(value, name, least) -> int          an int >= least (bools refused)
    _check_target(target) -> float                 a fraction in (0, 1]
    _check_fractions(fractions) -> float64 [n]     sorted, unique, each in (0, 1]
    _check_types(types) -> tuple[str, ...]         two or more distinct ablation types
    _check_screening(method, steps, top_k, n)      the screening step's options
    _check_kinds(components) -> tuple[str, ...]    distinct kinds of KINDS (singular accepted)

Each raises ValueError naming the argument and the value given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxablate.errors import InputError

ABLATIONS = ("zero", "mean", "resample")
KINDS = {"heads": "head", "mlps": "mlp", "neurons": "neuron"}  # study kind -> report kind


def _check_int(value: Any, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise InputError(f"{name} must be an int >= {least}, got {value!r}")
    return int(value)


def _check_target(target: Any) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise InputError(f"target must be a fraction in (0, 1], got {target!r}")
    return float(target)


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    values = np.asarray(fractions, np.float64).reshape(-1)
    if not len(values) or not ((values > 0) & (values <= 1)).all():
        raise InputError(f"fractions must be non-empty and lie in (0, 1], got {fractions!r}")
    return np.unique(values)


def _check_types(types: Sequence[str]) -> tuple[str, ...]:
    types = (types,) if isinstance(types, str) else tuple(types)
    bad = [t for t in types if t not in ABLATIONS]
    if bad or len(types) < 2 or len(set(types)) != len(types):
        raise InputError(f"types must be two or more distinct ablation types of {ABLATIONS}, "
                         f"got {types!r}")
    return types


def _check_screening(method: Any, steps: Any, top_k: Any, n: int) -> None:
    if method not in ("grad", "ig"):
        raise InputError(f"screen_method must be 'grad' or 'ig', got {method!r}")
    _check_int(steps, "screen_steps", 1)
    if top_k is not None:  # more than n verifies all n (as the command line does)
        _check_int(top_k, "screen_top_k", 1)


def _check_kinds(components: Any) -> tuple[str, ...]:
    given = (components,) if isinstance(components, str) else tuple(components)
    plural = {v: k for k, v in KINDS.items()}
    kinds = tuple(plural.get(c, c) for c in given)
    bad = [c for c in kinds if c not in KINDS]
    if bad or not kinds or len(set(kinds)) != len(kinds):
        raise InputError(f"components must be distinct kinds among {tuple(KINDS)}, "
                         f"got {components!r}")
    if "mlps" in kinds and "neurons" in kinds:
        # An MLP's output is made of its neurons: "mlp0" and "n0.5" overlap, so a circuit or a
        # cumulative curve could count the same computation twice.
        raise InputError("components: 'mlps' and 'neurons' overlap (an MLP's output is its "
                         "neurons' sum); study them in two studies, e.g. heads,mlps and "
                         "heads,neurons")
    return kinds
