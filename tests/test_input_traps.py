"""Inputs that used to give a silent, misleading or late answer (each of these failed before
its fix): now each is refused before anything compiles with a message that names the
problem, or handled as the user meant; and results stored for one input are never resumed
for another that only looks the same.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxablate as ja
from conftest import nothing_compiles
from jaxablate import masks, metrics
from jaxablate.errors import InputError, InputTypeError
from jaxablate.ablation.metrics import Metric
from jaxablate.store.digest import metric_digest, model_digest

SEQ = 6


@pytest.fixture(scope="module")
def tokens(tiny_model):
    rng = np.random.default_rng(0)
    return rng.integers(0, tiny_model.cfg.d_vocab, (3, SEQ)).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Cache.hook: an index past the last layer was clamped by JAX to the last layer.


def test_cache_hook_refuses_a_layer_the_model_does_not_have(tiny_model, tokens):
    _, cache = ja.run_with_cache(tiny_model, tokens, names=("z", "resid_pre"))
    n = tiny_model.cfg.n_layers
    with pytest.raises(InputError, match=f"layer {n + 3} is out of range .* {n} layers"):
        cache.hook(f"blocks.{n + 3}.attn.hook_z")
    with pytest.raises(InputError, match=f"layer {n} is out of range"):
        cache.hook(f"blocks.{n}.hook_resid_pre")  # used to return the final stream
    # The last layer and the final stream (as TL names it) are there.
    np.testing.assert_array_equal(cache.hook(f"blocks.{n - 1}.attn.hook_z"), cache.z[:, n - 1])
    np.testing.assert_array_equal(cache.hook(f"blocks.{n - 1}.hook_resid_post"),
                                  cache.resid_pre[:, n])


def test_cache_resid_post_equals_transformer_lens(tiny_model, tiny_tl, tokens):
    import torch

    _, cache = ja.run_with_cache(tiny_model, tokens, names=("resid_pre",))
    _, tl_cache = tiny_tl.run_with_cache(torch.as_tensor(tokens, dtype=torch.long))
    for layer in range(tiny_model.cfg.n_layers):
        name = f"blocks.{layer}.hook_resid_post"
        np.testing.assert_allclose(np.asarray(cache.hook(name)), tl_cache[name].numpy(),
                                   rtol=0, atol=1e-4, err_msg=name)


# ---------------------------------------------------------------------------------------------
# Keep-weights, progress, metrics: refused with the right message, before compiling.


def test_nan_keep_weight_is_named_as_nan(tiny_model, tokens):
    cfg = tiny_model.cfg
    mask = ja.Mask(heads=jnp.ones((cfg.n_layers, cfg.n_heads)).at[1, 2].set(jnp.nan))
    with nothing_compiles(), pytest.raises(InputError, match=r"got nan at index \[1, 2\]"):
        ja.forward(tiny_model, tokens, mask, ja.zero_replacement(tiny_model))
    stacked = ja.Mask(mlps=jnp.ones((2, cfg.n_layers)).at[1, 0].set(jnp.inf))
    with nothing_compiles(), pytest.raises(InputError, match=r"got inf at index \[1, 0\]"):
        ja.sweep(tiny_model, tokens, stacked, ja.zero_replacement(tiny_model),
                 metrics.logit_diff(1, 2))


def test_progress_that_is_not_callable_is_refused_before_compiling(tiny_model, tokens):
    ms = masks.single_heads(tiny_model.cfg)
    with nothing_compiles(), pytest.raises(InputTypeError, match="progress: expected True"):
        ja.sweep(tiny_model, tokens, ms, ja.zero_replacement(tiny_model),
                 metrics.logit_diff(1, 2), progress="yes")


@pytest.mark.parametrize("factory", [metrics.loss, metrics.logit_diff, metrics.kl_to_clean])
def test_an_uncalled_metric_factory_is_a_type_error_everywhere(tiny_model, tokens, factory):
    ms = masks.single_heads(tiny_model.cfg)
    calls = {
        "sweep": lambda: ja.sweep(tiny_model, tokens, ms, ja.zero_replacement(tiny_model),
                                  factory),
        "clean_metric": lambda: ja.clean_metric(tiny_model, tokens, factory),
        "planned_chunk_size": lambda: ja.planned_chunk_size(tiny_model, tokens, ms, factory),
        "attribute": lambda: ja.attribute(tiny_model, tokens, ja.zero_replacement(tiny_model),
                                          factory),
        "Study": lambda: ja.Study(tiny_model, tokens=tokens, metric=factory),
    }
    for where, call in calls.items():
        with nothing_compiles(), pytest.raises(InputTypeError,
                                               match=f"metrics.{factory.__name__} itself"):
            call()


def test_a_component_listed_twice_in_one_mask_is_refused(tiny_model):
    cfg = tiny_model.cfg
    with pytest.raises(InputError, match="lists component '0.1' twice"):
        masks.from_components(cfg, [["0.1", "0.1"]])
    with pytest.raises(InputError, match="lists component 'mlp1' twice"):
        masks.from_components(cfg, ["0.0", ["mlp1", "0.2", "mlp1"]])
    # The same component in two different masks is fine.
    assert len(masks.from_components(cfg, ["0.1", ["0.1", "1.0"]])) == 2


# ---------------------------------------------------------------------------------------------
# resample_replacement's key: an int seed is a seed; an array of keys is refused clearly.


def test_resample_takes_an_int_seed_as_that_key(tiny_model, tokens):
    by_seed = ja.resample_replacement(tiny_model, tokens, 7)
    by_key = ja.resample_replacement(tiny_model, tokens, jax.random.key(7))
    np.testing.assert_array_equal(by_seed.source_index, by_key.source_index)
    np.testing.assert_array_equal(by_seed.z, by_key.z)
    legacy = ja.resample_replacement(tiny_model, tokens, jax.random.PRNGKey(7))
    assert legacy.source_index.shape == (len(tokens),)


@pytest.mark.parametrize("keys", [lambda: jax.random.split(jax.random.key(0), 4),
                                  lambda: jax.random.split(jax.random.PRNGKey(0), 4)],
                         ids=["typed", "legacy"])
def test_resample_refuses_an_array_of_keys(tiny_model, tokens, keys):
    with nothing_compiles(), pytest.raises(InputError, match="expected one PRNG key.*per key"):
        ja.resample_replacement(tiny_model, tokens, keys())
    with pytest.raises(InputTypeError, match="PRNG key"):
        ja.resample_replacement(tiny_model, tokens, "seed")


# ---------------------------------------------------------------------------------------------
# The results store's fingerprints.


def _sae(cfg, layer):
    rng = np.random.default_rng(0)
    return ja.SAE.create(rng.normal(size=(cfg.d_model, 5)), np.zeros(5),
                         rng.normal(size=(5, cfg.d_model)), np.zeros(cfg.d_model),
                         f"blocks.{layer}.hook_resid_pre")


def test_the_same_sae_at_another_layer_is_another_model(tiny_model, tokens, tmp_path):
    cfg = tiny_model.cfg
    at0, at1 = ja.attach_sae(tiny_model, _sae(cfg, 0)), ja.attach_sae(tiny_model, _sae(cfg, 1))
    assert model_digest(at0) != model_digest(at1)
    assert model_digest(at0) == model_digest(ja.attach_sae(tiny_model, _sae(cfg, 0)))
    # So a stored sweep of one is never resumed for the other.
    ms = masks.single_features(cfg, 5)
    repl, metric = ja.zero_replacement(at0), metrics.logit_diff(1, 2)
    ja.sweep(at0, tokens, ms, repl, metric, store=tmp_path)
    with pytest.raises(ja.StoreMismatchError, match="model weights"):
        ja.sweep(at1, tokens, ms, ja.zero_replacement(at1), metric, store=tmp_path)


class _Logit(Metric):
    """Two custom metrics of the same class name and data but different computations."""

    name = "custom"

    def prepare(self, tokens, cfg):
        return np.full((len(tokens), 1), tokens.shape[1] - 1, np.int32), {}


def _make(score):
    return type("Custom", (_Logit,), {"score": staticmethod(score)})()


def test_a_custom_metric_is_fingerprinted_by_what_it_computes(tiny_model, tokens, tmp_path):
    first = _make(lambda logits, tokens, clean, data: logits[0, 1])
    second = _make(lambda logits, tokens, clean, data: logits[0, 2])
    same_as_first = _make(lambda logits, tokens, clean, data: logits[0, 1])
    cfg = tiny_model.cfg
    assert metric_digest(first, tokens, cfg) != metric_digest(second, tokens, cfg)
    assert metric_digest(first, tokens, cfg) == metric_digest(same_as_first, tokens, cfg)
    ms = masks.single_heads(cfg)
    repl = ja.zero_replacement(tiny_model)
    ja.sweep(tiny_model, tokens, ms, repl, first, store=tmp_path)
    with pytest.raises(ja.StoreMismatchError, match="metric"):
        ja.sweep(tiny_model, tokens, ms, repl, second, store=tmp_path)


def test_metric_fingerprint_follows_helpers_of_its_module(tiny_model, tokens):
    # A score that calls a helper of its own module: editing the helper changes the digest.
    namespace: dict = {}
    source = ("def helper(x):\n    return x * {k}\n"
              "def score(logits, tokens, clean, data):\n    return helper(logits[0, 1])\n")
    digests = []
    for k in (2.0, 3.0):
        exec(compile(source.format(k=k), "<custom metric>", "exec"), namespace)
        digests.append(metric_digest(_make(namespace["score"]), tokens, tiny_model.cfg))
    assert digests[0] != digests[1]


# ---------------------------------------------------------------------------------------------
# Damaged files: one clear line naming the file, not a traceback from a parser.


def test_damaged_checkpoint_files_are_named(tiny_dir, tmp_path):
    import shutil

    for name, damage in (("model.safetensors", lambda b: b[: len(b) // 2]),
                         ("model.safetensors", lambda b: b"not safetensors at all" * 4),
                         ("config.json", lambda b: b[: len(b) // 2])):
        folder = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tiny_dir, folder)
        path = folder / name
        path.write_bytes(damage(path.read_bytes()))
        with pytest.raises(InputError, match=f"{name}.*damaged: download or save it again"):
            ja.load_gpt2(folder)


def test_unreadable_prompt_files_and_bad_seeds_are_input_errors(tmp_path):
    tokenizer = ja.load_tokenizer("gpt2")
    with pytest.raises(InputError, match="cannot read the prompts file"):
        ja.tasks.from_jsonl(tmp_path / "missing.jsonl", tokenizer)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"prompt": "\xff\xfe"}\n')
    with pytest.raises(InputError, match=r"not UTF-8 text \(byte \d+\)"):
        ja.tasks.from_jsonl(binary, tokenizer)
    with pytest.raises(InputError, match="seed must be an int >= 0"):
        ja.tasks.induction(4, seed=-1)
