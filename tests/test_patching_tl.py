"""`jaxablate.patching` equals TransformerLens 3.9's `transformer_lens.patching`, function for
function, on the same random weights.

The reference is TL's own code, called directly: `get_act_patch_*(tl, corrupted_tokens,
cache, metric)` loops one `run_with_hooks` per patch, with the cache from TL's own
`run_with_cache` and a metric computed by TL's logits in torch. Both directions:

    denoising  tokens = corrupted, source = clean      (TL: corrupted tokens, clean cache)
    noising    tokens = clean,     source = corrupted  (TL: clean tokens, corrupted cache)

TL's `_every` functions return a fifth row (the attention pattern) that jaxablate does not
patch: the first four rows are compared and the fifth is asserted to be there.

Tolerance: ATOL = 1e-4, float32 on both sides (tests/test_engine_tl.py's contract; TL and
HF eager logits agree to ~1e-7, REFERENCE.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import transformer_lens.patching as tlp
from conftest import tiny_hf_config

import jaxablate
from jaxablate import metrics, patching
from jaxablate.model.reference import random_hf_model, tl_from_hf

ATOL = 1e-4
BATCH = 2
SEQ = 4
VOCAB = 53
# 3 layers, 3 heads of d_head 8: every patch family has a layer between the first and last.
CONFIG = {"n_layer": 3, "n_head": 3, "n_embd": 24, "vocab_size": VOCAB, "n_positions": 16}
EVERY = ("block_every", "attn_head_all_pos_every", "attn_head_by_pos_every")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    hf = random_hf_model(tiny_hf_config(**CONFIG), seed=3)
    folder = tmp_path_factory.mktemp("patch-gpt2")
    hf.save_pretrained(folder)
    model = jaxablate.load_gpt2(folder)
    tl = tl_from_hf(hf)
    rng = np.random.default_rng(0)
    clean = rng.integers(0, VOCAB, (BATCH, SEQ)).astype(np.int32)
    corrupted = clean.copy()
    # the corrupted run differs at positions 1 and 2 (as IOI's ABC prompts differ in names)
    corrupted[:, 1:3] = (clean[:, 1:3] + rng.integers(1, VOCAB, (BATCH, 2))) % VOCAB
    correct = rng.integers(0, VOCAB, BATCH)
    wrong = (correct + rng.integers(1, VOCAB, BATCH)) % VOCAB
    with torch.no_grad():
        caches = {"clean": tl.run_with_cache(torch.as_tensor(clean, dtype=torch.int64))[1],
                  "corrupted": tl.run_with_cache(torch.as_tensor(corrupted,
                                                                 dtype=torch.int64))[1]}
    tokens = {"clean": clean, "corrupted": corrupted}
    return model, tl, tokens, caches, correct, wrong


def tl_metric(correct, wrong, example=None):
    """TL's patching metric: logit difference at the last position, the batch mean (or one
    example's value)."""
    rows = torch.arange(len(correct))
    io, s = torch.as_tensor(correct), torch.as_tensor(wrong)

    def metric(logits):
        diff = logits[rows, -1, io] - logits[rows, -1, s]
        return diff.mean() if example is None else diff[example]

    return metric


DIRECTIONS = {"denoising": ("corrupted", "clean"), "noising": ("clean", "corrupted")}
_TL_RESULTS: dict = {}


def tl_result(setup, name, direction):
    """TL's result (numpy float64), computed once per function and direction."""
    key = (name, direction)
    if key not in _TL_RESULTS:
        _, tl, tokens, caches, correct, wrong = setup
        run, source = DIRECTIONS[direction]
        with torch.no_grad():
            out = getattr(tlp, f"get_act_patch_{name}")(
                tl, torch.as_tensor(tokens[run], dtype=torch.int64), caches[source],
                tl_metric(correct, wrong))
        _TL_RESULTS[key] = out.double().numpy()
    return _TL_RESULTS[key]


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
@pytest.mark.parametrize("name", patching.FUNCTIONS)
def test_function_equals_transformer_lens(setup, name, direction):
    model, _, tokens, _, correct, wrong = setup
    run, source = DIRECTIONS[direction]
    ours = getattr(patching, name)(model, tokens[run], tokens[source],
                                   metrics.logit_diff(correct, wrong))
    want = tl_result(setup, name, direction)
    assert isinstance(ours, np.ndarray)
    if name in EVERY and name != "block_every":
        # TL's fifth row patches the attention pattern, which jaxablate does not.
        assert want.shape[0] == 5, want.shape
        assert ours.shape == (4,) + want.shape[1:], (ours.shape, want.shape)
        want = want[:4]
    assert ours.shape == want.shape, (ours.shape, want.shape)
    np.testing.assert_allclose(ours, want, rtol=0, atol=ATOL, err_msg=f"{name} {direction}")
    # Not degenerate: patches differ from one another, by more than the tolerance.
    assert np.ptp(want) > 100 * ATOL, (name, direction, np.ptp(want))


def test_shapes_follow_the_model_and_prompts(setup):
    model, _, tokens, _, correct, wrong = setup
    c = model.cfg
    want = {"resid_pre": (c.n_layers, SEQ), "resid_mid": (c.n_layers, SEQ),
            "attn_out": (c.n_layers, SEQ), "mlp_out": (c.n_layers, SEQ),
            "block_every": (3, c.n_layers, SEQ),
            "attn_head_all_pos_every": (4, c.n_layers, c.n_heads),
            "attn_head_by_pos_every": (4, c.n_layers, SEQ, c.n_heads)}
    for kind in ("out", "q", "k", "v"):
        want[f"attn_head_{kind}_by_pos"] = (c.n_layers, SEQ, c.n_heads)
        want[f"attn_head_{kind}_all_pos"] = (c.n_layers, c.n_heads)
    assert set(want) == set(patching.FUNCTIONS)
    # The shapes are checked against TL's in test_function_equals_transformer_lens; here
    # the names of the axes (layer, pos, head) are pinned to the config's sizes.
    for name in ("resid_mid", "attn_head_q_by_pos", "attn_head_all_pos_every"):
        out = getattr(patching, name)(model, tokens["corrupted"], tokens["clean"],
                                      metrics.logit_diff(correct, wrong))
        assert out.shape == want[name], (name, out.shape)


def test_aliases_are_the_same_functions():
    for name in patching.FUNCTIONS:
        assert getattr(patching, f"get_act_patch_{name}") is getattr(patching, name), name
        assert f"get_act_patch_{name}" in patching.__all__ and name in patching.__all__
    # every TL function jaxablate mirrors exists in TL under that name
    for name in patching.FUNCTIONS:
        assert callable(getattr(tlp, f"get_act_patch_{name}")), name


@pytest.mark.parametrize("name, setter, hook, index", [
    ("resid_pre", tlp.layer_pos_patch_setter, "resid_pre", {"layer": [2], "pos": [1]}),
    ("attn_head_v_by_pos", tlp.layer_pos_head_vector_patch_setter, "v",
     {"layer": [0], "pos": [2], "head": [1]}),
    ("attn_head_k_all_pos", tlp.layer_head_vector_patch_setter, "k",
     {"layer": [1], "head": [2]}),
])
def test_per_example_values(setup, name, setter, hook, index):
    """per_example=True: values [..., batch] whose batch mean is the returned mean, and whose
    example b equals TL's patch with a metric of example b alone (TL's generic patch on a
    one-row index)."""
    model, tl, tokens, caches, correct, wrong = setup
    metric = metrics.logit_diff(correct, wrong)
    mean, values = getattr(patching, name)(model, tokens["corrupted"], tokens["clean"], metric,
                                           per_example=True)
    assert values.shape == mean.shape + (BATCH,)
    np.testing.assert_allclose(values.mean(-1), mean, rtol=0, atol=1e-6)
    plain = getattr(patching, name)(model, tokens["corrupted"], tokens["clean"], metric)
    np.testing.assert_allclose(plain, mean, rtol=0, atol=1e-6)
    where = tuple(v[0] for v in index.values())
    for b in range(BATCH):
        with torch.no_grad():
            want = tlp.generic_activation_patch(
                tl, torch.as_tensor(tokens["corrupted"], dtype=torch.int64), caches["clean"],
                tl_metric(correct, wrong, example=b), setter, hook,
                index_df=pd.DataFrame(index))
        np.testing.assert_allclose(values[where + (b,)], want.double().numpy()[0], rtol=0,
                                   atol=ATOL, err_msg=f"{name} example {b}")
    # examples differ (the per-example axis is not a broadcast of the mean)
    assert np.ptp(values[where]) > 100 * ATOL, values[where]
