"""A user-supplied sparse autoencoder whose features can be ablated (one hook point per model).

The SAE reads the residual stream entering a layer (TL `blocks.L.hook_resid_pre`), with the
usual encoder `a = ReLU((x - b_dec) @ W_enc + b_enc)`. Ablating feature f with keep-weight m_f
and replacement r_f removes part of that feature's decoder direction and nothing else:

    x <- x - sum_f (1 - m_f) * (a_f - r_f) * W_dec[f]

so the SAE's reconstruction error stays in the stream and a keep-all mask changes nothing.
"""

from __future__ import annotations

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxablate.errors import InputError

_HOOK_POINT = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")


class SAE(eqx.Module):
    """Sparse-autoencoder weights at `blocks.{layer}.hook_resid_pre`.

    Shapes: W_enc [d_model, feature], b_enc [feature], W_dec [feature, d_model], b_dec [d_model].

    Example:
        >>> sae = SAE.create(W_enc, b_enc, W_dec, b_dec, hook_point="blocks.5.hook_resid_pre")
        >>> model = jaxablate.attach_sae(model, sae)
        >>> mask = Mask(sae_features=jnp.ones(sae.n_features).at[123].set(0.0))
    """

    W_enc: Float[Array, "d_model feature"]
    b_enc: Float[Array, " feature"]
    W_dec: Float[Array, "feature d_model"]
    b_dec: Float[Array, " d_model"]
    layer: int = eqx.field(static=True)

    @classmethod
    def create(cls, W_enc, b_enc, W_dec, b_dec, hook_point: str) -> "SAE":
        """Check shapes and parse `hook_point` ("blocks.L.hook_resid_pre") into a layer."""
        match = _HOOK_POINT.match(hook_point)
        if not match:
            raise InputError(
                f"SAE hook point {hook_point!r} is not supported; use 'blocks.L.hook_resid_pre'"
            )
        arrays = [np.asarray(a, np.float32) for a in (W_enc, b_enc, W_dec, b_dec)]
        W_enc, b_enc, W_dec, b_dec = arrays
        if W_enc.ndim != 2:
            raise InputError(f"SAE W_enc must be [d_model, feature], got shape {W_enc.shape}")
        d_model, n_features = W_enc.shape
        expected = {"b_enc": (n_features,), "W_dec": (n_features, d_model), "b_dec": (d_model,)}
        for name, arr in zip(expected, (b_enc, W_dec, b_dec)):
            if arr.shape != expected[name]:
                raise InputError(
                    f"SAE {name} must have shape {expected[name]} to match W_enc "
                    f"{W_enc.shape}, got {arr.shape}"
                )
        for name, arr in zip(("W_enc", "b_enc", "W_dec", "b_dec"), arrays):
            if not np.isfinite(arr).all():
                raise InputError(f"SAE {name} contains NaN or inf")
        return cls(*(jnp.asarray(a) for a in arrays), layer=int(match.group(1)))

    @property
    def n_features(self) -> int:
        return self.W_enc.shape[1]

    def encode(self, x: Float[Array, "seq d_model"]) -> Float[Array, "seq feature"]:
        """Feature activations of one sequence's residual stream."""
        x = x.astype(jnp.float32)
        return jax.nn.relu((x - self.b_dec[None]) @ self.W_enc + self.b_enc[None])

    def ablate(
        self,
        x: Float[Array, "seq d_model"],
        keep: Float[Array, " feature"],
        replacement: Float[Array, "seq_or_1 feature"],
    ) -> Float[Array, "seq d_model"]:
        """Blend each feature's activation towards its replacement by its keep-weight."""
        acts = self.encode(x)
        return x - ((1.0 - keep)[None] * (acts - replacement)) @ self.W_dec
