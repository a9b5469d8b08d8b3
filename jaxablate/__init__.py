"""jaxablate: fast, correct, vectorised ablation studies on GPT-2-family models in JAX.

Example:
    >>> import jaxablate as ja
    >>> model = ja.load_gpt2("gpt2")
    >>> logits = ja.forward(model, tokens)                          # [batch, seq, vocab]
    >>> out = ja.sweep(model, tokens, ja.masks.single_heads(model.cfg),
    ...                ja.zero_replacement(model), ja.metrics.logit_diff(io, s))  # [144, batch]
"""

from jaxablate import masks, metrics, report, tasks
from jaxablate.attribution import Attribution, attribute
from jaxablate.components import Component, parse_component
from jaxablate.config import GPT2Config
from jaxablate.engine import NonFiniteMetricError, clean_metric, planned_chunk_size, sweep
from jaxablate.errors import InputError, InputTypeError
from jaxablate.forward import Cache, attach_sae, forward, run_with_cache
from jaxablate.loading import load_gpt2
from jaxablate.mask import Mask
from jaxablate.masks import MaskSet
from jaxablate.model import GPT2
from jaxablate.patterns import AttentionScores, attention_scores
from jaxablate.replacement import Replacement
from jaxablate.replacements import mean_replacement, resample_replacement, zero_replacement
from jaxablate.sae import SAE
from jaxablate.saving import save_gpt2
from jaxablate.store import ResultsStore, StoreMismatchError
from jaxablate.study import Study, StudyResult
from jaxablate.tasks import Task
from jaxablate.tokenizer import load_tokenizer

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
    "Replacement",
    "ResultsStore",
    "SAE",
    "Study",
    "StoreMismatchError",
    "StudyResult",
    "attach_sae",
    "attribute",
    "attention_scores",
    "clean_metric",
    "forward",
    "load_gpt2",
    "load_tokenizer",
    "masks",
    "mean_replacement",
    "metrics",
    "parse_component",
    "report",
    "planned_chunk_size",
    "resample_replacement",
    "run_with_cache",
    "save_gpt2",
    "sweep",
    "Task",
    "tasks",
    "zero_replacement",
]
__version__ = "0.1.0"
