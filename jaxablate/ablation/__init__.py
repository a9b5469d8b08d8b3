"""The ablation wing: what an intervention is, described as data.

    components.py    component names as researchers write them ("5.2", "mlp8", "n3.1207")
    mask_set.py      MaskSet: N masks, described sparsely, materialised chunk by chunk
    masks.py         its constructors (single_heads, head_pairs, ...): `ja.masks`
    replacements.py  zero, mean, resample and patch replacement values
    metrics.py       what a sweep measures (logit_diff, loss, ...) and the sign vocabulary
    frames.py        results labelled per mask: `ja.to_frame` (pandas), `ja.by_layer_head`

Built on the model wing (the Mask and Replacement data types live there, beside the model
that blends them).
"""

from jaxablate.ablation import masks, metrics
from jaxablate.ablation.components import Component, parse_component
from jaxablate.ablation.masks import MaskSet
from jaxablate.ablation.replacements import (mean_replacement, patch_replacement,
                                             resample_replacement, zero_replacement)

__all__ = ["Component", "MaskSet", "masks", "mean_replacement", "metrics", "parse_component",
           "patch_replacement", "resample_replacement", "zero_replacement"]
