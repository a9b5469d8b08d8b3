"""jaxablate: fast, correct, vectorised ablation studies on GPT-2-family models in JAX.

Example:
    >>> import jaxablate as ja
    >>> model = ja.load_gpt2("gpt2")
    >>> logits = ja.forward(model, tokens)                          # [batch, seq, vocab]
    >>> out = ja.sweep(model, tokens, ja.masks.single_heads(model.cfg),
    ...                ja.zero_replacement(model), ja.metrics.logit_diff(io, s))  # [144, batch]

The package root only re-exports; the code lives in one wing per concept, dependencies
flowing one way (docs/architecture.md): model -> ablation -> engine -> store / screening ->
study -> report -> cli.
"""

from jaxablate import patching, report, tasks
from jaxablate.ablation import masks, metrics
from jaxablate.ablation.components import Component, parse_component
from jaxablate.ablation.frames import by_layer_head, to_frame
from jaxablate.ablation.masks import MaskSet
from jaxablate.ablation.replacements import (mean_replacement, patch_replacement,
                                             resample_replacement, zero_replacement)
from jaxablate.engine.sweeping import NonFiniteMetricError, clean_metric, planned_chunk_size
from jaxablate.errors import InputError, InputTypeError
from jaxablate.model.batched import Cache, attach_sae, forward, run_with_cache
from jaxablate.model.config import GPT2Config
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.loading import load_gpt2
from jaxablate.model.mask import Mask
from jaxablate.model.replacement import Replacement
from jaxablate.model.sae import SAE
from jaxablate.model.saving import save_gpt2
from jaxablate.model.tokenizer import load_tokenizer, to_tokens
from jaxablate.optimal.search import OptimalAblation, optimal_replacement
from jaxablate.patching.paths import path_patch
from jaxablate.report import figures as plot
from jaxablate.screening.attribution import Attribution, attribute
from jaxablate.screening.patterns import AttentionScores, attention_scores
from jaxablate.store.front import sweep
from jaxablate.store.results import ResultsStore, StoreMismatchError
from jaxablate.study.protocol import Study
from jaxablate.study.result import StudyResult
from jaxablate.tasks import Task
from jaxablate.version import VERSION

__all__ = [
    "Attribution",
    "AttentionScores",
    "Cache",
    "Component",
    "GPT2",
    "GPT2Config",
    "InputError",
    "InputTypeError",
    "Mask",
    "MaskSet",
    "NonFiniteMetricError",
    "OptimalAblation",
    "Replacement",
    "ResultsStore",
    "SAE",
    "Study",
    "StoreMismatchError",
    "StudyResult",
    "attach_sae",
    "attribute",
    "attention_scores",
    "by_layer_head",
    "clean_metric",
    "forward",
    "load_gpt2",
    "load_tokenizer",
    "masks",
    "mean_replacement",
    "metrics",
    "optimal_replacement",
    "parse_component",
    "report",
    "planned_chunk_size",
    "patch_replacement",
    "patching",
    "path_patch",
    "plot",
    "resample_replacement",
    "run_with_cache",
    "save_gpt2",
    "sweep",
    "Task",
    "tasks",
    "to_frame",
    "to_tokens",
    "zero_replacement",
]
__version__ = VERSION
