"""What the benchmark scripts share: the machine they ran on, the seeded random GPT-2 and
prompts they run, setup timers, progress lines, the correctness check and number formatting.

Every script (`bench_sweep.py`, `bench_patching.py`, `bench_optimal.py`, ...) prints
`banner(...)` first and stores `machine_info()` in its JSON, so each result says what it was
measured on. Scripts run as `python benchmarks/<script>.py`, which puts this folder on
`sys.path`: they import this module as `common`.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from jaxablate.machine import cpu_name
from jaxablate.model.reference import random_hf_model

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

# transformers.GPT2Config sizes. GPT2_SMALL is the benchmark; TINY (the test suite's tiny
# model, tests/conftest.py) is the smoke test (--quick, --small).
GPT2_SMALL = {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257,
              "n_positions": 1024}
TINY = {"n_layer": 2, "n_head": 4, "n_embd": 32, "vocab_size": 101, "n_positions": 64}
SEQ_LEN = 16
MATMUL_SHAPE = (2048, 768, 3072)  # [m, k] x [k, n]: one GPT-2-small MLP-in projection

VERSIONED = ("jax", "jaxlib", "equinox", "torch", "transformers", "transformer-lens", "nnsight",
             "jaxablate")


# ---------------------------------------------------------------------------------------------
# The machine.


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """What the numbers were measured on (printed by `banner` and stored in the JSON)."""
    return {
        "cpu": cpu_name(),
        "cores_visible": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in VERSIONED},
        "git_commit": _git_commit(),
        # The benchmark is often run on shared machines: the load says how quiet it was.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def banner(script: str, machine: dict, note: str = "") -> None:
    """The two header lines every benchmark prints: script, date, then the machine.

    Example:
        >>> banner("bench_sweep", machine_info(), " (--quick)")
        # bench_sweep (--quick): 2026-12-01T10:00:00+00:00
        # AMD EPYC ..., 2 cores usable (2 visible), load 0.41, jax 0.10.2 (cpu), ...
    """
    v = machine["versions"]
    load = machine["load_average_1min"]
    print(f"# {script}{note}: {machine['date']}")
    print(f"# {machine['cpu']}, {machine['cores_usable']} cores usable "
          f"({machine['cores_visible']} visible), load "
          f"{'?' if load is None else f'{load:.2f}'}, jax {v['jax']} "
          f"({machine['jax_backend']}), torch {v['torch']} ({machine['torch_threads']} "
          f"threads), transformer-lens {v['transformer-lens']}, nnsight {v['nnsight']}, "
          f"jaxablate {v['jaxablate']} @ {machine['git_commit']}", flush=True)


def matmul_gflops(repeats: int = 5) -> float:
    """The machine's float32 matmul rate (GFLOP/s): best of `repeats` jitted matmuls of
    MATMUL_SHAPE."""
    m, k, n = MATMUL_SHAPE
    a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile outside the timing
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


# ---------------------------------------------------------------------------------------------
# The model and the prompts.


def make_hf_model(dims: dict, seed: int) -> transformers.GPT2LMHeadModel:
    """A seeded random HF GPT-2 in eval mode (eager attention, no dropout); `dims` are
    GPT2Config keywords (GPT2_SMALL, TINY).

    Biases and LayerNorm parameters (zero / one after HF's init) get small noise, as in the
    test suite: a swapped bias or a dropped value bias then changes the numbers, so the
    correctness checks mean something.
    """
    config = transformers.GPT2Config(**dims, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    config._attn_implementation = "eager"  # sdpa drifts by ~1e-3 (REFERENCE.md)
    return random_hf_model(config, seed, noise=0.1)


def make_prompts(vocab: int, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random prompts tokens int32 [batch, SEQ_LEN], a reference set of the same shape (for
    means, or the corrupted run), and id pairs correct, wrong [batch] (never equal)."""
    rng = np.random.default_rng(seed)
    correct = rng.integers(0, vocab, batch)
    return {
        "tokens": rng.integers(0, vocab, (batch, SEQ_LEN), dtype=np.int32),
        "reference": rng.integers(0, vocab, (batch, SEQ_LEN), dtype=np.int32),
        "correct": correct,
        "wrong": (correct + rng.integers(1, vocab, batch)) % vocab,  # never equal to correct
    }


def evenly_spaced(n: int, k: int | None) -> np.ndarray:
    """k indices spread evenly over range(n), first and last included (all when k is None,
    0 or >= n). Every k-th mask of a layer-major set covers the layers in proportion.

    Example:
        >>> evenly_spaced(10, 3)
        array([0, 4, 9])
    """
    if not k or k >= n:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


# ---------------------------------------------------------------------------------------------
# Running and reporting.


class Timer:
    """Wall time of a setup step, printed and recorded in `record[name]` (seconds)."""

    def __init__(self, record: dict, name: str):
        self.record, self.name = record, name

    def __enter__(self):
        self.start = time.perf_counter()
        print(f"  {self.name} ...", end="", flush=True)

    def __exit__(self, *exc):
        self.record[self.name] = time.perf_counter() - self.start
        print(f" {self.record[self.name]:.1f} s", flush=True)


def progress_printer(label: str, every_s: float = 15.0) -> Callable[[int, int], None]:
    """progress(done, total) to stderr at most every `every_s` seconds (silent for short
    loops)."""
    last = time.perf_counter()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= every_s and done < total:
            print(f"    {label}: {done:,}/{total:,}", file=sys.stderr, flush=True)
            last = now
    return report


def compare(label: str, got: np.ndarray, want: np.ndarray, tolerance: float) -> dict:
    """max |got - want| (same shapes) against the tolerance, printed; a loud warning on
    stderr when it is exceeded. Returns {max_abs_diff, values_compared, tolerance, ok}."""
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    ok = diff <= tolerance
    print(f"  check {label}: max |diff| = {diff:.2e} over {got.size} values "
          f"(tolerance {tolerance:.1e}) {'OK' if ok else 'MISMATCH'}", flush=True)
    if not ok:
        bar = "!" * 78
        print(f"\n{bar}\nWARNING: {label}: results differ from TransformerLens by {diff:.3e} "
              f"> {tolerance:.1e}.\nThe timings below compare programs that do not compute "
              f"the same thing.\n{bar}\n", file=sys.stderr, flush=True)
    return {"max_abs_diff": diff, "values_compared": int(got.size), "tolerance": tolerance,
            "ok": ok}


def fmt_s(seconds: float) -> str:
    """Seconds with about three significant digits (tiny smoke-test timings stay readable)."""
    return f"{seconds:,.0f}" if seconds >= 100 else f"{seconds:.{1 if seconds >= 10 else 2}f}"
