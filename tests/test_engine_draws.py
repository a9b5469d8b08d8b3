"""Shared work in a sweep against a plain loop of `jaxablate.forward`: several replacement
draws in one sweep (`engine/draws.py`), and masks served by their pairs' parents.

* Draws: a list of D replacements runs every mask under each draw, vmapped inside the same
  compiled calls, on every path (own chunks straddling layers, attention reuse, row
  skipping, parents and their children), each draw equal to a loop of forwards under it.
* Served masks: in a set of singles and pairs, a single that is some pair's parent (its
  shared prefix) is read off the parent's trajectory at n_layers instead of being run; it
  equals the loop too, and a recorder asserts that it was served and not run on its own.

Models of 3-5 layers, fractional keep-weights, mixed kinds, chunks that straddle layers.
Tolerance ATOL as tests/test_engine_paths.py (float32 rounding between two programs).
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from test_engine_paths import (
    ATOL,
    BATCH,
    CONFIGS,
    SEQ,
    ja_metric,
    loop,
    make_cfg,
    weighted_set,
)
from test_engine_properties import random_model, random_replacement

import jaxablate
from jaxablate.engine import plan as plan_lib
from jaxablate.engine import sweeping as engine_lib
from jaxablate.errors import InputError, InputTypeError


def setup(spec):
    cfg = make_cfg(spec)
    model = random_model(cfg, sum(spec))
    rng = np.random.default_rng(sum(spec))
    tokens = rng.integers(0, cfg.d_vocab, (BATCH, SEQ)).astype(np.int32)
    correct = rng.integers(0, cfg.d_vocab, BATCH)
    wrong = (correct + 1 + rng.integers(0, cfg.d_vocab - 1, BATCH)) % cfg.d_vocab
    return cfg, model, tokens, correct, wrong, rng


def singles_and_pairs(cfg, rng, extra=()):
    """Whole heads and MLPs alone and in pairs across layers (their first member the pair's
    parent), a few position masks (row skipping) and triples, shuffled."""
    singles = ([f"{a}.{h}" for a in range(cfg.n_layers) for h in range(cfg.n_heads)]
               + [f"mlp{a}" for a in range(cfg.n_layers)])
    pairs = [[a, b] for a, b in itertools.combinations(singles, 2)
             if a.split(".")[0] != b.split(".")[0]][::2]
    groups = [[s] for s in singles] + pairs + [list(g) for g in extra]
    return [groups[i] for i in rng.permutation(len(groups))]


class ChunkRecorder:
    """Records each compiled chunk's start layer and whether it was drawn."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[int, bool]] = []
        run_chunk = engine_lib._run_chunk

        def chunk(model, x0, attended, start, *args):
            self.calls.append((int(start), bool(args[-1])))  # drawn: the last argument
            return run_chunk(model, x0, attended, start, *args)

        monkeypatch.setattr(engine_lib, "_run_chunk", chunk)


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"{s[0]}L")
def test_draws_and_served_masks_equal_a_loop_of_forwards(spec, monkeypatch):
    cfg, model, tokens, correct, wrong, rng = setup(spec)
    L = cfg.n_layers
    extra = [[f"0.0@{SEQ - 1}"], [f"{L - 1}.1@{SEQ - 2}", "mlp0"], ["0.1", "1.0", f"{L - 1}.0"],
             [f"resid1@{SEQ - 3}"]]
    mask_set = weighted_set(cfg, singles_and_pairs(cfg, rng, extra), rng)
    reference = rng.integers(0, cfg.d_vocab, (5, SEQ))
    draws = [jaxablate.resample_replacement(model, reference, d, n_examples=BATCH)
             for d in range(3)]
    metric = ja_metric("logit_diff", correct, wrong)
    want = np.stack([loop(model, tokens, mask_set, r, "logit_diff", correct, wrong)
                     for r in draws])
    plan = plan_lib.plan_sweep(model, mask_set, BATCH, SEQ, 1, metric, None, None, True)
    served = plan.resume_at == L
    # Every single head or MLP of layers < L - 1 is some kept pair's parent: served.
    assert served.sum() >= (L - 2) * (cfg.n_heads + 1), served.sum()
    recorder = ChunkRecorder(monkeypatch)
    for chunk_size in (4, None):  # 4: chunks straddle layers, parents and row starts
        recorder.calls.clear()
        got = jaxablate.sweep(model, tokens, mask_set, draws, metric, chunk_size)
        assert got.shape == (3, len(mask_set), BATCH)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"chunk {chunk_size}")
        assert all(drawn for _, drawn in recorder.calls)
        if chunk_size == 4:  # (one big chunk resumes every child at its earliest layer)
            assert any(start == L for start, _ in recorder.calls)  # served masks, as such
    # One draw in a list is a [1, N, batch] sweep; a lone replacement gives [N, batch].
    one = jaxablate.sweep(model, tokens, mask_set, draws[:1], metric)
    alone = jaxablate.sweep(model, tokens, mask_set, draws[0], metric)
    np.testing.assert_allclose(one[0], alone, rtol=0, atol=ATOL)
    np.testing.assert_allclose(alone, want[0], rtol=0, atol=ATOL)


def test_draws_of_shared_values_on_position_kinds():
    """Random (not per-example) draws on every position kind: row skipping and the
    patching kinds under several draws."""
    spec = CONFIGS[1]
    cfg, model, tokens, correct, wrong, rng = setup(spec)
    names = ([f"{a}.{h}@{p}" for a in range(cfg.n_layers) for h in range(cfg.n_heads)
              for p in (1, SEQ - 1)] + [f"mlp{a}@{SEQ - 2}" for a in range(cfg.n_layers)]
             + [f"{a}.0.k@{SEQ - 1}" for a in range(cfg.n_layers)] + ["mlp1", "n2.3"])
    groups = [[n] for n in names] + [[names[0], names[-1]], [names[3], names[-3]]]
    mask_set = weighted_set(cfg, groups, rng)
    draws = [random_replacement(cfg, SEQ, rng) for _ in range(2)]
    metric = ja_metric("kl_to_clean", correct, wrong)
    got = jaxablate.sweep(model, tokens, mask_set, draws, metric, 5)
    want = np.stack([loop(model, tokens, mask_set, r, "kl_to_clean", correct, wrong)
                     for r in draws])
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_draws_in_the_store_resume_bit_for_bit(tmp_path):
    cfg, model, tokens, correct, wrong, rng = setup(CONFIGS[0])
    mask_set = weighted_set(cfg, singles_and_pairs(cfg, rng), rng)
    reference = rng.integers(0, cfg.d_vocab, (5, SEQ))
    draws = [jaxablate.resample_replacement(model, reference, d, n_examples=BATCH)
             for d in range(2)]
    metric = ja_metric("logit_diff", correct, wrong)
    store = jaxablate.store.ResultsStore(tmp_path / "runs")
    first = store.sweep(model, tokens, mask_set, draws, metric, 4, masks_per_file=8)
    assert first.shape == (2, len(mask_set), BATCH)
    np.testing.assert_allclose(first, jaxablate.sweep(model, tokens, mask_set, draws, metric),
                               rtol=0, atol=ATOL)
    files = sorted((tmp_path / "runs" / "sweep").glob("chunk-*.npy"))
    files[1].unlink()
    again = jaxablate.store.ResultsStore(tmp_path / "runs")
    np.testing.assert_array_equal(
        again.sweep(model, tokens, mask_set, draws, metric, 4, masks_per_file=8), first)
    assert again.computed == 1 and again.reused == len(files) - 1
    # Other draws are other inputs: refused, not mixed in.
    with pytest.raises(jaxablate.store.StoreMismatchError, match="replacement"):
        again.sweep(model, tokens, mask_set, draws[::-1], metric, 4, masks_per_file=8)


def test_bad_draws_are_refused_before_compiling(monkeypatch):
    cfg, model, tokens, correct, wrong, _ = setup(CONFIGS[0])
    mask_set = jaxablate.masks.single_heads(cfg)
    metric = ja_metric("logit_diff", correct, wrong)

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled before refusing")

    monkeypatch.setattr(engine_lib, "_clean_pass", no_compile)
    mean = jaxablate.mean_replacement(model, tokens)
    resample = jaxablate.resample_replacement(model, tokens, jax.random.key(0))
    cases = [([], InputError, "empty list"),
             ([mean, resample], InputError, "draw 1 differs from draw 0 in kind"),
             ([mean, "zero"], InputTypeError, "draw 1 is a str"),
             ([mean, jaxablate.mean_replacement(model, tokens[:, :SEQ - 1])], InputError,
              r"draw 1's z has shape \[3, 5, 3, 4\]")]
    for draws, error, message in cases:
        with pytest.raises(error, match=message):
            jaxablate.sweep(model, tokens, mask_set, draws, metric)
