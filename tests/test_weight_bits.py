"""A bfloat16 model's layers as raw bits (`GPT2.with_weight_bits`): the same numbers, and
no float32 copy of the weights in the sweep's compiled calls.

XLA's CPU backend widens a bfloat16 array to float32 to slice it, and in the layer loop
that widening was hoisted out and written for every layer's weights on every call (a
bfloat16 sweep measured only 1.17x a float32 one). The sweep now passes the layers' bits.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from test_engine_paths import make_cfg, weighted_set
from test_engine_properties import random_model

import jaxablate
from jaxablate.engine import sweeping as engine_lib
from jaxablate.model import gpt2 as gpt2_lib

SPEC = (4, 3, 4, 24)


def bf16_model():
    model = random_model(make_cfg(SPEC), 3)
    return jax.tree_util.tree_map(
        lambda a: a.astype(jnp.bfloat16) if a.dtype == jnp.float32 else a, model)


def test_layers_read_through_bits_are_the_same_weights():
    model = bf16_model()
    bits = model.with_weight_bits()
    assert {a.dtype for a in jax.tree_util.tree_leaves(bits.blocks)} == {jnp.dtype(jnp.uint16)}
    for layer in range(model.cfg.n_layers):
        want, got = model.layer(jnp.int32(layer)), bits.layer(jnp.int32(layer))
        for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
            assert b.dtype == jnp.bfloat16
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    f32 = random_model(make_cfg(SPEC), 3)
    assert f32.with_weight_bits() is f32


def test_bf16_sweep_equals_the_loop_and_copies_no_weights(monkeypatch):
    model = bf16_model()
    cfg = model.cfg
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.d_vocab, (3, 6))
    groups = [[f"{a}.{h}"] for a in range(cfg.n_layers) for h in range(cfg.n_heads)]
    groups += [["0.1", "2.0"], ["mlp1", "3.2"], ["1.1@4"]]
    mask_set = weighted_set(cfg, groups, rng)
    repl = jaxablate.mean_replacement(model, rng.integers(0, cfg.d_vocab, (4, 6)))
    metric = jaxablate.metrics.logit_diff([1, 2, 3], [4, 5, 6])
    texts = []
    run_chunk = engine_lib._run_chunk

    def compiled(*args):
        texts.append(run_chunk.lower(*args).compile().compiled.as_text())
        return run_chunk(*args)

    monkeypatch.setattr(engine_lib, "_run_chunk", compiled)
    got = jaxablate.sweep(model, tokens, mask_set, repl, metric, 5)
    # The same bfloat16 weights through a loop of forwards. Both programs round the float32
    # activations to bfloat16 at each matmul; they sum in other orders (prefix reuse), which
    # can flip such a rounding (2^-8 = 3.9e-3 relative) at each of the 2 x n_layers matmul
    # inputs an ablation passes through: 8 x 3.9e-3 = 3e-2 of the metric's scale.
    correct, wrong, rows = np.array([1, 2, 3]), np.array([4, 5, 6]), np.arange(3)
    want = []
    for i in range(len(mask_set)):
        logits = np.asarray(jaxablate.forward(model, tokens, mask_set.mask(i), repl,
                                              positions=-1), np.float32)[:, 0]
        want.append(logits[rows, correct] - logits[rows, wrong])
    want = np.stack(want)
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-2 * scale)
    # Without the bits (the old path): the same numbers, to float32 rounding.
    monkeypatch.setattr(gpt2_lib.GPT2, "with_weight_bits", lambda self: self)
    old = jaxablate.sweep(model, tokens, mask_set, repl, metric, 5)
    np.testing.assert_allclose(got, old, rtol=0, atol=1e-6 * scale)
    # No compiled chunk of the bits path writes a float32 (or uint16) copy of a weight
    # stack (an array of a `Blocks` field's shape [n_layers, ...]); the old path did.
    shapes = {",".join(map(str, a.shape)) for a in jax.tree_util.tree_leaves(model.blocks)
              if a.ndim >= 2}
    stack = re.compile(r"= (f32|u16)\[(" + "|".join(shapes) + r")\]\S* (convert|fusion|"
                       r"bitcast-convert)\(")
    n_bits_path = len(texts) // 2
    assert n_bits_path and not any(stack.search(t) for t in texts[:n_bits_path])
    assert any(stack.search(t) for t in texts[n_bits_path:])
