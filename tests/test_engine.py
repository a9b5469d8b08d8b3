"""The sweep engine against two paths of our own code and hand-built references.

* a keep-all mask reproduces the clean forward bit for bit;
* `sweep` equals a Python loop of single ablated `jaxablate.forward` calls, for any chunk size,
  mask order, with and without clean-prefix reuse, and for fractional keep-weights;
* one compiled program serves different masks, chunks and layer groups (traces counted);
* SAE feature ablation equals subtracting a_f * W_dec[f] in a TransformerLens hook;
* mask-set constructors: counts, enumeration order, names, materialisation;
* resample replacements: reproducible from the key, never an example's own values.

Tolerances: comparisons between two different compiled programs (sweep vs forward, chunk
sizes, prefix reuse) differ only by float32 rounding of differently fused code, ~1e-6 on
logits of order 1; ENGINE_ATOL = 1e-5 leaves a margin of 10 and still catches any wrong blend.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxablate
from jaxablate import Component, GPT2Config, Mask, masks, metrics, parse_component
from jaxablate.model.mask import MASK_KINDS as KINDS

ENGINE_ATOL = 1e-5  # float32 rounding between two compiled programs (see module docstring)
TL_ATOL = 1e-4  # against TransformerLens, as in test_engine_tl.py

SEQ = 8
BATCH = 3
ALL_KINDS = ("heads", "head_positions", "mlps", "neurons", "positions")
# Every kind whose keep-all mask is bit-for-bit clean: all but mid_positions, the one blend
# inside a block (XLA fuses it into the MLP's LayerNorm: same numbers to float32 rounding).
BITWISE_KINDS = tuple(k for k in KINDS if k not in ("mid_positions", "sae_features"))

# Ablations as component tuples (read by jaxablate's parse_component and by `hand_mask` below).
MIXED = [
    [("head", 0, 1)],
    [("head", 1, 3)],
    [("head", 0, 0), ("head", 1, 2)],
    [("mlp", 0)],
    [("mlp", 1)],
    [("neuron", 0, 5)],
    [("neuron", 1, 100), ("neuron", 1, 101)],
    [("resid", 0, 2)],
    [("resid", 1, SEQ - 1)],
    [("head", 1, 2, SEQ - 1)],
    [("head", 0, 3, 0), ("head", 0, 3, 4)],
    [("mlp", 0), ("head", 1, 1), ("neuron", 1, 3), ("resid", 1, 5)],
    [],  # a keep-all ("clean") mask in the middle of the set
]


# ---------------------------------------------------------------------------------------------
# Independent references built by hand.


def hand_mask(cfg, groups, weight, kinds, *, seq_len=SEQ, n_features=None):
    """Dense stacked keep-weights {kind: float32 [N, ...]} written out from the tuples."""
    shapes = {
        "heads": (cfg.n_layers, cfg.n_heads),
        "head_positions": (cfg.n_layers, seq_len, cfg.n_heads),
        "mlps": (cfg.n_layers,),
        "neurons": (cfg.n_layers, cfg.d_mlp),
        "positions": (cfg.n_layers, seq_len),
        "sae_features": (n_features,),
    }
    dense = {k: np.ones((len(groups),) + shapes[k], np.float32) for k in kinds}
    for n, group in enumerate(groups):
        for spec in group:
            if spec[0] == "head" and len(spec) == 3:
                dense["heads"][n, spec[1], spec[2]] = weight
            elif spec[0] == "head":
                dense["head_positions"][n, spec[1], spec[3], spec[2]] = weight
            elif spec[0] == "mlp":
                dense["mlps"][n, spec[1]] = weight
            elif spec[0] == "neuron":
                dense["neurons"][n, spec[1], spec[2]] = weight
            elif spec[0] == "resid":
                dense["positions"][n, spec[1], spec[2]] = weight
            elif spec[0] == "sae":
                dense["sae_features"][n, spec[1]] = weight
    return dense


def unstacked(dense, n):
    return Mask(**{k: jnp.asarray(v[n]) for k, v in dense.items()})


def log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_metric(name, logits, clean, tokens, correct, wrong):
    """The metric [batch] in float64 numpy from full logits [batch, seq, vocab]."""
    logits = np.asarray(logits, np.float64)
    rows = np.arange(len(tokens))
    if name == "logit_diff":
        return logits[rows, -1, correct] - logits[rows, -1, wrong]
    if name == "kl_to_clean":
        logp, logq = log_softmax(logits[:, -1]), log_softmax(clean[:, -1])
        return (np.exp(logq) * (logq - logp)).sum(-1)
    if name == "loss":
        logp = log_softmax(logits[:, :-1])
        picked = np.take_along_axis(logp, np.asarray(tokens, np.int64)[:, 1:, None], -1)
        return -picked[..., 0].mean(-1)
    raise AssertionError(name)


def ja_metric(name, correct, wrong):
    return {"logit_diff": lambda: metrics.logit_diff(correct, wrong),
            "kl_to_clean": lambda: metrics.kl_to_clean(),
            "loss": lambda: metrics.loss()}[name]()


def forward_loop(model, tokens, dense, replacement, name, correct, wrong):
    """Reference: one `jaxablate.forward` per mask, metric computed here."""
    clean = np.asarray(jaxablate.forward(model, tokens))
    n = len(next(iter(dense.values())))
    return np.stack([
        np_metric(name, jaxablate.forward(model, tokens, unstacked(dense, i), replacement),
                  clean, tokens, correct, wrong)
        for i in range(n)
    ])


# ---------------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="module")
def data(tiny_model):
    rng = np.random.default_rng(123)
    vocab = tiny_model.cfg.d_vocab
    tokens = rng.integers(0, vocab, (BATCH, SEQ), dtype=np.int32)
    reference = rng.integers(0, vocab, (5, SEQ), dtype=np.int32)
    correct = rng.integers(0, vocab, BATCH)
    wrong = (correct + rng.integers(1, vocab, BATCH)) % vocab
    return tokens, reference, correct, wrong


@pytest.fixture(scope="module")
def replacements(tiny_model, data):
    tokens, reference, _, _ = data
    return {
        "zero": jaxablate.zero_replacement(tiny_model),
        "mean": jaxablate.mean_replacement(tiny_model, reference),
        "mean_global": jaxablate.mean_replacement(tiny_model, reference, per_position=False),
        "resample": jaxablate.resample_replacement(tiny_model, tokens, jax.random.key(3)),
    }


@pytest.fixture(scope="module")
def mixed(tiny_model):
    return masks.from_components(tiny_model.cfg, MIXED, seq_len=SEQ)


# ---------------------------------------------------------------------------------------------
# Keep-all reproduces the clean forward exactly.


@pytest.mark.parametrize("kind", ["zero", "mean", "mean_global", "resample"])
def test_keep_all_every_kind_is_bitwise_clean(tiny_model, data, replacements, kind):
    tokens = data[0]
    keep = Mask.keep_all(tiny_model.cfg, BITWISE_KINDS, seq_len=SEQ)
    clean = jaxablate.forward(tiny_model, tokens)
    np.testing.assert_array_equal(
        np.asarray(jaxablate.forward(tiny_model, tokens, keep, replacements[kind])),
        np.asarray(clean))


@pytest.mark.parametrize("mask_kind", BITWISE_KINDS)
def test_keep_all_single_kind_is_bitwise_clean(tiny_model, data, replacements, mask_kind):
    tokens = data[0]
    keep = Mask.keep_all(tiny_model.cfg, (mask_kind,), seq_len=SEQ)
    np.testing.assert_array_equal(
        np.asarray(jaxablate.forward(tiny_model, tokens, keep, replacements["mean"])),
        np.asarray(jaxablate.forward(tiny_model, tokens)))


def test_keep_all_mid_positions_is_clean_to_rounding(tiny_model, data, replacements):
    tokens = data[0]
    keep = Mask.keep_all(tiny_model.cfg, KINDS[:5] + ("mid_positions",), seq_len=SEQ)
    np.testing.assert_allclose(
        np.asarray(jaxablate.forward(tiny_model, tokens, keep, replacements["zero"])),
        np.asarray(jaxablate.forward(tiny_model, tokens)), rtol=0, atol=ENGINE_ATOL)


def test_keep_all_defaults_and_shapes(tiny_model):
    cfg = tiny_model.cfg
    keep = Mask.keep_all(cfg)
    assert keep.kinds() == ("heads", "mlps", "neurons")
    assert keep.heads.shape == (2, 4) and keep.mlps.shape == (2,)
    assert keep.neurons.shape == (2, 128)
    full = Mask.keep_all(cfg, KINDS, seq_len=5, n_features=7)
    assert full.head_positions.shape == (2, 5, 4) and full.positions.shape == (2, 5)
    assert full.sae_features.shape == (7,)
    for kind in KINDS:
        np.testing.assert_array_equal(np.asarray(getattr(full, kind)), 1.0)


def test_clean_metric_equals_sweep_of_clean_mask(tiny_model, data, replacements):
    tokens, _, correct, wrong = data
    metric = metrics.logit_diff(correct, wrong)
    clean = jaxablate.clean_metric(tiny_model, tokens, metric)
    logits = np.asarray(jaxablate.forward(tiny_model, tokens))
    # clean_metric is the metric of the plain forward. The logit difference unembeds only the
    # two columns it reads (a [k, d] x [d, 2] product instead of [k, d] x [d, vocab]), which
    # sums the same d_model products in another order: equal up to float32 rounding.
    np.testing.assert_allclose(
        clean, logits[np.arange(BATCH), -1, correct] - logits[np.arange(BATCH), -1, wrong],
        rtol=0, atol=1e-6)
    # Through the whole vocabulary (top-1 accuracy reads every column) it is bit for bit.
    top1 = jaxablate.clean_metric(tiny_model, tokens, metrics.accuracy(correct))
    np.testing.assert_array_equal(top1, (logits[:, -1].argmax(-1) == correct).astype(np.float32))
    full_prob = jaxablate.clean_metric(tiny_model, tokens, metrics.prob(correct))
    want_prob = jax.nn.softmax(jnp.asarray(logits[:, -1]), axis=-1)[np.arange(BATCH), correct]
    np.testing.assert_array_equal(full_prob, np.asarray(want_prob))
    # A "clean" mask (no component) resumes from the cached final residual: bit for bit.
    clean_set = masks.from_components(tiny_model.cfg, [[]])
    assert clean_set.names == ["clean"]
    out = jaxablate.sweep(tiny_model, tokens, clean_set, replacements["zero"], metric)
    np.testing.assert_array_equal(out, clean[None])
    # A dense keep-all mask for every kind, also run from layer 0 (no prefix reuse).
    keep = Mask.keep_all(tiny_model.cfg, ALL_KINDS, seq_len=SEQ)
    stacked = jax.tree_util.tree_map(lambda a: a[None], keep)
    for reuse in (True, False):
        out = jaxablate.sweep(tiny_model, tokens, stacked, replacements["mean"], metric,
                              reuse_prefix=reuse)
        np.testing.assert_allclose(out, clean[None], rtol=0, atol=ENGINE_ATOL)


# ---------------------------------------------------------------------------------------------
# sweep == loop of forward calls; invariances.


@pytest.mark.parametrize("repl", ["zero", "mean", "mean_global", "resample"])
def test_sweep_equals_forward_loop(tiny_model, data, replacements, mixed, repl):
    tokens, _, correct, wrong = data
    dense = hand_mask(tiny_model.cfg, MIXED, 0.0, mixed.kinds)
    got = jaxablate.sweep(tiny_model, tokens, mixed, replacements[repl],
                          metrics.logit_diff(correct, wrong), chunk_size=4)
    want = forward_loop(tiny_model, tokens, dense, replacements[repl], "logit_diff", correct,
                        wrong)
    np.testing.assert_allclose(got, want, rtol=0, atol=ENGINE_ATOL)
    # The clean mask in the set gives the clean metric; real ablations move it.
    clean = jaxablate.clean_metric(tiny_model, tokens, metrics.logit_diff(correct, wrong))
    np.testing.assert_allclose(got[MIXED.index([])], clean, rtol=0, atol=ENGINE_ATOL)
    assert np.abs(got - clean[None]).max() > 1e-2


@pytest.mark.parametrize("name", ["kl_to_clean", "loss"])
def test_sweep_equals_forward_loop_other_metrics(tiny_model, data, replacements, mixed, name):
    tokens, _, correct, wrong = data
    dense = hand_mask(tiny_model.cfg, MIXED, 0.0, mixed.kinds)
    got = jaxablate.sweep(tiny_model, tokens, mixed, replacements["mean"],
                          ja_metric(name, correct, wrong), chunk_size=4)
    want = forward_loop(tiny_model, tokens, dense, replacements["mean"], name, correct, wrong)
    np.testing.assert_allclose(got, want, rtol=0, atol=ENGINE_ATOL)


def test_fractional_keep_weights_sweep_equals_loop(tiny_model, data, replacements):
    tokens, _, correct, wrong = data
    groups = [g for g in MIXED if g]
    mask_set = masks.from_components(tiny_model.cfg, groups, weight=0.3, seq_len=SEQ)
    assert mask_set.names[0] == "0.1=0.3"
    dense = hand_mask(tiny_model.cfg, groups, 0.3, mask_set.kinds)
    for repl in ("mean", "resample"):
        got = jaxablate.sweep(tiny_model, tokens, mask_set, replacements[repl],
                              metrics.logit_diff(correct, wrong), chunk_size=4)
        want = forward_loop(tiny_model, tokens, dense, replacements[repl], "logit_diff",
                            correct, wrong)
        np.testing.assert_allclose(got, want, rtol=0, atol=ENGINE_ATOL)
    # 0.3 lies strictly between keeping (1) and ablating (0) for a single MLP here.
    mlp = masks.from_components(tiny_model.cfg, [("mlp", 0)], seq_len=SEQ)
    metric = metrics.logit_diff(correct, wrong)
    full = jaxablate.sweep(tiny_model, tokens, mlp, replacements["zero"], metric)[0]
    part = jaxablate.sweep(tiny_model, tokens,
                           masks.from_components(tiny_model.cfg, [("mlp", 0)], weight=0.3),
                           replacements["zero"], metric)[0]
    clean = jaxablate.clean_metric(tiny_model, tokens, metric)
    assert not np.allclose(part, full, atol=1e-3) and not np.allclose(part, clean, atol=1e-3)


@pytest.fixture(scope="module")
def mixed_reference(tiny_model, data, replacements, mixed):
    tokens, _, correct, wrong = data
    return jaxablate.sweep(tiny_model, tokens, mixed, replacements["mean"],
                           metrics.logit_diff(correct, wrong), chunk_size=len(mixed))


@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_sweep_independent_of_chunk_size(tiny_model, data, replacements, mixed,
                                         mixed_reference, chunk_size):
    tokens, _, correct, wrong = data
    got = jaxablate.sweep(tiny_model, tokens, mixed, replacements["mean"],
                          metrics.logit_diff(correct, wrong), chunk_size=chunk_size)
    # float rounding only: differently sized vmaps are different compiled programs
    np.testing.assert_allclose(got, mixed_reference, rtol=0, atol=ENGINE_ATOL)


def test_sweep_independent_of_mask_order(tiny_model, data, replacements, mixed_reference):
    tokens, _, correct, wrong = data
    perm = np.random.default_rng(0).permutation(len(MIXED))
    permuted = masks.from_components(tiny_model.cfg, [MIXED[i] for i in perm], seq_len=SEQ)
    got = jaxablate.sweep(tiny_model, tokens, permuted, replacements["mean"],
                          metrics.logit_diff(correct, wrong), chunk_size=3)
    # float rounding only (a mask's chunk neighbours change)
    np.testing.assert_allclose(got, mixed_reference[perm], rtol=0, atol=ENGINE_ATOL)


@pytest.mark.parametrize("repl", ["mean", "resample"])
def test_sweep_independent_of_prefix_reuse(tiny_model, data, replacements, mixed, repl):
    tokens, _, correct, wrong = data
    metric = metrics.logit_diff(correct, wrong)
    on = jaxablate.sweep(tiny_model, tokens, mixed, replacements[repl], metric, chunk_size=4,
                         reuse_prefix=True)
    off = jaxablate.sweep(tiny_model, tokens, mixed, replacements[repl], metric, chunk_size=4,
                          reuse_prefix=False)
    # float rounding only: layers before the first ablated one are recomputed vs cached
    np.testing.assert_allclose(on, off, rtol=0, atol=ENGINE_ATOL)


def test_dense_stacked_mask_equals_mask_set(tiny_model, data, replacements, mixed,
                                            mixed_reference):
    tokens, _, correct, wrong = data
    dense = hand_mask(tiny_model.cfg, MIXED, 0.0, mixed.kinds)
    stacked = Mask(**{k: jnp.asarray(v) for k, v in dense.items()})
    got = jaxablate.sweep(tiny_model, tokens, stacked, replacements["mean"],
                          metrics.logit_diff(correct, wrong), chunk_size=len(MIXED))
    np.testing.assert_array_equal(got, mixed_reference)


def test_progress_callback_counts_up_to_n(tiny_model, data, replacements, mixed):
    tokens, _, correct, wrong = data
    calls = []
    jaxablate.sweep(tiny_model, tokens, mixed, replacements["zero"],
                    metrics.logit_diff(correct, wrong), chunk_size=3,
                    progress=lambda done, total: calls.append((done, total)))
    done = [d for d, _ in calls]
    assert {t for _, t in calls} == {len(MIXED)}
    assert done == sorted(set(done)) and done[0] > 0 and done[-1] == len(MIXED)
    assert len(calls) >= math.ceil(len(MIXED) / 3)
    assert all(b - a <= 3 for a, b in zip([0] + done, done))


def test_loss_reads_every_position_whatever_the_batch(tiny_model):
    # With batch == seq - 1 the default positions [0 .. seq-2] must not be read as one
    # position per example; same for kl_to_clean(positions=None) with batch == seq.
    rng = np.random.default_rng(5)
    for batch, seq in ((3, 4), (2, 4), (4, 5)):
        tokens = rng.integers(0, tiny_model.cfg.d_vocab, (batch, seq), dtype=np.int32)
        logits = np.asarray(jaxablate.forward(tiny_model, tokens))
        want = np_metric("loss", logits, logits, tokens, None, None)
        got = jaxablate.clean_metric(tiny_model, tokens, metrics.loss())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"{batch}x{seq}")
    tokens = rng.integers(0, tiny_model.cfg.d_vocab, (4, 4), dtype=np.int32)
    positions, _ = metrics.kl_to_clean(None).prepare(tokens, tiny_model.cfg)
    np.testing.assert_array_equal(positions, np.tile(np.arange(4), (4, 1)))


# ---------------------------------------------------------------------------------------------
# One compiled program: no retracing across masks, chunks and layer groups.


@pytest.fixture
def trace_counter(monkeypatch):
    """Counts traces of the per-mask programs: `resume` (and `trajectory`, the shared-parent
    pass of multi-layer masks) run in Python only while the engine's jitted functions are
    traced, never when a compiled program is reused."""
    from jaxablate.engine import sweeping as engine

    count = {"resume": 0, "trajectory": 0}

    def counting(name):
        original = getattr(engine, name)

        def wrapper(*args, **kwargs):
            count[name] += 1
            return original(*args, **kwargs)
        return wrapper

    for name in count:
        monkeypatch.setattr(engine, name, counting(name))
    for name in ("_run_chunk", "_run_trajectories"):
        if hasattr(engine, name):
            getattr(engine, name)._cached.clear_cache()
    return count


def test_no_recompilation_across_masks_chunks_and_groups(tiny_model, data, replacements,
                                                         trace_counter):
    from jaxablate.engine.sweeping import _run_chunk

    tokens, _, correct, wrong = data
    metric = metrics.logit_diff(correct, wrong)
    cfg = tiny_model.cfg
    mean = replacements["mean"]
    # Heads of layers 0 and 1 plus a clean mask: three start layers, several chunks.
    jaxablate.sweep(tiny_model, tokens, masks.from_components(cfg, ["0.0", "0.1", "1.0", []]),
                    mean, metric, chunk_size=2)
    assert trace_counter["resume"] == 1
    # Different masks, groups and number of chunks; same kinds and chunk size: no new trace.
    jaxablate.sweep(tiny_model, tokens, masks.single_heads(cfg), mean, metric, chunk_size=2)
    jaxablate.sweep(tiny_model, tokens, masks.from_components(cfg, ["1.2", "0.3"], weight=0.5),
                    mean, metric, chunk_size=2)
    # Other prompts and metric ids of the same shapes are data too.
    jaxablate.sweep(tiny_model, (tokens + 1) % cfg.d_vocab, masks.single_heads(cfg), mean,
                    metrics.logit_diff(wrong, correct), chunk_size=2)
    assert trace_counter["resume"] == 1
    # Pairs across layers may take a second path (resumed from shared parents' streams): one
    # more program at most, compiled once, then reused by every other pair set.
    jaxablate.sweep(tiny_model, tokens, masks.head_pairs(cfg), mean, metric, chunk_size=2)
    after_pairs = dict(trace_counter)
    cache_size = _run_chunk._cached._cache_size()
    assert after_pairs["resume"] <= 2 and after_pairs["trajectory"] <= 1
    jaxablate.sweep(tiny_model, tokens, masks.head_pairs(cfg, heads=["0.1", "0.2", "1.0", "1.3"]),
                    mean, metric, chunk_size=2)
    jaxablate.sweep(tiny_model, tokens, masks.head_pairs(cfg, weight=0.25), mean, metric,
                    chunk_size=2)
    jaxablate.sweep(tiny_model, tokens, masks.single_heads(cfg), mean, metric, chunk_size=2)
    assert trace_counter == after_pairs
    assert _run_chunk._cached._cache_size() == cache_size
    # The counter does see a new program: another chunk shape traces once more.
    jaxablate.sweep(tiny_model, tokens, masks.single_heads(cfg), mean, metric, chunk_size=3)
    assert trace_counter["resume"] == after_pairs["resume"] + 1


# ---------------------------------------------------------------------------------------------
# Head pairs across layers (masks touching several layers share prefix computations).


@pytest.fixture(scope="module")
def pairs_reference(tiny_model, data, replacements):
    """Head pairs, each from layer 0 with no prefix reuse, and by a loop of forward calls."""
    tokens, _, correct, wrong = data
    cfg = tiny_model.cfg
    heads = [("head", layer, h) for layer in range(2) for h in range(4)]
    groups = [list(p) for p in itertools.combinations(heads, 2)]
    dense = hand_mask(cfg, groups, 0.0, ("heads",))
    loop = forward_loop(tiny_model, tokens, dense, replacements["mean"], "logit_diff", correct,
                        wrong)
    return groups, loop


@pytest.mark.parametrize("chunk_size", [1, 3, None])
@pytest.mark.parametrize("reuse", [True, False])
def test_head_pairs_equal_forward_loop(tiny_model, data, replacements, pairs_reference,
                                       chunk_size, reuse):
    tokens, _, correct, wrong = data
    groups, loop = pairs_reference
    got = jaxablate.sweep(tiny_model, tokens, masks.head_pairs(tiny_model.cfg),
                          replacements["mean"], metrics.logit_diff(correct, wrong),
                          chunk_size=chunk_size, reuse_prefix=reuse)
    # float rounding only (different compiled programs)
    np.testing.assert_allclose(got, loop, rtol=0, atol=ENGINE_ATOL)


def test_head_pairs_independent_of_order(tiny_model, data, replacements, pairs_reference):
    tokens, _, correct, wrong = data
    groups, loop = pairs_reference
    perm = np.random.default_rng(1).permutation(len(groups))
    permuted = masks.from_components(tiny_model.cfg, [groups[i] for i in perm])
    got = jaxablate.sweep(tiny_model, tokens, permuted, replacements["mean"],
                          metrics.logit_diff(correct, wrong), chunk_size=5)
    np.testing.assert_allclose(got, loop[perm], rtol=0, atol=ENGINE_ATOL)


# Masks over two layers, several sharing the same layer-0 part (a "parent"): every kind.
SHARED = ([[("resid", 0, 2), ("head", 1, h)] for h in range(4)]
          + [[("mlp", 0), ("neuron", 1, i)] for i in (3, 7, 100)]
          + [[("head", 0, 1, 5), ("mlp", 1)], [("head", 0, 1, 5), ("resid", 1, 5)]]
          + [[("neuron", 0, 9), ("head", 1, 2, 7)], [("neuron", 0, 9), ("head", 1, 0)]])


@pytest.mark.parametrize("repl", ["mean", "resample"])
def test_masks_sharing_a_prefix_equal_forward_loop(tiny_model, data, replacements, repl):
    tokens, _, correct, wrong = data
    mask_set = masks.from_components(tiny_model.cfg, SHARED, seq_len=SEQ)
    dense = hand_mask(tiny_model.cfg, SHARED, 0.0, mask_set.kinds)
    want = forward_loop(tiny_model, tokens, dense, replacements[repl], "logit_diff", correct,
                        wrong)
    for reuse, chunk_size in ((True, 3), (True, None), (False, 3)):
        got = jaxablate.sweep(tiny_model, tokens, mask_set, replacements[repl],
                              metrics.logit_diff(correct, wrong), chunk_size=chunk_size,
                              reuse_prefix=reuse)
        np.testing.assert_allclose(got, want, rtol=0, atol=ENGINE_ATOL,
                                   err_msg=f"reuse={reuse} chunk_size={chunk_size}")


# ---------------------------------------------------------------------------------------------
# SAE features.

N_FEATURES = 16


@pytest.fixture(scope="module")
def sae_arrays(tiny_model):
    rng = np.random.default_rng(11)
    d = tiny_model.cfg.d_model
    W_enc = rng.normal(0, 0.3, (d, N_FEATURES)).astype(np.float32)
    b_enc = rng.normal(0.2, 0.1, N_FEATURES).astype(np.float32)
    W_dec = rng.normal(0, 0.3, (N_FEATURES, d)).astype(np.float32)
    b_dec = rng.normal(0, 0.1, d).astype(np.float32)
    return W_enc, b_enc, W_dec, b_dec


@pytest.fixture(scope="module")
def sae_model(tiny_model, sae_arrays):
    sae = jaxablate.SAE.create(*sae_arrays, hook_point="blocks.1.hook_resid_pre")
    assert sae.layer == 1 and sae.n_features == N_FEATURES
    return jaxablate.attach_sae(tiny_model, sae)


def test_sae_keep_all_leaves_logits_unchanged(tiny_model, sae_model, data):
    tokens, reference, _, _ = data
    clean = np.asarray(jaxablate.forward(tiny_model, tokens))
    np.testing.assert_array_equal(np.asarray(jaxablate.forward(sae_model, tokens)), clean)
    for repl in (jaxablate.zero_replacement(sae_model),
                 jaxablate.mean_replacement(sae_model, reference)):
        for kinds in (("sae_features",), BITWISE_KINDS + ("sae_features",)):
            keep = Mask.keep_all(sae_model.cfg, kinds, seq_len=SEQ, n_features=N_FEATURES)
            np.testing.assert_array_equal(
                np.asarray(jaxablate.forward(sae_model, tokens, keep, repl)), clean,
                err_msg=f"{repl.kind} {kinds}")


@pytest.mark.parametrize("repl", ["zero", "mean"])
def test_sae_feature_ablation_matches_tl_hook(sae_model, tiny_tl, sae_arrays, data, repl):
    tokens, reference, correct, wrong = data
    W_enc, b_enc, W_dec, b_dec = (torch.as_tensor(a) for a in sae_arrays)
    hook = "blocks.1.hook_resid_pre"

    def encode(x):
        return torch.relu((x - b_dec) @ W_enc + b_enc)

    if repl == "zero":
        r_acts = torch.zeros(())
        replacement = jaxablate.zero_replacement(sae_model)
    else:  # per-position mean of the feature activations over the reference prompts
        with torch.no_grad():
            _, cache = tiny_tl.run_with_cache(torch.as_tensor(reference, dtype=torch.long))
        r_acts = encode(cache[hook]).mean(0, keepdim=True)
        replacement = jaxablate.mean_replacement(sae_model, reference)

    features = list(range(N_FEATURES))
    weight = 0.3  # fractional: x - (1 - m) * (a_f - r_f) * d_f
    groups = [[f] for f in features] + [[0, 5, 9]]
    mask_set = masks.from_components(sae_model.cfg, [[("sae", f) for f in g] for g in groups],
                                     weight=weight, n_features=N_FEATURES)
    got = jaxablate.sweep(sae_model, tokens, mask_set, replacement,
                          metrics.logit_diff(correct, wrong), chunk_size=5)

    want = []
    t = torch.as_tensor(tokens, dtype=torch.long)
    for g in groups:
        def ablate(x, hook, g=g):
            a = encode(x)
            return x - ((1 - weight) * (a - r_acts))[..., g] @ W_dec[g]
        with torch.no_grad():
            logits = tiny_tl.run_with_hooks(t, fwd_hooks=[(hook, ablate)]).double().numpy()
        want.append(np_metric("logit_diff", logits, None, tokens, correct, wrong))
    np.testing.assert_allclose(got, np.stack(want), rtol=0, atol=TL_ATOL)
    # Features are active on these prompts, so most ablations change the metric.
    clean = jaxablate.clean_metric(sae_model, tokens, metrics.logit_diff(correct, wrong))
    assert (np.abs(got - clean[None]).max(axis=1) > 1e-4).mean() > 0.5


def test_sae_full_ablation_with_zero_equals_numpy_subtraction(sae_model, sae_arrays, data):
    # Independent numpy computation of the stream after ablating feature 3 fully (m = 0):
    # resid_pre of layer 1 minus a_3 * W_dec[3], compared through run_with_cache.
    tokens = data[0]
    W_enc, b_enc, W_dec, b_dec = sae_arrays
    _, cache = jaxablate.run_with_cache(sae_model, tokens, names=("resid_pre",))
    x = np.asarray(cache.resid_pre[:, 1], np.float64)
    a = np.maximum((x - b_dec) @ W_enc + b_enc, 0.0)
    assert (a[..., 3] > 0).any()
    want = x - a[..., 3:4] * W_dec[3]
    mask = Mask(sae_features=jnp.ones(N_FEATURES, jnp.float32).at[3].set(0.0))
    _, ablated = jaxablate.run_with_cache(sae_model, tokens, mask,
                                          jaxablate.zero_replacement(sae_model),
                                          names=("resid_pre",))
    np.testing.assert_allclose(np.asarray(ablated.resid_pre[:, 1]), want, rtol=0, atol=1e-5)
    # Layer 0's input is untouched.
    np.testing.assert_array_equal(np.asarray(ablated.resid_pre[:, 0]),
                                  np.asarray(cache.resid_pre[:, 0]))


# ---------------------------------------------------------------------------------------------
# Mask-set constructors: counts, order, names.

GPT2_SMALL = GPT2Config(n_layers=12, n_heads=12, d_model=768, d_mlp=3072, d_vocab=50257,
                        n_ctx=1024)


def test_constructor_counts_and_layer_major_order(tiny_model):
    cfg = tiny_model.cfg
    heads = masks.single_heads(cfg)
    assert len(heads) == cfg.n_layers * cfg.n_heads == 8
    assert heads.names == [f"{layer}.{h}" for layer in range(2) for h in range(4)]
    assert [heads.components(i) for i in range(2)] == [
        [(Component("heads", (0, 0)), 0.0)], [(Component("heads", (0, 1)), 0.0)]]
    pairs = masks.head_pairs(cfg)
    assert len(pairs) == math.comb(8, 2)
    order = [(layer, h) for layer in range(2) for h in range(4)]
    assert pairs.names == [f"{a[0]}.{a[1]}+{b[0]}.{b[1]}"
                           for a, b in itertools.combinations(order, 2)]
    mlps = masks.single_mlps(cfg)
    assert mlps.names == ["mlp0", "mlp1"]
    neurons = masks.single_neurons(cfg)
    assert len(neurons) == cfg.n_layers * cfg.d_mlp
    assert neurons.names[:2] == ["n0.0", "n0.1"] and neurons.names[cfg.d_mlp] == "n1.0"
    some = masks.single_neurons(cfg, layers=[1], neurons=[3, 9])
    assert some.names == ["n1.3", "n1.9"]
    pos = masks.positions(cfg, seq_len=5)
    assert len(pos) == cfg.n_layers * 5
    assert pos.names[:6] == ["resid0@0", "resid0@1", "resid0@2", "resid0@3", "resid0@4",
                             "resid1@0"]
    at = masks.single_heads(cfg, position=-1, seq_len=5)
    assert at.names[:2] == ["0.0@4", "0.1@4"] and at.seq_len == 5
    feats = masks.single_features(cfg, 6)
    assert feats.names == [f"sae{f}" for f in range(6)]


def test_gpt2_small_counts():
    assert len(masks.single_heads(GPT2_SMALL)) == 144
    pairs = masks.head_pairs(GPT2_SMALL)
    assert len(pairs) == 10_296
    assert pairs.names[0] == "0.0+0.1" and pairs.names[1] == "0.0+0.2"
    assert pairs.names[11] == "0.0+1.0" and pairs.names[-1] == "11.10+11.11"
    assert len(masks.single_neurons(GPT2_SMALL, layers=[3])) == 3072
    assert len(masks.single_neurons(GPT2_SMALL)) == 12 * 3072
    assert len(masks.positions(GPT2_SMALL, seq_len=15)) == 12 * 15
    sub = masks.head_pairs(GPT2_SMALL, heads=["9.9", "9.6", ("head", 10, 0)])
    assert sub.names == ["9.6+9.9", "9.6+10.0", "9.9+10.0"]


@pytest.mark.parametrize("spec, kind, index, name", [
    ("5.2", "heads", (5, 2), "5.2"),
    ("5.2@7", "head_positions", (5, 7, 2), "5.2@7"),
    ("mlp8", "mlps", (8,), "mlp8"),
    ("MLP 8", "mlps", (8,), "mlp8"),
    ("n3.1207", "neurons", (3, 1207), "n3.1207"),
    ("neuron 3.1207", "neurons", (3, 1207), "n3.1207"),
    ("resid4@7", "positions", (4, 7), "resid4@7"),
    ("sae12", "sae_features", (12,), "sae12"),
    (("head", 5, 2), "heads", (5, 2), "5.2"),
    (("head", 5, 2, 7), "head_positions", (5, 7, 2), "5.2@7"),
    (("mlp", 8), "mlps", (8,), "mlp8"),
    (("neuron", 3, 1207), "neurons", (3, 1207), "n3.1207"),
    (("resid", 4, 7), "positions", (4, 7), "resid4@7"),
    (("sae", 12), "sae_features", (12,), "sae12"),
])
def test_parse_component_and_name_round_trip(spec, kind, index, name):
    component = parse_component(spec)
    assert component == Component(kind, index)
    assert component.name == name
    assert parse_component(component.name) == component
    assert parse_component(component) is component


def test_from_components_names_and_groups(tiny_model):
    cfg = tiny_model.cfg
    ms = masks.from_components(cfg, ["1.2", ["1.2", "0.3"], "mlp0", "n1.7", "resid1@3", []],
                               seq_len=SEQ)
    assert ms.names == ["1.2", "1.2+0.3", "mlp0", "n1.7", "resid1@3", "clean"]
    assert ms.kinds == ("heads", "mlps", "neurons", "positions")
    np.testing.assert_array_equal(ms.first_layers(), [1, 0, 0, 1, 1, cfg.n_layers])


def test_materialize_equals_hand_built_dense_mask(tiny_model, mixed):
    dense = hand_mask(tiny_model.cfg, MIXED, 0.0, mixed.kinds)
    idx = [5, 0, 11, 12, 3]
    chunk = mixed.materialize(idx)
    assert chunk.kinds() == mixed.kinds == ALL_KINDS
    for kind in mixed.kinds:
        got = getattr(chunk, kind)
        assert got.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(got), dense[kind][idx], err_msg=kind)
    single = mixed.mask(11)
    for kind in mixed.kinds:
        np.testing.assert_array_equal(np.asarray(getattr(single, kind)), dense[kind][11])


def test_from_stacked_round_trip(tiny_model):
    cfg = tiny_model.cfg
    rng = np.random.default_rng(2)
    n = 6
    fields = {
        "heads": np.where(rng.random((n, 2, 4)) < 0.3, rng.random((n, 2, 4)), 1.0),
        "positions": np.where(rng.random((n, 2, SEQ)) < 0.2, 0.0, 1.0),
        "mlps": np.ones((n, 2)),  # set but never changed: the kind must survive
    }
    fields["heads"][0] = 1.0  # a clean mask
    stacked = Mask(**{k: jnp.asarray(v, jnp.float32) for k, v in fields.items()})
    ms = masks.from_stacked(stacked, cfg)
    assert len(ms) == n and ms.seq_len == SEQ
    assert ms.kinds == ("heads", "mlps", "positions")
    back = ms.materialize(np.arange(n))
    for kind, value in fields.items():
        np.testing.assert_array_equal(np.asarray(getattr(back, kind)),
                                      value.astype(np.float32), err_msg=kind)
    # Names list the touched components (fractions with their weight).
    for i in range(n):
        touched = [c for c, w in ms.components(i) if w != 1.0]
        assert (ms.names[i] == "clean") == (not touched)
    first = ms.first_layers()
    want = [min([layer for layer in range(2) if (fields["heads"][i, layer] != 1).any()
                 or (fields["positions"][i, layer] != 1).any()], default=2) for i in range(n)]
    np.testing.assert_array_equal(first, want)


def test_concat_keeps_order_and_names(tiny_model):
    cfg = tiny_model.cfg
    both = masks.concat([masks.single_mlps(cfg), masks.single_heads(cfg)])
    assert both.names == ["mlp0", "mlp1"] + [f"{layer}.{h}" for layer in range(2)
                                             for h in range(4)]
    chunk = both.materialize([1, 2])
    np.testing.assert_array_equal(np.asarray(chunk.mlps), [[1, 0], [1, 1]])
    np.testing.assert_array_equal(np.asarray(chunk.heads)[0], np.ones((2, 4)))
    np.testing.assert_array_equal(np.asarray(chunk.heads)[1],
                                  [[0, 1, 1, 1], [1, 1, 1, 1]])


# ---------------------------------------------------------------------------------------------
# Resample replacement.


def test_resample_is_reproducible_and_never_self(tiny_model):
    rng = np.random.default_rng(9)
    tokens = rng.integers(0, tiny_model.cfg.d_vocab, (8, SEQ), dtype=np.int32)
    a = jaxablate.resample_replacement(tiny_model, tokens, jax.random.key(0))
    b = jaxablate.resample_replacement(tiny_model, tokens, jax.random.key(0))
    c = jaxablate.resample_replacement(tiny_model, tokens, jax.random.key(1))
    assert a.kind == "resample" and a.per_example
    np.testing.assert_array_equal(np.asarray(a.source_index), np.asarray(b.source_index))
    for field in a.fields():
        np.testing.assert_array_equal(np.asarray(getattr(a, field)),
                                      np.asarray(getattr(b, field)))
    assert (np.asarray(a.source_index) != np.asarray(c.source_index)).any()
    for seed in range(20):
        r = jaxablate.resample_replacement(tiny_model, tokens[:3], jax.random.key(seed))
        index = np.asarray(r.source_index)
        assert index.shape == (3,) and ((index >= 0) & (index < 3)).all()
        assert (index != np.arange(3)).all(), (seed, index)
    # The values are the clean activations of the chosen source prompts.
    _, cache = jaxablate.run_with_cache(tiny_model, tokens)
    source = np.asarray(a.source_index)
    np.testing.assert_array_equal(np.asarray(a.z), np.asarray(cache.z)[source])
    np.testing.assert_array_equal(np.asarray(a.post), np.asarray(cache.post)[source])
    np.testing.assert_array_equal(np.asarray(a.mlp_out), np.asarray(cache.mlp_out)[source])
    np.testing.assert_array_equal(np.asarray(a.resid),
                                  np.asarray(cache.resid_pre)[source][:, :-1])


def test_resample_from_a_separate_source_set(tiny_model):
    rng = np.random.default_rng(10)
    source_tokens = rng.integers(0, tiny_model.cfg.d_vocab, (4, SEQ), dtype=np.int32)
    r = jaxablate.resample_replacement(tiny_model, source_tokens, jax.random.key(2),
                                       n_examples=6)
    index = np.asarray(r.source_index)
    assert index.shape == (6,) and ((index >= 0) & (index < 4)).all()
    assert r.z.shape == (6, 2, SEQ, 4, 8)
    _, cache = jaxablate.run_with_cache(tiny_model, source_tokens, names=("z",))
    np.testing.assert_array_equal(np.asarray(r.z), np.asarray(cache.z)[index])
