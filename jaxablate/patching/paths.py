"""Path patching (Wang et al. 2022, arXiv 2211.00593, §3.1 and its appendix): the effect of a
sender on the task through chosen receivers only.

    path_patch(model, tokens, source_tokens, senders, receivers, metric)   [sender, batch]

For each sender, three runs on the base `tokens` (`source_tokens` paired with them by index):

  1. the base and the source run, cached (every head's z, every MLP's output);
  2. the base tokens with the sender's output set to its source value and every other
     attention head's z, in every layer and at every position, frozen at its base value;
     MLPs and LayerNorms recomputed. The receivers' inputs are recorded: a head's q, k or v
     vectors at every position, or the final residual stream (before ln_final);
  3. the base tokens with only the receivers' inputs replaced by the recorded ones, everything
     else recomputed. The metric of this run is the result.

So only paths sender -> (MLPs) -> receiver carry the source: a path through another head is
cut in step 2 (that head is frozen), and in step 3 nothing but the receivers sees the change.
With `"resid_final"` step 3 is the unembedding of the recorded stream (the direct path, with
MLPs in between). Noising is `tokens` = clean, `source_tokens` = corrupted; denoising the
reverse (`jaxablate.patching.activation` has the same convention).

All senders run as one compiled program: a `vmap` over a fixed-size chunk of senders (the last
padded, so nothing recompiles) of a `vmap` over the batch. A sender is data there (one-hot
keep-weights and a per-sender replacement), never structure; a layer that no sender or
receiver needs is not recomputed (step 2 starts at the chunk's first sender layer and stops
after the last receiver layer, step 3 resumes at the first receiver layer from the base).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from jaxablate.ablation.components import Component, check_component, parse_component
from jaxablate.ablation.metrics import check_metric, vocab_columns
from jaxablate.engine.resume import resume
from jaxablate.engine.schedule import budget_bytes, bytes_per_example, check_chunk_size
from jaxablate.engine.sweeping import NonFiniteMetricError
from jaxablate.errors import InputError
from jaxablate.model.batched import run_with_cache
from jaxablate.model.config import GPT2Config
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.mask import Mask
from jaxablate.model.replacement import Replacement
from jaxablate.patching.activation import check_source

RESID_FINAL = "resid_final"
_HEAD_RECEIVER = re.compile(r"^(\d+)\.(\d+)\.([qkv])$")
_RECEIVER_EXAMPLES = "'L.H.q', 'L.H.k' or 'L.H.v' (e.g. '9.6.q') or 'resid_final'"


class Receivers(NamedTuple):
    """Parsed receivers: the final stream, or head inputs (kind "q"/"k"/"v", layer, head)."""

    final: bool
    heads: tuple[tuple[str, int, int], ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        """The head inputs replaced in step 3, in q, k, v order (what step 2 records)."""
        return tuple(k for k in "qkv" if any(kind == k for kind, _, _ in self.heads))


def _as_list(value: Any, what: str) -> list[Any]:
    # One name is a list of one; anything else must be a sequence of names.
    if isinstance(value, (str, Component)):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise InputError(f"{what}: expected a name or a list of names, got "
                         f"{type(value).__name__}") from None
    if not items:
        raise InputError(f"{what}: empty; give at least one")
    return items


def parse_senders(senders: Any, cfg: GPT2Config) -> list[Component]:
    """Sender names ("5.2": a head's z at every position, "mlp3": an MLP's output at every
    position) as `Component`s, checked against the model; InputError naming the problem.

    Example:
        >>> parse_senders(["0.1", "mlp0"], model.cfg)
        [Component(kind='heads', index=(0, 1)), Component(kind='mlps', index=(0,))]
    """
    parsed = []
    for spec in _as_list(senders, "senders"):
        try:
            component = parse_component(spec)
        except InputError as error:
            raise InputError(f"senders: {error}") from None
        if component.kind not in ("heads", "mlps"):
            raise InputError(f"senders: {component.name!r} is a {component.kind} component; "
                             "path patching sends from whole heads ('5.2') and MLPs ('mlp3')")
        try:
            check_component(component, cfg, None, None)
        except InputError as error:
            raise InputError(f"senders: {error}") from None
        if component in parsed:
            raise InputError(f"senders: {component.name!r} is given twice")
        parsed.append(component)
    return parsed


def parse_receivers(receivers: Any, cfg: GPT2Config) -> Receivers:
    """Receiver names ("9.6.q", "9.6.k", "9.6.v": a head's query, key or value vectors at
    every position; "resid_final": the final residual stream) checked against the model.

    Example:
        >>> parse_receivers(["1.0.k", "1.1.k"], model.cfg)
        Receivers(final=False, heads=(('k', 1, 0), ('k', 1, 1)))
    """
    final, heads = False, []
    for spec in _as_list(receivers, "receivers"):
        text = spec.strip().lower() if isinstance(spec, str) else None
        match = None if text is None else _HEAD_RECEIVER.match(text)
        if text == RESID_FINAL:
            if final:
                raise InputError("receivers: 'resid_final' is given twice")
            final = True
            continue
        if match is None:
            raise InputError(f"receivers: unknown receiver {spec!r}; write {_RECEIVER_EXAMPLES}")
        layer, head, kind = int(match[1]), int(match[2]), match[3]
        for what, value, limit in (("layer", layer, cfg.n_layers), ("head", head, cfg.n_heads)):
            if value >= limit:
                raise InputError(f"receivers: {spec!r}: {what} {value} is out of range "
                                 f"[0, {limit})")
        if (kind, layer, head) in heads:
            raise InputError(f"receivers: {spec!r} is given twice")
        heads.append((kind, layer, head))
    if final and heads:
        raise InputError("receivers: 'resid_final' cannot be mixed with head receivers "
                         "(replacing the final stream makes every earlier receiver moot)")
    return Receivers(final, tuple(heads))


def _check_order(senders: list[Component], receivers: Receivers) -> None:
    """InputError unless every head receiver lies in a layer after every sender (a sender in
    layer L reaches the q, k, v of layers > L only; an MLP at L writes after attention L)."""
    for kind, layer, head in receivers.heads:
        for sender in senders:
            if sender.index[0] >= layer:
                raise InputError(
                    f"receiver '{layer}.{head}.{kind}' (layer {layer}) is not after sender "
                    f"{sender.name!r} (layer {sender.index[0]}): a head's inputs carry only "
                    "the outputs of earlier layers")


def _receiver_mask(cfg: GPT2Config, seq: int, receivers: Receivers) -> Mask | None:
    """Step 3's mask: keep-weight 0 at every position of each receiver head's input."""
    if receivers.final:
        return None
    fields = {}
    for kind in receivers.kinds:
        keep = np.ones((cfg.n_layers, seq, cfg.n_heads), np.float32)
        for k, layer, head in receivers.heads:
            if k == kind:
                keep[layer, :, head] = 0.0
        fields[f"{kind}_positions"] = jnp.asarray(keep)
    return Mask(**fields)


def _record(model, x, start, stop, mask, replacement, kinds):
    """Layers start .. stop-1 from the stream `x` entering `start`: (the stream leaving
    stop-1, each layer's q/k/v of `kinds` [layer, seq, head, d_head], zero where not run).
    No `enter` between layers: step 2's mask has no positions or SAE features."""
    c = model.cfg
    buffers = {k: jnp.zeros((c.n_layers, x.shape[0], c.n_heads, c.d_head), jnp.float32)
               for k in kinds}

    def step(layer, carry):
        x, buffers = carry
        x, acts = model.block(layer, x, mask, replacement)
        return x, {k: buffers[k].at[layer].set(acts[k]) for k in kinds}

    return jax.lax.fori_loop(start, stop, step, (x, buffers))


@eqx.filter_jit
def _run_senders(model, start, stop, resume_at, sender_heads, sender_mlps, base, source,
                 tokens, positions, columns, data, receiver_mask, kinds, score):
    """Metric [chunk, batch] of a chunk of senders (one-hot sender_heads [chunk, layer, head],
    sender_mlps [chunk, layer]; all zeros: a padding row). base: (resid_pre
    [batch, layer+1, seq, d], z); source: (z, mlp_out). start, stop, resume_at are data."""
    c = model.cfg

    def one(sh, sm, resid, base_z, source_z, source_mlp, tok, pos, cols, d):
        # Step 2: every head's z blended fully (keep 0) towards a replacement that is the
        # base z, except the sender head's slot taken from the source; the MLP sender's
        # output likewise. A weight-0 blend returns the replacement bit for bit, a weight-1
        # blend (every other MLP) the recomputed value.
        z = jnp.where(sh[:, None, :, None] > 0, source_z, base_z)
        frozen = Mask(heads=jnp.zeros((c.n_layers, c.n_heads), jnp.float32), mlps=1.0 - sm)
        x, recorded = _record(model, resid[start], start, stop, frozen,
                              Replacement(z=z, mlp_out=source_mlp), kinds)
        clean = model.unembed(resid[-1][pos], cols)
        if receiver_mask is None:  # resid_final: step 3 is the unembedding of the stream
            logits = model.unembed(x[pos], cols)
        else:  # Step 3: only the receivers' q/k/v replaced, from the base stream onwards
            logits = resume(model, resid[resume_at], resume_at, receiver_mask,
                            Replacement(**recorded), pos, cols)
        return score(logits, tok, clean, d)

    per_example = jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0, 0, 0, 0, 0))
    return jax.vmap(per_example, in_axes=(0, 0) + (None,) * 8)(
        sender_heads, sender_mlps, base[0], base[1], source[0], source[1], tokens, positions,
        columns, data)


def _default_chunk(model: GPT2, batch: int, seq: int, n_read: int, n_senders: int,
                   n_kinds: int) -> int:
    """Senders per compiled call: all of them when their activations fit the memory budget
    (1 GiB on CPU, a quarter of an accelerator's memory), else as many as fit. Per (sender,
    example): one layer's activations plus the per-sender z replacement and the recorded
    q/k/v, each [layer, seq, d_model] float32."""
    c = model.cfg
    per = bytes_per_example(model, seq, n_read) + 4 * c.n_layers * seq * c.d_model * (
        1 + n_kinds)
    return int(max(1, min(n_senders, budget_bytes(None) // (batch * per))))


def path_patch(
    model: GPT2,
    tokens: Any,
    source_tokens: Any,
    senders: Any,
    receivers: Any,
    metric: Any,
    *,
    chunk_size: int | None = None,
) -> Float[np.ndarray, "sender batch"]:
    """The metric after path patching each sender to the receivers: numpy float32
    `[n_senders, batch]`, one row per sender in the order given; `.mean(1)` is the batch mean.

    tokens, source_tokens: int [batch, seq], paired by index (noising: clean tokens and
    corrupted sources; denoising the reverse). senders: names (or one name) of heads ("5.2",
    its z at every position) and MLPs ("mlp3", its output at every position). receivers:
    names (or one name) of head inputs at every position ("9.6.q", "9.6.k", "9.6.v"), all
    replaced together, or "resid_final" alone (the final residual stream before ln_final:
    the direct path to the logits). metric: a `jaxablate.metrics` metric (per example;
    `kl_to_clean` compares with the base run). chunk_size: senders per compiled call
    (default: all of them when they fit the memory budget).

    What is frozen, per sender (module docstring has the three runs): in the sender run,
    every attention head's z in every layer and at every position is set to its value in
    the base run, the sender's output (a head's z, an MLP's output) to its value in the
    source run; MLPs and LayerNorms are recomputed. In the final run only the receivers'
    q/k/v (at every position) are set to what the sender run gave them; everything else,
    heads included, is recomputed from the base tokens.

    Raises InputError before anything compiles for: a source set of another shape, unknown
    or out-of-range senders or receivers, a sender that is not a head or an MLP, empty or
    duplicate senders or receivers, "resid_final" mixed with head receivers, and a head
    receiver in a layer not after every sender.

    Example:
        >>> task = ja.tasks.induction(64, half=16, vocab=64, seed=0)
        >>> out = path_patch(model, task.tokens, task.counterfactual, ["0.1"],
        ...                  ["1.0.k", "1.1.k"], task.metric)           # [1, 64]
        >>> effect = ja.metrics.effect(task.metric, out, ja.clean_metric(model, task.tokens,
        ...                                                              task.metric))
    """
    metric = check_metric(metric)
    tokens, source = check_source(model, tokens, source_tokens)
    cfg = model.cfg
    batch, seq = tokens.shape
    parsed = parse_senders(senders, cfg)
    targets = parse_receivers(receivers, cfg)
    _check_order(parsed, targets)
    positions, data = metric.prepare(tokens, cfg)
    n, kinds = len(parsed), targets.kinds
    if chunk_size is None:
        chunk = _default_chunk(model, batch, seq, positions.shape[1], n, len(kinds))
    else:
        chunk = check_chunk_size(model, batch, seq, positions.shape[1], chunk_size)
    chunk = min(chunk, n)
    columns, data = vocab_columns(metric, data)

    # Run 1: the base and the source, every head's z and MLP's output cached.
    _, base = run_with_cache(model, tokens, names=("resid_pre", "z"), positions=positions)
    _, src = run_with_cache(model, source, names=("z", "mlp_out"), positions=positions)
    layers = np.array([s.index[0] for s in parsed])
    receiver_layers = [layer for _, layer, _ in targets.heads]
    stop = cfg.n_layers if targets.final else max(receiver_layers) + 1
    resume_at = cfg.n_layers if targets.final else min(receiver_layers)
    receiver_mask = _receiver_mask(cfg, seq, targets)
    args = ((base.resid_pre, base.z), (src.z, src.mlp_out), jnp.asarray(tokens),
            jnp.asarray(positions), None if columns is None else jnp.asarray(columns),
            {k: jnp.asarray(v) for k, v in data.items()}, receiver_mask, kinds, metric.score)

    # Sorted by layer, a chunk's step 2 starts at its first sender's layer.
    order = np.argsort(layers, kind="stable")
    out = np.empty((n, batch), np.float32)
    for begin in range(0, n, chunk):
        idx = order[begin:begin + chunk]
        heads = np.zeros((chunk, cfg.n_layers, cfg.n_heads), np.float32)
        mlps = np.zeros((chunk, cfg.n_layers), np.float32)
        for row, i in enumerate(idx):
            if parsed[i].kind == "heads":
                heads[(row,) + parsed[i].index] = 1.0
            else:
                mlps[row, parsed[i].index[0]] = 1.0
        values = _run_senders(model, jnp.int32(layers[idx[0]]), jnp.int32(stop),
                              jnp.int32(resume_at), jnp.asarray(heads), jnp.asarray(mlps),
                              *args)
        out[idx] = np.asarray(values)[: len(idx)]
    if not np.isfinite(out).all():
        raise NonFiniteMetricError([s.name for s in parsed], out)
    return out
