"""Row skipping against a plain loop of `jaxablate.forward`.

A mask whose first changed position is p leaves every row before p clean at every layer
(attention is causal), so the sweep resumes it from rows p.. of the clean stream and feeds
the clean keys and values of rows < p to every layer's attention (`engine/resume.py`); the
logits a metric reads before p are the clean ones. Masks are grouped by their row count
seq - p rounded up to one of a few sizes (`plan.row_counts`), one compiled program per size.

So every case here mixes position kinds whose first changed row differs (head z, residual,
MLP output, stream after attention, q, k and v at single positions) with kinds that change
every row (whole heads, MLPs, neurons), on 3-5 layer models with fractional keep-weights,
shuffled so chunks straddle layers and row groups, with metrics that read the last position
only (logit difference), every position (loss: rows before p read clean) and the clean
logits (KL). A recorder asserts that the row-skipping path ran with several row starts, so
the test cannot pass by falling back to full rows. Tolerance as tests/test_engine_paths.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxablate
from jaxablate.engine import plan as plan_lib
from jaxablate.engine import sweeping as engine_lib
from test_engine_paths import ATOL, BATCH, CONFIGS, SEQ, make_cfg, np_metric, weighted_set
from test_engine_properties import random_model, random_replacement

CORRECT, WRONG = np.array([1, 2, 3]), np.array([4, 5, 6])
METRICS = {"logit_diff": jaxablate.metrics.logit_diff(CORRECT, WRONG),
           "loss": jaxablate.metrics.loss(), "kl_to_clean": jaxablate.metrics.kl_to_clean()}


class RowRecorder:
    """Records the rows each compiled chunk resumed from (x0's row count)."""

    def __init__(self, monkeypatch):
        self.rows: list[int] = []
        run_chunk = engine_lib._run_chunk

        def chunk(model, x0, attended, start, *args):
            self.rows.append(int(x0.shape[-2]))
            return run_chunk(model, x0, attended, start, *args)

        monkeypatch.setattr(engine_lib, "_run_chunk", chunk)


def position_groups(cfg, rng, seq=SEQ):
    L, H = cfg.n_layers, cfg.n_heads
    names = ([f"{a}.{h}@{p}" for a in range(L) for h in range(H) for p in range(seq)][::3]
             + [f"resid{a}@{p}" for a in range(L) for p in range(seq)][::2]
             + [f"mlp{a}@{p}" for a in range(L) for p in range(seq)][1::2]
             + [f"mid{a}@{p}" for a in range(L) for p in range(seq)][::3]
             + [f"{a}.{h}.{w}@{p}" for w in "qkv" for a in range(L) for h in range(H)
                for p in range(seq)][::5])
    groups = [[n] for n in names]
    groups += [[names[i], names[-1 - i]] for i in range(0, len(names) // 2, 7)]  # mixed rows
    groups += [[f"{L - 1}.0"], ["mlp1", names[-1]], [f"n{L - 1}.0", names[-2]]]  # all rows
    return [groups[i] for i in rng.permutation(len(groups))]


@pytest.mark.parametrize("spec", CONFIGS)
@pytest.mark.parametrize("source", ["patch", "random"])
def test_row_skipping_equals_forward_loop(spec, source, monkeypatch):
    cfg = make_cfg(spec)
    model = random_model(cfg, 7)
    rng = np.random.default_rng(sum(spec))
    tokens = rng.integers(0, cfg.d_vocab, (BATCH, SEQ))
    repl = (jaxablate.patch_replacement(model, rng.integers(0, cfg.d_vocab, (BATCH, SEQ)))
            if source == "patch" else random_replacement(cfg, SEQ, rng))
    mask_set = weighted_set(cfg, position_groups(cfg, rng), rng)
    recorder = RowRecorder(monkeypatch)
    # The reference: one plain forward per mask (float64 metrics), shared by the metrics.
    clean = np.asarray(jaxablate.forward(model, tokens), np.float64)
    logits = [np.asarray(jaxablate.forward(model, tokens, mask_set.mask(i), repl), np.float64)
              for i in range(len(mask_set))]
    for name, metric in METRICS.items():
        want = np.stack([np_metric(name, lg, clean, tokens, CORRECT, WRONG) for lg in logits])
        for chunk_size in (5, None):
            got = jaxablate.sweep(model, tokens, mask_set, repl, metric, chunk_size)
            np.testing.assert_allclose(got, want, rtol=0, atol=ATOL,
                                       err_msg=f"{name} chunk {chunk_size}")
    # Rows were skipped, with several row starts (SEQ rows: not skipped).
    assert len(set(recorder.rows) - {SEQ}) >= 2, recorder.rows


def test_row_starts_follow_the_first_changed_position():
    cfg = make_cfg(CONFIGS[0])
    ms = jaxablate.masks.from_components(
        cfg, ["0.1@5", "resid2@3", ["mlp1@4", "2.0.k@1"], "1.2", "mid0@2", "n1.3"],
        seq_len=SEQ)
    rows = plan_lib.first_rows(ms, SEQ)
    np.testing.assert_array_equal(rows, [5, 3, 1, 0, 2, 0])
    # Each start is the latest one at or before the first changed row whose row count is
    # one of the allowed sizes (brute force over every start).
    allowed = set(plan_lib.row_counts(SEQ).tolist())
    latest = [max(s for s in range(r + 1) if SEQ - s in allowed) for r in rows]
    np.testing.assert_array_equal(plan_lib.row_groups(rows, SEQ), latest)
    # reuse_prefix=False is the reference path: every row recomputed.
    model = random_model(cfg, 0)
    tokens = np.zeros((1, SEQ), np.int64)
    off = plan_lib.plan_sweep(model, ms, 1, SEQ, 1, METRICS["logit_diff"], None, None, False)
    assert not off.row_start.any()


@pytest.mark.parametrize("seq", [1, 2, 5, 6, 16, 17, 100, 1024])
def test_row_counts_are_few_and_cover_every_row(seq):
    counts = plan_lib.row_counts(seq)
    step = -(-seq // plan_lib.ROW_GROUPS)
    assert counts[-1] == seq and counts[0] == 1 and (np.diff(counts) > 0).all()
    # Powers of two below the coarse step, then multiples of it (and seq): log-many.
    assert all(c & (c - 1) == 0 for c in counts if c < step)
    assert all(c % step == 0 or c == seq for c in counts if c >= step)
    assert len(counts) <= plan_lib.ROW_GROUPS + max(1, step).bit_length()
    # A mask at the last position recomputes one row; no mask more than twice its rows,
    # or one coarse step more.
    starts = plan_lib.row_groups(np.arange(seq), seq)
    assert starts[-1] == seq - 1
    needed = seq - np.arange(seq)
    assert ((seq - starts <= 2 * needed) | (seq - starts < needed + step)).all()
    assert (starts <= np.arange(seq)).all()
