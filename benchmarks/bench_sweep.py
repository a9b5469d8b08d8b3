"""Head-ablation sweeps: jaxablate against TransformerLens's hook loop, same weights, one process.

What it measures
----------------
One seeded random GPT-2 at GPT-2-small dimensions (12 layers, 12 heads, d_model 768, vocab
50257, n_ctx 1024; a `transformers.GPT2LMHeadModel` with eager attention) is loaded into
jaxablate (`jaxablate.load_gpt2(hf_model)`) and into TransformerLens (built offline with every
folding and centring off, as tests/conftest.py does). The same random prompts (16 tokens,
`--prompts` of them) are mean-ablated head by head, with per-position means of each head's z
over a separate random reference set of the same shape, and scored by the logit difference
of a random correct/wrong id pair at the last position. Three ways, per sweep:

  1. TransformerLens, the loop people write: one `run_with_hooks` per mask with a hook on
     `blocks.L.attn.hook_z` that overwrites the ablated heads' z with the mean (means from TL's
     own `run_with_cache` on the reference set), logit diff, `.cpu().numpy()`; under
     `torch.no_grad()`. No compile time: the first forward is run untimed as a warm-up.
  2. A naive JAX loop: one jitted `jaxablate.forward(..., mask_set.mask(i), replacement,
     positions=-1)` per mask, then the logit diff. Compile = first call - steady time per call.
  3. `jaxablate.sweep(model, tokens, masks, mean_replacement(model, reference),
     metrics.logit_diff(correct, wrong))`, once on the whole set (steady state) after a
     warm-up on the masks sharing the set's first head, run twice with the chunk size the
     sweep plans for the whole set: compile = first warm-up - second warm-up.

Two sweeps: every single head (`masks.single_heads`, 144 masks) and every pair of heads
(`masks.head_pairs`, 10,296 masks). Loops 1 and 2 cost one full forward per mask whatever the
mask, so they are timed on an evenly spaced sample (`--head-sample`, `--pair-sample`) and their
time for the whole set is extrapolated in proportion (marked `*` in the table). jaxablate runs
all 144 single heads; on pairs it runs, unless `--full-pairs` is given, every pair (i, j) whose
first head i is one of `--jax-pair-sample` evenly spaced heads (default 8 of 144: 616 pairs).
Stratified by i, that sample weighs each i by its number of pairs as the full set does and keeps
the work the sweep shares (a pair i, j across layers resumes from the stream head i alone
leaves, computed once for all of i's pairs), so its rate extrapolates to all 10,296 (marked
`*`). The loops' samples are drawn, evenly spaced, from jaxablate's, so every mask they run is
checked.

Correctness is checked in the same run: jaxablate's sweep values (and the naive loop's) must
equal TransformerLens's on the masks both ran, max |diff| <= 1e-3 in float32 (a loud warning
otherwise; with `--dtype bfloat16` the tolerance is 1e-3 + 3% of the largest |TL value|, and TL
stays float32 as the reference).

Metrics, per sweep and method: seconds (steady), compile seconds, ablations/s, the ratio of
ablations/s to TransformerLens's, and efficiency = (FLOPs the sweep needs / seconds) / the
machine's measured float32 matmul rate (a jitted [2048,768]x[768,3072] matmul, best of 5).
"FLOPs the sweep needs" is the minimal work of a full forward per ablation:

    per_layer = 3 d^2 (W_Q, W_K, W_V) + d^2 (W_O) + 2 d d_mlp (W_in, W_out)   # weights per token
    flops_per_ablation = 2 * per_layer * n_layers * batch * seq + 2 * d * vocab * batch
    flops_sweep = flops_per_ablation * n_masks

(2 FLOPs per multiply-add; the unembedding only at the read position; attention scores and
LayerNorms left out, < 1% at 16 tokens.) 22.4 GFLOP per ablation for GPT-2 small, 8 x 16 tokens.
jaxablate skips the clean prefix of each mask, so its efficiency can exceed 100%: read it as
"effective" throughput against full forwards. TransformerLens computes logits at every position,
which this count does not credit: the count is of the work the question needs, not of the work
each method chooses to do.

Output: a Markdown table (for the README) and JSON (`--out`, default
benchmarks/results/bench_sweep.json; `--quick` writes bench_sweep_quick.json) with the
machine (CPU model, cores, library versions, date), the settings, setup times and every row.

Usage:
    python benchmarks/bench_sweep.py                    # defaults: < 3 min on 2 CPU cores
    python benchmarks/bench_sweep.py --head-sample 0 --pair-sample 150 --jax-pair-sample 36
    python benchmarks/bench_sweep.py --full-pairs       # jaxablate on all 10,296 pairs
    python benchmarks/bench_sweep.py --quick            # 2-layer smoke test, < 1 min
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

import jaxablate
from jaxablate import masks, metrics
from jaxablate.engine.sweeping import planned_chunk_size
from jaxablate.machine import cpu_name
from jaxablate.model.reference import random_hf_model, tl_from_hf

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

# transformers.GPT2Config sizes. GPT2_SMALL is the benchmark; TINY (the test suite's tiny
# model, tests/conftest.py) is the --quick smoke test.
GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
TINY = dict(n_layer=2, n_head=4, n_embd=32, vocab_size=101, n_positions=64)
SEQ_LEN = 16
MATMUL_SHAPE = (2048, 768, 3072)  # [m, k] x [k, n]: one GPT-2-small MLP-in projection

# Defaults sized so that a run with no flags ends in < 3 min on 2 shared CPU cores, from
# measured costs there: a TL forward of 8 x 16 tokens ~0.4 s (the naive JAX loop is assumed
# similar: same FLOPs), jaxablate's 144-head sweep ~20 s steady + ~15 s compile (it always runs
# all 144, twice, so it alone takes ~55 s). Estimated default run: setup ~20 s, single heads
# ~15 + ~12 + ~55 s, pairs ~5 + ~4 + ~2 x 30 s (616 pairs, twice): ~3 min.
DEFAULTS = dict(head_sample=36, pair_sample=12, jax_pair_sample=8)
QUICK_DEFAULTS = dict(head_sample=None, pair_sample=None, jax_pair_sample=None)  # None: all

TOLERANCE = 1e-3
BF16_RELATIVE_TOLERANCE = 0.03


# ---------------------------------------------------------------------------------------------
# Command line, machine, matmul rate.


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Single-head and head-pair mean-ablation sweeps: jaxablate vs "
                    "TransformerLens run_with_hooks vs a naive JAX loop (see module docstring).")
    parser.add_argument("--prompts", type=int, default=None,
                        help="prompts evaluated together (batch), 16 random tokens each "
                             "(default 8; 4 with --quick)")
    parser.add_argument("--head-sample", type=int, default=None,
                        help="single heads run by TL and the naive JAX loop, evenly spaced; "
                             f"0 = all (default {DEFAULTS['head_sample']}; jaxablate always "
                             "runs all)")
    parser.add_argument("--pair-sample", type=int, default=None,
                        help="head pairs run by TL and the naive JAX loop, evenly spaced "
                             f"(default {DEFAULTS['pair_sample']}); 0 = all")
    parser.add_argument("--jax-pair-sample", type=int, default=None,
                        help="jaxablate.sweep runs every pair whose first head is one of this "
                             "many evenly spaced heads (default "
                             f"{DEFAULTS['jax_pair_sample']}); 0 = all")
    parser.add_argument("--full-pairs", action="store_true",
                        help="jaxablate.sweep runs all 10,296 pairs (twice: compile + steady)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="jaxablate's weight dtype (TransformerLens stays float32)")
    parser.add_argument("--seed", type=int, default=0, help="weights and prompts seed")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: the 2-layer tiny test model, 4 prompts, every mask")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default benchmarks/results/bench_sweep.json, "
                             "bench_sweep_quick.json with --quick)")
    args = parser.parse_args(argv)
    defaults = QUICK_DEFAULTS if args.quick else DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.prompts is None:
        args.prompts = 4 if args.quick else 8
    if args.out is None:
        args.out = RESULTS_DIR / ("bench_sweep_quick.json" if args.quick else "bench_sweep.json")
    if args.prompts < 1:
        parser.error("--prompts must be at least 1")
    for name in ("head_sample", "pair_sample", "jax_pair_sample"):
        if (getattr(args, name) or 0) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0 (0 = all)")
    return args


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """What the numbers were measured on (printed in the header and stored in the JSON)."""
    return {
        "cpu": cpu_name(),
        "cores_visible": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("jax", "jaxlib", "equinox", "torch",
                                                "transformers", "transformer-lens",
                                                "jaxablate")},
        "git_commit": _git_commit(),
        # The benchmark is often run on shared machines: the load says how quiet it was.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def matmul_gflops(repeats: int = 5) -> float:
    """The machine's float32 matmul rate (GFLOP/s): best of `repeats` jitted matmuls."""
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
# The model in three forms, and the prompts.


def make_hf_model(dims: dict, seed: int) -> transformers.GPT2LMHeadModel:
    """A seeded random HF GPT-2 in eval mode (eager attention, no dropout).

    Biases and LayerNorm parameters (zero / one after HF's init) get small noise, as in the
    test suite: a swapped bias or a dropped value bias then changes the numbers, so the
    correctness check below means something.
    """
    config = transformers.GPT2Config(**dims, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    config._attn_implementation = "eager"  # sdpa drifts by ~1e-3 (REFERENCE.md)
    return random_hf_model(config, seed, noise=0.1)


def make_prompts(vocab: int, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random prompts, a reference set of the same shape for the means, and id pairs."""
    rng = np.random.default_rng(seed)
    correct = rng.integers(0, vocab, batch)
    return {
        "tokens": rng.integers(0, vocab, (batch, SEQ_LEN), dtype=np.int32),
        "reference": rng.integers(0, vocab, (batch, SEQ_LEN), dtype=np.int32),
        "correct": correct,
        "wrong": (correct + rng.integers(1, vocab, batch)) % vocab,  # never equal to correct
    }


def flops_per_ablation(cfg: jaxablate.GPT2Config, batch: int, seq: int) -> int:
    """Minimal FLOPs of one ablated forward: weight matmuls at every token, unembedding at the
    read position only (formula in the module docstring)."""
    d = cfg.d_model
    per_layer = 3 * d * d + d * d + 2 * d * cfg.d_mlp
    return 2 * per_layer * cfg.n_layers * batch * seq + 2 * d * cfg.d_vocab * batch


# ---------------------------------------------------------------------------------------------
# Samples of a mask set.


def evenly_spaced(n: int, k: int | None) -> np.ndarray:
    """k indices spread evenly over range(n), first and last included (all when k is None,
    0 or >= n). Every k-th mask of a layer-major set covers the layers in proportion."""
    if not k or k >= n:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def heads_by_layer(mask_set: jaxablate.MaskSet, i: int) -> dict[int, list[int]]:
    """{layer: [heads]} that mask i ablates (the TL side needs one hook per layer)."""
    out: dict[int, list[int]] = {}
    for component, _ in mask_set.components(i):
        layer, head = component.index
        out.setdefault(layer, []).append(head)
    return out


def subset(mask_set: jaxablate.MaskSet, idx: np.ndarray) -> jaxablate.MaskSet:
    """The masks idx of a head-ablation set as a new MaskSet (MaskSet has no indexing)."""
    return masks.from_components(mask_set.cfg,
                                 [[c for c, _ in mask_set.components(i)] for i in idx])


# ---------------------------------------------------------------------------------------------
# The three methods. Each returns (values [n, batch], steady seconds, compile seconds or None).


def tl_mean_z(tl, reference: np.ndarray) -> list[torch.Tensor]:
    """Per-position mean of every layer's hook_z over the reference set: [seq, head, d_head]."""
    with torch.no_grad():
        _, cache = tl.run_with_cache(torch.as_tensor(reference, dtype=torch.long),
                                     names_filter=lambda name: name.endswith("attn.hook_z"))
    return [cache[f"blocks.{layer}.attn.hook_z"].mean(0) for layer in range(tl.cfg.n_layers)]


def tl_loop(tl, prompts: dict, groups: list[dict[int, list[int]]], mean_z: list[torch.Tensor],
            progress: Callable[[int, int], None]) -> tuple[np.ndarray, float, None]:
    """One `run_with_hooks` per mask, the way TransformerLens users write a sweep."""
    tokens = torch.as_tensor(prompts["tokens"], dtype=torch.long)
    rows = torch.arange(len(tokens))
    correct = torch.as_tensor(prompts["correct"], dtype=torch.long)
    wrong = torch.as_tensor(prompts["wrong"], dtype=torch.long)

    def ablate(heads: list[int], layer: int):
        def hook(z, hook):
            for h in heads:
                z[:, :, h] = mean_z[layer][:, h]
            return z
        return hook

    def one(group: dict[int, list[int]]) -> np.ndarray:
        hooks = [(f"blocks.{layer}.attn.hook_z", ablate(heads, layer))
                 for layer, heads in group.items()]
        logits = tl.run_with_hooks(tokens, fwd_hooks=hooks)
        last = logits[:, -1]
        return (last[rows, correct] - last[rows, wrong]).cpu().numpy()

    with torch.no_grad():
        one(groups[0])  # warm-up (allocator, thread pool); TL has nothing to compile
        start = time.perf_counter()
        values = []
        for i, group in enumerate(groups):
            values.append(one(group))
            progress(i + 1, len(groups))
        seconds = time.perf_counter() - start
    return np.stack(values), seconds, None


@jax.jit
def _logit_diff(logits, correct, wrong):
    rows = jnp.arange(logits.shape[0])
    return logits[rows, 0, correct] - logits[rows, 0, wrong]


def naive_jax_loop(model, prompts: dict, mask_set: jaxablate.MaskSet, idx: np.ndarray,
                   replacement, progress: Callable[[int, int], None]
                   ) -> tuple[np.ndarray, float, float]:
    """One jitted `jaxablate.forward` per mask: what a JAX user writes without `sweep`."""
    tokens = prompts["tokens"]
    correct, wrong = jnp.asarray(prompts["correct"]), jnp.asarray(prompts["wrong"])

    def one(i: int) -> np.ndarray:
        logits = jaxablate.forward(model, tokens, mask_set.mask(int(i)), replacement,
                                   positions=-1)
        return np.asarray(_logit_diff(logits, correct, wrong))

    start = time.perf_counter()
    one(idx[0])  # compiles (or reuses the program of an earlier sweep with the same shapes)
    first = time.perf_counter() - start
    start = time.perf_counter()
    values = []
    for n, i in enumerate(idx):
        values.append(one(i))
        progress(n + 1, len(idx))
    seconds = time.perf_counter() - start
    return np.stack(values), seconds, max(0.0, first - seconds / len(idx))


def jax_sweep(model, prompts: dict, mask_set: jaxablate.MaskSet, replacement,
              progress: Callable[[int, int], None]) -> tuple[np.ndarray, float, float, int]:
    """`jaxablate.sweep` on the whole set once, after a warm-up that compiles its programs.

    The warm-up runs, twice, the masks that share the set's first head (for pairs: pairs
    within a layer and across layers, so every program the full sweep uses) and at least
    one whole chunk of masks, with the chunk
    size the sweep plans for the full set: compile = first warm-up - second warm-up. Then
    the full set runs once (steady state). Returns (values, steady s, compile s, chunk).
    """
    metric = metrics.logit_diff(prompts["correct"], prompts["wrong"])
    tokens = prompts["tokens"]
    chunk = planned_chunk_size(model, tokens, mask_set, metric)
    lead = np.array([name.split("+")[0] for name in mask_set.names])
    # At least one whole chunk (a smaller set would run, and compile, a smaller chunk).
    warm = subset(mask_set, np.union1d(np.nonzero(lead == lead[0])[0], np.arange(chunk)))
    times = []
    for _ in range(2):
        start = time.perf_counter()
        jaxablate.sweep(model, tokens, warm, replacement, metric, chunk_size=chunk)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    values = jaxablate.sweep(model, tokens, mask_set, replacement, metric, chunk_size=chunk,
                             progress=progress)
    return values, time.perf_counter() - start, max(0.0, times[0] - times[1]), chunk


# ---------------------------------------------------------------------------------------------
# Reporting.


def progress_printer(label: str, every_s: float = 15.0) -> Callable[[int, int], None]:
    """Progress to stderr at most every `every_s` seconds (silent for short loops)."""
    last = time.perf_counter()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= every_s and done < total:
            print(f"    {label}: {done:,}/{total:,}", file=sys.stderr, flush=True)
            last = now
    return report


def make_row(sweep: str, method: str, n_total: int, n_run: int, measured_s: float,
             compile_s: float | None, scale: float, flops_each: int, peak_gflops: float) -> dict:
    """One table row; `scale` turns the measured time into the time for all n_total masks."""
    seconds = measured_s * scale
    rate = n_total / seconds
    return {
        "sweep": sweep,
        "method": method,
        "masks": n_total,
        "masks_run": n_run,
        "extrapolated": n_run != n_total,
        "seconds_measured": measured_s,
        "seconds": seconds,
        "compile_s": compile_s,
        "ablations_per_s": rate,
        "x_tl": None,  # filled in once the sweep's TL row is known
        "gflops_per_s": flops_each * rate / 1e9,
        "efficiency": flops_each * rate / 1e9 / peak_gflops,
    }


def compare(label: str, got: np.ndarray, want: np.ndarray, tolerance: float) -> dict:
    """max |got - want| against the tolerance; a loud warning when it is exceeded."""
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


def _fmt_s(seconds: float) -> str:
    """Seconds with about three significant digits (tiny --quick timings stay readable)."""
    return f"{seconds:,.0f}" if seconds >= 100 else f"{seconds:.{1 if seconds >= 10 else 2}f}"


def markdown_table(rows: list[dict]) -> str:
    def seconds(row):
        return _fmt_s(row["seconds"]) + (" *" if row["extrapolated"] else "")

    def masks_cell(row):
        return f"{row['masks']:,}" + (f" ({row['masks_run']:,} run)" if row["extrapolated"]
                                      else "")

    lines = ["| sweep | method | masks | seconds | compile s | ablations/s | × TL | efficiency |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        compile_s = "–" if row["compile_s"] is None else _fmt_s(row["compile_s"])
        lines.append(f"| {row['sweep']} | {row['method']} | {masks_cell(row)} | {seconds(row)} "
                     f"| {compile_s} | {row['ablations_per_s']:,.1f} | {row['x_tl']:.1f} "
                     f"| {100 * row['efficiency']:.1f}% |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The benchmark.


class Timer:
    """Wall time of a setup step, recorded under a name."""

    def __init__(self, record: dict, name: str):
        self.record, self.name = record, name

    def __enter__(self):
        self.start = time.perf_counter()
        print(f"  {self.name} ...", end="", flush=True)

    def __exit__(self, *exc):
        self.record[self.name] = time.perf_counter() - self.start
        print(f" {self.record[self.name]:.1f} s", flush=True)


def run_sweep(name: str, mask_set: jaxablate.MaskSet, loop_idx: np.ndarray,
              jax_idx: np.ndarray, ctx: dict) -> tuple[list[dict], dict]:
    """TL and the naive loop on loop_idx, jaxablate.sweep on jax_idx (loop_idx must be a
    subset): rows for the whole set (extrapolated where sampled) and the correctness checks."""
    model, tl, prompts = ctx["model"], ctx["tl"], ctx["prompts"]
    n_total = len(mask_set)
    flops_each, peak = ctx["flops_each"], ctx["gflops"]
    print(f"\n{name}: {n_total:,} masks; TL and naive loop run {len(loop_idx):,}, "
          f"jaxablate.sweep runs {len(jax_idx):,}", flush=True)

    groups = [heads_by_layer(mask_set, i) for i in loop_idx]
    tl_values, tl_s, _ = tl_loop(tl, prompts, groups, ctx["mean_z"],
                                 progress_printer("TransformerLens"))
    print(f"  TransformerLens loop: {tl_s:.1f} s for {len(loop_idx)}", flush=True)
    naive_values, naive_s, naive_compile = naive_jax_loop(
        model, prompts, mask_set, loop_idx, ctx["replacement"], progress_printer("naive JAX"))
    print(f"  naive JAX loop: {naive_s:.1f} s (+ compile {naive_compile:.1f} s)", flush=True)

    jax_set = mask_set if len(jax_idx) == n_total else subset(mask_set, jax_idx)
    sweep_values, sweep_s, sweep_compile, chunk = jax_sweep(
        model, prompts, jax_set, ctx["replacement"], progress_printer("jaxablate.sweep"))
    print(f"  jaxablate.sweep: {sweep_s:.1f} s (+ compile {sweep_compile:.1f} s)", flush=True)

    # Extrapolation in proportion to the masks run: exact for the loops (one full forward
    # per mask); for the sweep, its pair sample is stratified by first head (pair_samples).
    loop_scale = n_total / len(loop_idx)
    sweep_scale = n_total / len(jax_idx)
    rows = [
        make_row(name, "TransformerLens run_with_hooks loop", n_total, len(loop_idx), tl_s,
                 None, loop_scale, flops_each, peak),
        make_row(name, "naive JAX loop (jitted forward per mask)", n_total, len(loop_idx),
                 naive_s, naive_compile, loop_scale, flops_each, peak),
        make_row(name, "jaxablate.sweep", n_total, len(jax_idx), sweep_s, sweep_compile,
                 sweep_scale, flops_each, peak),
    ]
    for row in rows:
        row["x_tl"] = row["ablations_per_s"] / rows[0]["ablations_per_s"]
    rows[2]["chunk_size"] = chunk

    # Rows of the sweep's output that the loops also ran (loop_idx is a subset of jax_idx).
    where = np.searchsorted(jax_idx, loop_idx)
    tolerance = ctx["tolerance"](tl_values)
    checks = {
        "masks_compared": len(loop_idx),
        "sweep_vs_tl": compare(f"{name}: jaxablate.sweep vs TL", sweep_values[where],
                               tl_values, tolerance),
        "naive_vs_tl": compare(f"{name}: naive JAX loop vs TL", naive_values, tl_values,
                               tolerance),
    }
    return rows, checks


def nested_samples(n_total: int, loop_k: int) -> tuple:
    """jaxablate runs every mask; the loops run `loop_k` evenly spaced ones of them."""
    jax_idx = np.arange(n_total)
    return jax_idx[evenly_spaced(n_total, loop_k)], jax_idx


def pair_samples(pairs, loop_k: int, first_heads: int | None) -> tuple:
    """jaxablate's pair sample: every pair (i, j) whose first head i is one of `first_heads`
    evenly spaced heads. Stratified by i, it weighs each i by its number of pairs, as the full
    set does, and keeps the sharing the sweep exploits (all pairs of i share i's prefix), so
    its rate extrapolates to the full set. The loops' sample is drawn evenly from it."""
    first = np.array([name.split("+")[0] for name in pairs.names])
    heads = list(dict.fromkeys(first))
    if first_heads is None or first_heads == 0 or first_heads >= len(heads):
        jax_idx = np.arange(len(pairs))
    else:
        chosen = {heads[i] for i in evenly_spaced(len(heads), first_heads)}
        jax_idx = np.nonzero(np.isin(first, list(chosen)))[0]
    loop_idx = jax_idx[evenly_spaced(len(jax_idx), loop_k)]
    return loop_idx, jax_idx


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dims = TINY if args.quick else GPT2_SMALL
    machine = machine_info()
    print(f"# bench_sweep{' (--quick)' if args.quick else ''}: {machine['date']}")
    print(f"# {machine['cpu']}, {machine['cores_usable']} cores usable, jax "
          f"{machine['versions']['jax']} ({machine['jax_backend']}), torch "
          f"{machine['versions']['torch']} ({machine['torch_threads']} threads), "
          f"transformer-lens {machine['versions']['transformer-lens']}, "
          f"jaxablate {machine['versions']['jaxablate']} @ {machine['git_commit']}", flush=True)

    setup: dict[str, float] = {}
    print("setup:")
    with Timer(setup, "matmul rate"):
        gflops = matmul_gflops()
    with Timer(setup, "HF random model"):
        hf_model = make_hf_model(dims, args.seed)
    with Timer(setup, "TransformerLens model"):
        tl = tl_from_hf(hf_model)
    with Timer(setup, "jaxablate model"):
        model = jaxablate.load_gpt2(hf_model, dtype=args.dtype)
    del hf_model  # TL and jaxablate hold their own copies
    cfg = model.cfg
    prompts = make_prompts(cfg.d_vocab, args.prompts, args.seed)
    with Timer(setup, "TL means (run_with_cache)"):
        mean_z = tl_mean_z(tl, prompts["reference"])
    with Timer(setup, "jaxablate mean_replacement"):
        replacement = jaxablate.mean_replacement(model, prompts["reference"])
    print(f"matmul rate: {gflops:.1f} GFLOP/s (float32 {MATMUL_SHAPE[0]}x{MATMUL_SHAPE[1]} @ "
          f"{MATMUL_SHAPE[1]}x{MATMUL_SHAPE[2]}, best of 5)")

    batch = args.prompts
    flops_each = flops_per_ablation(cfg, batch, SEQ_LEN)
    print(f"model: {cfg.n_layers} layers, {cfg.n_heads} heads, d_model {cfg.d_model}, vocab "
          f"{cfg.d_vocab}, jaxablate dtype {args.dtype}; {batch} prompts x {SEQ_LEN} tokens; "
          f"{flops_each / 1e9:.3f} GFLOP per ablation", flush=True)

    def tolerance(tl_values: np.ndarray) -> float:
        if args.dtype == "float32":
            return TOLERANCE
        return TOLERANCE + BF16_RELATIVE_TOLERANCE * float(np.abs(tl_values).max())

    ctx = dict(model=model, tl=tl, prompts=prompts, mean_z=mean_z, replacement=replacement,
               flops_each=flops_each, gflops=gflops, tolerance=tolerance)

    heads = masks.single_heads(cfg)
    head_loop_idx, head_jax_idx = nested_samples(len(heads), args.head_sample)
    pairs = masks.head_pairs(cfg)
    jax_pair_k = None if args.full_pairs else args.jax_pair_sample
    pair_loop_idx, pair_jax_idx = pair_samples(pairs, args.pair_sample, jax_pair_k)
    covered = np.unique(pairs.first_layers()[pair_jax_idx])
    print(f"pair sample: first layers covered {covered.min()}..{covered.max()} "
          f"({len(covered)} of {cfg.n_layers})")

    rows, checks = [], {}
    for name, mask_set, loop_idx, jax_idx in (
        ("single heads", heads, head_loop_idx, head_jax_idx),
        ("head pairs", pairs, pair_loop_idx, pair_jax_idx),
    ):
        sweep_rows, sweep_checks = run_sweep(name, mask_set, loop_idx, jax_idx, ctx)
        rows += sweep_rows
        checks[name] = sweep_checks

    print("\n" + markdown_table(rows))
    print(f"\n{batch} prompts x {SEQ_LEN} tokens, mean ablation of head z, logit diff at the "
          f"last position; jaxablate {args.dtype}, TransformerLens float32. * extrapolated "
          "in proportion from the masks run (jaxablate's pair sample: all pairs of evenly "
          "spaced first heads). efficiency = minimal "
          f"forward FLOPs / time / measured matmul rate ({gflops:.0f} GFLOP/s).")
    if all(c[k]["ok"] for c in checks.values() for k in ("sweep_vs_tl", "naive_vs_tl")):
        print("correctness: jaxablate.sweep and the naive JAX loop equal TransformerLens "
              "on every mask both ran.")
    else:
        print("correctness: MISMATCH against TransformerLens (see warnings above).")

    result = {
        "benchmark": "bench_sweep",
        "machine": machine,
        "settings": {
            "quick": args.quick, "seed": args.seed, "dtype": args.dtype, "tl_dtype": "float32",
            "prompts": batch, "seq_len": SEQ_LEN, "replacement": "mean (per position)",
            "metric": "logit_diff at the last position",
            "model": {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                      "d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab,
                      "n_ctx": cfg.n_ctx},
            "head_sample": len(head_loop_idx), "pair_sample": len(pair_loop_idx),
            "jax_pair_sample": len(pair_jax_idx), "full_pairs": args.full_pairs,
        },
        "matmul_gflops": gflops,
        "flops_per_ablation": flops_each,
        "flops_formula": "2*(3d^2 + d^2 + 2*d*d_mlp)*n_layers*batch*seq + 2*d*vocab*batch",
        "setup_s": setup,
        "rows": rows,
        "correctness": checks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
