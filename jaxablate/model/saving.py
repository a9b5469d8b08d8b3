"""Write a `GPT2` in the standard Hugging Face layout: config.json + model.safetensors.

The inverse of `loading.py`'s checked name map, so what jaxablate trains (the bundled models)
loads in transformers (`GPT2LMHeadModel.from_pretrained(folder)`) and TransformerLens too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxablate.model.gpt2 import GPT2
from jaxablate.model.loading import per_layer_spec, top_spec


def hf_tensors(model: GPT2) -> dict[str, np.ndarray]:
    """The model's weights as float32 numpy arrays under Hugging Face GPT-2 names.

    Example:
        >>> hf_tensors(model)["transformer.h.0.attn.c_attn.weight"].shape   # [d, 3 d]
    """
    cfg = model.cfg
    tensors = {}
    for name, (field, shape) in top_spec(cfg).items():
        tensors[f"transformer.{name}"] = np.asarray(getattr(model, field), np.float32)
    for suffix, (field, shape, _) in per_layer_spec(cfg).items():
        stacked = np.asarray(getattr(model.blocks, field), np.float32)
        for layer in range(cfg.n_layers):
            tensors[f"transformer.h.{layer}.{suffix}"] = stacked[layer].reshape(shape)
    return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def save_gpt2(model: GPT2, folder: str | os.PathLike, *,
              config_extra: dict[str, Any] | None = None) -> Path:
    """Save `model` to `folder` as config.json + model.safetensors (float32, tied unembedding:
    no lm_head tensor, as transformers' save_pretrained writes GPT-2). Returns the folder.

    Example:
        >>> save_gpt2(model, "out/my-gpt2")
        >>> transformers.GPT2LMHeadModel.from_pretrained("out/my-gpt2")   # loads as well
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["GPT2LMHeadModel"], **model.cfg.to_hf()}
    if model.cfg.d_vocab <= 50256:
        # GPT-2's special-token id (50256) would lie outside a smaller vocabulary.
        config.update(bos_token_id=None, eos_token_id=None)
    config.update(config_extra or {})
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(hf_tensors(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
