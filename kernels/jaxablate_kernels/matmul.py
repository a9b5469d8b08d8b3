"""Matmuls with jaxablate's precision rule: inputs in the weights' dtype, float32 accumulation
and a float32 result (jaxablate's `GPT2._mm`: `preferred_element_type=float32`).

float32 inputs: an IEEE float32 matmul (PyTorch leaves TF32 off for matmuls by default; this
module never turns it on). bfloat16 inputs: on CUDA, cuBLAS's bfloat16 matmul with a float32
output (`torch.mm(..., out_dtype=torch.float32)`, PyTorch >= 2.8); elsewhere both operands are
upcast to float32 first, which gives the same numbers up to summation order because the
product of two bfloat16 values is exact in float32.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Whether this PyTorch build has `mm(..., out_dtype=float32)` for bfloat16 CUDA tensors;
# None until the first CUDA bfloat16 matmul asks.
_CUDA_OUT_DTYPE: bool | None = None


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """`"float32"` / `"bfloat16"` (or the torch dtype itself) as a torch dtype.

    Example:
        >>> torch_dtype("bfloat16")
        torch.bfloat16
    """
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")


def cuda_out_dtype_supported() -> bool | None:
    """Whether bfloat16 CUDA matmuls produced float32 directly (None: none has run yet).

    When False, they ran in bfloat16 with a bfloat16 result upcast afterwards (one more
    rounding than jaxablate's bfloat16 path); the GPU benchmark records this.

    Example:
        >>> matmul(a.cuda(), b.cuda(), torch.bfloat16); cuda_out_dtype_supported()
        True
    """
    return _CUDA_OUT_DTYPE


def matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`a @ b` with inputs rounded to `dtype` and a float32 result.

    a: [..., m, k]; b: [k, n] (a weight, broadcast) or [..., k, n] with a's leading axes.
    Returns float32 [..., m, n].

    Example:
        >>> out = matmul(x, w_in, torch.bfloat16)      # [batch, seq, d_mlp], float32
    """
    global _CUDA_OUT_DTYPE
    if dtype == torch.float32:
        return torch.matmul(a.float(), b.float())
    a, b = a.to(dtype), b.to(dtype)
    if not a.is_cuda:
        return torch.matmul(a.float(), b.float())
    if _CUDA_OUT_DTYPE is not False:
        try:
            out = _cuda_mm_f32(a, b)
            _CUDA_OUT_DTYPE = True
            return out
        except (RuntimeError, TypeError, NotImplementedError):
            _CUDA_OUT_DTYPE = False
    return torch.matmul(a, b).float()


def _cuda_mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mm / bmm with `out_dtype=float32`, reshaping leading axes (raises if unsupported)."""
    m, k = a.shape[-2:]
    if b.ndim == 2:
        out = torch.mm(a.reshape(-1, k), b, out_dtype=torch.float32)
        return out.reshape(*a.shape[:-1], b.shape[-1])
    lead = a.shape[:-2]
    out = torch.bmm(a.reshape(-1, m, k), b.reshape(-1, *b.shape[-2:]),
                    out_dtype=torch.float32)
    return out.reshape(*lead, m, b.shape[-1])
