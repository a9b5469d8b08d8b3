"""The fused blend + W_O Triton kernel against its PyTorch reference, and the reference against
an independent float64 NumPy computation of the same formula.

Without CUDA the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1, set by
conftest.py's fixture before the kernel is first built) on small shapes; the CUDA-only tests
(the autotuned kernel at GPT-2-small shapes) skip cleanly without a GPU.

Tolerances (`torch.testing.assert_close`, which prints the difference):
  * float32: rtol = atol = 1e-5. Kernel and reference take the same float32 blend and an IEEE
    float32 dot product; only the order of the sum over (head, d_head) differs.
  * bfloat16, interpreter: the same 1e-5. Both round the same float32 blend to bfloat16 to
    nearest even, and products of bfloat16 values are exact in float32: again only the
    order of the sum differs.
  * bfloat16, CUDA: rtol = atol = 1e-2. The GPU may contract the blend into an FMA, so an
    element of the blend can round to the neighbouring bfloat16 (2^-8 relative) before the
    tensor-core product.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from jaxablate_kernels import blend_project, blend_project_reference  # noqa: E402

blend_module = importlib.import_module("jaxablate_kernels.blend_project")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
F32_TOL = dict(rtol=1e-5, atol=1e-5)
BF16_TOL = dict(rtol=1e-2, atol=1e-2) if CUDA else F32_TOL
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (compiled, autotuned kernel)")


# Without a GPU the kernel runs in Triton's CPU interpreter (conftest.triton_interpreter).
pytestmark = pytest.mark.usefixtures("triton_interpreter")


def make_operands(n=3, batch=2, seq=5, heads=3, d_head=12, d_model=24, *, keep="frac",
                  per_position=False, shared_z=False, r_shape="shared", dtype=torch.float32,
                  seed=0):
    """Random operands of the op (module docstring of blend_project for the shapes)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((1 if shared_z else n, batch, seq, heads, d_head), generator=g)
    r_dims = {"shared": (1, 1), "per_position": (1, seq), "per_example": (batch, seq)}[r_shape]
    r = 3.0 * torch.randn(r_dims + (heads, d_head), generator=g)  # far from z: blends show
    keep_shape = (n, seq, heads) if per_position else (n, heads)
    k = {"zeros": torch.zeros(keep_shape), "ones": torch.ones(keep_shape),
         "frac": torch.rand(keep_shape, generator=g)}[keep]
    w = (torch.randn((heads, d_head, d_model), generator=g) / d_head ** 0.5).to(dtype)
    b = torch.randn((d_model,), generator=g)
    return [t.to(DEVICE) for t in (z, r, k, w, b)]


def numpy_blend_project(z, r, keep, w, b, round_bf16=False):
    """The op from its definition, float64, with explicit broadcasting (independent of the
    reference's reshapes): out[n,e,s] = sum_h (k z + (1 - k) r)[n,e,s,h] @ W[h] + b."""
    z, r, keep, w = (t.detach().float().cpu().numpy() for t in (z, r, keep, w))
    n = keep.shape[0]
    k = keep[:, None, None, :, None] if keep.ndim == 2 else keep[:, None, :, :, None]
    zb = (k * z + (np.float32(1.0) - k) * r[None]).astype(np.float32)
    zb = np.broadcast_to(zb, (n,) + zb.shape[1:])
    if round_bf16:
        zb = torch.tensor(zb).bfloat16().float().numpy()
    out = np.einsum("neshd,hdm->nesm", zb.astype(np.float64), w.astype(np.float64))
    return torch.from_numpy(out + b.detach().double().cpu().numpy()).float()


# ---------------------------------------------------------------------------------------------
# The reference against the definition.


@pytest.mark.parametrize("per_position", [False, True])
@pytest.mark.parametrize("r_shape", ["shared", "per_position", "per_example"])
def test_reference_matches_definition_float32(per_position, r_shape):
    z, r, k, w, b = make_operands(per_position=per_position, r_shape=r_shape)
    torch.testing.assert_close(blend_project_reference(z, r, k, w, b).cpu(),
                               numpy_blend_project(z, r, k, w, b), **F32_TOL)


def test_reference_rounds_the_blend_to_bfloat16():
    z, r, k, w, b = make_operands(dtype=torch.bfloat16, per_position=True)
    out = blend_project_reference(z, r, k, w, b).cpu()
    torch.testing.assert_close(out, numpy_blend_project(z, r, k, w, b, round_bf16=True),
                               **F32_TOL)
    unrounded = numpy_blend_project(z, r, k, w, b, round_bf16=False)
    assert (out - unrounded).abs().max() > 1e-3  # the rounding is there, and visible


# ---------------------------------------------------------------------------------------------
# The kernel against the reference (and, for keep 0 / 1, against the definition).


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("per_position", [False, True], ids=["per_head", "per_position"])
@pytest.mark.parametrize("keep", ["zeros", "ones", "frac"])
def test_kernel_matches_reference(keep, per_position, dtype):
    z, r, k, w, b = make_operands(keep=keep, per_position=per_position, dtype=dtype,
                                  r_shape="per_position")
    out = blend_project(z, r, k, w, b)
    tol = F32_TOL if dtype == torch.float32 else BF16_TOL
    torch.testing.assert_close(out, blend_project_reference(z, r, k, w, b), **tol)
    if keep == "frac":
        # A fraction really blends: the result is neither the clean nor the ablated one.
        ones = blend_project(z, r, torch.ones_like(k), w, b)
        zeros = blend_project(z, r, torch.zeros_like(k), w, b)
        assert (out - ones).abs().max() > 1e-2 and (out - zeros).abs().max() > 1e-2
    if dtype == torch.float32 and keep != "frac":
        # keep 1: z alone, whatever r; keep 0: r alone, whatever z (float64 definition).
        other = torch.zeros_like(z) if keep == "zeros" else torch.zeros_like(r)
        z2, r2 = (other, r) if keep == "zeros" else (z, other)
        torch.testing.assert_close(out.cpu(), numpy_blend_project(z2, r2, k, w, b), **F32_TOL)


@pytest.mark.parametrize("block", [(16, 16, 16), (32, 64, 16), (16, 16, 32), (64, 32, 64)])
def test_kernel_odd_shapes_and_tiles(block):
    """d_head 12 and d_model 40 (no powers of two), rows not a multiple of any tile, a z
    shared by all masks (the sweep's first layer) read through a permuted view, a per-example
    replacement, and no bias."""
    z, r, k, w, _ = make_operands(n=4, batch=3, seq=7, heads=3, d_head=12, d_model=40,
                                  shared_z=True, r_shape="per_example", per_position=True)
    z_perm = z.permute(0, 1, 3, 2, 4).contiguous().permute(0, 1, 3, 2, 4)  # strided view
    assert not z_perm.is_contiguous()
    out = blend_project(z_perm, r, k, w, None, block=block)
    assert out.shape == (4, 3, 7, 40) and out.dtype == torch.float32
    torch.testing.assert_close(out, blend_project_reference(z, r, k, w, None), **F32_TOL)


def test_kernel_small_d_head_bf16():
    """d_head 5 (< the smallest tile, masked), bfloat16, per-head keep."""
    z, r, k, w, b = make_operands(heads=4, d_head=5, d_model=20, dtype=torch.bfloat16)
    torch.testing.assert_close(blend_project(z, r, k, w, b),
                               blend_project_reference(z, r, k, w, b), **BF16_TOL)


# ---------------------------------------------------------------------------------------------
# Checks and import behaviour.


@pytest.mark.parametrize("op", [blend_project, blend_project_reference])
def test_shape_errors_name_the_operand(op):
    z, r, k, w, b = make_operands()
    with pytest.raises(ValueError, match=r"z: expected \[n\|1, batch, seq, head, d_head\]"):
        op(z[..., :-1], r, k, w, b)
    with pytest.raises(ValueError, match=r"keep: expected \[n, head\]"):
        op(z, r, k[:, :-1], w, b)
    with pytest.raises(ValueError, match=r"keep: expected \[n, seq, head\] = \[3, 5, 3\]"):
        op(z, r, torch.ones(3, 4, 3, device=DEVICE), w, b)
    with pytest.raises(ValueError, match=r"replacement: expected \[batch\|1, seq\|1"):
        op(z, torch.zeros(2, 2, 3, 12, device=DEVICE), k, w, b)
    with pytest.raises(ValueError, match=r"b_o: expected \[d_model\] = \[24\]"):
        op(z, r, k, w, b[:-1])
    with pytest.raises(ValueError, match="w_o: expected float32 or bfloat16"):
        op(z, r, k, w.half(), b)


def test_launcher_errors(monkeypatch):
    z, r, k, w, b = make_operands()
    with pytest.raises(ValueError, match="block: expected three powers of two >= 16"):
        blend_project(z, r, k, w, b, block=(16, 24, 16))
    with pytest.raises(ValueError, match="input_precision"):
        blend_project(z, r, k, w, b, input_precision="bf16")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="Triton needs CUDA tensors"):
        blend_project(*(t.cpu() for t in (z, r, k, w, b)))


def test_import_runs_nothing():
    """Importing the package neither imports Triton nor builds a kernel."""
    code = ("import sys, jaxablate_kernels; "
            "assert 'triton' not in sys.modules, 'triton imported at import time'")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


# ---------------------------------------------------------------------------------------------
# Autotuning configs, and compilation for Hopper without a GPU.


def test_prune_keeps_the_dtype_tiles_that_fit():
    import triton

    configs = blend_module._configs(triton)
    w = {dtype: torch.zeros(1, dtype=getattr(torch, dtype)) for dtype in ("float32", "bfloat16")}
    for dtype, tiles in blend_module._TILES.items():
        args = {"w_ptr": w[dtype], "M": 102400, "D": 768, "DH": 64}
        kept = blend_module._prune(configs, args)
        got = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_stages,
                c.num_warps) for c in kept}
        assert got == set(tiles)
        # Few rows: only tiles of at most 64 rows (float32 has some, bfloat16 some).
        few = blend_module._prune(configs, {**args, "M": 40})
        assert few and all(c.kwargs["BLOCK_M"] <= 64 for c in few) and len(few) < len(tiles)
        # Nothing fits d_head 5: the dtype's smallest tile alone.
        tiny = blend_module._prune(configs, {**args, "M": 20, "D": 8, "DH": 5})
        volume = min(t[0] * t[1] * t[2] for t in tiles)
        assert len(tiny) == 1
        assert tiny[0].kwargs["BLOCK_M"] * tiny[0].kwargs["BLOCK_N"] * tiny[0].kwargs[
            "BLOCK_K"] == volume


@pytest.mark.parametrize("dtype, tile", [("bfloat16", (64, 64, 64, 4, 4)),
                                         ("float32", (32, 64, 32, 5, 2))])
def test_kernel_compiles_for_hopper(monkeypatch, dtype, tile):
    """The compiled (not interpreted) kernel lowers to sm_90 code with Triton's bundled ptxas,
    no GPU needed; bfloat16 uses Hopper's wgmma tensor-core instructions."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    jitted, _ = blend_module._build_kernel(False)
    sizes = ("M", "E", "S", "H", "DH", "D", "M_BUCKET")
    sig = {n: "*fp32" if n.endswith("_ptr") else "i32" if n.startswith("s_") or n in sizes
           else "constexpr" for n in jitted.arg_names}
    sig["w_ptr"] = "*bf16" if dtype == "bfloat16" else "*fp32"
    bm, bn, bk, stages, warps = tile
    constants = {"HAS_BIAS": True, "DOT_F32": False, "BLOCK_M": bm, "BLOCK_N": bn,
                 "BLOCK_K": bk, "INPUT_PRECISION": "ieee" if dtype == "float32" else None}
    try:
        compiled = triton.compile(ASTSource(jitted, sig, constants),
                                  target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": warps, "num_stages": stages,
                                           "enable_fp_fusion": True})
    except RuntimeError as error:  # e.g. a Triton build without the NVIDIA backend's tools
        if "ptxas" in str(error):
            pytest.skip(f"Triton cannot compile for CUDA here: {error}")
        raise
    ptx = compiled.asm["ptx"]
    assert ".target sm_90" in ptx
    assert ("wgmma" in ptx) == (dtype == "bfloat16")
    assert compiled.metadata.shared <= 227 * 1024  # H100's shared memory per block


# ---------------------------------------------------------------------------------------------
# CUDA only: the compiled, autotuned kernel at GPT-2-small shapes.


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("per_position", [False, True], ids=["per_head", "per_position"])
def test_autotuned_kernel_gpt2_small(dtype, per_position):
    z, r, k, w, b = make_operands(n=16, batch=100, seq=16, heads=12, d_head=64, d_model=768,
                                  per_position=per_position, dtype=dtype)
    # A sum over 768 terms: float32 order differences reach a few 1e-6 of values ~1.
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else BF16_TOL
    torch.testing.assert_close(blend_project(z, r, k, w, b),
                               blend_project_reference(z, r, k, w, b), **tol)
