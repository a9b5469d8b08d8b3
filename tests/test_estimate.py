"""Planning a study before it runs (`jaxablate.study.estimate`): the plan lists the sweeps the
study then runs, its estimate is within 2x of a measured run on the bundled model, progress
bars get a total that never grows, `--dry-run` runs nothing, and a long run prints its plan
before it starts. (The GPT-2-small-sized check takes minutes: benchmarks/bench_estimate.py.)
"""

from __future__ import annotations

import time

import jax
import numpy as np
import pytest

import jaxablate as ja
from jaxablate.cli import run as cli_run
from jaxablate.cli.command import main
from jaxablate.engine.bars import ProgressBars
from jaxablate.study import estimate, protocol
from jaxablate.study.estimate import duration, plan_study
from jaxablate.study.planner import assumed_size
from jaxablate.study.progress import sweep_reporter
from jaxablate.tasks.induction import induction

# A small study of the bundled model that still has every kind of sweep: resample draws
# (as the study's ablation), the comparison of three types, the circuit's greedy steps, the
# pairs. 24 prompts: a prompt count no other test module compiles for.
STEPS = ("baseline", "single", "cumulative", "circuit", "interactions",
         "ablation_comparison")
TYPES = ("zero", "mean", "resample")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """The plan of the small study, then the study itself run with ProgressBars fed the
    plan's totals: (plan, seconds the run took, the callback's (label, done, total) calls,
    the bars' (label, total, n) after every call and at every close)."""
    model = ja.load_gpt2("bundled:induction")
    task = induction(24, half=16, vocab=model.cfg.d_vocab, seed=3)
    calls, bars_seen = [], []
    bars = ProgressBars()

    def progress(step, done, total):
        calls.append((step, int(done), int(total)))
        bars(step, done, total)
        bars_seen.append((step, bars.bar.total, bars.bar.n, False))

    close = bars.close

    def recorded_close():
        bar, step = bars.bar, bars.step
        close()
        if bar:
            bars_seen.append((step, bar.total, bar.n, True))

    bars.close = recorded_close
    study = protocol.Study(model, task, ablation="resample", resample_draws=2,
                           progress=progress, store=tmp_path_factory.mktemp("est") / "sweeps")
    jax.clear_caches()  # the estimate is of a fresh process: nothing compiled yet
    plan = plan_study(study, steps=STEPS, types=TYPES)
    bars.planned, bars.bounded = plan.progress_totals(), plan.bounded_labels()
    start = time.perf_counter()
    study.run(steps=STEPS, types=TYPES)
    seconds = time.perf_counter() - start
    bars.close()
    return plan, seconds, calls, bars_seen


def sweeps_per_label(calls):
    """{label: [each sweep's total]} from the callback's calls (a sweep ends at done ==
    total; repeats are not reported)."""
    out: dict[str, list[int]] = {}
    for label, done, total in calls:
        if done == total:
            out.setdefault(label, []).append(total)
    return out


def test_the_plan_lists_the_sweeps_the_study_runs(measured):
    plan, _, calls, _ = measured
    planned = {s.name: s for s in plan.steps}
    ran = sweeps_per_label(calls)
    totals = plan.progress_totals()
    exact = [s for s in plan.steps if s.bound == "exact"]
    for step in exact:
        for label in {s.label for s in step.sweeps}:
            want = [s.n_masks for s in step.sweeps if s.label == label]
            assert ran.get(label) == want, (label, ran.get(label), want)
    # The resample draws run in the study's sweeps, the comparison under its own label.
    assert {s.draws for s in planned["single"].sweeps} == {2}
    comparison = planned["ablation_comparison"].sweeps
    assert [(s.label, s.ablation) for s in comparison] == [("comparison", "zero"),
                                                           ("comparison", "mean")]
    # Bounded steps: the run stays within the plan's totals (upper bounds).
    for label in ("circuit", "minimality", "cumulative", "all_ablated"):
        assert sum(ran[label]) <= totals[label], (label, ran[label], totals[label])
    assert set(ran) <= set(totals), (set(ran), set(totals))


def test_the_estimate_is_within_2x_of_the_measured_run(measured):
    plan, seconds, _, _ = measured
    ratio = seconds / plan.seconds
    print(f"bundled model, small study: estimated {plan.seconds:.1f} s (upper bound "
          f"{plan.upper_seconds:.1f} s), measured {seconds:.1f} s, ratio {ratio:.2f}")
    assert 0.5 <= ratio <= 2.0, "\n".join(plan.lines() + [f"measured {seconds:.1f} s"])


def test_progress_totals_never_grow_and_each_bar_ends_full(measured):
    plan, _, calls, seen = measured
    assert any(t > 0 and d < t for _, d, t in calls)  # several chunks: a real test
    by_label: dict[str, list] = {}
    for label, total, n, closing in seen:
        by_label.setdefault(label, []).append((total, n, closing))
    for label, states in by_label.items():
        first = states[0][0]
        assert first == plan.progress_totals()[label], (label, states[:3])  # one bar each
        for total, n, closing in states:
            # the planned total from the first chunk on; an upper bound shrinks at the end
            assert total == first or (closing and total == n < first), (label, states)
            assert n <= total
        assert states[-1][2] and states[-1][0] == states[-1][1], (label, states[-1])


def test_a_progress_bar_keeps_the_planned_total_over_several_sweeps(capsys):
    bars = ProgressBars(planned={"comparison": 8, "circuit": 10}, bounded={"circuit"})
    totals = []
    for done in (2, 4, 2, 4):  # two sweeps of 4 masks, chunks of 2
        bars("comparison", done, 4)
        totals.append((bars.bar.total, bars.bar.n))
    assert totals == [(8, 2), (8, 4), (8, 6), (8, 8)]
    for done, total in ((4, 4), (3, 3)):  # an upper bound of 10: 7 needed
        bars("circuit", done, total)
        assert bars.bar.total == 10
    bars.close()
    err = capsys.readouterr().err
    assert "comparison: 100%" in err and "8/8" in err and "7/7" in err, err
    unplanned = ProgressBars()  # no plan: the first sweep's total, grown by the next
    unplanned("single", 3, 3)
    unplanned("single", 3, 3)
    assert (unplanned.bar.total, unplanned.bar.n) == (6, 6)


def test_progress_true_gives_bars_whose_totals_are_the_plans(tiny_model, monkeypatch, capsys,
                                                              tmp_path):
    seen: list = []
    call = ProgressBars.__call__

    def recorded(self, step, done, total):
        call(self, step, done, total)
        seen.append((step, self.bar.total, self.bar.n))

    monkeypatch.setattr(ProgressBars, "__call__", recorded)
    task = induction(4, half=4, vocab=tiny_model.cfg.d_vocab, seed=0)
    study = protocol.Study(tiny_model, task, ablation="mean", progress=True, chunk_size=2)
    assert isinstance(study.progress, ProgressBars)
    steps = ("baseline", "single", "cumulative", "ablation_comparison")
    study.run(steps=steps, types=("zero", "mean"), fractions=(0.5, 1.0))
    by_label: dict[str, list] = {}
    for label, total, n in seen:
        by_label.setdefault(label, []).append((total, n))
    assert {"single", "cumulative", "comparison"} <= set(by_label), by_label
    for label, states in by_label.items():
        assert len({total for total, _ in states}) == 1, (label, states)  # never grows
        assert states[-1][0] == states[-1][1], (label, states)  # ends full
    assert any(n < total for states in by_label.values() for total, n in states)  # chunks
    err = capsys.readouterr().err
    assert "single: 100%" in err and "comparison: 100%" in err, err
    assert study.progress.bar is None  # the run closed its last bar

    masks = ja.masks.single_heads(tiny_model.cfg)
    metric = ja.metrics.logit_diff(np.ones(4, int), np.zeros(4, int))
    out = ja.sweep(tiny_model, task.tokens, masks, ja.zero_replacement(tiny_model), metric,
                   chunk_size=2, progress=True)
    assert out.shape == (len(masks), 4)
    assert seen[-1] == ("sweep", len(masks), len(masks))
    assert "sweep: 100%" in capsys.readouterr().err
    stored = ja.sweep(tiny_model, task.tokens, masks, ja.zero_replacement(tiny_model), metric,
                      chunk_size=2, progress=True, store=tmp_path / "store")
    np.testing.assert_array_equal(stored, out)
    err = capsys.readouterr().err
    assert err.count("sweep: 100%") == 1, err  # one bar, closed once
    with pytest.raises(ja.InputTypeError, match="expected True"):
        protocol.Study(tiny_model, task, progress="yes")


def test_each_sweep_reports_each_count_once_under_its_steps_label(tiny_model):
    calls = []
    task = induction(4, half=4, vocab=tiny_model.cfg.d_vocab, seed=0)
    study = protocol.Study(tiny_model, task, ablation="mean",
                           progress=lambda *a: calls.append(a))
    report = sweep_reporter(study, "single", "zero")
    for done in (2, 4, 4):  # a results store repeats a file's last count
        report(done, 4)
    sweep_reporter(study, "single", "mean")(4, 4)
    assert calls == [("comparison", 2, 4), ("comparison", 4, 4), ("single", 4, 4)]
    assert sweep_reporter(protocol.Study(tiny_model, task), "single", "zero") is None


def test_the_plan_says_what_is_bounded(measured):
    plan = measured[0]
    text = "\n".join(plan.lines())
    circuit = next(s for s in plan.steps if s.name == "circuit")
    assert circuit.bound == "estimate" and circuit.upper_s >= circuit.seconds
    assert f"assumes {assumed_size(4)} members of 4" in text and "at most" in text
    for words in ("single_interactions" if any(s.label == "single_interactions" for s in
                                               plan.steps[1].sweeps) else "single",
                  "resample", "x 2 draws", "comparison", "zero", "estimated time"):
        assert words in text, (words, text)
    assert plan.upper_seconds >= plan.seconds > 0
    assert [duration(s) for s in (12, 600, 7200, 4 * 86400)] == ["12 s", "10 min", "2.0 h",
                                                                  "4.0 days"]


# -- the command line -------------------------------------------------------------------------


def _forbid_work(monkeypatch):
    """Every sweep entry point raises; returns the names of the programs compiled."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a sweep ran under --dry-run")

    engine = pytest.importorskip("jaxablate.engine.sweeping")
    monkeypatch.setattr(engine, "sweep", forbidden)
    monkeypatch.setattr(protocol, "sweep", forbidden)
    monkeypatch.setattr(protocol.Study, "sweep_sets", forbidden)
    monkeypatch.setattr(protocol.Study, "run", forbidden)
    compiled: list[str] = []

    def listen(event, seconds, **kwargs):
        if event.endswith("backend_compile_duration"):
            compiled.append(kwargs.get("fun_name", ""))

    jax.monitoring.register_event_duration_secs_listener(listen)
    return compiled


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, monkeypatch, capsys):
    compiled = _forbid_work(monkeypatch)
    out = tmp_path / "report"
    (out / "sweeps").mkdir(parents=True)
    (out / "sweeps" / "keep.txt").write_text("an earlier run's")
    argv = ["study", "--dry-run", "--overwrite", "--out", str(out), "--no-cache"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "plan:" in printed and "estimated time: ~" in printed, printed
    for step in ("baseline", "single", "cumulative", "circuit", "ablation_comparison"):
        assert step in printed, step
    assert "nothing was run" in printed
    assert sorted(p.name for p in out.rglob("*")) == ["keep.txt", "sweeps"]  # untouched
    engine_programs = ("_run_chunk", "_clean_pass", "_run_trajectories", "_forward",
                       "_attribute_chunk", "damage_and_grad")
    assert not [f for f in compiled if any(p in f for p in engine_programs)], compiled


@pytest.mark.parametrize("budget_s, extra, optimal", [
    (1e9, [], True),  # the fit is cheap: the default compares all four types
    (0, [], False),  # over budget: optimal left out, a line says why
    (0, ["--compare", "zero,mean,resample,optimal"], True),  # asked for, whatever it costs
    (0, ["--oa-steps", "3"], True),  # an --oa-* option asks for it too
    (1e9, ["--compare", "zero,mean"], False),
], ids=["cheap", "over-budget", "compare", "oa-steps", "compare-two"])
def test_the_comparison_leaves_an_expensive_optimal_fit_out_unless_asked(
        budget_s, extra, optimal, tmp_path, tiny_dir, monkeypatch, capsys):
    _forbid_work(monkeypatch)
    monkeypatch.setattr(cli_run, "OA_COMPARE_BUDGET_S", budget_s)
    plans = []
    plan_study = estimate.plan_study

    def recorded(study, **kwargs):
        plans.append((kwargs["types"], plan_study(study, **kwargs)))
        return plans[-1][1]

    monkeypatch.setattr(estimate, "plan_study", recorded)
    argv = ["study", "--model", str(tiny_dir), "--n-prompts", "4", "--dry-run", "--skip",
            "screening,cumulative,circuit,interactions", "--out", str(tmp_path / "r"),
            "--no-cache", *extra]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    types, plan = plans[-1]  # the plan that was printed
    fit = [what for step in plan.steps for what, _ in step.other if "optimal fit" in what]
    assert ("optimal" in types) == optimal == bool(fit), (types, fit)
    comparison = next(s for s in plan.steps if s.name == "ablation_comparison")
    assert [s.ablation for s in comparison.sweeps if s.label == "comparison"] == [
        t for t in types if t != "mean"], comparison.sweeps  # mean is the study's own
    line = next(x for x in printed.splitlines() if x.startswith("comparison:"))
    assert line.startswith("comparison: " + ", ".join(types)), line
    assert ("optimal left out" in line) == (not optimal and not extra), line
    assert ("optimal constants" in printed) == optimal, printed


def test_a_long_run_prints_its_plan_before_it_starts(tmp_path, tiny_dir, monkeypatch,
                                                     capsys):
    monkeypatch.setattr(cli_run, "LONG_RUN_S", 0)  # every run counts as long
    seen_before = []
    run = protocol.Study.run

    def watched(self, **kwargs):
        seen_before.append(capsys.readouterr().out)
        return run(self, **kwargs)

    monkeypatch.setattr(protocol.Study, "run", watched)
    argv = ["study", "--model", str(tiny_dir), "--n-prompts", "4", "--skip",
            "screening,cumulative,circuit,interactions,comparison", "--out",
            str(tmp_path / "r"), "--no-plots", "--quiet", "--no-cache"]
    assert main(argv) == 0
    before = seen_before[0]
    assert "plan: 1 sweep;" in before and "single" in before, before
    assert "estimated time: ~" in before
    assert "rank" in capsys.readouterr().out  # the table came after


def test_a_short_run_prints_its_estimate_in_one_line(tmp_path, tiny_dir, capsys):
    argv = ["study", "--model", str(tiny_dir), "--n-prompts", "4", "--skip",
            "screening,cumulative,circuit,interactions,comparison", "--out",
            str(tmp_path / "r"), "--no-plots", "--quiet", "--no-cache"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    estimate = [line for line in lines if line.startswith("estimated time")]
    assert len(estimate) == 1 and "--dry-run" in estimate[0], lines
    assert not any(line.startswith("plan:") for line in lines)


def test_padding_and_draws_match_the_study(tiny_model):
    # The plan pads lists of components as Study.sweep_sets does (power of two below the
    # chunk) and sweeps a resample study's draws together.
    task = induction(4, half=4, vocab=tiny_model.cfg.d_vocab, seed=0)
    study = protocol.Study(tiny_model, task, ablation="resample", resample_draws=3)
    plan = plan_study(study, steps=("baseline", "single", "cumulative"), chunk_size=8,
                      fractions=(0.25, 0.5, 1.0))
    single, cumulative = plan.steps[1], plan.steps[2]
    assert single.sweeps[0].draws == 3 and single.sweeps[0].n_masks == 8
    assert [s.n_masks for s in cumulative.sweeps] == [4, 1]  # 3 sets -> 4; all ablated
    assert np.isfinite(plan.seconds) and plan.planning_s < 5
