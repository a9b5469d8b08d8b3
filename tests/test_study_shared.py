"""Work a study shares between its sweeps, against the same study run without sharing.

* When the study tests every pair (interactions of all heads), the singles come from the
  pairs' sweep: a head that is some pair's parent is read off the parent's trajectory. The
  study's results must be those of singles run in their own sweep: effects equal to float32
  rounding, the same ranks, verdicts and interaction table.
* Resample draws run as one vmapped axis of one sweep: equal to one sweep per draw.

A 4-layer random model (a 2-layer one has no layer between a parent and a child).
Tolerance: ATOL (tests/test_engine_paths.py) on each metric value; effects, their means
over examples and the interaction table are differences and means of those, so they agree
to 2 * ATOL.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_engine_paths import ATOL, make_cfg
from test_engine_properties import random_model

import jaxablate
from jaxablate import Study, metrics
from jaxablate.study import protocol

SPEC = (4, 3, 4, 24)
BATCH, SEQ = 6, 7


@pytest.fixture(scope="module")
def setup():
    cfg = make_cfg(SPEC)
    model = random_model(cfg, 5)
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, cfg.d_vocab, (BATCH, SEQ))
    reference = rng.integers(0, cfg.d_vocab, (8, SEQ))
    correct = rng.integers(0, cfg.d_vocab, BATCH)
    metric = metrics.logit_diff(correct, (correct + 3) % cfg.d_vocab)
    return model, tokens, reference, metric


class StepRecorder:
    """Records the step name of every sweep a study runs."""

    def __init__(self, monkeypatch):
        self.steps: list[str] = []
        sweep_sets = protocol.Study.sweep_sets

        def record(study, sets, ablation, step, *args, **kwargs):
            self.steps.append(step)
            return sweep_sets(study, sets, ablation, step, *args, **kwargs)

        monkeypatch.setattr(protocol.Study, "sweep_sets", record)


@pytest.mark.parametrize("ablation", ["mean", "resample"])
def test_singles_from_the_pairs_sweep_equal_their_own_sweep(setup, monkeypatch, ablation):
    model, tokens, reference, metric = setup
    steps = ("baseline", "single", "interactions")

    def study():
        return Study(model, tokens=tokens, metric=metric, reference=reference,
                     ablation=ablation, resample_draws=2, n_bootstrap=200)

    recorder = StepRecorder(monkeypatch)
    shared = study().run(steps=steps)
    assert recorder.steps == ["single_interactions"], recorder.steps
    recorder.steps.clear()
    alone_study = study()
    alone_study.single()  # the singles first, in their own sweep
    alone = alone_study.run(steps=steps)
    assert recorder.steps == ["single", "interactions"], recorder.steps

    got = {r["component"]: r for r in shared.single}
    want = {r["component"]: r for r in alone.single}
    assert list(got) == list(want) == alone_study.names
    for name, r in want.items():
        assert got[name]["effect"] == pytest.approx(r["effect"], abs=2 * ATOL), name
        np.testing.assert_allclose(got[name]["per_example"], r["per_example"], rtol=0,
                                   atol=2 * ATOL)
        # Ranks and verdicts: the same unless two effects tie within rounding.
        assert got[name]["rank"] == r["rank"], name
        assert got[name]["critical"] == r["critical"], name
    np.testing.assert_allclose(np.array(shared.interactions["matrix"], float),
                               np.array(alone.interactions["matrix"], float),
                               rtol=0, atol=4 * ATOL, equal_nan=True)


def test_resample_draws_run_in_one_sweep(setup, monkeypatch):
    model, tokens, reference, metric = setup
    study = Study(model, tokens=tokens, metric=metric, reference=reference,
                  ablation="resample", resample_draws=3, n_bootstrap=100)
    calls = []
    sweep = protocol.sweep

    def record(model, tokens, masks, replacement, *args, **kwargs):
        calls.append(len(replacement) if isinstance(replacement, list) else 1)
        return sweep(model, tokens, masks, replacement, *args, **kwargs)

    monkeypatch.setattr(protocol, "sweep", record)
    values = study.sweep_sets(study.single_masks, "resample", "single")
    assert calls == [3]  # one sweep, the three draws vmapped
    assert values.shape == (3, len(study.names), BATCH)
    draws = study.replacements("resample")
    for d, r in enumerate(draws):
        want = jaxablate.sweep(model, tokens, study.single_masks, r, metric)
        np.testing.assert_allclose(values[d], want, rtol=0, atol=ATOL, err_msg=f"draw {d}")


def test_resample_study_resumes_from_the_store(setup, tmp_path):
    model, tokens, reference, metric = setup

    def run():
        study = Study(model, tokens=tokens, metric=metric, reference=reference,
                      ablation="resample", resample_draws=2, n_bootstrap=100,
                      store=tmp_path / "runs")
        return study, study.run(steps=("baseline", "single"))

    first_study, first = run()
    assert first_study.store.computed > 0
    again_study, again = run()
    assert again_study.store.computed == 0 and again_study.store.reused > 0
    assert [r["per_example"] for r in again.single] == [r["per_example"] for r in first.single]
