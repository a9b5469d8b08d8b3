"""The study's optional patching step (`jaxablate.study.patching`), its report section and the
CLI's --patching, on the bundled induction model (2 layers x 2 heads, vocabulary 64).

References, none of them the step's own code:
  * by position: `jaxablate.patching.attn_head_out_by_pos` / `mlp_out` (TL's functions, one
    sweep each) for every critical component, and two cells from plain `jaxablate.forward`
    calls with a hand-written Mask and the loss in numpy;
  * every position: `jaxablate.patching.attn_head_out_all_pos` and a forward with Mask(mlps=);
  * direct path: `jaxablate.patching.path_patch(..., ["resid_final"])`, and, for components in
    the last layer (no head after them), the every-position patch itself;
  * the normalisation: (m - m_cf) / (m_clean - m_cf) of batch means and its delta-method
    s.e. written out in numpy.
Tolerance: metrics from two compiled programs agree to ~1e-5 (ENGINE_ATOL); divided by the
clean - counterfactual gap (about 3 nats here) that is ~1e-5 on a restored fraction.
"""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxablate
from jaxablate import Mask, metrics, patching
from jaxablate.ablation.replacements import patch_replacement
from jaxablate.cli.command import main
from jaxablate.errors import InputError
from jaxablate.patching.paths import path_patch
from jaxablate.report.files import report_names, write_report
from jaxablate.study import patching as step
from jaxablate.study.protocol import DEFAULT_STEPS, STEPS, Study
from jaxablate.tasks import induction

HALF = 6  # prompts of 2 * HALF tokens
N_PROMPTS = 8
ATOL = 1e-4  # on restored fractions: 1e-5 metric rounding / a gap of ~3, with margin


@pytest.fixture(scope="module")
def model():
    return jaxablate.load_gpt2("bundled:induction")


@pytest.fixture(scope="module")
def task(model):
    return induction(N_PROMPTS, half=HALF, vocab=model.cfg.d_vocab, seed=0)


@pytest.fixture(scope="module")
def study(model, task):
    return Study(model, task, components=("heads", "mlps"), n_bootstrap=200)


@pytest.fixture(scope="module")
def result(study):
    return study.run(steps=("baseline", "single", "patching"))


@pytest.fixture(scope="module")
def section(result):
    return result.patching


@pytest.fixture(scope="module")
def means(model, task):
    """Per-example clean and counterfactual metrics, from plain forwards."""
    return loss(model, task.tokens), loss(model, task.counterfactual)


def loss(model, tokens, mask=None, replacement=None):
    """The induction loss per example [batch] from a plain forward, in numpy."""
    logits = np.asarray(jaxablate.forward(model, tokens, mask, replacement), np.float64)
    pos = np.arange(HALF, 2 * HALF - 1)
    x = logits[:, pos]
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    target = np.asarray(tokens)[:, pos + 1]
    return -np.take_along_axis(logp, target[..., None], -1)[..., 0].mean(-1)


def normalise(patched, clean, cf):
    """restored = (mean(patched) - mean(cf)) / (mean(clean) - mean(cf)) per row of patched
    [..., batch], and its delta-method s.e. sqrt(var(N - r D) / n) / |mean(D)|."""
    patched = np.asarray(patched, np.float64)
    num, gap = patched - cf, clean - cf
    r = num.mean(-1) / gap.mean()
    resid = num - r[..., None] * gap
    sem = resid.std(-1, ddof=1) / math.sqrt(len(gap)) / abs(gap.mean())
    return r, sem


def split(section):
    names = section["components"]
    heads = [i for i, n in enumerate(names) if not n.startswith("mlp")]
    mlps = [i for i, n in enumerate(names) if n.startswith("mlp")]
    return names, heads, mlps


# -- the numbers ----------------------------------------------------------------------------


def test_the_step_patches_the_critical_heads_and_mlps(study, section):
    e = study.effects()
    critical = {n for n, c in zip(study.names, e.critical) if c}
    names = section["components"]
    assert set(names) == critical and len(names) >= 3, (names, critical)
    assert any(n.startswith("mlp") for n in names) and any("." in n for n in names)
    layers = [int(n[3:]) if n.startswith("mlp") else int(n.split(".")[0]) for n in names]
    assert layers == sorted(layers)  # computation order
    assert section["direction"] == "denoising" and section["receiver"] == "resid_final"
    assert section["positions"] == list(range(2 * HALF)) and section["left_out"] == []
    assert np.shape(section["by_position"]["restored"]) == (len(names), 2 * HALF)


def test_clean_and_counterfactual_metrics_are_plain_forwards(section, means):
    clean, cf = means
    np.testing.assert_allclose(section["clean"]["mean"], clean.mean(), atol=1e-5)
    np.testing.assert_allclose(section["counterfactual"]["mean"], cf.mean(), atol=1e-5)
    np.testing.assert_allclose(section["gap"]["mean"], (clean - cf).mean(), atol=1e-5)
    assert cf.mean() > clean.mean() + 1.0  # nothing to copy in the counterfactual


def test_by_position_equals_tl_style_patching_functions(model, task, section, means):
    clean, cf = means
    names, heads, mlps = split(section)
    _, per_head = patching.attn_head_out_by_pos(model, task.counterfactual, task.tokens,
                                                task.metric, per_example=True)  # [L, pos, H, b]
    _, per_mlp = patching.mlp_out(model, task.counterfactual, task.tokens, task.metric,
                                  per_example=True)  # [L, pos, b]
    restored = np.asarray(section["by_position"]["restored"], np.float64)
    sem = np.asarray(section["by_position"]["sem"], np.float64)
    for i in heads:
        layer, head = map(int, names[i].split("."))
        r, s = normalise(per_head[layer, :, head], clean, cf)
        np.testing.assert_allclose(restored[i], r, atol=ATOL, err_msg=names[i])
        np.testing.assert_allclose(sem[i], s, atol=ATOL, err_msg=names[i])
    for i in mlps:
        r, s = normalise(per_mlp[int(names[i][3:])], clean, cf)
        np.testing.assert_allclose(restored[i], r, atol=ATOL, err_msg=names[i])
        np.testing.assert_allclose(sem[i], s, atol=ATOL, err_msg=names[i])


def test_two_cells_against_a_plain_forward(model, task, section, means):
    """One head cell and one MLP cell from `jaxablate.forward` with a hand-written Mask."""
    clean, cf = means
    names, heads, mlps = split(section)
    cfg, seq = model.cfg, 2 * HALF
    source = patch_replacement(model, task.tokens)
    restored = np.asarray(section["by_position"]["restored"], np.float64)
    p = HALF + 2  # a position the loss reads
    i = heads[-1]
    layer, head = map(int, names[i].split("."))
    keep = np.ones((cfg.n_layers, seq, cfg.n_heads), np.float32)
    keep[layer, p, head] = 0.0
    out = loss(model, task.counterfactual, Mask(head_positions=jnp.asarray(keep)), source)
    np.testing.assert_allclose(restored[i, p], normalise(out, clean, cf)[0], atol=ATOL)
    j = mlps[-1]
    keep = np.ones((cfg.n_layers, seq), np.float32)
    keep[int(names[j][3:]), p] = 0.0
    out = loss(model, task.counterfactual, Mask(mlp_positions=jnp.asarray(keep)), source)
    np.testing.assert_allclose(restored[j, p], normalise(out, clean, cf)[0], atol=ATOL)
    assert abs(restored[i, p]) > 0.01 and abs(restored[j, p]) > 0.01  # real effects


def test_every_position_equals_all_pos_patching(model, task, section, means):
    clean, cf = means
    names, heads, mlps = split(section)
    _, per_head = patching.attn_head_out_all_pos(model, task.counterfactual, task.tokens,
                                                 task.metric, per_example=True)  # [L, H, b]
    every = section["all_positions"]
    for i in heads:
        layer, head = map(int, names[i].split("."))
        r, s = normalise(per_head[layer, head], clean, cf)
        np.testing.assert_allclose(every["restored"][i], r, atol=ATOL, err_msg=names[i])
        np.testing.assert_allclose(every["sem"][i], s, atol=ATOL, err_msg=names[i])
    source = patch_replacement(model, task.tokens)
    for i in mlps:
        keep = np.ones(model.cfg.n_layers, np.float32)
        keep[int(names[i][3:])] = 0.0
        out = loss(model, task.counterfactual, Mask(mlps=jnp.asarray(keep)), source)
        np.testing.assert_allclose(every["restored"][i], normalise(out, clean, cf)[0],
                                   atol=ATOL, err_msg=names[i])


def test_direct_path_equals_path_patch(model, task, section, means):
    clean, cf = means
    names = section["components"]
    out = path_patch(model, task.counterfactual, task.tokens, names, ["resid_final"],
                     task.metric)
    r, s = normalise(out, clean, cf)
    np.testing.assert_allclose(section["direct"]["restored"], r, atol=ATOL)
    np.testing.assert_allclose(section["direct"]["sem"], s, atol=ATOL)
    # With no head after it, a last-layer component's every path to the logits is direct.
    last = [i for i, n in enumerate(names)
            if (int(n[3:]) if n.startswith("mlp") else int(n.split(".")[0]))
            == model.cfg.n_layers - 1]
    assert last
    np.testing.assert_allclose(np.take(section["direct"]["restored"], last),
                               np.take(section["all_positions"]["restored"], last), atol=ATOL)


def test_restored_stats_is_the_ratio_with_its_delta_method_sem(study):
    rng = np.random.default_rng(0)
    clean, cf = rng.normal(1.0, 0.3, 8), rng.normal(4.0, 0.3, 8)
    patched = rng.normal(2.0, 0.5, (3, 8))
    restored, stats = step.restored_stats(study, patched, clean, cf)
    r, s = normalise(patched, clean, cf)
    np.testing.assert_allclose(restored, r, rtol=1e-12)
    np.testing.assert_allclose(stats.mean, r, rtol=1e-12)
    np.testing.assert_allclose(stats.sem, s, rtol=1e-12)
    assert (stats.ci_low < r).all() and (r < stats.ci_high).all()
    full, _ = step.restored_stats(study, np.stack([clean, cf]), clean, cf)
    np.testing.assert_allclose(full, [1.0, 0.0], atol=1e-12)  # clean restores 1, cf 0
    same, _ = step.restored_stats(study, patched, clean, clean)
    assert np.isnan(same).all()  # no gap: undefined, not a number


# -- the step's place in the study ------------------------------------------------------------


def test_patching_is_optional(study, result):
    assert "patching" in STEPS and "patching" not in DEFAULT_STEPS
    d = result.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d and d["patching"] is not None
    default = study.run(steps=("baseline", "single"))
    assert default.patching is None and "patching" not in default.to_dict()


@pytest.fixture
def no_compute(monkeypatch):
    """Any sweep or clean pass fails the test: the refusal must come first."""
    from jaxablate.study import protocol

    def fail(*args, **kwargs):
        raise AssertionError("computed before validating")

    for module, name in ((protocol, "sweep"), (protocol, "clean_metric"),
                         (protocol, "planned_chunk_size"), (step, "clean_metric"),
                         (step, "path_patch")):
        monkeypatch.setattr(module, name, fail)


def test_no_counterfactual_is_refused_before_anything_compiles(model, task, no_compute):
    plain = Study(model, tokens=task.tokens, metric=task.metric)
    assert plain.counterfactual is None
    with pytest.raises(InputError, match="needs counterfactual prompts"):
        plain.run(steps=("baseline", "single", "patching"))
    with pytest.raises(InputError, match="pass counterfactual="):
        plain.patching()
    given = Study(model, tokens=task.tokens, metric=task.metric,
                  counterfactual=task.counterfactual)
    np.testing.assert_array_equal(given.counterfactual, task.counterfactual)
    with pytest.raises(InputError, match=r"counterfactual: expected \[batch, seq\] = \[8, 12\]"):
        Study(model, task, counterfactual=task.counterfactual[:, :-1])
    with pytest.raises(InputError, match=r"counterfactual: id \d+ is outside the vocabulary"):
        Study(model, task, counterfactual=task.counterfactual + 64)
    kl = Study(model, task, metric=metrics.kl_to_clean())
    with pytest.raises(InputError, match="not kl_to_clean"):
        kl.run(steps=("patching",))


# -- the report and the command line ----------------------------------------------------------


def test_report_has_the_tables_and_the_figure(result, tmp_path):
    assert {"patching_positions.csv", "patching_paths.csv", "patching.png"} <= set(
        report_names())
    data = result.to_dict()
    folder = write_report(data, tmp_path / "report")
    section = data["patching"]
    names = section["components"]
    positions = pd.read_csv(folder / "patching_positions.csv")  # heads: "head 1.0" there
    positions["component"] = positions["component"].str.removeprefix("head ")
    assert len(positions) == len(names) * 2 * HALF
    grid = positions.pivot(index="component", columns="position", values="restored")
    np.testing.assert_allclose(grid.loc[names].to_numpy(),
                               np.asarray(section["by_position"]["restored"], float), rtol=1e-12)
    paths = pd.read_csv(folder / "patching_paths.csv")
    paths["component"] = paths["component"].str.removeprefix("head ")
    assert list(paths["component"]) == names
    np.testing.assert_allclose(paths["direct_restored"], section["direct"]["restored"])
    np.testing.assert_allclose(paths["all_sem"], section["all_positions"]["sem"])
    assert (folder / "patching.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (folder / "summary.md").read_text()
    assert "## Activation and path patching" in text and "](patching.png)" in text
    assert "Denoising" in text and "direct path ± s.e." in text
    top = int(np.argmax(section["direct"]["restored"]))
    assert f"{section['direct']['restored'][top]:.3f} ± " in text
    record = json.loads((folder / ".jaxablate-report.json").read_text())
    assert {"patching_positions.csv", "patching_paths.csv", "patching.png"} <= set(
        record["files"])
    # The same settings without the step: its files go, as a skipped step's do.
    without = dict(data)
    del without["patching"]
    write_report(without, folder)
    assert not (folder / "patching.png").exists()
    assert not (folder / "patching_positions.csv").exists()
    assert "## Activation and path patching" not in (folder / "summary.md").read_text()


def test_cli_patching_end_to_end(tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["study", "--n-prompts", "8", "--patching", "--skip",
            "screening,cumulative,circuit,interactions,comparison", "--out", str(out),
            "--quiet", "--no-cache"]
    assert main(argv) == 0
    data = json.loads((out / "study.json").read_text())
    section = data["patching"]
    assert section["direction"] == "denoising" and section["components"]
    assert data["cumulative"] is None
    for name in ("patching_positions.csv", "patching_paths.csv", "patching.png", "summary.md"):
        assert (out / name).is_file(), name
    assert "report:" in capsys.readouterr().out
    assert main(["study", "--help"]) == 0
    assert "--patching" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--prompts", "{prompts}", "--patching"], "--patching needs counterfactual prompts"),
    (["--skip", "patching"], "patching is off unless --patching is given"),
])
def test_cli_refuses_patching_without_counterfactual_before_loading(extra, message, tmp_path,
                                                                    capsys, monkeypatch):
    from jaxablate.model import loading

    def fail(*args, **kwargs):
        raise AssertionError("the model loaded before the usage error")

    monkeypatch.setattr(loading, "load_gpt2", fail)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a b", "correct": " c", "wrong": " d"}\n')
    argv = ["study", *(a.format(prompts=prompts) for a in extra), "--out",
            str(tmp_path / "out"), "--quiet", "--no-cache"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0, err
    assert "Traceback" not in err
