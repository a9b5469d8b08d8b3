"""The independent references jaxablate is checked against (comparison path: needs torch
and transformer-lens>=3.5,<4, imported only when called).
"""

from __future__ import annotations

import warnings
from typing import Any


def random_hf_model(config: Any, seed: int = 0, noise: float = 0.1) -> Any:
    """A seeded random `transformers.GPT2LMHeadModel` in eval mode whose biases and LayerNorm
    parameters (zero / one after HF's init) get N(0, noise) added, so that a dropped or
    swapped bias changes the numbers and comparisons against it mean something.

    Example:
        >>> hf = random_hf_model(transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32))
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                param.add_(noise * torch.randn(param.shape, generator=generator))
    return model


def tl_from_hf(hf_model: Any) -> Any:
    """A TransformerLens 3.x `HookedTransformer` with `hf_model`'s weights, built offline.

    As REFERENCE.md says: config by hand, then `convert_gpt2_weights` and
    `load_and_process_state_dict` with every folding/centring off (fold_value_biases=False is
    the convention under which zero-ablating z matches jaxablate).
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    c = hf_model.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        n_heads=c.n_head,
        d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd,
        d_vocab=c.vocab_size,
        n_ctx=c.n_positions,
        eps=c.layer_norm_epsilon,
        act_fn="gelu_new",
        normalization_type="LN",
        original_architecture="GPT2LMHeadModel",
        positional_embedding_type="standard",
        attn_only=False,
        default_prepend_bos=False,
        device="cpu",
        dtype=hf_model.dtype,
    )
    with warnings.catch_warnings():
        # TL 3.x announces HookedTransformer's removal in 4.0 (REFERENCE.md: we pin <4). The
        # warning's stacklevel attributes it to this file, so pyproject's
        # "ignore::DeprecationWarning:transformer_lens.*" filter does not catch it.
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated",
                                category=DeprecationWarning)
        model = HookedTransformer(cfg)
    state_dict = convert_gpt2_weights(hf_model, cfg)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return model.eval()
