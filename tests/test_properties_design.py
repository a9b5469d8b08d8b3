"""Property tests of DESIGN.md's invariants that tests/test_engine_properties.py does not cover.

There: keep-all == clean through `forward`, sweep == loop, mask order, MaskSet == dense mask,
prefix reuse, blending towards a prompt's own activations. Here, over the same pool of small
random configs (its helpers are reused):

* keep-all masks inside a sweep give the clean metric (`clean_metric`), whatever the other
  masks of their chunk, and the results do not depend on the chunk size (1 vs 3) (on the
  fixed tiny model: tests/test_engine.py);
* m = 0 injects the replacement: replacing the whole residual stream entering layer L by
  another prompt's (per-example values, as resample ablation builds them) gives that
  prompt's clean metric;
* the blend is the stated interpolation: at the first ablated point the collected
  activation is exactly h at m = 1, exactly r at m = 0, and m h + (1 - m) r in between;
* the results store: any set of missing or damaged files, re-run, gives the uninterrupted
  numbers bit for bit.

ATOL = 1e-5: float32 rounding between two compiled programs (as in test_engine_properties).
Configs come from the two smallest shapes of the pool, so each program compiles at most twice.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_properties import (ATOL, BATCH, draw_masks, random_model, random_replacement,
                                    setups)

import jaxablate
from jaxablate import Mask, Replacement, masks, metrics
from jaxablate.store.results import ResultsStore, StoreWarning

SETTINGS = settings(max_examples=6, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def random_metric(cfg, rng):
    return metrics.logit_diff(rng.integers(0, cfg.d_vocab, BATCH),
                              rng.integers(0, cfg.d_vocab, BATCH))


@SETTINGS
@given(setups([0, 3]), st.data())
def test_keep_all_masks_in_a_sweep_give_the_clean_metric(setup, data):
    cfg, seq, seed, tokens = setup
    model = random_model(cfg, seed)
    rng = np.random.default_rng(seed + 3)
    replacement, metric = random_replacement(cfg, seq, rng), random_metric(cfg, rng)
    clean = jaxablate.clean_metric(model, tokens, metric)
    # Keep-all masks mixed into chunks with ablating ones (they resume with them).
    stacked = draw_masks(data, cfg, seq, 3)
    where = data.draw(st.lists(st.booleans(), min_size=3, max_size=3))
    stacked = jax.tree_util.tree_map(
        lambda a: jnp.where(jnp.asarray(where).reshape((3,) + (1,) * (a.ndim - 1)), 1.0, a),
        stacked)
    got = jaxablate.sweep(model, tokens, stacked, replacement, metric, chunk_size=3)
    for i in np.nonzero(where)[0]:
        np.testing.assert_allclose(got[i], clean, rtol=0, atol=ATOL)
    # Chunk size 1: the same numbers up to rounding.
    single = jaxablate.sweep(model, tokens, stacked, replacement, metric, chunk_size=1)
    np.testing.assert_allclose(single, got, rtol=0, atol=ATOL)


@SETTINGS
@given(setups([0, 3]), st.data())
def test_zero_keep_weight_injects_the_replacement(setup, data):
    # The whole residual stream entering layer L replaced by prompt B's: the output is B's.
    cfg, seq, seed, tokens = setup
    model = random_model(cfg, seed)
    layer = data.draw(st.integers(0, cfg.n_layers - 1))
    source = np.roll(tokens, 1, axis=0)  # example b takes example b-1's stream
    rng = np.random.default_rng(seed + 4)
    correct = rng.integers(0, cfg.d_vocab, BATCH)
    wrong = rng.integers(0, cfg.d_vocab, BATCH)
    metric = metrics.logit_diff(correct, wrong)
    logits, cache = jaxablate.run_with_cache(model, source, names=("resid_pre",))
    per_example = Replacement(resid=cache.resid_pre[:, :-1], kind="custom", per_example=True)
    everything = masks.from_components(cfg, [[f"resid{layer}@{p}" for p in range(seq)]],
                                       seq_len=seq)
    got = jaxablate.sweep(model, tokens, everything, per_example, metric)[0]
    rows = np.arange(BATCH)
    want = np.asarray(logits)[rows, -1, correct] - np.asarray(logits)[rows, -1, wrong]
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@SETTINGS
@given(setups([0, 3]), st.sampled_from(["heads", "mlps", "neurons"]), st.data())
def test_the_blend_interpolates_between_the_endpoints(setup, kind, data):
    cfg, seq, seed, tokens = setup
    model = random_model(cfg, seed)
    replacement = random_replacement(cfg, seq, np.random.default_rng(seed + 5))
    layer = data.draw(st.integers(0, cfg.n_layers - 1))
    weight = data.draw(st.floats(0.0, 1.0, width=32))
    name, field = {"heads": ("z", "z"), "mlps": ("mlp_out", "mlp_out"),
                   "neurons": ("post", "post")}[kind]
    _, clean = jaxablate.run_with_cache(model, tokens, names=(name,))
    h = np.asarray(getattr(clean, name))[:, layer]
    r = np.broadcast_to(np.asarray(getattr(replacement, field))[layer], h.shape[1:])
    shape = {"heads": (cfg.n_layers, cfg.n_heads), "mlps": (cfg.n_layers,),
             "neurons": (cfg.n_layers, cfg.d_mlp)}[kind]
    for m, exact in ((1.0, True), (0.0, True), (weight, False)):
        keep = np.ones(shape, np.float32)
        keep[layer] = m
        _, cache = jaxablate.run_with_cache(model, tokens, Mask(**{kind: jnp.asarray(keep)}),
                                            replacement, names=(name,))
        got = np.asarray(getattr(cache, name))[:, layer]
        want = np.float32(m) * h + np.float32(1 - np.float32(m)) * r
        if exact:
            np.testing.assert_array_equal(got, h if m == 1.0 else np.broadcast_to(r, h.shape))
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@SETTINGS
@given(st.integers(2, 12), st.data())
def test_any_interruption_resumes_to_the_same_numbers(tiny_model, tmp_path_factory, per_file,
                                                      data):
    # The tiny model and test_store.py's shapes: the compiled programs are shared.
    cfg = tiny_model.cfg
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    tokens = rng.integers(0, cfg.d_vocab, (4, 8)).astype(np.int32)
    replacement = jaxablate.mean_replacement(tiny_model, rng.integers(0, cfg.d_vocab, (6, 8)))
    metric = metrics.logit_diff(rng.integers(0, cfg.d_vocab, 4),
                                rng.integers(0, cfg.d_vocab, 4))
    mask_set = masks.concat([masks.single_heads(cfg), masks.head_pairs(cfg),
                             masks.single_mlps(cfg)])
    folder = tmp_path_factory.mktemp("resume")
    args = (tiny_model, tokens, mask_set, replacement, metric, 2)
    want = ResultsStore(folder).sweep(*args, masks_per_file=per_file)
    files = sorted((folder / "sweep").glob("chunk-*.npy"))
    gone = data.draw(st.lists(st.sampled_from(files), unique=True, max_size=len(files)))
    damaged = 0
    for path in gone:
        if data.draw(st.booleans()):
            path.unlink()  # never written
        else:
            path.write_bytes(path.read_bytes()[: data.draw(st.integers(0, 100))])
            damaged += 1
    store = ResultsStore(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        got = store.sweep(*args)  # the file size comes from the manifest
    assert len(caught) == damaged
    np.testing.assert_array_equal(got, want)
    assert (store.computed, store.reused) == (len(gone), len(files) - len(gone))
