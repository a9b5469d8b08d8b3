"""jaxablate's metrics scored in PyTorch over a stack of masks (no JAX in the sweep's loop).

A jaxablate `Metric` is prepared on the host as in `jaxablate.sweep` (`metric.prepare` and
`jaxablate.metrics.vocab_columns`: positions `[batch, k]`, the vocabulary columns it reads,
per-example data re-indexed into them). `scorer(metric)` returns a function of the logits of
n masks `[n, batch, k, vocab or n_cols]` that gives the metric `[n, batch]`. The metrics of
`jaxablate.metrics` have PyTorch versions here; any other `Metric` is scored by its own JAX
`score` on the host (correct, but a device-to-host copy per chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from jaxablate import metrics as metrics_lib

# scorer(logits [n, batch, k, cols], clean [batch, k, cols], tokens [batch, seq],
#        data {name: tensor [batch, ...]}) -> [n, batch]
Scorer = Callable[..., torch.Tensor]


def _pick(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logits [n, batch, k, cols] at position 0 and the per-example column ids [batch]."""
    index = ids.long()[None, :, None].expand(logits.shape[0], -1, 1)
    return torch.gather(logits[:, :, 0], 2, index)[..., 0]


def _logit_diff(logits, clean, tokens, data):
    return _pick(logits, data["correct"]) - _pick(logits, data["wrong"])


def _accuracy_vs_wrong(logits, clean, tokens, data):
    return (_pick(logits, data["correct"]) > _pick(logits, data["wrong"])).float()


def _accuracy_top1(logits, clean, tokens, data):
    return (logits[:, :, 0].argmax(-1) == data["correct"].long()[None]).float()


def _prob(logits, clean, tokens, data):
    return _pick(torch.softmax(logits, dim=-1), data["correct"])


def _loss(logits, clean, tokens, data):
    logp = torch.log_softmax(logits, dim=-1)
    targets = data["targets"].long()[None, :, :, None].expand(logits.shape[0], -1, -1, 1)
    return -torch.gather(logp, 3, targets)[..., 0].mean(-1)


def _kl(logits, clean, tokens, data):
    logp = torch.log_softmax(logits, dim=-1)
    logq = torch.log_softmax(clean, dim=-1)[None]
    return (logq.exp() * (logq - logp)).sum(-1).mean(-1)


def scorer(metric: Any) -> Scorer:
    """The PyTorch scorer of a jaxablate metric (see module docstring for shapes).

    Example:
        >>> score = scorer(jaxablate.metrics.logit_diff(io, s))
        >>> values = score(logits, clean, tokens, data)          # [n, batch]
    """
    if not isinstance(metric, metrics_lib.Metric):
        raise TypeError(f"metric: expected one of jaxablate.metrics (logit_diff, accuracy, "
                        f"prob, loss, kl_to_clean), got {type(metric).__name__}")
    if isinstance(metric, metrics_lib.LogitDiff):
        return _logit_diff
    if isinstance(metric, metrics_lib.Accuracy):
        return _accuracy_top1 if metric.wrong is None else _accuracy_vs_wrong
    if isinstance(metric, metrics_lib.Prob):
        return _prob
    if isinstance(metric, metrics_lib.Loss):
        return _loss
    if isinstance(metric, metrics_lib.KLToClean):
        return _kl
    return _jax_scorer(metric)


def _jax_scorer(metric: Any) -> Scorer:
    """Any other Metric: its JAX `score`, vmapped over masks and examples, on the host."""
    import jax
    import jax.numpy as jnp

    per_example = jax.vmap(metric.score, in_axes=(0, 0, 0, 0))
    per_mask = jax.jit(jax.vmap(per_example, in_axes=(0, None, None, None)))

    def score(logits, clean, tokens, data):
        host = {k: jnp.asarray(v.cpu().numpy()) for k, v in data.items()}
        values = per_mask(jnp.asarray(logits.cpu().numpy()), jnp.asarray(tokens.cpu().numpy()),
                          jnp.asarray(clean.cpu().numpy()), host)
        return torch.tensor(np.asarray(values, np.float32), device=logits.device)

    return score
