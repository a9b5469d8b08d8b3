"""Metrics a sweep evaluates per mask and per example; each declares the positions it reads.

A metric is prepared once on the host against the evaluated tokens (`prepare` checks ids and
positions and returns `[batch, k]` positions plus per-example arrays), then scored per example
inside the compiled sweep by a pure function of the logits at those positions only, so the
unembedding runs at `k` positions instead of all `seq`; a metric that reads a few token ids
(a logit difference) declares them, and only those vocabulary columns are unembedded.

Signs (docs/conventions.md is the one place they are defined): `sweep` returns the metric
under each intervention; metric_change = metric(intervened) - metric(clean) (what
`attribute` estimates); effect = how much the component helps, positive when removing it
hurts: metric(clean) - metric(intervened) for a higher-is-better metric (logit difference,
accuracy, probability), metric(intervened) - metric(clean) for loss and KL (`effect`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxablate.errors import InputError, InputTypeError
from jaxablate.model.config import GPT2Config
from jaxablate.model.validation import check_positions

# score(logits [k, n], tokens [seq], clean_logits [k, n], data) -> scalar, where n is the
# vocabulary or the metric's declared columns
Score = Callable[..., Float[Array, ""]]


def _ids(values: Any, batch: int, cfg: GPT2Config, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{what}: expected integer token ids, got dtype {array.dtype}")
    if array.ndim == 0:
        array = np.full(batch, int(array))
    if array.shape != (batch,):
        raise InputError(f"{what}: expected ids [batch] = [{batch}], got shape {array.shape}")
    if array.min() < 0 or array.max() >= cfg.d_vocab:
        raise InputError(f"{what}: id outside the vocabulary [0, {cfg.d_vocab}); were the "
                         "answers tokenized for another model?")
    return array.astype(np.int32)


class Metric:
    """Base class: `prepare` on the host, `score` (a static pure function) per example."""

    name = "metric"
    reads_clean = False  # whether score needs the clean logits (kl_to_clean)
    # Whether a larger value means the model does the task better (logit difference,
    # accuracy, probability) or worse (loss, KL): the sign of an ablation's "damage".
    higher_is_better = True
    # Keys of `data` holding the only vocabulary ids `score` reads (empty: the whole
    # vocabulary). The sweep then unembeds those columns only (see `vocab_columns`).
    columns: tuple[str, ...] = ()
    # Whether gradients of score with respect to the logits carry information: an accuracy
    # is piecewise constant (its gradient is 0 wherever it exists), so gradient screening
    # (`jaxablate.attribute`) refuses it.
    differentiable = True
    # Whether the clean model is a stationary point of the metric as a function of the mask
    # (KL to the clean distribution is minimal, 0, there): its gradient at m = 1 is 0, so
    # attribute(method="grad") would return zeros that look like results.
    stationary_at_clean = False

    def prepare(self, tokens: np.ndarray, cfg: GPT2Config
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(positions int32 [batch, k], per-example arrays with leading batch axis)."""
        raise NotImplementedError

    score: Score

    def __repr__(self) -> str:
        return f"{self.name}()"


def check_metric(metric: Any, what: str = "metric") -> "Metric":
    """`metric` if it is a prepared `Metric`, else an `InputTypeError` that names the fix
    (a metric factory passed without calling it, e.g. `metrics.loss` for `metrics.loss()`).

    Example:
        >>> check_metric(logit_diff(io, s))
        logit_diff()
    """
    if isinstance(metric, Metric):
        return metric
    name = getattr(metric, "__name__", None)
    if callable(metric) and name in FACTORIES:
        raise InputTypeError(f"{what}: got the function jaxablate.metrics.{name} itself; call "
                             f"it, e.g. metrics.{name}({FACTORIES[name]})")
    raise InputTypeError(f"{what}: expected one of jaxablate.metrics (logit_diff, accuracy, "
                         f"prob, loss, kl_to_clean) called with its arguments, got "
                         f"{type(metric).__name__}")


def vocab_columns(metric: Metric, data: dict[str, np.ndarray]
                  ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """The vocabulary ids a metric reads per example, `[batch, n]`, and its data re-indexed
    into those n columns; `(None, data)` when it reads the whole vocabulary.

    `score` is unchanged: given logits over the columns `[k, n]` and the re-indexed data
    (`correct` becomes 0, `wrong` 1), it picks the same numbers it would from `[k, vocab]`.

    Example:
        >>> columns, local = vocab_columns(logit_diff(io, s), {"correct": io, "wrong": s})
        >>> columns.shape, local["wrong"][0]                 # ((batch, 2), 1)
    """
    if not metric.columns:
        return None, data
    columns = np.stack([data[key] for key in metric.columns], axis=1).astype(np.int32)
    local = dict(data)
    for i, key in enumerate(metric.columns):
        local[key] = np.full(columns.shape[0], i, np.int32)
    return columns, local


class _AtPosition(Metric):
    def __init__(self, correct: Any = None, wrong: Any = None, position: Any = -1):
        self.correct, self.wrong, self.position = correct, wrong, position

    def prepare(self, tokens, cfg):
        batch, seq = tokens.shape
        positions = check_positions(self.position, batch, seq, f"{self.name} position",
                                    per_example=True)
        if positions.shape[1] != 1:
            raise InputError(f"{self.name} reads one position per example, got "
                             f"{positions.shape[1]}")
        data = {}
        if self.correct is not None:
            data["correct"] = _ids(self.correct, batch, cfg, f"{self.name} correct")
        if self.wrong is not None:
            data["wrong"] = _ids(self.wrong, batch, cfg, f"{self.name} wrong")
        return positions, data


def _logit_diff(logits, tokens, clean, data):
    return logits[0, data["correct"]] - logits[0, data["wrong"]]


def _accuracy_vs_wrong(logits, tokens, clean, data):
    return (logits[0, data["correct"]] > logits[0, data["wrong"]]).astype(jnp.float32)


def _accuracy_top1(logits, tokens, clean, data):
    return (jnp.argmax(logits[0]) == data["correct"]).astype(jnp.float32)


def _prob(logits, tokens, clean, data):
    return jax.nn.softmax(logits[0])[data["correct"]]


class LogitDiff(_AtPosition):
    name = "logit_diff"
    columns = ("correct", "wrong")
    score = staticmethod(_logit_diff)


class Accuracy(_AtPosition):
    name = "accuracy"
    differentiable = False

    @property
    def columns(self):  # type: ignore[override]
        return () if self.wrong is None else ("correct", "wrong")

    @property
    def score(self):  # type: ignore[override]
        return _accuracy_top1 if self.wrong is None else _accuracy_vs_wrong


class Prob(_AtPosition):
    name = "prob"
    score = staticmethod(_prob)


def logit_diff(correct: Any, wrong: Any, position: Any = -1) -> Metric:
    """logit[correct] - logit[wrong] at one position per example (ids [batch] or a scalar).

    Example:
        >>> metric = logit_diff(io_ids, s_ids)            # IOI: IO minus S at the last token
    """
    return LogitDiff(correct, wrong, position)


def accuracy(correct: Any, wrong: Any = None, position: Any = -1) -> Metric:
    """1.0 where the correct id wins: over `wrong` when given, else over the whole vocabulary
    (top-1), at one position per example."""
    return Accuracy(correct, wrong, position)


def prob(correct: Any, position: Any = -1) -> Metric:
    """Softmax probability of the correct id at one position per example."""
    return Prob(correct, None, position)


def _loss(logits, tokens, clean, data):
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, data["targets"][:, None], axis=-1)[:, 0]
    return -picked.mean()


class Loss(Metric):
    """Mean next-token cross-entropy over the positions read (all but the last by default)."""

    name = "loss"
    higher_is_better = False
    score = staticmethod(_loss)

    def __init__(self, positions: Any = None):
        self.positions = positions

    def prepare(self, tokens, cfg):
        batch, seq = tokens.shape
        if seq < 2:
            raise InputError("loss needs sequences of at least 2 tokens")
        wanted = np.arange(seq - 1) if self.positions is None else self.positions
        positions = check_positions(wanted, batch, seq, "loss positions")
        if (positions == seq - 1).any():
            raise InputError(f"loss: position {seq - 1} (the last) has no next token")
        targets = np.take_along_axis(tokens, positions + 1, axis=1).astype(np.int32)
        return positions, {"targets": targets}


def loss(positions: Any = None) -> Metric:
    """Next-token cross-entropy (nats), averaged over `positions` (default: every position
    that has a next token)."""
    return Loss(positions)


def _kl(logits, tokens, clean, data):
    logp = jax.nn.log_softmax(logits, axis=-1)
    logq = jax.nn.log_softmax(clean, axis=-1)
    return (jnp.exp(logq) * (logq - logp)).sum(-1).mean()


class KLToClean(Metric):
    """KL(clean || ablated) of the next-token distribution, averaged over positions read."""

    name = "kl_to_clean"
    reads_clean = True
    stationary_at_clean = True
    higher_is_better = False
    score = staticmethod(_kl)

    def __init__(self, positions: Any = -1):
        self.positions = positions

    def prepare(self, tokens, cfg):
        batch, seq = tokens.shape
        wanted = np.arange(seq) if self.positions is None else self.positions
        return check_positions(wanted, batch, seq, "kl_to_clean positions"), {}


def kl_to_clean(positions: Any = -1) -> Metric:
    """KL divergence from the clean to the ablated distribution at `positions` (default the
    last; None for all), in nats. 0 for the clean model."""
    return KLToClean(positions)



# The factories and the arguments a call needs (for the message of `check_metric`).
FACTORIES = {"logit_diff": "correct, wrong", "accuracy": "correct", "prob": "correct",
             "loss": "", "kl_to_clean": ""}


def effect(metric: Metric, intervened: Any, clean: Any) -> np.ndarray:
    """The effect of an intervention in the study's sign: positive when removing the component
    hurts the task (docs/conventions.md). `intervened`: the metric under the intervention
    (a sweep's `[N, batch]`), `clean`: without it (`[batch]`, broadcast over N).

    Example:
        >>> out = sweep(model, tokens, masks.single_heads(cfg), repl, metric)   # [N, batch]
        >>> effect(metric, out, clean_metric(model, tokens, metric))           # [N, batch]
    """
    check_metric(metric)
    change = np.asarray(intervened, np.float64) - np.asarray(clean, np.float64)
    return -change if metric.higher_is_better else change
