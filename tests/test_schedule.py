"""The chunk-size cost model (jaxablate.schedule) against a plain count of layers run."""

from __future__ import annotations

import numpy as np
import pytest

import jaxablate
from jaxablate import masks, metrics
from jaxablate.engine import schedule
from jaxablate.model.config import GPT2Config


@pytest.fixture
def small_cfg() -> GPT2Config:
    return GPT2Config(n_layers=12, n_heads=12, d_model=768, d_mlp=3072, d_vocab=50257,
                      n_ctx=1024)


def loop_cost(starts, chunk, costs, rows_per_mask):
    """The same estimate by walking the chunks one by one, layer by layer."""
    total = 0.0
    for begin in range(0, len(starts), chunk):
        start = min(starts[begin:begin + chunk])
        rows = max(chunk * rows_per_mask, schedule.MIN_EFFICIENT_ROWS)
        total += rows * sum(costs[layer] for layer in range(start, len(costs)))
        total += schedule.CALL_OVERHEAD_ROW_LAYERS
    return total


@pytest.mark.parametrize("chunk", [1, 5, 12, 13, 50, 144])
def test_chunk_cost_counts_layers_like_a_loop(small_cfg, chunk):
    rng = np.random.default_rng(chunk)
    starts = np.sort(rng.integers(0, 12, 144))
    costs = schedule.layer_costs(small_cfg, 16, 1)
    got = schedule.chunk_cost(starts, chunk, costs, 128)
    assert got == pytest.approx(loop_cost(list(starts), chunk, costs, 128), rel=1e-12)


def test_plan_is_the_cheapest_size(small_cfg):
    rng = np.random.default_rng(0)
    groups = [np.sort(rng.integers(0, 12, n)) for n in (144, 30, 7)]
    costs = schedule.layer_costs(small_cfg, 16, 1)
    chosen = schedule.plan_chunk_size(groups, small_cfg, 128, 1, 16, max_chunk=80)
    every = [sum(loop_cost(list(g), c, costs, 128) for g in groups) for c in range(1, 81)]
    assert every[chosen - 1] == pytest.approx(min(every), rel=1e-9)


def test_single_heads_get_one_layer_per_chunk(small_cfg):
    # 12 heads per layer, 8 x 16-token prompts: chunks that never straddle layers win.
    starts = np.repeat(np.arange(12), 12)
    assert schedule.plan_chunk_size([starts], small_cfg, 128, 1, 16, max_chunk=73) == 12


def test_last_layer_costs_only_what_the_metric_reads(small_cfg):
    costs = schedule.layer_costs(small_cfg, 16, 1)
    assert np.all(costs[:-1] == 1.0)
    assert 0.2 < costs[-1] < 1.0
    # Reading every position costs more than a full layer (the unembedding comes on top).
    assert schedule.layer_costs(small_cfg, 16, 16)[-1] > 1.0


def test_plan_respects_the_memory_bound(small_cfg):
    starts = np.zeros(1000, np.int64)  # one start layer: bigger chunks are always cheaper
    assert schedule.plan_chunk_size([starts], small_cfg, 128, 1, 16, max_chunk=40) == 40


def test_numpy_integer_chunk_size(tiny_model):
    # A chunk size computed with numpy is accepted and gives the same numbers.
    cfg = tiny_model.cfg
    tokens = np.random.default_rng(0).integers(0, cfg.d_vocab, (3, 6))
    metric = metrics.logit_diff(np.array([1, 2, 3]), np.array([4, 5, 6]))
    mask_set = masks.single_heads(cfg)
    zero = jaxablate.zero_replacement(tiny_model)
    want = jaxablate.sweep(tiny_model, tokens, mask_set, zero, metric, chunk_size=3)
    got = jaxablate.sweep(tiny_model, tokens, mask_set, zero, metric, chunk_size=np.int64(3))
    np.testing.assert_array_equal(got, want)
