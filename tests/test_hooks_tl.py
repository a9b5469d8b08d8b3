"""Every common TransformerLens hook of GPT-2, read from jaxablate's `Cache` by its TL name,
equals TransformerLens 3.9's own `run_with_cache` on the same weights (TL built offline with
nothing folded, conftest.tl_from_hf), clean and under an ablation applied by TL hooks.

TL's `ActivationCache` is the reference for indexing too: `cache[name, layer]` must pick what
TL's `cache[name, layer]` picks (its `utils.get_act_name` shorthand).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import make_hf_model, nothing_compiles, tiny_hf_config, tl_from_hf

import jaxablate
from jaxablate import InputError, Mask
from jaxablate.model.gpt2 import ACTIVATIONS

ATOL = 1e-4
SEQ = 11
# The hooks of TL's GPT-2 jaxablate records, per block and for the whole model.
BLOCK_HOOKS = ("hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v",
               "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
               "hook_resid_mid", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out",
               "hook_resid_post")
MODEL_HOOKS = ("hook_embed", "hook_pos_embed", "ln_final.hook_normalized")
# TL hooks jaxablate does not record (LayerNorm scales and the blocks' LayerNorm outputs,
# the unembedding's input and output): listed so a new TL hook is noticed.
NOT_RECORDED = ("ln1.hook_scale", "ln1.hook_normalized", "ln2.hook_scale",
                "ln2.hook_normalized", "ln_final.hook_scale", "unembed.hook_in",
                "unembed.hook_out")


def _models(n_layers: int, seed: int):
    hf = make_hf_model(tiny_hf_config(n_layer=n_layers), seed=seed)
    return jaxablate.load_gpt2(hf), tl_from_hf(hf)


@pytest.fixture(scope="module", params=[3, 5], ids=["3 layers", "5 layers"])
def models(request):
    return _models(request.param, seed=10 + request.param)


@pytest.fixture(scope="module")
def three():
    return _models(3, seed=21)


def _tokens(cfg, seed=0, batch=2):
    return np.random.default_rng(seed).integers(0, cfg.d_vocab, (batch, SEQ)).astype(np.int32)


def _tl_cache(tl, tokens, fwd_hooks=()):
    with torch.no_grad(), tl.hooks(fwd_hooks=list(fwd_hooks)):
        logits, cache = tl.run_with_cache(torch.as_tensor(tokens, dtype=torch.long))
    return logits.numpy(), {name: value.numpy() for name, value in cache.items()}


@pytest.fixture(scope="module")
def full(three):
    """The 3-layer model's cache of everything (batch 3) and TL's own ActivationCache."""
    model, tl = three
    tokens = _tokens(model.cfg, seed=4, batch=3)
    with torch.no_grad():
        _, tl_cache = tl.run_with_cache(torch.as_tensor(tokens, dtype=torch.long))
    return jaxablate.run_with_cache(model, tokens, names=None)[1], tl_cache


def _assert_equal_to_tl(ours, theirs, name):
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
    # attn_scores hold -inf above the diagonal in both (TL's apply_causal_mask): the same
    # entries, exactly; every finite value to ATOL.
    finite = np.isfinite(theirs)
    np.testing.assert_array_equal(np.isfinite(ours), finite, err_msg=name)
    np.testing.assert_array_equal(ours[~finite], theirs[~finite], err_msg=name)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=0, atol=ATOL, err_msg=name)


def _names(n_layers):
    return (["hook_embed", "hook_pos_embed"]
            + [f"blocks.{layer}.{hook}" for layer in range(n_layers) for hook in BLOCK_HOOKS]
            + ["ln_final.hook_normalized"])


def test_every_hook_equals_transformer_lens(models):
    model, tl = models
    tokens = _tokens(model.cfg)
    logits, cache = jaxablate.run_with_cache(model, tokens, names=None)
    tl_logits, tl_cache = _tl_cache(tl, tokens)
    np.testing.assert_allclose(np.asarray(logits), tl_logits, rtol=0, atol=ATOL)
    names = _names(model.cfg.n_layers)
    # keys() lists them in TL's order; TL has these and only the listed others.
    assert cache.keys() == [n for n in tl_cache if n in set(names)] == names
    rest = {n.split(".", 2)[-1] if n.startswith("blocks.") else n
            for n in set(tl_cache) - set(names)}
    assert rest == set(NOT_RECORDED), rest
    for name in names:
        _assert_equal_to_tl(cache[name], tl_cache[name], name)
        np.testing.assert_array_equal(np.asarray(cache[name]), np.asarray(cache.hook(name)))


def test_shapes_are_tls(three, full):
    c, cache = three[0].cfg, full[0]
    stream, heads, pattern = (3, SEQ, c.d_model), (3, SEQ, c.n_heads, c.d_head), \
        (3, c.n_heads, SEQ, SEQ)
    want = {"hook_resid_pre": stream, "attn.hook_q": heads, "attn.hook_k": heads,
            "attn.hook_v": heads, "attn.hook_attn_scores": pattern,
            "attn.hook_pattern": pattern, "attn.hook_z": heads, "hook_attn_out": stream,
            "hook_resid_mid": stream, "mlp.hook_pre": (3, SEQ, c.d_mlp),
            "mlp.hook_post": (3, SEQ, c.d_mlp), "hook_mlp_out": stream,
            "hook_resid_post": stream}
    assert set(want) == set(BLOCK_HOOKS)
    for hook, shape in want.items():
        assert cache[f"blocks.2.{hook}"].shape == shape, hook
    for name in MODEL_HOOKS:
        assert cache[name].shape == stream, name


def test_attn_scores_follow_tls_convention(three):
    # Scaled scores, -inf exactly above the diagonal and nowhere else; their softmax is the
    # pattern (computed here in numpy).
    model, _ = three
    _, cache = jaxablate.run_with_cache(model, _tokens(model.cfg, seed=3),
                                        names=("attn_scores", "pattern"))
    scores = np.asarray(cache["blocks.1.attn.hook_attn_scores"], np.float64)
    above = np.triu(np.ones((SEQ, SEQ), bool), k=1)
    assert np.isneginf(scores[..., above]).all() and np.isfinite(scores[..., ~above]).all()
    shifted = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(cache["blocks.1.attn.hook_pattern"]),
                               shifted / shifted.sum(-1, keepdims=True), rtol=0, atol=1e-6)


@pytest.mark.parametrize("key", [("z", 0), ("pattern", 2), ("attn", 1), ("attn_scores", -1),
                                 ("attn_logits", 0), ("pre", 2), ("mlp_post", 1),
                                 ("resid_post", -2), ("resid_pre", 0), ("q", 1), ("key", 2),
                                 ("value", 0), ("mlp_out", 1), ("attn_out", 2)])
def test_tuple_keys_pick_what_tls_cache_picks(full, key):
    cache, tl_cache = full
    _assert_equal_to_tl(cache[key], tl_cache[key].numpy(), str(key))


def test_names_by_hook_collect_only_those_fields(three):
    model, tl = three
    tokens = _tokens(model.cfg, seed=5)
    _, cache = jaxablate.run_with_cache(
        model, tokens, names=("blocks.1.mlp.hook_pre", "hook_embed", "attn_out"))
    _, tl_cache = _tl_cache(tl, tokens)
    held = {f for f in ACTIVATIONS if getattr(cache, f) is not None}
    assert held == {"pre", "embed", "attn_out"}
    # a hook name collects its field at every layer
    for name in ("blocks.0.mlp.hook_pre", "blocks.2.mlp.hook_pre", "hook_embed",
                 "blocks.2.hook_attn_out"):
        _assert_equal_to_tl(cache[name], tl_cache[name], name)
    with pytest.raises(InputError, match="'post' was not collected"):
        cache["blocks.0.mlp.hook_post"]


def test_the_default_names_are_kept(three):
    model, _ = three
    _, cache = jaxablate.run_with_cache(model, _tokens(model.cfg))
    held = {f for f in ACTIVATIONS if getattr(cache, f) is not None}
    assert held == {"resid_pre", "z", "post", "mlp_out"}


def test_an_ablated_run_equals_tl_with_the_same_hooks(three):
    """Head 0.1 zeroed (its z), head 2.3 at position 4 zeroed, MLP 1 zeroed, the stream
    entering layer 2 at position 3 zeroed: jaxablate's mask against TL hooks doing the same,
    every hook of both caches compared (TL caches the value after the user's hook)."""
    model, tl = three
    c = model.cfg
    tokens = _tokens(c, seed=6)
    heads = np.ones((c.n_layers, c.n_heads), np.float32)
    heads[0, 1] = 0.0
    head_positions = np.ones((c.n_layers, SEQ, c.n_heads), np.float32)
    head_positions[2, 4, 3] = 0.0
    mlps = np.ones(c.n_layers, np.float32)
    mlps[1] = 0.0
    positions = np.ones((c.n_layers, SEQ), np.float32)
    positions[2, 3] = 0.0
    mask = Mask(heads=jnp.asarray(heads), head_positions=jnp.asarray(head_positions),
                mlps=jnp.asarray(mlps), positions=jnp.asarray(positions))

    def zero_head(z, hook):
        z[:, :, 1] = 0.0
        return z

    def zero_head_at(z, hook):
        z[:, 4, 3] = 0.0
        return z

    def zero(x, hook):
        return torch.zeros_like(x)

    def zero_position(x, hook):
        x = x.clone()
        x[:, 3] = 0.0
        return x

    fwd_hooks = [("blocks.0.attn.hook_z", zero_head), ("blocks.2.attn.hook_z", zero_head_at),
                 ("blocks.1.hook_mlp_out", zero), ("blocks.2.hook_resid_pre", zero_position)]
    tl_logits, tl_cache = _tl_cache(tl, tokens, fwd_hooks)
    clean_logits = _tl_cache(tl, tokens)[0]
    assert np.abs(tl_logits - clean_logits).max() > 1e-2  # the ablation changes the logits
    logits, cache = jaxablate.run_with_cache(model, tokens, mask,
                                             jaxablate.zero_replacement(model), names=None)
    np.testing.assert_allclose(np.asarray(logits), tl_logits, rtol=0, atol=ATOL)
    for name in _names(c.n_layers):
        _assert_equal_to_tl(cache[name], tl_cache[name], name)
    # Only resid_pre asked for: hook_resid_post of layer 1 is still TL's (the stream before
    # layer 2's position blend), not resid_pre's row 2.
    _, only = jaxablate.run_with_cache(model, tokens, mask, jaxablate.zero_replacement(model),
                                       names=("resid_pre",))
    _assert_equal_to_tl(only["blocks.1.hook_resid_post"], tl_cache["blocks.1.hook_resid_post"],
                        "blocks.1.hook_resid_post")
    _assert_equal_to_tl(only["blocks.2.hook_resid_pre"], tl_cache["blocks.2.hook_resid_pre"],
                        "blocks.2.hook_resid_pre")
    assert np.abs(np.asarray(only["blocks.1.hook_resid_post"])
                  - np.asarray(only["blocks.2.hook_resid_pre"])).max() > 1e-2


def test_resid_post_falls_back_to_resid_pre_without_a_stream_mask(three):
    model, tl = three
    tokens = _tokens(model.cfg, seed=7)
    _, cache = jaxablate.run_with_cache(model, tokens, names=("resid_pre",))
    _, tl_cache = _tl_cache(tl, tokens)
    assert cache.resid_post is None
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.hook_resid_post"
        _assert_equal_to_tl(cache[name], tl_cache[name], name)


@pytest.mark.parametrize("key, error, message", [
    ("blocks.0.hook_q", InputError, "unknown hook name 'blocks.0.hook_q'"),
    ("blocks.3.attn.hook_z", InputError, "layer 3 is out of range .* 3 layers"),
    ("ln_final.hook_scale", InputError, "unknown hook name"),
    (("z", 3), InputError, "layer 3 is out of range"),
    (("z", -4), InputError, "layer out of range for a model with 3 layers"),
    ("blocks.x.attn.hook_z", InputError, "unknown hook name"),
    (("scale", 0), InputError, "unknown activation 'scale'"),
    (3, TypeError, "expected a hook name or \\(name, layer\\)"),
    (("z", 1.0), TypeError, "expected a hook name or \\(name, layer\\)"),
])
def test_bad_keys_are_refused(full, key, error, message):
    with pytest.raises(error, match=message):
        full[0][key]


@pytest.mark.parametrize("names, error, message", [
    (("attn_result",), InputError, r"unknown activation names \['attn_result'\]"),
    (("blocks.7.attn.hook_z",), InputError, "layer 7 is out of range"),
    (("blocks.0.ln1.hook_scale",), InputError, "unknown hook name"),
    ((3,), TypeError, r"expected str entries, got \[3\]"),
    (7, TypeError, "names: expected a tuple"),
])
def test_bad_names_are_refused_before_compiling(three, names, error, message):
    model, _ = three
    with nothing_compiles(), pytest.raises(error, match=message):
        jaxablate.run_with_cache(model, _tokens(model.cfg), names=names)
