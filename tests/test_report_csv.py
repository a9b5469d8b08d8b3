"""The report's CSVs read back with `pandas.read_csv(path)` and its default arguments, every
component name a string ("head 1.10", never the number 1.1; "0.1" and "0.10" distinct), and
its Parquet files keep names and dtypes: on a report written from a real Study of a random
model with 11 heads per layer, and on a hand-built result holding every CSV's name column."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import jaxablate as ja
from conftest import make_hf_model, tiny_hf_config
from jaxablate.report.files import write_report
from jaxablate.report.tables import per_example_frame, screening_frame, single_frame
from test_report import synthetic_result

HEAD = re.compile(r"^\d+\.\d+$")


def as_written(names):
    """What the CSVs must hold for these names: heads prefixed, the rest as they are."""
    return [f"head {n}" if HEAD.match(n) else n for n in names]


@pytest.fixture(scope="module")
def study_result():
    # 11 heads: "0.1" and "0.10", "1.1" and "1.10" all exist.
    model = ja.load_gpt2(make_hf_model(tiny_hf_config(n_head=11, n_embd=44), seed=5))
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, model.cfg.d_vocab, (4, 6)).astype(np.int32)
    correct = rng.integers(0, model.cfg.d_vocab, 4)
    metric = ja.metrics.logit_diff(correct, (correct + 7) % model.cfg.d_vocab)
    study = ja.Study(model, tokens=tokens, metric=metric, ablation="zero", n_bootstrap=50,
                     components=("heads", "mlps"))
    return study.run(steps=("baseline", "single", "screening", "cumulative"),
                     screen_top_k=3, screen_steps=4).to_dict()


def test_a_real_report_reads_back_with_default_arguments(study_result, tmp_path):
    folder = write_report(study_result, tmp_path / "report", plots=False)
    names = [r["component"] for r in sorted(study_result["single"], key=lambda r: r["rank"])]
    assert {"0.1", "0.10", "1.1", "1.10", "mlp0"} <= set(names)
    single = pd.read_csv(folder / "single.csv")
    assert single["component"].tolist() == as_written(names)
    assert {"head 0.1", "head 0.10", "head 1.1", "head 1.10"} <= set(single["component"])
    assert single["component"].map(type).eq(str).all()
    assert single["layer"].dtype == np.int64 and single["rank"].tolist() == sorted(
        single["rank"])
    by_rank = {r["rank"]: r for r in study_result["single"]}
    np.testing.assert_allclose(single["effect"], [by_rank[k]["effect"] for k in single["rank"]],
                               rtol=1e-12)
    section = study_result["screening"]
    screening = pd.read_csv(folder / "screening.csv")
    order = np.argsort(section["screen_rank"], kind="stable")
    assert screening["component"].tolist() == as_written(
        [section["components"][i] for i in order])
    cumulative = pd.read_csv(folder / "cumulative.csv")
    order = study_result["cumulative"]["order"]
    assert cumulative["last_ablated"].tolist() == as_written(
        [order[n - 1] for n in cumulative["n_ablated"]])
    # The prefix is all there is to undo: the names then equal study.json's and Parquet's.
    parquet = pd.read_parquet(folder / "single.parquet")
    assert single["component"].str.removeprefix("head ").tolist() == parquet[
        "component"].tolist() == names
    # and a name read from the CSV is a component name as it stands
    assert [ja.parse_component(c) for c in single["component"]] == [
        ja.parse_component(c) for c in names]


def test_parquet_keeps_names_and_dtypes(study_result, tmp_path):
    folder = write_report(study_result, tmp_path / "report", plots=False)
    for file, frame in (("single.parquet", single_frame(study_result)),
                        ("screening.parquet", screening_frame(study_result)),
                        ("per_example.parquet", per_example_frame(study_result))):
        back = pd.read_parquet(folder / file)
        pd.testing.assert_frame_equal(back, frame, check_exact=True)
        assert back["component"].map(type).eq(str).all(), file
    single = pd.read_parquet(folder / "single.parquet")
    for column in ("rank", "layer", "index"):
        assert single[column].dtype == "Int64", (column, single[column].dtype)
    assert single.loc[single["kind"] == "mlp", "index"].isna().all()


def test_every_name_column_of_the_hand_built_report(tmp_path):
    result = synthetic_result(n_layers=2, n_heads=11)  # names 0.0 .. 1.10
    folder = write_report(result, tmp_path / "report", plots=False)
    names = [r["component"] for r in result["single"]]
    single = pd.read_csv(folder / "single.csv")
    assert single["component"].tolist() == as_written(names)
    pairs = pd.read_csv(folder / "interactions.csv")
    assert pairs["a"].tolist() == as_written([p["a"] for p in result["interactions"]["pairs"]])
    assert pairs["b"].tolist() == as_written([p["b"] for p in result["interactions"]["pairs"]])
    comparison = pd.read_csv(folder / "ablation_comparison.csv")
    assert comparison["component"].tolist() == as_written(
        result["ablation_comparison"]["components"])
    cumulative = pd.read_csv(folder / "cumulative.csv")
    assert cumulative["last_ablated"].tolist() == as_written(result["cumulative"]["order"])
    assert "head 0.10" in set(single["component"]) and "head 0.1" in set(single["component"])
