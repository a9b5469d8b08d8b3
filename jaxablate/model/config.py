"""GPT-2 configuration, with a checked round trip to the Hugging Face config.

Axis names used in every shape annotation of this package (jaxtyping strings):

    batch    examples (prompts) evaluated together
    n        stacked masks of a sweep (the leading "mask axis")
    layer    transformer blocks, 0 .. n_layers-1 ("layer+1" adds the final residual)
    head     attention heads of a layer
    seq      token positions of one prompt (query axis); "key" is the key axis
    d_model  residual-stream width
    d_head   per-head width (d_model // n_heads)
    neuron   MLP hidden units (d_mlp)
    vocab    token ids
    feature  SAE features
    k        positions read by a metric
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jaxablate.errors import InputError

# HF config attributes that change GPT-2's arithmetic, and the only values we implement.
# Anything else there (names, tokenizer ids, generation settings) does not affect logits.
_REQUIRED_HF_VALUES: dict[str, tuple[Any, ...]] = {
    "activation_function": ("gelu_new",),
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "add_cross_attention": (False,),
    "tie_word_embeddings": (True,),
}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Shape of a GPT-2-family model (frozen, hashable: it is a static field of the model).

    Example:
        >>> cfg = GPT2Config(n_layers=12, n_heads=12, d_model=768, d_mlp=3072,
        ...                  d_vocab=50257, n_ctx=1024)
        >>> cfg.d_head
        64
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("n_layers", "n_heads", "d_model", "d_mlp", "d_vocab", "n_ctx"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"GPT2Config.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise InputError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> "GPT2Config":
        """Build from a Hugging Face GPT-2 config dict (`config.json`), refusing non-GPT-2 math.

        Example:
            >>> GPT2Config.from_hf({"model_type": "gpt2", "n_layer": 2, "n_head": 2,
            ...     "n_embd": 8, "vocab_size": 11, "n_positions": 16}).d_mlp
            32
        """
        model_type = hf.get("model_type")
        if model_type != "gpt2":
            raise InputError(
                f"config model_type is {model_type!r}, not 'gpt2': jaxablate implements the "
                "GPT-2 architecture only (gpt2, gpt2-medium/large/xl, distilgpt2, and repos "
                "with model_type 'gpt2')"
            )
        for key, allowed in _REQUIRED_HF_VALUES.items():
            if key in hf and hf[key] not in allowed:
                raise InputError(
                    f"config {key}={hf[key]!r} is not supported; GPT-2 uses {allowed[0]!r}"
                )
        missing = [k for k in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions")
                   if k not in hf]
        if missing:
            raise InputError(f"config.json lacks GPT-2 fields {missing}")
        d_model = hf["n_embd"]
        return cls(
            n_layers=hf["n_layer"],
            n_heads=hf["n_head"],
            d_model=d_model,
            d_mlp=hf.get("n_inner") or 4 * d_model,
            d_vocab=hf["vocab_size"],
            n_ctx=hf["n_positions"],
            layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        )

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face `GPT2Config` keyword arguments for this shape.

        Example:
            >>> import transformers
            >>> hf = transformers.GPT2Config(**cfg.to_hf())
        """
        return {
            "model_type": "gpt2",
            "n_layer": self.n_layers,
            "n_head": self.n_heads,
            "n_embd": self.d_model,
            "n_inner": self.d_mlp,
            "vocab_size": self.d_vocab,
            "n_positions": self.n_ctx,
            "layer_norm_epsilon": self.layer_norm_eps,
            "activation_function": "gelu_new",
            "tie_word_embeddings": True,
        }
