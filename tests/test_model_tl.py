"""Logits and activations equal TransformerLens's `run_with_cache` on the same weights.

TL is built offline from the same HF model with nothing folded (conftest.tl_from_hf), so every
hook sees the un-processed activation jaxablate blends at its ablation points.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jaxablate

ATOL = 1e-4
ALL_NAMES = ("resid_pre", "z", "post", "mlp_out", "pattern")
HOOKS = ("attn.hook_z", "hook_mlp_out", "mlp.hook_post", "hook_resid_pre", "attn.hook_pattern")


@pytest.fixture(scope="module")
def tokens(tiny_hf):
    rng = np.random.default_rng(7)
    return rng.integers(0, tiny_hf.config.vocab_size, size=(2, 23), dtype=np.int32)


@pytest.fixture(scope="module")
def tl_run(tiny_tl, tokens):
    with torch.no_grad():
        logits, cache = tiny_tl.run_with_cache(torch.as_tensor(tokens, dtype=torch.long))
    return logits.numpy(), {name: value.numpy() for name, value in cache.items()}


@pytest.fixture(scope="module")
def ja_run(tiny_model, tokens):
    return jaxablate.run_with_cache(tiny_model, tokens, names=ALL_NAMES)


def test_logits_match_tl(ja_run, tl_run):
    np.testing.assert_allclose(np.asarray(ja_run[0]), tl_run[0], rtol=0, atol=ATOL)


def test_forward_matches_tl(tiny_model, tokens, tl_run):
    np.testing.assert_allclose(np.asarray(jaxablate.forward(tiny_model, tokens)), tl_run[0],
                               rtol=0, atol=ATOL)


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("hook", HOOKS)
def test_hook_values_match_tl(ja_run, tl_run, layer, hook):
    name = f"blocks.{layer}.{hook}"
    ours = np.asarray(ja_run[1].hook(name))
    theirs = tl_run[1][name]
    assert ours.shape == theirs.shape, name
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL, err_msg=name)


def test_pattern_is_causal_and_normalised(ja_run):
    pattern = np.asarray(ja_run[1].hook("blocks.1.attn.hook_pattern"))  # [batch, head, q, k]
    seq = pattern.shape[-1]
    np.testing.assert_array_equal(pattern * np.triu(np.ones((seq, seq)), k=1), 0.0)
    np.testing.assert_allclose(pattern.sum(-1), 1.0, rtol=0, atol=1e-6)


def test_final_residual_row_matches_tl_resid_post(ja_run, tl_run, tiny_model):
    # Row n_layers of resid_pre is the final residual stream, which TL names the last
    # block's hook_resid_post (blocks.{n_layers}.hook_resid_pre is no TL name: refused).
    last = tiny_model.cfg.n_layers
    want = tl_run[1][f"blocks.{last - 1}.hook_resid_post"]
    np.testing.assert_allclose(np.asarray(ja_run[1].resid_pre[:, last]), want, rtol=0,
                               atol=ATOL)
    np.testing.assert_allclose(np.asarray(ja_run[1].hook(f"blocks.{last - 1}.hook_resid_post")),
                               want, rtol=0, atol=ATOL)


def test_cache_collects_only_named(tiny_model, tokens, tl_run):
    logits, cache = jaxablate.run_with_cache(tiny_model, tokens, names=("z",))
    np.testing.assert_allclose(np.asarray(logits), tl_run[0], rtol=0, atol=ATOL)
    assert cache.post is None and cache.pattern is None
    np.testing.assert_allclose(np.asarray(cache.hook("blocks.0.attn.hook_z")),
                               tl_run[1]["blocks.0.attn.hook_z"], rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="'post' was not collected"):
        cache.hook("blocks.0.mlp.hook_post")
    with pytest.raises(ValueError, match="unknown hook name 'blocks.0.hook_q'"):
        cache.hook("blocks.0.hook_q")
    with pytest.raises(ValueError, match=r"unknown activation names \['attn_result'\]"):
        jaxablate.run_with_cache(tiny_model, tokens, names=("attn_result",))
