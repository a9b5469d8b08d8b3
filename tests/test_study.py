"""`jaxablate.study.Study` against independent references.

Every number a study reports is recomputed here without the study or the sweep engine: plain
`jaxablate.forward` calls with hand-written `Mask(heads=...)` (or mlps / neurons) and the
metric written out in numpy. Tolerance: ENGINE_ATOL = 1e-5, float32 rounding between two
compiled programs (as in test_engine.py); fractions of small differences (recovered,
faithfulness) get a relative tolerance instead.

Two studies on the tiny random model (2 layers x 4 heads, vocabulary 101):
  * `induction_study`: the induction task (loss: lower is better), mean ablation, with the
    task's own reference set (so resample draws from it), one full `run()`;
  * `ld_study`: random tokens scored by a logit difference (higher is better), zero ablation:
    its greedy circuit takes several steps.
Pure helpers (Spearman, the backup-candidate rule, the cliff rule) are checked on synthetic
numbers.
"""

from __future__ import annotations

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxablate
from jaxablate import Mask, metrics
from jaxablate.study import stats
from jaxablate.study import protocol as study_lib
from jaxablate.study.protocol import Study

ENGINE_ATOL = 1e-5
N_BOOT = 400
HALF = 6  # induction: prompts of 2 * HALF tokens


# ---------------------------------------------------------------------------------------------
# Independent references: forward + numpy metric.


def log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def heads_mask(cfg, ablated):
    keep = np.ones((cfg.n_layers, cfg.n_heads), np.float32)
    for name in ablated:
        layer, head = map(int, name.split("."))
        keep[layer, head] = 0.0
    return Mask(heads=jnp.asarray(keep))


class Direct:
    """The metric per example [batch] of one ablation, from a plain forward."""

    def __init__(self, model, tokens, kind, correct=None, wrong=None):
        self.model, self.tokens, self.kind = model, np.asarray(tokens), kind
        self.correct, self.wrong = correct, wrong

    def __call__(self, mask=None, replacement=None):
        logits = np.asarray(jaxablate.forward(self.model, self.tokens, mask, replacement),
                            np.float64)
        rows = np.arange(len(self.tokens))
        if self.kind == "logit_diff":
            return logits[rows, -1, self.correct] - logits[rows, -1, self.wrong]
        # induction loss on the repeated half: positions HALF .. 2 HALF - 2 predict a copy
        pos = np.arange(HALF, 2 * HALF - 1)
        logp = log_softmax(logits[:, pos])
        target = self.tokens[:, pos + 1]
        return -np.take_along_axis(logp, target[..., None], -1)[..., 0].mean(-1)

    def heads(self, ablated, replacement):
        return self(heads_mask(self.model.cfg, ablated), replacement)


def recovered(value, baseline, floor):
    return (value - floor) / (baseline - floor)


# ---------------------------------------------------------------------------------------------
# Fixtures: each study is built and run once per module.


@pytest.fixture(scope="module")
def induction_task():
    return jaxablate.tasks.induction(12, half=HALF, vocab=101, seed=0)


@pytest.fixture(scope="module")
def induction_study(tiny_model, induction_task):
    return Study(tiny_model, induction_task, ablation="mean", n_bootstrap=N_BOOT, seed=0,
                 model_name="tiny")


@pytest.fixture(scope="module")
def result(induction_study):
    return induction_study.run()


@pytest.fixture(scope="module")
def induction_direct(tiny_model, induction_task):
    return Direct(tiny_model, induction_task.tokens, "loss")


@pytest.fixture(scope="module")
def mean_repl(tiny_model, induction_task):
    return jaxablate.mean_replacement(tiny_model, induction_task.reference_tokens)


@pytest.fixture(scope="module")
def ld_setup(tiny_model):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 101, (10, 8)).astype(np.int32)
    last = np.asarray(jaxablate.forward(tiny_model, tokens, positions=-1))[:, 0]
    correct, wrong = last.argmax(-1), np.argsort(last, -1)[:, 50]  # a clear positive baseline
    return tokens, correct.astype(np.int32), wrong.astype(np.int32)


@pytest.fixture(scope="module")
def ld_study(tiny_model, ld_setup):
    tokens, correct, wrong = ld_setup
    return Study(tiny_model, tokens=tokens, metric=metrics.logit_diff(correct, wrong),
                 ablation="zero", n_bootstrap=N_BOOT, seed=3)


@pytest.fixture(scope="module")
def ld_direct(tiny_model, ld_setup):
    tokens, correct, wrong = ld_setup
    return Direct(tiny_model, tokens, "logit_diff", correct, wrong)


# ---------------------------------------------------------------------------------------------
# Baseline and single-component effects.


def test_baseline_and_single_effects_equal_a_forward_loop(result, induction_direct, mean_repl,
                                                           tiny_model):
    base = induction_direct()
    np.testing.assert_allclose(result.baseline["per_example"], base, atol=ENGINE_ATOL)
    np.testing.assert_allclose(result.baseline["mean"], base.mean(), atol=ENGINE_ATOL)
    np.testing.assert_allclose(result.baseline["sem"], base.std(ddof=1) / math.sqrt(len(base)),
                               atol=ENGINE_ATOL)
    cfg = tiny_model.cfg
    names = [f"{l}.{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    assert [r["component"] for r in result.single] == names
    for r in result.single:
        # loss: lower is better, so effect = ablated - baseline
        expected = induction_direct.heads([r["component"]], mean_repl) - base
        np.testing.assert_allclose(r["per_example"], expected, atol=ENGINE_ATOL)
        np.testing.assert_allclose(r["effect"], expected.mean(), atol=ENGINE_ATOL)
        np.testing.assert_allclose(r["sem"], expected.std(ddof=1) / math.sqrt(len(base)),
                                   atol=ENGINE_ATOL)
        layer, head = map(int, r["component"].split("."))
        assert (r["kind"], r["layer"], r["index"]) == ("head", layer, head)
    effects = np.array([r["effect"] for r in result.single])
    ranks = np.array([r["rank"] for r in result.single])
    assert sorted(ranks) == list(range(1, len(names) + 1))
    # importance: by |effect| (a component whose removal helps the task ranks high too)
    np.testing.assert_array_equal(ranks,
                                  np.argsort(np.argsort(-np.abs(effects), kind="stable")) + 1)


def test_flags_follow_their_stated_rules(result):
    threshold = result.meta["threshold"]
    np.testing.assert_allclose(threshold, 0.1 * abs(result.baseline["mean"]), rtol=1e-12)
    for r in result.single:
        assert r["no_effect"] == (r["ci_low"] <= 0 <= r["ci_high"])
        assert r["critical"] == (r["effect"] > threshold and r["ci_low"] > 0)
        assert r["negative"] == (r["ci_high"] < 0)
        assert not (r["critical"] and r["negative"])


def test_bootstrap_ci_contains_the_mean_and_is_reproducible_by_seed(result, induction_study):
    per_example = np.array([r["per_example"] for r in result.single])
    for r in result.single:
        assert r["ci_low"] <= r["effect"] + 1e-12 and r["effect"] <= r["ci_high"] + 1e-12
        assert r["ci_low"] < r["ci_high"]
    batch = per_example.shape[1]
    thr = induction_study.threshold
    again = stats.effect_stats(per_example, stats.bootstrap_counts(batch, N_BOOT, 0), thr)
    np.testing.assert_allclose(again.ci_low, [r["ci_low"] for r in result.single], atol=1e-12)
    np.testing.assert_allclose(again.ci_high, [r["ci_high"] for r in result.single], atol=1e-12)
    # an independent percentile bootstrap with the same resamples
    counts = stats.bootstrap_counts(batch, N_BOOT, 0)
    boot = per_example @ counts.T / batch
    np.testing.assert_allclose(again.ci_low, np.percentile(boot, 2.5, axis=1), atol=1e-12)
    other = stats.effect_stats(per_example, stats.bootstrap_counts(batch, N_BOOT, 1), thr)
    assert not np.allclose(other.ci_low, again.ci_low)


# ---------------------------------------------------------------------------------------------
# Cumulative ablation.


def test_cumulative_points_equal_multi_head_forwards(result, induction_direct, mean_repl):
    cum = result.cumulative
    effects = {r["component"]: r["effect"] for r in result.single}
    # least important (smallest |effect|) first
    assert cum["order"] == sorted(effects, key=lambda n: abs(effects[n]))
    assert cum["fractions"] == pytest.approx([0.1 * i for i in range(1, 11)])
    n_total = len(cum["order"])
    assert cum["n_ablated"] == [math.floor(f * n_total + 0.5) for f in cum["fractions"]]
    base = induction_direct().mean()
    floor = induction_direct.heads(cum["order"], mean_repl).mean()
    for k, metric, sem, rec in zip(cum["n_ablated"], cum["metric"], cum["sem"],
                                   cum["recovered"]):
        direct = induction_direct.heads(cum["order"][:k], mean_repl)
        np.testing.assert_allclose(metric, direct.mean(), atol=ENGINE_ATOL)
        np.testing.assert_allclose(sem, direct.std(ddof=1) / math.sqrt(len(direct)),
                                   atol=ENGINE_ATOL)
        # recovered = (m - floor) / (base - floor), each of the three within ENGINE_ATOL
        tol = ENGINE_ATOL * (2 + 2 * abs(rec)) / abs(base - floor)
        np.testing.assert_allclose(rec, recovered(direct.mean(), base, floor), atol=tol)
    # the cliff rule, written out
    rec = np.array(cum["recovered"])
    drops = np.concatenate([[1.0], rec[:-1]]) - rec
    i = int(np.argmax(drops))
    assert cum["cliff"]["fraction"] == cum["fractions"][i]
    assert cum["cliff"]["n_ablated"] == cum["n_ablated"][i]
    np.testing.assert_allclose(cum["cliff"]["drop"], drops[i])
    below = [f for f, r in zip(cum["fractions"], rec) if r < 0.5]
    assert cum["cliff"]["below_half"] == (below[0] if below else None)


def test_cliff_rule_on_a_synthetic_curve():
    fractions = np.array([0.25, 0.5, 0.75, 1.0])
    cliff = stats.find_cliff(fractions, np.array([1, 2, 3, 4]),
                                 np.array([0.95, 0.9, 0.3, 0.0]))
    assert (cliff["fraction"], cliff["n_ablated"], cliff["below_half"]) == (0.75, 3, 0.75)
    assert cliff["drop"] == pytest.approx(0.6)
    flat = stats.find_cliff(fractions, np.array([1, 2, 3, 4]), np.array([1.0, 1.2, 1.3,
                                                                             1.4]))
    assert flat["fraction"] is None and flat["drop"] is None and flat["below_half"] is None


# ---------------------------------------------------------------------------------------------
# Minimal circuit.


def recovered_atol(r, base, floor):
    """Tolerance of a recovered fraction r = (m - floor) / (base - floor) whose three metric
    values are each within ENGINE_ATOL x max(1, |metric|): dr = (dm - r dbase - (1 - r)
    dfloor) / (base - floor)."""
    eps = ENGINE_ATOL * max(1.0, abs(base), abs(floor))
    return eps * (1 + abs(r) + abs(1 - r)) / abs(base - floor)


def _check_circuit(circuit, direct, replacement, names, target):
    base = direct().mean()
    floor = direct.heads(names, replacement).mean()
    members = circuit["members"]
    only = direct.heads([n for n in names if n not in members], replacement).mean()
    np.testing.assert_allclose(circuit["metric_all_ablated"], floor, atol=ENGINE_ATOL)
    np.testing.assert_allclose(circuit["metric_circuit"], only, atol=ENGINE_ATOL)
    faithfulness = circuit["faithfulness"]
    np.testing.assert_allclose(faithfulness, recovered(only, base, floor), rtol=0,
                               atol=recovered_atol(faithfulness, base, floor))
    assert circuit["faithfulness"] >= target and circuit["reached"]
    assert circuit["size"] == len(members) and circuit["share"] == len(members) / len(names)
    assert [s["added"] for s in circuit["steps"]] == members
    assert [m["component"] for m in circuit["minimality"]] == members
    for m in circuit["minimality"]:
        kept = [x for x in members if x != m["component"]]
        without = direct.heads([n for n in names if n not in kept], replacement).mean()
        w = m["recovered_without"]
        np.testing.assert_allclose(w, recovered(without, base, floor), rtol=0,
                                   atol=recovered_atol(w, base, floor))
        # hurts: worse by more than float32 rounding (the rule, on the reported numbers)
        assert m["hurts"] == (w < faithfulness - stats.recovered_tolerance(
            (faithfulness, w), base, floor))
        assert m["below_target"] == (m["recovered_without"] < target)
    assert circuit["minimal"] == all(m["hurts"] for m in circuit["minimality"])


def test_minimal_circuit_matches_direct_forwards(result, induction_study, induction_direct,
                                                 mean_repl):
    _check_circuit(result.circuit, induction_direct, mean_repl, induction_study.names, 0.8)


def test_greedy_circuit_is_one_sweep_per_step(ld_study, ld_direct, tiny_model, monkeypatch):
    ld_study.all_ablated("zero")  # computed (and cached) before counting
    calls = []
    real = study_lib.sweep

    def counting(model, tokens, masks, *args, **kwargs):
        calls.append(len(masks))
        return real(model, tokens, masks, *args, **kwargs)

    monkeypatch.setattr(study_lib, "sweep", counting)
    circuit = ld_study.minimal_circuit(0.9)
    names = ld_study.names
    assert len(circuit["steps"]) >= 2
    # one sweep per greedy step (every candidate at once), one for the minimality check
    assert len(calls) == len(circuit["steps"]) + 1
    zero = jaxablate.zero_replacement(tiny_model)
    _check_circuit(circuit, ld_direct, zero, names, 0.9)
    # step 1 picks the single kept head of highest recovered, by direct forwards
    base, floor = ld_direct().mean(), ld_direct.heads(names, zero).mean()
    scores = [recovered(ld_direct.heads([n for n in names if n != c], zero).mean(), base, floor)
              for c in names]
    assert circuit["steps"][0]["added"] == names[int(np.argmax(scores))]
    np.testing.assert_allclose(circuit["steps"][0]["recovered"], max(scores), rtol=0,
                               atol=recovered_atol(max(scores), base, floor))
    capped = ld_study.minimal_circuit(0.9, max_size=1)
    assert capped["size"] == 1 and not capped["reached"]


# ---------------------------------------------------------------------------------------------
# Interactions.


def test_interactions_equal_joint_minus_singles(result, induction_direct, mean_repl):
    inter = result.interactions
    names = inter["components"]
    assert names == [r["component"] for r in result.single]  # all 8 heads by default
    assert len(inter["pairs"]) == len(names) * (len(names) - 1) // 2
    matrix = inter["matrix"]
    for i, j in itertools.product(range(len(names)), repeat=2):
        assert (matrix[i][j] is None) == (i == j)
        if i != j:
            assert matrix[i][j] == matrix[j][i]
    base = induction_direct()
    single = {n: (induction_direct.heads([n], mean_repl) - base).mean() for n in names}
    by_pair = {(p["a"], p["b"]): p for p in inter["pairs"]}
    for a, b in [("0.0", "0.1"), ("0.3", "1.2"), ("1.1", "1.3")]:
        joint = (induction_direct.heads([a, b], mean_repl) - base).mean()
        p = by_pair[(a, b)]
        np.testing.assert_allclose(p["joint"], joint, atol=ENGINE_ATOL)
        np.testing.assert_allclose(p["interaction"], joint - single[a] - single[b],
                                   atol=3 * ENGINE_ATOL)
        np.testing.assert_allclose(matrix[names.index(a)][names.index(b)], p["interaction"])
    no_effect = {r["component"]: r["no_effect"] for r in result.single}
    for p in inter["pairs"]:  # the rule, applied to the reported numbers
        assert p["backup_candidate"] == (no_effect[p["a"]] and no_effect[p["b"]]
                                         and p["joint_ci_low"] > 0)


def test_minimality_is_not_decided_by_float_noise(ld_study, monkeypatch):
    # A member whose removal changes the metric only by float32 rounding does not "hurt":
    # the minimality sweep is replaced by one that returns the circuit's own metric, moved
    # towards the all-ablated floor by 1e-7 of the gap (a strict `<` called that a hurt).
    circuit = ld_study.minimal_circuit(0.9)
    base = float(ld_study.baseline()["mean"])
    floor = circuit["metric_all_ablated"]
    noisy = circuit["metric_circuit"] - 1e-7 * (base - floor)
    real = ld_study.sweep_sets

    def sweep(sets, ablation, step, *args, **kwargs):
        if step != "minimality":
            return real(sets, ablation, step, *args, **kwargs)
        return np.full((1, len(sets), len(ld_study.tokens)), noisy)

    monkeypatch.setattr(ld_study, "sweep_sets", sweep)
    again = ld_study.minimal_circuit(0.9)
    assert again["members"] == circuit["members"]
    assert all(m["recovered_without"] < again["faithfulness"] for m in again["minimality"])
    assert not any(m["hurts"] for m in again["minimality"]) and not again["minimal"]
    # ... while a real loss (1e-3 of the gap) still hurts.
    noisy = circuit["metric_circuit"] - 1e-3 * (base - floor)
    assert all(m["hurts"] for m in ld_study.minimal_circuit(0.9)["minimality"])


def test_recovered_tolerance_is_the_rounding_of_its_three_metrics():
    # r = (m - floor) / (base - floor): eps on each of m, floor, base moves r by at most
    # eps (1 + |r| + |1 - r|) / |gap| to first order; brute force over the eps box's corners.
    base, floor, r = 2.5, 0.5, 0.7
    m = floor + r * (base - floor)
    eps = stats.METRIC_ROUNDING * max(1.0, abs(base), abs(floor), abs(m))
    worst = max(abs((m + a - floor - c) / (base + b - floor - c) - r)
                for a, b, c in itertools.product((-eps, eps), repeat=3))
    assert worst <= stats.recovered_tolerance((r,), base, floor) <= 1.01 * worst + 1e-15
    assert stats.recovered_tolerance((r, r), base, floor) == pytest.approx(
        2 * stats.recovered_tolerance((r,), base, floor))


def test_interactions_take_the_top_k_by_absolute_effect(tiny_model, ld_setup):
    # The same prompts scored by logit_diff(correct, wrong) and by its negation
    # logit_diff(wrong, correct): every effect flips sign, |effect| does not, so the pairs
    # tested (the top 3 by importance) are the same components; by signed effect they
    # would be the top 3 of one study and the bottom 3 of the other.
    tokens, correct, wrong = ld_setup
    chosen, top3 = [], []
    for metric in (metrics.logit_diff(correct, wrong), metrics.logit_diff(wrong, correct)):
        study = Study(tiny_model, tokens=tokens, metric=metric, ablation="zero",
                      n_bootstrap=50)
        effects = {r["component"]: r["effect"] for r in study.single()}
        top3.append(sorted(sorted(effects, key=lambda n: -abs(effects[n]))[:3],
                           key=study.names.index))
        chosen.append(study.interactions(top_k=3)["components"])
        signed = sorted(effects, key=lambda n: -effects[n])[:3]
        assert chosen[-1] == top3[-1]
    assert chosen[0] == chosen[1]
    assert sorted(signed) != sorted(chosen[1])  # the flipped study's signed top 3 differ


def test_resample_uncertainty_includes_the_variance_between_draws(tiny_model, ld_setup):
    tokens, correct, wrong = ld_setup
    study = Study(tiny_model, tokens=tokens, metric=metrics.logit_diff(correct, wrong),
                  ablation="resample", resample_draws=4, n_bootstrap=400, seed=2)
    single = study.single()
    per_draw = study.compare_ablations(("mean", "resample"))["resample_std"]
    for r, draw_std in zip(single, per_draw):
        per_example = np.asarray(r["per_example"])
        examples_only = per_example.std(ddof=1) / math.sqrt(len(per_example))
        want = math.sqrt(examples_only ** 2 + draw_std ** 2 / 4)
        np.testing.assert_allclose(r["sem"], want, rtol=1e-9, atol=1e-12)
    # Synthetic: examples that agree and draws that do not. Averaging the draws first (the
    # old way) gives a CI of width 0; resampling the draws too gives the draws' spread.
    draw_effect = np.array([0.0, 1.0, 2.0, 3.0])
    values = np.broadcast_to(draw_effect[:, None, None], (4, 1, 20))
    e = stats.effect_stats(values, stats.bootstrap_counts(20, 2000, 0), 0.1,
                           stats.bootstrap_counts(4, 2000, 1))
    assert e.sem[0] == pytest.approx(draw_effect.std(ddof=1) / 2)
    assert e.ci_high[0] - e.ci_low[0] > 1.5
    flat = stats.effect_stats(values.mean(0), stats.bootstrap_counts(20, 2000, 0), 0.1)
    assert flat.ci_high[0] - flat.ci_low[0] == 0


def test_effect_sign_follows_the_metric(tiny_model):
    clean, ablated = np.array([2.0, 3.0]), np.array([[1.0, 3.5]])
    np.testing.assert_allclose(metrics.effect(metrics.logit_diff(1, 2), ablated, clean),
                               [[1.0, -0.5]])   # higher is better: clean - ablated
    np.testing.assert_allclose(metrics.effect(metrics.loss(), ablated, clean),
                               [[-1.0, 0.5]])   # lower is better: ablated - clean


def test_backup_candidate_rule_on_synthetic_numbers():
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.01, (3, 50))
    # pairs (A,B) (A,C) (B,C): a clear joint effect, one inside noise, a clear joint effect
    joint = stats.effect_stats(noise + np.array([[1.0], [0.0], [1.0]]),
                                   stats.bootstrap_counts(50, 500, 0), 0.1)
    single = np.array([0.001, -0.002, 0.8])
    no_effect = np.array([True, True, False])
    matrix, pairs = stats.interaction_table(["A", "B", "C"], single, no_effect, joint)
    assert [p["backup_candidate"] for p in pairs] == [True, False, False]
    assert pairs[0]["interaction"] == pytest.approx(joint.mean[0] - 0.001 + 0.002)
    assert matrix[0][0] is None and matrix[0][1] == matrix[1][0] == pairs[0]["interaction"]


# ---------------------------------------------------------------------------------------------
# Ablation-type comparison.


def test_spearman_against_a_hand_computation():
    a = np.array([1.0, 2.0, 2.0, 5.0, 3.0])
    b = np.array([3.0, 1.0, 4.0, 4.0, 0.5])
    ra, rb = np.array([1.0, 2.5, 2.5, 5.0, 4.0]), np.array([3.0, 2.0, 4.5, 4.5, 1.0])
    np.testing.assert_array_equal(stats.rankdata(a), ra)
    np.testing.assert_array_equal(stats.rankdata(b), rb)
    da, db = ra - ra.mean(), rb - rb.mean()
    hand = (da * db).sum() / math.sqrt((da * da).sum() * (db * db).sum())
    assert stats.spearman(a, b) == pytest.approx(hand, abs=1e-12)
    assert stats.spearman(a, a) == pytest.approx(1.0)
    assert stats.spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(stats.spearman(a, np.ones(5)))
    scipy_stats = pytest.importorskip("scipy.stats")
    x, y = np.random.default_rng(0).integers(0, 6, (2, 40)).astype(float)  # many ties
    np.testing.assert_allclose(stats.rankdata(x), scipy_stats.rankdata(x))
    assert stats.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y)[0], abs=1e-12)


def test_ablation_comparison(result, induction_study, induction_task, induction_direct,
                             tiny_model):
    comp = result.ablation_comparison
    assert comp["types"] == ["zero", "mean", "resample"]
    assert comp["components"] == induction_study.names
    np.testing.assert_allclose(comp["effects"]["mean"], [r["effect"] for r in result.single])
    base = induction_direct()
    zero = jaxablate.zero_replacement(tiny_model)
    for i in (0, 5):
        name = comp["components"][i]
        np.testing.assert_allclose(comp["effects"]["zero"][i],
                                   (induction_direct.heads([name], zero) - base).mean(),
                                   atol=ENGINE_ATOL)
    # resample: 5 draws from the task's reference set, keys split from the seed
    keys = jax.random.split(jax.random.key(0), 5)
    i, name = 6, comp["components"][6]
    per_draw = [(induction_direct.heads([name], jaxablate.resample_replacement(
        tiny_model, induction_task.reference, k, n_examples=len(base))) - base).mean()
        for k in keys]
    np.testing.assert_allclose(comp["effects"]["resample"][i], np.mean(per_draw),
                               atol=ENGINE_ATOL)
    np.testing.assert_allclose(comp["resample_std"][i], np.std(per_draw, ddof=1),
                               atol=ENGINE_ATOL)
    for a, b in itertools.combinations(comp["types"], 2):
        assert comp["spearman"][f"{a}~{b}"] == pytest.approx(
            stats.spearman(np.array(comp["effects"][a]), np.array(comp["effects"][b])))
    # verdicts follow each type's flags; the study's own type agrees with `single`
    for t in comp["types"]:
        e = induction_study.effects(t)
        want = ["critical" if c else "negative" if n else "none"
                for c, n in zip(e.critical, e.negative)]
        assert comp["verdicts"][t] == want
    assert comp["verdicts"]["mean"] == [
        "critical" if r["critical"] else "negative" if r["negative"] else "none"
        for r in result.single]
    changed = {c["component"]: c["verdicts"] for c in comp["changed"]}
    for i, name in enumerate(comp["components"]):
        verdicts = {t: comp["verdicts"][t][i] for t in comp["types"]}
        assert (name in changed) == (len(set(verdicts.values())) > 1)
        if name in changed:
            assert changed[name] == verdicts


# ---------------------------------------------------------------------------------------------
# Other component kinds and metrics.


def test_mlps_and_neurons_with_a_logit_difference(tiny_model, ld_setup, ld_direct):
    # mlps and neurons overlap (an MLP's output is its neurons'), so they are two studies.
    tokens, correct, wrong = ld_setup
    seen = []
    metric = metrics.logit_diff(correct, wrong)
    study = Study(tiny_model, tokens=tokens, metric=metric, ablation="zero",
                  components=("heads", "neurons"), neuron_layers=[1], n_bootstrap=50,
                  progress=lambda step, done, total: seen.append((step, done, total)))
    mlps = Study(tiny_model, tokens=tokens, metric=metric, ablation="zero", components=("mlp",),
                 n_bootstrap=50)
    cfg = tiny_model.cfg
    assert mlps.names == ["mlp0", "mlp1"]
    assert len(study.names) == cfg.n_layers * cfg.n_heads + cfg.d_mlp
    records = {r["component"]: r for r in study.single() + mlps.single()}
    zero = jaxablate.zero_replacement(tiny_model)
    base = ld_direct()
    for name, mask in [
        ("mlp0", Mask(mlps=jnp.array([0.0, 1.0]))),
        ("mlp1", Mask(mlps=jnp.array([1.0, 0.0]))),
        ("n1.0", Mask(neurons=jnp.ones((2, cfg.d_mlp)).at[1, 0].set(0.0))),
        ("n1.77", Mask(neurons=jnp.ones((2, cfg.d_mlp)).at[1, 77].set(0.0))),
    ]:
        # logit difference: higher is better, so effect = baseline - ablated
        np.testing.assert_allclose(records[name]["per_example"], base - ld_direct(mask, zero),
                                   atol=ENGINE_ATOL)
    assert (records["mlp1"]["kind"], records["mlp1"]["layer"], records["mlp1"]["index"]) == (
        "mlp", 1, None)
    assert (records["n1.77"]["kind"], records["n1.77"]["layer"], records["n1.77"]["index"]) == (
        "neuron", 1, 77)
    assert study.default_interaction_top_k() == 20
    assert seen and seen[-1] == ("single", len(study.names), len(study.names))


def test_kl_threshold_falls_back_to_the_all_ablated_gap(tiny_model, ld_setup):
    study = Study(tiny_model, tokens=ld_setup[0], metric=metrics.kl_to_clean(),
                  ablation="zero", n_bootstrap=50)
    gap = abs(study.all_ablated("zero").mean() - study.baseline()["mean"])
    assert abs(study.baseline()["mean"]) < 1e-6
    assert study.threshold == pytest.approx(0.1 * gap) and study.threshold > 0
    assert "all studied components ablated" in study.threshold_rule
    assert Study(tiny_model, tokens=ld_setup[0], metric=metrics.kl_to_clean(),
                 threshold=0.25).threshold == 0.25


# ---------------------------------------------------------------------------------------------
# The result as a dict and a table.


def test_to_dict_schema_is_json(result):
    d = result.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text) == d
    assert set(d) == {"meta", "baseline", "single", "screening", "cumulative", "circuit",
                      "interactions", "ablation_comparison"}
    meta = d["meta"]
    for key in ("model", "model_config", "task", "ablation", "metric", "higher_is_better",
                "seed", "n_prompts", "seq_len", "components", "threshold", "threshold_rule",
                "versions", "date", "seconds"):
        assert key in meta
    assert meta["task"]["name"] == "induction" and meta["model"] == "tiny"
    assert meta["higher_is_better"] is False and meta["components"] == ["heads"]
    assert (meta["n_prompts"], meta["seq_len"]) == (12, 2 * HALF)
    assert meta["model_config"]["n_heads"] == 4
    assert set(meta["versions"]) == {"jaxablate", "jax", "numpy"}
    assert {"single", "screening", "cumulative", "circuit", "interactions",
            "ablation_comparison", "total"} <= set(meta["seconds"])
    assert set(d["single"][0]) == {"component", "kind", "layer", "index", "effect", "sem",
                                   "ci_low", "ci_high", "rank", "critical", "negative",
                                   "no_effect", "per_example"}
    assert {"order", "fractions", "n_ablated", "metric", "sem", "recovered", "cliff"} == set(
        d["cumulative"])
    assert {"target", "members", "size", "share", "faithfulness", "metric_all_ablated",
            "metric_circuit", "steps", "minimality", "minimal"} <= set(d["circuit"])
    assert {"components", "matrix", "pairs"} == set(d["interactions"])
    assert {"types", "effects", "components", "resample_std", "spearman", "verdicts",
            "changed"} == set(d["ablation_comparison"])
    assert {"method", "steps", "top_k", "components", "estimated_effect", "estimated_effect_sem",
            "screen_rank", "exact_effect", "exact_effect_all", "verified", "fails", "failures", "records",
            "spearman_top_k", "spearman_all", "precision_at_k", "critical_found",
            "completeness", "rule", "note", "seconds", "verified_from"} == set(d["screening"])


def test_table_lists_the_top_k_by_rank(result):
    table = result.table(k=3)
    lines = table.splitlines()
    assert len(lines) == 2 + 3 and "95% CI" in lines[1]
    top = sorted(result.single, key=lambda r: r["rank"])[:3]
    for line, r in zip(lines[2:], top):
        assert line.split()[:2] == [str(r["rank"]), r["component"]]
        assert f"{r['effect']:+.4f}" in line


def test_run_can_skip_steps(induction_study):
    partial = induction_study.run(steps=("baseline", "single", "cumulative"))
    assert partial.circuit is None and partial.interactions is None
    assert partial.screening is None
    assert partial.cumulative is not None and partial.to_dict()["circuit"] is None


# ---------------------------------------------------------------------------------------------
# Validation: clear ValueErrors before anything compiles.


@pytest.fixture
def no_compute(monkeypatch):
    """Any sweep or clean pass fails the test: validation must come first."""
    def fail(*args, **kwargs):
        raise AssertionError("computed before validating")

    monkeypatch.setattr(study_lib, "sweep", fail)
    monkeypatch.setattr(study_lib, "clean_metric", fail)
    monkeypatch.setattr(study_lib, "planned_chunk_size", fail)


@pytest.mark.parametrize("kwargs, message", [
    (dict(ablation="gaussian"), "ablation must be one of"),
    (dict(components=("heads", "layers")), "components must be distinct kinds"),
    (dict(components=()), "components must be distinct kinds"),
    (dict(components=("heads", "head")), "components must be distinct kinds"),
    (dict(components=("mlps", "neurons")), "'mlps' and 'neurons' overlap"),
    (dict(threshold=-0.1), "threshold must be a finite number >= 0"),
    (dict(threshold=float("nan")), "threshold must be a finite number >= 0"),
    (dict(neuron_layers=[0]), "neuron_layers is given but components has no 'neurons'"),
    (dict(components=("neurons",), neuron_layers=[2]), "neuron_layers must be layers"),
    (dict(n_bootstrap=0), "n_bootstrap must be an int >= 1"),
    (dict(resample_draws=0), "resample_draws must be an int >= 1"),
    (dict(seed=-1), "seed must be an int >= 0"),
])
def test_constructor_validation(tiny_model, induction_task, no_compute, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Study(tiny_model, induction_task, **kwargs)


def test_task_tokens_and_metric_validation(tiny_model, induction_task, no_compute):
    tokens = induction_task.tokens
    with pytest.raises(ValueError, match="either a task or tokens"):
        Study(tiny_model, induction_task, tokens=tokens)
    with pytest.raises(ValueError, match="either a task or tokens"):
        Study(tiny_model)
    with pytest.raises(ValueError, match="metric is required with tokens"):
        Study(tiny_model, tokens=tokens)
    with pytest.raises(ValueError, match="at least 2 prompts"):
        Study(tiny_model, tokens=tokens[:1], metric=metrics.loss())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Study(tiny_model, tokens=tokens + 200, metric=metrics.loss())
    with pytest.raises(ValueError, match="id outside the vocabulary"):
        Study(tiny_model, tokens=tokens, metric=metrics.logit_diff(500, 1))
    with pytest.raises(TypeError, match="metric"):
        Study(tiny_model, tokens=tokens, metric="loss")


def test_method_argument_validation(tiny_model, induction_task, no_compute):
    study = Study(tiny_model, induction_task)
    for target in (0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"target must be a fraction in \(0, 1\]"):
            study.minimal_circuit(target)
        with pytest.raises(ValueError, match=r"target must be a fraction in \(0, 1\]"):
            study.run(target=target)
    with pytest.raises(ValueError, match="fractions must"):
        study.cumulative(fractions=(0.0, 0.5))
    with pytest.raises(ValueError, match="fractions must"):
        study.run(fractions=(0.5, 1.2))
    with pytest.raises(ValueError, match="types must be"):
        study.compare_ablations(types=("zero", "gaussian"))
    with pytest.raises(ValueError, match="types must be"):
        study.compare_ablations(types=("zero",))
    with pytest.raises(ValueError, match="top_k must be an int >= 2"):
        study.run(top_k=1)
    with pytest.raises(ValueError, match="unknown steps"):
        study.run(steps=("single", "everything"))
    with pytest.raises(ValueError, match="max_size must be an int >= 1"):
        study.minimal_circuit(0.8, max_size=0)
    with pytest.raises(ValueError, match="top_k must be <= the 8 components"):
        study.run(top_k=9)
    with pytest.raises(ValueError, match="screen_method must be 'grad' or 'ig'"):
        study.screen("shap")
    with pytest.raises(ValueError, match="screen_steps must be an int >= 1"):
        study.run(screen_steps=0)
    with pytest.raises(ValueError, match="screen_top_k must be an int >= 1"):
        study.run(screen_top_k=0)
