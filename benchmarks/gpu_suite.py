"""GPU benchmark suite: head-ablation sweeps by four methods on the same weights, one command.

What it measures
----------------
Random GPT-2 weights at real model dimensions (speed does not depend on the values): seeded
numpy tensors under Hugging Face's names, written once per size to a temporary folder
(config.json + model.safetensors) and loaded from there by every method, through
`jaxablate.load_gpt2` (jaxablate, and `TorchGPT2.load` for the PyTorch path) or
`transformers.GPT2LMHeadModel.from_pretrained` (TransformerLens, built offline by
`jaxablate.model.reference.tl_from_hf`). IOI-shaped prompts: `--prompts` (100) random prompts of
16 tokens, mean ablation of each head's z towards its per-position mean over a separate
reference set of the same shape (IOI's "ABC" set), scored by the logit difference of a
random correct/wrong id pair at the last position.

Sweeps: every single head (144 masks for GPT-2 small) and every pair of heads (10,296) for
gpt2-small; single heads for gpt2-medium (384) and gpt2-xl (1,200). Methods:

  TL loop        TransformerLens, one `run_with_hooks` per mask overwriting hook_z with the
                 mean, logit diff, `.cpu()` (optional: --no-tl, or absent transformer-lens);
                 float32 and bfloat16. Timed on `--tl-sample` evenly spaced masks per sweep
                 (one full forward per mask, so the time extrapolates exactly; marked *).
  torch eager    `jaxablate_kernels.sweep(..., kernel="torch")`: GPT-2 in PyTorch with the mask
                 axis folded into the batch, prefix reuse, the blend + W_O as plain PyTorch ops.
  torch+triton   the same with the fused Triton kernel (`blend_project`, autotuned).
  jaxablate      `jaxablate.sweep` (float32 with `--jax-f32-precision highest`, i.e. no TF32,
                 like PyTorch's default and the kernel's IEEE dots; and bfloat16).

Every sweep runs once untimed (compilation, autotuning: "compile s") and once timed. Each
method/size runs in its own subprocess (JAX and PyTorch never share the GPU; peak memory is
per run): peak memory is `torch.cuda.max_memory_allocated` after a reset, or JAX's
`peak_bytes_in_use` of a fresh process (one process per JAX sweep); weights included.

Model FLOPs utilisation (MFU) = model FLOPs / seconds / the GPU's peak, with
    flops_per_ablation = 2 (4 d^2 + 2 d d_mlp) n_layers batch seq + 2 d vocab batch
(a full forward of the prompts per mask, the unembedding at the read position only; a sweep
that skips the clean prefix can exceed 100%). Peaks by GPU name (`PEAKS`): bfloat16 rows
against dense bfloat16 tensor-core TFLOP/s (H100/H200 SXM 989.4), float32 rows against
non-tensor float32 TFLOP/s (H100/H200 SXM 66.9); `--peak-tflops BF16,FP32` overrides.

The fused kernel alone is also timed against the unfused op at GPT-2-small shapes
(`triton.testing.do_bench`), with TFLOP/s and GB/s from counted FLOPs and bytes.

Correctness in the same run: every method's values on 24 evenly spaced masks per sweep
against jaxablate float32 (max |diff| <= 1e-3 in float32; 1e-3 + 3% of the largest |value|
in bfloat16), printed and stored.

Usage:
    python benchmarks/gpu_suite.py                  # on a CUDA GPU: everything, JSON + table
    python benchmarks/gpu_suite.py --no-tl          # without the TransformerLens loop
    python benchmarks/gpu_suite.py --sizes gpt2-small --methods triton,jax
    python benchmarks/gpu_suite.py --cpu-smoke      # tiny model, CPU, Triton interpreter, < 1 min
Output: benchmarks/results/gpu_suite.json (gpu_suite_cpu_smoke.json with --cpu-smoke).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

# (n_layer, n_head, n_embd); vocab 50257, n_ctx 1024, d_mlp 4 d (REFERENCE.md).
SIZES = {"gpt2-small": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-xl": (48, 25, 1600)}
TINY = {"tiny": (2, 4, 32)}  # --cpu-smoke: the test suite's tiny model (vocab 101, n_ctx 64)
SEQ_LEN = 16
METHODS = ("tl", "torch", "triton", "jax")
METHOD_NAMES = {"tl": "TransformerLens loop", "torch": "PyTorch eager (batched)",
                "triton": "PyTorch + Triton", "jax": "jaxablate.sweep"}
DTYPES = ("float32", "bfloat16")
N_CHECK = 24  # masks per sweep whose values every method reports for the correctness check

# Peak TFLOP/s by GPU name (first match wins): (bfloat16 dense tensor core, float32 non-tensor).
# NVIDIA H100 datasheet (SXM5 / PCIe); H200 has H100 SXM's compute; A100 datasheet.
PEAKS = (("H100 PCIe", 756.0, 51.2), ("H100 NVL", None, None), ("H200", 989.4, 66.9),
         ("H100", 989.4, 66.9), ("A100", 312.0, 19.5))


# ---------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Head-ablation sweeps: TransformerLens loop, "
                                "PyTorch eager, PyTorch + Triton, jaxablate (module docstring)")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny model, 4 prompts, on the CPU, one process, Triton in its "
                        "interpreter: checks the script end to end in < 1 min")
    p.add_argument("--sizes", default=None,
                   help=f"comma-separated of {', '.join(SIZES)} (default: all)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated of {', '.join(METHODS)}")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="float32,bfloat16")
    p.add_argument("--no-tl", action="store_true", help="skip the TransformerLens loop")
    p.add_argument("--tl-sample", type=int, default=600,
                   help="masks per sweep the TL loop runs, evenly spaced (0 = all)")
    p.add_argument("--prompts", type=int, default=None, help="batch (default 100; 4 smoke)")
    p.add_argument("--jax-f32-precision", choices=("highest", "default"), default="highest",
                   help="jax_default_matmul_precision for float32 (default: no TF32)")
    p.add_argument("--peak-tflops", default=None,
                   help="BF16,FP32 peak TFLOP/s instead of the lookup by GPU name")
    p.add_argument("--in-process", action="store_true",
                   help="run every method in this process (default with --cpu-smoke)")
    p.add_argument("--subprocesses", action="store_true",
                   help="one process per method even with --cpu-smoke (tests that path)")
    p.add_argument("--allow-cpu", action="store_true",
                   help="run the full suite even where nvidia-smi finds no GPU (slow)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    bad = [m for m in args.methods if m not in METHODS] + \
        [d for d in args.dtypes if d not in DTYPES]
    if bad:
        p.error(f"unknown methods or dtypes: {bad}")
    if args.cpu_smoke:
        args.sizes = "tiny"
        args.in_process = not args.subprocesses
        args.prompts = args.prompts or 4
        args.tl_sample = args.tl_sample if args.tl_sample != 600 else 8
    sizes = TINY if args.cpu_smoke else SIZES
    args.sizes = list(sizes) if args.sizes is None else args.sizes.split(",")
    unknown = [s for s in args.sizes if s not in sizes]
    if unknown:
        p.error(f"unknown sizes {unknown}; choose from {list(sizes)}")
    args.prompts = args.prompts or 100
    if args.out is None:
        args.out = RESULTS_DIR / ("gpu_suite_cpu_smoke.json" if args.cpu_smoke
                                  else "gpu_suite.json")
    return args


# ---------------------------------------------------------------------------------------------
# Weights, prompts and mask sets (numpy only: the parent process never touches the GPU).


def dims_of(size: str) -> dict:
    n_layer, n_head, d = {**SIZES, **TINY}[size]
    tiny = size in TINY
    return dict(n_layer=n_layer, n_head=n_head, n_embd=d, n_inner=4 * d,
                vocab_size=101 if tiny else 50257, n_positions=64 if tiny else 1024)


def write_weights(size: str, folder: Path, seed: int) -> Path:
    """Seeded random GPT-2 weights in the HF layout (config.json + model.safetensors)."""
    from safetensors.numpy import save_file

    c = dims_of(size)
    d, dm, rng = c["n_embd"], c["n_inner"], np.random.default_rng(seed)

    def normal(*shape, std=0.02, mean=0.0):
        return (mean + std * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

    tensors = {"transformer.wte.weight": normal(c["vocab_size"], d),
               "transformer.wpe.weight": normal(c["n_positions"], d, std=0.01),
               "transformer.ln_f.weight": normal(d, std=0.1, mean=1.0),
               "transformer.ln_f.bias": normal(d)}
    for i in range(c["n_layer"]):
        for name, shape, mean, std in (
                ("ln_1.weight", (d,), 1.0, 0.1), ("ln_1.bias", (d,), 0.0, 0.02),
                ("attn.c_attn.weight", (d, 3 * d), 0.0, 0.02),
                ("attn.c_attn.bias", (3 * d,), 0.0, 0.02),
                ("attn.c_proj.weight", (d, d), 0.0, 0.02), ("attn.c_proj.bias", (d,), 0.0, 0.02),
                ("ln_2.weight", (d,), 1.0, 0.1), ("ln_2.bias", (d,), 0.0, 0.02),
                ("mlp.c_fc.weight", (d, dm), 0.0, 0.02), ("mlp.c_fc.bias", (dm,), 0.0, 0.02),
                ("mlp.c_proj.weight", (dm, d), 0.0, 0.02), ("mlp.c_proj.bias", (d,), 0.0, 0.02)):
            tensors[f"transformer.h.{i}.{name}"] = normal(*shape, std=std, mean=mean)
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_layer=c["n_layer"],
                  n_head=c["n_head"], n_embd=d, n_inner=dm, vocab_size=c["vocab_size"],
                  n_positions=c["n_positions"], n_ctx=c["n_positions"],
                  layer_norm_epsilon=1e-5, activation_function="gelu_new",
                  tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def make_prompts(vocab: int, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    correct = rng.integers(0, vocab, batch)
    return {"tokens": rng.integers(0, vocab, (batch, SEQ_LEN)).astype(np.int32),
            "reference": rng.integers(0, vocab, (batch, SEQ_LEN)).astype(np.int32),
            "correct": correct, "wrong": (correct + rng.integers(1, vocab, batch)) % vocab}


def sweeps_for(size: str) -> list[str]:
    return ["single heads", "head pairs"] if size in ("gpt2-small", "tiny") else ["single heads"]


def evenly_spaced(n: int, k: int) -> np.ndarray:
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def flops_per_ablation(c: dict, batch: int) -> int:
    d = c["n_embd"]
    per_layer = 4 * d * d + 2 * d * c["n_inner"]
    return 2 * per_layer * c["n_layer"] * batch * SEQ_LEN + 2 * d * c["vocab_size"] * batch


# ---------------------------------------------------------------------------------------------
# Workers: one method on one size (and one sweep for JAX), in a subprocess or in-process.


def _mask_set(cfg, sweep: str):
    from jaxablate import masks

    return masks.single_heads(cfg) if sweep == "single heads" else masks.head_pairs(cfg)


def _device_name() -> str:
    import torch

    from jaxablate.machine import cpu_name

    return torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def worker_tl(spec: dict, prompts: dict) -> list[dict]:
    """TransformerLens's loop: one run_with_hooks per mask, float32 and bfloat16."""
    import torch
    import transformers

    from jaxablate.model.config import GPT2Config
    from jaxablate.model.reference import tl_from_hf

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = transformers.GPT2LMHeadModel.from_pretrained(spec["folder"],
                                                      attn_implementation="eager")
    cfg = GPT2Config.from_hf(hf.config.to_dict())
    tokens = torch.as_tensor(prompts["tokens"], dtype=torch.long, device=device)
    rows = torch.arange(len(tokens), device=device)
    correct = torch.as_tensor(prompts["correct"], device=device)
    wrong = torch.as_tensor(prompts["wrong"], device=device)
    out = []
    for dtype in spec["dtypes"]:
        tl = tl_from_hf(hf.to(getattr(torch, dtype))).to(device)
        with torch.no_grad():
            _, cache = tl.run_with_cache(torch.as_tensor(prompts["reference"], device=device),
                                         names_filter=lambda n: n.endswith("attn.hook_z"))
        mean_z = [cache[f"blocks.{i}.attn.hook_z"].mean(0) for i in range(cfg.n_layers)]
        del cache

        def ablate(heads, layer):
            def hook(z, hook):
                for h in heads:
                    z[:, :, h] = mean_z[layer][:, h]
                return z
            return hook

        def one(group):
            hooks = [(f"blocks.{layer}.attn.hook_z", ablate(heads, layer))
                     for layer, heads in group.items()]
            last = tl.run_with_hooks(tokens, fwd_hooks=hooks)[:, -1].float()
            return (last[rows, correct] - last[rows, wrong]).cpu().numpy()

        for sweep in spec["sweeps"]:
            mask_set = _mask_set(cfg, sweep)
            idx = np.union1d(evenly_spaced(len(mask_set), spec["tl_sample"]),
                             check_indices(len(mask_set), spec["n_check"]))
            groups = []
            for i in idx:
                group: dict[int, list[int]] = {}
                for component, _ in mask_set.components(int(i)):
                    group.setdefault(component.index[0], []).append(component.index[1])
                groups.append(group)
            with torch.no_grad():
                one(groups[0])  # warm-up: allocator, kernels; nothing to compile
                _sync(device)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                values, seconds = _timed(lambda: np.stack([one(g) for g in groups]))
            peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
            where = np.searchsorted(idx, check_indices(len(mask_set), spec["n_check"]))
            out.append(_row(spec, sweep, "tl", dtype, len(mask_set), len(idx), seconds, None,
                            peak, values[where]))
        tl = None  # free this dtype's model before the next
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def worker_torch(spec: dict, prompts: dict) -> list[dict]:
    """The PyTorch path, eager ("torch") and/or fused ("triton"), for each dtype and sweep."""
    import torch

    import jaxablate_kernels as jk
    from jaxablate import metrics

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default, said: IEEE float32
    metric = metrics.logit_diff(prompts["correct"], prompts["wrong"])
    out = []
    for dtype in spec["dtypes"]:
        model = jk.TorchGPT2.load(spec["folder"], dtype=dtype, device=device)
        mean_z = model.mean_z(torch.as_tensor(prompts["reference"], dtype=torch.long,
                                              device=device))
        for sweep in spec["sweeps"]:
            mask_set = _mask_set(model.cfg, sweep)
            n = len(mask_set)
            chunk = jk.default_chunk_size(model, len(prompts["tokens"]), SEQ_LEN, n)
            for kernel in spec["kernels"]:
                def run(masks):
                    return jk.sweep(model, prompts["tokens"], masks, mean_z, metric, chunk,
                                    kernel=kernel)
                # Warm-up: one full chunk and one of the last chunk's size (autotuning keys).
                warm = mask_set.subset(np.arange(min(n, chunk + n % chunk)))
                _, compile_s = _timed(lambda: run(warm))
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                values, seconds = _timed(lambda: run(mask_set))
                peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
                row = _row(spec, sweep, kernel, dtype, n, n, seconds, compile_s, peak,
                           values[check_indices(n, spec["n_check"])])
                row["chunk_size"] = chunk
                out.append(row)
        model = None  # free this dtype's model before the next
    if device == "cuda":
        from jaxablate_kernels.matmul import cuda_out_dtype_supported

        for row in out:
            row["bf16_matmul_f32_out"] = cuda_out_dtype_supported()
    return out


def worker_jax(spec: dict, prompts: dict) -> list[dict]:
    """jaxablate.sweep, after an untimed warm-up with the chunk size of the full set."""
    import jax

    import jaxablate as ja
    from jaxablate import metrics
    from jaxablate.engine.sweeping import planned_chunk_size

    metric = metrics.logit_diff(prompts["correct"], prompts["wrong"])
    out = []
    for dtype in spec["dtypes"]:
        if dtype == "float32" and spec["jax_f32_precision"] == "highest":
            jax.config.update("jax_default_matmul_precision", "highest")
        model = ja.load_gpt2(spec["folder"], dtype=dtype)
        replacement = ja.mean_replacement(model, prompts["reference"])
        for sweep in spec["sweeps"]:
            mask_set = _mask_set(model.cfg, sweep)
            n = len(mask_set)
            chunk = planned_chunk_size(model, prompts["tokens"], mask_set, metric)
            # Pairs 0.0+x within and across layers: every program the full set runs.
            warm = mask_set.subset(np.arange(min(n, max(2 * chunk, 150))))
            _, compile_s = _timed(lambda: ja.sweep(model, prompts["tokens"], warm, replacement,
                                                   metric, chunk))
            values, seconds = _timed(lambda: ja.sweep(model, prompts["tokens"], mask_set,
                                                      replacement, metric, chunk))
            stats = jax.devices()[0].memory_stats() or {}
            row = _row(spec, sweep, "jax", dtype, n, n, seconds, compile_s,
                       stats.get("peak_bytes_in_use"), values[check_indices(n, spec["n_check"])])
            row["chunk_size"] = int(chunk)
            row["peak_note"] = "process peak (this sweep only when run in its own process)"
            out.append(row)
        jax.config.update("jax_default_matmul_precision", None)
    return out


def check_indices(n: int, k: int = N_CHECK) -> np.ndarray:
    """The masks every method reports values for (a subset of the TL loop's sample)."""
    return evenly_spaced(n, k)


def _row(spec, sweep, method, dtype, n_total, n_run, seconds, compile_s, peak, check) -> dict:
    return {"size": spec["size"], "sweep": sweep, "method": method, "dtype": dtype,
            "masks": n_total, "masks_run": n_run, "seconds_measured": seconds,
            "seconds": seconds * n_total / n_run, "extrapolated": n_run != n_total,
            "compile_s": compile_s, "peak_memory_bytes": peak, "device": _device_name(),
            "check_values": np.asarray(check, np.float64).tolist()}


WORKERS = {"tl": worker_tl, "torch": worker_torch, "jax": worker_jax}


def run_worker(spec: dict) -> list[dict]:
    prompts = {k: np.asarray(v) for k, v in np.load(spec["prompts"]).items()}
    return WORKERS[spec["kind"]](spec, prompts)


def launch(spec: dict, in_process: bool, workdir: Path) -> list[dict]:
    """Run one worker here or in a fresh Python process; an error becomes an error row."""
    label = f"{spec['size']}: {spec['kind']} {','.join(spec['dtypes'])} {spec['sweeps']}"
    print(f"  {label} ...", flush=True)
    start = time.perf_counter()
    try:
        if in_process:
            rows = run_worker(spec)
        else:
            path = workdir / f"spec_{time.monotonic_ns()}.json"
            path.write_text(json.dumps(spec))
            env = dict(os.environ)
            if spec["kind"] == "jax":
                env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # peak = what the sweep uses
            else:
                env["JAX_PLATFORMS"] = "cpu"  # loading weights through JAX stays off the GPU
            done = subprocess.run([sys.executable, __file__, "--worker", str(path)], env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-3000:])
            rows = json.loads(Path(str(path) + ".out").read_text())
    except Exception as error:  # keep the suite going: one method failing is a table note
        print(f"    FAILED: {type(error).__name__}: {str(error)[-1500:]}", flush=True)
        return [{"size": spec["size"], "sweeps": spec["sweeps"], "method": spec["kind"],
                 "dtypes": spec["dtypes"], "error": f"{type(error).__name__}: "
                 f"{str(error)[-1500:]}", "traceback": traceback.format_exc()[-3000:]}]
    print(f"    done in {time.perf_counter() - start:.1f} s", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# The fused kernel against the unfused op, at GPT-2-small shapes.


def worker_kernel(spec: dict, prompts: dict | None = None) -> list[dict]:
    """blend_project (Triton) vs blend_project_reference (PyTorch, zb materialised): a chunk of
    per-head masks over the prompts, float32 z, W_O in each dtype."""
    import torch

    from jaxablate_kernels import blend_project, blend_project_reference

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    n, batch, heads, d_head, d_model = spec["kernel_shape"]
    g = torch.Generator(device=device).manual_seed(0)
    z = torch.randn((n, batch, SEQ_LEN, heads, d_head), device=device, generator=g)
    r = torch.randn((1, SEQ_LEN, heads, d_head), device=device, generator=g)
    keep = torch.ones((n, heads), device=device)
    keep[torch.arange(n), torch.arange(n) % heads] = 0.0
    rows = n * batch * SEQ_LEN
    out = []
    for dtype in spec["dtypes"]:
        w = (0.02 * torch.randn((heads, d_head, d_model), device=device, generator=g)).to(
            getattr(torch, dtype))
        b = torch.zeros(d_model, device=device)
        fused = lambda: blend_project(z, r, keep, w, b)  # noqa: E731
        unfused = lambda: blend_project_reference(z, r, keep, w, b)  # noqa: E731
        diff = float((fused() - unfused()).abs().max())
        if cuda:
            import triton.testing

            t_fused = triton.testing.do_bench(fused) / 1e3
            t_unfused = triton.testing.do_bench(unfused) / 1e3
        else:  # the interpreter: exercises the code path, the times mean nothing
            t_fused, t_unfused = _timed(fused)[1], _timed(unfused)[1]
        flops = 2 * rows * heads * d_head * d_model
        nbytes = 4 * rows * heads * d_head + 4 * rows * d_model + w.numel() * w.element_size()
        out.append({"dtype": dtype, "shape": {"n": n, "batch": batch, "seq": SEQ_LEN,
                                              "head": heads, "d_head": d_head,
                                              "d_model": d_model},
                    "fused_s": t_fused, "unfused_s": t_unfused, "speedup": t_unfused / t_fused,
                    "fused_tflops": flops / t_fused / 1e12,
                    "fused_gb_per_s": nbytes / t_fused / 1e9, "max_abs_diff": diff,
                    "timed_with": "triton.testing.do_bench (median)" if cuda
                    else "one call in the Triton CPU interpreter (not a speed measurement)"})
    return out


WORKERS["kernel"] = worker_kernel


# ---------------------------------------------------------------------------------------------
# Reporting.


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict:
    from jaxablate.machine import cpu_name

    gpu = None
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "gpu": gpu, "cpu": cpu_name(), "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("jax", "jaxlib", "jax-cuda12-plugin", "equinox",
                                                "torch", "triton", "transformers",
                                                "transformer-lens", "jaxablate")},
        "git_commit": commit or None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def peaks_for(device: str, override: str | None) -> dict:
    """Peak TFLOP/s {dtype: value or None} for the device name (see PEAKS)."""
    if override:
        bf16, fp32 = (float(v) for v in override.split(","))
        return {"bfloat16": bf16, "float32": fp32, "source": "--peak-tflops"}
    for name, bf16, fp32 in PEAKS:
        if name.lower() in device.lower():
            return {"bfloat16": bf16, "float32": fp32, "source": f"PEAKS[{name!r}]"}
    return {"bfloat16": None, "float32": None, "source": f"unknown device {device!r}"}


def finish_rows(rows: list[dict], flops_each: dict, peaks: dict) -> None:
    """Rates, speed-ups over the TL loop, MFU, and correctness against jaxablate float32."""
    ok_rows = [r for r in rows if "error" not in r]
    for row in ok_rows:
        row["ablations_per_s"] = row["masks"] / row["seconds"]
        flops = flops_each[row["size"]] * row["masks"]
        row["model_tflops_per_s"] = flops / row["seconds"] / 1e12
        peak = peaks.get(row["dtype"])
        row["mfu"] = None if peak is None else row["model_tflops_per_s"] / peak
        tl = [r for r in ok_rows if r["method"] == "tl" and r["size"] == row["size"]
              and r["sweep"] == row["sweep"] and r["dtype"] == "float32"]
        row["x_tl_float32"] = row["ablations_per_s"] / tl[0]["ablations_per_s"] if tl else None
        same = [r for r in ok_rows if r["method"] == "tl" and r["size"] == row["size"]
                and r["sweep"] == row["sweep"] and r["dtype"] == row["dtype"]]
        row["x_tl_same_dtype"] = row["ablations_per_s"] / same[0]["ablations_per_s"] \
            if same else None
        ref = [r for r in ok_rows if r["method"] == "jax" and r["size"] == row["size"]
               and r["sweep"] == row["sweep"] and r["dtype"] == "float32"]
        if ref:
            want, got = np.asarray(ref[0]["check_values"]), np.asarray(row["check_values"])
            tol = 1e-3 + (0.03 * float(np.abs(want).max()) if row["dtype"] == "bfloat16" else 0)
            diff = float(np.abs(got - want).max())
            row["check"] = {"vs": "jaxablate float32", "masks": len(want),
                            "max_abs_diff": diff, "tolerance": tol, "ok": diff <= tol}
            if diff > tol:
                print(f"WARNING: {row['size']} {row['sweep']} {row['method']} {row['dtype']}: "
                      f"differs from jaxablate float32 by {diff:.2e} > {tol:.1e}",
                      file=sys.stderr)


def _fmt_s(s: float) -> str:
    return f"{s:,.0f}" if s >= 100 else f"{s:.{1 if s >= 10 else 2}f}"


def markdown_table(rows: list[dict], notes: list[str]) -> str:
    lines = ["| model | sweep | method | dtype | masks | seconds | compile s | ablations/s "
             "| × TL fp32 | MFU | peak memory | check |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | {', '.join(r['sweeps'])} | "
                         f"{METHOD_NAMES.get(r['method'], r['method'])} | "
                         f"{', '.join(r['dtypes'])} | | failed: see JSON | | | | | | |")
            continue
        seconds = _fmt_s(r["seconds"]) + (" *" if r["extrapolated"] else "")
        compile_s = "–" if r["compile_s"] is None else _fmt_s(r["compile_s"])
        x_tl = "–" if r["x_tl_float32"] is None else f"{r['x_tl_float32']:,.1f}"
        mfu = "–" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        mem = "–" if r["peak_memory_bytes"] is None else \
            f"{r['peak_memory_bytes'] / 2**30:.2f} GiB"
        check = "–" if "check" not in r else (
            f"{r['check']['max_abs_diff']:.1e} {'ok' if r['check']['ok'] else 'MISMATCH'}")
        lines.append(f"| {r['size']} | {r['sweep']} | {METHOD_NAMES[r['method']]} | "
                     f"{r['dtype']} | {r['masks']:,} | {seconds} | {compile_s} | "
                     f"{r['ablations_per_s']:,.1f} | {x_tl} | {mfu} | {mem} | {check} |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def kernel_table(rows: list[dict]) -> str:
    lines = ["| W_O dtype | rows x (head·d_head) x d_model | fused ms | unfused ms | speed-up "
             "| fused TFLOP/s | fused GB/s |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {', '.join(r['dtypes'])} | failed: see JSON | | | | | |")
            continue
        s = r["shape"]
        lines.append(f"| {r['dtype']} | {s['n'] * s['batch'] * s['seq']:,} x "
                     f"{s['head'] * s['d_head']} x {s['d_model']} | {1e3 * r['fused_s']:.3f} | "
                     f"{1e3 * r['unfused_s']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['fused_tflops']:.1f} | {r['fused_gb_per_s']:.0f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The suite.


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:  # a subprocess of the suite
        spec = json.loads(args.worker.read_text())
        rows = run_worker(spec)
        Path(str(args.worker) + ".out").write_text(json.dumps(rows))
        return 0
    if args.cpu_smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        # Tiny matmuls on shared cores: one thread, or PyTorch's threads spin on each other.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    machine = machine_info()
    print(f"# gpu_suite{' --cpu-smoke' if args.cpu_smoke else ''}: {machine['date']}, "
          f"GPU {machine['gpu']}, commit {machine['git_commit']}", flush=True)
    notes = []
    methods = list(args.methods)
    has_tl = importlib.util.find_spec("transformer_lens") is not None
    if "tl" in methods and (args.no_tl or not has_tl):
        methods.remove("tl")
        notes.append("TransformerLens loop not run: "
                     + ("--no-tl" if args.no_tl else "transformer-lens is not installed "
                        "(pip install 'transformer-lens>=3.5,<4')"))
    if not args.cpu_smoke and not machine["gpu"]:
        if not args.allow_cpu:
            print("no NVIDIA GPU found (nvidia-smi). Run on a GPU machine, or use --cpu-smoke "
                  "for the tiny end-to-end check (--allow-cpu forces the full suite here).",
                  file=sys.stderr)
            return 2
        notes.append("no GPU found (nvidia-smi): the times below are not GPU times")

    start = time.perf_counter()
    rows, kernel_rows, flops_each, setup = [], [], {}, {}
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        workdir = Path(tmp)
        for size in args.sizes:
            c = dims_of(size)
            flops_each[size] = flops_per_ablation(c, args.prompts)
            t0 = time.perf_counter()
            folder = write_weights(size, workdir / size, args.seed)
            prompts_path = workdir / f"{size}_prompts.npz"
            np.savez(prompts_path, **make_prompts(c["vocab_size"], args.prompts, args.seed))
            setup[size] = time.perf_counter() - t0
            print(f"\n{size}: {c['n_layer']} layers x {c['n_head']} heads, d_model "
                  f"{c['n_embd']}; {args.prompts} prompts x {SEQ_LEN} tokens; "
                  f"{flops_each[size] / 1e9:.1f} GFLOP per ablation (weights written in "
                  f"{setup[size]:.1f} s)", flush=True)
            base = dict(size=size, folder=str(folder), prompts=str(prompts_path),
                        sweeps=sweeps_for(size), tl_sample=args.tl_sample,
                        n_check=min(N_CHECK, args.tl_sample or N_CHECK),
                        jax_f32_precision=args.jax_f32_precision)
            if "tl" in methods:
                rows += launch({**base, "kind": "tl", "dtypes": args.dtypes}, args.in_process,
                               workdir)
            kernels = [m for m in ("torch", "triton") if m in methods]
            if kernels:
                rows += launch({**base, "kind": "torch", "dtypes": args.dtypes,
                                "kernels": kernels}, args.in_process, workdir)
            if "jax" in methods:  # one process per dtype and sweep: JAX's peak is per process
                for dtype in args.dtypes:
                    for sweep in sweeps_for(size):
                        rows += launch({**base, "kind": "jax", "dtypes": [dtype],
                                        "sweeps": [sweep]}, args.in_process, workdir)
            if "triton" in methods and size in ("gpt2-small", "tiny"):
                masks = 8 if args.cpu_smoke else 64  # the interpreter is slow; a GPU is not
                shape = (masks, args.prompts, c["n_head"], c["n_embd"] // c["n_head"],
                         c["n_embd"])
                kernel_rows += launch({**base, "kind": "kernel", "dtypes": args.dtypes,
                                       "kernel_shape": shape}, args.in_process, workdir)
            (workdir / size / "model.safetensors").unlink()

    device = next((r["device"] for r in rows if "device" in r), "unknown")
    peaks = peaks_for(device, args.peak_tflops)
    finish_rows(rows, flops_each, peaks)
    notes += [
        f"{args.prompts} prompts x {SEQ_LEN} tokens, mean ablation of head z (per-position "
        "means over a separate reference set), logit difference at the last position; "
        "random weights at each model's dimensions.",
        "seconds: steady state after an untimed run (compile s: that run: JAX compilation, "
        "Triton autotuning); * = TL loop timed on an evenly spaced sample and extrapolated "
        "in proportion (one full forward per mask).",
        (f"MFU: model FLOPs (full forward per ablation, unembedding at the read position) / s "
         f"/ peak on {device}: bfloat16 vs {peaks['bfloat16']} TFLOP/s dense tensor core, "
         f"float32 vs {peaks['float32']} TFLOP/s non-tensor ({peaks['source']}). jaxablate "
         "and the PyTorch path skip the clean prefix of each mask, so they can exceed 100%."
         if peaks["bfloat16"] is not None else
         f"MFU not computed: no peak known for {device!r} (give --peak-tflops BF16,FP32)."),
        f"float32 matmuls are IEEE float32 everywhere (PyTorch default, Triton "
        f"input_precision='ieee', JAX precision {args.jax_f32_precision!r}).",
        f"check: max |difference| from jaxablate float32 on "
        f"{min(N_CHECK, args.tl_sample or N_CHECK)} evenly spaced masks per sweep.",
    ]
    if args.cpu_smoke:
        notes.append("--cpu-smoke: a 2-layer tiny model on the CPU with Triton's interpreter; "
                     "it checks that the suite runs, its times say nothing about a GPU.")
    table = markdown_table(rows, notes)
    print("\n" + table)
    if kernel_rows:
        print("\nFused blend + W_O kernel vs the unfused PyTorch op:\n" + kernel_table(kernel_rows))
    result = {"benchmark": "gpu_suite", "machine": machine, "device": device, "peaks": peaks,
              "settings": {"cpu_smoke": args.cpu_smoke, "sizes": args.sizes, "methods": methods,
                           "dtypes": args.dtypes, "prompts": args.prompts, "seq_len": SEQ_LEN,
                           "tl_sample": args.tl_sample, "seed": args.seed,
                           "jax_f32_precision": args.jax_f32_precision,
                           "in_process": args.in_process},
              "flops_per_ablation": flops_each,
              "flops_formula": "2*(4d^2 + 2*d*d_mlp)*n_layers*batch*seq + 2*d*vocab*batch",
              "setup_s": setup, "total_s": time.perf_counter() - start, "rows": rows,
              "kernel": kernel_rows, "notes": notes, "table_markdown": table}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out} ({result['total_s']:.0f} s in all)")
    return 1 if any("error" in r for r in rows + kernel_rows) else 0


if __name__ == "__main__":
    sys.exit(main())
