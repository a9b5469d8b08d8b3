"""Attention-pattern head scores: against a plain loop over Hugging Face's attention weights,
on hand-made patterns whose scores are known exactly, and the report / error paths."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

import jaxablate
from conftest import make_hf_model, tiny_hf_config
from jaxablate.screening import patterns
from jaxablate.screening.patterns import PATTERN_KINDS as KINDS, AttentionScores, attention_scores, scores_from_patterns

# float32 patterns against HF eager: both are softmaxes of the same logits; 1e-5 is the contract.
ATOL = 1e-5
SEQ_HALF = 12


# ---------------------------------------------------------------------------------------------
# The independent reference: HF's attention weights and a plain Python loop over the definition.


def hf_attentions(hf_model, tokens: np.ndarray) -> list[np.ndarray]:
    """Per layer, HF's attention weights [batch, head, query, key] (eager attention)."""
    with torch.no_grad():
        out = hf_model(torch.as_tensor(np.asarray(tokens, np.int64)), output_attentions=True)
    return [a.float().numpy() for a in out.attentions]


def loop_scores(attentions: list[np.ndarray], tokens: np.ndarray):
    """The three scores by a loop over (b, q, layer, head, k), straight from the definitions."""
    n_layers = len(attentions)
    batch, n_heads, seq, _ = attentions[0].shape
    sums = {kind: np.zeros((n_layers, n_heads)) for kind in KINDS}
    counts = dict.fromkeys(KINDS, 0)
    for b in range(batch):
        t = [int(x) for x in tokens[b]]
        for q in range(seq):
            keys = {
                "previous_token": [q - 1] if q >= 1 else [],
                "duplicate_token": [k for k in range(q) if t[k] == t[q]],
                "induction": [k for k in range(1, q + 1) if t[k - 1] == t[q]],
            }
            for kind, ks in keys.items():
                if not ks:
                    continue
                counts[kind] += 1
                for layer in range(n_layers):
                    for h in range(n_heads):
                        sums[kind][layer, h] += sum(float(attentions[layer][b, h, q, k])
                                                    for k in ks)
    scores = {kind: sums[kind] / counts[kind] if counts[kind] else
              np.full((n_layers, n_heads), np.nan) for kind in KINDS}
    return scores, counts


def repeated_half(rng: np.random.Generator, vocab: int, half: int = SEQ_HALF) -> np.ndarray:
    """A random half of distinct tokens, repeated twice: [2 * half]."""
    x = rng.permutation(vocab)[:half]
    return np.concatenate([x, x])


@pytest.fixture(scope="module")
def hf_and_model():
    # 3 heads (not 4 as in the shared fixture) so [layer, head] is not square.
    hf = make_hf_model(tiny_hf_config(n_head=3, n_embd=24), seed=3)
    return hf, jaxablate.load_gpt2(hf)


@pytest.fixture(scope="module")
def mixed_tokens(hf_and_model):
    vocab = hf_and_model[0].config.vocab_size
    rng = np.random.default_rng(0)
    half = rng.integers(0, 20, size=SEQ_HALF)  # a half that itself has duplicates
    rows = [
        repeated_half(rng, vocab),
        repeated_half(rng, vocab),
        np.concatenate([half, half]),
        rng.integers(0, 6, size=2 * SEQ_HALF),  # many duplicates, runs of equal tokens
        rng.permutation(vocab)[:2 * SEQ_HALF],  # no repeats: only previous_token qualifies
    ]
    return np.stack(rows).astype(np.int32)


def test_scores_match_loop_over_hf_attentions(hf_and_model, mixed_tokens):
    hf, model = hf_and_model
    attentions = hf_attentions(hf, mixed_tokens)
    want, want_counts = loop_scores(attentions, mixed_tokens)
    got = attention_scores(model, mixed_tokens)

    assert got.counts == want_counts
    assert got.notes == ()
    for kind in KINDS:
        values = getattr(got, kind)
        assert values.shape == (2, 3) and values.dtype == np.float64
        # The reference is not degenerate: heads differ from one another.
        assert np.std(want[kind]) > 1e-3, kind
        np.testing.assert_allclose(values, want[kind], rtol=0, atol=ATOL, err_msg=kind)


def test_chunks_do_not_change_the_scores(hf_and_model, mixed_tokens):
    model = hf_and_model[1]
    whole = attention_scores(model, mixed_tokens)
    chunked = attention_scores(model, mixed_tokens, chunk_size=2)  # 2 + 2 + 1 (padded)
    assert chunked.counts == whole.counts
    for kind in KINDS:
        np.testing.assert_allclose(getattr(chunked, kind), getattr(whole, kind),
                                   rtol=0, atol=1e-6, err_msg=kind)


def test_no_repeats_gives_nan_and_a_note(hf_and_model, mixed_tokens):
    model = hf_and_model[1]
    rng = np.random.default_rng(1)
    vocab = model.cfg.d_vocab
    tokens = np.stack([rng.permutation(vocab)[:mixed_tokens.shape[1]]
                       for _ in range(mixed_tokens.shape[0])])  # same shape: no recompile
    scores = attention_scores(model, tokens)  # warnings are errors here: none may be raised
    assert np.isnan(scores.induction).all() and np.isnan(scores.duplicate_token).all()
    assert np.isfinite(scores.previous_token).all()
    assert scores.counts == {"previous_token": tokens.size - tokens.shape[0],
                             "induction": 0, "duplicate_token": 0}
    assert len(scores.notes) == 2
    assert any(n.startswith("induction is NaN") for n in scores.notes)
    assert any(n.startswith("duplicate_token is NaN") for n in scores.notes)
    assert scores.top("induction", 3) == []
    text = str(scores)
    assert "NaN" in text and "note: induction is NaN" in text


# ---------------------------------------------------------------------------------------------
# Hand-made patterns: scores_from_patterns is the pure function attention_scores uses.


def one_hot(targets: np.ndarray) -> np.ndarray:
    """A pattern [batch, seq, key] attending only to key targets[b, q]."""
    batch, seq = targets.shape
    pattern = np.zeros((batch, seq, seq), np.float32)
    b, q = np.meshgrid(np.arange(batch), np.arange(seq), indexing="ij")
    pattern[b, q, targets] = 1.0
    return pattern


def uniform(batch: int, seq: int) -> np.ndarray:
    """Causal uniform attention [batch, seq, key]: 1 / (q + 1) on every key k <= q."""
    pattern = np.tril(np.ones((seq, seq), np.float32))
    return np.broadcast_to(pattern / pattern.sum(-1, keepdims=True), (batch, seq, seq)).copy()


def stack_heads(grid: list[list[np.ndarray]]) -> np.ndarray:
    """[batch, layer, head, seq, key] from per-(layer, head) patterns [batch, seq, key]."""
    return np.stack([np.stack(row, axis=1) for row in grid], axis=1)


def test_perfect_heads_score_one():
    rng = np.random.default_rng(0)
    half, batch = 8, 3
    tokens = np.stack([repeated_half(rng, 50, half) for _ in range(batch)]).astype(np.int32)
    seq = 2 * half
    q = np.broadcast_to(np.arange(seq), (batch, seq))
    previous = one_hot(np.maximum(q - 1, 0))
    induction = one_hot(np.where(q >= half, q - half + 1, 0))
    duplicate = one_hot(np.where(q >= half, q - half, 0))
    flat = uniform(batch, seq)
    pattern = stack_heads([[flat, previous, flat], [flat, duplicate, induction]])

    scores = scores_from_patterns(pattern, tokens)

    assert scores.previous_token[0, 1] == 1.0
    assert scores.induction[1, 2] == 1.0
    assert scores.duplicate_token[1, 1] == 1.0
    # The induction head never attends to the duplicate itself, and vice versa.
    assert scores.duplicate_token[1, 2] == 0.0
    assert scores.induction[1, 1] == 0.0
    assert scores.top("previous_token", 1) == ["0.1"]
    assert scores.top("induction", 1) == ["1.2"]
    assert scores.top("duplicate_token", 1) == ["1.1"]
    assert scores.counts == {"previous_token": batch * (seq - 1), "induction": batch * half,
                             "duplicate_token": batch * half}


def test_uniform_and_first_token_attention_by_hand():
    tokens = np.array([[5, 6, 5, 6], [7, 7, 7, 8]], np.int32)
    first = one_hot(np.zeros((2, 4), np.int64))
    pattern = stack_heads([[uniform(2, 4), first]])
    scores = scores_from_patterns(pattern, tokens)

    # Uniform: query q puts 1/(q+1) on each key k <= q.
    #   previous: q = 1, 2, 3 in both rows -> (1/2 + 1/3 + 1/4) / 3.
    #   duplicate: row 0 q=2 (key 0) 1/3, q=3 (key 1) 1/4; row 1 q=1 (key 0) 1/2,
    #              q=2 (keys 0, 1) 2/3; q=3 in row 1 (token 8) has none.
    #   induction: row 0 q=2 (key 1) 1/3, q=3 (key 2) 1/4; row 1 q=1 (key 1) 1/2,
    #              q=2 (keys 1, 2) 2/3.
    f = Fraction
    uniform_want = {
        "previous_token": (f(1, 2) + f(1, 3) + f(1, 4)) / 3,
        "duplicate_token": (f(1, 3) + f(1, 4) + f(1, 2) + f(2, 3)) / 4,
        "induction": (f(1, 3) + f(1, 4) + f(1, 2) + f(2, 3)) / 4,
    }
    # All attention on the first token: previous only at q = 1; key 0 is a duplicate for
    # row 0 q=2 and row 1 q=1, 2 (not row 0 q=3); key 0 is never an induction key.
    first_want = {"previous_token": f(2, 6), "duplicate_token": f(3, 4), "induction": f(0)}
    for kind in KINDS:
        np.testing.assert_allclose(getattr(scores, kind)[0], [float(uniform_want[kind]),
                                                              float(first_want[kind])],
                                   rtol=0, atol=1e-7, err_msg=kind)
    assert scores.counts == {"previous_token": 6, "induction": 4, "duplicate_token": 4}


def test_repeated_half_reduces_to_the_standard_scores():
    rng = np.random.default_rng(2)
    half, batch, layers, heads = 7, 4, 2, 3
    tokens = np.stack([repeated_half(rng, 1000, half) for _ in range(batch)]).astype(np.int32)
    seq = 2 * half
    # Random causal patterns: each row a random distribution over keys k <= q.
    logits = rng.normal(size=(batch, layers, heads, seq, seq)) * 2
    logits = np.where(np.tril(np.ones((seq, seq), bool)), logits, -np.inf)
    pattern = np.exp(logits - logits.max(-1, keepdims=True))
    pattern = (pattern / pattern.sum(-1, keepdims=True)).astype(np.float32)

    scores = scores_from_patterns(pattern, tokens)

    q = np.arange(half, seq)
    np.testing.assert_allclose(scores.induction, pattern[..., q, q - half + 1].mean((0, 3)),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores.duplicate_token, pattern[..., q, q - half].mean((0, 3)),
                               rtol=0, atol=1e-6)
    q = np.arange(1, seq)
    np.testing.assert_allclose(scores.previous_token, pattern[..., q, q - 1].mean((0, 3)),
                               rtol=0, atol=1e-6)


def test_one_token_prompts_give_nan_everywhere():
    scores = scores_from_patterns(np.ones((2, 1, 2, 1, 1), np.float32),
                                  np.array([[3], [3]], np.int32))
    for kind in KINDS:
        assert np.isnan(getattr(scores, kind)).all()
        assert scores.counts[kind] == 0
        assert scores.top(kind, 2) == []
    assert len(scores.notes) == 3
    assert "AttentionScores([layer, head] = [1, 2]" in repr(scores)


def test_pattern_shape_must_match_tokens():
    with pytest.raises(ValueError, match=r"pattern: expected \[batch, layer, head, seq, key\]"):
        scores_from_patterns(np.ones((1, 1, 1, 3, 4), np.float32), np.zeros((1, 3), np.int32))


# ---------------------------------------------------------------------------------------------
# Ranking and report.


def made_up_scores() -> AttentionScores:
    prev = np.array([[0.1, 0.9, 0.5], [0.5, 0.7, 0.2]])
    return AttentionScores(previous_token=prev, induction=prev[::-1].copy(),
                           duplicate_token=np.zeros((2, 3)),
                           counts={"previous_token": 10, "induction": 4, "duplicate_token": 4})


def test_top_orders_heads_by_score_with_names():
    scores = made_up_scores()
    # 0.5 ties between 0.2 and 1.0: layer-major order breaks it.
    assert scores.top("previous_token", 4) == ["0.1", "1.1", "0.2", "1.0"]
    assert scores.top("induction", 2) == ["1.1", "0.1"]
    assert scores.top("previous_token", 100) == ["0.1", "1.1", "0.2", "1.0", "1.2", "0.0"]
    assert scores.top("duplicate_token", 2) == ["0.0", "0.1"]
    with pytest.raises(ValueError, match="kind: expected one of"):
        scores.top("copying", 2)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        scores.top("induction", 0)


def test_table_lists_every_score_and_its_top_heads():
    text = made_up_scores().table(k=2)
    assert str(made_up_scores()) == made_up_scores().table()
    for kind in KINDS:
        assert f"{kind}: " in text
    assert "top: 0.1 (0.900), 1.1 (0.700)" in text
    assert "layer     h0     h1     h2" in text


# ---------------------------------------------------------------------------------------------
# Validation happens on the host, before anything is compiled.


def never(*args, **kwargs):
    raise AssertionError("compiled or ran a forward pass before validating")


@pytest.mark.parametrize("tokens, message", [
    (np.zeros((2, 5), np.float32), "integer token ids"),
    (np.zeros(5, np.int32), r"expected int \[batch, seq\]"),
    (np.full((1, 5), 101), "outside the vocabulary"),
    (np.full((1, 5), -1), "outside the vocabulary"),
    (np.zeros((1, 65), np.int32), "exceeds the model's n_ctx"),
    (np.zeros((0, 5), np.int32), "non-empty"),
])
def test_bad_tokens_raise_before_compiling(hf_and_model, monkeypatch, tokens, message):
    monkeypatch.setattr(patterns, "run_with_cache", never)
    monkeypatch.setattr(patterns, "_masses_jit", never)
    with pytest.raises(ValueError, match=message):
        attention_scores(hf_and_model[1], tokens)


def test_bad_chunk_size_and_model_raise(hf_and_model, monkeypatch):
    monkeypatch.setattr(patterns, "run_with_cache", never)
    monkeypatch.setattr(patterns, "_masses_jit", never)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        attention_scores(hf_and_model[1], np.zeros((2, 4), np.int32), chunk_size=0)
    # TypeError from validate_call, or earlier from the runtime type checker under pytest.
    with pytest.raises(TypeError):
        attention_scores("gpt2", np.zeros((2, 4), np.int32))  # type: ignore[arg-type]
