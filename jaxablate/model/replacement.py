"""The replacement: the values `r` an ablated component is blended towards (see `mask.py`).

One field per ablation point, each with a layer axis (SAE features excepted) and a `seq` axis
that is either the prompt length (per-position means, resample) or 1 (zero, a mean over
positions: broadcast to every position):

    z             [layer, seq|1, head, d_head]   for mask kinds heads, head_positions
    mlp_out       [layer, seq|1, d_model]        for mlps, mlp_positions
    post          [layer, seq|1, neuron]         for neurons
    resid         [layer, seq|1, d_model]        for positions
    sae_features  [seq|1, feature]               for sae_features
    resid_mid     [layer, seq|1, d_model]        for mid_positions
    q, k, v       [layer, seq|1, head, d_head]   for q_positions, k_positions, v_positions

When `per_example` is true every field has a leading `batch` axis: example b of the evaluated
prompts is blended towards its own values (resample ablation). Constructors live in
`replacements.py`.
"""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, Float, Int

# Which replacement field each mask kind reads.
FIELD_FOR_KIND = {
    "heads": "z",
    "head_positions": "z",
    "mlps": "mlp_out",
    "neurons": "post",
    "positions": "resid",
    "sae_features": "sae_features",
    "mid_positions": "resid_mid",
    "mlp_positions": "mlp_out",
    "q_positions": "q",
    "k_positions": "k",
    "v_positions": "v",
}
FIELDS = ("z", "mlp_out", "post", "resid", "sae_features", "resid_mid", "q", "k", "v")


class Replacement(eqx.Module):
    """Replacement values per ablation point (module docstring has the shapes).

    `kind` records how the values were made ("zero", "mean", "resample", "patch", "custom") for
    reports; `per_example` says whether fields carry a leading batch axis.

    Example:
        >>> r = jaxablate.mean_replacement(model, abc_tokens, per_position=True)
        >>> r.z.shape                    # [layer, seq, head, d_head]
        (12, 15, 12, 64)
    """

    z: Float[Array, "*batch layer seq head d_head"] | None = None
    mlp_out: Float[Array, "*batch layer seq d_model"] | None = None
    post: Float[Array, "*batch layer seq neuron"] | None = None
    resid: Float[Array, "*batch layer seq d_model"] | None = None
    sae_features: Float[Array, "*batch seq feature"] | None = None
    resid_mid: Float[Array, "*batch layer seq d_model"] | None = None
    q: Float[Array, "*batch layer seq head d_head"] | None = None
    k: Float[Array, "*batch layer seq head d_head"] | None = None
    v: Float[Array, "*batch layer seq head d_head"] | None = None
    # resample only: which source prompt each evaluated example took its values from
    source_index: Int[Array, " batch"] | None = None
    kind: str = eqx.field(static=True, default="custom")
    per_example: bool = eqx.field(static=True, default=False)

    def fields(self) -> tuple[str, ...]:
        """Names of the fields that hold values."""
        return tuple(f for f in FIELDS if getattr(self, f) is not None)
