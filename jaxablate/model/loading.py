"""Load GPT-2 weights (hub id, local folder, or an in-memory HF model) through one checked map.

Weights are read with safetensors into numpy: no torch on this path. Hugging Face's GPT-2 uses
`Conv1D` layers whose weights are stored [in, out], which is the orientation used here, so no
weight is transposed (c_attn, attn.c_proj, c_fc, mlp.c_proj); only reshapes split heads.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxablate.errors import InputError, InputTypeError
from jaxablate.model.bundled import bundled_path
from jaxablate.model.config import GPT2Config
from jaxablate.model.gpt2 import GPT2, Blocks
from jaxablate.model.hub import require_hub

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Non-parameter buffers older GPT-2 checkpoints carry (the causal mask); never weights.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")

_PICKLE_MESSAGE = (
    "{where} holds only a pickle checkpoint (pytorch_model.bin). Unpickling can run arbitrary "
    "code, so jaxablate refuses it by default. Convert it once to safetensors with\n"
    "  python -c \"from transformers import GPT2LMHeadModel as M; "
    "M.from_pretrained('{where}').save_pretrained('{where}', safe_serialization=True)\"\n"
    "or pass allow_pickle=True (needs torch; only for checkpoints you trust)."
)


def per_layer_spec(cfg: GPT2Config) -> dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """HF name suffix -> (our Blocks field, shape in the checkpoint, shape we store)."""
    d, dm, h, dh = cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.d_head
    return {
        "ln_1.weight": ("ln1_w", (d,), (d,)),
        "ln_1.bias": ("ln1_b", (d,), (d,)),
        "attn.c_attn.weight": ("W_qkv", (d, 3 * d), (d, 3, h, dh)),
        "attn.c_attn.bias": ("b_qkv", (3 * d,), (3, h, dh)),
        "attn.c_proj.weight": ("W_O", (d, d), (h, dh, d)),
        "attn.c_proj.bias": ("b_O", (d,), (d,)),
        "ln_2.weight": ("ln2_w", (d,), (d,)),
        "ln_2.bias": ("ln2_b", (d,), (d,)),
        "mlp.c_fc.weight": ("W_in", (d, dm), (d, dm)),
        "mlp.c_fc.bias": ("b_in", (dm,), (dm,)),
        "mlp.c_proj.weight": ("W_out", (dm, d), (dm, d)),
        "mlp.c_proj.bias": ("b_out", (d,), (d,)),
    }


def top_spec(cfg: GPT2Config) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {
        "wte.weight": ("wte", (cfg.d_vocab, cfg.d_model)),
        "wpe.weight": ("wpe", (cfg.n_ctx, cfg.d_model)),
        "ln_f.weight": ("lnf_w", (cfg.d_model,)),
        "ln_f.bias": ("lnf_b", (cfg.d_model,)),
    }


def build_model(
    cfg: GPT2Config, names: list[str], get: Callable[[str], np.ndarray], dtype: str = "float32"
) -> GPT2:
    """Assemble a `GPT2` from HF-named tensors, refusing missing, extra or mis-shaped ones.

    `names` lists the checkpoint's tensor names (with or without the "transformer." prefix);
    `get(name)` returns one as a numpy array.
    """
    prefix = "transformer."
    canonical = {n[len(prefix):] if n.startswith(prefix) else n: n for n in names}
    per_layer, top = per_layer_spec(cfg), top_spec(cfg)
    expected = set(top)
    expected |= {f"h.{i}.{s}" for i in range(cfg.n_layers) for s in per_layer}
    ignorable = {n for n in canonical if n.endswith(_IGNORED_SUFFIXES)} | {"lm_head.weight"}
    missing = sorted(expected - set(canonical))
    extra = sorted(set(canonical) - expected - ignorable)
    if missing:
        raise InputError(f"checkpoint is missing tensors {missing[:8]}"
                         + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    if extra:
        raise InputError(f"checkpoint has unexpected tensors {extra[:8]}"
                         + (f" and {len(extra) - 8} more" if len(extra) > 8 else "")
                         + f"; they do not belong to a {cfg.n_layers}-layer GPT-2")

    def read(name: str, shape: tuple[int, ...]) -> np.ndarray:
        array = np.asarray(get(canonical[name]))
        if array.shape != shape:
            raise InputError(
                f"tensor {canonical[name]} has shape {array.shape}, but the config needs {shape}"
            )
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise InputError(f"tensor {canonical[name]} contains NaN or inf; the checkpoint "
                             "is damaged: download or convert it again")
        return array

    target = DTYPES[dtype]
    fields: dict[str, Any] = {}
    for name, (field, shape) in top.items():
        fields[field] = jnp.asarray(read(name, shape), target)
    stacked = {}
    for suffix, (field, shape, ours) in per_layer.items():
        layers = [read(f"h.{i}.{suffix}", shape).reshape(ours) for i in range(cfg.n_layers)]
        stacked[field] = jnp.asarray(np.stack(layers), target)
    if "lm_head.weight" in canonical:
        lm_head = np.asarray(get(canonical["lm_head.weight"]), np.float32)
        if lm_head.shape != (cfg.d_vocab, cfg.d_model) or not np.array_equal(
            lm_head, read("wte.weight", (cfg.d_vocab, cfg.d_model))
        ):
            raise InputError("lm_head.weight differs from wte.weight: GPT-2 ties the unembedding")
    return GPT2(blocks=Blocks(**stacked), cfg=cfg, **fields)


def _check_dtype(dtype: Any) -> str:
    name = getattr(dtype, "__name__", None) or getattr(dtype, "name", None) or dtype
    name = str(name)
    if name not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return name


def _read_config(folder: Path) -> GPT2Config:
    path = folder / "config.json"
    if not path.is_file():
        raise InputError(f"{folder} has no config.json; a GPT-2 folder needs config.json and "
                         "model.safetensors (as written by transformers' save_pretrained)")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path} is not valid JSON ({error}); the checkpoint is damaged: "
                         "download or save it again") from None
    return GPT2Config.from_hf(hf)


def _safetensors_files(folder: Path) -> dict[str, Path] | None:
    """Tensor name -> file, for a single or a sharded safetensors checkpoint; None if absent."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
            raise InputError(f"{index} is not a valid index ({error}); the checkpoint is "
                             "damaged: download or save it again") from None
        if not isinstance(weight_map, dict):
            raise InputError(f"{index} has no weight_map")
        files = {name: folder / shard for name, shard in weight_map.items()}
        absent = sorted({str(p.name) for p in files.values() if not p.is_file()})
        if absent:
            raise InputError(f"{index} names shards that are not in the folder: {absent}")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        with _damaged_as_input_error(single):
            with safe_open(single, framework="numpy") as f:
                return {name: single for name in f.keys()}
    return None


@contextlib.contextmanager
def _damaged_as_input_error(path: Path) -> Iterator[None]:
    """A safetensors file that cannot be read (truncated, corrupted, not safetensors) is a
    damaged checkpoint, named in one line, not a traceback from inside safetensors."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError) as error:
        raise InputError(f"{path} cannot be read as safetensors ({' '.join(str(error).split())}"
                         "); the checkpoint is damaged: download or save it again") from None


def load_folder(folder: str | os.PathLike, dtype: str = "float32",
                allow_pickle: bool = False) -> GPT2:
    """Load from a folder holding config.json and (sharded) safetensors."""
    from safetensors import safe_open

    folder = Path(folder)
    cfg = _read_config(folder)
    files = _safetensors_files(folder)
    if files is None:
        if (folder / "pytorch_model.bin").is_file():
            if not allow_pickle:
                raise InputError(_PICKLE_MESSAGE.format(where=folder))
            import torch  # only on this explicit, opt-in path

            state = torch.load(folder / "pytorch_model.bin", map_location="cpu",
                               weights_only=True)
            tensors = {k: v.detach().float().numpy() for k, v in state.items()}
            return build_model(cfg, list(tensors), tensors.__getitem__, dtype)
        raise InputError(f"{folder} holds no model.safetensors (nor a sharded index)")

    handles: dict[Path, Any] = {}

    def get(name: str) -> np.ndarray:
        path = files[name]
        with _damaged_as_input_error(path):
            if path not in handles:
                handles[path] = safe_open(path, framework="numpy")
            return handles[path].get_tensor(name)

    return build_model(cfg, list(files), get, dtype)


def load_hf_model(hf_model: Any, dtype: str = "float32") -> GPT2:
    """Load from an in-memory `transformers.GPT2LMHeadModel` (torch is already imported)."""
    hf_config = hf_model.config.to_dict()
    cfg = GPT2Config.from_hf(hf_config)
    state = {k: v.detach().float().cpu().numpy() for k, v in hf_model.state_dict().items()}
    return build_model(cfg, list(state), state.__getitem__, dtype)


def load_gpt2(source: Any, dtype: Any = "float32", *, allow_pickle: bool = False) -> GPT2:
    """Load a GPT-2-family model as a jaxablate `GPT2`.

    `source` is a hub id ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2",
    "openai-community/gpt2", any repo with model_type "gpt2"), a local folder with
    config.json and model.safetensors (or a sharded index), an in-memory
    `transformers.GPT2LMHeadModel`, or "bundled:NAME" for a model shipped with jaxablate.
    dtype: "float32" (the reference) or "bfloat16".

    Example:
        >>> model = load_gpt2("gpt2")                       # downloads safetensors only
        >>> model.cfg.n_layers, model.cfg.d_head
        (12, 64)
    """
    dtype = _check_dtype(dtype)
    if hasattr(source, "state_dict") and hasattr(source, "config"):
        return load_hf_model(source, dtype)
    if not isinstance(source, (str, os.PathLike)):
        raise InputTypeError(
            f"load_gpt2 takes a hub id, a folder or a transformers GPT2LMHeadModel, "
            f"got {type(source).__name__}"
        )
    text = os.fspath(source)
    if text.startswith("bundled:"):
        return load_folder(bundled_path(text[len("bundled:"):]), dtype)
    if os.path.isdir(text):
        return load_folder(text, dtype, allow_pickle)
    if os.path.exists(text) or text.startswith((".", "/", "~")):
        raise InputError(f"{text!r} is not a folder; pass the folder that holds config.json")
    return load_folder(_download(text), dtype, allow_pickle)


def _download(repo_id: str) -> str:
    """Fetch config.json and safetensors (never pickles) of a hub repo; returns the folder."""
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "*.safetensors", "model.safetensors.index.json"]
    try:  # the local cache first: no network needed once downloaded
        return snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except Exception:
        require_hub(f"model {repo_id!r}")
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as error:  # network, auth, unknown repo: one clear line
        raise InputError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(error).__name__}: "
            f"{error}); pass a local folder with config.json and model.safetensors instead"
        ) from error


def model_from_arrays(cfg: GPT2Config, tensors: Mapping[str, np.ndarray],
                      dtype: str = "float32") -> GPT2:
    """Build a `GPT2` from a dict of HF-named numpy tensors (tests, conversions)."""
    return build_model(cfg, list(tensors), lambda n: tensors[n], _check_dtype(dtype))
