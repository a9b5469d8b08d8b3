"""GPT-2 in PyTorch with jaxablate's weights and numerics, for batched head ablation.

The comparison path: the same weights (from `jaxablate.load_gpt2`, or converted from a loaded
jaxablate `GPT2`), the same arithmetic (jaxablate/model.py: LayerNorm, softmax, residual
stream and accumulation in float32; matmul inputs in the weights' dtype; scores
`q.k / sqrt(d_head)`; tanh GELU; tied unembedding), and ablation point [2], each head's z
blended with its replacement, fused with W_O in `blend_project` (kernel="triton") or done by
the plain PyTorch op (kernel="torch").

A stack of N masks runs with the mask axis folded into the batch: the residual stream of a
chunk is `[n, batch, seq, d_model]` and every layer sees `n * batch` sequences. Only head
masks (per head, or per head and query position) are supported: the kernel's op.

Axis names as in jaxablate.config; `n` is the mask axis.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from jaxablate_kernels.blend_project import blend_project, blend_project_reference
from jaxablate_kernels.matmul import matmul, torch_dtype

KERNELS = ("triton", "torch")

# jaxablate Blocks field -> the shape it is kept in here (per layer, leading `layer` axis).
_BLOCK_FIELDS = ("ln1_w", "ln1_b", "W_qkv", "b_qkv", "W_O", "b_O", "ln2_w", "ln2_b", "W_in",
                 "b_in", "W_out", "b_out")


def _to_torch(array: Any, dtype: torch.dtype, device: Any) -> torch.Tensor:
    # numpy has no bfloat16: go through float32 (exact for values that are bfloat16 already).
    return torch.tensor(np.asarray(array, np.float32), dtype=dtype, device=device)


class TorchGPT2:
    """GPT-2 weights as torch tensors plus the forward pieces a batched head sweep needs.

    Attributes: cfg (jaxablate.GPT2Config), dtype (float32 or bfloat16), device, and the
    weights under jaxablate's names: wte [vocab, d_model], wpe [n_ctx, d_model], lnf_w, lnf_b
    [d_model], and per layer ln1_w ... b_out with a leading `layer` axis (W_qkv
    [layer, d_model, 3, head, d_head], W_O [layer, head, d_head, d_model], ...).

    Example:
        >>> model = TorchGPT2.load("gpt2", dtype="bfloat16", device="cuda")
        >>> logits = model.logits(tokens)                       # [batch, seq, vocab], float32
    """

    def __init__(self, cfg: Any, weights: dict[str, torch.Tensor]):
        missing = {"wte", "wpe", "lnf_w", "lnf_b", *_BLOCK_FIELDS} - set(weights)
        if missing:
            raise ValueError(f"TorchGPT2: missing weights {sorted(missing)}")
        self.cfg = cfg
        for name, value in weights.items():
            setattr(self, name, value)
        self.dtype, self.device = self.wte.dtype, self.wte.device

    @classmethod
    def from_jaxablate(cls, model: Any, device: Any = "cpu") -> "TorchGPT2":
        """The same weights as a loaded jaxablate `GPT2` (same dtype), on `device`.

        Example:
            >>> tmodel = TorchGPT2.from_jaxablate(jaxablate.load_gpt2(folder), "cuda")
        """
        dtype = torch_dtype(str(model.dtype))
        weights = {name: _to_torch(getattr(model, name), dtype, device)
                   for name in ("wte", "wpe", "lnf_w", "lnf_b")}
        for name in _BLOCK_FIELDS:
            weights[name] = _to_torch(getattr(model.blocks, name), dtype, device)
        return cls(model.cfg, weights)

    @classmethod
    def load(cls, source: Any, dtype: str = "float32", device: Any = "cpu") -> "TorchGPT2":
        """Load through `jaxablate.load_gpt2` (hub id, folder, HF model, "bundled:NAME").

        Set JAX_PLATFORMS=cpu in a PyTorch-only process so that loading keeps JAX off the GPU.

        Example:
            >>> tmodel = TorchGPT2.load("gpt2", dtype="bfloat16", device="cuda")
        """
        import jaxablate

        return cls.from_jaxablate(jaxablate.load_gpt2(source, dtype=dtype), device)

    # ----------------------------------------------------------------------------------------
    # The pieces of a layer (float32 in, float32 out).

    def _f32(self, bias: torch.Tensor) -> torch.Tensor:
        return bias.float()

    def _layer_norm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), w.float(), b.float(), self.cfg.layer_norm_eps)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token plus position embedding, float32 `[batch, seq, d_model]` (tokens [batch, seq]).

        Example:
            >>> model.embed(torch.tensor([[15496, 995]])).shape
            torch.Size([1, 2, 768])
        """
        pos = torch.arange(tokens.shape[-1], device=tokens.device)
        return self.wte[tokens].float() + self.wpe[pos].float()

    def attention_z(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Each head's z of `layer` (before point [2]): x [batch, seq, d_model] ->
        float32 [batch, seq, head, d_head] (a strided view of [batch, head, seq, d_head]).

        Example:
            >>> z = model.attention_z(0, model.embed(tokens))   # [batch, seq, 12, 64]
        """
        c = self.cfg
        batch, seq, d = x.shape
        h = self._layer_norm(x, self.ln1_w[layer], self.ln1_b[layer])
        w = self.W_qkv[layer].reshape(d, 3 * d)
        qkv = matmul(h, w, self.dtype) + self._f32(self.b_qkv[layer]).reshape(3 * d)
        q, k, v = qkv.view(batch, seq, 3, c.n_heads, c.d_head).permute(2, 0, 3, 1, 4)
        scores = matmul(q, k.transpose(-1, -2), self.dtype) / math.sqrt(c.d_head)
        causal = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
        pattern = torch.softmax(scores.masked_fill(~causal, -math.inf), dim=-1)
        return matmul(pattern, v, self.dtype).transpose(1, 2)  # [batch, seq, head, d_head]

    def project(self, layer: int, z: torch.Tensor, keep: torch.Tensor | None,
                replacement: torch.Tensor | None, kernel: str = "triton") -> torch.Tensor:
        """Point [2] and W_O: z [n|1, batch, seq, head, d_head], keep [n, head] or
        [n, seq, head] (None: no ablation), replacement [batch|1, seq|1, head, d_head] ->
        float32 [n, batch, seq, d_model] (b_O included).

        Example:
            >>> out = model.project(9, z[None], keep, mean_z[9], kernel="triton")
        """
        w_o, b_o = self.W_O[layer], self.b_O[layer]
        if keep is None:
            flat = z.reshape(*z.shape[:-2], -1)
            return matmul(flat, w_o.reshape(-1, w_o.shape[-1]), self.dtype) + self._f32(b_o)
        if kernel == "triton":
            return blend_project(z, replacement, keep, w_o, b_o)
        if kernel == "torch":
            return blend_project_reference(z, replacement, keep, w_o, b_o)
        raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The MLP half of a block with its residual: x [..., seq, d_model] -> same shape.

        Example:
            >>> x = model.mlp(0, x)
        """
        h = self._layer_norm(x, self.ln2_w[layer], self.ln2_b[layer])
        post = F.gelu(matmul(h, self.W_in[layer], self.dtype) + self._f32(self.b_in[layer]),
                      approximate="tanh")
        return x + matmul(post, self.W_out[layer], self.dtype) + self._f32(self.b_out[layer])

    def unembed(self, x: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Final LayerNorm and tied unembedding: x [..., batch, k, d_model] -> logits
        [..., batch, k, vocab], or over the per-example ids `columns` [batch, n_cols] only.

        Example:
            >>> model.unembed(x_last, columns=torch.stack([io, s], 1))   # [..., batch, k, 2]
        """
        h = self._layer_norm(x, self.lnf_w, self.lnf_b)
        if columns is None:
            return matmul(h, self.wte.t(), self.dtype)
        cols = self.wte[columns].transpose(-1, -2)  # [batch, d_model, n_cols]
        return matmul(h, cols, self.dtype)

    # ----------------------------------------------------------------------------------------
    # Whole passes.

    @torch.no_grad()
    def clean_pass(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unablated residual stream entering every layer (and the final one),
        float32 [layer+1, batch, seq, d_model], and every layer's z, float32
        [layer, batch, seq, head, d_head]; tokens: int [batch, seq] on the model's device.

        Example:
            >>> resid, z = model.clean_pass(tokens)
        """
        x = self.embed(tokens)
        resid, zs = [x], []
        for layer in range(self.cfg.n_layers):
            z = self.attention_z(layer, x)
            zs.append(z)
            x = self.mlp(layer, x + self.project(layer, z[None], None, None)[0])
            resid.append(x)
        return torch.stack(resid), torch.stack(zs)

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Clean logits, float32 [batch, seq, vocab] (tokens int [batch, seq]).

        Example:
            >>> model.logits(torch.tensor([[15496, 995]])).shape
            torch.Size([1, 2, 50257])
        """
        resid, _ = self.clean_pass(tokens)
        return self.unembed(resid[-1])

    @torch.no_grad()
    def mean_z(self, reference_tokens: torch.Tensor, per_position: bool = True) -> torch.Tensor:
        """Mean clean z over a reference set: [layer, seq|1, head, d_head], float32 (as
        `jaxablate.mean_replacement(...).z`).

        Example:
            >>> r = model.mean_z(abc_tokens)           # [12, seq, 12, 64]
        """
        _, z = self.clean_pass(reference_tokens)  # [layer, batch, seq, head, d_head]
        mean = z.mean(dim=1)
        return mean if per_position else mean.mean(dim=1, keepdim=True)

    @torch.no_grad()
    def resume(self, start: int, x: torch.Tensor, keep: torch.Tensor,
               replacement: torch.Tensor, positions: torch.Tensor,
               columns: torch.Tensor | None = None, z_start: torch.Tensor | None = None,
               kernel: str = "triton") -> torch.Tensor:
        """Run a stack of head masks from layer `start`; logits at `positions`.

        start: the first layer any of the n masks changes (the stream entering it is clean).
        x: the stream entering `start`, [batch, seq, d_model] (shared) or
        [n, batch, seq, d_model]. keep: [n, layer, head] or [n, layer, seq, head].
        replacement: z values [layer, batch|1, seq|1, head, d_head]. positions: int [batch, k].
        columns: int [batch, n_cols] or None (whole vocabulary). z_start: the clean z of
        layer `start` [batch, seq, head, d_head], which x determines: its attention is then
        not recomputed. Returns float32 logits [n, batch, k, vocab or n_cols].

        Example:
            >>> logits = model.resume(9, resid[9], keep, r, positions, columns, z[9])
        """
        n = keep.shape[0]
        batch, seq = positions.shape[0], x.shape[-2]
        x = x.expand(n, *x.shape[-3:]) if x.ndim == 3 else x
        for layer in range(start, self.cfg.n_layers):
            if layer == start and z_start is not None:
                z = z_start[None]  # shared by the n masks: the kernel reads it once per mask
            else:
                z = self.attention_z(layer, x.reshape(n * batch, seq, -1))
                z = z.reshape(n, batch, seq, *z.shape[-2:])
            x = x + self.project(layer, z, keep[:, layer], replacement[layer], kernel)
            x = self.mlp(layer, x)
        index = positions[None, :, :, None].expand(n, batch, positions.shape[1], x.shape[-1])
        return self.unembed(torch.gather(x, 2, index), columns)
