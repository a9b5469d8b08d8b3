"""The report writer and the figures, on hand-built study result dicts (no model, no Study)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from jaxablate.report import plots
from jaxablate.report.files import summary_markdown, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The baseline and the headline numbers, chosen to print exactly under 4 significant digits.
BASELINE, TOP_EFFECT, FAITHFULNESS = 3.125, 2.75, 0.9375


def synthetic_result(n_layers: int = 2, n_heads: int = 3, n_prompts: int = 4,
                     full: bool = True) -> dict:
    """A study result dict in the schema of `StudyResult.to_dict()`: heads only, made up."""
    rng = np.random.default_rng(0)
    names = [f"{layer}.{head}" for layer in range(n_layers) for head in range(n_heads)]
    effects = np.linspace(TOP_EFFECT, -0.5, len(names))
    effects[len(names) // 2] = 0.0
    single = []
    for i, name in enumerate(names):
        layer, head = divmod(i, n_heads)
        per_example = (effects[i] + rng.normal(0, 0.1, n_prompts)).tolist()
        effect = float(effects[i])
        single.append({
            "component": name, "kind": "head", "layer": layer, "index": head,
            "effect": effect, "sem": 0.05, "ci_low": effect - 0.1, "ci_high": effect + 0.1,
            "rank": i + 1, "critical": effect > 1.0, "negative": effect < -0.2,
            "no_effect": abs(effect) < 0.2, "per_example": per_example})
    order = [r["component"] for r in single][::-1]  # as the Study: lowest effect first
    n = len(names)
    result = {
        "meta": {"model": "tiny-test", "model_config": {
                     "n_layers": n_layers, "n_heads": n_heads, "d_model": 32, "d_head": 8,
                     "d_mlp": 128, "d_vocab": 101, "n_ctx": 64},
                 "task": {"name": "induction", "half": 4, "seed": 0},
                 "ablation": "mean", "metric": "logit_diff", "higher_is_better": True,
                 "seed": 0, "n_prompts": n_prompts, "seq_len": 8, "components": ["heads"],
                 "threshold": 0.5, "threshold_rule": "critical if effect > 0.5 and CI excludes 0",
                 "versions": {"jaxablate": "0.1.0", "jax": "0.10.2", "numpy": "2.4.6"},
                 "date": "2026-11-25T10:00:00", "seconds": {"single": 1.5, "cumulative": 0.5}},
        "baseline": {"mean": BASELINE, "sem": 0.0625,
                     "per_example": [3.0, 3.25, 3.125, 3.125]},
        "single": single,
    }
    if not full:
        return result
    metric = [BASELINE - 0.4 * k for k in range(1, n + 1)]
    result["cumulative"] = {
        "order": order, "fractions": [k / n for k in range(1, n + 1)],
        "n_ablated": list(range(1, n + 1)), "metric": metric, "sem": [0.05] * n,
        "recovered": [(m - metric[-1]) / (BASELINE - metric[-1]) for m in metric],
        "cliff": {"fraction": 2 / n, "n_ablated": 2, "drop": 0.1875, "below_half": 4 / n,
                  "rule": "largest drop in recovered"}}
    result["circuit"] = {
        "target": 0.9, "members": ["0.0", "0.1"], "size": 2, "share": 2 / n,
        "faithfulness": FAITHFULNESS, "metric_all_ablated": 0.5, "metric_circuit": 2.96875,
        "steps": [{"added": "0.0", "recovered": 0.6}, {"added": "0.1", "recovered": 0.9375}],
        "minimality": [{"component": "0.0", "recovered_without": 0.3, "hurts": True},
                       {"component": "0.1", "recovered_without": 0.6, "hurts": True}],
        "minimal": True}
    top = names[:3]
    pairs = [{"a": a, "b": b, "joint": 1.0, "single_a": 0.75, "single_b": 0.5,
              "interaction": -0.25, "backup_candidate": (a, b) == ("0.0", "0.1")}
             for i, a in enumerate(top) for b in top[i + 1:]]
    matrix = [[None if a == b else -0.25 for b in top] for a in top]
    result["interactions"] = {"components": top, "matrix": matrix, "pairs": pairs}
    verdicts = {t: ["critical" if e > 1.0 else "none" for e in effects] for t in
                ("zero", "mean", "resample")}
    verdicts["zero"][4] = "critical"
    result["ablation_comparison"] = {
        "types": ["zero", "mean", "resample"],
        "effects": {"zero": (effects * 1.5).tolist(), "mean": effects.tolist(),
                    "resample": (effects * 0.75).tolist()},
        "components": names, "resample_std": [0.125] * n,
        "spearman": {"zero~mean": 0.875, "zero~resample": 0.75, "mean~resample": 1.0},
        "verdicts": verdicts,
        "changed": [{"component": names[4],
                     "verdicts": {t: verdicts[t][4] for t in verdicts}}]}
    estimate = (effects * 0.8).tolist()
    estimate[1] = -0.25  # one component the screen gets wrong
    screen_rank = np.argsort(np.argsort(-np.abs(estimate), kind="stable"), kind="stable") + 1
    top = [i for i in range(n) if screen_rank[i] <= 3]
    result["screening"] = {
        "method": "ig", "steps": 16, "top_k": 3, "components": names, "estimated_effect": estimate,
        "estimated_effect_sem": [0.01] * n, "screen_rank": screen_rank.tolist(),
        "exact_effect": [float(effects[i]) if i in top else None for i in range(n)],
        "exact_effect_all": effects.tolist(), "verified": [i in top for i in range(n)],
        "fails": [i == 1 for i in range(n)], "failures": [names[1]],
        "records": [{"component": names[i], "screen_rank": int(screen_rank[i]),
                     "estimated_effect": estimate[i], "exact_effect": float(effects[i]), "exact_effect_sem": 0.05,
                     "exact_effect_ci_low": float(effects[i]) - 0.1,
                     "exact_effect_ci_high": float(effects[i]) + 0.1,
                     "difference": estimate[i] - float(effects[i]), "fails": i == 1}
                    for i in sorted(top, key=lambda i: screen_rank[i])],
        "spearman_top_k": 0.5, "spearman_all": 0.625, "precision_at_k": 2 / 3,
        "critical_found": {"found": 1, "total": 2}, "completeness": {
            "sum_of_estimates": 1.0, "effect_all_ablated": 1.0, "error": 0.0},
        "rule": "fails: made up", "note": "made up", "seconds": {"screening": 0.5,
                                                                  "verification": None},
        "verified_from": "single step"}
    return result


def check_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 5000, f"{path} has only {len(data)} bytes"


def test_full_report_writes_every_file(tmp_path):
    result = synthetic_result()
    folder = write_report(result, tmp_path / "report")
    expected = ["study.json", "single.csv", "single.parquet", "per_example.parquet",
                "cumulative.csv", "interactions.csv", "ablation_comparison.csv", "summary.md",
                "screening.csv", "screening.parquet"]
    expected += [f"{name}.png" for name in plots.FIGURES if name != "single_layers"]
    for name in expected:
        assert (folder / name).is_file(), f"{name} missing; folder has {sorted(folder.iterdir())}"
    assert not (folder / "single_layers.png").exists()  # heads only
    for name in expected:
        if name.endswith(".png"):
            check_png(folder / name)
    assert json.loads((folder / "study.json").read_text()) == result


def test_tables_read_back_equal_the_dict(tmp_path):
    result = synthetic_result()
    folder = write_report(result, tmp_path, plots=False)
    by_name = {r["component"]: r for r in result["single"]}
    # The CSVs write a head "head 1.10" (read_csv's defaults keep it text); Parquet "1.10".
    single_csv = pd.read_csv(folder / "single.csv")
    single_csv["component"] = single_csv["component"].str.removeprefix("head ")
    for frame in (single_csv, pd.read_parquet(folder / "single.parquet")):
        assert list(frame["component"]) == [r["component"] for r in result["single"]]
        assert list(frame["rank"]) == sorted(r["rank"] for r in result["single"])
        for _, row in frame.iterrows():
            want = by_name[str(row["component"])]
            for key in ("effect", "sem", "ci_low", "ci_high"):
                np.testing.assert_allclose(row[key], want[key], rtol=1e-12)
            for key in ("layer", "index", "rank", "critical", "negative", "no_effect"):
                assert row[key] == want[key], (key, row[key], want[key])
        assert "per_example" not in frame
    long = pd.read_parquet(folder / "per_example.parquet")
    assert list(long.columns) == ["component", "example", "effect"]
    for name, group in long.groupby("component"):
        np.testing.assert_allclose(group.sort_values("example")["effect"],
                                   by_name[name]["per_example"], rtol=1e-12)
    cumulative = pd.read_csv(folder / "cumulative.csv")
    cumulative["last_ablated"] = cumulative["last_ablated"].str.removeprefix("head ")
    np.testing.assert_allclose(cumulative["metric"], result["cumulative"]["metric"])
    np.testing.assert_allclose(cumulative["fraction"], result["cumulative"]["fractions"])
    assert cumulative["last_ablated"].tolist() == result["cumulative"]["order"]
    pairs = pd.read_csv(folder / "interactions.csv")
    pairs[["a", "b"]] = pairs[["a", "b"]].apply(lambda names: names.str.removeprefix("head "))
    assert pairs.to_dict("records") == result["interactions"]["pairs"]
    comparison = pd.read_csv(folder / "ablation_comparison.csv", dtype={"component": str})
    section = result["ablation_comparison"]
    for kind in section["types"]:
        np.testing.assert_allclose(comparison[f"effect_{kind}"], section["effects"][kind])
        assert comparison[f"verdict_{kind}"].tolist() == section["verdicts"][kind]
    np.testing.assert_allclose(comparison["resample_std"], section["resample_std"])
    assert comparison["changed"].tolist() == [c == section["changed"][0]["component"]
                                              for c in section["components"]]


def test_summary_states_the_key_numbers(tmp_path):
    result = synthetic_result()
    text = (write_report(result, tmp_path) / "summary.md").read_text()
    for needle in (f"{BASELINE} ± 0.0625", "`0.0`", f"{TOP_EFFECT} ± 0.05",
                   f"faithfulness {FAITHFULNESS}", "size 2", "critical if effect > 0.5",
                   "logit_diff (higher is better)", "mean", "**Cliff** at 2",
                   "lowest effect first", "zero vs mean | 0.875", "1 backup candidate",
                   "| `1.1` | critical | none | none |", "(single_heads.png)",
                   "(cumulative.png)", "(interactions.png)", "(ablation_types.png)",
                   "[single.csv](single.csv)", "## Gradient screening",
                   "Spearman ρ, every component | 0.625", "precision at k (by \\|effect\\|) | 0.6667",
                   "critical components in the top k | 1 of 2", "The estimate fails for `0.1`",
                   "(screening.png)", "[screening.csv](screening.csv)"):
        assert needle in text, f"{needle!r} not in summary.md:\n{text}"
    counts = "**3 critical**, 1 negative, 2 with no effect"
    assert counts in text, text


def test_missing_sections_are_skipped(tmp_path):
    result = synthetic_result(full=False)
    result["cumulative"] = None  # skipped steps may be absent or None
    folder = write_report(result, tmp_path)
    for name in ("study.json", "single.csv", "single.parquet", "per_example.parquet",
                 "summary.md", "single_heads.png"):
        assert (folder / name).is_file(), name
    for name in ("cumulative.csv", "interactions.csv", "ablation_comparison.csv",
                 "cumulative.png", "interactions.png", "ablation_types.png", "screening.csv",
                 "screening.png"):
        assert not (folder / name).exists(), name
    assert json.loads((folder / "study.json").read_text()) == result
    text = (folder / "summary.md").read_text()
    assert text.count("Not run.") == 5, text
    assert f"{BASELINE} ± 0.0625" in text


def test_mlp_and_neuron_rows_get_bar_charts(tmp_path):
    result = synthetic_result(full=False)
    rows = []
    for layer in range(2):
        rows.append({"component": f"mlp{layer}", "kind": "mlp", "layer": layer, "index": None,
                     "effect": 0.5 + layer, "sem": 0.1, "ci_low": 0.3 + layer,
                     "ci_high": 0.7 + layer, "rank": 2 - layer, "critical": layer == 1,
                     "negative": False, "no_effect": False, "per_example": [0.5] * 4})
        for i in range(3):
            rows.append({"component": f"n{layer}.{i}", "kind": "neuron", "layer": layer,
                         "index": i, "effect": 0.1 * i, "sem": 0.01, "ci_low": 0.1 * i - 0.02,
                         "ci_high": 0.1 * i + 0.02, "rank": 3 + 3 * layer + i,
                         "critical": False, "negative": False, "no_effect": i == 0,
                         "per_example": [0.1 * i] * 4})
    result["single"] = rows
    result["meta"]["components"] = ["mlps", "neurons"]
    folder = write_report(result, tmp_path)
    check_png(folder / "single_layers.png")
    assert not (folder / "single_heads.png").exists()
    frame = pd.read_parquet(folder / "single.parquet")
    assert frame["component"].tolist()[:2] == ["mlp1", "mlp0"]
    assert frame["index"].isna().tolist()[:2] == [True, True]
    assert "(single_layers.png)" in (folder / "summary.md").read_text()


def test_non_finite_numbers_become_null(tmp_path):
    result = synthetic_result()
    result["single"][0]["sem"] = float("nan")
    result["interactions"]["matrix"][0][1] = float("inf")
    folder = write_report(result, tmp_path)
    back = json.loads((folder / "study.json").read_text())
    assert back["single"][0]["sem"] is None and back["interactions"]["matrix"][0][1] is None
    assert f"{TOP_EFFECT} ± –" in (folder / "summary.md").read_text()


def test_plot_functions_skip_absent_sections(tmp_path):
    result = synthetic_result(full=False)
    for make in (plots.plot_cumulative, plots.plot_interactions, plots.plot_ablation_types,
                 plots.plot_single_layers, plots.plot_screening):
        assert make(result, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()
    assert plots.plot_single_heads(result, tmp_path / "h.png") == tmp_path / "h.png"


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no single section"):
        summary_markdown({"meta": {}, "baseline": {}})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        write_report(synthetic_result(full=False), tmp_path / "file")
    broken = copy.deepcopy(synthetic_result())
    broken["cumulative"]["metric"] = broken["cumulative"]["metric"][:-1]
    with pytest.raises(ValueError, match="different lengths"):
        write_report(broken, tmp_path / "out", plots=False)


# ---------------------------------------------------------------------------------------------
# The figures' content (the Figure objects themselves), against the result dict indexed by hand.


@pytest.fixture
def leaves_pyplot_alone():
    import matplotlib
    import matplotlib.pyplot as plt

    figures, style = plt.get_fignums(), dict(matplotlib.rcParams)
    yield
    assert plt.get_fignums() == figures
    assert dict(matplotlib.rcParams) == style


def image_grid(ax):
    image = ax.images[0]
    return np.ma.filled(np.ma.masked_invalid(image.get_array()).astype(float), np.nan), image


def cell_texts(ax):
    """{(row, column): text} of the values written in a heatmap's cells."""
    return {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
            for t in ax.texts}


def outlines(ax):
    return sorted((p.get_xy()[1] + 0.5, p.get_xy()[0] + 0.5) for p in ax.patches
                  if not p.get_fill() and p.get_linewidth() == 2)


def heads_by_hand(result):
    config = result["meta"]["model_config"]
    grid = np.full((config["n_layers"], config["n_heads"]), np.nan)
    for r in result["single"]:
        layer, head = (int(v) for v in r["component"].split("."))
        grid[layer, head] = r["effect"]
    return grid


def test_single_heads_figure_is_the_effect_grid(leaves_pyplot_alone):
    result = synthetic_result()
    fig = plots.single_heads_figure(result)
    ax = fig.axes[0]
    grid, image = image_grid(ax)
    expected = heads_by_hand(result)
    np.testing.assert_array_equal(grid, expected)
    assert image.get_clim() == (-TOP_EFFECT, TOP_EFFECT)  # symmetric about 0
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("head", "layer")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1"]
    title = ax.get_title()
    for needle in ("tiny-test", "induction", "mean ablation", "outlined: critical",
                   "* 95% CI excludes 0"):
        assert needle in title, title
    assert image.colorbar.ax.get_ylabel() == "effect on logit_diff (mean ablation)"
    critical = sorted((float(r["layer"]), float(r["index"])) for r in result["single"]
                      if r["critical"])
    assert outlines(ax) == critical and 0 < len(critical) < 6
    texts = cell_texts(ax)
    assert set(texts) == {(i, j) for i in range(2) for j in range(3)}
    for (i, j), text in texts.items():
        assert text.rstrip("*") == f"{expected[i, j]:.2g}"


@pytest.mark.parametrize("critical", [True, False])
def test_no_outline_note_when_it_distinguishes_nothing(critical, leaves_pyplot_alone):
    result = synthetic_result(n_layers=2, n_heads=2, full=False)
    for r in result["single"]:
        r["critical"] = critical
    ax = plots.single_heads_figure(result).axes[0]
    assert "outlined" not in ax.get_title() and outlines(ax) == []
    assert ("all 4 heads critical" in ax.get_title()) == critical


def test_a_big_head_grid_writes_only_the_top_values(leaves_pyplot_alone):
    result = synthetic_result(n_layers=12, n_heads=12)
    ax = plots.single_heads_figure(result).axes[0]
    expected = heads_by_hand(result)
    flat = np.argsort(-np.abs(expected.ravel()), kind="stable")[:12]
    texts = cell_texts(ax)
    assert set(texts) == {divmod(int(i), 12) for i in flat}
    assert "values: the top 12 by |effect|" in ax.get_title()


def test_interactions_diagonal_holds_the_singles(leaves_pyplot_alone):
    result = synthetic_result()
    single = {r["component"]: r["effect"] for r in result["single"]}
    for pair in result["interactions"]["pairs"]:  # singles as the study's own
        pair["single_a"], pair["single_b"] = single[pair["a"]], single[pair["b"]]
    names = result["interactions"]["components"]
    ax = plots.interactions_figure(result).axes[0]
    grid, image = image_grid(ax)
    matrix = np.array([[np.nan if v is None else v for v in row]
                       for row in result["interactions"]["matrix"]], dtype=float)
    np.testing.assert_array_equal(grid, matrix)
    assert np.ma.getmaskarray(image.get_array()).diagonal().all()
    assert image.get_clim() == (-0.25, 0.25)
    hatched = sorted(p.get_xy() for p in ax.patches if p.get_hatch())
    assert hatched == [(i - 0.5, i - 0.5) for i in range(3)]
    texts = cell_texts(ax)
    assert {cell: texts[cell] for cell in texts if cell[0] == cell[1]} == {
        (i, i): f"{single[name]:.2g}" for i, name in enumerate(names)}
    assert {cell: texts[cell] for cell in texts if cell[0] > cell[1]} == {
        (1, 0): "-0.25", (2, 0): "-0.25", (2, 1): "-0.25"}
    title = ax.get_title()
    assert "diagonal (hatched): single effects" in title and "mean ablation" in title
    assert "outlined: backup candidates" in title and outlines(ax) == [(0, 1), (1, 0)]
    assert ax.get_xlabel() == "component b" and ax.get_ylabel() == "component a"
    assert "logit_diff" in image.colorbar.ax.get_ylabel()
    for pair in result["interactions"]["pairs"]:
        pair["backup_candidate"] = False
    ax = plots.interactions_figure(result).axes[0]
    assert "outlined" not in ax.get_title() and outlines(ax) == []


def big_screening(result, n=300):
    rng = np.random.default_rng(3)
    names = [f"n{i // 100}.{i % 100}" for i in range(n)]
    exact, estimate = rng.normal(0, 1, n), rng.normal(0, 1, n)
    result["screening"].update(
        components=names, estimated_effect=estimate.tolist(), exact_effect_all=exact.tolist(),
        verified=[i < 10 for i in range(n)], fails=[i == 3 for i in range(n)])
    return names, exact


def test_a_big_screening_scatter_names_only_the_top_k(leaves_pyplot_alone):
    result = synthetic_result()
    names, exact = big_screening(result)
    ax = plots.screening_figure(result).axes[0]
    named = [t.get_text() for t in ax.texts]
    top = [names[i] for i in np.argsort(-np.abs(exact), kind="stable")[:12]]
    assert len(named) <= 12 and sorted(named) == sorted(top)
    assert "named: the top 12 by |exact effect|" in ax.get_title()
    assert "screening estimate" in ax.get_xlabel() and "logit_diff" in ax.get_ylabel()
    assert "tiny-test" in ax.get_title() and "mean ablation" in ax.get_title()


def test_ablation_types_figure_names_components_and_the_metric(leaves_pyplot_alone):
    result = synthetic_result(n_layers=4, n_heads=5)
    section = result["ablation_comparison"]
    fig = plots.ablation_types_figure(result)
    left, right = fig.axes
    assert "tiny-test" in fig.get_suptitle() and "zero, mean, resample" in fig.get_suptitle()
    points = [(abs(y), name) for kind in ("zero", "resample")
              for y, name in zip(section["effects"][kind], section["components"])]
    top = sorted(points, key=lambda p: -p[0])[:12]
    assert sorted(t.get_text() for t in left.texts) == sorted(name for _, name in top)
    assert left.get_xlabel() == "effect on logit_diff, mean ablation"
    assert "logit_diff" in left.get_ylabel() and right.get_ylabel() == "effect on logit_diff"
    ranked = [r["component"] for r in sorted(result["single"], key=lambda r: r["rank"])][:12]
    assert [t.get_text() for t in right.get_xticklabels()] == ranked


def test_every_report_figure_is_titled_and_labelled(tmp_path, leaves_pyplot_alone):
    result = synthetic_result()
    n, seq = 6, 10
    rng = np.random.default_rng(5)
    result["patching"] = {
        "components": [f"0.{i}" for i in range(n)], "direction": "denoising",
        "metric": "logit_diff", "by_position": {"restored": rng.normal(0, 1, (n, seq)).tolist()},
        "all_positions": {"restored": [0.5] * n}, "direct": {"restored": [0.25] * n}}
    figures = {"single_heads": plots.single_heads_figure, "screening": plots.screening_figure,
               "cumulative": plots.cumulative_figure, "interactions": plots.interactions_figure,
               "ablation_types": plots.ablation_types_figure,
               "patching": plots.patching_figure}
    for name, make in figures.items():
        fig = make(result)
        title = fig.get_suptitle() or fig.axes[0].get_title()
        assert "tiny-test" in title and "induction" in title, (name, title)
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                assert ax.get_ylabel(), name
                continue
            assert ax.get_xlabel() and ax.get_ylabel(), name
            legend = ax.get_legend()
            assert legend is None or len(legend.get_texts()) >= 1, name
    patching = figures["patching"](result).axes[0]
    table = np.concatenate([np.array(result["patching"]["by_position"]["restored"]),
                            np.full((n, 1), 0.5), np.full((n, 1), 0.25)], axis=1)
    np.testing.assert_allclose(image_grid(patching)[0], table, rtol=1e-12)
    flat = np.argsort(-np.abs(table.ravel()), kind="stable")[:12]
    assert set(cell_texts(patching)) == {divmod(int(i), seq + 2) for i in flat}
    assert sorted(plots.plot_all(result, tmp_path)) == sorted(
        set(figures) | {"single_heads"})


def test_bar_notes_name_only_the_colours_used(leaves_pyplot_alone):
    result = synthetic_result(full=False)
    result["single"] = [
        {"component": f"mlp{layer}", "kind": "mlp", "layer": layer, "index": None,
         "effect": 0.5 + layer, "sem": 0.1, "ci_low": 0.3 + layer, "ci_high": 0.7 + layer,
         "rank": 2 - layer, "critical": False, "negative": False, "no_effect": False}
        for layer in range(2)]
    fig = plots.single_layers_figure(result)
    assert "blue: 95% CI excludes 0" in fig.get_suptitle()
    assert "red" not in fig.get_suptitle() and "grey" not in fig.get_suptitle()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["mlp0", "mlp1"]
    assert fig.axes[0].get_ylabel() == "effect on logit_diff (mean ablation)"
    for row in result["single"]:
        row.update(ci_low=-1.0, ci_high=3.0)  # every CI contains 0: every bar grey
    assert "blue" not in plots.single_layers_figure(result).get_suptitle()
