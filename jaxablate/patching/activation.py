"""Activation patching, function for function as TransformerLens's `transformer_lens.patching`,
each one vectorised sweep instead of a Python loop of hooked forward passes.

    resid_pre(model, tokens, source_tokens, metric)          [layer, pos]
    attn_head_out_by_pos(model, tokens, source_tokens, m)     [layer, pos, head]
    block_every(model, tokens, source_tokens, m)              [3, layer, pos]

`tokens` is the run patched into, `source_tokens` the run the values come from (example i
from example i): corrupted tokens with clean sources is "denoising", clean tokens with
corrupted sources "noising". TL's `get_act_patch_resid_pre(model, corrupted_tokens,
clean_cache, metric)` is `resid_pre(model, corrupted_tokens, clean_tokens, metric)` when TL's
metric is the batch mean of jaxablate's per-example metric. Each function returns that mean,
or with `per_example=True` the pair (mean, values with a trailing batch axis).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from jaxablate.ablation import masks
from jaxablate.ablation.masks import MaskSet
from jaxablate.ablation.metrics import check_metric
from jaxablate.ablation.replacements import patch_replacement, zero_replacement
from jaxablate.engine.sharding import placement
from jaxablate.engine.sweeping import check_sweep, sweep
from jaxablate.errors import InputError, InputTypeError
from jaxablate.model.batched import validate_call
from jaxablate.model.config import GPT2Config
from jaxablate.model.gpt2 import GPT2

# `jaxablate.sweep`'s keywords a patching function passes on.
SWEEP_OPTIONS = ("progress", "reuse_prefix", "memory_budget", "devices", "mesh")


def check_source(model: GPT2, tokens: Any, source_tokens: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both prompt sets checked, int32 [batch, seq] each; InputError unless they pair up
    example by example (same batch size and length)."""
    tokens = validate_call(model, tokens, None, None)
    try:
        source = validate_call(model, source_tokens, None, None)
    except InputError as error:
        raise InputError(f"source_tokens: {error}") from None
    if source.shape != tokens.shape:
        raise InputError(f"source_tokens: expected [batch, seq] = {list(tokens.shape)} like "
                         f"tokens, got {list(source.shape)}; patching pairs example i of "
                         "tokens with example i of source_tokens, position by position")
    return tokens, source


def _grid(cfg: GPT2Config, seq: int, what: str) -> tuple[MaskSet, tuple[int, ...]]:
    """The mask set of one patch per component of `what`, and the result's shape (TL's)."""
    layers, heads = cfg.n_layers, cfg.n_heads
    cells = itertools.product(range(layers), range(seq))
    if what == "resid_pre":
        return masks.positions(cfg, seq), (layers, seq)
    if what == "resid_mid":
        return masks.mid_positions(cfg, seq), (layers, seq)
    if what == "mlp_out":
        return masks.mlp_positions(cfg, seq), (layers, seq)
    if what == "attn_out":  # the attention output at p is the sum of every head's z at p
        groups = [[f"{layer}.{h}@{p}" for h in range(heads)] for layer, p in cells]
        return masks.from_components(cfg, groups, seq_len=seq), (layers, seq)
    if what == "z_by_pos":
        groups = [f"{layer}.{h}@{p}" for layer, p in cells for h in range(heads)]
        return masks.from_components(cfg, groups, seq_len=seq), (layers, seq, heads)
    if what in ("q_by_pos", "k_by_pos", "v_by_pos"):
        return masks.head_vectors(cfg, what[0], seq), (layers, seq, heads)
    if what == "z_all_pos":
        return masks.single_heads(cfg), (layers, heads)
    if what in ("q_all_pos", "k_all_pos", "v_all_pos"):
        groups = [[f"{layer}.{h}.{what[0]}@{p}" for p in range(seq)]
                  for layer, h in itertools.product(range(layers), range(heads))]
        return masks.from_components(cfg, groups, seq_len=seq), (layers, heads)
    raise AssertionError(what)


def _mask_set(cfg: GPT2Config, seq: int, parts: tuple[str, ...]) -> tuple[MaskSet, tuple]:
    grids = [_grid(cfg, seq, what) for what in parts]
    if len(grids) == 1:
        return grids[0]
    return masks.concat([g for g, _ in grids]), (len(parts),) + grids[0][1]


def _patch(model: GPT2, tokens: Any, source_tokens: Any, metric: Any, parts: tuple[str, ...],
           per_example: bool, chunk_size: Any, kwargs: dict[str, Any]) -> Any:
    check_metric(metric)
    tokens, source = check_source(model, tokens, source_tokens)
    mask_set, shape = _mask_set(model.cfg, tokens.shape[1], parts)
    # The sweep's own checks (chunk size, progress, devices, ...) before the source run,
    # which compiles: zero values stand in for the patch values, of the shapes checked above.
    unknown = sorted(set(kwargs) - set(SWEEP_OPTIONS))
    if unknown:
        raise InputTypeError(f"unexpected keyword arguments {unknown}; the sweep's options are "
                             f"{list(SWEEP_OPTIONS)}")
    placement(kwargs.get("devices"), kwargs.get("mesh"))
    check_sweep(model, tokens, mask_set, zero_replacement(model), metric, chunk_size,
                kwargs.get("memory_budget"), kwargs.get("progress"))
    values = sweep(model, tokens, mask_set, patch_replacement(model, source), metric,
                   chunk_size, **kwargs)
    values = values.reshape(shape + (tokens.shape[0],))
    mean = values.mean(-1)
    return (mean, values) if per_example else mean


def _doc(shape: str, what: str, tl: str) -> str:
    return f"""The metric with {what} patched from `source_tokens`, one patch at a time:
    numpy {shape}, the batch mean (TL's `{tl}`).

    tokens, source_tokens: int [batch, seq], paired by index. metric: a `jaxablate.metrics`
    metric (per example). per_example=True returns (mean, values {shape[:-1]}, batch]).
    chunk_size and the other keywords (progress, memory_budget, devices, mesh) are
    `jaxablate.sweep`'s: all patches run as one vectorised sweep.

    Example:
        >>> clean_to_corrupt = patching.{tl.removeprefix("get_act_patch_")}(
        ...     model, corrupted, clean, metrics.logit_diff(io, s))       # {shape}
    """


def _make(name: str, parts: tuple[str, ...], shape: str, what: str):
    def patch(model: GPT2, tokens: Any, source_tokens: Any, metric: Any, *,
              per_example: bool = False, chunk_size: Any = None, **kwargs: Any) -> Any:
        return _patch(model, tokens, source_tokens, metric, parts, per_example, chunk_size,
                      kwargs)

    patch.__name__ = patch.__qualname__ = name
    patch.__doc__ = _doc(shape, what, f"get_act_patch_{name}")
    return patch


resid_pre = _make("resid_pre", ("resid_pre",), "[layer, pos]",
                  "the residual stream entering a layer at a position (hook_resid_pre)")
resid_mid = _make("resid_mid", ("resid_mid",), "[layer, pos]",
                  "the stream after a layer's attention at a position (hook_resid_mid)")
attn_out = _make("attn_out", ("attn_out",), "[layer, pos]",
                 "a layer's attention output at a position (hook_attn_out)")
mlp_out = _make("mlp_out", ("mlp_out",), "[layer, pos]",
                "a layer's MLP output at a position (hook_mlp_out)")
attn_head_out_by_pos = _make("attn_head_out_by_pos", ("z_by_pos",), "[layer, pos, head]",
                             "one head's z at one position (attn.hook_z)")
attn_head_q_by_pos = _make("attn_head_q_by_pos", ("q_by_pos",), "[layer, pos, head]",
                           "one head's query vector at one position (attn.hook_q)")
attn_head_k_by_pos = _make("attn_head_k_by_pos", ("k_by_pos",), "[layer, pos, head]",
                           "one head's key vector at one position (attn.hook_k)")
attn_head_v_by_pos = _make("attn_head_v_by_pos", ("v_by_pos",), "[layer, pos, head]",
                           "one head's value vector at one position (attn.hook_v)")
attn_head_out_all_pos = _make("attn_head_out_all_pos", ("z_all_pos",), "[layer, head]",
                              "one head's z at every position (attn.hook_z)")
attn_head_q_all_pos = _make("attn_head_q_all_pos", ("q_all_pos",), "[layer, head]",
                            "one head's query vectors at every position (attn.hook_q)")
attn_head_k_all_pos = _make("attn_head_k_all_pos", ("k_all_pos",), "[layer, head]",
                            "one head's key vectors at every position (attn.hook_k)")
attn_head_v_all_pos = _make("attn_head_v_all_pos", ("v_all_pos",), "[layer, head]",
                            "one head's value vectors at every position (attn.hook_v)")
block_every = _make("block_every", ("resid_pre", "attn_out", "mlp_out"), "[3, layer, pos]",
                    "resid_pre, attn_out and mlp_out (in that order) at one layer and position")
attn_head_all_pos_every = _make(
    "attn_head_all_pos_every", ("z_all_pos", "q_all_pos", "k_all_pos", "v_all_pos"),
    "[4, layer, head]", "a head's output (z), queries, keys and values (in that order) at "
    "every position; TL's fifth row, the pattern, is not patched")
attn_head_by_pos_every = _make(
    "attn_head_by_pos_every", ("z_by_pos", "q_by_pos", "k_by_pos", "v_by_pos"),
    "[4, layer, pos, head]", "a head's output (z), query, key and value (in that order) at one "
    "position; TL's fifth row, the pattern, is not patched")

FUNCTIONS = ("resid_pre", "resid_mid", "attn_out", "mlp_out", "attn_head_out_by_pos",
             "attn_head_q_by_pos", "attn_head_k_by_pos", "attn_head_v_by_pos",
             "attn_head_out_all_pos", "attn_head_q_all_pos", "attn_head_k_all_pos",
             "attn_head_v_all_pos", "block_every", "attn_head_all_pos_every",
             "attn_head_by_pos_every")
