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
prompts is blended towards its own values (resample ablation). When `per_mask` is true every
field has a leading `mask` axis before that: mask n of a sweep is blended towards its own
values (optimal ablation: each component's own constant, `jaxablate.optimal_replacement`);
only `jaxablate.sweep` takes those, and `.for_mask(n)` is mask n's shared replacement.
Constructors live in `replacements.py`.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
from jaxtyping import Array, Float, Int

from jaxablate.errors import InputError

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

    `kind` records how the values were made ("zero", "mean", "resample", "patch", "optimal",
    "custom") for reports; `per_example` says whether fields carry a leading batch axis,
    `per_mask` whether they carry a leading mask axis (before the batch axis).

    Example:
        >>> r = jaxablate.mean_replacement(model, abc_tokens, per_position=True)
        >>> r.z.shape                    # [layer, seq, head, d_head]
        (12, 15, 12, 64)
    """

    z: Float[Array, "*lead layer seq head d_head"] | None = None
    mlp_out: Float[Array, "*lead layer seq d_model"] | None = None
    post: Float[Array, "*lead layer seq neuron"] | None = None
    resid: Float[Array, "*lead layer seq d_model"] | None = None
    sae_features: Float[Array, "*lead seq feature"] | None = None
    resid_mid: Float[Array, "*lead layer seq d_model"] | None = None
    q: Float[Array, "*lead layer seq head d_head"] | None = None
    k: Float[Array, "*lead layer seq head d_head"] | None = None
    v: Float[Array, "*lead layer seq head d_head"] | None = None
    # resample only: which source prompt each evaluated example took its values from
    source_index: Int[Array, " batch"] | None = None
    kind: str = eqx.field(static=True, default="custom")
    per_example: bool = eqx.field(static=True, default=False)
    per_mask: bool = eqx.field(static=True, default=False)

    def fields(self) -> tuple[str, ...]:
        """Names of the fields that hold values."""
        return tuple(f for f in FIELDS if getattr(self, f) is not None)

    def for_mask(self, n: int) -> "Replacement":
        """Mask n's values of a per-mask replacement: a shared `Replacement` (what
        `jaxablate.forward(model, tokens, masks.mask(n), r.for_mask(n))` takes).

        Example:
            >>> r, record = jaxablate.optimal_replacement(model, tokens, heads)
            >>> r.z.shape, r.for_mask(3).z.shape     # [N, layer, 1, head, d_head], [layer, ...]
        """
        if not self.per_mask:
            raise InputError("for_mask: this replacement is shared by every mask (per_mask is "
                             "false); use it as it is")
        values = {f: getattr(self, f)[n] for f in self.fields()}
        return Replacement(**values, source_index=self.source_index, kind=self.kind,
                           per_example=self.per_example)

    def take(self, idx: Any) -> "Replacement":
        """Masks `idx` of a per-mask replacement (int [n]), still per mask."""
        return Replacement(**{f: getattr(self, f)[idx] for f in self.fields()},
                           source_index=self.source_index, kind=self.kind,
                           per_example=self.per_example, per_mask=True)
