"""Fused head ablation: blend each head's z with its replacement, then project through W_O.

For a stack of N masks over E examples (the mask axis folded into the batch, row (n, e, s)):

    zb[n, e, s, h, :] = keep[n, s, h] * z[n, e, s, h, :] + (1 - keep[n, s, h]) * r[e, s, h, :]
    out[n, e, s, :]   = sum_h zb[n, e, s, h, :] @ W_O[h] + b_O

which is jaxablate's ablation point [2] (`mask.heads`, `mask.head_positions`) followed by the
attention output projection. The Triton kernel computes a tile of `out` per program and
blends z tile by tile inside the reduction over (head, d_head), so the blended z never goes to
memory: HBM traffic is z read and out written (the programs that share a row block run one
after the other, so their re-reads of z hit L2), where the unfused op also writes and re-reads
zb and its temporaries.

Precision (jaxablate's rule): the blend in float32, zb rounded to W_O's dtype (float32 or
bfloat16) as the matmul input, float32 accumulation and a float32 result; float32 dots are
IEEE (no TF32) unless `input_precision="tf32"`.

Read top-down, as Triton's tutorials: the PyTorch reference, the kernel, its autotune configs,
the launcher with explicit size checks. Triton is imported on the first launch only.

Shapes (axis names as in jaxablate.config):
    z            [n|1, batch, seq, head, d_head]   any strides; n = 1 is shared by every mask
    replacement  [batch|1, seq|1, head, d_head]    any strides; size-1 axes broadcast
    keep         [n, head] (per head) or [n, seq, head] (per head and query position)
    w_o          [head, d_head, d_model]           float32 or bfloat16
    b_o          [d_model] or None
    out          [n, batch, seq, d_model]          float32
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from jaxablate_kernels.matmul import matmul

# Launch options: FP contraction stays on (the float32 IEEE dot runs on FMAs); said explicitly
# because Triton 3.9 warns when it is left to its default, which 3.10 changes.
_LAUNCH = {"enable_fp_fusion": True}
# Tile sizes when the autotuner cannot run (the CPU interpreter) and none are given.
DEFAULT_BLOCK = (64, 64, 32)  # (BLOCK_M rows, BLOCK_N d_model columns, BLOCK_K of d_head)


# ---------------------------------------------------------------------------------------------
# 1. The PyTorch reference: what the kernel computes, written plainly (and the unfused op).


def blend_project_reference(
    z: torch.Tensor,
    replacement: torch.Tensor,
    keep: torch.Tensor,
    w_o: torch.Tensor,
    b_o: torch.Tensor | None = None,
) -> torch.Tensor:
    """The blend and the output projection in plain PyTorch (zb is materialised).

    Shapes as in the module docstring; returns float32 `[n, batch, seq, d_model]`.

    Example:
        >>> keep = torch.ones(8, 12).index_put_((torch.arange(8), torch.arange(8)),
        ...                                     torch.tensor(0.0))       # 8 single heads
        >>> out = blend_project_reference(z, mean_z, keep, w_o, b_o)    # [8, batch, seq, 768]
    """
    n, batch, seq, heads, d_head, d_model = check_shapes(z, replacement, keep, w_o, b_o)
    k = _keep_5d(keep)  # [n, 1, seq|1, head, 1]
    zb = k * z.float() + (1.0 - k) * replacement.float()[None]
    zb = zb.expand(n, batch, seq, heads, d_head).reshape(n, batch, seq, heads * d_head)
    out = matmul(zb, w_o.reshape(heads * d_head, d_model), w_o.dtype)
    return out if b_o is None else out + b_o.float()


def _keep_5d(keep: torch.Tensor) -> torch.Tensor:
    k = keep.float()
    return (k[:, None, None, :, None] if k.ndim == 2 else k[:, None, :, :, None])


# ---------------------------------------------------------------------------------------------
# 2. The Triton kernel (built on first use: `import triton` only then).


@functools.cache
def _build_kernel(interpret: bool) -> Any:
    """The jitted kernel (an interpreted one under TRITON_INTERPRET=1), and its autotuned
    wrapper (None under the interpreter, which cannot time configs)."""
    import triton
    import triton.language as tl

    def kernel(
        z_ptr, r_ptr, keep_ptr, w_ptr, b_ptr, out_ptr,
        M, E, S, H, DH, D, M_BUCKET,
        s_zn, s_ze, s_zs, s_zh, s_zd,
        s_re, s_rs, s_rh, s_rd,
        s_kn, s_ks, s_kh,
        s_wh, s_wd, s_wn,
        s_b,
        s_on, s_oe, s_os, s_od,
        HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        # One program: BLOCK_M rows (n, e, s) x BLOCK_N output columns. Consecutive programs
        # take the column blocks of one row block, so z tiles are re-read from L2, not HBM.
        n_col_blocks = (D + BLOCK_N - 1) // BLOCK_N
        pid = tl.program_id(0)
        rm = (pid // n_col_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = (pid % n_col_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok, col_ok = rm < M, rn < D
        rows = rm.to(tl.int64)  # z of a large chunk exceeds 2**31 elements
        s, e, n = rows % S, (rows // S) % E, rows // (S * E)
        z_row = n * s_zn + e * s_ze + s * s_zs
        r_row = e * s_re + s * s_rs
        k_row = n * s_kn + s * s_ks
        # tl.full, not tl.zeros: the interpreter cannot call the standard library's jitted
        # helpers when triton was imported before TRITON_INTERPRET was set.
        acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
        K_TILES = (DH + BLOCK_K - 1) // BLOCK_K
        # One flat loop over (head, d_head tile): the reduction axis head * d_head, which
        # Triton can software-pipeline (a d_head of 64 is a single tile per head).
        for t in range(0, H * K_TILES):
            h = t // K_TILES
            rk = (t % K_TILES) * BLOCK_K + tl.arange(0, BLOCK_K)
            k_ok = rk < DH
            zr_mask = row_ok[:, None] & k_ok[None, :]
            keep = tl.load(keep_ptr + k_row + h * s_kh, mask=row_ok, other=1.0).to(tl.float32)
            zt = tl.load(z_ptr + z_row[:, None] + h * s_zh + rk[None, :] * s_zd,
                         mask=zr_mask, other=0.0).to(tl.float32)
            rt = tl.load(r_ptr + r_row[:, None] + h * s_rh + rk[None, :] * s_rd,
                         mask=zr_mask, other=0.0).to(tl.float32)
            # The blend in float32, exactly jaxablate's `m * h + (1 - m) * r`.
            zb = keep[:, None] * zt + (1.0 - keep[:, None]) * rt
            w = tl.load(w_ptr + h * s_wh + rk[:, None] * s_wd + rn[None, :] * s_wn,
                        mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            if DOT_F32:
                # The CPU interpreter cannot multiply bfloat16 (it stores it as uint16:
                # triton-lang/triton#11584) and its float32 -> bfloat16 cast truncates.
                # So: round zb to bfloat16 precision to nearest even on the bits (as the
                # GPU's cvt.rn and torch do), keep it in float32, upcast w. Products of
                # bfloat16 values are exact in float32: the tensor-core result up to
                # summation order.
                bits = zb.to(tl.uint32, bitcast=True)
                bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
                a, w = bits.to(tl.float32, bitcast=True), w.to(tl.float32)
            else:
                a = zb.to(w.dtype)  # the matmul input dtype: rounds zb as jaxablate does
            acc = tl.dot(a, w, acc, input_precision=INPUT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn * s_b, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        out = out_ptr + (n * s_on + e * s_oe + s * s_os)[:, None] + rn[None, :] * s_od
        tl.store(out, acc, mask=row_ok[:, None] & col_ok[None, :])

    jitted = triton.jit(kernel)
    if interpret:
        return jitted, None
    autotuned = triton.autotune(
        configs=_configs(triton), key=["M_BUCKET", "D", "H", "DH"],
        prune_configs_by={"early_config_prune": _prune},
    )(jitted)
    return jitted, autotuned


# ---------------------------------------------------------------------------------------------
# 3. Autotune configs: Hopper-sized tiles (tensor-core friendly), pruned to the problem.

# (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps) per W_O dtype, for Hopper (sm_90): z rows
# (M) are many, d_model columns few (768 to 1600). bfloat16 tiles feed wgmma (Triton's matmul
# tutorial's Hopper set); float32 with IEEE dots runs on the FMA units, where smaller tiles
# keep shared memory (227 KB per block on H100) and registers in bounds. Each set was
# compiled ahead of time for sm_90 with this kernel (shared memory <= 210 KiB); a config that
# still fails on a device is skipped by the autotuner (OutOfResources counts as infinite).
_TILES = {
    "bfloat16": ((128, 256, 64, 3, 8), (128, 128, 64, 3, 8), (128, 128, 64, 4, 4),
                 (64, 256, 32, 4, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
                 (64, 64, 64, 4, 4)),
    "float32": ((128, 128, 32, 4, 4), (64, 256, 32, 4, 4), (128, 64, 32, 4, 4),
                (64, 128, 32, 4, 4), (64, 64, 64, 4, 4), (64, 32, 32, 5, 2),
                (32, 64, 32, 5, 2)),
}
# Rows beyond this share one autotuning key: the best tile no longer changes with M there.
_M_BUCKET_CAP = 1 << 16


def _configs(triton: Any) -> list:
    tiles = sorted({t for group in _TILES.values() for t in group})
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk},
                          num_stages=stages, num_warps=warps)
            for bm, bn, bk, stages, warps in tiles]


def _pow2_at_least(x: int, low: int = 16) -> int:
    return max(low, 1 << max(0, int(x) - 1).bit_length())


def _prune(configs: list, named_args: dict, **kwargs: Any) -> list:
    """Keep the tiles of W_O's dtype, and drop those larger than the problem (a BLOCK_K above
    d_head, a BLOCK_N above d_model, a BLOCK_M above the rows)."""
    dtype = "bfloat16" if named_args["w_ptr"].dtype == torch.bfloat16 else "float32"
    limits = {"BLOCK_M": _pow2_at_least(named_args["M"]),
              "BLOCK_N": _pow2_at_least(named_args["D"]),
              "BLOCK_K": _pow2_at_least(named_args["DH"])}
    ours = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"],
                                   c.num_stages, c.num_warps) in _TILES[dtype]]
    kept = [c for c in ours if all(c.kwargs[name] <= lim for name, lim in limits.items())]
    # Nothing fits a tiny problem: its smallest tile (loads and stores are masked).
    return kept or [min(ours, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"]
                        * c.kwargs["BLOCK_K"])]


# ---------------------------------------------------------------------------------------------
# 4. The launcher: checks sizes, devices and dtypes, then launches (autotuned on a GPU).


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`).

    Example:
        >>> os.environ["TRITON_INTERPRET"] = "1"; interpreting()
        True
    """
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def check_shapes(z, replacement, keep, w_o, b_o) -> tuple[int, ...]:
    """Check the operands against each other; returns (n, batch, seq, head, d_head, d_model).

    Raises ValueError naming the operand, the expected and the given shape.

    Example:
        >>> check_shapes(z, r, keep, w_o, b_o)
        (8, 100, 16, 12, 64, 768)
    """
    if w_o.ndim != 3:
        raise ValueError(f"w_o: expected [head, d_head, d_model], got {list(w_o.shape)}")
    heads, d_head, d_model = w_o.shape
    if keep.ndim not in (2, 3) or keep.shape[-1] != heads:
        raise ValueError(f"keep: expected [n, head] or [n, seq, head] with head={heads}, got "
                         f"{list(keep.shape)}")
    n = keep.shape[0]
    if z.ndim != 5 or z.shape[0] not in (1, n) or tuple(z.shape[3:]) != (heads, d_head):
        raise ValueError(f"z: expected [n|1, batch, seq, head, d_head] = [{n}|1, batch, seq, "
                         f"{heads}, {d_head}], got {list(z.shape)}")
    _, batch, seq = z.shape[:3]
    if keep.ndim == 3 and keep.shape[1] != seq:
        raise ValueError(f"keep: expected [n, seq, head] = [{n}, {seq}, {heads}], got "
                         f"{list(keep.shape)}")
    if (replacement.ndim != 4 or replacement.shape[0] not in (1, batch)
            or replacement.shape[1] not in (1, seq)
            or tuple(replacement.shape[2:]) != (heads, d_head)):
        raise ValueError(f"replacement: expected [batch|1, seq|1, head, d_head] = "
                         f"[{batch}|1, {seq}|1, {heads}, {d_head}], got "
                         f"{list(replacement.shape)}")
    if b_o is not None and tuple(b_o.shape) != (d_model,):
        raise ValueError(f"b_o: expected [d_model] = [{d_model}], got {list(b_o.shape)}")
    if w_o.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"w_o: expected float32 or bfloat16, got {w_o.dtype}")
    for name, t in (("z", z), ("replacement", replacement), ("keep", keep), ("b_o", b_o)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating tensor, got {t.dtype}")
    return n, batch, seq, heads, d_head, d_model


def blend_project(
    z: torch.Tensor,
    replacement: torch.Tensor,
    keep: torch.Tensor,
    w_o: torch.Tensor,
    b_o: torch.Tensor | None = None,
    *,
    block: tuple[int, int, int] | None = None,
    input_precision: str = "ieee",
) -> torch.Tensor:
    """The fused Triton kernel: `blend_project_reference`'s result without materialising zb.

    Shapes as in the module docstring; returns float32 `[n, batch, seq, d_model]`. Tensors
    must be on one CUDA device, or on the CPU under `TRITON_INTERPRET=1`. `block`:
    (BLOCK_M, BLOCK_N, BLOCK_K), each a power of two >= 16, fixes the tiles instead of
    autotuning (under the interpreter the default is `DEFAULT_BLOCK`). `input_precision`:
    "ieee" (default, exact float32) or "tf32" for float32 weights (bfloat16 ignores it).
    Keep-weights are not range-checked here (that would sync the GPU): callers pass [0, 1].

    Example:
        >>> out = blend_project(z, mean_z, keep, w_o, b_o)   # [n, batch, seq, d_model]
        >>> torch.testing.assert_close(out, blend_project_reference(z, mean_z, keep, w_o, b_o))
    """
    n, batch, seq, heads, d_head, d_model = check_shapes(z, replacement, keep, w_o, b_o)
    interpret = interpreting()
    tensors = [t for t in (z, replacement, keep, w_o, b_o) if t is not None]
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"blend_project: operands on several devices {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type != "cuda" and not interpret:
        raise ValueError(f"blend_project: Triton needs CUDA tensors, got {device}; set "
                         "TRITON_INTERPRET=1 before the first launch to run the interpreter "
                         "on the CPU")
    if input_precision not in ("ieee", "tf32"):
        raise ValueError(f"input_precision: expected 'ieee' or 'tf32', got {input_precision!r}")
    if block is not None and (len(block) != 3 or any(
            b < 16 or b & (b - 1) for b in block)):
        raise ValueError(f"block: expected three powers of two >= 16, got {block}")

    jitted, autotuned = _build_kernel(interpret)
    out = torch.empty((n, batch, seq, d_model), device=device, dtype=torch.float32)
    rows = n * batch * seq
    # Size-1 (broadcast) axes get stride 0; keep [n, head] reads as [n, 1, head].
    z_strides = [0 if z.shape[0] == 1 else z.stride(0)] + list(z.stride()[1:])
    r_strides = [0 if replacement.shape[i] == 1 else replacement.stride(i) for i in (0, 1)] \
        + list(replacement.stride()[2:])
    k_strides = ([keep.stride(0), 0, keep.stride(1)] if keep.ndim == 2 else
                 [keep.stride(0), keep.stride(1), keep.stride(2)])
    args = [z, replacement, keep, w_o, out if b_o is None else b_o, out,
            rows, batch, seq, heads, d_head, d_model,
            min(_pow2_at_least(rows), _M_BUCKET_CAP),
            *z_strides, *r_strides, *k_strides, *w_o.stride(),
            0 if b_o is None else b_o.stride(0), *out.stride()]
    flags = dict(HAS_BIAS=b_o is not None,
                 DOT_F32=interpret and w_o.dtype == torch.bfloat16,
                 # bfloat16 dots keep Triton's default (the setting is about float32).
                 INPUT_PRECISION=input_precision if w_o.dtype == torch.float32 else None)
    if block is None and autotuned is not None:
        def grid(meta):
            return (_cdiv(rows, meta["BLOCK_M"]) * _cdiv(d_model, meta["BLOCK_N"]),)
        autotuned[grid](*args, **flags, **_LAUNCH)
        return out
    bm, bn, bk = DEFAULT_BLOCK if block is None else block
    jitted[(_cdiv(rows, bm) * _cdiv(d_model, bn),)](*args, **flags, **_LAUNCH, BLOCK_M=bm,
                                                    BLOCK_N=bn, BLOCK_K=bk)
    return out


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)
