"""The activation-patching mask kinds (mid_positions, mlp_positions, q/k/v_positions): their
names, shapes and checks, their cache hooks against TransformerLens, `patch_replacement`,
and the bad inputs of `jaxablate.patching` (refused on the host, one line, before compiling).

Numbers against TL: ATOL = 1e-4 (test_model_tl.py's contract). Numbers of two programs of
our own: 1e-5 (float32 rounding between two compiled programs, test_engine.py).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TINY, nothing_compiles

import jaxablate
from jaxablate import Mask, Replacement, masks, metrics, patching
from jaxablate.ablation.components import Component, parse_component
from jaxablate.model.mask import MASK_KINDS, POSITION_KINDS, REATTEND_BREAKING, kind_shapes

ATOL_TL = 1e-4
ATOL = 1e-5
BATCH, SEQ = 3, 5
NEW_KINDS = ("mid_positions", "mlp_positions", "q_positions", "k_positions", "v_positions")
FIELD = {"mid_positions": "resid_mid", "mlp_positions": "mlp_out", "q_positions": "q",
         "k_positions": "k", "v_positions": "v"}


@pytest.fixture(scope="module")
def prompts(tiny_model):
    rng = np.random.default_rng(11)
    vocab = tiny_model.cfg.d_vocab
    tokens = rng.integers(0, vocab, (BATCH, SEQ)).astype(np.int32)
    source = rng.integers(0, vocab, (BATCH, SEQ)).astype(np.int32)
    correct = rng.integers(0, vocab, BATCH)
    wrong = (correct + 1) % vocab
    return tokens, source, metrics.logit_diff(correct, wrong)


# ---------------------------------------------------------------------------------------------
# Names.


@pytest.mark.parametrize("name, kind, index", [
    ("mid4@7", "mid_positions", (4, 7)),
    ("mlp8@7", "mlp_positions", (8, 7)),
    ("5.2.q@7", "q_positions", (5, 7, 2)),
    ("5.2.k@7", "k_positions", (5, 7, 2)),
    ("5.2.v@7", "v_positions", (5, 7, 2)),
    ("0.0.q@0", "q_positions", (0, 0, 0)),
    ("11.10.v@123", "v_positions", (11, 123, 10)),
])
def test_names_round_trip(name, kind, index):
    c = parse_component(name)
    assert c == Component(kind, index), c
    assert c.name == name
    assert parse_component(c.name) == c
    assert Component(kind, index).name == name


@pytest.mark.parametrize("spec, name", [
    (("mid", 4, 7), "mid4@7"),
    (("mlp", 8, 7), "mlp8@7"),
    (("q", 5, 2, 7), "5.2.q@7"),
    (("k", 5, 2, 7), "5.2.k@7"),
    (("v", 5, 2, 7), "5.2.v@7"),
])
def test_tuple_forms(spec, name):
    assert parse_component(spec) == parse_component(name)
    assert parse_component(spec).name == name


def test_old_names_keep_their_kinds():
    # "mlp8" (the whole MLP) and "5.2@7" (z at a position) are not read as the new kinds.
    assert parse_component("mlp8") == Component("mlps", (8,))
    assert parse_component(("mlp", 8)) == Component("mlps", (8,))
    assert parse_component("5.2@7") == Component("head_positions", (5, 7, 2))
    assert parse_component("resid4@7") == Component("positions", (4, 7))


@pytest.mark.parametrize("bad", ["5.2.x@7", "5.2.q7", "mid4", "q5.2@7", ("q", 5, 2),
                                 ("mid", 4), ("v", 5, 2, "7")])
def test_malformed_names_are_refused(bad):
    with pytest.raises(jaxablate.InputError, match="unknown component") as caught:
        parse_component(bad)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name, what, value, limit", [
    ("mid2@0", "layer", 2, TINY["n_layer"]),
    ("mid0@5", "position", 5, SEQ),
    ("mlp2@1", "layer", 2, TINY["n_layer"]),
    ("mlp1@9", "position", 9, SEQ),
    ("2.0.q@1", "layer", 2, TINY["n_layer"]),
    ("0.4.q@1", "head", 4, TINY["n_head"]),
    ("1.1.k@5", "position", 5, SEQ),
    ("1.7.v@0", "head", 7, TINY["n_head"]),
])
def test_out_of_range_components_name_the_axis(tiny_model, name, what, value, limit):
    with nothing_compiles(), pytest.raises(jaxablate.InputError) as caught:
        masks.from_components(tiny_model.cfg, [name], seq_len=SEQ)
    assert str(caught.value) == (f"component {name!r}: {what} {value} is out of range "
                                 f"[0, {limit})")


@pytest.mark.parametrize("name", ["mid0@1", "mlp1@0", "0.1.q@2", "1.0.k@0", "1.3.v@4"])
def test_position_kinds_need_seq_len(tiny_model, name):
    with pytest.raises(jaxablate.InputError, match=f"{name!r} needs seq_len"):
        masks.from_components(tiny_model.cfg, [name])


# ---------------------------------------------------------------------------------------------
# Shapes and checks.


def test_kind_shapes_and_keep_all(tiny_model):
    cfg = tiny_model.cfg
    shapes = kind_shapes(cfg, seq_len=SEQ)
    want = {"mid_positions": (cfg.n_layers, SEQ), "mlp_positions": (cfg.n_layers, SEQ),
            "q_positions": (cfg.n_layers, SEQ, cfg.n_heads),
            "k_positions": (cfg.n_layers, SEQ, cfg.n_heads),
            "v_positions": (cfg.n_layers, SEQ, cfg.n_heads)}
    for kind, shape in want.items():
        assert kind in MASK_KINDS and kind in POSITION_KINDS
        assert shapes[kind] == shape, kind
    assert {"q_positions", "k_positions", "v_positions"} <= set(REATTEND_BREAKING)
    assert not {"mid_positions", "mlp_positions"} & set(REATTEND_BREAKING)
    keep = Mask.keep_all(cfg, NEW_KINDS, seq_len=SEQ)
    assert keep.kinds() == NEW_KINDS
    for kind, shape in want.items():
        value = np.asarray(getattr(keep, kind))
        assert value.shape == shape and value.dtype == np.float32, kind
        np.testing.assert_array_equal(value, 1.0)
    with pytest.raises(jaxablate.InputError, match=r"needs seq_len for \['mlp_positions', "
                                                   r"'v_positions'\]"):
        Mask.keep_all(cfg, ("heads", "mlp_positions", "v_positions"))


def test_keep_all_of_new_kinds_reproduces_clean(tiny_model, prompts):
    tokens, source, _ = prompts
    cfg = tiny_model.cfg
    repl = jaxablate.patch_replacement(tiny_model, source)
    clean = np.asarray(jaxablate.forward(tiny_model, tokens))
    for kind in NEW_KINDS:
        got = np.asarray(jaxablate.forward(tiny_model, tokens,
                                           Mask.keep_all(cfg, (kind,), seq_len=SEQ), repl))
        if kind == "mid_positions":  # fused into the MLP's LayerNorm (gpt2.ablate_mid)
            np.testing.assert_allclose(got, clean, rtol=0, atol=ATOL, err_msg=kind)
        else:
            np.testing.assert_array_equal(got, clean, err_msg=kind)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_mask_of_wrong_shape_is_refused(tiny_model, prompts, kind):
    tokens = prompts[0]
    cfg = tiny_model.cfg
    good = kind_shapes(cfg, seq_len=SEQ)[kind]
    bad = (good[0], SEQ + 1) + good[2:]
    repl = jaxablate.zero_replacement(tiny_model)
    axes = "layer, seq" if len(good) == 2 else "layer, seq, head"
    with nothing_compiles(), pytest.raises(jaxablate.InputError) as caught:
        jaxablate.forward(tiny_model, tokens, Mask(**{kind: jnp.ones(bad, jnp.float32)}), repl)
    message = str(caught.value)
    assert message.startswith(f"mask.{kind}: expected [{axes}] = {list(good)}, got {list(bad)}")
    assert "\n" not in message
    # stacked (a sweep of a dense Mask): the leading mask axis is named too
    with nothing_compiles(), pytest.raises(jaxablate.InputError) as caught:
        jaxablate.sweep(tiny_model, tokens, Mask(**{kind: jnp.ones((2,) + bad, jnp.float32)}),
                        repl, prompts[2])
    assert str(caught.value).startswith(f"mask.{kind}: expected [n, {axes}] = "
                                        f"{[2, *good]}, got {[2, *bad]}")


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_keep_weights_outside_unit_interval_are_refused(tiny_model, prompts, kind):
    tokens = prompts[0]
    shape = kind_shapes(tiny_model.cfg, seq_len=SEQ)[kind]
    bad = np.ones(shape, np.float32)
    bad[(0,) * len(shape)] = 1.5
    with nothing_compiles(), pytest.raises(jaxablate.InputError,
                                           match=rf"mask.{kind}: keep-weights must lie in"):
        jaxablate.forward(tiny_model, tokens, Mask(**{kind: jnp.asarray(bad)}),
                          jaxablate.zero_replacement(tiny_model))


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_replacement_without_the_field_names_it(tiny_model, prompts, kind):
    tokens = prompts[0]
    cfg = tiny_model.cfg
    full = jaxablate.zero_replacement(tiny_model)
    # every field but the one this kind needs
    others = {f: getattr(full, f) for f in ("z", "mlp_out", "post", "resid", "resid_mid",
                                            "q", "k", "v") if f != FIELD[kind]}
    mask = Mask.keep_all(cfg, (kind,), seq_len=SEQ)
    with nothing_compiles(), pytest.raises(jaxablate.InputError) as caught:
        jaxablate.forward(tiny_model, tokens, mask, Replacement(**others))
    assert str(caught.value).startswith(
        f"replacement has no {FIELD[kind]!r} values, needed to ablate {kind}")
    ndim = len(kind_shapes(cfg, seq_len=SEQ)[kind])
    ms = masks.from_components(cfg, [Component(kind, (0,) * ndim)], seq_len=SEQ)
    with nothing_compiles(), pytest.raises(jaxablate.InputError,
                                           match=f"no {FIELD[kind]!r} values"):
        jaxablate.sweep(tiny_model, tokens, ms, Replacement(**others), prompts[2])


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_replacement_of_wrong_shape_names_the_field(tiny_model, prompts, kind):
    tokens = prompts[0]
    cfg = tiny_model.cfg
    field = FIELD[kind]
    good = np.shape(getattr(jaxablate.zero_replacement(tiny_model), field))
    bad = good[:-1] + (good[-1] + 1,)
    with nothing_compiles(), pytest.raises(jaxablate.InputError,
                                           match=rf"replacement\.{field}: expected"):
        jaxablate.forward(tiny_model, tokens, Mask.keep_all(cfg, (kind,), seq_len=SEQ),
                          Replacement(**{field: jnp.zeros(bad, jnp.float32)}))


# ---------------------------------------------------------------------------------------------
# Cache hooks against TransformerLens.


@pytest.fixture(scope="module")
def caches(tiny_model, tiny_tl, prompts):
    tokens = prompts[0]
    logits, cache = jaxablate.run_with_cache(tiny_model, tokens,
                                             names=("q", "k", "v", "resid_mid"))
    with torch.no_grad():
        tl_logits, tl_cache = tiny_tl.run_with_cache(torch.as_tensor(tokens, dtype=torch.long))
    return (logits, cache), (tl_logits.numpy(), {k: v.numpy() for k, v in tl_cache.items()})


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("hook", ["attn.hook_q", "attn.hook_k", "attn.hook_v",
                                  "hook_resid_mid"])
def test_cache_hooks_equal_transformer_lens(caches, layer, hook):
    (logits, cache), (tl_logits, tl_cache) = caches
    name = f"blocks.{layer}.{hook}"
    ours, theirs = np.asarray(cache.hook(name)), tl_cache[name]
    assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL_TL, err_msg=name)
    np.testing.assert_allclose(np.asarray(logits), tl_logits, rtol=0, atol=ATOL_TL)
    field = {"attn.hook_q": "q", "attn.hook_k": "k", "attn.hook_v": "v",
             "hook_resid_mid": "resid_mid"}[hook]
    np.testing.assert_array_equal(ours, np.asarray(getattr(cache, field))[:, layer])


def test_cache_hook_refusals(caches):
    cache = caches[0][1]
    with pytest.raises(jaxablate.InputError, match="layer 2 is out of range"):
        cache.hook("blocks.2.attn.hook_q")
    with pytest.raises(jaxablate.InputError, match="'z' was not collected"):
        cache.hook("blocks.0.attn.hook_z")
    with pytest.raises(jaxablate.InputError, match="unknown hook name"):
        cache.hook("blocks.0.attn.hook_qq")


# ---------------------------------------------------------------------------------------------
# patch_replacement.


def test_patch_replacement_is_the_source_run(tiny_model):
    # 33 source prompts: more than one of patch_replacement's reference batches (32).
    rng = np.random.default_rng(5)
    source = rng.integers(0, tiny_model.cfg.d_vocab, (33, SEQ)).astype(np.int32)
    repl = jaxablate.patch_replacement(tiny_model, source)
    _, cache = jaxablate.run_with_cache(
        tiny_model, source, names=("resid_pre", "z", "post", "mlp_out", "resid_mid", "q", "k",
                                   "v"))
    assert repl.kind == "patch" and repl.per_example
    np.testing.assert_array_equal(np.asarray(repl.source_index), np.arange(33))
    want = {"z": cache.z, "post": cache.post, "mlp_out": cache.mlp_out,
            "resid": cache.resid_pre[:, :-1], "resid_mid": cache.resid_mid, "q": cache.q,
            "k": cache.k, "v": cache.v}
    for field, value in want.items():
        got = np.asarray(getattr(repl, field))
        assert got.shape == value.shape, field
        np.testing.assert_allclose(got, np.asarray(value), rtol=0, atol=ATOL, err_msg=field)
    assert repl.sae_features is None


@pytest.mark.parametrize("component", ["resid{L}@{p}", "mid{L}@{p}"])
def test_patching_every_position_of_the_stream_gives_the_source_run(tiny_model, prompts,
                                                                    component):
    # The stream entering (or halfway through) layer L, patched at every position, is the
    # source's: the rest of the run, and the logits, are the source's.
    tokens, source, _ = prompts
    repl = jaxablate.patch_replacement(tiny_model, source)
    want = np.asarray(jaxablate.forward(tiny_model, source))
    for layer in range(tiny_model.cfg.n_layers):
        group = [component.format(L=layer, p=p) for p in range(SEQ)]
        ms = masks.from_components(tiny_model.cfg, [group], seq_len=SEQ)
        got = np.asarray(jaxablate.forward(tiny_model, tokens, ms.mask(0), repl))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=str(group))


def test_patching_every_head_vector_gives_the_source_attention(tiny_model, prompts):
    # q, k and v of every head at every position of layer 0 patched: layer 0's attention
    # output is the source's, so the stream after it is the corrupted embedding plus the
    # source's attention output.
    tokens, source, _ = prompts
    cfg = tiny_model.cfg
    repl = jaxablate.patch_replacement(tiny_model, source)
    group = [f"0.{h}.{w}@{p}" for h in range(cfg.n_heads) for w in "qkv" for p in range(SEQ)]
    mask = masks.from_components(cfg, [group], seq_len=SEQ).mask(0)
    _, patched = jaxablate.run_with_cache(tiny_model, tokens, mask, repl,
                                          names=("z", "resid_mid", "resid_pre"))
    _, src = jaxablate.run_with_cache(tiny_model, source, names=("z", "resid_pre", "resid_mid"))
    np.testing.assert_allclose(np.asarray(patched.z[:, 0]), np.asarray(src.z[:, 0]), rtol=0,
                               atol=ATOL)
    attn_src = np.asarray(src.resid_mid[:, 0] - src.resid_pre[:, 0])
    np.testing.assert_allclose(np.asarray(patched.resid_mid[:, 0] - patched.resid_pre[:, 0]),
                               attn_src, rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# Bad inputs: refused on the host, in one line, before anything compiles.


def _other_sources(tokens):
    return {"batch": np.concatenate([tokens, tokens[:1]]), "length": tokens[:, :-1],
            "length 1": tokens[:, :1], "one example": tokens[:1]}


@pytest.mark.parametrize("name", patching.FUNCTIONS)
def test_patching_refuses_unpaired_sources(tiny_model, prompts, name):
    tokens, _, metric = prompts
    function = getattr(patching, name)
    for what, source in _other_sources(tokens).items():
        with nothing_compiles(), pytest.raises(jaxablate.InputError) as caught:
            function(tiny_model, tokens, source, metric)
        message = str(caught.value)
        assert "\n" not in message, message
        assert message.startswith(f"source_tokens: expected [batch, seq] = {list(tokens.shape)}"
                                  f" like tokens, got {list(source.shape)}"), (what, message)
        assert "pairs example i" in message


@pytest.mark.parametrize("name", ["resid_pre", "attn_head_k_all_pos"])
def test_patching_refuses_bad_source_ids_and_metrics(tiny_model, prompts, name):
    tokens, source, metric = prompts
    function = getattr(patching, name)
    bad = source.copy()
    bad[0, 0] = tiny_model.cfg.d_vocab
    with nothing_compiles(), pytest.raises(jaxablate.InputError,
                                           match=r"^source_tokens: tokens: id \d+ is outside"):
        function(tiny_model, tokens, bad, metric)
    with nothing_compiles(), pytest.raises(jaxablate.InputError, match=r"^tokens: expected int"):
        function(tiny_model, tokens[0], source, metric)
    with nothing_compiles(), pytest.raises(jaxablate.InputTypeError,
                                           match="the function jaxablate.metrics.logit_diff"):
        function(tiny_model, tokens, source, metrics.logit_diff)  # an uncalled factory


@pytest.mark.parametrize("name", ["resid_pre", "attn_head_q_by_pos", "block_every"])
def test_patching_refuses_bad_sweep_options_before_compiling(tiny_model, prompts, name):
    tokens, source, metric = prompts
    function = getattr(patching, name)
    with nothing_compiles(), pytest.raises(jaxablate.InputError, match="chunk_size"):
        function(tiny_model, tokens, source, metric, chunk_size=0)
    with nothing_compiles(), pytest.raises(jaxablate.InputTypeError, match="progress"):
        function(tiny_model, tokens, source, metric, progress="yes")
    with nothing_compiles(), pytest.raises(jaxablate.InputTypeError,
                                           match=r"unexpected keyword arguments \['chunk'\]"):
        function(tiny_model, tokens, source, metric, chunk=4)
    with nothing_compiles(), pytest.raises(jaxablate.InputError, match="devices"):
        function(tiny_model, tokens, source, metric, devices=99)


@pytest.fixture(scope="module")
def other_replacements(tiny_model, prompts):
    """patch_replacement of sources that do not pair with `prompts` (built before the test's
    no-compilation window: building them runs the source prompts)."""
    tokens = prompts[0]
    return {what: (source.shape, jaxablate.patch_replacement(tiny_model, source))
            for what, source in _other_sources(tokens).items()}


@pytest.mark.parametrize("what", ["batch", "length", "length 1", "one example"])
@pytest.mark.parametrize("component", ["resid1@2", "mid0@3", "mlp1@4", "0.1.q@2", "1.2.k@0",
                                       "1.3.v@1", "0.2@1", "mlp0"])
def test_sweep_refuses_a_patch_replacement_of_other_prompts(tiny_model, prompts,
                                                           other_replacements, what,
                                                           component):
    tokens, _, metric = prompts
    shape, repl = other_replacements[what]
    ms = masks.from_components(tiny_model.cfg, [component], seq_len=SEQ)
    for call in (lambda: jaxablate.sweep(tiny_model, tokens, ms, repl, metric),
                 lambda: jaxablate.forward(tiny_model, tokens, ms.mask(0), repl)):
        with nothing_compiles(), pytest.raises(jaxablate.InputError) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message, message
        assert (f"the source prompts have shape {list(shape)} and the evaluated ones "
                f"{list(tokens.shape)}") in message, message
        assert "pairs them by index" in message, message
