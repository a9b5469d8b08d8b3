"""Every computation path of `sweep` against a plain loop of `jaxablate.forward`.

The sweep has several ways to reach the same numbers, and each is a place for a bug to hide:

* own chunks: a chunk resumes from the clean stream at its earliest mask's first layer; a
  chunk that straddles layers recomputes a few clean layers for its later masks;
* attention reuse: with no positions or SAE kind, the resume layer's clean attention is
  reused and only the ablated heads' z change, by a delta through W_O;
* parents: masks touching several layers share a parent trajectory (the mask restricted to
  its earlier layers), and each child resumes from it at its own last layer; children of
  one chunk may have different last layers (the chunk straddles);
* per-example replacements (resample) on each of those.

So every model here has 3-5 layers (a 2-layer model has no layer between a parent's and a
child's), keep-weights are fractions in (0, 1) drawn per entry (weight 0 hides a blend
applied twice: 0^2 = 0), kinds are mixed, and the chunk sizes are chosen so chunks straddle
layers. Each case also records which paths the sweep took (the compiled entry points are
wrapped), so a test cannot pass by silently falling back to the slow path.

Tolerance: ATOL = 1e-5, float32 rounding between two compiled programs (test_engine.py).
"""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_properties import random_model, random_replacement

import jaxablate
from jaxablate import GPT2Config, masks, metrics
from jaxablate.ablation.components import parse_component
from jaxablate.ablation.masks import MaskSet
from jaxablate.engine import sweeping as engine_lib

ATOL = 1e-5
BATCH = 3
SEQ = 6

# (n_layers, n_heads, d_head, d_mlp): 3, 4 and 5 layers
CONFIGS = [(3, 3, 4, 16), (4, 3, 4, 24), (5, 2, 4, 16)]


def make_cfg(spec):
    n_layers, n_heads, d_head, d_mlp = spec
    return GPT2Config(n_layers=n_layers, n_heads=n_heads, d_model=n_heads * d_head,
                      d_mlp=d_mlp, d_vocab=29, n_ctx=8)


def weighted_set(cfg, groups, rng, seq_len=SEQ):
    """A MaskSet with one mask per group of component names. Each component has its own
    keep-weight, drawn from (0.05, 0.95) once, so masks that share a first component share
    a parent (a parent is a set of components with their weights)."""
    rows: dict[str, list] = {}
    weights: dict[str, float] = {}
    for i, group in enumerate(groups):
        for name in group:
            c = parse_component(name)
            w = weights.setdefault(name, float(rng.uniform(0.05, 0.95)))
            rows.setdefault(c.kind, []).append((i, c.index, w))
    entries = {k: (np.array([r[0] for r in rs], np.int64),
                   np.array([r[1] for r in rs], np.int64),
                   np.array([r[2] for r in rs], np.float32)) for k, rs in rows.items()}
    return MaskSet(cfg, entries, ["+".join(g) for g in groups], seq_len=seq_len)


def components(cfg, kinds, seq=SEQ):
    """Every component name of `kinds` (neurons: two per layer; positions: two per layer)."""
    out = []
    for layer in range(cfg.n_layers):
        if "heads" in kinds:
            out += [f"{layer}.{h}" for h in range(cfg.n_heads)]
        if "head_positions" in kinds:
            out += [f"{layer}.{h}@{p}" for h in range(cfg.n_heads) for p in (1, seq - 1)]
        if "mlps" in kinds:
            out.append(f"mlp{layer}")
        if "neurons" in kinds:
            out += [f"n{layer}.{i}" for i in (0, cfg.d_mlp - 1)]
        if "positions" in kinds:
            out += [f"resid{layer}@{p}" for p in (0, seq - 2)]
        if "mid_positions" in kinds:
            out += [f"mid{layer}@{p}" for p in (1, seq - 1)]
        if "mlp_positions" in kinds:
            out += [f"mlp{layer}@{p}" for p in (0, seq - 1)]
        for w in "qkv":  # q, k and v of every head at two positions (one of them the last)
            if f"{w}_positions" in kinds:
                out += [f"{layer}.{h}.{w}@{p}" for h in range(cfg.n_heads) for p in (1, seq - 1)]
    return out


class Recorder:
    """Wraps the sweep's compiled entry points and records which paths ran."""

    def __init__(self, monkeypatch):
        self.chunks: list[dict] = []
        self.trajectories = 0
        run_chunk, run_traj = engine_lib._run_chunk, engine_lib._run_trajectories

        def chunk(model, x0, attended, start, *args):
            self.chunks.append({"start": int(start), "parent": x0.ndim == 4,
                                "attended": attended is not None})
            return run_chunk(model, x0, attended, start, *args)

        self.trajectory_attended: list[bool] = []

        def trajectories(*args):
            self.trajectories += 1
            self.trajectory_attended.append(args[2] is not None)  # (model, resid, attended, ..)
            return run_traj(*args)

        monkeypatch.setattr(engine_lib, "_run_chunk", chunk)
        monkeypatch.setattr(engine_lib, "_run_trajectories", trajectories)

    def took(self, *, parent: bool, attended: bool) -> bool:
        return any(c["parent"] == parent and c["attended"] == attended for c in self.chunks)

    def attention_reuse(self) -> set[bool]:
        """Whether the chunks and the parents' trajectories run so far reused attention."""
        return {c["attended"] for c in self.chunks} | set(self.trajectory_attended)


def loop(model, tokens, mask_set, replacement, metric_name, correct, wrong):
    """The reference: one `jaxablate.forward` per mask, the metric in float64 numpy."""
    clean = np.asarray(jaxablate.forward(model, tokens), np.float64)
    out = []
    for i in range(len(mask_set)):
        logits = np.asarray(jaxablate.forward(model, tokens, mask_set.mask(i), replacement),
                            np.float64)
        out.append(np_metric(metric_name, logits, clean, tokens, correct, wrong))
    return np.stack(out)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_metric(name, logits, clean, tokens, correct, wrong):
    rows = np.arange(len(tokens))
    if name == "logit_diff":
        return logits[rows, -1, correct] - logits[rows, -1, wrong]
    if name == "loss":
        logp = log_softmax(logits[:, :-1])
        return -np.take_along_axis(logp, tokens[:, 1:, None].astype(np.int64), -1)[..., 0].mean(-1)
    if name == "kl_to_clean":
        logp, logq = log_softmax(logits[:, -1]), log_softmax(clean[:, -1])
        return (np.exp(logq) * (logq - logp)).sum(-1)
    raise AssertionError(name)


def ja_metric(name, correct, wrong):
    return {"logit_diff": lambda: metrics.logit_diff(correct, wrong),
            "loss": metrics.loss, "kl_to_clean": metrics.kl_to_clean}[name]()


def make_setup(index):
    """(cfg, model, tokens, correct, wrong, replacements by name) of config `index`."""
    cfg = make_cfg(CONFIGS[index])
    model = random_model(cfg, 10 + index)
    rng = np.random.default_rng(index)
    tokens = rng.integers(0, cfg.d_vocab, (BATCH, SEQ)).astype(np.int32)
    correct = rng.integers(0, cfg.d_vocab, BATCH)
    wrong = (correct + rng.integers(1, cfg.d_vocab, BATCH)) % cfg.d_vocab
    random = random_replacement(cfg, SEQ, rng)  # every field, the patching kinds' too
    source = rng.integers(0, cfg.d_vocab, (BATCH, SEQ)).astype(np.int32)
    repl = {"random": random,
            "resample": jaxablate.resample_replacement(model, tokens, jax.random.key(1)),
            "patch": jaxablate.patch_replacement(model, source),
            "zero": jaxablate.zero_replacement(model)}  # seq 1: broadcast over positions
    return cfg, model, tokens, correct, wrong, repl


CONFIG_IDS = [f"{spec[0]}L" for spec in CONFIGS]


def across_configs(name, pairs, labels=None):
    """Parametrize `setup` (a config index) and `name` together over the (config, value)
    `pairs`, not every value on every config: each (config, value) pair compiles programs of
    its own, which is where these tests spend their time. What depends on the depth (resume
    layers, chunks straddling layers, parents) runs on every config, with one value or
    another; what depends on the value (how a replacement broadcasts, what a metric reads)
    runs with every value, on one config or more."""
    return pytest.mark.parametrize(
        ("setup", name), pairs, indirect=["setup"], scope="module",
        ids=[f"{CONFIG_IDS[i]}-{(labels or {}).get(value, value)}" for i, value in pairs])


# A replacement of shared values beside one of per-example values (or shared and broadcast):
# the first on 3 and 5 layers, the second on 4 and 5.
def both_on_the_deepest(a, b):
    return [(0, a), (1, b), (2, a), (2, b)]


# Three metrics, one per config: the metric reads the logits the same way at any depth.
METRIC_PER_CONFIG = [(0, "logit_diff"), (1, "loss"), (2, "kl_to_clean")]


@pytest.fixture(scope="module", params=range(len(CONFIGS)), ids=CONFIG_IDS)
def setup(request):
    yield make_setup(request.param)
    jax.clear_caches()  # each config compiles its own programs (see conftest)


@pytest.fixture(scope="module")
def setup4():
    """The 4-layer case alone (the patching kinds' narrower cases, below)."""
    return make_setup(1)


def check(setup, monkeypatch, mask_set, repl_name, metric_name, chunk_size, expect,
          reuse_attention=None):
    """sweep equals the loop with prefix reuse (at `chunk_size`, and with the whole set in
    one chunk, where children of every parent straddle every layer) and without it; the
    expected paths were taken (and with `reuse_attention` given, every chunk and parent
    trajectory of the prefix-reusing sweeps did, or did not, reuse attention). Returns the
    start layers of the chunks run."""
    cfg, model, tokens, correct, wrong, repl = setup
    replacement = repl[repl_name]
    metric = ja_metric(metric_name, correct, wrong)
    want = loop(model, tokens, mask_set, replacement, metric_name, correct, wrong)
    recorder = Recorder(monkeypatch)
    for size in (chunk_size, len(mask_set)):
        got = jaxablate.sweep(model, tokens, mask_set, replacement, metric, size)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL,
                                   err_msg=f"reuse_prefix=True, chunk_size={size}")
    for parent, attended in expect:
        assert recorder.took(parent=parent, attended=attended), (
            f"path parent={parent} attended={attended} not taken: {recorder.chunks}")
    if reuse_attention is not None:
        assert recorder.attention_reuse() == {reuse_attention}, (
            f"attention reuse expected {reuse_attention}: {recorder.chunks}, trajectories "
            f"{recorder.trajectory_attended}")
    starts = {c["start"] for c in recorder.chunks}
    plain = jaxablate.sweep(model, tokens, mask_set, replacement, metric, chunk_size,
                            reuse_prefix=False)
    np.testing.assert_allclose(plain, want, rtol=0, atol=ATOL, err_msg="reuse_prefix=False")
    return starts


# ---------------------------------------------------------------------------------------------
# Masks touching one layer each: own chunks, resumed from the clean stream.


@across_configs("repl_name", both_on_the_deepest("random", "resample"))
def test_single_heads_attention_reuse_straddling_chunks(setup, monkeypatch, repl_name):
    cfg = setup[0]
    rng = np.random.default_rng(1)
    ms = weighted_set(cfg, [[c] for c in components(cfg, ("heads",))], rng)
    # chunk of n_heads + 1: every chunk straddles two layers
    starts = check(setup, monkeypatch, ms, repl_name, "logit_diff", cfg.n_heads + 1,
                   expect=[(False, True)])
    assert len(starts) > 1


@across_configs("metric_name", METRIC_PER_CONFIG)
def test_single_components_of_every_kind(setup, monkeypatch, metric_name):
    cfg = setup[0]
    rng = np.random.default_rng(2)
    kinds = ("heads", "head_positions", "mlps", "neurons", "positions")
    ms = weighted_set(cfg, [[c] for c in components(cfg, kinds)], rng)
    check(setup, monkeypatch, ms, "random", metric_name, 7, expect=[(False, False)])


def test_single_components_without_positions_reuse_attention(setup, monkeypatch):
    cfg = setup[0]
    rng = np.random.default_rng(3)
    kinds = ("heads", "head_positions", "mlps", "neurons")
    ms = weighted_set(cfg, [[c] for c in components(cfg, kinds)], rng)
    check(setup, monkeypatch, ms, "resample", "logit_diff", 5, expect=[(False, True)])


# ---------------------------------------------------------------------------------------------
# Masks touching several layers: parents' trajectories, children resumed from them.


@across_configs("repl_name", both_on_the_deepest("random", "resample"))
def test_head_pairs_fractional_parents_with_attention_reuse(setup, monkeypatch, repl_name):
    cfg = setup[0]
    # The reproduction: one keep-weight for every head of every pair.
    ms = masks.head_pairs(cfg, weight=0.5)
    check(setup, monkeypatch, ms, repl_name, "logit_diff", 4, expect=[(True, True)])


def test_head_pairs_per_entry_weights(setup, monkeypatch):
    cfg = setup[0]
    rng = np.random.default_rng(4)
    heads = components(cfg, ("heads",))
    ms = weighted_set(cfg, [list(p) for p in itertools.combinations(heads, 2)], rng)
    check(setup, monkeypatch, ms, "random", "loss", 5, expect=[(True, True)])


def _spanning_groups(cfg, first_kinds, later_kinds, size=2):
    """Groups of `size` components in distinct layers: the first from `first_kinds` in an
    early layer, the rest from `later_kinds` in later layers; many share their first."""
    early = [c for c in components(cfg, first_kinds)
             if parse_component(c).index[0] < cfg.n_layers - size + 1]
    late = components(cfg, later_kinds)
    groups = []
    for a in early[::2]:
        la = parse_component(a).index[0]
        rest = [c for c in late if parse_component(c).index[0] > la]
        for combo in itertools.combinations(rest, size - 1):
            layers = [parse_component(c).index[0] for c in combo]
            if len(set(layers)) == len(layers):
                groups.append([a, *combo])
    return groups


def test_mixed_kind_pairs_parents_with_attention_reuse(setup, monkeypatch):
    cfg = setup[0]
    rng = np.random.default_rng(5)
    groups = _spanning_groups(cfg, ("heads", "mlps", "neurons", "head_positions"),
                              ("heads", "mlps", "neurons"))
    ms = weighted_set(cfg, groups, rng)
    check(setup, monkeypatch, ms, "random", "logit_diff", 6, expect=[(True, True)])


def test_mixed_kind_pairs_with_positions_parents_without_attention_reuse(setup, monkeypatch):
    cfg = setup[0]
    rng = np.random.default_rng(6)
    groups = _spanning_groups(cfg, ("heads", "positions", "neurons"),
                              ("heads", "positions", "mlps", "head_positions"))
    ms = weighted_set(cfg, groups, rng)
    check(setup, monkeypatch, ms, "resample", "logit_diff", 6, expect=[(True, False)])


def test_triples_across_three_layers(setup, monkeypatch):
    cfg = setup[0]
    rng = np.random.default_rng(7)
    groups = _spanning_groups(cfg, ("heads",), ("heads", "mlps"), size=3)
    ms = weighted_set(cfg, groups, rng)
    check(setup, monkeypatch, ms, "random", "kl_to_clean", 4, expect=[(True, True)])


# ---------------------------------------------------------------------------------------------
# Random mixed sets (hypothesis): own chunks and parents together, any chunk size.


# Each example compiles programs of its own shapes (~10 s on 2 cores). Every path these sets
# combine has its deterministic test above (own chunks straddling layers, parents with and
# without attention reuse, shared and per-example values, every kind), so 3 examples per
# config (9 in all) look for combinations those miss.
@settings(max_examples=3, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_mixed_sets_equal_loop(setup, monkeypatch, data):
    # A few shared first components, each followed by one or two later ones (so parents are
    # shared), plus single components; any kinds, any chunk size.
    cfg = setup[0]
    with_positions = data.draw(st.booleans(), label="positions kind")
    kinds = ("heads", "head_positions", "mlps", "neurons") + (
        ("positions",) if with_positions else ())
    pool = components(cfg, kinds)
    firsts = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True),
                       label="shared firsts")
    groups = [[c] for c in data.draw(st.lists(st.sampled_from(pool), max_size=6),
                                     label="singles")]
    for first in firsts:
        later = [c for c in pool if parse_component(c).index[0] > parse_component(first).index[0]]
        if later:
            tails = data.draw(st.lists(st.lists(st.sampled_from(later), min_size=1,
                                                max_size=2, unique=True),
                                       min_size=2, max_size=6), label=f"after {first}")
            groups += [[first, *tail] for tail in tails]
    if not groups:
        groups = [[pool[0]]]
    seed = data.draw(st.integers(0, 2**31 - 1), label="weights seed")
    ms = weighted_set(cfg, groups, np.random.default_rng(seed))
    chunk = data.draw(st.integers(1, len(groups)), label="chunk size")
    repl_name = data.draw(st.sampled_from(["random", "resample"]), label="replacement")
    monkeypatch.undo()
    check(setup, monkeypatch, ms, repl_name, "logit_diff", chunk, expect=[])


# ---------------------------------------------------------------------------------------------
# The patching kinds: the stream after attention (mid_positions), an MLP's output at one
# position (mlp_positions), and a head's query, key or value vector at one position
# (q/k/v_positions). q, k and v change a layer's attention itself, so a set with them never
# reuses attention; mid_positions and mlp_positions leave it alone, so a set of them (with
# heads, MLPs, neurons) does. Each set mixes singles (own chunks) with pairs and triples that
# share first components (parents), of new and old kinds; chunks of 7 straddle layers. The
# sets of one structure share compiled programs (the cases are costly to compile, not to run).

QKV = ("q_positions", "k_positions", "v_positions")
NEW_KINDS = ("mid_positions", "mlp_positions") + QKV
OLD_KINDS = ("heads", "head_positions", "mlps", "neurons", "positions")
ALL_KINDS = OLD_KINDS + NEW_KINDS
REATTENDING = ("heads", "head_positions", "mlps", "neurons", "mid_positions", "mlp_positions")
CHUNK = 7


def _shared(cfg, rng, first_kinds, later_kinds, size=2, n_firsts=4, n_kids=5):
    """Groups of `size` components in distinct layers: `n_firsts` first components of
    `first_kinds`, each followed by `n_kids` different tails of `later_kinds` (so each
    parent is shared by several children, and the children have different last layers)."""
    by_first: dict[str, list] = {}
    for group in _spanning_groups(cfg, first_kinds, later_kinds, size):
        by_first.setdefault(group[0], []).append(group)
    firsts = sorted(by_first)
    groups = []
    for i in sorted(rng.choice(len(firsts), min(n_firsts, len(firsts)), replace=False)):
        kids = by_first[firsts[i]]
        groups += [kids[j] for j in sorted(rng.choice(len(kids), min(n_kids, len(kids)),
                                                      replace=False))]
    return groups


def patch_kind_set(cfg, rng, reattending, kinds=None):
    """Singles of every kind of `kinds`, pairs and triples with shared parents: by default
    with q/k/v (and no positions kind, which would turn attention reuse off by itself), or
    only kinds that keep the layer's attention (`reattending`)."""
    if reattending:
        kinds, firsts = REATTENDING, (("mid_positions", "mlp_positions"), ("heads", "mlps"))
    else:
        kinds, firsts = kinds or REATTENDING + QKV, (QKV, ("mid_positions", "mlp_positions"))
    groups = [[c] for c in components(cfg, kinds)]
    for first in firsts:
        groups += _shared(cfg, rng, first, kinds)
    groups += _shared(cfg, rng, firsts[0], kinds, size=3, n_firsts=2, n_kids=4)
    return weighted_set(cfg, groups, rng)


@across_configs("repl_name", both_on_the_deepest("random", "patch"))  # shared, per-example
def test_patch_kinds_with_qkv_never_reuse_attention(setup, monkeypatch, repl_name):
    cfg = setup[0]
    ms = patch_kind_set(cfg, np.random.default_rng(20), reattending=False)
    assert set(ms.kinds) == set(REATTENDING + QKV)  # q, k, v alone turn attention reuse off
    starts = check(setup, monkeypatch, ms, repl_name, "logit_diff", CHUNK,
                   expect=[(False, False), (True, False)], reuse_attention=False)
    # Chunks resumed at (nearly) every layer. A single that is some pair's parent is served
    # by the parent's trajectory (a chunk at n_layers), so a layer whose own masks are all
    # served may start no chunk of its own.
    assert starts <= set(range(cfg.n_layers + 1))
    assert len(starts - {cfg.n_layers}) >= cfg.n_layers - 1, starts


@across_configs("repl_name", both_on_the_deepest("patch", "zero"))  # per-example, seq 1
def test_mid_and_mlp_positions_reuse_attention(setup, monkeypatch, repl_name):
    cfg = setup[0]
    ms = patch_kind_set(cfg, np.random.default_rng(21), reattending=True)
    assert set(ms.kinds) == set(REATTENDING)
    starts = check(setup, monkeypatch, ms, repl_name, "logit_diff", CHUNK,
                   expect=[(False, True), (True, True)], reuse_attention=True)
    # Chunks resumed at (nearly) every layer. A single that is some pair's parent is served
    # by the parent's trajectory (a chunk at n_layers), so a layer whose own masks are all
    # served may start no chunk of its own.
    assert starts <= set(range(cfg.n_layers + 1))
    assert len(starts - {cfg.n_layers}) >= cfg.n_layers - 1, starts


# The narrower cases run on the 4-layer model only (setup4), each in one chunk size.


@pytest.mark.parametrize("kind", QKV)
def test_each_of_q_k_v_turns_attention_reuse_off(setup4, monkeypatch, kind):
    # One q, k or v component among heads and MLPs (which alone would reuse attention);
    # other kinds absent (their blends skipped, not applied with weight 1).
    cfg = setup4[0]
    names = components(cfg, ("heads", "mlps")) + components(cfg, (kind,))[:1]
    ms = weighted_set(cfg, [[c] for c in names], np.random.default_rng(22))
    assert ms.kinds == ("heads", "mlps", kind)
    check(setup4, monkeypatch, ms, "resample", "loss", len(ms), expect=[(False, False)],
          reuse_attention=False)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_each_patch_kind_alone(setup4, monkeypatch, kind):
    # The kind alone in its set (no other field set), singles and pairs: loss reads every
    # position, so every patched position matters.
    cfg = setup4[0]
    rng = np.random.default_rng(23)
    groups = [[c] for c in components(cfg, (kind,))] + _shared(cfg, rng, (kind,), (kind,))
    ms = weighted_set(cfg, groups, rng)
    assert ms.kinds == (kind,)
    check(setup4, monkeypatch, ms, "random", "loss", len(ms),
          expect=[(False, kind not in QKV)], reuse_attention=kind not in QKV)


@pytest.mark.parametrize("metric_name", ["loss", "kl_to_clean"])
def test_patch_kinds_other_metrics(setup4, monkeypatch, metric_name):
    cfg = setup4[0]
    ms = patch_kind_set(cfg, np.random.default_rng(24), reattending=False, kinds=ALL_KINDS)
    assert set(ms.kinds) == set(ALL_KINDS)
    check(setup4, monkeypatch, ms, "patch", metric_name, len(ms),
          expect=[(False, False), (True, False)], reuse_attention=False)


@pytest.mark.parametrize("reattending", [False, True], ids=["with_qkv", "reattending"])
def test_patch_kinds_order_invariance(setup, reattending):
    # A permuted set gives the permuted result: other chunks, other parents' blocks.
    cfg, model, tokens, correct, wrong, repl = setup
    rng = np.random.default_rng(25)
    ms = patch_kind_set(cfg, rng, reattending)
    metric = ja_metric("logit_diff", correct, wrong)
    got = jaxablate.sweep(model, tokens, ms, repl["patch"], metric, CHUNK)
    perm = [int(i) for i in rng.permutation(len(ms))]
    again = jaxablate.sweep(model, tokens, ms.subset(perm), repl["patch"], metric, CHUNK)
    np.testing.assert_allclose(again, got[perm], rtol=0, atol=ATOL)


# 2 examples per config (6 in all), as above: the patching kinds' paths have their
# deterministic tests above and on the 4-layer model below.
@settings(max_examples=2, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_sets_with_patch_kinds_equal_loop(setup, monkeypatch, data):
    # As test_random_mixed_sets_equal_loop, with the patching kinds in the pool (q, k, v and
    # positions half of the time) and the patch and zero replacements among the choices. The
    # sets are materialised with every kind of their pool (one program shape per pool).
    cfg = setup[0]
    reattending = data.draw(st.booleans(), label="without q, k, v")
    kinds = REATTENDING if reattending else ALL_KINDS
    pool = components(cfg, kinds)
    firsts = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True),
                       label="shared firsts")
    groups = [[c] for c in data.draw(st.lists(st.sampled_from(pool), max_size=6),
                                     label="singles")]
    for first in firsts:
        later = [c for c in pool if parse_component(c).index[0] > parse_component(first).index[0]]
        if later:
            tails = data.draw(st.lists(st.lists(st.sampled_from(later), min_size=1,
                                                max_size=2, unique=True),
                                       min_size=2, max_size=6), label=f"after {first}")
            groups += [[first, *tail] for tail in tails]
    if not groups:
        groups = [[pool[0]]]
    seed = data.draw(st.integers(0, 2**31 - 1), label="weights seed")
    ms = weighted_set(cfg, groups, np.random.default_rng(seed)).with_kinds(kinds)
    chunk = data.draw(st.sampled_from([3, CHUNK]), label="chunk size")
    repl_name = data.draw(st.sampled_from(["random", "patch", "zero"]), label="replacement")
    monkeypatch.undo()
    check(setup, monkeypatch, ms, repl_name, "logit_diff", chunk, expect=[],
          reuse_attention=reattending)


# ---------------------------------------------------------------------------------------------
# Gradients in the keep-weights of the patching kinds: `attribute(method="grad")` against a
# central finite difference of the forward (the tolerance of test_attribution.py), on the
# 4-layer model, with per-example (patch) replacement values.


@eqx.filter_jit
def _last_logits_per_example(model, tokens, replacement, mask):
    """Logits at the last position, each example with its own replacement values."""
    def one(tok, repl):
        return model.run(tok, mask, repl, positions=jnp.array([tok.shape[0] - 1]))[0][0]

    return jax.vmap(one)(tokens, replacement)


def _set(mask, kind, index, value):
    return eqx.tree_at(lambda m: getattr(m, kind), mask,
                       getattr(mask, kind).at[index].set(value))


# Two components per kind: (layer, pos) or (layer, pos, head) of a 4-layer, 3-head model.
GRAD_PICKS = {
    "mid_positions": [(0, SEQ - 1), (2, 1)],
    "mlp_positions": [(0, 2), (3, SEQ - 1)],
    "q_positions": [(3, SEQ - 1, 0), (0, 3, 2)],
    "k_positions": [(3, 1, 1), (1, 0, 0)],
    "v_positions": [(2, 2, 0), (0, 1, 1)],
}


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_grad_of_patch_kinds_matches_central_finite_difference(setup4, kind):
    cfg, model, tokens, correct, wrong, repl = setup4
    replacement = repl["patch"]
    metric = metrics.logit_diff(correct, wrong)
    att = jaxablate.attribute(model, tokens, replacement, metric, "grad", kinds=(kind,))
    ones = jaxablate.Mask.keep_all(cfg, (kind,), seq_len=SEQ)
    rows = np.arange(BATCH)

    def f(mask):  # model.run: no range check, so keep-weights 1 + eps are allowed
        logits = np.asarray(_last_logits_per_example(model, jnp.asarray(tokens), replacement,
                                                     mask), np.float64)
        return logits[rows, correct] - logits[rows, wrong]

    np.testing.assert_allclose(np.asarray(att.clean), f(ones), rtol=0, atol=ATOL)
    for index in GRAD_PICKS[kind]:
        def fd(eps, index=index):
            return (f(_set(ones, kind, index, 1.0 + eps))
                    - f(_set(ones, kind, index, 1.0 - eps))) / (2 * eps)

        # test_attribution.py's reasoning: central differences err by the truncation
        # f'''(m) eps^2 / 6, measured by comparing eps with 2 eps (three times fd(eps)'s own),
        # plus float32 rounding ~1e-7 |f| / eps.
        eps = 1e-2
        f1, f2 = fd(eps), fd(2 * eps)
        truncation = np.abs(f2 - f1) / 3
        got = np.asarray(getattr(att.metric_change, kind))[(slice(None),) + index]
        name = jaxablate.Component(kind, index).name
        assert np.abs(f1).max() > 1e-2, f"{name} should matter for a meaningful test"
        np.testing.assert_allclose(got, -f1, atol=float(2 * truncation.max() + 2e-4),
                                   rtol=1e-3, err_msg=name)
        np.testing.assert_array_equal(att.per_example([name])[0], got)
