"""Resuming the forward pass from a cached residual stream: how the sweep skips the work
every mask shares (the model itself, `jaxablate.model.gpt2`, knows nothing of this).

    resume(model, x, start, mask, replacement, positions)     layers start.. -> logits
    reattend(model, layer, resid_mid, z, mask, replacement)   reuse a layer's clean attention
    trajectory(model, resid, start, mask, replacement)        the stream entering every layer
    resume_differentiable(model, x, start, mask, replacement, positions)   `resume`, with a
                                                              reverse-mode derivative

The sweep runs the clean forward once, caching the stream entering every layer (and each
layer's unablated attention). A mask that first touches layer L resumes from the cached
stream there; when it leaves that stream and the attention's inputs alone (no positions, SAE
features, q, k or v), layer L's clean attention is reused too and only its ablated heads' z
change, by a delta through W_O.
A mask touching several layers resumes from a shared "parent" trajectory (the mask restricted
to its earlier layers) at its last layer. Every path gives the numbers of a plain forward
(tests/test_engine_paths.py checks each against a loop of `jaxablate.forward`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxablate.model.gpt2 import GPT2
from jaxablate.model.mask import REATTEND_BREAKING, Mask
from jaxablate.model.replacement import Replacement


def reattend(
    model: GPT2,
    layer: Int[Array, ""],
    resid_mid: Float[Array, "seq d_model"],
    z: Float[Array, "seq head d_head"],
    mask: Mask,
    replacement: Replacement,
    queries: Int[Array, " k"] | None = None,
) -> Float[Array, "rows d_model"]:
    """The stream after attention, given the unablated `resid_mid` and `z` of this layer
    (computed from the same incoming stream): only points [2] and [m] change, [2] by a delta
    through W_O. Skips the layer's QKV, scores and softmax; with a keep-all mask the delta is
    exactly zero and `resid_mid` comes back bit for bit. (A mask changing q, k or v cannot
    take this path: the plan turns attention reuse off for those kinds.)"""
    if queries is not None:
        z, resid_mid = z[queries], resid_mid[queries]
    delta = model.ablate_z(layer, z, mask, replacement, queries) - z
    mid = resid_mid + model.matmul("she,hed->sd", delta, model.layer(layer).W_O)
    return model.ablate_mid(layer, mid, mask, replacement, queries)


def resume(
    model: GPT2,
    x: Float[Array, "rows d_model"],
    start: Int[Array, ""],
    mask: Mask,
    replacement: Replacement,
    positions: Int[Array, " k"],
    columns: Int[Array, " n"] | None = None,
    attended: tuple[Float[Array, "seq d_model"], Float[Array, "seq head d_head"]] | None
    = None,
    prefix: tuple[Float[Array, "layer r head d_head"], Float[Array, "layer r head d_head"]]
    | None = None,
    clean: Float[Array, "k n"] | None = None,
) -> Float[Array, "k n"]:
    """Run layers `start .. n_layers-1` from the residual stream entering `start`; logits
    at `positions`, over the vocabulary or over the ids `columns` (see `unembed`).

    `start` is data (a traced int), so one compiled program serves every start layer: the
    sweep runs the clean prefix once and resumes each mask from its first touched layer.
    `attended`: the unablated (resid_mid, z) of layer `start` from the same stream `x`;
    then layer `start` reuses them (`reattend`) instead of recomputing its attention.
    That needs a mask that leaves the layer's attention and the stream entering `start`
    alone (no kind of `REATTEND_BREAKING`: positions, SAE features, q, k, v).

    Row skipping: with `prefix`, the clean keys and values (k, v) of positions 0 .. r-1 at
    every layer, x holds positions r .. seq-1 only and no layer recomputes the first r
    rows. That needs a mask that changes nothing before position r (a causal model then
    leaves those rows clean at every layer); logits read before r are `clean`'s (the
    clean logits at `positions`). Forward-only (a loop with a data-dependent trip count has
    no reverse-mode derivative).
    """
    r = 0 if prefix is None else prefix[0].shape[1]
    seq = r + x.shape[0]
    held = None if r == 0 else jnp.arange(r, seq)  # the positions x holds
    read_at = positions if r == 0 else jnp.maximum(positions, r)

    def kv(layer):
        return None if prefix is None else (prefix[0][layer], prefix[1][layer])

    def step(layer, x):
        x = model.block(layer, x, mask, replacement, held, kv(layer))[0]
        return model.enter(layer + 1, x, mask, replacement, held)

    last = jnp.int32(model.cfg.n_layers - 1)

    def last_layer(x):
        return model.block(last, x, mask, replacement, read_at, kv(last))[0]

    def untouched(x):  # start past the last layer: a clean mask
        return x[read_at - r]

    def logits(read):
        out = model.unembed(read, columns)
        return out if r == 0 else jnp.where((positions < r)[:, None], clean, out)

    if attended is None:
        x = model.enter(start, x, mask, replacement, held)
        x = jax.lax.fori_loop(start, last, step, x)
        return logits(jax.lax.cond(start <= last, last_layer, untouched, x))

    # The plan never asks for this (attention reuse is off for these kinds): a bug, not input.
    assert all(getattr(mask, kind) is None for kind in REATTEND_BREAKING), (
        f"resume(attended=...) needs a mask without {REATTEND_BREAKING}: they change the "
        "layer's attention or the stream entering it")
    resid_mid, z = attended

    def first_then_rest(x):  # start < last
        mid = reattend(model, start, resid_mid, z, mask, replacement, held)
        x = model.feed_forward(start, mid, mask, replacement, held)[0]
        return last_layer(jax.lax.fori_loop(start + 1, last, step, x))

    def only_last(x):  # start == last: the read rows only
        mid = reattend(model, last, resid_mid, z, mask, replacement, queries=read_at)
        return model.feed_forward(last, mid, mask, replacement, queries=read_at)[0]

    case = jnp.where(start < last, 0, jnp.where(start == last, 1, 2))
    return logits(jax.lax.switch(case, [first_then_rest, only_last, untouched], x))


def trajectory(
    model: GPT2,
    resid: Float[Array, "layer_plus_1 seq d_model"],
    start: Int[Array, ""],
    mask: Mask,
    replacement: Replacement,
    attended: tuple[Float[Array, "layer seq d_model"],
                    Float[Array, "layer seq head d_head"]] | None = None,
) -> Any:
    """The residual stream entering every layer (and the final one) under `mask`, given
    the clean stream `resid`: rows up to `start` are kept, later rows are recomputed.
    With `attended` (the clean resid_mid and z of every layer), returns
    `(resid, (resid_mid, z))` with those recomputed from `start` on as well: each layer's
    resid_mid and z *before* this mask's blend at point [2], from the stream that enters
    the layer under this mask (what `resume(attended=...)` expects).

    The sweep runs a shared "parent" ablation (head i of the pair i, j) once this way,
    then resumes each child from the parent's stream at the child's last touched layer.
    """

    def step(layer, carry):
        resid, mid, z = carry
        x = model.enter(layer, resid[layer], mask, replacement)
        if mid is None:
            x = model.block(layer, x, mask, replacement)[0]
        else:
            # Keep this layer's *unablated* attention, which is what `resume(attended=)`
            # takes: a child resuming here blends its own keep-weights into it, once. (The
            # parent's blended z would be blended twice: m^2 h + (1 - m^2) r.)
            clean_mid, clean_z, _, _ = model.attend(layer, x, Mask(), replacement)
            mid, z = mid.at[layer].set(clean_mid), z.at[layer].set(clean_z)
            x = reattend(model, layer, clean_mid, clean_z, mask, replacement)
            x = model.feed_forward(layer, x, mask, replacement)[0]
        return resid.at[layer + 1].set(x), mid, z

    mid, z = (None, None) if attended is None else attended
    resid, mid, z = jax.lax.fori_loop(start, model.cfg.n_layers, step, (resid, mid, z))
    return resid if attended is None else (resid, (mid, z))


def resume_differentiable(
    model: GPT2,
    x: Float[Array, "seq d_model"],
    start: Int[Array, ""],
    mask: Mask,
    replacement: Replacement,
    positions: Int[Array, " k"],
    columns: Int[Array, " n"] | None = None,
) -> Float[Array, "k n"]:
    """`resume` (without attention reuse or row skipping) that reverse-mode differentiates:
    logits at `positions` from the stream `x` entering layer `start`, as a function of the
    mask and the replacement values (optimal ablation descends on the latter).

    `resume`'s loop runs from `start`, a trip count that is data, which has no reverse-mode
    derivative; here a scan over every layer passes the stream through the layers before
    `start` instead. Under `jax.vmap` over masks that share `start` (a chunk resumes at its
    earliest mask's layer) the condition is not batched, so it stays a branch and a skipped
    layer costs nothing.

    Example:
        >>> grad = jax.grad(lambda r: resume_differentiable(model, x, start, mask, r,
        ...                                                 positions).sum())(replacement)
    """
    last = model.cfg.n_layers - 1

    def step(x, layer):
        def run(x):
            x = model.block(layer, x, mask, replacement)[0]
            return model.enter(layer + 1, x, mask, replacement)

        return jax.lax.cond(layer >= start, run, lambda x: x, x), None

    x = model.enter(start, x, mask, replacement)
    x, _ = jax.lax.scan(step, x, jnp.arange(last))
    read = jax.lax.cond(
        start <= last,
        lambda x: model.block(jnp.int32(last), x, mask, replacement, positions)[0],
        lambda x: x[positions],  # start past the last layer: a mask that changes nothing
        x)
    return model.unembed(read, columns)
