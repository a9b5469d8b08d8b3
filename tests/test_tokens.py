"""Inputs are validated on the host, before anything is traced or compiled.

JAX gathers clamp out-of-range indices, so a bad token id would otherwise give plausible,
wrong logits; bad shapes would give an XLA error far from the cause.
"""

from __future__ import annotations

import importlib

import jax.numpy as jnp
import numpy as np
import pytest

import jaxablate
from jaxablate import GPT2Config, Mask, Replacement

forward_module = importlib.import_module("jaxablate.model.batched")


@pytest.fixture
def no_compile(monkeypatch):
    """Fail the test if the jitted forward is reached: the check must come first."""

    def compiled(*args, **kwargs):
        raise AssertionError("the jitted forward was reached; validation must run before it")

    monkeypatch.setattr(forward_module, "_forward", compiled)


@pytest.fixture
def tokens():
    return np.arange(5, dtype=np.int32)[None].repeat(3, axis=0)  # [batch, seq] = [3, 5]


def zero_replacement(cfg, fields=("z", "mlp_out", "post", "resid")):
    """Zero replacement values broadcast over positions (seq axis 1), built by hand."""
    shapes = {"z": (cfg.n_layers, 1, cfg.n_heads, cfg.d_head),
              "mlp_out": (cfg.n_layers, 1, cfg.d_model),
              "post": (cfg.n_layers, 1, cfg.d_mlp),
              "resid": (cfg.n_layers, 1, cfg.d_model)}
    return Replacement(**{f: jnp.zeros(shapes[f], jnp.float32) for f in fields}, kind="zero")


# ---------------------------------------------------------------------------------------------
# Tokens.


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([[1, 2, 101]]), r"tokens: id 101 is outside the vocabulary \[0, 101\); was "
                                  r"the prompt tokenized for another model\?"),
        (np.array([[1, 50256, 3]]), r"tokens: id 50256 is outside the vocabulary \[0, 101\)"),
        (np.array([[1, -1, 3]]), r"tokens: id -1 is outside the vocabulary \[0, 101\)"),
        (np.zeros((2, 65), np.int32), "tokens: sequence length 65 exceeds the model's n_ctx 64"),
        (np.array([1, 2, 3]), r"tokens: expected int \[batch, seq\], got shape \(3,\) \(wrap "
                              r"one sequence as tokens\[None\]\)"),
        (np.zeros((1, 2, 3), np.int32), r"tokens: expected int \[batch, seq\], got shape "
                                        r"\(1, 2, 3\)$"),
        (np.array(7), r"tokens: expected int \[batch, seq\], got shape \(\)"),
        (np.array([[1.0, 2.0]]), "tokens: expected integer token ids, got dtype float64"),
        (np.array([[1, 2]], np.float32), "tokens: expected integer token ids, got dtype float32"),
        (np.array([[True, False]]), "tokens: expected integer token ids, got dtype bool"),
        (np.zeros((1, 0), np.int32), r"tokens: expected a non-empty \[batch, seq\], got shape "
                                     r"\(1, 0\)"),
        (np.zeros((0, 4), np.int32), r"tokens: expected a non-empty \[batch, seq\], got shape "
                                     r"\(0, 4\)"),
        ([["a", "b"]], "tokens: expected integer token ids, got dtype <U1"),
    ],
    ids=["id-eq-vocab", "id-gpt2-eos", "negative", "too-long", "rank1", "rank3", "rank0",
         "float64", "float32", "bool", "empty-seq", "empty-batch", "strings"],
)
def test_bad_tokens_refused_before_compiling(tiny_model, no_compile, bad, message):
    with pytest.raises(ValueError, match=message):
        jaxablate.forward(tiny_model, bad)
    with pytest.raises(ValueError, match=message):
        jaxablate.run_with_cache(tiny_model, bad)


def test_jax_integer_tokens_and_lists_accepted(tiny_model):
    as_list = jaxablate.forward(tiny_model, [[0, 100, 5]])
    as_jax = jaxablate.forward(tiny_model, jnp.array([[0, 100, 5]], jnp.int32))
    as_uint = jaxablate.forward(tiny_model, np.array([[0, 100, 5]], np.uint16))
    np.testing.assert_array_equal(np.asarray(as_list), np.asarray(as_jax))
    np.testing.assert_array_equal(np.asarray(as_list), np.asarray(as_uint))
    # The longest allowed prompt (n_ctx) runs.
    assert jaxablate.forward(tiny_model, np.ones((1, 64), np.int32)).shape == (1, 64, 101)


# ---------------------------------------------------------------------------------------------
# Positions.


@pytest.mark.parametrize(
    "positions, message",
    [
        (5, r"positions: position out of range for sequence length 5 \(got values from 5 to 5\)"),
        (-6, r"positions: position out of range for sequence length 5 \(got values from -6"),
        ([0, 9], r"positions: position out of range for sequence length 5 \(got values from 0 "
                 r"to 9\)"),
        ([[0], [1]], r"positions: expected \[k\] or \[batch, k\] with batch=3, got shape "
                     r"\(2, 1\)"),
        (np.zeros((3, 1, 1), np.int32), r"positions: expected \[k\] or \[batch, k\] with "
                                        r"batch=3, got shape \(3, 1, 1\)"),
        (1.0, "positions: expected integer positions, got dtype float64"),
        ([True], "positions: expected integer positions, got dtype bool"),
    ],
    ids=["int-eq-seq", "below-minus-seq", "list", "batch-mismatch", "rank3", "float", "bool"],
)
def test_bad_positions_refused_before_compiling(tiny_model, tokens, no_compile, positions,
                                                message):
    with pytest.raises(ValueError, match=message):
        jaxablate.forward(tiny_model, tokens, positions=positions)


# ---------------------------------------------------------------------------------------------
# Masks and replacements.


OTHER = GPT2Config(n_layers=3, n_heads=2, d_model=32, d_mlp=64, d_vocab=101, n_ctx=64)


@pytest.mark.parametrize(
    "mask, message",
    [
        (Mask.keep_all(OTHER, ("heads",)),
         r"mask\.heads: expected \[layer, head\] = \[2, 4\], got \[3, 2\] \(built for another "
         r"model or sequence length\?\)"),
        (Mask.keep_all(OTHER, ("mlps",)), r"mask\.mlps: expected \[layer\] = \[2\], got \[3\]"),
        (Mask.keep_all(OTHER, ("neurons",)),
         r"mask\.neurons: expected \[layer, neuron\] = \[2, 128\], got \[3, 64\]"),
        (Mask.keep_all(GPT2Config(n_layers=2, n_heads=4, d_model=32, d_mlp=128, d_vocab=101,
                                  n_ctx=64), ("positions",), seq_len=7),
         r"mask\.positions: expected \[layer, seq\] = \[2, 5\], got \[2, 7\]"),
        (Mask(head_positions=jnp.ones((2, 4, 5))),  # [layer, head, seq]: axes swapped
         r"mask\.head_positions: expected \[layer, seq, head\] = \[2, 5, 4\], got \[2, 4, 5\]"),
    ],
    ids=["heads", "mlps", "neurons", "positions-seq", "head-positions-axes"],
)
def test_mask_of_wrong_shape_refused(tiny_model, tokens, no_compile, mask, message):
    with pytest.raises(ValueError, match=message):
        jaxablate.forward(tiny_model, tokens, mask, zero_replacement(tiny_model.cfg))


@pytest.mark.parametrize("value", [1.5, -0.25, np.nan])
def test_mask_outside_unit_interval_refused(tiny_model, tokens, no_compile, value):
    mask = Mask.keep_all(tiny_model.cfg, ("heads",))
    mask = Mask(heads=mask.heads.at[1, 2].set(value))
    with pytest.raises(ValueError, match=r"mask\.heads: keep-weights must lie in \[0, 1\]"):
        jaxablate.forward(tiny_model, tokens, mask, zero_replacement(tiny_model.cfg))


def test_sae_mask_without_sae_refused(tiny_model, tokens, no_compile):
    mask = Mask(sae_features=jnp.ones(16))
    with pytest.raises(ValueError, match="mask.sae_features is set but the model has no SAE"):
        jaxablate.forward(tiny_model, tokens, mask, zero_replacement(tiny_model.cfg))


@pytest.mark.parametrize("kinds", [("heads",), ("mlps",), ("neurons",), ("heads", "mlps")])
def test_mask_without_replacement_refused(tiny_model, tokens, no_compile, kinds):
    mask = Mask.keep_all(tiny_model.cfg, kinds)
    with pytest.raises(ValueError, match="replacement: a mask is given but no replacement"):
        jaxablate.forward(tiny_model, tokens, mask)
    with pytest.raises(ValueError, match="replacement: a mask is given but no replacement"):
        jaxablate.run_with_cache(tiny_model, tokens, mask)


@pytest.mark.parametrize(
    "kind, field",
    [("heads", "z"), ("head_positions", "z"), ("mlps", "mlp_out"), ("neurons", "post"),
     ("positions", "resid")],
)
def test_replacement_missing_the_touched_kind_refused(tiny_model, tokens, no_compile, kind,
                                                      field):
    mask = Mask.keep_all(tiny_model.cfg, (kind,), seq_len=5)
    others = tuple(f for f in ("z", "mlp_out", "post", "resid") if f != field)
    with pytest.raises(ValueError, match=f"replacement has no '{field}' values, needed to "
                                         f"ablate {kind}"):
        jaxablate.forward(tiny_model, tokens, mask, zero_replacement(tiny_model.cfg, others))


def test_replacement_of_wrong_shape_refused(tiny_model, tokens, no_compile):
    mask = Mask.keep_all(tiny_model.cfg, ("heads",))
    wrong_seq = Replacement(z=jnp.zeros((2, 7, 4, 8)))  # seq 7, prompts have 5
    with pytest.raises(ValueError, match=r"replacement\.z: expected \[2, 'seq\|1', 4, 8\] with "
                                         r"seq=5, got \[2, 7, 4, 8\]"):
        jaxablate.forward(tiny_model, tokens, mask, wrong_seq)


def test_empty_mask_needs_no_replacement(tiny_model, tokens):
    # A Mask with every field None touches nothing: it is the clean forward.
    np.testing.assert_array_equal(np.asarray(jaxablate.forward(tiny_model, tokens, Mask())),
                                  np.asarray(jaxablate.forward(tiny_model, tokens)))
