"""Bad inputs to the ablation engine fail early, on the host, with a message naming the problem.

Every check raises ValueError (TypeError for a wrong kind of object) before anything is traced
or compiled: `refused(...)` replaces the engine's jitted entry points with functions that fail
the test if they are reached, so the error must come from validation.
"""

from __future__ import annotations

import contextlib
import importlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxablate
from conftest import make_hf_model, tiny_hf_config
from jaxablate import Mask, Replacement, masks, metrics, parse_component

SEQ = 8
BATCH = 3

engine_module = importlib.import_module("jaxablate.engine.sweeping")
forward_module = importlib.import_module("jaxablate.model.batched")


@contextlib.contextmanager
def refused(error, match):
    """pytest.raises(error, match=match), failing if a jitted function is reached first."""

    def forbidden(name):
        def fail(*args, **kwargs):
            raise AssertionError(f"{name} was reached: the input was not validated first")
        return fail

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_module, "_run_chunk", forbidden("engine._run_chunk"))
        mp.setattr(engine_module, "_clean_pass", forbidden("engine._clean_pass"))
        mp.setattr(forward_module, "_forward", forbidden("forward._forward"))
        with pytest.raises(error, match=match):
            yield


# ---------------------------------------------------------------------------------------------
# Fixtures: the tiny model, models of other shapes, prompts of two lengths.


@pytest.fixture(scope="module")
def cfg(tiny_model):
    return tiny_model.cfg


@pytest.fixture(scope="module")
def others():
    """Models of other shapes: 3 layers (same widths), and 2 heads (same depth and width)."""
    return {
        "deeper": jaxablate.load_gpt2(make_hf_model(tiny_hf_config(n_layer=3), seed=1)),
        "fewer_heads": jaxablate.load_gpt2(make_hf_model(tiny_hf_config(n_head=2), seed=2)),
    }


@pytest.fixture(scope="module")
def tokens(cfg):
    return np.random.default_rng(0).integers(0, cfg.d_vocab, (BATCH, SEQ), dtype=np.int32)


@pytest.fixture(scope="module")
def tokens10(cfg):
    return np.random.default_rng(1).integers(0, cfg.d_vocab, (BATCH, 10), dtype=np.int32)


@pytest.fixture(scope="module")
def zero(tiny_model):
    return jaxablate.zero_replacement(tiny_model)


@pytest.fixture(scope="module")
def mean8(tiny_model, tokens):
    return jaxablate.mean_replacement(tiny_model, tokens, per_position=True)


@pytest.fixture(scope="module")
def metric():
    return metrics.logit_diff([1, 2, 3], [4, 5, 6])


def stack(mask):
    return jax.tree_util.tree_map(lambda a: a[None], mask)


# ---------------------------------------------------------------------------------------------
# Built for another model.


@pytest.mark.parametrize("other", ["deeper", "fewer_heads"])
def test_mask_set_for_another_model(tiny_model, others, tokens, zero, metric, other):
    other_cfg = others[other].cfg
    for mask_set in (masks.single_heads(other_cfg), masks.head_pairs(other_cfg),
                     masks.single_mlps(other_cfg)):
        with refused(ValueError, "masks were built for another model"):
            jaxablate.sweep(tiny_model, tokens, mask_set, zero, metric)


@pytest.mark.parametrize("other, shapes", [("deeper", r"\[2, 4\], got \[3, 4\]"),
                                           ("fewer_heads", r"\[2, 4\], got \[2, 2\]")])
def test_mask_for_another_model(tiny_model, others, tokens, zero, metric, other, shapes):
    keep = Mask.keep_all(others[other].cfg)
    with refused(ValueError, rf"mask\.heads: expected \[layer, head\] = {shapes}"):
        jaxablate.forward(tiny_model, tokens, keep, zero)
    with refused(ValueError, r"mask\.heads: expected \[n, layer, head\] = \[1, 2, 4\]"):
        jaxablate.sweep(tiny_model, tokens, stack(keep), zero, metric)


@pytest.mark.parametrize("other", ["deeper", "fewer_heads"])
def test_replacement_for_another_model(tiny_model, others, tokens, metric, other):
    wrong = jaxablate.zero_replacement(others[other])
    with refused(ValueError, r"replacement\.z: expected \[2, 'seq\|1', 4, 8\]"):
        jaxablate.forward(tiny_model, tokens, Mask.keep_all(tiny_model.cfg), wrong)
    with refused(ValueError, r"replacement\.z: expected .*built for another model"):
        jaxablate.sweep(tiny_model, tokens, masks.single_heads(tiny_model.cfg), wrong, metric)


# ---------------------------------------------------------------------------------------------
# Built for another sequence length.


def test_mean_replacement_for_another_sequence_length(tiny_model, cfg, tokens10, mean8,
                                                      metric):
    pattern = r"replacement\.z: expected \[2, 'seq\|1', 4, 8\] with seq=10, got \[2, 8, 4, 8\]"
    with refused(ValueError, pattern):
        jaxablate.sweep(tiny_model, tokens10, masks.single_heads(cfg), mean8, metric)
    with refused(ValueError, pattern):
        jaxablate.forward(tiny_model, tokens10, Mask.keep_all(cfg), mean8)
    with refused(ValueError, r"replacement\.resid: expected .* with seq=10"):
        jaxablate.sweep(tiny_model, tokens10, masks.positions(cfg, 10), mean8, metric)


def test_resample_replacement_for_another_sequence_length(tiny_model, cfg, tokens, tokens10,
                                                          metric):
    resampled = jaxablate.resample_replacement(tiny_model, tokens, jax.random.key(0))
    with refused(ValueError, r"replacement\.mlp_out: expected .* with seq=10"):
        jaxablate.sweep(tiny_model, tokens10, masks.single_mlps(cfg), resampled, metric)


def test_masks_for_another_sequence_length(tiny_model, cfg, tokens10, zero, metric):
    pattern = "masks were built for sequence length 8, the prompts have length 10"
    with refused(ValueError, pattern):
        jaxablate.sweep(tiny_model, tokens10, masks.positions(cfg, SEQ), zero, metric)
    with refused(ValueError, pattern):
        jaxablate.sweep(tiny_model, tokens10, masks.single_heads(cfg, position=2, seq_len=SEQ),
                        zero, metric)
    with refused(ValueError, pattern):
        jaxablate.sweep(tiny_model, tokens10,
                        masks.from_components(cfg, ["resid1@3"], seq_len=SEQ), zero, metric)
    dense = stack(Mask.keep_all(cfg, ("positions",), seq_len=SEQ))
    with refused(ValueError, r"mask\.positions: expected \[n, layer, seq\] = \[1, 2, 10\], "
                             r"got \[1, 2, 8\]"):
        jaxablate.sweep(tiny_model, tokens10, dense, zero, metric)
    unstacked = Mask.keep_all(cfg, ("head_positions",), seq_len=SEQ)
    with refused(ValueError, r"mask\.head_positions: expected \[layer, seq, head\] = "
                             r"\[2, 10, 4\], got \[2, 8, 4\]"):
        jaxablate.forward(tiny_model, tokens10, unstacked, zero)


# ---------------------------------------------------------------------------------------------
# Dense stacked masks of the wrong shape; keep-weights outside [0, 1].


def test_dense_stacked_mask_shapes(tiny_model, cfg, tokens, zero, metric):
    with refused(ValueError, r"mask\.heads: expected \[n, layer, head\] = \[3, 2, 4\], "
                             r"got \[3, 2, 5\]"):
        jaxablate.sweep(tiny_model, tokens, Mask(heads=jnp.ones((3, 2, 5))), zero, metric)
    with refused(ValueError, r"mask\.heads: expected \[n, layer, head\].*got \[2, 4\]"):
        # an unstacked mask where a stacked one is needed
        jaxablate.sweep(tiny_model, tokens, Mask(heads=jnp.ones((2, 4))), zero, metric)
    # Masks edited after construction (eqx.tree_at skips Mask.__init__ and its annotations).
    ragged = eqx.tree_at(lambda m: m.mlps, Mask(heads=jnp.ones((3, 2, 4)), mlps=jnp.ones((3, 2))),
                         jnp.ones((2, 2)))
    with refused(ValueError, r"mask\.mlps: leading mask axis is 2 but other kinds have 3"):
        jaxablate.sweep(tiny_model, tokens, ragged, zero, metric)
    with refused(ValueError, r"mask\.neurons: expected \[layer, neuron\] = \[2, 128\]"):
        jaxablate.forward(tiny_model, tokens, Mask(neurons=jnp.ones((2, 127))), zero)
    integer = eqx.tree_at(lambda m: m.heads, Mask(heads=jnp.ones((2, 4))),
                          jnp.ones((2, 4), jnp.int32))
    with refused(ValueError, r"mask\.heads: keep-weights must be floats, got int32"):
        jaxablate.forward(tiny_model, tokens, integer, zero)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), float("inf")])
def test_keep_weights_outside_unit_interval(tiny_model, cfg, tokens, zero, metric, bad):
    heads = jnp.ones((2, 4), jnp.float32).at[1, 2].set(bad)
    pattern = r"mask\.heads: keep-weights must lie in \[0, 1\]"
    with refused(ValueError, pattern):
        jaxablate.forward(tiny_model, tokens, Mask(heads=heads), zero)
    with refused(ValueError, pattern):
        jaxablate.sweep(tiny_model, tokens, Mask(heads=heads[None]), zero, metric)
    with refused(ValueError, pattern):
        masks.from_stacked(Mask(heads=heads[None]), cfg)
    with refused(ValueError, r"keep-weight must lie in \[0, 1\]"):
        masks.from_components(cfg, ["0.1"], weight=bad)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_constructor_keep_weights_outside_unit_interval(cfg, bad):
    for build in (lambda: masks.single_heads(cfg, weight=bad),
                  lambda: masks.head_pairs(cfg, weight=bad),
                  lambda: masks.single_mlps(cfg, weight=bad),
                  lambda: masks.single_neurons(cfg, layers=[0], weight=bad),
                  lambda: masks.positions(cfg, SEQ, weight=bad),
                  lambda: masks.single_features(cfg, 4, weight=bad)):
        with refused(ValueError, r"keep-weight must lie in \[0, 1\]"):
            build()


# ---------------------------------------------------------------------------------------------
# Component indices and names.


@pytest.mark.parametrize("spec, pattern", [
    ("2.0", r"component '2\.0': layer 2 is out of range \[0, 2\)"),
    ("0.4", r"component '0\.4': head 4 is out of range \[0, 4\)"),
    ("n0.128", r"component 'n0\.128': neuron 128 is out of range \[0, 128\)"),
    ("neuron 2.1", r"component 'n2\.1': layer 2 is out of range \[0, 2\)"),
    ("mlp2", r"component 'mlp2': layer 2 is out of range \[0, 2\)"),
    ("resid0@8", r"component 'resid0@8': position 8 is out of range \[0, 8\)"),
    ("1.1@9", r"component '1\.1@9': position 9 is out of range \[0, 8\)"),
    (("head", -1, 0), r"layer -1 is out of range \[0, 2\)"),
    (("neuron", 0, -3), r"neuron -3 is out of range \[0, 128\)"),
])
def test_out_of_range_component_names(cfg, spec, pattern):
    with refused(ValueError, pattern):
        masks.from_components(cfg, [spec], seq_len=SEQ)


def test_components_needing_seq_len_or_sae(cfg):
    with refused(ValueError, r"component '0\.1@3' needs seq_len"):
        masks.from_components(cfg, ["0.1@3"])
    with refused(ValueError, r"component 'resid1@0' needs seq_len"):
        masks.from_components(cfg, ["resid1@0"])
    with refused(ValueError, r"component 'sae3' needs a model with an SAE"):
        masks.from_components(cfg, ["sae3"])
    with refused(ValueError, r"component 'sae3': SAE feature 3 is out of range \[0, 3\)"):
        masks.from_components(cfg, ["sae3"], n_features=3)


def test_out_of_range_indices_in_constructors(cfg):
    with refused(ValueError, r"'mlp2': layer 2 is out of range \[0, 2\)"):
        masks.single_neurons(cfg, layers=[2])
    with refused(ValueError, r"neuron 128 is out of range \[0, 128\)"):
        masks.single_neurons(cfg, neurons=[0, 128])
    with refused(ValueError, r"'resid2@0': layer 2 is out of range \[0, 2\)"):
        masks.positions(cfg, SEQ, layers=[2])
    with refused(ValueError, r"position 8 needs seq_len with -seq_len <= position < seq_len"):
        masks.single_heads(cfg, position=8, seq_len=SEQ)
    with refused(ValueError, r"position 0 needs seq_len"):
        masks.single_heads(cfg, position=0)
    with refused(ValueError, r"component '3\.0': layer 3 is out of range"):
        masks.head_pairs(cfg, heads=["0.1", "3.0"])
    with refused(ValueError, r"head_pairs takes heads, got 'mlp0'"):
        masks.head_pairs(cfg, heads=["0.1", "mlp0"])
    with refused(ValueError, "head_pairs needs at least two heads"):
        masks.head_pairs(cfg, heads=["0.1", "0.1"])
    with refused(ValueError, r"SAE feature 5 is out of range \[0, 4\)"):
        masks.single_features(cfg, 4, features=[5])
    with refused(ValueError, r"unknown mask kinds \['attn'\]"):
        Mask.keep_all(cfg, ("attn",))
    with refused(ValueError, "Mask.keep_all needs seq_len"):
        Mask.keep_all(cfg, ("positions",))
    with refused(ValueError, "Mask.keep_all needs n_features"):
        Mask.keep_all(cfg, ("sae_features",))


@pytest.mark.parametrize("spec", ["head5", "5.2.1", "mlp", "L5H2", "", "5,2", "n3", "resid4",
                                  ("attn", 1, 2), ("head", 1), ("head", "1", "2"), 5, None])
def test_unknown_component_names(cfg, spec):
    with refused(ValueError, "unknown component"):
        parse_component(spec)
    with refused(ValueError, "unknown component"):
        masks.from_components(cfg, [spec])


# ---------------------------------------------------------------------------------------------
# Empty sets, metrics, chunk size.


def test_empty_mask_set(tiny_model, cfg, tokens, zero, metric):
    with refused(ValueError, "the mask set is empty"):
        masks.from_components(cfg, [])
    with refused(ValueError, r"the mask set is empty \(leading axis 0\)"):
        jaxablate.sweep(tiny_model, tokens, Mask(heads=jnp.ones((0, 2, 4))), zero, metric)
    with refused(ValueError, "concat needs at least one MaskSet"):
        masks.concat([])


@pytest.mark.parametrize("correct, wrong, pattern", [
    ([1, 2, 101], [0, 0, 0], r"logit_diff correct: id outside the vocabulary \[0, 101\)"),
    ([1, 2, 3], [0, -1, 0], r"logit_diff wrong: id outside the vocabulary \[0, 101\)"),
    ([1, 2], [0, 0], r"logit_diff correct: expected ids \[batch\] = \[3\], got shape \(2,\)"),
    ([1, 2, 3], [0, 0, 0, 0], r"logit_diff wrong: expected ids \[batch\] = \[3\]"),
    ([1.0, 2.0, 3.0], [0, 0, 0], r"logit_diff correct: expected integer token ids"),
])
def test_metric_ids(tiny_model, cfg, tokens, zero, correct, wrong, pattern):
    metric = metrics.logit_diff(correct, wrong)
    with refused(ValueError, pattern):
        jaxablate.sweep(tiny_model, tokens, masks.single_heads(cfg), zero, metric)
    with refused(ValueError, pattern):
        jaxablate.clean_metric(tiny_model, tokens, metric)


def test_metric_ids_of_other_metrics(tiny_model, cfg, tokens, zero):
    for metric, pattern in (
            (metrics.accuracy([1, 2, 500]), r"accuracy correct: id outside the vocabulary"),
            (metrics.prob([1, 2]), r"prob correct: expected ids \[batch\] = \[3\]")):
        with refused(ValueError, pattern):
            jaxablate.sweep(tiny_model, tokens, masks.single_mlps(cfg), zero, metric)


@pytest.mark.parametrize("metric, pattern", [
    (metrics.logit_diff([1, 2, 3], [4, 5, 6], position=SEQ),
     r"logit_diff position: position out of range for sequence length 8"),
    (metrics.logit_diff([1, 2, 3], [4, 5, 6], position=-SEQ - 1),
     r"logit_diff position: position out of range for sequence length 8"),
    (metrics.logit_diff([1, 2, 3], [4, 5, 6], position=[[1, 2], [1, 2], [1, 2]]),
     "logit_diff reads one position per example, got 2"),
    (metrics.logit_diff([1, 2, 3], [4, 5, 6], position=[1, 2]),
     r"logit_diff position: expected one position per example \[batch\] = \[3\]"),
    (metrics.kl_to_clean(positions=9), r"kl_to_clean positions: position out of range"),
    (metrics.loss(positions=[SEQ - 1]), r"loss: position 7 \(the last\) has no next token"),
    (metrics.loss(positions=[0, 99]), r"loss positions: position out of range"),
])
def test_metric_positions(tiny_model, cfg, tokens, zero, metric, pattern):
    with refused(ValueError, pattern):
        jaxablate.sweep(tiny_model, tokens, masks.single_heads(cfg), zero, metric)


@pytest.mark.parametrize("chunk_size", [0, -1])
def test_chunk_size(tiny_model, cfg, tokens, zero, metric, chunk_size):
    with refused(ValueError, "chunk_size must be an int >= 1"):
        jaxablate.sweep(tiny_model, tokens, masks.single_heads(cfg), zero, metric,
                        chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [2.0, "4"])
def test_chunk_size_of_wrong_type(tiny_model, cfg, tokens, zero, metric, chunk_size):
    # ValueError from the package's own check; under the test-time jaxtyping checks the
    # annotation `int | None` refuses it first with a TypeError. Both name chunk_size.
    with refused((TypeError, ValueError), "chunk_size"):
        jaxablate.sweep(tiny_model, tokens, masks.single_heads(cfg), zero, metric,
                        chunk_size=chunk_size)


# ---------------------------------------------------------------------------------------------
# Replacements that do not fit the mask or the prompts.


def test_replacement_missing_a_field(tiny_model, cfg, tokens, zero, metric):
    only_z = Replacement(z=zero.z)
    with refused(ValueError, r"replacement has no 'mlp_out' values, needed to ablate mlps"):
        jaxablate.sweep(tiny_model, tokens, masks.single_mlps(cfg), only_z, metric)
    with refused(ValueError, r"replacement has no 'post' values, needed to ablate neurons"):
        jaxablate.sweep(tiny_model, tokens, masks.single_neurons(cfg, neurons=[1]), only_z,
                        metric)
    with refused(ValueError, r"replacement has no 'resid' values, needed to ablate positions"):
        jaxablate.forward(tiny_model, tokens, Mask.keep_all(cfg, ("positions",), seq_len=SEQ),
                          only_z)
    with refused(ValueError, r"replacement has no 'z' values, needed to ablate head_positions"):
        jaxablate.sweep(tiny_model, tokens, masks.single_heads(cfg, position=1, seq_len=SEQ),
                        Replacement(mlp_out=zero.mlp_out), metric)
    with refused(ValueError, "a mask is given but no replacement"):
        jaxablate.sweep(tiny_model, tokens, masks.single_mlps(cfg), None, metric)
    with refused(ValueError, "a mask is given but no replacement"):
        jaxablate.forward(tiny_model, tokens, Mask.keep_all(cfg))


def test_replacement_values_not_finite(tiny_model, cfg, tokens, zero):
    bad = Replacement(z=zero.z.at[0, 0, 0, 0].set(jnp.nan), mlp_out=zero.mlp_out,
                      post=zero.post)
    with refused(ValueError, r"replacement\.z contains NaN or inf"):
        jaxablate.forward(tiny_model, tokens, Mask.keep_all(cfg), bad)


def test_per_example_replacement_with_wrong_batch(tiny_model, cfg, tokens, metric):
    four = np.concatenate([tokens, tokens[:1]])
    resampled = jaxablate.resample_replacement(tiny_model, four, jax.random.key(0))
    pattern = r"per-example values for batch 4, but 3 prompts are evaluated"
    with refused(ValueError, pattern):
        jaxablate.sweep(tiny_model, tokens, masks.single_mlps(cfg), resampled, metric)
    with refused(ValueError, pattern):
        jaxablate.forward(tiny_model, tokens, Mask.keep_all(cfg), resampled)


def test_resample_needs_two_prompts(tiny_model, tokens):
    with refused(ValueError, "needs at least 2 prompts"):
        jaxablate.resample_replacement(tiny_model, tokens[:1], jax.random.key(0))
    with refused(ValueError, "n_examples must be positive"):
        jaxablate.resample_replacement(tiny_model, tokens, jax.random.key(0), n_examples=0)


# ---------------------------------------------------------------------------------------------
# SAE masks without an SAE.


def test_sae_mask_on_a_model_without_sae(tiny_model, cfg, tokens, zero, metric):
    with refused(ValueError, "mask.sae_features is set but the model has no SAE"):
        jaxablate.forward(tiny_model, tokens, Mask(sae_features=jnp.ones(4)), zero)
    with refused(ValueError, "the model has no SAE"):
        jaxablate.sweep(tiny_model, tokens, Mask(sae_features=jnp.ones((2, 4))), zero, metric)
    with refused(ValueError, "the model has no SAE"):
        jaxablate.sweep(tiny_model, tokens, masks.single_features(cfg, 4), zero, metric)


def test_sae_with_wrong_feature_count(tiny_model, cfg, tokens):
    rng = np.random.default_rng(0)
    sae = jaxablate.SAE.create(rng.normal(size=(32, 6)), np.zeros(6), rng.normal(size=(6, 32)),
                               np.zeros(32), hook_point="blocks.0.hook_resid_pre")
    model = jaxablate.attach_sae(tiny_model, sae)
    zero = jaxablate.zero_replacement(model)
    with refused(ValueError, "masks ablate 4 SAE features, the model's SAE has 6"):
        jaxablate.sweep(model, tokens, masks.single_features(cfg, 4), zero,
                        metrics.logit_diff(1, 2))
    with refused(ValueError, r"mask\.sae_features: expected \[feature\] = \[6\], got \[4\]"):
        jaxablate.forward(model, tokens, Mask(sae_features=jnp.ones(4)), zero)


def test_sae_construction_and_attachment():
    rng = np.random.default_rng(0)
    W_enc, W_dec = rng.normal(size=(32, 6)), rng.normal(size=(6, 32))
    with refused(ValueError, "hook point 'blocks.0.hook_mlp_out' is not supported"):
        jaxablate.SAE.create(W_enc, np.zeros(6), W_dec, np.zeros(32),
                             hook_point="blocks.0.hook_mlp_out")
    with refused(ValueError, r"SAE W_dec must have shape \(6, 32\)"):
        jaxablate.SAE.create(W_enc, np.zeros(6), W_dec.T, np.zeros(32),
                             hook_point="blocks.0.hook_resid_pre")
    with refused(ValueError, "SAE b_enc contains NaN or inf"):
        jaxablate.SAE.create(W_enc, np.full(6, np.nan), W_dec, np.zeros(32),
                             hook_point="blocks.0.hook_resid_pre")


def test_sae_attach_checks(tiny_model):
    rng = np.random.default_rng(0)
    deep = jaxablate.SAE.create(rng.normal(size=(32, 6)), np.zeros(6),
                                rng.normal(size=(6, 32)), np.zeros(32),
                                hook_point="blocks.2.hook_resid_pre")
    with refused(ValueError, "SAE hook point layer 2 is outside the model's 2 layers"):
        jaxablate.attach_sae(tiny_model, deep)
    narrow = jaxablate.SAE.create(rng.normal(size=(16, 6)), np.zeros(6),
                                  rng.normal(size=(6, 16)), np.zeros(16),
                                  hook_point="blocks.0.hook_resid_pre")
    with refused(ValueError, "SAE reads d_model=16, the model has d_model=32"):
        jaxablate.attach_sae(tiny_model, narrow)
    with refused(TypeError, wrong_type("sae", "expected a jaxablate.SAE")):
        jaxablate.attach_sae(tiny_model, {"W_enc": 1})


# ---------------------------------------------------------------------------------------------
# Wrong kinds of objects: TypeError.


def wrong_type(parameter, message):
    """The package's own TypeError message, or the one of the test-time jaxtyping/beartype
    check of the annotation (it runs first when the parameter is annotated)."""
    return rf"{message}|typechecking parameter '{parameter}'"


def test_wrong_object_types(tiny_model, tiny_hf, cfg, tokens, zero, metric):
    with refused(TypeError, wrong_type("masks", r"masks: expected a MaskSet .* got list")):
        jaxablate.sweep(tiny_model, tokens, ["0.1"], zero, metric)
    with refused(TypeError, wrong_type("metric", r"metric: expected one of jaxablate\.metrics")):
        jaxablate.sweep(tiny_model, tokens, masks.single_mlps(cfg), zero, lambda x: x)
    with refused(TypeError, wrong_type("replacement", "replacement: expected a jaxablate."
                                                      "Replacement, got dict")):
        jaxablate.sweep(tiny_model, tokens, masks.single_mlps(cfg), {"mlp_out": 0}, metric)
    with refused(TypeError, wrong_type("model", "model: expected a jaxablate GPT2")):
        jaxablate.sweep(tiny_hf, tokens, masks.single_mlps(cfg), zero, metric)
    with refused(TypeError, wrong_type("mask", "mask: expected a jaxablate.Mask, got dict")):
        jaxablate.forward(tiny_model, tokens, {"heads": jnp.ones((2, 4))}, zero)
    with refused(TypeError, wrong_type("model", "model: expected a jaxablate GPT2")):
        jaxablate.clean_metric(tiny_hf, tokens, metric)


def test_bad_tokens(tiny_model, cfg, zero, metric):
    with refused(ValueError, r"tokens: id 101 is outside the vocabulary \[0, 101\)"):
        jaxablate.sweep(tiny_model, np.full((BATCH, SEQ), 101), masks.single_mlps(cfg), zero,
                        metric)
    with refused(ValueError, r"tokens: expected int \[batch, seq\], got shape \(8,\)"):
        jaxablate.sweep(tiny_model, np.zeros(SEQ, np.int32), masks.single_mlps(cfg), zero,
                        metric)
