"""Per-mask replacement values (a leading mask axis: mask n is blended towards its own values,
as optimal ablation's constants are) on every computation path of `sweep`, against a plain
loop of `jaxablate.forward` with `replacement.for_mask(n)`.

The models, mask sets and reference loop are `test_engine_paths.py`'s: 3-5 layers,
keep-weights drawn per component in (0.05, 0.95), mixed kinds, chunks that straddle layers.
Multi-layer masks never take the parent path with per-mask values (a parent's ablation would
differ from child to child); the recorder checks that and that the other paths did run.

Tolerance: ATOL = 1e-5, float32 rounding between two compiled programs (test_engine.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_engine_paths import (ATOL, METRIC_PER_CONFIG, Recorder, across_configs,
                               both_on_the_deepest, components, ja_metric, make_setup,
                               np_metric, weighted_set)

import jaxablate
from jaxablate import masks, metrics
from jaxablate.model.replacement import Replacement

FIELDS = ("z", "mlp_out", "post", "resid", "resid_mid", "q", "k", "v")


@pytest.fixture(scope="module", params=[0, 1, 2], ids=["3L", "4L", "5L"])
def setup(request):
    yield make_setup(request.param)
    jax.clear_caches()


def per_mask_values(cfg, n, seq, rng, batch=None, seq_axis=None):
    """Random finite values for every field, one set per mask ([n, (batch,) layer, seq|1,
    ...]); seq_axis=1 gives one value over positions."""
    shapes = {"z": (cfg.n_heads, cfg.d_head), "mlp_out": (cfg.d_model,), "post": (cfg.d_mlp,),
              "resid": (cfg.d_model,), "resid_mid": (cfg.d_model,),
              "q": (cfg.n_heads, cfg.d_head), "k": (cfg.n_heads, cfg.d_head),
              "v": (cfg.n_heads, cfg.d_head)}
    lead = (n,) if batch is None else (n, batch)
    width = seq if seq_axis is None else 1
    values = {f: jnp.asarray(rng.standard_normal(lead + (cfg.n_layers, width) + s)
                             .astype(np.float32)) for f, s in shapes.items()}
    return Replacement(**values, per_mask=True, per_example=batch is not None)


def loop(model, tokens, mask_set, replacement, metric_name, correct, wrong):
    """One `jaxablate.forward` per mask, each with its own values."""
    clean = np.asarray(jaxablate.forward(model, tokens), np.float64)
    out = []
    for i in range(len(mask_set)):
        logits = np.asarray(jaxablate.forward(model, tokens, mask_set.mask(i),
                                              replacement.for_mask(i)), np.float64)
        out.append(np_metric(metric_name, logits, clean, tokens, correct, wrong))
    return np.stack(out)


def check(setup, monkeypatch, mask_set, replacement, metric_name, chunk_size):
    """sweep equals the loop at `chunk_size`, with the whole set in one chunk and without
    prefix reuse; returns the recorder of the prefix-reusing sweeps."""
    cfg, model, tokens, correct, wrong, _ = setup
    metric = ja_metric(metric_name, correct, wrong)
    want = loop(model, tokens, mask_set, replacement, metric_name, correct, wrong)
    recorder = Recorder(monkeypatch)
    for size in (chunk_size, len(mask_set)):
        got = jaxablate.sweep(model, tokens, mask_set, replacement, metric, size)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"chunk_size={size}")
    assert recorder.trajectories == 0 and not recorder.took(parent=True, attended=True) \
        and not recorder.took(parent=True, attended=False), "a parent ran for per-mask values"
    plain = jaxablate.sweep(model, tokens, mask_set, replacement, metric, chunk_size,
                            reuse_prefix=False)
    np.testing.assert_allclose(plain, want, rtol=0, atol=ATOL, err_msg="reuse_prefix=False")
    return recorder


# Values per position on 3 and 5 layers, one over positions on 4 and 5 (test_engine_paths's
# across_configs: each (config, values) pair compiles its own programs).
@across_configs("seq_axis", both_on_the_deepest(None, 1),
                {None: "per-position", 1: "one-over-positions"})
def test_single_heads_reuse_attention_in_straddling_chunks(setup, monkeypatch, seq_axis):
    cfg, seq = setup[0], setup[2].shape[1]
    rng = np.random.default_rng(1)
    ms = weighted_set(cfg, [[c] for c in components(cfg, ("heads",))], rng)
    repl = per_mask_values(cfg, len(ms), seq, rng, seq_axis=seq_axis)
    recorder = check(setup, monkeypatch, ms, repl, "logit_diff", cfg.n_heads + 1)
    assert recorder.took(parent=False, attended=True)
    assert len({c["start"] for c in recorder.chunks}) > 1  # chunks resumed at several layers


@across_configs("metric_name", METRIC_PER_CONFIG)  # one metric per config
def test_every_kind_with_row_skipping(setup, monkeypatch, metric_name):
    cfg, seq = setup[0], setup[2].shape[1]
    rng = np.random.default_rng(2)
    kinds = ("heads", "head_positions", "mlps", "neurons", "positions")
    ms = weighted_set(cfg, [[c] for c in components(cfg, kinds)], rng)
    repl = per_mask_values(cfg, len(ms), seq, rng)
    recorder = check(setup, monkeypatch, ms, repl, metric_name, 7)
    assert recorder.took(parent=False, attended=False)


def test_multi_layer_masks_resume_from_the_clean_stream(setup, monkeypatch):
    """Pairs and triples that would share parents with one replacement."""
    cfg, seq = setup[0], setup[2].shape[1]
    rng = np.random.default_rng(3)
    heads = components(cfg, ("heads",))
    mlps = components(cfg, ("mlps",))
    groups = [[heads[0], h] for h in heads[cfg.n_heads:]] + \
             [[heads[1], mlps[1], mlps[-1]], [mlps[0], heads[-1]]]
    ms = weighted_set(cfg, groups, rng)
    repl = per_mask_values(cfg, len(ms), seq, rng, seq_axis=1)
    # The same set with one shared replacement does take the parent path (the case per-mask
    # values must not take).
    shared = Recorder(monkeypatch)
    jaxablate.sweep(setup[1], setup[2], ms, repl.for_mask(0), metrics.logit_diff(*setup[3:5]), 5)
    assert shared.trajectories > 0
    check(setup, monkeypatch, ms, repl, "logit_diff", 5)


def test_per_mask_and_per_example_values(setup, monkeypatch):
    cfg, tokens = setup[0], setup[2]
    rng = np.random.default_rng(4)
    kinds = ("heads", "mlps", "positions", "neurons")
    ms = weighted_set(cfg, [[c] for c in components(cfg, kinds)], rng)
    repl = per_mask_values(cfg, len(ms), tokens.shape[1], rng, batch=len(tokens))
    check(setup, monkeypatch, ms, repl, "kl_to_clean", 6)


def test_patching_kinds(monkeypatch):
    setup = make_setup(1)
    cfg, seq = setup[0], setup[2].shape[1]
    rng = np.random.default_rng(5)
    kinds = ("mid_positions", "mlp_positions", "q_positions", "k_positions", "v_positions")
    ms = weighted_set(cfg, [[c] for c in components(cfg, kinds)], rng)
    check(setup, monkeypatch, ms, per_mask_values(cfg, len(ms), seq, rng), "logit_diff", 9)


def test_store_resumes_and_keys_per_mask_values(tmp_path):
    cfg, model, tokens, correct, wrong, _ = make_setup(0)
    rng = np.random.default_rng(6)
    ms = masks.single_heads(cfg)
    repl = per_mask_values(cfg, len(ms), tokens.shape[1], rng, seq_axis=1)
    metric = metrics.logit_diff(correct, wrong)
    want = jaxablate.sweep(model, tokens, ms, repl, metric, 4)
    stored = jaxablate.sweep(model, tokens, ms, repl, metric, 4, store=tmp_path / "s")
    np.testing.assert_array_equal(stored, want)
    other = Replacement(z=repl.z + 1.0, per_mask=True)
    with pytest.raises(jaxablate.StoreMismatchError):
        jaxablate.sweep(model, tokens, ms, other, metric, 4, store=tmp_path / "s")


def test_bad_per_mask_values_are_refused_before_compiling():
    from conftest import nothing_compiles

    cfg, model, tokens, correct, wrong, _ = make_setup(0)
    rng = np.random.default_rng(7)
    ms = masks.single_heads(cfg)
    metric = metrics.logit_diff(correct, wrong)
    wrong_n = per_mask_values(cfg, len(ms) + 1, tokens.shape[1], rng, seq_axis=1)
    with nothing_compiles():
        with pytest.raises(jaxablate.InputError, match=f"per-mask values for {len(ms) + 1} "
                           f"masks, but the sweep runs {len(ms)}"):
            jaxablate.sweep(model, tokens, ms, wrong_n, metric)
        right = per_mask_values(cfg, len(ms), tokens.shape[1], rng, seq_axis=1)
        with pytest.raises(jaxablate.InputError, match="for_mask"):
            jaxablate.forward(model, tokens, ms.mask(0), right)
        with pytest.raises(jaxablate.InputError, match="shared by every mask"):
            jaxablate.zero_replacement(model).for_mask(0)
