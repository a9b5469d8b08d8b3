"""Loading: every source gives the same weights, and every malformed source names its problem."""

from __future__ import annotations

import json
import shutil
from fnmatch import fnmatch
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import jaxablate


def assert_same_model(a, b):
    """Same pytree structure (incl. the static config) and bit-identical leaves of equal dtype."""
    assert a.cfg == b.cfg
    leaves_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    assert len(leaves_a) == len(leaves_b) == 16  # wte wpe lnf_w lnf_b + 12 stacked block fields
    for (path, x), y in zip(leaves_a, leaves_b):
        name = jax.tree_util.keystr(path)
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32),
                                      err_msg=name)


@pytest.fixture(scope="module")
def tensors(tiny_dir) -> dict[str, np.ndarray]:
    """The tiny checkpoint's tensors, HF-named ("transformer.h.0.ln_1.weight", ...)."""
    return load_file(tiny_dir / "model.safetensors")


@pytest.fixture(scope="module")
def hf_config(tiny_dir) -> dict:
    return json.loads((tiny_dir / "config.json").read_text())


def write_checkpoint(folder: Path, config: dict, tensors: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              str(folder / "model.safetensors"))
    return folder


# ---------------------------------------------------------------------------------------------
# Every way in gives the same model.


def test_folder_sharded_and_in_memory_loads_are_identical(tiny_hf, tiny_model, tmp_path):
    sharded = tmp_path / "sharded"
    tiny_hf.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert not (sharded / "model.safetensors").exists()
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    assert_same_model(jaxablate.load_gpt2(sharded), tiny_model)
    assert_same_model(jaxablate.load_gpt2(tiny_hf), tiny_model)
    assert_same_model(jaxablate.load_gpt2(str(sharded)), tiny_model)  # str and Path alike


def test_weights_land_where_hf_keeps_them(tiny_hf, tiny_model):
    # The checked mapping, spelled out once more independently: Conv1D weights are [in, out],
    # heads are split out of the last (c_attn) / first (attn.c_proj) axis, nothing transposed.
    cfg, sd = tiny_model.cfg, {k: v.detach().numpy() for k, v in tiny_hf.state_dict().items()}
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.d_head
    assert tiny_model.cfg.d_mlp == 4 * d
    np.testing.assert_array_equal(tiny_model.wte, sd["transformer.wte.weight"])
    np.testing.assert_array_equal(tiny_model.wpe, sd["transformer.wpe.weight"])
    np.testing.assert_array_equal(tiny_model.lnf_b, sd["transformer.ln_f.bias"])
    for layer in range(cfg.n_layers):
        p = f"transformer.h.{layer}."
        b = jax.tree_util.tree_map(lambda a: np.asarray(a[layer]), tiny_model.blocks)
        w_qkv = sd[p + "attn.c_attn.weight"]                     # [d, 3d] = [q | k | v]
        np.testing.assert_array_equal(b.W_qkv[:, 1, 2], w_qkv[:, d + 2 * dh: d + 3 * dh])
        np.testing.assert_array_equal(b.b_qkv[2, 3], sd[p + "attn.c_attn.bias"][2 * d + 3 * dh:])
        np.testing.assert_array_equal(b.W_O[1], sd[p + "attn.c_proj.weight"][dh: 2 * dh])
        np.testing.assert_array_equal(b.W_in, sd[p + "mlp.c_fc.weight"])
        np.testing.assert_array_equal(b.W_out, sd[p + "mlp.c_proj.weight"])
        np.testing.assert_array_equal(b.ln2_w, sd[p + "ln_2.weight"])


def test_bfloat16_load_gives_bfloat16_weights(tiny_dir, tiny_model):
    model = jaxablate.load_gpt2(tiny_dir, dtype="bfloat16")
    leaves = jax.tree_util.tree_leaves(model)
    assert leaves and all(leaf.dtype == jnp.bfloat16 for leaf in leaves)
    # Rounded, not anything else: each weight is the float32 weight cast to bfloat16.
    for x, y in zip(leaves, jax.tree_util.tree_leaves(tiny_model)):
        np.testing.assert_array_equal(np.asarray(x, np.float32),
                                      np.asarray(y.astype(jnp.bfloat16), np.float32))


# ---------------------------------------------------------------------------------------------
# Config errors.


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"model_type": "llama"}, "config model_type is 'llama', not 'gpt2'"),
        ({"activation_function": "relu"},
         "config activation_function='relu' is not supported; GPT-2 uses 'gelu_new'"),
        ({"scale_attn_by_inverse_layer_idx": True},
         "config scale_attn_by_inverse_layer_idx=True is not supported"),
        ({"tie_word_embeddings": False}, "config tie_word_embeddings=False is not supported"),
        ({"n_head": 5}, r"d_model \(32\) must be divisible by n_heads \(5\)"),
    ],
    ids=["llama", "relu", "inverse-layer-idx", "untied", "heads"],
)
def test_config_refused(tmp_path, hf_config, tensors, edit, message):
    folder = write_checkpoint(tmp_path / "m", {**hf_config, **edit}, tensors)
    with pytest.raises(ValueError, match=message):
        jaxablate.load_gpt2(folder)


def test_config_missing_fields(tmp_path, hf_config, tensors):
    config = {k: v for k, v in hf_config.items() if k != "n_positions"}
    folder = write_checkpoint(tmp_path / "m", config, tensors)
    with pytest.raises(ValueError, match=r"config.json lacks GPT-2 fields \['n_positions'\]"):
        jaxablate.load_gpt2(folder)


def test_in_memory_model_of_another_architecture_refused(tiny_hf):
    import copy

    other = copy.copy(tiny_hf)
    other.config = copy.deepcopy(tiny_hf.config)
    other.config.activation_function = "gelu"
    with pytest.raises(ValueError, match="config activation_function='gelu' is not supported"):
        jaxablate.load_gpt2(other)


# ---------------------------------------------------------------------------------------------
# Tensor errors.


def test_missing_tensor_named(tmp_path, hf_config, tensors):
    absent = "transformer.h.1.mlp.c_fc.bias"
    kept = {k: v for k, v in tensors.items() if k != absent}
    folder = write_checkpoint(tmp_path / "m", hf_config, kept)
    with pytest.raises(ValueError,
                       match=r"checkpoint is missing tensors \['h\.1\.mlp\.c_fc\.bias'\]"):
        jaxablate.load_gpt2(folder)


def test_extra_tensor_named(tmp_path, hf_config, tensors):
    extra = dict(tensors, **{"transformer.h.2.ln_1.weight": tensors["transformer.h.1.ln_1.weight"]})
    folder = write_checkpoint(tmp_path / "m", hf_config, extra)
    with pytest.raises(ValueError, match=r"unexpected tensors \['h\.2\.ln_1\.weight'\]; they do "
                                         r"not belong to a 2-layer GPT-2"):
        jaxablate.load_gpt2(folder)


def test_misshaped_tensor_named(tmp_path, hf_config, tensors):
    name = "transformer.h.0.attn.c_attn.weight"  # stored [in, out] = [32, 96]; give [96, 32]
    bad = dict(tensors, **{name: tensors[name].T})
    folder = write_checkpoint(tmp_path / "m", hf_config, bad)
    with pytest.raises(ValueError, match=r"tensor transformer\.h\.0\.attn\.c_attn\.weight has "
                                         r"shape \(96, 32\), but the config needs \(32, 96\)"):
        jaxablate.load_gpt2(folder)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weight_named(tmp_path, hf_config, tensors, value):
    name = "transformer.h.1.mlp.c_proj.weight"
    weight = tensors[name].copy()
    weight[3, 5] = value
    folder = write_checkpoint(tmp_path / "m", hf_config, dict(tensors, **{name: weight}))
    with pytest.raises(ValueError, match=r"tensor transformer\.h\.1\.mlp\.c_proj\.weight "
                                         r"contains NaN or inf"):
        jaxablate.load_gpt2(folder)


def test_untied_lm_head_refused(tmp_path, hf_config, tensors):
    lm_head = tensors["transformer.wte.weight"] + 1.0
    untied = dict(tensors, **{"lm_head.weight": lm_head})
    folder = write_checkpoint(tmp_path / "m", hf_config, untied)
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        jaxablate.load_gpt2(folder)


def test_tied_lm_head_and_attn_bias_buffers_accepted(tmp_path, hf_config, tensors, tiny_model):
    # Older checkpoints carry lm_head (= wte) and the causal-mask buffers; both are not weights.
    more = dict(tensors, **{"lm_head.weight": tensors["transformer.wte.weight"],
                            "transformer.h.0.attn.bias": np.ones((1, 1, 64, 64), np.float32)})
    folder = write_checkpoint(tmp_path / "m", hf_config, more)
    assert_same_model(jaxablate.load_gpt2(folder), tiny_model)


def test_unprefixed_names_accepted(tmp_path, hf_config, tensors, tiny_model):
    # GPT2Model checkpoints (and the original openai-community/gpt2 files) drop "transformer.".
    bare = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    folder = write_checkpoint(tmp_path / "m", hf_config, bare)
    assert_same_model(jaxablate.load_gpt2(folder), tiny_model)


def test_index_naming_absent_shard(tiny_hf, tmp_path):
    folder = tmp_path / "sharded"
    tiny_hf.save_pretrained(folder, max_shard_size="20KB")
    shard = sorted(folder.glob("model-*-of-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ValueError, match=f"names shards that are not in the folder: "
                                         f"\\['{shard.name}'\\]"):
        jaxablate.load_gpt2(folder)


# ---------------------------------------------------------------------------------------------
# Pickle checkpoints.


@pytest.fixture
def pickle_dir(tiny_hf, tiny_dir, tmp_path):
    folder = tmp_path / "bin-only"
    folder.mkdir()
    shutil.copy(tiny_dir / "config.json", folder / "config.json")
    torch.save(tiny_hf.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_pickle_only_folder_refused_with_conversion_hint(pickle_dir):
    with pytest.raises(ValueError, match=r"holds only a pickle checkpoint \(pytorch_model\.bin\)"
                       ) as info:
        jaxablate.load_gpt2(pickle_dir)
    message = str(info.value)
    assert "save_pretrained" in message and "safe_serialization=True" in message
    assert "allow_pickle=True" in message
    assert str(pickle_dir) in message


def test_pickle_only_folder_loads_when_allowed(pickle_dir, tiny_model):
    assert_same_model(jaxablate.load_gpt2(pickle_dir, allow_pickle=True), tiny_model)


# ---------------------------------------------------------------------------------------------
# Argument errors.


@pytest.mark.parametrize("dtype", ["float64", "int8", "float16", "bf16"])
def test_unknown_dtype(tiny_dir, dtype):
    with pytest.raises(ValueError, match=rf"unknown dtype '{dtype}'; choose one of "
                                         r"\['bfloat16', 'float32'\]"):
        jaxablate.load_gpt2(tiny_dir, dtype=dtype)


def test_folder_without_config(tmp_path, tensors):
    folder = tmp_path / "no-config"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="has no config.json"):
        jaxablate.load_gpt2(folder)


def test_folder_without_weights(tmp_path, hf_config):
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(ValueError, match=r"holds no model\.safetensors"):
        jaxablate.load_gpt2(folder)


def test_file_path_is_not_a_folder(tiny_dir):
    with pytest.raises(ValueError, match="is not a folder; pass the folder that holds config.json"):
        jaxablate.load_gpt2(tiny_dir / "config.json")


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("a local-looking path must not reach the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(ValueError, match="is not a folder"):
        jaxablate.load_gpt2(str(tmp_path / "does-not-exist"))
    with pytest.raises(ValueError, match="is not a folder"):
        jaxablate.load_gpt2("./does-not-exist")


def test_wrong_source_type():
    with pytest.raises(TypeError, match="got int"):
        jaxablate.load_gpt2(3)


# ---------------------------------------------------------------------------------------------
# Hub ids (the download is faked: no network in tests).


def test_hub_id_downloads_safetensors_only_and_loads(tiny_dir, tiny_model, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tiny_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert_same_model(jaxablate.load_gpt2("some-org/gpt2-like"), tiny_model)
    assert [repo for repo, _ in calls] == ["some-org/gpt2-like"]
    patterns = calls[0][1].get("allow_patterns")
    assert patterns is not None

    def fetched(name):
        return any(fnmatch(name, pattern) for pattern in patterns)

    wanted = ["config.json", "model.safetensors", "model.safetensors.index.json",
              "model-00001-of-00002.safetensors"]
    assert all(fetched(name) for name in wanted), patterns
    assert not any(fetched(name) for name in ["pytorch_model.bin", "flax_model.msgpack",
                                              "tf_model.h5", "model.onnx"]), patterns


def test_hub_failure_is_one_line_value_error(monkeypatch):
    import huggingface_hub

    from jaxablate.model import hub

    def failing(repo_id, **kwargs):
        raise OSError("not in the cache" if kwargs.get("local_files_only") else "we are offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0: True)
    with pytest.raises(ValueError, match=r"could not fetch 'some-org/gpt2-like' from the "
                                         r"Hugging Face hub \(OSError: we are offline\)") as info:
        jaxablate.load_gpt2("some-org/gpt2-like")
    assert "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize("load", [jaxablate.load_gpt2, jaxablate.load_tokenizer],
                         ids=["model", "tokenizer"])
def test_an_unreachable_hub_fails_at_once_with_the_fix(monkeypatch, load):
    # Not in the cache and no network: one line within seconds (the connection check), not
    # the download client's retries (transformers' tokenizer loader waited 50 s offline).
    import time

    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # unresolvable: refused at once
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    start = time.perf_counter()
    with pytest.raises(jaxablate.InputError, match="is not in the local cache and the Hugging "
                                                   "Face hub cannot be reached .*local folder"):
        load("some-org/not-cached-anywhere")
    assert time.perf_counter() - start < 15
