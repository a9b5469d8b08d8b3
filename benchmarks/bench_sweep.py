"""Head-ablation sweeps: jaxablate against TransformerLens, nnsight and a naive JAX loop, on the
same weights and prompts, in one process.

What it measures
----------------
One seeded random GPT-2 at GPT-2-small dimensions (12 layers, 12 heads, d_model 768, vocab
50257, n_ctx 1024; a `transformers.GPT2LMHeadModel` with eager attention, `common.py`) is
loaded into jaxablate (`jaxablate.load_gpt2(hf_model)`, float32, and a second copy with
`dtype="bfloat16"`), into TransformerLens (built offline with every folding and centring off,
as tests/conftest.py does) and wrapped by nnsight. The same random prompts (16 tokens,
`--prompts` of them, default 8) are mean-ablated, with per-position means of each head's z
over a separate random reference set of the same shape (each library computes its own means
from its own forward of that set), and scored by the logit difference of a random
correct/wrong id pair per prompt at the last position. Four sweeps:

  single heads   every head at every position (`masks.single_heads`, 144 masks)
  head@last      every head at the last position only (`masks.single_heads(cfg,
                 position=-1, seq_len=16)`, 144)
  head@position  every head at every position separately: one mask per [layer, pos, head],
                 built from the components "L.H@p" in that order (2,304)
  head pairs     every pair of heads (`masks.head_pairs`, 10,296)

Methods (TransformerLens and nnsight run float32 under `torch.no_grad()`; "the mean" is the
method's own per-position mean of the ablated head's z, overwritten at the positions the
mask ablates: all 16, or the one position of a head@p mask):

  1. TL loop: one `run_with_hooks` per mask, with a hook on `blocks.L.attn.hook_z` for each
     layer L the mask touches that overwrites the ablated heads' z with the mean; logits at
     every position; logit diff; `.cpu().numpy()`. What people write.
  2. TL batched: one `run_with_hooks` per chunk of `--chunk` masks (default 8) that share
     their first layer (as in 3-5, so that the samples and their extrapolation are the same
     for 2-5): the tokens repeated chunk times along the batch, and on each layer any mask
     of the chunk touches a hook on `blocks.L.attn.hook_z` that overwrites, in the batch rows
     of mask m, the heads (and positions) mask m ablates with the mean (one indexed
     assignment per layer); logits at every position.
  3. TL batched + start_at_layer: as 2, each chunk resumed at its masks' first layer L from
     the clean `blocks.L.hook_resid_pre` repeated chunk times (from one `run_with_cache` of the
     prompts, timed with the method): `run_with_hooks(resid, start_at_layer=L)`.
  4. TL batched + start_at_layer + stop_at_layer: as 3 with `stop_at_layer=n_layers` (TL then
     returns the final residual stream), then `tl.ln_final` and `tl.unembed` on the last
     position only. The best a TL 3.x user can write, as far as we know.
  5. nnsight batched: `nnsight.TransformersModel(hf_model, tokenizer=...)` wrapping the HF
     model itself (the bundled GPT-2 tokenizer; the prompts go in as token ids; the plain
     `nnsight.NNsight` wrapper refuses several invokes) and per chunk of `--chunk` masks one
     `model.trace(logits_to_keep=1)` (HF's argument: the unembedding at the last position
     only, as in 4) with one `tracer.invoke(tokens)` per mask, which is how nnsight's
     documentation batches several runs into one forward; in each invoke, for each layer L the
     mask touches in order, the columns h*d_head:(h+1)*d_head of the input of
     `transformer.h[L].attn.c_proj` (head h's z) at the ablated positions are overwritten with
     the mean (nnsight's own, from a trace of the reference set), and the logit diff is read
     from `lm_head.output[:, -1]`. Every layer runs (no start layer); chunks as in 2.
  6. Naive JAX loop: one jitted `jaxablate.forward(model, tokens, mask_set.mask(i),
     replacement, positions=-1)` per mask (float32), then the logit diff.
  7. `jaxablate.sweep(model, tokens, masks, mean_replacement(model, reference),
     metrics.logit_diff(correct, wrong))`, float32 and bfloat16 (`--no-bf16` skips the
     latter), on the whole set (or, for pairs, a stratified sample), with the chunk size the
     sweep plans for that set.

Samples and extrapolation
-------------------------
Methods 1 and 6 cost one full forward per mask whatever the mask, so they run an evenly
spaced sample (`--head-sample` for single heads and head@last, `--position-sample`,
`--pair-sample`) and their time for the whole set is extrapolated in proportion. Methods 2-5
run, for every first layer L, `--batched-per-layer` masks (default 8, evenly spaced) of the
full set's masks whose first layer is L, plus the loops' sample; their time is extrapolated per
first layer (seconds(L) / masks run at L x masks of the full set at L, summed over L; plus, for
3 and 4, the clean run_with_cache), since the work of 3 and 4 depends on L. Extrapolated times
are marked `*`. jaxablate runs every mask of the first three sweeps; on pairs it runs, unless
`--full-pairs`, every pair (i, j) whose first head i is one of `--jax-pair-sample` evenly
spaced heads (default 8 of 144: 576 pairs). Stratified by i, that sample weighs each i by its
number of pairs as the full set does and keeps the work the sweep shares (a pair i, j across
layers resumes from the stream head i alone leaves, computed once for all of i's pairs), so
its rate extrapolates to all 10,296. The loops' samples are drawn from jaxablate's masks.

Times
-----
"seconds" is steady state; "first call" adds the method's one-off cost, measured in this run:
for 1 the first mask's forward minus a steady one (allocator, thread pool), for 2-5 the first
chunk's (nnsight's first trace also parses the intervention code), for 6 the first call
(`jax.clear_caches()` before it: compile included) minus a steady one. For jaxablate, the
sweep runs twice, before the timed run, on a warm-up subset that compiles every program the
full run uses (the masks sharing the set's first head, one whole chunk, one mask per distinct
first ablated position) with the full set's chunk size, after `jax.clear_caches()`: compile =
first warm-up - second warm-up, first call = steady + compile. (The steady run still compiles
the small padding ops of chunk remainders the warm-up did not have, ~0.1 s each: they stay in
"seconds".) Caches are cleared before each JAX method, so no method's first call borrows
programs compiled by an earlier sweep; except with `--quick`, which keeps them (compilation is
most of a smoke test's time), so its first-call and compile times are not standalone.

Ratios, per sweep, of ablations/s: "x TL loop" against method 1; "x best" against the
strongest competitor, the fastest of methods 2-6 (named under the table); "x best, first
call" the same with first-call times (the fastest of 2-6 by first call). A second table gives,
per method, seconds(head@last) / seconds(single heads): the 144 heads ablated at the last
position only against at every position.

Correctness
-----------
Every method is checked in the same run against the TL loop on the masks both ran (the
loop's sample): max |diff| <= 1e-3 in float32; for jaxablate bfloat16, 1e-3 + 3% of the
largest |TL value| compared (TL stays float32 as the reference). The measured max |diff| of
every method is printed, stored and shown in the table; a mismatch prints a loud warning and
the script exits 1 after writing the JSON.

Efficiency = (FLOPs the sweep needs / seconds) / the machine's measured float32 matmul rate (a
jitted [2048,768]x[768,3072] matmul, best of 5). "FLOPs the sweep needs" is the minimal work of
a full forward per ablation:

    per_layer = 3 d^2 (W_Q, W_K, W_V) + d^2 (W_O) + 2 d d_mlp (W_in, W_out)   # weights per token
    flops_per_ablation = 2 * per_layer * n_layers * batch * seq + 2 * d * vocab * batch
    flops_sweep = flops_per_ablation * n_masks

(2 FLOPs per multiply-add; the unembedding only at the read position; attention scores and
LayerNorms left out, < 1% at 16 tokens.) 22.4 GFLOP per ablation for GPT-2 small, 8 x 16 tokens.
Methods that skip work (a clean prefix, rows before an ablated position) can exceed 100%: read
it as "effective" throughput against full forwards.

Output: two Markdown tables (for the README) and JSON (`--out`, default
benchmarks/results/bench_sweep.json; `--quick` writes bench_sweep_quick.json) with the
machine (CPU model, cores, library versions, load, date), the settings, setup times, every row
(per-first-layer seconds for 2-5) and every check.

Run time: the defaults should take about 11 min (8-14) on the README's 2-core AMD EPYC when
it is quiet, by an estimate, not a measured run: parts measured there on 2026-12-01 under a
load of 6-8 (the 144 single heads with every method; jaxablate on all 2,304 head@position
masks; `--quick`), scaled to a quiet machine by the README's quiet rates (TL loop 0.37 s per
mask, 15x faster than under that load; jaxablate's 144 heads 8 s, 5x). About 6 min of it are
methods 1-6 (~90 s a sweep: ~100 batched masks, 4 methods), about 4.5 min jaxablate (head@position
~110 s in float32 and ~55 s in bfloat16, warm-ups included); `--no-bf16` saves ~2 min.
`--quick` takes ~2.8 min under that load (compilation, mostly), ~1.5 min quiet by the same
scaling.

Usage:
    python benchmarks/bench_sweep.py                    # defaults: ~11 min on 2 CPU cores
    python benchmarks/bench_sweep.py --sweeps single,last --no-nnsight    # a few minutes
    python benchmarks/bench_sweep.py --full-pairs       # jaxablate on all 10,296 pairs: + ~15 min
    python benchmarks/bench_sweep.py --quick            # 2-layer smoke test, < 2 min
"""

from __future__ import annotations

import os

# tqdm reads TQDM_* when it is imported (transformers imports it): set before any import.
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from common import (
    GPT2_SMALL,
    MATMUL_SHAPE,
    RESULTS_DIR,
    SEQ_LEN,
    TINY,
    Timer,
    banner,
    compare,
    evenly_spaced,
    fmt_s,
    machine_info,
    make_hf_model,
    make_prompts,
    matmul_gflops,
    progress_printer,
)

import jaxablate
from jaxablate import masks, metrics
from jaxablate.model.reference import tl_from_hf

# Imported from this script by bench_attribution.py and bench_scaling.py (they predate
# common.py): keep these names here.
_fmt_s = fmt_s
__all__ = ["GPT2_SMALL", "RESULTS_DIR", "TINY", "Timer", "_fmt_s", "compare", "evenly_spaced",
           "heads_by_layer", "jax_sweep", "machine_info", "make_hf_model", "make_prompts",
           "progress_printer", "tl_loop", "tl_mean_z"]

# Defaults: see "Run time" in the module docstring.
DEFAULTS = {"head_sample": 36, "position_sample": 36, "pair_sample": 12, "jax_pair_sample": 8,
            "batched_per_layer": 8}
# --quick: every mask (None), but head@position's 128 are sampled, so that the smoke test runs
# the sampling and extrapolation code too.
QUICK_DEFAULTS = {**dict.fromkeys(DEFAULTS), "position_sample": 32, "batched_per_layer": 16}

TOLERANCE = 1e-3
BF16_RELATIVE_TOLERANCE = 0.03

TL_LOOP = "TL run_with_hooks loop"
TL_BATCH = "TL batched"
TL_START = "TL batched + start_at_layer"
TL_STOP = "TL batched + start/stop_at_layer"
NNSIGHT = "nnsight batched invokes"
NAIVE = "naive JAX loop"
JAX_F32 = "jaxablate.sweep float32"
JAX_BF16 = "jaxablate.sweep bfloat16"
COMPETITORS = (TL_BATCH, TL_START, TL_STOP, NNSIGHT, NAIVE)  # "the strongest competitor"
TL_VARIANTS = {TL_BATCH: "batch", TL_START: "start", TL_STOP: "stop"}
SWEEPS = {"single": "single heads", "last": "head@last", "position": "head@position",
          "pairs": "head pairs"}  # --sweeps name: table name


# ---------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Head-ablation sweeps: jaxablate vs TransformerLens (loop, batched, "
                    "start/stop_at_layer) vs nnsight vs a naive JAX loop (module docstring).")
    parser.add_argument("--prompts", type=int, default=None,
                        help="prompts evaluated together (batch), 16 random tokens each "
                             "(default 8; 4 with --quick)")
    parser.add_argument("--head-sample", type=int, default=None,
                        help="single heads and head@last masks the TL loop and the naive JAX "
                             f"loop run, evenly spaced (default {DEFAULTS['head_sample']}); "
                             "0 = all")
    parser.add_argument("--position-sample", type=int, default=None,
                        help="head@position masks the loops run (default "
                             f"{DEFAULTS['position_sample']}); 0 = all")
    parser.add_argument("--pair-sample", type=int, default=None,
                        help="head pairs the loops run (default "
                             f"{DEFAULTS['pair_sample']}); 0 = all of jaxablate's")
    parser.add_argument("--batched-per-layer", type=int, default=None,
                        help="masks per first layer that the batched TL variants and nnsight "
                             f"run (default {DEFAULTS['batched_per_layer']}); 0 = all")
    parser.add_argument("--chunk", type=int, default=8,
                        help="masks per forward of the batched TL variants and nnsight "
                             "(default 8)")
    parser.add_argument("--jax-pair-sample", type=int, default=None,
                        help="jaxablate.sweep runs every pair whose first head is one of this "
                             f"many evenly spaced heads (default {DEFAULTS['jax_pair_sample']})"
                             "; 0 = all")
    parser.add_argument("--full-pairs", action="store_true",
                        help="jaxablate.sweep runs all 10,296 pairs")
    parser.add_argument("--no-bf16", action="store_true",
                        help="skip the jaxablate.sweep bfloat16 rows")
    parser.add_argument("--no-nnsight", action="store_true", help="skip the nnsight rows")
    parser.add_argument("--sweeps", default=",".join(SWEEPS),
                        help=f"comma-separated subset of {','.join(SWEEPS)} (default all)")
    parser.add_argument("--seed", type=int, default=0, help="weights and prompts seed")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: the 2-layer tiny test model, 4 prompts, every mask "
                             "(head@position: 32 for the loops, 16 per first layer for the "
                             "batched methods)")
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
    if args.chunk < 1:
        parser.error("--chunk must be at least 1")
    args.sweeps = [name.strip() for name in args.sweeps.split(",")]
    unknown = sorted(set(args.sweeps) - set(SWEEPS))
    if unknown or not args.sweeps:
        parser.error(f"--sweeps: unknown {unknown}; choose from {','.join(SWEEPS)}")
    for name in defaults:
        if (getattr(args, name) or 0) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0 (0 = all)")
    return args


def flops_per_ablation(cfg: jaxablate.GPT2Config, batch: int, seq: int) -> int:
    """Minimal FLOPs of one ablated forward: weight matmuls at every token, unembedding at the
    read position only (formula in the module docstring)."""
    d = cfg.d_model
    per_layer = 3 * d * d + d * d + 2 * d * cfg.d_mlp
    return 2 * per_layer * cfg.n_layers * batch * seq + 2 * d * cfg.d_vocab * batch


# ---------------------------------------------------------------------------------------------
# Mask sets and their samples.


def every_head_position(cfg: jaxablate.GPT2Config, seq: int) -> jaxablate.MaskSet:
    """One mask per [layer, pos, head] (layer-major, then position, then head): the head
    ablated at that query position only. 2,304 masks for GPT-2 small at 16 tokens.

    Example:
        >>> every_head_position(cfg, 16).names[:2]
        ['0.0@0', '0.1@0']
    """
    return masks.from_components(
        cfg, [f"{layer}.{head}@{p}" for layer in range(cfg.n_layers) for p in range(seq)
              for head in range(cfg.n_heads)], seq_len=seq)


def heads_by_layer(mask_set: jaxablate.MaskSet, i: int) -> dict[int, list[tuple]]:
    """{layer: [(head, position)]} that mask i ablates; position None = every position (the
    TL and nnsight methods need one hook or intervention per layer)."""
    out: dict[int, list[tuple]] = {}
    for component, _ in mask_set.components(i):
        if component.kind == "heads":
            (layer, head), position = component.index, None
        elif component.kind == "head_positions":
            layer, position, head = component.index
        else:
            raise ValueError(f"bench_sweep ablates heads, got {component.name!r}")
        out.setdefault(layer, []).append((head, position))
    return out


def first_positions(mask_set: jaxablate.MaskSet) -> np.ndarray:
    """Per mask, the first position it ablates (0 for whole heads)."""
    out = np.full(len(mask_set), np.iinfo(np.int64).max)
    for kind in mask_set.kinds:
        mask_id, index, _ = mask_set.entries_of(kind)
        position = index[:, 1] if kind == "head_positions" else np.zeros(len(mask_id), int)
        np.minimum.at(out, mask_id, position)
    return out


def samples(mask_set: jaxablate.MaskSet, jax_idx: np.ndarray, loop_k: int | None,
            per_layer: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(loop_idx, batched_idx), sorted indices into mask_set.

    loop_idx: `loop_k` masks evenly spaced over jax_idx (jaxablate's masks). batched_idx: for
    every first layer of the full set, `per_layer` masks evenly spaced over those with that
    first layer (from the full set: jaxablate's pair sample lacks some first layers), plus
    loop_idx (so that every batched method is checked on the loop's masks).
    """
    loop_idx = jax_idx[evenly_spaced(len(jax_idx), loop_k)]
    first = mask_set.first_layers()
    picked = []
    for layer in np.unique(first):
        at_layer = np.nonzero(first == layer)[0]
        picked.append(at_layer[evenly_spaced(len(at_layer), per_layer)])
    return loop_idx, np.union1d(np.concatenate(picked), loop_idx)


def pair_sample(pairs: jaxablate.MaskSet, first_heads: int | None) -> np.ndarray:
    """jaxablate's pair sample: every pair (i, j) whose first head i is one of `first_heads`
    evenly spaced heads (all pairs when None or 0). Stratified by i, it weighs each i by its
    number of pairs, as the full set does, and keeps the sharing the sweep exploits (all pairs
    of i share i's prefix), so its rate extrapolates to the full set."""
    first = np.array([name.split("+")[0] for name in pairs.names])
    heads = list(dict.fromkeys(first))
    if not first_heads or first_heads >= len(heads):
        return np.arange(len(pairs))
    chosen = {heads[i] for i in evenly_spaced(len(heads), first_heads)}
    return np.nonzero(np.isin(first, list(chosen)))[0]


# ---------------------------------------------------------------------------------------------
# TransformerLens: the loop (1) and the batched variants (2-4).
# Each returns values [n, batch] and timings; `groups[k]` is heads_by_layer of mask k.


def tl_mean_z(tl, reference: np.ndarray) -> list[torch.Tensor]:
    """Per-position mean of every layer's hook_z over the reference set: [seq, head, d_head]."""
    with torch.no_grad():
        _, cache = tl.run_with_cache(torch.as_tensor(reference, dtype=torch.long),
                                     names_filter=lambda name: name.endswith("attn.hook_z"))
    return [cache[f"blocks.{layer}.attn.hook_z"].mean(0) for layer in range(tl.cfg.n_layers)]


def _torch_ids(prompts: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(torch.as_tensor(prompts[k], dtype=torch.long)
                 for k in ("tokens", "correct", "wrong"))


def tl_loop(tl, prompts: dict, groups: list[dict[int, list[tuple]]],
            mean_z: list[torch.Tensor], progress: Callable[[int, int], None]
            ) -> tuple[np.ndarray, float, float]:
    """Method 1, one `run_with_hooks` per mask. Returns (values [n, batch], steady seconds,
    warm-up overhead seconds: the first forward's time minus a steady one)."""
    tokens, correct, wrong = _torch_ids(prompts)
    rows = torch.arange(len(tokens))

    def ablate(entries: list[tuple], layer: int):
        def hook(z, hook):
            for head, position in entries:
                if position is None:
                    z[:, :, head] = mean_z[layer][:, head]
                else:
                    z[:, position, head] = mean_z[layer][position, head]
            return z
        return hook

    def one(group: dict[int, list[tuple]]) -> np.ndarray:
        hooks = [(f"blocks.{layer}.attn.hook_z", ablate(entries, layer))
                 for layer, entries in group.items()]
        last = tl.run_with_hooks(tokens, fwd_hooks=hooks)[:, -1]
        return (last[rows, correct] - last[rows, wrong]).cpu().numpy()

    with torch.no_grad():
        start = time.perf_counter()
        one(groups[0])  # warm-up (allocator, thread pool); TL has nothing to compile
        first = time.perf_counter() - start
        start = time.perf_counter()
        values = []
        for i, group in enumerate(groups):
            values.append(one(group))
            progress(i + 1, len(groups))
        seconds = time.perf_counter() - start
    return np.stack(values), seconds, max(0.0, first - seconds / len(groups))


def _chunk_index(groups: list[dict[int, list[tuple]]], seq: int
                 ) -> dict[int, tuple[torch.Tensor, ...]]:
    """Per layer, the (mask, position, head) triples a chunk of masks ablates, as three
    int64 tensors [E] (a whole-head entry stands for every position)."""
    triples: dict[int, list[tuple[int, int, int]]] = {}
    for m, group in enumerate(groups):
        for layer, entries in group.items():
            for head, position in entries:
                places = range(seq) if position is None else (position,)
                triples.setdefault(layer, []).extend((m, p, head) for p in places)
    return {layer: tuple(torch.tensor(column, dtype=torch.long) for column in zip(*t))
            for layer, t in triples.items()}


def _batched_hook(index: tuple[torch.Tensor, ...], mean: torch.Tensor, n: int, batch: int):
    """A hook_z hook for n masks stacked in the batch ([n * batch, seq, head, d_head], mask m
    in rows m*batch .. m*batch+batch-1): overwrites z[m, :, p, h] with mean[p, h] for each
    (m, p, h) of `index`."""
    m, p, h = index
    value = mean[p, h].unsqueeze(1)  # [E, 1, d_head], broadcast over the batch

    def hook(z, hook):
        stacked = z.view(n, batch, *z.shape[1:])  # [mask, batch, seq, head, d_head]
        stacked[m, :, p, h] = value
        return z
    return hook


def by_first_layer(mask_set: jaxablate.MaskSet, idx: np.ndarray, chunk: int
                   ) -> list[tuple[int, np.ndarray]]:
    """The masks idx as chunks of at most `chunk` masks sharing their first layer, in order:
    [(first layer, positions in idx)]."""
    first = mask_set.first_layers()[idx]
    out = []
    for layer in np.unique(first):
        where = np.nonzero(first == layer)[0]
        out += [(int(layer), where[k:k + chunk]) for k in range(0, len(where), chunk)]
    return out


def run_chunked(run_chunk: Callable, chunks: list[tuple[int, np.ndarray]], n: int,
                batch: int, progress: Callable[[int, int], None],
                setup: Callable[[], object] | None = None) -> dict:
    """Times a chunked method: `setup()` (e.g. a clean cache; None: nothing) and
    `run_chunk(state, layer, positions)` -> values [len(positions), batch] for each chunk.

    The first chunk runs once before the timed pass, after its own setup (first call). Returns
    {values [n, batch], setup_s, by_layer {first layer: seconds}, overhead_s (first chunk +
    its setup minus the same in the timed pass)}.
    """
    start = time.perf_counter()
    state = setup() if setup else None
    run_chunk(state, *chunks[0])
    first = time.perf_counter() - start
    start = time.perf_counter()
    state = setup() if setup else None
    setup_s = time.perf_counter() - start
    values = np.empty((n, batch), np.float32)
    by_layer: dict[int, float] = {}
    done = 0
    for k, (layer, where) in enumerate(chunks):
        start = time.perf_counter()
        values[where] = run_chunk(state, layer, where)
        elapsed = time.perf_counter() - start
        by_layer[layer] = by_layer.get(layer, 0.0) + elapsed
        if k == 0:
            overhead = max(0.0, first - setup_s - elapsed)
        done += len(where)
        progress(done, n)
    return {"values": values, "setup_s": setup_s, "by_layer": by_layer, "overhead_s": overhead}


def tl_batched(tl, prompts: dict, mask_set: jaxablate.MaskSet, idx: np.ndarray,
               mean_z: list[torch.Tensor], chunk: int, variant: str,
               progress: Callable[[int, int], None]) -> dict:
    """Methods 2-4 on masks idx: variant "batch" (2), "start" (3: start_at_layer from the clean
    resid_pre, whose run_with_cache is the timed setup) or "stop" (4: also
    stop_at_layer=n_layers, then ln_final and unembed at the last position). See
    `run_chunked` for what it returns."""
    tokens, correct, wrong = _torch_ids(prompts)
    batch, seq = tokens.shape
    n_layers = tl.cfg.n_layers
    groups = [heads_by_layer(mask_set, int(i)) for i in idx]

    def clean_resid() -> list[torch.Tensor]:
        _, cache = tl.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_pre"))
        return [cache[f"blocks.{layer}.hook_resid_pre"] for layer in range(n_layers)]

    def run_chunk(resid, layer: int, where: np.ndarray) -> np.ndarray:
        n = len(where)
        hooks = [(f"blocks.{lay}.attn.hook_z", _batched_hook(index, mean_z[lay], n, batch))
                 for lay, index in _chunk_index([groups[k] for k in where], seq).items()]
        if variant == "batch":
            last = tl.run_with_hooks(tokens.repeat(n, 1), fwd_hooks=hooks)[:, -1]
        elif variant == "start":
            last = tl.run_with_hooks(resid[layer].repeat(n, 1, 1), start_at_layer=layer,
                                     fwd_hooks=hooks)[:, -1]
        else:
            final = tl.run_with_hooks(resid[layer].repeat(n, 1, 1), start_at_layer=layer,
                                      stop_at_layer=n_layers, fwd_hooks=hooks)
            last = tl.unembed(tl.ln_final(final[:, -1:]))[:, 0]
        last = last.view(n, batch, -1)
        rows = torch.arange(batch)
        return (last[:, rows, correct] - last[:, rows, wrong]).cpu().numpy()

    with torch.no_grad():
        return run_chunked(run_chunk, by_first_layer(mask_set, idx, chunk), len(idx), batch,
                           progress, None if variant == "batch" else clean_resid)


# ---------------------------------------------------------------------------------------------
# nnsight (5).


def nnsight_model(hf_model):
    """The HF model wrapped by nnsight: a TransformersModel batches several invokes into one
    forward (the plain NNsight wrapper refuses to); it wants a tokenizer, the bundled GPT-2
    one (unused: the prompts go in as token ids)."""
    import nnsight

    return nnsight.TransformersModel(hf_model, tokenizer=jaxablate.load_tokenizer("gpt2"))


def nnsight_mean_z(nn_model, reference: np.ndarray) -> list[torch.Tensor]:
    """Per-position mean of every layer's c_proj input (the heads' z side by side) over the
    reference set, from an nnsight trace: [seq, d_model] per layer."""
    import nnsight

    n_layers = len(nn_model.transformer.h)
    with torch.no_grad(), nn_model.trace(torch.as_tensor(reference, dtype=torch.long)):
        means = nnsight.save([])
        for layer in range(n_layers):
            means.append(nn_model.transformer.h[layer].attn.c_proj.input.mean(0))
    return list(means)


def nnsight_batched(nn_model, prompts: dict, mask_set: jaxablate.MaskSet, idx: np.ndarray,
                    means: list[torch.Tensor], chunk: int,
                    progress: Callable[[int, int], None]) -> dict:
    """Method 5 on masks idx: per chunk one trace, one invoke per mask. See `run_chunked`."""
    import nnsight

    tokens, correct, wrong = _torch_ids(prompts)
    batch = len(tokens)
    rows = torch.arange(batch)
    d_head = mask_set.cfg.d_model // mask_set.cfg.n_heads
    groups = [heads_by_layer(mask_set, int(i)) for i in idx]
    blocks, lm_head = nn_model.transformer.h, nn_model.lm_head

    def run_chunk(_, layer: int, where: np.ndarray) -> np.ndarray:
        # logits_to_keep=1 (an HF GPT-2 argument): the unembedding at the last position only.
        with nn_model.trace(logits_to_keep=1) as tracer:
            out = nnsight.save([])
            for k in where:
                with tracer.invoke(tokens):
                    for lay, entries in sorted(groups[k].items()):
                        z = blocks[lay].attn.c_proj.input  # [batch, seq, head * d_head]
                        for head, position in entries:
                            cols = slice(head * d_head, (head + 1) * d_head)
                            if position is None:
                                z[:, :, cols] = means[lay][:, cols]
                            else:
                                z[:, position, cols] = means[lay][position, cols]
                    last = lm_head.output[:, -1]  # [batch, vocab]
                    out.append(last[rows, correct] - last[rows, wrong])
        return torch.stack(list(out)).cpu().numpy()

    with torch.no_grad():
        return run_chunked(run_chunk, by_first_layer(mask_set, idx, chunk), len(idx), batch,
                           progress)


# ---------------------------------------------------------------------------------------------
# JAX: the naive loop (6) and jaxablate.sweep (7).


@jax.jit
def _logit_diff(logits, correct, wrong):
    rows = jnp.arange(logits.shape[0])
    return logits[rows, 0, correct] - logits[rows, 0, wrong]


def naive_jax_loop(model, prompts: dict, mask_set: jaxablate.MaskSet, idx: np.ndarray,
                   replacement, progress: Callable[[int, int], None], clear: bool = True
                   ) -> tuple[np.ndarray, float, float]:
    """One jitted `jaxablate.forward` per mask: what a JAX user writes without `sweep`.
    Returns (values, steady seconds, compile seconds = first call - a steady one); with
    `clear`, JAX's caches are cleared first, so the first call compiles."""
    tokens = prompts["tokens"]
    correct, wrong = jnp.asarray(prompts["correct"]), jnp.asarray(prompts["wrong"])

    def one(i: int) -> np.ndarray:
        logits = jaxablate.forward(model, tokens, mask_set.mask(int(i)), replacement,
                                   positions=-1)
        return np.asarray(_logit_diff(logits, correct, wrong))

    if clear:
        jax.clear_caches()
    start = time.perf_counter()
    one(idx[0])
    first = time.perf_counter() - start
    start = time.perf_counter()
    values = []
    for n, i in enumerate(idx):
        values.append(one(i))
        progress(n + 1, len(idx))
    seconds = time.perf_counter() - start
    return np.stack(values), seconds, max(0.0, first - seconds / len(idx))


def jax_sweep(model, prompts: dict, mask_set: jaxablate.MaskSet, replacement,
              progress: Callable[[int, int], None], clear: bool = True
              ) -> tuple[np.ndarray, float, float, int]:
    """`jaxablate.sweep` on the whole set once, after a warm-up that compiles its programs.

    JAX's caches are cleared (with `clear`), then the warm-up runs, twice, with the chunk size the sweep
    plans for the whole set: the masks that share the set's first head (for pairs: pairs
    within a layer and across layers), at least one whole chunk, and one mask per distinct
    first ablated position (one program per row start): every program the full sweep runs.
    compile = first warm-up - second warm-up. Then the full set runs once (steady state).
    Returns (values [n, batch], steady s, compile s, chunk size).
    """
    metric = metrics.logit_diff(prompts["correct"], prompts["wrong"])
    tokens = prompts["tokens"]
    chunk = jaxablate.planned_chunk_size(model, tokens, mask_set, metric)
    lead = np.array([name.split("+")[0] for name in mask_set.names])
    _, per_position = np.unique(first_positions(mask_set), return_index=True)
    # At least one whole chunk (a smaller set would run, and compile, a smaller chunk).
    warm = mask_set.subset(np.union1d(np.union1d(np.nonzero(lead == lead[0])[0],
                                                 np.arange(min(chunk, len(mask_set)))),
                                      per_position))
    if clear:
        jax.clear_caches()
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
# Rows and tables.


def make_row(sweep: str, method: str, n_total: int, n_run: int, measured_s: float,
             seconds: float, first_extra_s: float, flops_each: int, peak_gflops: float
             ) -> dict:
    """One table row: `seconds` is the (extrapolated) time for all n_total masks,
    `first_extra_s` the one-off cost a first call adds."""
    rate = n_total / seconds
    return {
        "sweep": sweep,
        "method": method,
        "masks": n_total,
        "masks_run": n_run,
        "extrapolated": n_run != n_total,
        "seconds_measured": measured_s,
        "seconds": seconds,
        "first_call_s": seconds + first_extra_s,
        "warmup_s": first_extra_s,
        "ablations_per_s": rate,
        "gflops_per_s": flops_each * rate / 1e9,
        "efficiency": flops_each * rate / 1e9 / peak_gflops,
    }


def add_ratios(rows: list[dict]) -> str | None:
    """x TL loop, x best and x best (first call) for one sweep's rows; returns the strongest
    competitor (steady) by name."""
    loop = next(r for r in rows if r["method"] == TL_LOOP)
    rivals = [r for r in rows if r["method"] in COMPETITORS]
    best = max(rivals, key=lambda r: r["ablations_per_s"]) if rivals else None
    best_first = min(rivals, key=lambda r: r["first_call_s"]) if rivals else None
    for row in rows:
        row["x_tl_loop"] = row["ablations_per_s"] / loop["ablations_per_s"]
        row["x_best"] = None if best is None else row["ablations_per_s"] / best[
            "ablations_per_s"]
        row["x_best_first_call"] = None if best is None else (
            best_first["first_call_s"] / row["first_call_s"])
        row["best_competitor"] = None if best is None else best["method"]
        row["best_competitor_first_call"] = None if best is None else best_first["method"]
    return None if best is None else best["method"]


def markdown_table(rows: list[dict]) -> str:
    def star(row):
        return " *" if row["extrapolated"] else ""

    def masks_cell(row):
        return f"{row['masks']:,}" + (f" ({row['masks_run']:,} run)" if row["extrapolated"]
                                      else "")

    def ratio(x):
        return "–" if x is None else f"{x:.1f}" if x < 100 else f"{x:,.0f}"

    def diff(x):
        return "ref" if x is None else f"{x:.1e}"

    lines = [("| sweep | method | masks | seconds | first call s | ablations/s | × TL loop "
              "| × best | × best, first call | max \\|diff\\| | efficiency |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['sweep']} | {row['method']} | {masks_cell(row)} "
            f"| {fmt_s(row['seconds'])}{star(row)} | {fmt_s(row['first_call_s'])}{star(row)} "
            f"| {row['ablations_per_s']:,.1f} | {ratio(row['x_tl_loop'])} "
            f"| {ratio(row['x_best'])} | {ratio(row['x_best_first_call'])} "
            f"| {diff(row['max_abs_diff'])} | {100 * row['efficiency']:.1f}% |")
    return "\n".join(lines)


def last_vs_all(rows: list[dict]) -> list[dict]:
    """Per method: seconds(head@last) / seconds(single heads), same 144 heads."""
    seconds = {(r["sweep"], r["method"]): r for r in rows}
    out = []
    for (sweep, method), row in seconds.items():
        other = seconds.get(("head@last", method))
        if sweep == "single heads" and other is not None:
            out.append({"method": method, "single_heads_s": row["seconds"],
                        "head_at_last_s": other["seconds"],
                        "ratio": other["seconds"] / row["seconds"],
                        "extrapolated": row["extrapolated"] or other["extrapolated"]})
    return out


def last_vs_all_table(ratios: list[dict]) -> str:
    lines = ["| method | single heads s | head@last s | head@last / single heads |",
             "|---|---:|---:|---:|"]
    for r in ratios:
        star = " *" if r["extrapolated"] else ""
        lines.append(f"| {r['method']} | {fmt_s(r['single_heads_s'])}{star} "
                     f"| {fmt_s(r['head_at_last_s'])}{star} | {r['ratio']:.2f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The benchmark.


def run_sweep(name: str, mask_set: jaxablate.MaskSet, jax_idx: np.ndarray, loop_k, ctx: dict
              ) -> tuple[list[dict], dict]:
    """Every method on one sweep: rows for the whole set (extrapolated where sampled) and the
    checks against the TL loop."""
    args, prompts = ctx["args"], ctx["prompts"]
    n_total = len(mask_set)
    flops_each, peak = ctx["flops_each"], ctx["gflops"]
    loop_idx, batched_idx = samples(mask_set, jax_idx, loop_k, args.batched_per_layer)
    # Masks of the full set per first layer: the batched methods' extrapolation weights.
    full_first = np.bincount(mask_set.first_layers(), minlength=ctx["cfg"].n_layers)
    run_first = np.bincount(mask_set.first_layers()[batched_idx],
                            minlength=ctx["cfg"].n_layers)
    print(f"\n{name}: {n_total:,} masks; loops run {len(loop_idx):,}, batched TL and nnsight "
          f"{len(batched_idx):,}, jaxablate.sweep {len(jax_idx):,}", flush=True)

    results = {}  # method -> (values on its masks, its masks, row)

    def loop_row(method, values, seconds, extra):
        scale = n_total / len(loop_idx)
        results[method] = (values, loop_idx, make_row(
            name, method, n_total, len(loop_idx), seconds, seconds * scale, extra,
            flops_each, peak))
        print(f"  {method}: {seconds:.1f} s for {len(loop_idx):,} (+ first call "
              f"{extra:.2f} s)", flush=True)

    def batched_row(method, out):
        measured = out["setup_s"] + sum(out["by_layer"].values())
        seconds = out["setup_s"] + sum(s / run_first[layer] * full_first[layer]
                                       for layer, s in out["by_layer"].items())
        row = make_row(name, method, n_total, len(batched_idx), measured, seconds,
                       out["overhead_s"], flops_each, peak)
        row["seconds_by_first_layer"] = {str(k): v for k, v in out["by_layer"].items()}
        row["masks_run_by_first_layer"] = {str(k): int(run_first[k]) for k in out["by_layer"]}
        row["setup_s"] = out["setup_s"]
        row["chunk"] = args.chunk
        results[method] = (out["values"], batched_idx, row)
        print(f"  {method}: {measured:.1f} s for {len(batched_idx):,} (+ first call "
              f"{out['overhead_s']:.2f} s)", flush=True)

    groups = [heads_by_layer(mask_set, int(i)) for i in loop_idx]
    loop_row(TL_LOOP, *tl_loop(ctx["tl"], prompts, groups, ctx["mean_z"],
                               progress_printer(TL_LOOP)))
    for method, variant in TL_VARIANTS.items():
        batched_row(method, tl_batched(ctx["tl"], prompts, mask_set, batched_idx,
                                       ctx["mean_z"], args.chunk, variant,
                                       progress_printer(method)))
    if ctx["nnsight"] is not None:
        batched_row(NNSIGHT, nnsight_batched(ctx["nnsight"], prompts, mask_set, batched_idx,
                                             ctx["nnsight_means"], args.chunk,
                                             progress_printer(NNSIGHT)))
    loop_row(NAIVE, *naive_jax_loop(ctx["model"], prompts, mask_set, loop_idx,
                                    ctx["replacement"], progress_printer(NAIVE),
                                    clear=not args.quick))

    jax_set = mask_set if len(jax_idx) == n_total else mask_set.subset(jax_idx)
    for method, model, replacement in ctx["jax_models"]:
        values, seconds, compile_s, chunk = jax_sweep(model, prompts, jax_set, replacement,
                                                      progress_printer(method),
                                                      clear=not args.quick)
        row = make_row(name, method, n_total, len(jax_idx), seconds,
                       seconds * n_total / len(jax_idx), compile_s, flops_each, peak)
        row["chunk_size"] = chunk
        results[method] = (values, jax_idx, row)
        print(f"  {method}: {seconds:.1f} s for {len(jax_idx):,} (+ compile {compile_s:.1f} s"
              f", chunk {chunk})", flush=True)

    # Every method against the TL loop, on the loop's masks (a subset of every method's).
    reference = results[TL_LOOP][0]
    checks = {"masks_compared": len(loop_idx)}
    for method, (values, idx, row) in results.items():
        if method == TL_LOOP:
            row.update(max_abs_diff=None, check_ok=True, tolerance=None)  # the reference
            continue
        tolerance = TOLERANCE + (BF16_RELATIVE_TOLERANCE * float(np.abs(reference).max())
                                 if method == JAX_BF16 else 0.0)
        check = compare(f"{name}: {method} vs TL loop", values[np.searchsorted(idx, loop_idx)],
                        reference, tolerance)
        row.update(max_abs_diff=check["max_abs_diff"], check_ok=check["ok"],
                   tolerance=tolerance)
        checks[method] = check
    rows = [results[m][2] for m in results]
    checks["best_competitor"] = add_ratios(rows)
    return rows, checks


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dims = TINY if args.quick else GPT2_SMALL
    machine = machine_info()
    banner("bench_sweep", machine, " (--quick)" if args.quick else "")

    setup: dict[str, float] = {}
    print("setup:")
    with Timer(setup, "matmul rate"):
        gflops = matmul_gflops()
    with Timer(setup, "HF random model"):
        hf_model = make_hf_model(dims, args.seed)
    with Timer(setup, "TransformerLens model"):
        tl = tl_from_hf(hf_model)
    with Timer(setup, "jaxablate model (float32)"):
        model = jaxablate.load_gpt2(hf_model)
    model_bf16 = None
    if not args.no_bf16:
        with Timer(setup, "jaxablate model (bfloat16)"):
            model_bf16 = jaxablate.load_gpt2(hf_model, dtype="bfloat16")
    nn_model = None
    if not args.no_nnsight:
        with Timer(setup, "nnsight model"):
            nn_model = nnsight_model(hf_model)  # wraps hf_model itself
    cfg = model.cfg
    prompts = make_prompts(cfg.d_vocab, args.prompts, args.seed)
    with Timer(setup, "TL means (run_with_cache)"):
        mean_z = tl_mean_z(tl, prompts["reference"])
    nn_means = None
    if nn_model is not None:
        with Timer(setup, "nnsight means (trace)"):
            nn_means = nnsight_mean_z(nn_model, prompts["reference"])
    with Timer(setup, "jaxablate mean_replacement"):
        replacement = jaxablate.mean_replacement(model, prompts["reference"])
        jax_models = [(JAX_F32, model, replacement)]
        if model_bf16 is not None:
            jax_models.append((JAX_BF16, model_bf16,
                               jaxablate.mean_replacement(model_bf16, prompts["reference"])))
    print(f"matmul rate: {gflops:.1f} GFLOP/s (float32 {MATMUL_SHAPE[0]}x{MATMUL_SHAPE[1]} @ "
          f"{MATMUL_SHAPE[1]}x{MATMUL_SHAPE[2]}, best of 5)")

    batch = args.prompts
    flops_each = flops_per_ablation(cfg, batch, SEQ_LEN)
    print(f"model: {cfg.n_layers} layers, {cfg.n_heads} heads, d_model {cfg.d_model}, vocab "
          f"{cfg.d_vocab}; {batch} prompts x {SEQ_LEN} tokens; {flops_each / 1e9:.3f} GFLOP "
          f"per ablation; TL and nnsight chunks of {args.chunk} masks", flush=True)

    ctx = {"args": args, "cfg": cfg, "model": model, "tl": tl, "nnsight": nn_model,
           "nnsight_means": nn_means, "prompts": prompts, "mean_z": mean_z,
           "replacement": replacement, "jax_models": jax_models, "flops_each": flops_each,
           "gflops": gflops}

    pairs = masks.head_pairs(cfg)
    pair_jax_idx = pair_sample(pairs, None if args.full_pairs else args.jax_pair_sample)
    covered = np.unique(pairs.first_layers()[pair_jax_idx])
    print(f"jaxablate's pair sample: {len(pair_jax_idx):,} pairs, first layers "
          f"{covered.min()}..{covered.max()} ({len(covered)} of {cfg.n_layers})")
    sweeps = {
        "single": (masks.single_heads(cfg), None, args.head_sample),
        "last": (masks.single_heads(cfg, position=-1, seq_len=SEQ_LEN), None,
                 args.head_sample),
        "position": (every_head_position(cfg, SEQ_LEN), None, args.position_sample),
        "pairs": (pairs, pair_jax_idx, args.pair_sample),
    }
    sweeps = [(SWEEPS[key], *sweeps[key]) for key in SWEEPS if key in args.sweeps]
    rows, checks = [], {}
    for name, mask_set, jax_idx, loop_k in sweeps:
        jax_idx = np.arange(len(mask_set)) if jax_idx is None else jax_idx
        sweep_rows, checks[name] = run_sweep(name, mask_set, jax_idx, loop_k, ctx)
        rows += sweep_rows
    ratios = last_vs_all(rows)

    print("\n" + markdown_table(rows))
    print(f"\n{batch} prompts x {SEQ_LEN} tokens, mean ablation of head z (per-position "
          "means), logit diff at the last position; TL and nnsight float32. * extrapolated "
          "from the masks run (loops: in proportion; batched TL and nnsight: per first layer;"
          " jaxablate's pairs: all pairs of evenly spaced first heads). first call = seconds "
          "+ warm-up or compile, measured. × best: against the fastest of "
          f"{', '.join(COMPETITORS)} ("
          + "; ".join(f"{name}: {checks[name]['best_competitor']}" for name, *_ in sweeps)
          + f"). efficiency = minimal forward FLOPs / time / measured matmul rate "
          f"({gflops:.0f} GFLOP/s).")
    print("\n" + last_vs_all_table(ratios))
    ok = all(c["ok"] for sweep in checks.values() for c in sweep.values()
             if isinstance(c, dict))
    print("\ncorrectness: " + ("every method equals the TL loop on every mask both ran."
                               if ok else "MISMATCH against the TL loop (see warnings above)."))

    result = {
        "benchmark": "bench_sweep",
        "machine": machine,
        "settings": {
            "quick": args.quick, "seed": args.seed, "prompts": batch, "seq_len": SEQ_LEN,
            "jax_dtypes": [m for m, *_ in jax_models], "tl_dtype": "float32",
            "nnsight": nn_model is not None, "replacement": "mean (per position)",
            "metric": "logit_diff at the last position", "chunk": args.chunk,
            "model": {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                      "d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab,
                      "n_ctx": cfg.n_ctx},
            "head_sample": args.head_sample, "position_sample": args.position_sample,
            "pair_sample": args.pair_sample, "batched_per_layer": args.batched_per_layer,
            "jax_pair_sample": len(pair_jax_idx), "full_pairs": args.full_pairs,
        },
        "matmul_gflops": gflops,
        "flops_per_ablation": flops_each,
        "flops_formula": "2*(3d^2 + d^2 + 2*d*d_mlp)*n_layers*batch*seq + 2*d*vocab*batch",
        "setup_s": setup,
        "rows": rows,
        "head_at_last_over_single_heads": ratios,
        "correctness": checks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
