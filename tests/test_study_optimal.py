"""`Study(ablation="optimal")`, the comparison's optimal type, the circuit's
circuit_ablation="optimal", their report (optimal.csv, optimal.png, summary.md) and the CLI's
--ablation optimal / --oa-* / --circuit-ablation flags, on the bundled induction model
(2 layers x 2 heads + 2 MLPs, vocabulary 64).

References, none of them the study's own code: `jaxablate.optimal_replacement` called here
with the settings the study documents (its reference prompts, held_out=0, key = the seed,
per-position constants when the reference has the prompts' length), then
`shared_from_singles` or `Replacement.for_mask` and a plain `jaxablate.sweep` of hand-built
mask sets; the loss effect and the recovered fraction written out in numpy. Sweeps by two
compiled programs agree to float32 rounding (ENGINE_ATOL, as in test_study.py); the fit is
deterministic on one machine (the same call gives the same constants bit for bit), so the
study's constants are compared exactly.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pandas as pd
import pytest
from test_cli import FakeStudy, fake_study  # noqa: F401  (the stand-in Study fixture)
from test_report import check_png, synthetic_result

import jaxablate
from jaxablate import masks, metrics
from jaxablate.cli.command import main
from jaxablate.cli.options import DEFAULT_OA_LR, DEFAULT_OA_OBJECTIVE, DEFAULT_OA_STEPS
from jaxablate.errors import InputError
from jaxablate.optimal import optimal_replacement, shared_from_singles
from jaxablate.report.files import fingerprint_differences, report_fingerprint, write_report
from jaxablate.report.optimal_plot import plot_optimal
from jaxablate.report.tables import OPTIMAL_COLUMNS
from jaxablate.store.results import StoreMismatchError
from jaxablate.study import optimal as optimal_step
from jaxablate.study import protocol as study_lib
from jaxablate.study.checks import ABLATIONS
from jaxablate.study.protocol import Study
from jaxablate.tasks import induction

ENGINE_ATOL = 1e-5
HALF = 6  # prompts of 2 * HALF tokens
N_PROMPTS = 8
OA = dict(oa_steps=8, oa_lr=0.05)  # few steps: the numbers are checked, not their quality
COMPONENTS = ("heads", "mlps")


@pytest.fixture(scope="module")
def model():
    return jaxablate.load_gpt2("bundled:induction")


@pytest.fixture(scope="module")
def task(model):
    return induction(N_PROMPTS, half=HALF, vocab=model.cfg.d_vocab, seed=0)


@pytest.fixture(scope="module")
def single_masks(model):
    """The study's single-component masks, built here: every head, then every MLP."""
    return masks.concat([masks.single_heads(model.cfg), masks.single_mlps(model.cfg)])


@pytest.fixture(scope="module")
def fits():
    """Every `optimal_replacement` call the study makes, by the mask names it fitted."""
    calls = []
    real = optimal_step.optimal_replacement

    def counting(model, tokens, masks, *args, **kwargs):
        calls.append(list(masks.names))
        return real(model, tokens, masks, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(optimal_step, "optimal_replacement", counting)
        yield calls


@pytest.fixture(scope="module")
def study(model, task, fits):
    return Study(model, task, components=COMPONENTS, ablation="optimal", n_bootstrap=100,
                 **OA)


@pytest.fixture(scope="module")
def result(study):
    """Every default step under optimal ablation, the comparison of every type (as the
    command line runs it), and the circuit's complement at jointly optimised constants."""
    return study.run(fractions=(0.5, 1.0), screen_steps=2, types=ABLATIONS,
                     circuit_ablation="optimal")


@pytest.fixture(scope="module")
def reference_fit(model, task, single_masks):
    """The single components' optimal constants, fitted here as the study documents."""
    return optimal_replacement(model, task.reference, single_masks, "kl_to_clean",
                               steps=OA["oa_steps"], learning_rate=OA["oa_lr"],
                               per_position=True, held_out=0, key=0)


def loss_effect(model, task, mask_set, replacement):
    """Effect per mask and prompt [n, batch] of the task's loss: ablated - clean."""
    ablated = np.asarray(jaxablate.sweep(model, task.tokens, mask_set, replacement,
                                         task.metric), np.float64)
    clean = np.asarray(jaxablate.clean_metric(model, task.tokens, task.metric), np.float64)
    return ablated - clean[None]


# ---------------------------------------------------------------------------------------------
# The study under optimal ablation against independent sweeps.


def test_single_effects_equal_a_sweep_with_the_shared_optimal_constants(
        result, study, model, task, single_masks, reference_fit):
    r, _ = reference_fit
    shared = shared_from_singles(r, single_masks)
    # the study's values are exactly the documented fit's
    ours = study.replacements("optimal")
    assert len(ours) == 1 and ours[0].kind == "optimal" and not ours[0].per_mask
    for field in shared.fields():
        np.testing.assert_array_equal(np.asarray(getattr(ours[0], field)),
                                      np.asarray(getattr(shared, field)), err_msg=field)
    want = loss_effect(model, task, single_masks, shared)
    assert [row["component"] for row in result.single] == single_masks.names
    np.testing.assert_allclose([row["effect"] for row in result.single], want.mean(1),
                               rtol=0, atol=ENGINE_ATOL)
    np.testing.assert_allclose([row["per_example"] for row in result.single], want,
                               rtol=0, atol=ENGINE_ATOL)


def test_each_component_is_at_its_own_masks_optimum(result, model, task, single_masks,
                                                    reference_fit):
    """shared_from_singles against the per-mask values: component n under the study's shared
    replacement = mask n alone under r.for_mask(n)."""
    r, _ = reference_fit
    for n, name in enumerate(single_masks.names):
        alone = masks.from_components(model.cfg, [name])
        got = loss_effect(model, task, alone, r.for_mask(n))[0]
        np.testing.assert_allclose(result.single[n]["effect"], got.mean(), rtol=0,
                                   atol=ENGINE_ATOL, err_msg=name)


def test_record_on_the_fit_prompts(study, model, task, single_masks, reference_fit, result):
    record = study.optimal_record()
    assert record.names == single_masks.names and record.steps == OA["oa_steps"]
    assert (record.delta <= record.delta_init).all(), (record.delta, record.delta_init)
    assert (record.delta < record.delta_init).any()  # the fit moved somewhere
    kl = metrics.kl_to_clean(positions=None)
    mean = jaxablate.mean_replacement(model, task.reference, per_position=True)
    delta_mean = np.asarray(jaxablate.sweep(model, task.reference, single_masks, mean, kl))
    np.testing.assert_allclose(record.delta_init, delta_mean.mean(1), rtol=0,
                               atol=ENGINE_ATOL)
    r, reference_record = reference_fit
    delta_oa = np.asarray(jaxablate.sweep(model, task.reference, single_masks, r, kl))
    np.testing.assert_allclose(record.delta, delta_oa.mean(1), rtol=0, atol=ENGINE_ATOL)
    np.testing.assert_array_equal(record.history, reference_record.history)
    assert record.held_out_prompts.size == 0 and record.init == "mean"


def test_the_fit_happens_once_per_study(result, study, fits):
    before = list(fits)
    study.optimal_record()
    study.replacements("optimal")
    study.compare_ablations(("mean", "optimal"))
    study.all_ablated("optimal")
    assert fits == before
    # one fit of the single components, one of the circuit's complement (one mask)
    assert fits[0] == study.names and len(fits) == 2
    assert len(fits[1]) == 1 and "+" in fits[1][0]


def test_the_comparison_includes_optimal(result, study, model, task, single_masks):
    comparison = result.ablation_comparison
    assert "optimal" in ABLATIONS and comparison["types"] == list(ABLATIONS)
    np.testing.assert_allclose(comparison["effects"]["optimal"],
                               [row["effect"] for row in result.single], rtol=0, atol=1e-12)
    mean = jaxablate.mean_replacement(model, task.reference, per_position=True)
    np.testing.assert_allclose(comparison["effects"]["mean"],
                               loss_effect(model, task, single_masks, mean).mean(1),
                               rtol=0, atol=ENGINE_ATOL)
    assert {"mean~optimal", "zero~optimal", "resample~optimal"} <= set(comparison["spearman"])


def test_the_optimal_section(result, study):
    section = result.optimal
    record = study.optimal_record()
    assert section["components"] == study.names and section["objective"] == "kl_to_clean"
    assert (section["steps"], section["learning_rate"]) == (OA["oa_steps"], OA["oa_lr"])
    assert section["fit_prompts"] == "reference" and section["n_fit_prompts"] == N_PROMPTS
    assert section["per_position"] is True and section["units"] == "nats"
    np.testing.assert_array_equal(section["delta_optimal"], record.delta)
    np.testing.assert_array_equal(section["delta_mean"], record.delta_init)
    np.testing.assert_allclose(section["shift_share"],
                               (record.delta_init - record.delta) / record.delta_init)
    history = np.array(section["history"])
    assert history.shape == (len(study.names), OA["oa_steps"] + 1)
    np.testing.assert_array_equal(section["best_step"], history.argmin(1))
    effect_mean = np.array(result.ablation_comparison["effects"]["mean"])
    effect_optimal = np.array([row["effect"] for row in result.single])
    np.testing.assert_array_equal(section["effect_mean"], effect_mean)
    np.testing.assert_array_equal(section["effect_optimal"], effect_optimal)
    np.testing.assert_allclose(section["effect_shift_share"],
                               (effect_mean - effect_optimal) / effect_mean)
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["optimal"] == section
    assert result.to_dict()["meta"]["optimal"] == {"objective": "kl_to_clean",
                                                   "steps": OA["oa_steps"],
                                                   "learning_rate": OA["oa_lr"]}


def test_circuit_complement_at_jointly_optimised_constants(result, study, model, task,
                                                           single_masks, reference_fit):
    circuit = result.circuit
    assert circuit["circuit_ablation"] == "optimal"
    joint = circuit["optimal_complement"]
    complement = [n for n in study.names if n not in circuit["members"]]
    assert joint["complement"] == complement and complement
    one = masks.from_components(model.cfg, [complement])
    r, record = optimal_replacement(model, task.reference, one, "kl_to_clean",
                                    steps=OA["oa_steps"], learning_rate=OA["oa_lr"],
                                    per_position=True, held_out=0, key=0)
    metric = np.asarray(jaxablate.sweep(model, task.tokens, one, r, task.metric),
                        np.float64)[0].mean()
    # the recovered fraction's endpoints: clean, and every component ablated under the
    # study's own ablation (each at its single-component optimum)
    shared = shared_from_singles(reference_fit[0], single_masks)
    everything = masks.from_components(model.cfg, [study.names])
    floor = np.asarray(jaxablate.sweep(model, task.tokens, everything, shared, task.metric),
                       np.float64).mean()
    base = np.asarray(jaxablate.clean_metric(model, task.tokens, task.metric)).mean()
    atol = 3 * ENGINE_ATOL * max(1.0, abs(metric)) / abs(base - floor)
    np.testing.assert_allclose(joint["metric"], metric, rtol=0, atol=ENGINE_ATOL * 3)
    np.testing.assert_allclose(joint["recovered"], (metric - floor) / (base - floor), rtol=0,
                               atol=atol)
    assert joint["recovered_same"] == circuit["faithfulness"]
    assert joint["delta_optimal"] == pytest.approx(float(record.delta[0]), abs=1e-12)
    assert joint["delta_mean"] == pytest.approx(float(record.delta_init[0]), abs=1e-12)
    assert joint["delta_optimal"] <= joint["delta_mean"]


# ---------------------------------------------------------------------------------------------
# The report.


def test_report_writes_the_optimal_table_and_figure(result, tmp_path):
    folder = write_report(result.to_dict(), tmp_path / "report")
    section = result.optimal
    table = pd.read_csv(folder / "optimal.csv")  # heads written "head 1.0" there
    table["component"] = table["component"].str.removeprefix("head ")
    assert list(table.columns) == list(OPTIMAL_COLUMNS)
    assert sorted(table["component"]) == sorted(section["components"])
    assert list(table["delta_mean"]) == sorted(section["delta_mean"], reverse=True)
    by_name = table.set_index("component")
    for i, name in enumerate(section["components"]):
        for key in OPTIMAL_COLUMNS[1:]:
            np.testing.assert_allclose(by_name.loc[name, key], section[key][i], rtol=1e-12,
                                       err_msg=f"{name} {key}")
    check_png(folder / "optimal.png")
    text = (folder / "summary.md").read_text()
    assert "## Optimal ablation" in text and "(optimal.png)" in text and "optimal.csv" in text
    assert "Median shift share" in text and "optimal (each component at its own" in text
    assert "complement ablated jointly at constants optimised for it" in text
    marker = json.loads((folder / ".jaxablate-report.json").read_text())
    assert marker["settings"]["oa_steps"] == OA["oa_steps"]


def test_optimal_files_only_when_optimal_ablation_ran(tmp_path):
    plain = synthetic_result()
    folder = write_report(plain, tmp_path / "plain")
    assert not (folder / "optimal.csv").exists() and not (folder / "optimal.png").exists()
    assert "## Optimal ablation" not in (folder / "summary.md").read_text()
    assert plot_optimal(plain, tmp_path / "x.png") is None


def test_figure_labels_name_the_objective_and_units(result, monkeypatch, tmp_path):
    from jaxablate.report import optimal_plot

    seen = {}
    real = optimal_plot.save_figure

    def keep(fig, path):
        ax = fig.axes[0]
        seen.update(x=ax.get_xlabel(), y=ax.get_ylabel(), title=ax.get_title(),
                    lines=len(ax.get_lines()))
        return real(fig, path)

    monkeypatch.setattr(optimal_plot, "save_figure", keep)
    plot_optimal(result.to_dict(), tmp_path / "optimal.png", top=3)
    assert "KL(clean || ablated)" in seen["y"] and "(nats)" in seen["y"]
    assert "Adam step" in seen["x"] and "optimal ablation" in seen["title"]
    assert seen["lines"] == len(result.optimal["components"]) + 3  # + the 3 kept-step dots


def test_settings_are_in_the_fingerprint_and_the_store(model, task, tmp_path):
    meta = {"ablation": "optimal", "optimal": {"objective": "loss", "steps": 5,
                                               "learning_rate": 0.5}}
    assert report_fingerprint(meta) == {"ablation": "optimal", "oa_objective": "loss",
                                        "oa_steps": 5, "oa_lr": 0.5}
    other = report_fingerprint({**meta, "optimal": {**meta["optimal"], "steps": 6}})
    assert fingerprint_differences(report_fingerprint(meta), other) == [
        "oa_steps: 5 there, 6 now"]
    # a store of other optimal settings is refused, naming them
    store = tmp_path / "sweeps"
    kwargs = dict(components=COMPONENTS, ablation="optimal", n_bootstrap=10, store=store)
    first = Study(model, task, oa_steps=2, **kwargs)
    first.single()
    assert any(key.startswith("single-optimal-") for key in first.store.keys())
    again = Study(model, task, oa_steps=2, **kwargs)
    np.testing.assert_array_equal(again.effects().mean, first.effects().mean)  # resumed
    assert again.store.reused > 0 and again.store.computed == 0
    with pytest.raises(StoreMismatchError, match=r"optimal\[kl_to_clean, 3 steps"):
        Study(model, task, oa_steps=3, **kwargs).single()


# ---------------------------------------------------------------------------------------------
# Checks before anything compiles.


@pytest.fixture
def no_compute(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("computed before validating")

    for name in ("sweep", "clean_metric", "planned_chunk_size"):
        monkeypatch.setattr(study_lib, name, fail)
    monkeypatch.setattr(optimal_step, "optimal_replacement", fail)


@pytest.mark.parametrize("kwargs, message", [
    (dict(oa_steps=0), "oa_steps must be an int >= 1"),
    (dict(oa_lr=0), r"oa_lr must be a finite number > 0"),
    (dict(oa_lr=float("nan")), r"oa_lr must be a finite number > 0"),
    (dict(oa_lr=True), r"oa_lr must be a finite number > 0"),
    (dict(oa_objective="logit_diff"), "oa_objective must be one of"),
    (dict(ablation="optimum"), "ablation must be one of"),
])
def test_bad_settings_are_refused_up_front(model, task, no_compute, kwargs, message):
    with pytest.raises(InputError, match=message):
        Study(model, task, **kwargs)


def test_bad_circuit_ablation_is_refused_up_front(model, task, no_compute):
    study = Study(model, task)
    with pytest.raises(InputError, match="circuit_ablation must be one of"):
        study.run(circuit_ablation="joint")
    with pytest.raises(InputError, match="circuit_ablation must be one of"):
        study.minimal_circuit(0.8, circuit_ablation="zero")


# ---------------------------------------------------------------------------------------------
# The command line.


def test_cli_defaults_are_the_studys():
    defaults = inspect.signature(Study).parameters
    assert (DEFAULT_OA_STEPS, DEFAULT_OA_LR, DEFAULT_OA_OBJECTIVE) == tuple(
        defaults[k].default for k in ("oa_steps", "oa_lr", "oa_objective"))


def test_cli_flags_reach_the_study(tmp_path, fake_study, capsys):  # noqa: F811
    argv = ["study", "--ablation", "optimal", "--oa-steps", "7", "--oa-lr", "0.02",
            "--oa-objective", "loss", "--circuit-ablation", "optimal", "--out",
            str(tmp_path / "out"), "--no-cache", "--no-plots", "--quiet", "--n-prompts", "4"]
    assert main(argv) == 0
    (_, _, kwargs), = fake_study.calls
    assert {k: kwargs[k] for k in ("ablation", "oa_steps", "oa_lr", "oa_objective")} == {
        "ablation": "optimal", "oa_steps": 7, "oa_lr": 0.02, "oa_objective": "loss"}
    assert kwargs["run"]["circuit_ablation"] == "optimal"
    assert kwargs["run"]["types"] == ABLATIONS  # the command line compares optimal too
    assert "optimal constants: loss, 7 Adam steps, lr 0.02" in capsys.readouterr().out
    # the same folder with other optimal settings: refused before anything loads
    argv[argv.index("7")] = "8"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "oa_steps: 7 there, 8 now" in err and err.count("\n") == 1
    main(["study", "--help"])
    text = capsys.readouterr().out
    for flag in ("--oa-steps", "--oa-lr", "--oa-objective", "--circuit-ablation", "optimal"):
        assert flag in text


@pytest.mark.parametrize("argv, message", [
    (["--ablation", "optimum"], "invalid choice: 'optimum'"),
    (["--oa-steps", "0"], "expected a number >= 1"),
    (["--oa-lr", "0"], "expected a finite number > 0, got 0"),
    (["--oa-lr", "inf"], "expected a finite number > 0, got inf"),
    (["--oa-lr", "fast"], "expected a number, got 'fast'"),
    (["--oa-objective", "logit_diff"], "invalid choice: 'logit_diff'"),
    (["--circuit-ablation", "joint"], "invalid choice: 'joint'"),
    (["--circuit-ablation", "optimal", "--skip", "circuit"], "--circuit-ablation applies"),
    (["--oa-steps", "5", "--skip", "comparison"], "--oa-steps applies only when optimal"),
])
def test_cli_bad_values_are_one_line(argv, message, tmp_path, fake_study, capsys):  # noqa: F811
    assert main(["study", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert fake_study.calls == []
