"""`ja.plot` (heads, positions, neurons) on real sweeps of a 3-layer random model, and the
report's figures of a real study: every figure's content (image arrays, colour limits, labels,
ticks, bar heights, text labels) against values indexed by hand from the sweep's output and
the mask names, never against the figure code's own helpers.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import make_hf_model, tiny_hf_config
from matplotlib.figure import Figure

import jaxablate as ja
from jaxablate.report import plots

BATCH, SEQ = 6, 7


@pytest.fixture(scope="module")
def model():
    return ja.load_gpt2(make_hf_model(tiny_hf_config(n_layer=3), seed=2))


@pytest.fixture(scope="module")
def prompts(model):
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 101, (BATCH, SEQ)).astype(np.int32)
    last = np.asarray(ja.forward(model, tokens, positions=-1))[:, 0]
    correct, wrong = last.argmax(-1), np.argsort(last, -1)[:, 50]  # a clear positive baseline
    metric = ja.metrics.logit_diff(correct.astype(np.int32), wrong.astype(np.int32))
    return tokens, metric, np.asarray(ja.clean_metric(model, tokens, metric), np.float64)


def swept(model, prompts, masks):
    tokens, metric, _ = prompts
    return np.asarray(ja.sweep(model, tokens, masks, ja.zero_replacement(model), metric),
                      np.float64)


@pytest.fixture(scope="module")
def head_sweep(model, prompts):
    masks = ja.masks.single_heads(model.cfg)
    return masks, swept(model, prompts, masks)


@pytest.fixture(scope="module")
def position_sweeps(model, prompts):
    """Residual-stream positions and every head at every position, swept as one set (one
    compiled program), split back into the two sets."""
    resid = ja.masks.positions(model.cfg, SEQ)
    names = [f"{l}.{h}@{p}" for l in range(3) for h in range(4) for p in range(SEQ)]
    head_at = ja.masks.from_components(model.cfg, names, seq_len=SEQ)
    values = swept(model, prompts, ja.masks.concat([resid, head_at]))
    return (resid, values[:len(resid)]), (head_at, values[len(resid):])


@pytest.fixture(autouse=True)
def leaves_pyplot_alone():
    """No figure is left registered in pyplot and no global style changes."""
    figures, style = plt.get_fignums(), dict(matplotlib.rcParams)
    yield
    assert plt.get_fignums() == figures
    assert dict(matplotlib.rcParams) == style


def image_of(fig):
    image = fig.axes[0].images[0]
    return np.ma.filled(np.ma.masked_invalid(image.get_array()).astype(float), np.nan), image


def texts(ax):
    return [t.get_text() for t in ax.texts]


def by_hand_heads(masks, means, cfg):
    grid = np.full((cfg.n_layers, cfg.n_heads), np.nan)
    for name, value in zip(masks.names, means):
        layer, head = (int(v) for v in name.split("."))
        grid[layer, head] = value
    return grid


def check_diverging(image, grid):
    low, high = image.get_clim()
    assert low == -high and high == pytest.approx(np.nanmax(np.abs(grid)), rel=1e-12)
    assert image.get_cmap().name.startswith("RdBu")


def test_heads_is_the_grid_of_the_sweep(model, prompts, head_sweep):
    masks, values = head_sweep
    fig = ja.plot.heads(values, masks, metric=prompts[1])
    assert isinstance(fig, Figure)
    grid, image = image_of(fig)
    expected = by_hand_heads(masks, values.mean(axis=1), model.cfg)
    np.testing.assert_allclose(grid, expected, rtol=1e-12)
    check_diverging(image, expected)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("head", "layer")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]
    label = image.colorbar.ax.get_ylabel()
    assert label == "logit diff (mean over prompts)", label
    assert ax.get_title() == "by head"
    # 12 heads: every value written in its cell
    assert sorted(texts(ax)) == sorted(f"{v:.2g}" for v in expected.ravel())


def test_heads_with_a_baseline_draws_the_effect(model, prompts, head_sweep):
    masks, values = head_sweep
    _, metric, clean = prompts
    effect = (clean[None, :] - values).mean(axis=1)  # logit diff: higher is better
    grid, image = image_of(ja.plot.heads(values, masks, metric=metric, baseline=clean))
    np.testing.assert_allclose(grid, by_hand_heads(masks, effect, model.cfg), rtol=1e-9)
    assert image.colorbar.ax.get_ylabel() == "effect on logit diff (clean - ablated)"
    # a few heads, out of order: those cells only, the rest grey (masked), not zero
    subset = [7, 0, 5]
    grid, image = image_of(ja.plot.heads(values[subset], masks.subset(subset),
                                         metric=metric, baseline=clean.mean()))
    expected = by_hand_heads(masks.subset(subset), (clean.mean() - values[subset]).mean(1),
                             model.cfg)
    np.testing.assert_allclose(grid, expected, rtol=1e-9)
    assert np.ma.getmaskarray(image.get_array()).sum() == 12 - 3
    red, green, blue, _ = image.get_cmap().get_bad()
    assert red == green == blue < 0.95  # grey, not the white of 0


def frame_of(masks, values, clean):
    """A DataFrame in `ja.to_frame`'s columns, built by hand from the names."""
    rows = []
    for name, row in zip(masks.names, values):
        layer, head = (int(v) for v in name.split("."))
        rows.append({"component": name, "kind": "head", "layer": layer, "head": head,
                     "position": None, "neuron": None, "mean": row.mean(),
                     "sem": row.std(ddof=1) / np.sqrt(len(row)),
                     "metric_change": (row - clean).mean(), "effect": (clean - row).mean()})
    frame = pd.DataFrame(rows)
    for column in ("layer", "head", "position", "neuron"):
        frame[column] = frame[column].astype("Int64")
    return frame


def test_heads_of_a_frame_and_of_an_array(model, prompts, head_sweep):
    masks, values = head_sweep
    _, metric, clean = prompts
    frame = frame_of(masks, values, clean)
    # the first value column held: effect, then metric_change, then mean
    for drop, column, label in (
            ([], "effect", "effect on logit diff"),
            (["effect"], "metric_change", "change in logit diff (ablated - clean)"),
            (["effect", "metric_change"], "mean", "logit diff (mean over prompts)")):
        grid, image = image_of(ja.plot.heads(frame.drop(columns=drop), metric="logit diff"))
        np.testing.assert_allclose(grid, by_hand_heads(masks, frame[column], model.cfg),
                                   rtol=1e-12)
        assert image.colorbar.ax.get_ylabel() == label
    # the library's own frame: its effect column, in the study's sign
    grid, _ = image_of(ja.plot.heads(ja.to_frame(masks, values, clean, metric=metric)))
    np.testing.assert_allclose(grid, by_hand_heads(masks, (clean - values).mean(1), model.cfg),
                               rtol=1e-12)
    # a plain [layer, head] array, drawn on the caller's Axes
    array = np.arange(12.0).reshape(3, 4) - 7.5
    array[1, 2] = np.nan
    mine = Figure()
    ax = mine.add_subplot()
    assert ja.plot.heads(array, metric="KL", title="mine", ax=ax) is mine
    grid, image = image_of(mine)
    np.testing.assert_array_equal(grid, array)
    assert image.get_clim() == (-7.5, 7.5)
    assert ax.get_title() == "mine" and image.colorbar.ax.get_ylabel() == "KL"


def test_positions_layer_by_position_with_tokens(prompts, position_sweeps):
    masks, values = position_sweeps[0]
    tokens = [f"tok{i}" for i in range(SEQ)]
    fig = ja.plot.positions(values, masks, metric=prompts[1], tokens=tokens)
    grid, image = image_of(fig)
    expected = np.full((3, SEQ), np.nan)
    for name, row in zip(masks.names, values):
        layer, pos = (int(v) for v in name.removeprefix("resid").split("@"))
        expected[layer, pos] = row.mean()
    np.testing.assert_allclose(grid, expected, rtol=1e-12)
    check_diverging(image, expected)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]
    assert ax.get_ylabel() == "layer" and "position" in ax.get_xlabel()
    assert "residual stream" in ax.get_title()
    assert image.colorbar.ax.get_ylabel() == "logit diff (mean over prompts)"


def test_positions_one_row_per_head_and_top_labels(prompts, position_sweeps):
    masks, values = position_sweeps[1]
    names = masks.names
    _, metric, clean = prompts
    fig = ja.plot.positions(values, masks, metric=metric, baseline=clean)
    grid, image = image_of(fig)
    effect = (clean[None, :] - values).mean(axis=1)
    by_pos = np.full((3, SEQ, 4), np.nan)  # [layer, pos, head]
    expected = np.full((12, SEQ), np.nan)  # rows layer.head
    for name, value in zip(names, effect):
        head, pos = name.split("@")
        layer, h = (int(v) for v in head.split("."))
        expected[4 * layer + h, int(pos)] = value
        by_pos[layer, int(pos), h] = value
    np.testing.assert_allclose(grid, expected, rtol=1e-9)
    check_diverging(image, expected)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        f"{l}.{h}" for l in range(3) for h in range(4)]
    # 84 cells: only the 12 largest |effect| are written, each in its own cell
    flat = np.argsort(-np.abs(expected.ravel()), kind="stable")[:12]
    top = {(int(i) // SEQ, int(i) % SEQ) for i in flat}
    written = {(int(t.get_position()[1]), int(t.get_position()[0])): t.get_text()
               for t in ax.texts}
    assert set(written) == top and len(ax.texts) == 12
    for (row, pos), text in written.items():
        assert text == f"{expected[row, pos]:.2g}"
    assert "top 12" in ax.get_title()
    # the same values as a [layer, pos, head] array (TL's attn_head_out_by_pos layout)
    grid, _ = image_of(ja.plot.positions(by_pos, metric="x"))
    np.testing.assert_array_equal(grid, expected)


def test_neurons_are_the_top_k_by_absolute_effect(model, prompts):
    masks = ja.masks.single_neurons(model.cfg, layers=[1, 2])
    values = swept(model, prompts, masks)
    _, metric, clean = prompts
    fig = ja.plot.neurons(values, masks, metric=metric, baseline=clean, k=10)
    effect = (clean[None, :] - values).mean(axis=1)
    order = np.argsort(-np.abs(effect), kind="stable")[:10]
    ax = fig.axes[0]
    heights = [bar.get_height() for bar in ax.patches]
    np.testing.assert_allclose(heights, effect[order], rtol=1e-9)
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        masks.names[i].removeprefix("n") for i in order]
    assert ax.get_ylabel() == "effect on logit diff (clean - ablated)"
    assert "10 of 256" in ax.get_title()
    # a frame with neuron columns gives the same bars
    frame = pd.DataFrame({"component": masks.names, "kind": "neuron",
                          "layer": [int(n[1:].split(".")[0]) for n in masks.names],
                          "head": pd.array([None] * len(masks), dtype="Int64"),
                          "neuron": [int(n.split(".")[1]) for n in masks.names],
                          "mean": values.mean(1), "effect": effect})
    again = ja.plot.neurons(frame, metric="logit diff", k=10).axes[0]
    np.testing.assert_allclose([b.get_height() for b in again.patches], effect[order])


def test_bad_input_is_refused_with_a_clear_error(model):
    cfg = model.cfg
    heads = ja.masks.single_heads(cfg)
    with pytest.raises(ja.InputError, match=r"N = 12 masks, got shape \(11, 6\)"):
        ja.plot.heads(np.zeros((11, 6)), heads)
    with pytest.raises(ja.InputError, match="'0.0\\+0.1' is not a single component"):
        ja.plot.heads(np.zeros((66, 2)), ja.masks.head_pairs(cfg))
    with pytest.raises(ja.InputTypeError, match="pass the Metric itself"):
        ja.plot.heads(np.zeros((12, 2)), heads, metric="logit diff", baseline=0.0)
    with pytest.raises(ja.InputTypeError, match="MaskSet"):
        ja.plot.heads(np.zeros((12, 2)), heads.names)
    with pytest.raises(ja.InputError, match="one token string per position, 4, got 3"):
        ja.plot.positions(np.zeros((3, 4)), tokens=["a", "b", "c"])
    with pytest.raises(ja.InputError, match="needs columns layer, head"):
        ja.plot.heads(pd.DataFrame({"component": ["0.0"], "mean": [1.0]}))
    with pytest.raises(ja.InputError, match="two masks for '0.1'"):
        ja.plot.heads(np.zeros((2, 1)), ja.masks.from_components(cfg, ["0.1", "0.1"]))
    with pytest.raises(ja.InputError, match="k must be a positive integer"):
        ja.plot.neurons(np.zeros((3, 4)), k=0)


@pytest.fixture(scope="module")
def study_result(model, prompts):
    tokens, metric, _ = prompts
    study = ja.Study(model, tokens=tokens, metric=metric, ablation="zero", n_bootstrap=50,
                     seed=0, model_name="tiny3")
    return study.run(steps=("single", "interactions"), top_k=4).to_dict()


def test_report_figures_of_a_real_study(study_result, head_sweep, prompts, model, tmp_path):
    masks, values = head_sweep
    # the study's single-head heatmap: the effects of the plain sweep, indexed by hand
    fig = plots.single_heads_figure(study_result)
    grid, image = image_of(fig)
    effect = (prompts[2][None, :] - values).mean(axis=1)
    np.testing.assert_allclose(grid, by_hand_heads(masks, effect, model.cfg), atol=1e-5)
    check_diverging(image, grid)
    title = fig.axes[0].get_title()
    assert "tiny3" in title and "zero ablation" in title
    # interactions: the off-diagonal cells are the matrix, the diagonal is marked (masked,
    # hatched) and carries the single effects
    section = study_result["interactions"]
    fig = plots.interactions_figure(study_result)
    grid, image = image_of(fig)
    matrix = np.array(section["matrix"], dtype=float)
    off = ~np.eye(len(matrix), dtype=bool)
    np.testing.assert_array_equal(grid[off], matrix[off])
    assert np.ma.getmaskarray(image.get_array()).diagonal().all()
    ax = fig.axes[0]
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert sorted(p.get_xy() for p in hatched) == [(i - 0.5, i - 0.5) for i in range(4)]
    single = {r["component"]: r["effect"] for r in study_result["single"]}
    diagonal = [t.get_text() for t in ax.texts if t.get_position()[0] == t.get_position()[1]]
    assert diagonal == [f"{single[name]:.2g}" for name in section["components"]]
    assert "diagonal (hatched): single effects" in ax.get_title()
    assert ("outlined: backup candidates" in ax.get_title()) == any(
        p["backup_candidate"] for p in section["pairs"])
    assert ax.get_xlabel() and ax.get_ylabel()
    written = plots.plot_all(study_result, tmp_path)
    assert sorted(written) == ["interactions", "single_heads"]
