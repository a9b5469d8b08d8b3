"""The induction task's invariants, and its metric against a hand-computed loss."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxablate
from jaxablate.tasks import induction


def test_shapes_and_repeat():
    task = induction(10, half=7, vocab=50, seed=3, n_reference=4)
    assert task.tokens.shape == (10, 14) and task.tokens.dtype == np.int32
    np.testing.assert_array_equal(task.tokens[:, :7], task.tokens[:, 7:])
    assert all(len(set(row[:7])) == 7 for row in task.tokens)  # one earlier match each
    assert task.tokens.min() >= 0 and task.tokens.max() < 50
    assert task.reference.shape == (4, 14)
    np.testing.assert_array_equal(task.reference[:, :7], task.reference[:, 7:])
    np.testing.assert_array_equal(task.positions["repeat"], np.tile(np.arange(7, 13), (10, 1)))
    assert task.info["seed"] == 3 and len(task) == 10


def test_low_keeps_ids_clear():
    task = induction(5, half=4, vocab=20, low=10)
    assert task.tokens.min() >= 10


def test_reproducible_by_seed():
    a, b, c = induction(6, seed=1), induction(6, seed=1), induction(6, seed=2)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.reference, b.reference)
    assert not np.array_equal(a.tokens, c.tokens)
    assert not np.array_equal(a.tokens, a.reference[:6])


def test_metric_is_the_loss_on_the_repeated_half(tiny_model):
    task = induction(4, half=5, vocab=tiny_model.cfg.d_vocab, seed=0)
    got = jaxablate.clean_metric(tiny_model, task.tokens, task.metric)
    logits = np.asarray(jaxablate.forward(tiny_model, task.tokens))
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    want = [-np.mean([logp[b, q, task.tokens[b, q + 1]] for q in range(5, 9)])
            for b in range(4)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(half=30, vocab=20), "need a vocabulary of at least 30 ids"),
    (dict(half=1), "half must be an int >= 2"),
    (dict(n_prompts=0), "n_prompts must be an int >= 1"),
    (dict(n_reference=0), "n_reference must be an int >= 1"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        induction(**kwargs)
