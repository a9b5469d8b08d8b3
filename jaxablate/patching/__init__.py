"""The patching wing: activation patching and path patching in the vectorised engine.

    activation.py  `jaxablate.patching.resid_pre`, `attn_head_out_by_pos`, ... : TL's
                   `transformer_lens.patching` function for function (also under TL's
                   `get_act_patch_*` names), each one sweep of `patch_replacement` values
    paths.py       `path_patch` (Wang et al. 2022): a sender's effect through chosen
                   receivers only, every other head frozen

Example:
    >>> from jaxablate import patching
    >>> table = patching.attn_head_out_by_pos(model, corrupted, clean, metric)  # [L, pos, H]
"""

from jaxablate.patching import activation
from jaxablate.patching.activation import (FUNCTIONS, attn_head_all_pos_every,
                                           attn_head_by_pos_every, attn_head_k_all_pos,
                                           attn_head_k_by_pos, attn_head_out_all_pos,
                                           attn_head_out_by_pos, attn_head_q_all_pos,
                                           attn_head_q_by_pos, attn_head_v_all_pos,
                                           attn_head_v_by_pos, attn_out, block_every, mlp_out,
                                           resid_mid, resid_pre)
from jaxablate.patching.paths import path_patch

# TransformerLens's names, for code ported from `transformer_lens.patching`.
for _name in FUNCTIONS:
    globals()[f"get_act_patch_{_name}"] = getattr(activation, _name)
del _name

__all__ = list(FUNCTIONS) + [f"get_act_patch_{n}" for n in FUNCTIONS] + ["path_patch"]
