"""Activation patching of every head at every position: jaxablate against TransformerLens.

What it measures
----------------
The seeded random GPT-2 at GPT-2-small dimensions of `bench_sweep.py` (12 layers, 12 heads,
d_model 768, vocab 50257; both scripts build it with `common.py`), loaded into jaxablate and
into TransformerLens, and 8 random prompt pairs of 16 tokens (`--prompts`): the clean prompts
and the corrupted ones are independent random tokens, and the metric is the logit difference
of a random correct/wrong id pair per example at the last position, averaged over the batch.
Denoising: every [layer, pos, head] patch (12 x 16 x 12 = 2,304) copies one head's z
(`attn.hook_z`) at one position from the clean run into the corrupted run. Methods:

  1. TransformerLens's own `transformer_lens.patching.get_act_patch_attn_head_out_by_pos(tl,
     corrupted, clean_cache, metric)`: one `run_with_hooks` and one `.item()` per patch (the
     headline comparison). With `--tl-patches N` every TL row runs a seeded random subset of at
     least N patches (TL's `index_df=` argument: the same function, the same loop): whole
     hand-batched forwards (K consecutive patches of a layer), as many in every layer, so that
     rows 2 and 3 run full forwards with the full set's spread of start layers. Their time for
     all 2,304 is extrapolated in proportion (rows 1-2: one full forward per patch or per K,
     whatever the patch; row 3: the same layers in proportion; marked `*`).
  2. TransformerLens hand-batched (`--tl-batch K`, default 16; 0 skips rows 2 and 3): the
     patches of one layer K at a time, stacked in the batch dimension (K patches x 8 prompts
     per `run_with_hooks`), one hook on that layer's hook_z writing patch k's clean z into rows
     k*8 .. k*8+7; one `.cpu()` per forward. What a careful TL user writes.
  3. As 2, and each forward resumes at the patched layer from the corrupted run's cached
     `blocks.L.hook_resid_pre` (`run_with_hooks(resid, start_at_layer=L)`): the layers below
     the patch are not recomputed. The strongest plain TL code we know of.
  4. `jaxablate.patching.attn_head_out_by_pos(model, corrupted, clean, metric)` on all 2,304
     patches, with the chunk size the sweep plans for them. Before it, a warm-up sweep of one
     whole chunk of the same masks (`jaxablate.sweep` with `patch_replacement(model, clean)` and
     that chunk size; the start layer is data, so it compiles every program the full run uses)
     runs twice: compile = first warm-up - second warm-up. The timed run includes jaxablate's
     own clean forward for the patch values; TL's clean cache is built outside its timing.

TL runs under `torch.no_grad()` in float32, its progress bar off (`TQDM_DISABLE=1`); for each TL
method one forward is run untimed first (allocator, thread pool; TL has nothing to compile).

Correctness, in the same run: every method's values must equal TL's `get_act_patch_...` values
on every patch both ran. Tolerance: float32 rounding in a logit grows with the logits'
magnitude, not with the difference of two of them, so the bound is relative to the largest
|logit| read, with a floor of 1:

    tolerance = 1e-5 * max(1, max |logit[b, -1, correct or wrong]| of the unpatched corrupted run)

Derivation: float32 eps is 1.2e-7, and float32 forwards that differ only in summation order
agree to ~1e-7 of the logits' scale (TL vs jaxablate, measured on 12 patches at GPT-2-small
dimensions: max |diff| 2.7e-7 on logits up to 2.4), so 1e-5 leaves ~100x headroom. It is
tighter than a flat 1e-4 because at these random weights a patch's effect on the metric
(value - unpatched metric) is small, typically ~1e-3 (the clean and corrupted metrics differ by
~0.02): 1e-4 would be a tenth of a typical effect, loose enough to miss a wrong patch wherever
the effects are small. The report counts the compared patches whose |effect| exceeds the tolerance (those a
missing or misplaced patch would fail on) and gives max |diff| / max |effect|. The script exits
1 after writing the JSON if any check fails.

Output: a Markdown table (method | patches | seconds | compile s | patches/s | x TL) and JSON
(`--out`, default benchmarks/results/bench_patching.json; `--small` writes
bench_patching_small.json) with the machine, settings, setup times, rows and checks.

Usage:
    python benchmarks/bench_patching.py                   # TL on all 2,304: ~25-30 min, 2 cores
    python benchmarks/bench_patching.py --tl-patches 384  # TL on 2 forwards/layer: ~8 min
    python benchmarks/bench_patching.py --small           # 2-layer smoke test, < 1 min
"""

from __future__ import annotations

import os

# tqdm reads TQDM_* when it is imported (transformers imports it): set before any import.
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import (
    GPT2_SMALL,
    RESULTS_DIR,
    SEQ_LEN,
    TINY,
    Timer,
    banner,
    compare,
    fmt_s,
    machine_info,
    make_hf_model,
    make_prompts,
    progress_printer,
)
from transformer_lens import patching as tl_patching

import jaxablate
from jaxablate import masks, metrics, patching
from jaxablate.engine.sweeping import planned_chunk_size
from jaxablate.model.reference import tl_from_hf

RELATIVE_TOLERANCE = 1e-5  # times max(1, largest |logit| read): module docstring
TL_LOOP = "TL get_act_patch_attn_head_out_by_pos"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Every [layer, pos, head] activation patch of hook_z: TransformerLens's "
                    "get_act_patch_attn_head_out_by_pos (and hand-batched TL) vs "
                    "jaxablate.patching.attn_head_out_by_pos (see module docstring).")
    parser.add_argument("--prompts", type=int, default=8,
                        help="prompt pairs (batch), 16 random tokens each (default 8)")
    parser.add_argument("--tl-patches", type=int, default=0,
                        help="patches TL runs, a seeded random subset, extrapolated to all "
                             "(default 0 = all); rounded up to whole hand-batched forwards, "
                             "the same number per layer (tl_subset)")
    parser.add_argument("--tl-batch", type=int, default=16,
                        help="patches stacked per forward in the hand-batched TL rows "
                             "(default 16; 0 skips those rows)")
    parser.add_argument("--seed", type=int, default=0, help="weights, prompts and subset seed")
    parser.add_argument("--small", action="store_true",
                        help="smoke test: the 2-layer, 4-head tiny test model (128 patches)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default benchmarks/results/bench_patching.json, "
                             "bench_patching_small.json with --small)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS_DIR / ("bench_patching_small.json" if args.small
                                  else "bench_patching.json")
    if args.prompts < 1:
        parser.error("--prompts must be at least 1")
    if args.tl_patches < 0:
        parser.error("--tl-patches must be >= 0 (0 = all)")
    if args.tl_batch < 0:
        parser.error("--tl-batch must be >= 0 (0 = skip the hand-batched rows)")
    return args


# ---------------------------------------------------------------------------------------------
# The patches and the metric.


def patch_grid(n_layers: int, seq: int, n_heads: int) -> np.ndarray:
    """Every patch as (layer, pos, head), [n, 3], in the order of the [layer, pos, head]
    result flattened (TL's `make_df_from_ranges` order)."""
    return np.array(list(itertools.product(range(n_layers), range(seq), range(n_heads))),
                    dtype=np.int64)


def tl_subset(patches: np.ndarray, k: int, per_forward: int, seed: int) -> np.ndarray:
    """The patches TL runs (indices, sorted): all when k is 0 or >= their number. Otherwise a
    seeded random sample of whole hand-batched forwards (runs of `per_forward` consecutive
    patches of one layer), the same number in every layer, at least k patches in all; so the
    hand-batched rows run full forwards whose start layers are spread as the full set's, and
    their time extrapolates in proportion as the loop's does. With per_forward 0, k random
    patches."""
    n = len(patches)
    if not k or k >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if not per_forward:
        return np.sort(rng.choice(n, k, replace=False))
    layers = np.unique(patches[:, 0])
    per_layer = -(-k // (per_forward * len(layers)))  # forwards per layer, rounded up
    chosen = []
    for layer in layers:
        idx = np.nonzero(patches[:, 0] == layer)[0]
        runs = [idx[i:i + per_forward] for i in range(0, len(idx), per_forward)]
        for r in rng.choice(len(runs), min(per_layer, len(runs)), replace=False):
            chosen.append(runs[r])
    return np.sort(np.concatenate(chosen))


def tl_logit_diff(correct: torch.Tensor, wrong: torch.Tensor) -> Callable:
    """TL's patching_metric: the batch mean of logit[correct] - logit[wrong] at the last
    position (`jaxablate.metrics.logit_diff(correct, wrong)` averaged over the batch)."""
    rows = torch.arange(len(correct))

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        return (last[rows, correct] - last[rows, wrong]).mean()
    return metric


# ---------------------------------------------------------------------------------------------
# The methods. Each returns (values [n] in the order of `patches`, steady s, compile s or None).


def tl_loop(tl, corrupted: torch.Tensor, clean_cache, metric: Callable,
            patches: np.ndarray) -> tuple[np.ndarray, float, None]:
    """TL's own get_act_patch_attn_head_out_by_pos, on the rows of `patches` (index_df)."""
    def run(rows: np.ndarray) -> torch.Tensor:
        frame = pd.DataFrame(rows, columns=["layer", "pos", "head"])
        # index_axis_names=None: the partial's default would clash with index_df (TL asserts).
        return torch.as_tensor(tl_patching.get_act_patch_attn_head_out_by_pos(
            tl, corrupted, clean_cache, metric, index_axis_names=None, index_df=frame))

    with torch.no_grad():
        run(patches[:1])  # warm-up
        start = time.perf_counter()
        run(patches[:1])  # a second one, for the estimate printed below
        each = time.perf_counter() - start
        print(f"  {TL_LOOP}: {len(patches):,} patches, ~{each * len(patches):.0f} s "
              f"expected ({each:.2f} s per forward) ...", flush=True)
        start = time.perf_counter()
        values = run(patches).cpu().numpy()
        seconds = time.perf_counter() - start
    return values, seconds, None


def tl_batched(tl, corrupted: torch.Tensor, clean_cache, correct: torch.Tensor,
               wrong: torch.Tensor, patches: np.ndarray, per_forward: int, resume: bool,
               progress: Callable[[int, int], None]) -> tuple[np.ndarray, float, None]:
    """Hand-batched TL: `per_forward` patches of one layer per run_with_hooks, stacked in the
    batch (patch k on rows k*batch .. (k+1)*batch-1); with `resume`, each forward starts at
    the patched layer from the corrupted run's cached resid_pre (start_at_layer)."""
    batch = len(corrupted)
    n_layers = tl.cfg.n_layers
    resid = None
    if resume:
        with torch.no_grad():
            _, cache = tl.run_with_cache(
                corrupted, names_filter=lambda name: name.endswith("hook_resid_pre"))
        resid = [cache[f"blocks.{layer}.hook_resid_pre"] for layer in range(n_layers)]
    clean_z = [clean_cache[f"blocks.{layer}.attn.hook_z"] for layer in range(n_layers)]
    # One forward's worth of patches each: (indices into patches, layer), a layer at a time.
    jobs = [(idx[k:k + per_forward], layer) for layer in range(n_layers)
            for idx in [np.nonzero(patches[:, 0] == layer)[0]]
            for k in range(0, len(idx), per_forward)]

    def one(idx: np.ndarray, layer: int) -> np.ndarray:
        m = len(idx)
        pos = torch.as_tensor(patches[idx, 1])
        head = torch.as_tensor(patches[idx, 2])
        src = clean_z[layer][:, pos, head].transpose(0, 1)  # [m, batch, d_head]
        k = torch.arange(m)

        def hook(z, hook):
            # z [m * batch, seq, head, d_head]; the view shares z's memory.
            z.view(m, batch, *z.shape[1:])[k, :, pos, head] = src
            return z

        rows = torch.arange(m * batch)
        if resume:
            logits = tl.run_with_hooks(resid[layer].repeat(m, 1, 1), start_at_layer=layer,
                                       fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
        else:
            logits = tl.run_with_hooks(corrupted.repeat(m, 1),
                                       fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
        last = logits[:, -1]
        diff = last[rows, correct.repeat(m)] - last[rows, wrong.repeat(m)]
        return diff.view(m, batch).mean(1).cpu().numpy()

    values = np.empty(len(patches), np.float32)
    with torch.no_grad():
        one(*jobs[0])  # warm-up at the full batch of per_forward patches
        start = time.perf_counter()
        done = 0
        for idx, layer in jobs:
            values[idx] = one(idx, layer)
            done += len(idx)
            progress(done, len(patches))
        seconds = time.perf_counter() - start
    return values, seconds, None


def jax_patching(model, corrupted: np.ndarray, clean: np.ndarray, metric,
                 patches: np.ndarray, progress: Callable[[int, int], None]
                 ) -> tuple[np.ndarray, float, float, int]:
    """`jaxablate.patching.attn_head_out_by_pos` on every patch, after a warm-up that compiles
    its programs (module docstring). Returns (values [layer * pos * head], steady s,
    compile s, chunk size)."""
    cfg, seq = model.cfg, corrupted.shape[1]
    # The masks attn_head_out_by_pos builds: one "L.h@p" component each, [layer, pos, head].
    groups = [[f"{layer}.{head}@{pos}"] for layer, pos, head in patches]
    chunk = planned_chunk_size(model, corrupted,
                               masks.from_components(cfg, groups, seq_len=seq), metric)
    # One whole chunk (a smaller set would run, and compile, a smaller chunk). Single-component
    # masks have no parents, and the start layer is data: one program for every chunk.
    warm = masks.from_components(cfg, groups[:chunk], seq_len=seq)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        jaxablate.sweep(model, corrupted, warm, jaxablate.patch_replacement(model, clean),
                        metric, chunk_size=chunk)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    table = patching.attn_head_out_by_pos(model, corrupted, clean, metric, chunk_size=chunk,
                                          progress=progress)
    seconds = time.perf_counter() - start
    return np.asarray(table).reshape(-1), seconds, max(0.0, times[0] - times[1]), chunk


# ---------------------------------------------------------------------------------------------
# Reporting.


def make_row(method: str, n_total: int, n_run: int, measured_s: float,
             compile_s: float | None) -> dict:
    """One table row; the time for all n_total patches is extrapolated in proportion."""
    seconds = measured_s * n_total / n_run
    return {"method": method, "patches": n_total, "patches_run": n_run,
            "extrapolated": n_run != n_total, "seconds_measured": measured_s,
            "seconds": seconds, "compile_s": compile_s, "patches_per_s": n_total / seconds,
            "x_tl": None}


def markdown_table(rows: list[dict]) -> str:
    lines = ["| method | patches | seconds | compile s | patches/s | × TL |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        patches = f"{row['patches']:,}" + (f" ({row['patches_run']:,} run)"
                                           if row["extrapolated"] else "")
        seconds = fmt_s(row["seconds"]) + (" *" if row["extrapolated"] else "")
        compile_s = "–" if row["compile_s"] is None else fmt_s(row["compile_s"])
        lines.append(f"| {row['method']} | {patches} | {seconds} | {compile_s} "
                     f"| {row['patches_per_s']:,.1f} | {row['x_tl']:.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The benchmark.


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dims = TINY if args.small else GPT2_SMALL
    machine = machine_info()
    banner("bench_patching", machine, " (--small)" if args.small else "")

    setup: dict[str, float] = {}
    print("setup:")
    with Timer(setup, "HF random model"):
        hf_model = make_hf_model(dims, args.seed)
    with Timer(setup, "TransformerLens model"):
        tl = tl_from_hf(hf_model)
    with Timer(setup, "jaxablate model"):
        model = jaxablate.load_gpt2(hf_model)
    del hf_model  # TL and jaxablate hold their own copies
    cfg = model.cfg
    prompts = make_prompts(cfg.d_vocab, args.prompts, args.seed)
    clean, corrupted = prompts["tokens"], prompts["reference"]
    clean_t = torch.as_tensor(clean, dtype=torch.long)
    corrupted_t = torch.as_tensor(corrupted, dtype=torch.long)
    correct_t = torch.as_tensor(prompts["correct"], dtype=torch.long)
    wrong_t = torch.as_tensor(prompts["wrong"], dtype=torch.long)
    tl_metric = tl_logit_diff(correct_t, wrong_t)
    jax_metric = metrics.logit_diff(prompts["correct"], prompts["wrong"])
    with Timer(setup, "TL clean cache (run_with_cache)"), torch.no_grad():
        _, clean_cache = tl.run_with_cache(clean_t)
        last = tl(corrupted_t)[:, -1]
    rows_b = torch.arange(args.prompts)
    read = torch.stack([last[rows_b, correct_t], last[rows_b, wrong_t]])
    logit_scale = float(read.abs().max())
    unpatched = float(tl_metric(last[:, None]))
    tolerance = RELATIVE_TOLERANCE * max(1.0, logit_scale)

    patches = patch_grid(cfg.n_layers, SEQ_LEN, cfg.n_heads)
    n_total = len(patches)
    tl_idx = tl_subset(patches, args.tl_patches, args.tl_batch, args.seed)
    sampled = ""
    if len(tl_idx) != n_total:
        sampled = f" (random, seed {args.seed}"
        sampled += ")" if len(tl_idx) == args.tl_patches else (
            f"; --tl-patches {args.tl_patches} rounded up to whole forwards, as many per layer)")
    print(f"model: {cfg.n_layers} layers, {cfg.n_heads} heads, d_model {cfg.d_model}, vocab "
          f"{cfg.d_vocab}, float32; {args.prompts} prompt pairs x {SEQ_LEN} tokens; "
          f"{n_total:,} [layer, pos, head] patches, TL runs {len(tl_idx):,}{sampled}")
    print(f"unpatched corrupted metric {unpatched:+.4f}; largest |logit| read "
          f"{logit_scale:.3f}; tolerance {RELATIVE_TOLERANCE:g} * max(1, {logit_scale:.3f}) "
          f"= {tolerance:.2e}", flush=True)

    print("\nrunning:")
    tl_values, tl_s, _ = tl_loop(tl, corrupted_t, clean_cache, tl_metric, patches[tl_idx])
    print(f"  {TL_LOOP}: {tl_s:.1f} s for {len(tl_idx):,}", flush=True)
    rows = [make_row(f"{TL_LOOP} (loop)", n_total, len(tl_idx), tl_s, None)]
    results = {"tl": tl_values}
    if args.tl_batch:
        k, b = args.tl_batch, args.prompts
        for resume, key, label in (
                (False, "tl_batched",
                 f"TL hand-batched ({k} patches × {b} prompts per forward)"),
                (True, "tl_batched_resume", f"TL hand-batched ({k} × {b}) + start_at_layer")):
            values, seconds, _ = tl_batched(tl, corrupted_t, clean_cache, correct_t, wrong_t,
                                            patches[tl_idx], k, resume,
                                            progress_printer(label))
            print(f"  {label}: {seconds:.1f} s for {len(tl_idx):,}", flush=True)
            rows.append(make_row(label, n_total, len(tl_idx), seconds, None))
            results[key] = values

    jax_values, jax_s, jax_compile, chunk = jax_patching(
        model, corrupted, clean, jax_metric, patches, progress_printer("jaxablate"))
    print(f"  jaxablate.patching.attn_head_out_by_pos: {jax_s:.1f} s (+ compile "
          f"{jax_compile:.1f} s), chunk {chunk}", flush=True)
    rows.append(make_row("jaxablate.patching.attn_head_out_by_pos", n_total, n_total, jax_s,
                         jax_compile))
    rows[-1]["chunk_size"] = chunk
    results["jaxablate"] = jax_values[tl_idx]
    for row in rows:
        row["x_tl"] = row["patches_per_s"] / rows[0]["patches_per_s"]

    print("\nchecks (against TL's get_act_patch values, every patch both ran):")
    checks = {key: compare(f"{key} vs TL", values, tl_values, tolerance)
              for key, values in results.items() if key != "tl"}
    effect = np.abs(tl_values.astype(np.float64) - unpatched)
    visible = int((effect > tolerance).sum())
    worst = max(c["max_abs_diff"] for c in checks.values())
    print(f"  {visible:,} of {len(tl_idx):,} compared patches move the metric by more than the "
          f"tolerance (|effect| median {np.median(effect):.2e}, max {effect.max():.2e}); "
          f"max |diff| / max |effect| = {worst / max(effect.max(), 1e-30):.1e}")

    print("\n" + markdown_table(rows))
    dims_label = ("the 2-layer tiny test model (--small)" if args.small
                  else "GPT-2-small dimensions")
    print(f"\n{dims_label}, random weights, {args.prompts} prompt pairs x {SEQ_LEN} "
          "tokens, denoising (clean z into the corrupted run), logit difference at the last "
          "position, float32, one process. TL rows under torch.no_grad(); compile s: "
          "jaxablate's first warm-up minus its second."
          + (f" * extrapolated in proportion from {len(tl_idx):,} random patches."
             if len(tl_idx) != n_total else ""))
    ok = all(c["ok"] for c in checks.values())
    print("correctness: every method equals TL's get_act_patch_attn_head_out_by_pos on every "
          "patch both ran." if ok else "correctness: MISMATCH against TL (see warnings above).")

    result = {
        "benchmark": "bench_patching",
        "machine": machine,
        "settings": {
            "small": args.small, "seed": args.seed, "dtype": "float32",
            "prompts": args.prompts, "seq_len": SEQ_LEN, "direction": "denoising",
            "activation": "attn.hook_z per [layer, pos, head]",
            "metric": "batch mean of logit_diff at the last position",
            "model": {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                      "d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab,
                      "n_ctx": cfg.n_ctx},
            "patches": n_total, "tl_patches": len(tl_idx), "tl_batch": args.tl_batch,
        },
        "setup_s": setup,
        "rows": rows,
        "correctness": {
            "tolerance": tolerance,
            "tolerance_rule": f"{RELATIVE_TOLERANCE:g} * max(1, max |logit read| of the "
                              "unpatched corrupted run)",
            "logit_scale": logit_scale, "unpatched_metric": unpatched,
            "patches_compared": len(tl_idx), "patches_with_effect_above_tolerance": visible,
            "median_abs_effect": float(np.median(effect)),
            "max_abs_effect": float(effect.max()), **checks,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
