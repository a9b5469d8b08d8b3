"""Property tests of the ablation engine over small random GPT-2s and random masks.

Shapes come from a small pool of configs (3-5 layers: a 2-layer model has no layer between a
parent's and a child's, where prefix reuse hid a bug; 1-3 heads, d_head 2-8, vocab 20-50,
seq 2-6) so each compiles once; everything else is drawn per example: the weights (a seed),
the prompts, the metric ids, the replacement values and the keep-weights in [0, 1] (exact
zeros and ones, and fractions). Models are built directly with `loading.model_from_arrays`.

Comparisons between two compiled programs (sweep vs forward, permuted sweep) allow ATOL = 1e-5:
float32 rounding of differently fused code, ~1e-6 here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxablate
from jaxablate import GPT2Config, Mask, Replacement, masks, metrics
from jaxablate.model.loading import model_from_arrays

ATOL = 1e-5  # float32 rounding between two compiled programs
BATCH = 2
N_MASKS = 3
KINDS = ("heads", "head_positions", "mlps", "neurons", "positions")

# (n_layers, n_heads, d_head, d_vocab, seq, d_mlp)
POOL = [
    (3, 1, 2, 23, 2, 8),
    (4, 3, 4, 37, 5, 48),
    (3, 3, 8, 40, 6, 64),
    (5, 3, 2, 20, 3, 24),
]

SETTINGS = settings(max_examples=15, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def make_cfg(index):
    n_layers, n_heads, d_head, vocab, seq, d_mlp = POOL[index]
    cfg = GPT2Config(n_layers=n_layers, n_heads=n_heads, d_model=n_heads * d_head,
                     d_mlp=d_mlp, d_vocab=vocab, n_ctx=8)
    return cfg, seq


def random_model(cfg, seed):
    """A GPT-2 with random HF-named weights (Conv1D orientation [in, out]), built directly."""
    rng = np.random.default_rng(seed)
    d, m = cfg.d_model, cfg.d_mlp

    def normal(*shape, scale=0.3):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    tensors = {"wte.weight": normal(cfg.d_vocab, d, scale=0.5),
               "wpe.weight": normal(cfg.n_ctx, d, scale=0.2),
               "ln_f.weight": 1 + normal(d, scale=0.1), "ln_f.bias": normal(d, scale=0.1)}
    for i in range(cfg.n_layers):
        tensors.update({
            f"h.{i}.ln_1.weight": 1 + normal(d, scale=0.1), f"h.{i}.ln_1.bias": normal(d),
            f"h.{i}.attn.c_attn.weight": normal(d, 3 * d, scale=0.5),
            f"h.{i}.attn.c_attn.bias": normal(3 * d, scale=0.1),
            f"h.{i}.attn.c_proj.weight": normal(d, d), f"h.{i}.attn.c_proj.bias": normal(d),
            f"h.{i}.ln_2.weight": 1 + normal(d, scale=0.1), f"h.{i}.ln_2.bias": normal(d),
            f"h.{i}.mlp.c_fc.weight": normal(d, m), f"h.{i}.mlp.c_fc.bias": normal(m),
            f"h.{i}.mlp.c_proj.weight": normal(m, d), f"h.{i}.mlp.c_proj.bias": normal(d),
        })
    return model_from_arrays(cfg, tensors)


def random_replacement(cfg, seq, rng):
    """Finite random values at every ablation point, per position ([layer, seq, ...])."""
    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape).astype(np.float32))

    heads = (cfg.n_layers, seq, cfg.n_heads, cfg.d_head)
    return Replacement(z=normal(*heads),
                       mlp_out=normal(cfg.n_layers, seq, cfg.d_model),
                       post=normal(cfg.n_layers, seq, cfg.d_mlp),
                       resid=normal(cfg.n_layers, seq, cfg.d_model),
                       resid_mid=normal(cfg.n_layers, seq, cfg.d_model),
                       q=normal(*heads), k=normal(*heads), v=normal(*heads))


def mask_shapes(cfg, seq):
    return {"heads": (cfg.n_layers, cfg.n_heads), "head_positions": (cfg.n_layers, seq,
                                                                     cfg.n_heads),
            "mlps": (cfg.n_layers,), "neurons": (cfg.n_layers, cfg.d_mlp),
            "positions": (cfg.n_layers, seq)}


KEEP = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0, width=32))


def draw_masks(data, cfg, seq, n, kinds=None):
    """A dense stacked Mask [n, ...] of `kinds` (default every kind), keep-weights mixing 0, 1
    and fractions."""
    fields = {}
    for kind, shape in mask_shapes(cfg, seq).items():
        if kinds is not None and kind not in kinds:
            continue
        # mostly ones (a realistic ablation touches few components), some zeros/fractions
        touched = data.draw(hnp.arrays(np.bool_, (n,) + shape, elements=st.booleans()))
        values = data.draw(hnp.arrays(np.float32, (n,) + shape, elements=KEEP))
        fields[kind] = jnp.asarray(np.where(touched, values, 1.0).astype(np.float32))
    return Mask(**fields)


@st.composite
def setups(draw, indices=None):
    """(cfg, seq, seed, tokens) of a pool entry (any, or one of `indices`)."""
    index = draw(st.sampled_from(indices) if indices else st.integers(0, len(POOL) - 1))
    cfg, seq = make_cfg(index)
    seed = draw(st.integers(0, 2**31 - 1))
    tokens = draw(hnp.arrays(np.int32, (BATCH, seq), elements=st.integers(0, cfg.d_vocab - 1)))
    return cfg, seq, seed, tokens


def logit_diff_np(logits, correct, wrong):
    logits = np.asarray(logits, np.float64)
    rows = np.arange(len(correct))
    return logits[rows, -1, correct] - logits[rows, -1, wrong]


def unstack(mask, i):
    return jax.tree_util.tree_map(lambda a: a[i], mask)


# ---------------------------------------------------------------------------------------------


def _tokens(index, value=0):
    cfg, seq = make_cfg(index)
    return cfg, seq, 0, np.full((BATCH, seq), value % cfg.d_vocab, np.int32)


@SETTINGS
@given(setups(), st.integers(0, 2**31 - 1))
@example(_tokens(2, 7), 0)  # always covered: d_model 24 (fused LayerNorm code rounds apart)
def test_keep_all_reproduces_clean(setup, rseed):
    cfg, seq, seed, tokens = setup
    model = random_model(cfg, seed)
    replacement = random_replacement(cfg, seq, np.random.default_rng(rseed))
    keep = Mask.keep_all(cfg, KINDS, seq_len=seq)
    np.testing.assert_array_equal(
        np.asarray(jaxablate.forward(model, tokens, keep, replacement)),
        np.asarray(jaxablate.forward(model, tokens)))


@SETTINGS
@given(setups(), st.data())
def test_sweep_equals_loop_and_is_order_invariant(setup, data):
    cfg, seq, seed, tokens = setup
    model = random_model(cfg, seed)
    rng = np.random.default_rng(seed + 1)
    replacement = random_replacement(cfg, seq, rng)
    correct = rng.integers(0, cfg.d_vocab, BATCH)
    wrong = rng.integers(0, cfg.d_vocab, BATCH)
    metric = metrics.logit_diff(correct, wrong)
    # Without positions (half the time) the sweep reuses attention: a path of its own.
    kinds = data.draw(st.sampled_from([KINDS, KINDS[:-1]]), label="kinds")
    stacked = draw_masks(data, cfg, seq, N_MASKS, kinds)

    got = jaxablate.sweep(model, tokens, stacked, replacement, metric, chunk_size=2)
    want = np.stack([
        logit_diff_np(jaxablate.forward(model, tokens, unstack(stacked, i), replacement),
                      correct, wrong)
        for i in range(N_MASKS)])
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)

    perm = np.asarray(data.draw(st.permutations(range(N_MASKS))))
    permuted = jax.tree_util.tree_map(lambda a: a[perm], stacked)
    again = jaxablate.sweep(model, tokens, permuted, replacement, metric, chunk_size=2)
    np.testing.assert_allclose(again, got[perm], rtol=0, atol=ATOL)


@SETTINGS
@given(setups(), st.data())
def test_mask_set_sweep_equals_dense_sweep(setup, data):
    # The sparse MaskSet path (from_stacked -> materialise per chunk) and prefix reuse agree
    # with running every mask from layer 0.
    cfg, seq, seed, tokens = setup
    model = random_model(cfg, seed)
    rng = np.random.default_rng(seed + 2)
    replacement = random_replacement(cfg, seq, rng)
    metric = metrics.logit_diff(rng.integers(0, cfg.d_vocab, BATCH),
                                rng.integers(0, cfg.d_vocab, BATCH))
    kinds = data.draw(st.sampled_from([KINDS, KINDS[:-1]]), label="kinds")
    stacked = draw_masks(data, cfg, seq, N_MASKS, kinds)
    mask_set = masks.from_stacked(stacked, cfg)
    reused = jaxablate.sweep(model, tokens, mask_set, replacement, metric, chunk_size=2)
    from_zero = jaxablate.sweep(model, tokens, stacked, replacement, metric, chunk_size=2,
                                reuse_prefix=False)
    np.testing.assert_allclose(reused, from_zero, rtol=0, atol=ATOL)


@SETTINGS
@given(setups(), st.integers(0, BATCH - 1))
def test_blending_towards_own_clean_activations_is_identity(setup, which):
    # All-zero keep-weights with the prompt's own clean activations as the replacement
    # (the per-position mean over that single prompt) reproduce the clean logits.
    cfg, seq, seed, tokens = setup
    model = random_model(cfg, seed)
    prompt = tokens[which:which + 1]
    own = jaxablate.mean_replacement(model, prompt, per_position=True)
    clean = np.asarray(jaxablate.forward(model, prompt))
    for kinds in (("heads",), ("mlps",), ("neurons",), KINDS):
        zeros = Mask(**{k: jnp.zeros(s, jnp.float32)
                        for k, s in mask_shapes(cfg, seq).items() if k in kinds})
        np.testing.assert_allclose(np.asarray(jaxablate.forward(model, prompt, zeros, own)),
                                   clean, rtol=0, atol=ATOL, err_msg=str(kinds))
