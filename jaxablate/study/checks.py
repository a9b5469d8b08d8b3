"""The host-side checks of a `Study`'s arguments (run before anything compiles), and the
names they accept: STEPS (a study's steps; DEFAULT_STEPS run by default), ABLATIONS (ablation
types; DEFAULT_TYPES compared by default), STUDY_KINDS (study component kind -> the kind a
report row names), OA_OBJECTIVES (what optimal ablation minimises in a study) and
CIRCUIT_ABLATIONS (how the minimal circuit's complement is ablated).

    check_int(value, name, least) -> int           an int >= least (model.validation's)
    check_target(target) -> float                 a fraction in (0, 1]
    check_fractions(fractions) -> float64 [n]     sorted, unique, each in (0, 1]
    check_types(types) -> tuple[str, ...]         two or more distinct ablation types
    check_screening(method, steps, top_k, n)      the screening step's options
    check_kinds(components) -> tuple[str, ...]    distinct kinds of STUDY_KINDS (singular ok)
    check_study_inputs(model, task, ...)          the Study constructor's other arguments
    check_counterfactual(cf, tokens, cfg)         the patching step's source set, or None
    check_optimal(steps, lr, objective)           the optimal-ablation fit's settings
    check_circuit_ablation(value) -> str          "same" or "optimal"

Each raises ValueError naming the argument and the value given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxablate.ablation.metrics import Metric, check_metric
from jaxablate.errors import InputError, InputTypeError
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.validation import check_int, check_tokens
from jaxablate.tasks.base import Task

STEPS = ("baseline", "single", "screening", "cumulative", "circuit", "interactions",
         "ablation_comparison", "patching")
DEFAULT_STEPS = STEPS[:-1]  # patching needs a counterfactual source set
DEFAULT_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 11))
ABLATIONS = ("zero", "mean", "resample", "optimal")
# The comparison's default types. Optimal ablation is asked for (the command line does): its
# fit costs about oa_steps x 3 forward passes of the reference prompts per component, with the
# objective at every position over the whole vocabulary, more than the other steps together
# on a model with a big vocabulary.
DEFAULT_TYPES = ("zero", "mean", "resample")
OA_OBJECTIVES = ("kl_to_clean", "loss")  # prompt-only: no answers needed to fit the constants
CIRCUIT_ABLATIONS = ("same", "optimal")
STUDY_KINDS = {"heads": "head", "mlps": "mlp", "neurons": "neuron"}  # -> a report row's kind


def check_target(target: Any) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise InputError(f"target must be a fraction in (0, 1], got {target!r}")
    return float(target)


def check_fractions(fractions: Sequence[float]) -> np.ndarray:
    values = np.asarray(fractions, np.float64).reshape(-1)
    if not len(values) or not ((values > 0) & (values <= 1)).all():
        raise InputError(f"fractions must be non-empty and lie in (0, 1], got {fractions!r}")
    return np.unique(values)


def check_types(types: Sequence[str]) -> tuple[str, ...]:
    types = (types,) if isinstance(types, str) else tuple(types)
    bad = [t for t in types if t not in ABLATIONS]
    if bad or len(types) < 2 or len(set(types)) != len(types):
        raise InputError(f"types must be two or more distinct ablation types of {ABLATIONS}, "
                         f"got {types!r}")
    return types


def check_screening(method: Any, steps: Any, top_k: Any, n: int) -> None:
    if method not in ("grad", "ig"):
        raise InputError(f"screen_method must be 'grad' or 'ig', got {method!r}")
    check_int(steps, "screen_steps", 1)
    if top_k is not None:  # more than n verifies all n (as the command line does)
        check_int(top_k, "screen_top_k", 1)


def check_kinds(components: Any) -> tuple[str, ...]:
    given = (components,) if isinstance(components, str) else tuple(components)
    plural = {v: k for k, v in STUDY_KINDS.items()}
    kinds = tuple(plural.get(c, c) for c in given)
    bad = [c for c in kinds if c not in STUDY_KINDS]
    if bad or not kinds or len(set(kinds)) != len(kinds):
        raise InputError(f"components must be distinct kinds among {tuple(STUDY_KINDS)}, "
                         f"got {components!r}")
    if "mlps" in kinds and "neurons" in kinds:
        # An MLP's output is made of its neurons: "mlp0" and "n0.5" overlap, so a circuit or a
        # cumulative curve could count the same computation twice.
        raise InputError("components: 'mlps' and 'neurons' overlap (an MLP's output is its "
                         "neurons' sum); study them in two studies, e.g. heads,mlps and "
                         "heads,neurons")
    return kinds


def check_study_inputs(model: Any, task: Any, tokens: Any, metric: Any, progress: Any,
                       ablation: Any, components: Any, neuron_layers: Any, threshold: Any
                       ) -> tuple[Metric, tuple[str, ...], list[int] | None]:
    """The `Study` constructor's arguments that need no sweep: (the metric, the kinds
    studied, the neuron layers as ints). Raises InputError / InputTypeError naming the
    problem.

    Example:
        >>> check_study_inputs(model, task, None, None, None, "mean", "heads", None, None)
    """
    if not isinstance(model, GPT2):
        raise InputTypeError(f"model: expected a jaxablate GPT2 (load_gpt2), got "
                             f"{type(model).__name__}")
    if (task is None) == (tokens is None):
        raise InputError("give either a task or tokens (with metric=), not both or neither")
    if task is not None and not isinstance(task, Task):
        raise InputTypeError(f"task: expected a jaxablate.tasks.Task, got {type(task).__name__}")
    if task is None and metric is None:
        raise InputError("metric is required with tokens, e.g. "
                         "metric=jaxablate.metrics.logit_diff(correct, wrong)")
    metric = task.metric if metric is None else metric
    check_metric(metric)
    if progress is not None and not isinstance(progress, bool) and not callable(progress):
        raise InputTypeError(f"progress: expected True (progress bars), None or a function "
                             f"progress(step, done, total), got {type(progress).__name__} "
                             f"{progress!r}")
    if ablation not in ABLATIONS:
        raise InputError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    kinds = check_kinds(components)
    if neuron_layers is not None:
        if "neurons" not in kinds:
            raise InputError("neuron_layers is given but components has no 'neurons'")
        neuron_layers = [check_int(v, "neuron_layers entry", 0) for v in neuron_layers]
        if not neuron_layers or max(neuron_layers) >= model.cfg.n_layers:
            raise InputError(f"neuron_layers must be layers in [0, {model.cfg.n_layers}), "
                             f"got {neuron_layers!r}")
    if threshold is not None and (isinstance(threshold, bool) or
                                  not isinstance(threshold, (int, float)) or
                                  not threshold >= 0 or not math.isfinite(threshold)):
        raise InputError(f"threshold must be a finite number >= 0, got {threshold!r}")
    return metric, kinds, neuron_layers


def check_counterfactual(counterfactual: Any, tokens: np.ndarray, cfg: Any) -> np.ndarray | None:
    """The counterfactual prompts (int32 [batch, seq], paired with `tokens` by index: the
    patching step's source set) checked against the model, or None when there are none.
    InputError when they do not pair up with the prompts.

    Example:
        >>> check_counterfactual(task.counterfactual, task.tokens, model.cfg).shape  # (64, 32)
    """
    if counterfactual is None:
        return None
    try:
        counterfactual = check_tokens(counterfactual, cfg)
    except InputError as error:
        raise InputError(f"counterfactual: {str(error).removeprefix('tokens: ')}") from None
    if counterfactual.shape != tokens.shape:
        raise InputError(f"counterfactual: expected [batch, seq] = {list(tokens.shape)} like "
                         f"the prompts, got {list(counterfactual.shape)}; patching pairs prompt "
                         "i with counterfactual i, position by position")
    return counterfactual


def check_optimal(steps: Any, learning_rate: Any, objective: Any) -> tuple[int, float, str]:
    """The optimal-ablation settings of a `Study` (`oa_steps`, `oa_lr`, `oa_objective`) as
    (int >= 1, finite float > 0, one of OA_OBJECTIVES); InputError naming the bad one.

    Example:
        >>> check_optimal(100, 0.01, "kl_to_clean")
        (100, 0.01, 'kl_to_clean')
    """
    steps = check_int(steps, "oa_steps", 1)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or \
            not math.isfinite(learning_rate) or learning_rate <= 0:
        raise InputError(f"oa_lr must be a finite number > 0 (Adam's learning rate), got "
                         f"{learning_rate!r}")
    if not isinstance(objective, str) or objective not in OA_OBJECTIVES:
        raise InputError(f"oa_objective must be one of {OA_OBJECTIVES} (a study fits the "
                         f"constants on its reference prompts alone), got {objective!r}")
    return steps, float(learning_rate), objective


def check_circuit_ablation(value: Any) -> str:
    """How the minimal circuit's complement is ablated: "same" (the study's ablation) or
    "optimal" (jointly optimised constants as well); InputError otherwise.

    Example:
        >>> check_circuit_ablation("optimal")
        'optimal'
    """
    if not isinstance(value, str) or value not in CIRCUIT_ABLATIONS:
        raise InputError(f"circuit_ablation must be one of {CIRCUIT_ABLATIONS}, got {value!r}")
    return value
