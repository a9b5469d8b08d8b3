"""`ja.to_frame`, `ja.by_layer_head` and `Attribution.to_frame` / `.heads`, against values
indexed by hand from `ms.names` and `parse_component`, scipy's s.e.m., a plain loop of
`ja.forward` (a real sweep on a random 3-layer model) and a real `ja.attribute`."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.stats

import jaxablate as ja
from conftest import make_hf_model, tiny_hf_config
from jaxablate.ablation.components import parse_component
from jaxablate.screening.attribution import Attribution

# 4 layers, 11 heads: head names "1.1" and "1.10" both exist.
CFG = ja.GPT2Config(n_layers=4, n_heads=11, d_model=44, d_mlp=16, d_vocab=50, n_ctx=16)
SEQ, BATCH = 5, 6
# What the frame must say for each Component kind: label and the column of each index axis.
EXPECTED_KIND = {
    "heads": ("head", ("layer", "head")),
    "head_positions": ("head@position", ("layer", "position", "head")),
    "mlps": ("mlp", ("layer",)),
    "neurons": ("neuron", ("layer", "neuron")),
    "positions": ("resid", ("layer", "position")),
    "sae_features": ("sae", ("feature",)),
    "mid_positions": ("mid", ("layer", "position")),
    "mlp_positions": ("mlp@position", ("layer", "position")),
    "q_positions": ("q", ("layer", "position", "head")),
    "k_positions": ("k", ("layer", "position", "head")),
    "v_positions": ("v", ("layer", "position", "head")),
}
INDEX = ("layer", "head", "position", "neuron", "feature")


def mask_sets():
    m = ja.masks
    return {
        "heads": m.single_heads(CFG),
        "mlps": m.single_mlps(CFG),
        "neurons": m.single_neurons(CFG, layers=[1, 3], neurons=[0, 7, 15]),
        "head@position": m.single_heads(CFG, position=-1, seq_len=SEQ),
        "pairs": m.head_pairs(CFG, heads=["0.1", "0.10", "1.1", "3.10"]),
        "patching": m.concat([m.positions(CFG, SEQ, layers=[0, 2]),
                              m.mid_positions(CFG, SEQ, layers=[1]),
                              m.mlp_positions(CFG, SEQ, layers=[3]),
                              m.head_vectors(CFG, "k", SEQ, position=2)]),
        "features": m.single_features(CFG, 9, features=[0, 8]),
        "mixed sets": m.from_components(CFG, ["2.10", ["1.2", "mlp3"], ["0.0", "n1.4", "3.3"],
                                              "n2.15", []], weight=0.25),
    }


def expected_rows(ms):
    """What each row of to_frame(ms, ...) must hold, from the names alone."""
    rows = []
    for name in ms.names:
        parts = [] if name == "clean" else name.split("+")
        row = dict.fromkeys(INDEX, pd.NA)
        row["component"], row["n_components"] = name, len(parts)
        if len(parts) == 1:
            component = parse_component(parts[0].split("=")[0])
            label, axes = EXPECTED_KIND[component.kind]
            row["kind"] = label
            row.update(zip(axes, component.index))
        else:
            row["kind"] = {0: "clean", 2: "pair"}.get(len(parts), "set")
        rows.append(row)
    return rows


@pytest.mark.parametrize("which", list(mask_sets()))
def test_to_frame_labels_and_statistics_by_hand(which):
    ms = mask_sets()[which]
    rng = np.random.default_rng(len(ms))
    values = rng.normal(size=(len(ms), BATCH)).astype(np.float32)
    clean = rng.normal(size=BATCH)
    frame = ja.to_frame(ms, values, clean)
    assert list(frame.columns) == ["component", "kind", *INDEX, "n_components", "mean", "sem",
                                   "metric_change", "metric_change_sem"]
    for column in INDEX:
        assert frame[column].dtype == "Int64", (column, frame[column].dtype)
    assert len(frame) == len(ms)
    for i, want in enumerate(expected_rows(ms)):
        got = frame.iloc[i]
        assert isinstance(got["component"], str)
        for key, value in want.items():
            if value is pd.NA:
                assert got[key] is pd.NA, (which, i, key, got[key])
            else:
                assert got[key] == value, (which, i, key, got[key], value)
        v = values[i].astype(np.float64)
        np.testing.assert_allclose(got["mean"], v.mean(), rtol=1e-12)
        np.testing.assert_allclose(got["sem"], scipy.stats.sem(v), rtol=1e-12)
        np.testing.assert_allclose(got["metric_change"], (v - clean).mean(), rtol=1e-12)
        np.testing.assert_allclose(got["metric_change_sem"], scipy.stats.sem(v - clean),
                                   rtol=1e-12)


def test_long_form_and_draws():
    ms = mask_sets()["mixed sets"]
    rng = np.random.default_rng(1)
    draws = rng.normal(size=(3, len(ms), BATCH))
    long = ja.to_frame(ms, draws, 0.5, long=True)
    assert len(long) == len(ms) * BATCH
    assert list(long.columns[-4:]) == ["n_components", "example", "value", "metric_change"]
    averaged = draws.mean(axis=0)
    for (i, e), got in zip(np.ndindex(len(ms), BATCH), long.itertuples()):
        assert (got.component, got.example) == (ms.names[i], e)
        np.testing.assert_allclose(got.value, averaged[i, e], rtol=1e-12)
        np.testing.assert_allclose(got.metric_change, averaged[i, e] - 0.5, rtol=1e-12)
    wide = ja.to_frame(ms, draws, 0.5)
    np.testing.assert_allclose(wide["mean"], averaged.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(wide["sem"], scipy.stats.sem(averaged, axis=1), rtol=1e-12)
    # A number baseline: the change is the mean minus it, with the values' own s.e.m.
    np.testing.assert_allclose(wide["metric_change"], averaged.mean(axis=1) - 0.5, rtol=1e-12)
    np.testing.assert_allclose(wide["metric_change_sem"], wide["sem"], rtol=1e-12)


@pytest.mark.parametrize("kind", ["logit_diff", "loss"])
def test_effect_follows_the_metric_sign(kind):
    ms = mask_sets()["heads"]
    rng = np.random.default_rng(2)
    values, clean = rng.normal(size=(len(ms), BATCH)), rng.normal(size=BATCH)
    metric = (ja.metrics.logit_diff(np.zeros(BATCH, int), np.ones(BATCH, int))
              if kind == "logit_diff" else ja.metrics.loss())
    frame = ja.to_frame(ms, values, clean, metric=metric)
    # docs/conventions.md: clean - ablated when higher is better, ablated - clean for loss.
    helps = clean - values if kind == "logit_diff" else values - clean
    np.testing.assert_allclose(frame["effect"], helps.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(frame["effect_sem"], scipy.stats.sem(helps, axis=1), rtol=1e-12)
    long = ja.to_frame(ms, values, clean, metric=metric, long=True)
    np.testing.assert_allclose(long["effect"], helps.reshape(-1), rtol=1e-12)


def test_by_layer_head_grids():
    rng = np.random.default_rng(3)
    heads = ja.masks.single_heads(CFG)
    values = rng.normal(size=(len(heads), BATCH))
    grid = ja.by_layer_head(heads, values)
    assert grid.shape == (CFG.n_layers, CFG.n_heads)
    for i, name in enumerate(heads.names):
        layer, head = parse_component(name).index
        np.testing.assert_allclose(grid[layer, head], values[i].mean(), rtol=1e-12)
    some = ja.masks.from_components(CFG, ["3.10", "0.1"])  # NaN where no mask
    grid = ja.by_layer_head(some, values[:2])
    assert np.isnan(grid).sum() == grid.size - 2
    np.testing.assert_allclose([grid[3, 10], grid[0, 1]], values[:2].mean(axis=1), rtol=1e-12)
    at = ja.masks.concat([ja.masks.single_heads(CFG, position=p, seq_len=SEQ) for p in (1, 4)])
    values = rng.normal(size=(len(at), BATCH))
    grid = ja.by_layer_head(at, values)
    assert grid.shape == (CFG.n_layers, SEQ, CFG.n_heads)
    for i, name in enumerate(at.names):  # "L.H@p": head_positions index (layer, p, head)
        np.testing.assert_allclose(grid[parse_component(name).index], values[i].mean(),
                                   rtol=1e-12)
    assert np.isnan(grid[:, [0, 2, 3]]).all() and not np.isnan(grid[:, [1, 4]]).any()


@pytest.mark.parametrize("which, message", [
    ("mlps", r"mask 0 \('mlp0', mlp\) is not a single head"),
    ("pairs", r"mask 0 \('0.1\+0.10', pair\) is not a single head"),
    ("mixed kinds", "mixes heads over all positions with heads at one position"),
    ("twice", r"masks 0 \('1.2'\) and 1 \('1.2=0.5'\) ablate the same head"),
])
def test_by_layer_head_refuses_other_sets(which, message):
    m = ja.masks
    ms = {"mlps": m.single_mlps(CFG), "pairs": mask_sets()["pairs"],
          "mixed kinds": m.from_components(CFG, ["1.2", "1.2@3"], seq_len=SEQ),
          "twice": m.concat([m.from_components(CFG, ["1.2"]),
                             m.from_components(CFG, ["1.2"], weight=0.5)])}[which]
    with pytest.raises(ja.InputError, match=message):
        ja.by_layer_head(ms, np.zeros((len(ms), 2)))


def test_bad_inputs_are_named():
    ms = mask_sets()["heads"]
    n = len(ms)
    with pytest.raises(ja.InputError, match=rf"values of shape \[{n + 1}, 3\] do not fit the "
                                            rf"mask set of {n} masks: expected \[N, batch\] = "
                                            rf"\[{n}, batch\]"):
        ja.to_frame(ms, np.zeros((n + 1, 3)))
    with pytest.raises(ja.InputError, match=rf"values of shape \[{n}\] do not fit"):
        ja.by_layer_head(ms, np.zeros(n))
    with pytest.raises(ja.InputError, match=r"baseline of shape \[4\] does not fit values with "
                                            r"batch 3: expected a number or \[batch\] = \[3\]"):
        ja.to_frame(ms, np.zeros((n, 3)), np.zeros(4))
    with pytest.raises(ja.InputTypeError, match="expected a jaxablate.MaskSet"):
        ja.to_frame(ms.names, np.zeros((n, 3)))
    with pytest.raises(ja.InputTypeError, match="numeric array"):
        ja.to_frame(ms, np.full((n, 3), "x"))
    with pytest.raises(ja.InputError, match="pass baseline too"):
        ja.to_frame(ms, np.zeros((n, 3)), metric=ja.metrics.loss())
    with pytest.raises(ja.InputTypeError, match="call it"):
        ja.to_frame(ms, np.zeros((n, 3)), 0.0, metric=ja.metrics.loss)


@pytest.fixture(scope="module")
def deep():
    """A random 3-layer model, tokens, a mean replacement and a logit-difference metric."""
    model = ja.load_gpt2(make_hf_model(tiny_hf_config(n_layer=3), seed=4))
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, model.cfg.d_vocab, (4, 6)).astype(np.int32)
    reference = rng.integers(0, model.cfg.d_vocab, (5, 6)).astype(np.int32)
    correct = rng.integers(0, model.cfg.d_vocab, 4)
    wrong = (correct + 1 + rng.integers(0, 50, 4)) % model.cfg.d_vocab
    metric = ja.metrics.logit_diff(correct, wrong)
    return model, tokens, ja.mean_replacement(model, reference), metric, correct, wrong


def test_a_real_sweep_against_a_forward_loop(deep):
    model, tokens, repl, metric, correct, wrong = deep
    ms = ja.masks.concat([ja.masks.single_heads(model.cfg), ja.masks.single_mlps(model.cfg),
                          ja.masks.head_pairs(model.cfg, heads=["0.1", "2.3"])])
    out = ja.sweep(model, tokens, ms, repl, metric)
    clean = ja.clean_metric(model, tokens, metric)
    frame = ja.to_frame(ms, out, clean, metric=metric)
    rows = np.arange(len(tokens))

    def logit_diff(mask=None):
        logits = np.asarray(ja.forward(model, tokens, mask, repl if mask is not None else None),
                            np.float64)[:, -1]
        return logits[rows, correct] - logits[rows, wrong]

    clean_loop = logit_diff()
    for i, got in frame.iterrows():
        ablated = logit_diff(ms.mask(i))
        assert got["component"] == ms.names[i]
        np.testing.assert_allclose(got["mean"], ablated.mean(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(got["effect"], (clean_loop - ablated).mean(), rtol=0,
                                   atol=1e-4)
    heads = frame[frame["kind"] == "head"]
    grid = ja.by_layer_head(ms.subset(range(len(heads))), out[:len(heads)])
    np.testing.assert_allclose(grid[heads["layer"].to_numpy(int), heads["head"].to_numpy(int)],
                               heads["mean"], rtol=1e-12)
    assert frame["kind"].tolist()[-1] == "pair" and frame["n_components"].iloc[-1] == 2


def test_attribution_frame_and_heads(deep):
    model, tokens, repl, metric, _, _ = deep
    att = ja.attribute(model, tokens, repl, metric, kinds=("heads", "mlps", "neurons"))
    scores = {k: np.asarray(getattr(att.metric_change, k), np.float64)
              for k in ("heads", "mlps", "neurons")}
    np.testing.assert_allclose(att.heads, scores["heads"].mean(axis=0), rtol=1e-12)
    assert att.heads.shape == (model.cfg.n_layers, model.cfg.n_heads)
    frame = att.to_frame()
    cfg = model.cfg
    assert len(frame) == cfg.n_layers * (cfg.n_heads + 1 + cfg.d_mlp)
    assert frame["kind"].unique().tolist() == ["head", "mlp", "neuron"]
    for got in frame.itertuples():
        component = parse_component(got.component)
        per_example = scores[component.kind][(slice(None),) + component.index]
        np.testing.assert_allclose(got.mean, per_example.mean(), rtol=1e-12)
        np.testing.assert_allclose(got.sem, scipy.stats.sem(per_example), rtol=1e-12)
        label, axes = EXPECTED_KIND[component.kind]
        assert got.kind == label
        assert [getattr(got, a) for a in axes] == list(component.index)
    # The frame's head rows are the heads grid, and ranking() names the same components.
    heads = frame[frame["kind"] == "head"]
    np.testing.assert_allclose(
        att.heads[heads["layer"].to_numpy(int), heads["head"].to_numpy(int)], heads["mean"],
        rtol=1e-12)
    assert sorted(frame["component"]) == sorted(name for name, _ in att.ranking())
    long = att.to_frame(long=True)
    assert len(long) == len(frame) * len(tokens)
    np.testing.assert_allclose(long.groupby("component", sort=False)["value"].mean(),
                               frame["mean"], rtol=1e-12)
    no_heads = Attribution(ja.Mask(mlps=jnp.zeros((2, cfg.n_layers))), jnp.zeros(2), None,
                           "grad", 1)
    with pytest.raises(ja.InputError, match="heads were not scored"):
        _ = no_heads.heads


def test_every_mask_kind_has_a_label_and_axes():
    # A new ablation kind must be named here too (docs/architecture.md "A new ablation kind").
    from jaxablate.ablation.frames import KIND_AXES, KIND_LABELS
    from jaxablate.model.mask import MASK_KINDS, kind_shapes

    assert set(KIND_LABELS) == set(KIND_AXES) == set(MASK_KINDS) == set(EXPECTED_KIND)
    shapes = kind_shapes(CFG, seq_len=SEQ, n_features=3)
    assert {k: len(v) for k, v in KIND_AXES.items()} == {k: len(shapes[k]) for k in MASK_KINDS}
