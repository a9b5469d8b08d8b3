"""Logits equal Hugging Face's `GPT2LMHeadModel` (eager attention) on the same random weights."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxablate
from conftest import make_hf_model, tiny_hf_config

# float32 against HF eager: REFERENCE.md reports ~1e-7; 1e-4 absolute is the contract.
F32_ATOL = 1e-4


def hf_logits(hf_model, tokens: np.ndarray) -> np.ndarray:
    """Reference logits [batch, seq, vocab] from transformers, in float32."""
    with torch.no_grad():
        out = hf_model(torch.as_tensor(np.asarray(tokens, np.int64)))
    return out.logits.float().numpy()


def random_tokens(seed: int, batch: int, seq: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, seq), dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# Tiny config: the full context, several prompts.


@pytest.fixture(scope="module")
def tiny_tokens(tiny_hf):
    # Full n_ctx (64) so the last query attends over every position, plus id 0 and vocab-1.
    tokens = random_tokens(1, batch=3, seq=tiny_hf.config.n_positions,
                           vocab=tiny_hf.config.vocab_size)
    tokens[0, 0], tokens[1, -1] = 0, tiny_hf.config.vocab_size - 1
    return tokens


@pytest.fixture(scope="module")
def tiny_reference(tiny_hf, tiny_tokens):
    return hf_logits(tiny_hf, tiny_tokens)


def test_tiny_logits_match_hf(tiny_model, tiny_tokens, tiny_reference):
    logits = jaxablate.forward(tiny_model, tiny_tokens)
    assert logits.shape == tiny_reference.shape
    assert logits.dtype == jnp.float32
    # The reference is not degenerate: logits of order 1 that differ between positions.
    assert np.abs(tiny_reference).max() > 1.0
    np.testing.assert_allclose(np.asarray(logits), tiny_reference, rtol=0, atol=F32_ATOL)


@pytest.mark.parametrize("seq", [1, 2, 17])
def test_tiny_short_prompts_match_hf(tiny_hf, tiny_model, seq):
    tokens = random_tokens(seq, batch=2, seq=seq, vocab=tiny_hf.config.vocab_size)
    np.testing.assert_allclose(np.asarray(jaxablate.forward(tiny_model, tokens)),
                               hf_logits(tiny_hf, tokens), rtol=0, atol=F32_ATOL)


def test_single_sequence_call_matches_batched(tiny_model, tiny_tokens, tiny_reference):
    # The module's own __call__ takes one sequence [seq] (STYLE.md rule 1).
    logits = tiny_model(jnp.asarray(tiny_tokens[1]))
    np.testing.assert_allclose(np.asarray(logits), tiny_reference[1], rtol=0, atol=F32_ATOL)


def test_in_memory_load_equals_folder_load(tiny_hf, tiny_model, tiny_tokens):
    from_memory = jaxablate.load_gpt2(tiny_hf)
    assert from_memory.cfg == tiny_model.cfg
    np.testing.assert_array_equal(np.asarray(jaxablate.forward(from_memory, tiny_tokens)),
                                  np.asarray(jaxablate.forward(tiny_model, tiny_tokens)))


# ---------------------------------------------------------------------------------------------
# Logits at chosen positions equal the full logits there.


@pytest.mark.parametrize(
    "positions, expected",
    [
        (-1, [[63], [63], [63]]),                    # an int: the same position everywhere
        (5, [[5], [5], [5]]),
        ([0, 10, 20, -1], [[0, 10, 20, 63]] * 3),    # [k], shared by every example
        ([[3, 4], [0, 63], [-2, 7]], [[3, 4], [0, 63], [62, 7]]),  # [batch, k]
    ],
    ids=["int-last", "int", "k", "batch-k"],
)
def test_positions_equal_full_logits_there(tiny_model, tiny_tokens, positions, expected):
    full = np.asarray(jaxablate.forward(tiny_model, tiny_tokens))
    expected = np.array(expected)
    some = np.asarray(jaxablate.forward(tiny_model, tiny_tokens, positions=positions))
    assert some.shape == (3, expected.shape[1], full.shape[-1])
    want = np.take_along_axis(full, expected[:, :, None], axis=1)
    np.testing.assert_allclose(some, want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# bfloat16: bf16 matmul inputs, float32 LayerNorm / softmax / residual / accumulation.
#
# Measured (CPU, jax 0.10.2) on this tiny model, bf16 jaxablate vs float32 HF on the 3 x 64
# prompts above: max|diff| = 0.050, mean |diff| = 0.0062, with |logits| up to 5.1; over seeds
# 1-5 of the same config max|diff| ranged 0.042-0.051 and the mean 0.0054-0.0069. Bounds with
# ~3x headroom: max 0.15, mean 0.02. A wrong weight layout gives errors of order 1.
BF16_TINY_ATOL = 0.15
BF16_TINY_MEAN = 0.02


def test_bfloat16_logits_within_bound(tiny_dir, tiny_tokens, tiny_reference):
    model = jaxablate.load_gpt2(tiny_dir, dtype="bfloat16")
    assert model.wte.dtype == jnp.bfloat16
    logits = jaxablate.forward(model, tiny_tokens)
    assert logits.dtype == jnp.float32  # the unembedding accumulates and returns float32
    err = np.abs(np.asarray(logits) - tiny_reference)
    assert err.mean() < BF16_TINY_MEAN, f"mean |diff| {err.mean():.4g}"
    np.testing.assert_allclose(np.asarray(logits), tiny_reference, rtol=0, atol=BF16_TINY_ATOL)
    # And bf16 is really in use (not silently upcast to float32 everywhere).
    assert err.max() > 1e-4


# ---------------------------------------------------------------------------------------------
# GPT-2-small dimensions (12 layers, 12 heads, 768, vocab 50257, n_ctx 1024), random weights.


@pytest.fixture(scope="module")
def small_hf():
    config = tiny_hf_config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257,
                            n_positions=1024, initializer_range=0.02, bos_token_id=50256,
                            eos_token_id=50256)
    return make_hf_model(config, seed=3, noise=0.02)


@pytest.fixture(scope="module")
def small_tokens():
    # Two short prompts: the real "Hello world!" ids and random ids incl. the last vocab id.
    random = random_tokens(4, batch=1, seq=7, vocab=50257)[0].tolist()
    return np.array([[15496, 995, 0, 50256, 11, 262, 50255], random], np.int32)


@pytest.fixture(scope="module")
def small_reference(small_hf, small_tokens):
    return hf_logits(small_hf, small_tokens)


def test_gpt2_small_dims_logits_match_hf(small_hf, small_tokens, small_reference):
    model = jaxablate.load_gpt2(small_hf)
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model, model.cfg.d_head,
            model.cfg.d_mlp, model.cfg.d_vocab, model.cfg.n_ctx) == (
        12, 12, 768, 64, 3072, 50257, 1024)
    logits = np.asarray(jaxablate.forward(model, small_tokens))
    np.testing.assert_allclose(logits, small_reference, rtol=0, atol=F32_ATOL)


# Measured (CPU, jax 0.10.2) on these GPT-2-small-shaped random weights (seed 3), bf16 vs
# float32 HF: max|diff| = 0.0194, mean |diff| = 0.0032, with |logits| up to 2.7.
# Bounds with ~3x headroom: max 0.06, mean 0.01.
BF16_SMALL_ATOL = 0.06
BF16_SMALL_MEAN = 0.01


def test_gpt2_small_dims_bfloat16_within_bound(small_hf, small_tokens, small_reference):
    model = jaxablate.load_gpt2(small_hf, dtype="bfloat16")
    assert model.blocks.W_qkv.dtype == jnp.bfloat16
    logits = np.asarray(jaxablate.forward(model, small_tokens))
    err = np.abs(logits - small_reference)
    assert err.mean() < BF16_SMALL_MEAN, f"mean |diff| {err.mean():.4g}"
    np.testing.assert_allclose(logits, small_reference, rtol=0, atol=BF16_SMALL_ATOL)
