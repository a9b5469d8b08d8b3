"""`jaxablate.sweep` equals a TransformerLens `run_with_hooks` loop on the same random weights.

The reference is independent of jaxablate: TL runs one hooked forward per ablation, its mean
replacements come from TL's own `run_with_cache` on the reference prompts, and the metrics are
computed here in float64 from TL's logits. TL is built with `fold_value_biases=False` (see
conftest.tl_from_hf), the convention under which zero-ablating a head's z matches jaxablate.

Every ablation is written as a list of component tuples, e.g. [("head", 0, 1), ("mlp", 1)]:
jaxablate reads them through `parse_component`, the TL side through `tl_hooks` below.
"""

from __future__ import annotations

import copy
import itertools

import jax
import numpy as np
import pytest
import torch

import jaxablate
from jaxablate import masks, metrics

# float32 on both sides; REFERENCE.md reports TL ~ HF ~ 1e-7 on logits. 1e-4 is the contract.
ATOL = 1e-4

SEQ = 8
BATCH = 3
N_REFERENCE = 6
NEURON_SAMPLE = (0, 7, 31, 64, 100, 127)
HEAD_POSITION_SAMPLE = (0, 3, SEQ - 1)
# One fixed chunk size: the head and head-pair sets then share one compiled program.
CHUNK = 8

# A mixed set of ablations (every kind, groups across kinds and layers) for the cases that
# need fewer TL runs: the global mean, the kl/loss metrics and resampling.
MIXED = [
    [("head", 0, 1)],
    [("head", 1, 3)],
    [("head", 0, 0), ("head", 1, 2)],
    [("head", 1, 0), ("head", 1, 1)],
    [("mlp", 0)],
    [("mlp", 1)],
    [("neuron", 0, 5)],
    [("neuron", 1, 100), ("neuron", 1, 101)],
    [("resid", 0, 2)],
    [("resid", 1, SEQ - 1)],
    [("head", 1, 2, SEQ - 1)],
    [("head", 0, 3, 0), ("head", 0, 3, 4)],
    [("mlp", 0), ("head", 1, 1), ("neuron", 1, 3), ("resid", 1, 5)],
]


# ---------------------------------------------------------------------------------------------
# The TransformerLens side.


def hook_name(kind: str, layer: int) -> str:
    return {
        "head": f"blocks.{layer}.attn.hook_z",
        "mlp": f"blocks.{layer}.hook_mlp_out",
        "neuron": f"blocks.{layer}.mlp.hook_post",
        "resid": f"blocks.{layer}.hook_resid_pre",
    }[kind]


def tl_hooks(group, replacement):
    """TL forward hooks for one ablation; `replacement(name)` is broadcastable to the hook's
    activation [batch, seq, ...] (zero, mean over a reference set, or resampled)."""
    hooks = []
    for spec in group:
        kind, layer = spec[0], spec[1]
        name = hook_name(kind, layer)

        def hook(act, hook, spec=spec, name=name):
            r = replacement(name).expand_as(act)
            out = act.clone()
            if spec[0] == "head" and len(spec) == 3:  # head h, all positions
                out[:, :, spec[2]] = r[:, :, spec[2]]
            elif spec[0] == "head":  # head h at query position p: ("head", L, h, p)
                out[:, spec[3], spec[2]] = r[:, spec[3], spec[2]]
            elif spec[0] == "mlp":
                out = r.clone()
            elif spec[0] == "neuron":
                out[..., spec[2]] = r[..., spec[2]]
            elif spec[0] == "resid":
                out[:, spec[2]] = r[:, spec[2]]
            return out

        hooks.append((name, hook))
    return hooks


def tl_logits(tl, tokens, hooks=()):
    with torch.no_grad():
        out = tl.run_with_hooks(torch.as_tensor(np.asarray(tokens, np.int64)),
                                fwd_hooks=list(hooks))
    return out.double().numpy()


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def ref_logit_diff(logits, tokens, clean, correct, wrong):
    rows = np.arange(len(tokens))
    return logits[rows, -1, correct] - logits[rows, -1, wrong]


def ref_kl_last(logits, tokens, clean, correct, wrong):
    logp, logq = log_softmax(logits[:, -1]), log_softmax(clean[:, -1])
    return (np.exp(logq) * (logq - logp)).sum(-1)


def ref_loss(logits, tokens, clean, correct, wrong):
    logp = log_softmax(logits[:, :-1])
    picked = np.take_along_axis(logp, np.asarray(tokens)[:, 1:, None].astype(np.int64), -1)
    return -picked[..., 0].mean(-1)


def tl_loop(tl, tokens, groups, replacement, ref_metric, correct, wrong):
    """The metric [N, batch] of one TL `run_with_hooks` per ablation."""
    clean = tl_logits(tl, tokens)
    return np.stack([
        ref_metric(tl_logits(tl, tokens, tl_hooks(g, replacement)), tokens, clean, correct,
                   wrong)
        for g in groups
    ])


# ---------------------------------------------------------------------------------------------
# Fixtures: prompts, reference prompts, and TL's own replacement values.


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """TL's tiny forwards take ~2 ms on one thread; with two threads on 2 cores shared with
    XLA they can spin for ~200 ms each. Restored after this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tiny_model):
    rng = np.random.default_rng(42)
    vocab = tiny_model.cfg.d_vocab
    tokens = rng.integers(0, vocab, (BATCH, SEQ), dtype=np.int32)
    reference = rng.integers(0, vocab, (N_REFERENCE, SEQ), dtype=np.int32)
    correct = rng.integers(0, vocab, BATCH)
    wrong = (correct + rng.integers(1, vocab, BATCH)) % vocab
    return tokens, reference, correct, wrong


def tl_cache(tl, tokens):
    with torch.no_grad():
        _, cache = tl.run_with_cache(torch.as_tensor(np.asarray(tokens, np.int64)))
    return cache


@pytest.fixture(scope="module")
def tl_replacements(tiny_tl, data):
    """name -> TL-side replacement functions, means from TL's cache of the reference set."""
    _, reference, _, _ = data
    cache = tl_cache(tiny_tl, reference)
    return {
        "zero": lambda name: torch.zeros(()),
        # per position: mean over the reference prompts, [1, seq, ...]
        "mean": lambda name: cache[name].mean(0, keepdim=True),
        # over prompts and positions, [1, 1, ...]
        "mean_global": lambda name: cache[name].mean((0, 1), keepdim=True),
    }


@pytest.fixture(scope="module")
def ja_replacements(tiny_model, data):
    _, reference, _, _ = data
    return {
        "zero": jaxablate.zero_replacement(tiny_model),
        "mean": jaxablate.mean_replacement(tiny_model, reference, per_position=True),
        "mean_global": jaxablate.mean_replacement(tiny_model, reference, per_position=False),
    }


def check_against_tl(tiny_model, tiny_tl, data, mask_set, groups, ja_repl, tl_repl,
                     metric="logit_diff"):
    tokens, _, correct, wrong = data
    ja_metric, ref_metric = {
        "logit_diff": (metrics.logit_diff(correct, wrong), ref_logit_diff),
        "kl_to_clean": (metrics.kl_to_clean(), ref_kl_last),
        "loss": (metrics.loss(), ref_loss),
    }[metric]
    assert len(mask_set) == len(groups)
    got = jaxablate.sweep(tiny_model, tokens, mask_set, ja_repl, ja_metric, chunk_size=CHUNK)
    want = tl_loop(tiny_tl, tokens, groups, tl_repl, ref_metric, correct, wrong)
    assert got.shape == want.shape == (len(groups), BATCH)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    return got, want


# ---------------------------------------------------------------------------------------------
# Every single head, MLP, residual position; sampled neurons, heads at positions; head pairs.


def _cases(cfg):
    """kind -> (MaskSet from the public constructors, the same ablations as tuple groups in the
    documented order: layer-major, pairs lexicographic)."""
    L, H = cfg.n_layers, cfg.n_heads
    heads = [("head", layer, h) for layer in range(L) for h in range(H)]
    return {
        "heads": (masks.single_heads(cfg), [[h] for h in heads]),
        "mlps": (masks.single_mlps(cfg), [[("mlp", layer)] for layer in range(L)]),
        "neurons": (masks.single_neurons(cfg, neurons=NEURON_SAMPLE),
                    [[("neuron", layer, i)] for layer in range(L) for i in NEURON_SAMPLE]),
        "positions": (masks.positions(cfg, SEQ),
                      [[("resid", layer, p)] for layer in range(L) for p in range(SEQ)]),
        "head_positions": (
            masks.concat([masks.single_heads(cfg, position=p, seq_len=SEQ)
                          for p in HEAD_POSITION_SAMPLE]),
            [[("head", layer, h, p)] for p in HEAD_POSITION_SAMPLE for layer in range(L)
             for h in range(H)]),
        "head_pairs": (masks.head_pairs(cfg), [list(pair) for pair in
                                               itertools.combinations(heads, 2)]),
    }


KINDS = ["heads", "mlps", "neurons", "positions", "head_positions", "head_pairs"]


@pytest.mark.parametrize("ablation", ["zero", "mean"])
@pytest.mark.parametrize("kind", KINDS)
def test_sweep_matches_tl_loop(tiny_model, tiny_tl, data, ja_replacements, tl_replacements,
                               kind, ablation):
    mask_set, groups = _cases(tiny_model.cfg)[kind]
    got, _ = check_against_tl(tiny_model, tiny_tl, data, mask_set, groups,
                              ja_replacements[ablation], tl_replacements[ablation])
    # The ablations are not no-ops: most change the metric.
    clean = jaxablate.clean_metric(tiny_model, data[0],
                                   metrics.logit_diff(data[2], data[3]))
    assert (np.abs(got - clean[None]).max(axis=1) > 1e-3).mean() > 0.5


def test_head_pair_count_and_order(tiny_model):
    # 8 heads: all C(8, 2) = 28 pairs, lexicographic in layer-major order.
    mask_set, groups = _cases(tiny_model.cfg)["head_pairs"]
    assert len(mask_set) == 28
    assert mask_set.names == [f"{a[1]}.{a[2]}+{b[1]}.{b[2]}" for a, b in groups]


@pytest.mark.parametrize("ablation", ["zero", "mean", "mean_global"])
def test_mixed_set_matches_tl_loop(tiny_model, tiny_tl, data, ja_replacements,
                                   tl_replacements, ablation):
    mask_set = masks.from_components(tiny_model.cfg, MIXED, seq_len=SEQ)
    check_against_tl(tiny_model, tiny_tl, data, mask_set, MIXED, ja_replacements[ablation],
                     tl_replacements[ablation])


# Two-layer ablations sharing their layer-0 part (the sweep may run that part once per parent).
SHARED = ([[("resid", 0, 2), ("head", 1, h)] for h in range(4)]
          + [[("mlp", 0), ("neuron", 1, i)] for i in (3, 7, 100)]
          + [[("head", 0, 1, 5), ("mlp", 1)], [("head", 0, 1, 5), ("resid", 1, 5)]]
          + [[("neuron", 0, 9), ("head", 1, 2, 7)], [("neuron", 0, 9), ("head", 1, 0)]])


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_masks_sharing_a_prefix_match_tl_loop(tiny_model, tiny_tl, data, ja_replacements,
                                              tl_replacements, ablation):
    mask_set = masks.from_components(tiny_model.cfg, SHARED, seq_len=SEQ)
    check_against_tl(tiny_model, tiny_tl, data, mask_set, SHARED, ja_replacements[ablation],
                     tl_replacements[ablation])


@pytest.mark.parametrize("metric", ["kl_to_clean", "loss"])
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_kl_and_loss_match_tl_loop(tiny_model, tiny_tl, data, ja_replacements,
                                   tl_replacements, metric, ablation):
    groups = MIXED + [[("head", 0, 2)], [("mlp", 1)]]
    mask_set = masks.from_components(tiny_model.cfg, groups, seq_len=SEQ)
    got, _ = check_against_tl(tiny_model, tiny_tl, data, mask_set, groups,
                              ja_replacements[ablation], tl_replacements[ablation], metric)
    if metric == "kl_to_clean":
        assert (got >= -1e-6).all() and got.max() > 1e-3


def test_mean_replacement_values_match_tl_cache(tiny_model, tiny_tl, data, ja_replacements):
    # The values themselves, field by field, against TL's cache of the reference prompts.
    _, reference, _, _ = data
    cache = tl_cache(tiny_tl, reference)
    for key, axes in (("mean", (0,)), ("mean_global", (0, 1))):
        r = ja_replacements[key]
        for layer in range(tiny_model.cfg.n_layers):
            for field, name in (("z", "attn.hook_z"), ("mlp_out", "hook_mlp_out"),
                                ("post", "mlp.hook_post"), ("resid", "hook_resid_pre")):
                want = cache[f"blocks.{layer}.{name}"].double().mean(axes).numpy()
                got = np.asarray(getattr(r, field)[layer])
                np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=1e-5,
                                           err_msg=f"{key} {field} layer {layer}")


# ---------------------------------------------------------------------------------------------
# Resample ablation: TL with the same source prompts (`replacement.source_index`).


@pytest.mark.parametrize("source", ["self", "separate"])
def test_resample_matches_tl_with_same_sources(tiny_model, tiny_tl, data, source):
    tokens, reference, correct, wrong = data
    key = jax.random.key(7)
    if source == "self":
        # Each prompt takes its values from another prompt of the evaluated batch.
        repl = jaxablate.resample_replacement(tiny_model, tokens, key)
        source_tokens = tokens
    else:
        # A separate source set: each evaluated prompt draws one of the reference prompts.
        repl = jaxablate.resample_replacement(tiny_model, reference, key, n_examples=BATCH)
        source_tokens = reference
    index = np.array(repl.source_index)
    assert index.shape == (BATCH,)
    if source == "self":
        assert (index != np.arange(BATCH)).all()
    cache = tl_cache(tiny_tl, source_tokens)
    tl_repl = lambda name: cache[name][torch.as_tensor(index, dtype=torch.long)]  # noqa: E731
    groups = MIXED + [[("head", layer, h)] for layer in range(2) for h in range(4)]
    mask_set = masks.from_components(tiny_model.cfg, groups, seq_len=SEQ)
    check_against_tl(tiny_model, tiny_tl, data, mask_set, groups, repl, tl_repl)


def test_zero_ablation_differs_from_tl_default_value_bias_folding(tiny_model, tiny_hf, tiny_tl,
                                                                  data):
    # Documented convention: with TL's default fold_value_biases=True, zeroing z leaves the
    # value-bias contribution in (folded into b_O), so the numbers differ. This guards that
    # the agreement above is not vacuous (the tiny model has non-zero value biases).
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    tokens, _, correct, wrong = data
    folded = copy.deepcopy(tiny_tl)
    folded.load_and_process_state_dict(convert_gpt2_weights(tiny_hf, tiny_tl.cfg),
                                       fold_ln=False, center_writing_weights=False,
                                       center_unembed=False, fold_value_biases=True)
    folded.eval()
    groups = [[("head", 0, 1)]]
    mask_set = masks.from_components(tiny_model.cfg, groups)
    got = jaxablate.sweep(tiny_model, tokens, mask_set, jaxablate.zero_replacement(tiny_model),
                          metrics.logit_diff(correct, wrong), chunk_size=CHUNK)
    zero = lambda name: torch.zeros(())  # noqa: E731
    want = tl_loop(tiny_tl, tokens, groups, zero, ref_logit_diff, correct, wrong)
    other = tl_loop(folded, tokens, groups, zero, ref_logit_diff, correct, wrong)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    # Clean logits agree under both conventions; the zero ablation does not.
    np.testing.assert_allclose(tl_logits(folded, tokens), tl_logits(tiny_tl, tokens), atol=1e-5)
    assert np.abs(got - other).max() > 1e-3
