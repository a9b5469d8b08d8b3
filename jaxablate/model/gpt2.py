"""GPT-2 as one Equinox module: one example per call, blocks stacked and scanned over layers.

Numerics follow Hugging Face's `GPT2LMHeadModel` (REFERENCE.md): LayerNorm eps from the config
(1e-5), tanh-approximated GELU ("gelu_new"), scores `q.k / sqrt(d_head)`, causal mask before
the softmax, tied unembedding without bias. In bfloat16 the matmul inputs are bfloat16 while
LayerNorm, softmax, the residual stream and every accumulation stay float32.

Ablation hooks in as a blend `m * h + (1 - m) * r` at named points (see `mask.py`):
  [1] residual stream entering a layer (mask.positions, and the SAE's features),
  [q] each head's query, key and value vectors (mask.q/k/v_positions),
  [2] each head's z before W_O (mask.heads, mask.head_positions),
  [m] the stream after attention (mask.mid_positions),
  [3] each MLP neuron after the GELU (mask.neurons),
  [4] each MLP layer's output (mask.mlps, mask.mlp_positions).
A mask field that is None skips its blend entirely; the mask is never structure otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxablate.model.config import GPT2Config
from jaxablate.model.mask import Mask
from jaxablate.model.replacement import Replacement
from jaxablate.model.sae import SAE

# Activations `run(..., collect=...)` can return: per layer, then of the whole model.
ACTIVATIONS = ("resid_pre", "z", "post", "mlp_out", "pattern", "q", "k", "v", "resid_mid",
               "resid_post", "attn_out", "attn_scores", "pre", "embed", "pos_embed", "ln_final")


class Blocks(eqx.Module):
    """Every block's weights, stacked on a leading `layer` axis (scanned over)."""

    ln1_w: Float[Array, "layer d_model"]
    ln1_b: Float[Array, "layer d_model"]
    W_qkv: Float[Array, "layer d_model 3 head d_head"]
    b_qkv: Float[Array, "layer 3 head d_head"]
    W_O: Float[Array, "layer head d_head d_model"]
    b_O: Float[Array, "layer d_model"]
    ln2_w: Float[Array, "layer d_model"]
    ln2_b: Float[Array, "layer d_model"]
    W_in: Float[Array, "layer d_model neuron"]
    b_in: Float[Array, "layer neuron"]
    W_out: Float[Array, "layer neuron d_model"]
    b_out: Float[Array, "layer d_model"]


def _normalize(x, eps):
    # LayerNorm before its gain and bias (what TL's hook_normalized records).
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def _layer_norm(x, w, b, eps):
    return _normalize(x, eps) * w.astype(jnp.float32)[None] + b.astype(jnp.float32)[None]


def _f32(bias):
    # Biases are added in float32 (the accumulation dtype), with an explicit leading seq axis.
    return bias.astype(jnp.float32)[None]


def _rows(queries):
    """Select the query rows of a per-position array (seq axis first; a length-1 axis is a
    broadcast and stays)."""
    return lambda a: a if queries is None or a.shape[0] == 1 else a[queries]


HALF = (jnp.bfloat16, jnp.float16)


def _take(a: Array, index: Array, dtype: Any) -> Array:
    """a[index] for a traced index (a layer, or token ids), moved as raw bits when `a` is a
    16-bit float or holds one's bits (uint16, `GPT2.with_weight_bits`), returned as `dtype`.
    XLA's CPU backend widens a bfloat16 array to float32 to slice it; inside the layer
    loop, loop-invariant code motion then hoists that widening out and writes a float32
    copy of every layer's weights on every call, work a float32 model does not do (it made
    a bfloat16 sweep barely faster than a float32 one). Bits are sliced as they are."""
    if a.dtype == jnp.uint16:
        return jax.lax.bitcast_convert_type(a[index], dtype)
    if a.dtype not in HALF:
        return a[index]
    bits = jax.lax.bitcast_convert_type(a, jnp.uint16)
    return jax.lax.bitcast_convert_type(bits[index], a.dtype)


def _blend(h, keep, r):
    # m * h + (1 - m) * r rather than r + m * (h - r): with m = 1 it returns h bit for bit.
    return keep * h + (1.0 - keep) * r


class GPT2(eqx.Module):
    """GPT-2 (LM head) for one token sequence; batch with `jaxablate.forward` or `jax.vmap`.

    Example:
        >>> model = jaxablate.load_gpt2("gpt2")
        >>> logits = model(jnp.array([15496, 995, 0]))       # [seq, vocab] = [3, 50257]
    """

    wte: Float[Array, "vocab d_model"]
    wpe: Float[Array, "n_ctx d_model"]
    blocks: Blocks
    lnf_w: Float[Array, " d_model"]
    lnf_b: Float[Array, " d_model"]
    cfg: GPT2Config = eqx.field(static=True)
    sae: SAE | None = None

    @property
    def dtype(self):
        return self.wte.dtype

    def matmul(self, spec: str, a: Array, b: Array) -> Array:
        """Matmul in the weights' dtype with float32 accumulation and float32 output."""
        return jnp.einsum(
            spec, a.astype(self.dtype), b.astype(self.dtype), preferred_element_type=jnp.float32
        )

    def layer(self, layer: Int[Array, ""]) -> Blocks:
        """One layer's parameters (every `Blocks` field without its layer axis), in the
        model's dtype."""
        return jax.tree_util.tree_map(lambda a: _take(a, layer, self.dtype), self.blocks)

    def with_weight_bits(self) -> GPT2:
        """This model with its layers' 16-bit float weights held as their raw uint16 bits
        (a float32 model comes back as it is). Read them only through `layer`: the sweep
        passes such a model to its compiled calls so that slicing a layer inside the loop
        copies no weights (see `_take`; even a bit view made inside the call is
        materialised by XLA once per call).

        Example:
            >>> model.with_weight_bits().layer(jnp.int32(3)).W_in.dtype   # bfloat16
        """
        if self.dtype not in HALF:
            return self
        bits = jax.tree_util.tree_map(
            lambda a: jax.lax.bitcast_convert_type(a, jnp.uint16), self.blocks)
        return eqx.tree_at(lambda m: m.blocks, self, bits)

    def embed(self, tokens: Int[Array, " seq"]) -> Float[Array, "seq d_model"]:
        """Token plus position embedding: the residual stream entering layer 0."""
        pos = jnp.arange(tokens.shape[0])
        return self.wte[tokens].astype(jnp.float32) + self.wpe[pos].astype(jnp.float32)

    def unembed(
        self, x: Float[Array, "k d_model"], columns: Int[Array, " n"] | None = None
    ) -> Float[Array, "k n"]:
        """Final LayerNorm and the tied unembedding of some residual-stream rows: logits over
        the whole vocabulary (n = vocab), or over the token ids `columns` only (a logit
        difference reads two of GPT-2's 50,257 columns)."""
        h = _layer_norm(x, self.lnf_w, self.lnf_b, self.cfg.layer_norm_eps)
        table = self.wte if columns is None else _take(self.wte, columns, self.dtype)
        return self.matmul("kd,vd->kv", h, table)

    def enter(
        self,
        layer: Int[Array, ""],
        x: Float[Array, "rows d_model"],
        mask: Mask,
        replacement: Replacement,
        queries: Int[Array, " rows"] | None = None,
    ) -> Float[Array, "rows d_model"]:
        """[1] The residual stream entering `layer` (n_layers: the final one, untouched):
        SAE features, then whole positions. `queries`: the positions x's rows are (all when
        None).

        Callers apply it to the loop carry (to the embedding, or at the end of the previous
        layer's step), never inside the block: there XLA would fuse the blend into the
        block's LayerNorm reductions and round differently from the clean program, so a
        keep-all mask would not reproduce the clean logits bit for bit.
        """
        if mask.sae_features is not None and self.sae is not None:
            sae = self.sae
            x = jax.lax.cond(
                layer == sae.layer,
                lambda x: sae.ablate(x, mask.sae_features, replacement.sae_features),
                lambda x: x,
                x,
            )
        if mask.positions is not None:
            rows = _rows(queries)
            inside = jnp.minimum(layer, self.cfg.n_layers - 1)
            keep = jnp.where(layer < self.cfg.n_layers, rows(mask.positions[inside]), 1.0)
            x = _blend(x, keep[:, None], rows(replacement.resid[inside]))
        return x

    def block(
        self,
        layer: Int[Array, ""],
        x: Float[Array, "held d_model"],
        mask: Mask,
        replacement: Replacement,
        queries: Int[Array, " k"] | None = None,
        prefix: tuple[Array, Array] | None = None,
    ) -> tuple[Float[Array, "rows d_model"], dict[str, Array]]:
        """One transformer block with ablation points [2]-[4]; returns the new stream and acts.

        `x` is the stream entering the layer with point [1] already applied (`enter`).

        With `queries`, only those rows of the output are computed (keys and values still
        come from every position): the last layer needs no more than the rows read. With
        `prefix` (see `attend`), x holds only the positions after the prefix's.
        """
        resid_pre = x
        x, z, pattern, attn_acts = self.attend(layer, x, mask, replacement, queries, prefix)
        x = self.ablate_mid(layer, x, mask, replacement, queries)
        resid_mid = x
        x, mlp_acts = self.feed_forward(layer, x, mask, replacement, queries)
        acts = {"resid_pre": resid_pre, "resid_mid": resid_mid, "z": z, "pattern": pattern,
                "resid_post": x, **attn_acts, **mlp_acts}
        return x, acts

    def attend(
        self,
        layer: Int[Array, ""],
        x: Float[Array, "held d_model"],
        mask: Mask,
        replacement: Replacement,
        queries: Int[Array, " k"] | None = None,
        prefix: tuple[Float[Array, "r head d_head"], Float[Array, "r head d_head"]] | None
        = None,
    ) -> tuple[Float[Array, "rows d_model"], Float[Array, "rows head d_head"],
               Float[Array, "head rows seq"], dict[str, Array]]:
        """The attention half of a block: (stream after attention, z after point [2], pattern,
        acts): acts holds q [rows, head, d_head], k and v [seq, head, d_head] (after point
        [q]), attn_scores [head, rows, seq] (scaled, -inf above the diagonal as TL keeps
        them) and attn_out [rows, d_model] (z W_O + b_O, what attention adds to the stream).

        `prefix`: the keys and values (k, v) of positions 0 .. r-1, given; x then holds
        positions r .. seq-1 only (a sweep skipping rows that no mask changes). `queries`
        are always positions in the whole sequence."""
        p = self.layer(layer)
        r = 0 if prefix is None else prefix[0].shape[0]
        seq = r + x.shape[0]
        if r and queries is None:
            queries = jnp.arange(r, seq)
        rows = _rows(queries)  # per-position arrays of the whole sequence
        def local(a):  # a's rows at `queries` (a holds positions r .. seq-1)
            return a if queries is None else a[queries - r]

        here = _rows(jnp.arange(r, seq) if r else None)  # positions x holds
        h = _layer_norm(x, p.ln1_w, p.ln1_b, self.cfg.layer_norm_eps)
        qkv = self.matmul("sd,dthe->sthe", h, p.W_qkv) + _f32(p.b_qkv)
        q, k, v = local(qkv[:, 0]), qkv[:, 1], qkv[:, 2]
        # [q] a head's query, key or value vector at single positions (activation patching).
        if mask.q_positions is not None:
            q = _blend(q, rows(mask.q_positions[layer])[:, :, None], rows(replacement.q[layer]))
        if mask.k_positions is not None:
            k = _blend(k, here(mask.k_positions[layer])[:, :, None], here(replacement.k[layer]))
        if mask.v_positions is not None:
            v = _blend(v, here(mask.v_positions[layer])[:, :, None], here(replacement.v[layer]))
        if r:
            k, v = jnp.concatenate([prefix[0], k]), jnp.concatenate([prefix[1], v])
        scores = self.matmul("qhe,khe->hqk", q, k) / math.sqrt(self.cfg.d_head)
        causal = rows(jnp.tril(jnp.ones((seq, seq), bool)))
        attn_scores = jnp.where(causal[None], scores, -jnp.inf)
        pattern = jax.nn.softmax(attn_scores, axis=-1)
        z = self.ablate_z(layer, self.matmul("hqk,khe->qhe", pattern, v), mask, replacement,
                          queries)
        heads_out = self.matmul("she,hed->sd", z, p.W_O)
        acts = {"q": q, "k": k, "v": v, "attn_scores": attn_scores,
                "attn_out": heads_out + _f32(p.b_O)}
        # (stream + z W_O) + b_O, in this order: the sweep's attention reuse adds its deltas
        # to the clean stream the same way, so both round alike.
        return local(x) + heads_out + _f32(p.b_O), z, pattern, acts

    def ablate_z(
        self,
        layer: Int[Array, ""],
        z: Float[Array, "rows head d_head"],
        mask: Mask,
        replacement: Replacement,
        queries: Int[Array, " k"] | None = None,
    ) -> Float[Array, "rows head d_head"]:
        """[2] each head's z, at all positions or at chosen ones (rows: `queries` or all)."""
        rows = _rows(queries)
        if mask.heads is not None:
            z = _blend(z, mask.heads[layer][None, :, None], rows(replacement.z[layer]))
        if mask.head_positions is not None:
            z = _blend(z, rows(mask.head_positions[layer])[:, :, None],
                       rows(replacement.z[layer]))
        return z

    def ablate_mid(
        self,
        layer: Int[Array, ""],
        x: Float[Array, "rows d_model"],
        mask: Mask,
        replacement: Replacement,
        queries: Int[Array, " k"] | None = None,
    ) -> Float[Array, "rows d_model"]:
        """[m] the stream after the layer's attention, at chosen positions (TL resid_mid).

        The one blend inside a block: XLA fuses it into the MLP's LayerNorm, so a keep-all
        mid_positions mask reproduces the clean logits up to float32 rounding (~1e-6), not
        bit for bit as every other kind does (see `enter`)."""
        if mask.mid_positions is None:
            return x
        rows = _rows(queries)
        return _blend(x, rows(mask.mid_positions[layer])[:, None],
                      rows(replacement.resid_mid[layer]))

    def feed_forward(
        self,
        layer: Int[Array, ""],
        x: Float[Array, "rows d_model"],
        mask: Mask,
        replacement: Replacement,
        queries: Int[Array, " k"] | None = None,
    ) -> tuple[Float[Array, "rows d_model"], dict[str, Array]]:
        """The MLP half of a block with points [3] and [4]: (new stream, acts), acts holding
        pre and post [rows, neuron] (before and after the GELU) and mlp_out [rows, d_model]."""
        p = self.layer(layer)
        rows = _rows(queries)
        h = _layer_norm(x, p.ln2_w, p.ln2_b, self.cfg.layer_norm_eps)
        pre = self.matmul("sd,dn->sn", h, p.W_in) + _f32(p.b_in)
        post = jax.nn.gelu(pre, approximate=True)
        # [3] single neurons after the nonlinearity.
        if mask.neurons is not None:
            post = _blend(post, mask.neurons[layer][None, :], rows(replacement.post[layer]))
        mlp_out = self.matmul("sn,nd->sd", post, p.W_out) + _f32(p.b_out)
        # [4] the whole MLP's output, at every position or at chosen ones.
        if mask.mlps is not None:
            mlp_out = _blend(mlp_out, mask.mlps[layer], rows(replacement.mlp_out[layer]))
        if mask.mlp_positions is not None:
            mlp_out = _blend(mlp_out, rows(mask.mlp_positions[layer])[:, None],
                             rows(replacement.mlp_out[layer]))
        return x + mlp_out, {"pre": pre, "post": post, "mlp_out": mlp_out}

    def run(
        self,
        tokens: Int[Array, " seq"],
        mask: Mask | None = None,
        replacement: Replacement | None = None,
        *,
        positions: Int[Array, " k"] | None = None,
        collect: tuple[str, ...] = (),
    ) -> tuple[Float[Array, "k vocab"], dict[str, Array]]:
        """Logits at `positions` (all when None) and the activations named in `collect`.

        Collected activations are stacked over layers: resid_pre [layer+1, seq, d_model] (the
        last row is the final residual stream), z [layer, seq, head, d_head],
        post [layer, seq, neuron], mlp_out [layer, seq, d_model], pattern [layer, head, seq, key],
        q, k, v [layer, seq, head, d_head] (after point [q]), resid_mid [layer, seq, d_model],
        resid_post [layer, seq, d_model] (before the next layer's point [1]), attn_out
        [layer, seq, d_model], attn_scores [layer, head, seq, key], pre [layer, seq, neuron];
        then embed, pos_embed and ln_final [seq, d_model] (the final LayerNorm before its gain
        and bias). Inputs are trusted here; `jaxablate.forward` validates them.
        """
        mask = Mask() if mask is None else mask
        replacement = Replacement() if replacement is None else replacement

        def step(x, layer):
            x, acts = self.block(layer, x, mask, replacement)
            return self.enter(layer + 1, x, mask, replacement), {n: acts[n] for n in collect
                                                                 if n in acts}

        x = self.enter(jnp.int32(0), self.embed(tokens), mask, replacement)
        x, acts = jax.lax.scan(step, x, jnp.arange(self.cfg.n_layers))
        if "resid_pre" in collect:
            acts["resid_pre"] = jnp.concatenate([acts["resid_pre"], x[None]], axis=0)
        whole = {"embed": lambda: self.wte[tokens], "pos_embed": lambda: self.wpe[:len(tokens)],
                 "ln_final": lambda: _normalize(x, self.cfg.layer_norm_eps)}
        acts.update({n: f().astype(jnp.float32) for n, f in whole.items() if n in collect})
        return self.unembed(x if positions is None else x[positions]), acts

    def __call__(
        self,
        tokens: Int[Array, " seq"],
        mask: Mask | None = None,
        replacement: Replacement | None = None,
        *,
        positions: Int[Array, " k"] | None = None,
    ) -> Float[Array, "k vocab"]:
        """Logits `[seq, vocab]` (or `[k, vocab]` at `positions`) of one token sequence."""
        return self.run(tokens, mask, replacement, positions=positions)[0]
