"""Gradient screening against exact ablation: time to score every head and every neuron.

What it measures
----------------
The same seeded random GPT-2-small-sized model, prompts (16 tokens), per-position mean
replacement and logit-difference metric as `bench_sweep.py` (it imports that script's
helpers), in jaxablate and in TransformerLens (built offline, nothing folded). Rows:

  1. TransformerLens, one `run_with_hooks` per head (hook on `hook_z`) and per neuron (hook on
     `mlp.hook_post`): timed on evenly spaced samples, extrapolated to all 144 heads and all
     36,864 neurons (one full forward per ablation whatever the component; marked `*`);
  2. `jaxablate.sweep`, exact: all 144 single heads, and an evenly spaced sample of the
     36,864 single neurons (`--neuron-sample`, extrapolated, `*`);
  3. `jaxablate.attribute(..., method="grad")`: every head, MLP and neuron (37,020
     components) scored at once, one forward + backward per prompt;
  4. `jaxablate.attribute(..., method="ig", steps=S)` for each S of `--ig-steps`: the same,
     S forward + backward passes per prompt.

Seconds are steady state (each call run twice: compile = first - second). Agreement with the
exact effects is reported alongside: Spearman of the estimates against the exact single-head
effects (all 144) and against the exact effects of the sampled neurons. These weights are
random, so the agreement figures say how the estimators behave on an untrained network, not
on GPT-2; the tests check agreement on the bundled trained model.

Output: a Markdown table and JSON (`--out`, default benchmarks/results/bench_attribution.json).

Usage:
    python benchmarks/bench_attribution.py              # ~4 min on 2 CPU cores
    python benchmarks/bench_attribution.py --quick      # tiny model smoke test, < 1 min
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import jaxablate
from jaxablate import masks, metrics
from jaxablate.screening.attribution import attribute
from jaxablate.model.reference import tl_from_hf
from jaxablate.study.stats import spearman

from bench_sweep import (GPT2_SMALL, RESULTS_DIR, TINY, Timer, _fmt_s, compare,
                         evenly_spaced, heads_by_layer, jax_sweep, machine_info, make_hf_model,
                         make_prompts, progress_printer, tl_loop, tl_mean_z)

KINDS = ("heads", "mlps", "neurons")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Gradient screening (attribute grad / ig) vs exact sweeps vs "
                    "TransformerLens loops (see module docstring).")
    parser.add_argument("--prompts", type=int, default=8, help="prompts (batch), 16 tokens")
    parser.add_argument("--head-sample", type=int, default=24,
                        help="heads run by the TransformerLens loop (0 = all 144)")
    parser.add_argument("--neuron-sample", type=int, default=384,
                        help="neurons ablated exactly by jaxablate.sweep (0 = all)")
    parser.add_argument("--tl-neuron-sample", type=int, default=24,
                        help="neurons run by the TransformerLens loop")
    parser.add_argument("--ig-steps", type=int, nargs="+", default=[16],
                        help="integrated-gradients step counts to time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the tiny test model, < 1 min")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS_DIR / ("bench_attribution_quick.json" if args.quick
                                  else "bench_attribution.json")
    return args


def tl_neuron_loop(tl, prompts: dict, neurons: list[tuple[int, int]],
                   mean_post: list[torch.Tensor]) -> tuple[np.ndarray, float]:
    """One `run_with_hooks` per neuron (layer, i): its `mlp.hook_post` set to the mean."""
    tokens = torch.as_tensor(prompts["tokens"], dtype=torch.long)
    rows = torch.arange(len(tokens))
    correct = torch.as_tensor(prompts["correct"], dtype=torch.long)
    wrong = torch.as_tensor(prompts["wrong"], dtype=torch.long)

    def one(layer: int, i: int) -> np.ndarray:
        def hook(post, hook):
            post[:, :, i] = mean_post[layer][:, i]
            return post
        logits = tl.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", hook)])
        last = logits[:, -1]
        return (last[rows, correct] - last[rows, wrong]).cpu().numpy()

    with torch.no_grad():
        one(*neurons[0])  # warm-up
        start = time.perf_counter()
        values = [one(layer, i) for layer, i in neurons]
        seconds = time.perf_counter() - start
    return np.stack(values), seconds


def tl_mean_post(tl, reference: np.ndarray) -> list[torch.Tensor]:
    """Per-position mean of every layer's mlp.hook_post over the reference set."""
    with torch.no_grad():
        _, cache = tl.run_with_cache(torch.as_tensor(reference, dtype=torch.long),
                                     names_filter=lambda name: name.endswith("mlp.hook_post"))
    return [cache[f"blocks.{layer}.mlp.hook_post"].mean(0) for layer in range(tl.cfg.n_layers)]


def timed_attribute(model, prompts: dict, replacement, metric, method: str, steps: int
                    ) -> tuple[object, float, float]:
    """attribute() twice: (result, steady seconds, compile seconds)."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        att = attribute(model, prompts["tokens"], replacement, metric, method, kinds=KINDS,
                        steps=steps)
        np.asarray(att.estimate.neurons)  # wait for the result
        times.append(time.perf_counter() - start)
    return att, times[1], max(0.0, times[0] - times[1])


def row(what: str, method: str, n: int, n_run: int, seconds_measured: float,
        compile_s: float | None) -> dict:
    seconds = seconds_measured * n / n_run
    return {"what": what, "method": method, "components": n, "run": n_run,
            "extrapolated": n_run != n, "seconds_measured": seconds_measured,
            "seconds": seconds, "compile_s": compile_s, "components_per_s": n / seconds}


def markdown_table(rows: list[dict]) -> str:
    lines = ["| scores | method | components | seconds | compile s | components/s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        n = f"{r['components']:,}" + (f" ({r['run']:,} run)" if r["extrapolated"] else "")
        compile_s = "–" if r["compile_s"] is None else _fmt_s(r["compile_s"])
        lines.append(f"| {r['what']} | {r['method']} | {n} | {_fmt_s(r['seconds'])}"
                     f"{' *' if r['extrapolated'] else ''} | {compile_s} | "
                     f"{r['components_per_s']:,.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dims = TINY if args.quick else GPT2_SMALL
    machine = machine_info()
    print(f"# bench_attribution{' (--quick)' if args.quick else ''}: {machine['date']}")
    print(f"# {machine['cpu']}, {machine['cores_usable']} cores, jax "
          f"{machine['versions']['jax']}, torch {machine['versions']['torch']}, "
          f"transformer-lens {machine['versions']['transformer-lens']}, jaxablate @ "
          f"{machine['git_commit']}", flush=True)
    setup: dict[str, float] = {}
    print("setup:")
    with Timer(setup, "models"):
        hf_model = make_hf_model(dims, args.seed)
        tl = tl_from_hf(hf_model)
        model = jaxablate.load_gpt2(hf_model)
        del hf_model
    cfg = model.cfg
    prompts = make_prompts(cfg.d_vocab, args.prompts, args.seed)
    metric = metrics.logit_diff(prompts["correct"], prompts["wrong"])
    with Timer(setup, "means (TL and jaxablate)"):
        mean_z, mean_post = tl_mean_z(tl, prompts["reference"]), tl_mean_post(
            tl, prompts["reference"])
        replacement = jaxablate.mean_replacement(model, prompts["reference"])
    clean = jaxablate.clean_metric(model, prompts["tokens"], metric)

    heads, neurons = masks.single_heads(cfg), masks.single_neurons(cfg)
    n_heads, n_neurons = len(heads), len(neurons)
    n_all = n_heads + cfg.n_layers + n_neurons
    rows, checks, agreement = [], {}, {}

    print(f"\nexact, single heads ({n_heads}) and neurons ({n_neurons:,}):", flush=True)
    head_idx = evenly_spaced(n_heads, args.head_sample)
    tl_heads, tl_s, _ = tl_loop(tl, prompts, [heads_by_layer(heads, i) for i in head_idx],
                                mean_z, progress_printer("TL heads"))
    rows.append(row("every head", "TransformerLens run_with_hooks loop", n_heads,
                    len(head_idx), tl_s, None))
    exact_heads, s, c, _ = jax_sweep(model, prompts, heads, replacement,
                                     progress_printer("sweep heads"))
    rows.append(row("every head", "jaxablate.sweep (exact)", n_heads, n_heads, s, c))
    checks["heads_sweep_vs_tl"] = compare("sweep vs TL, heads", exact_heads[head_idx],
                                          tl_heads, 1e-3)

    tl_idx = evenly_spaced(n_neurons, args.tl_neuron_sample)
    pairs = [(int(i) // cfg.d_mlp, int(i) % cfg.d_mlp) for i in tl_idx]
    tl_neurons, tl_n_s = tl_neuron_loop(tl, prompts, pairs, mean_post)
    rows.append(row("every neuron", "TransformerLens run_with_hooks loop", n_neurons,
                    len(tl_idx), tl_n_s, None))
    neuron_idx = np.union1d(evenly_spaced(n_neurons, args.neuron_sample), tl_idx)
    sample = neurons.subset(neuron_idx.tolist())
    exact_neurons, s, c, _ = jax_sweep(model, prompts, sample, replacement,
                                       progress_printer("sweep neurons"))
    rows.append(row("every neuron", "jaxablate.sweep (exact)", n_neurons, len(neuron_idx),
                    s, c))
    checks["neurons_sweep_vs_tl"] = compare(
        "sweep vs TL, neurons", exact_neurons[np.searchsorted(neuron_idx, tl_idx)],
        tl_neurons, 1e-3)

    exact_head_effect = (exact_heads - clean[None]).mean(1)  # attribute's sign
    exact_neuron_effect = (exact_neurons - clean[None]).mean(1)
    neuron_names = [neurons.names[i] for i in neuron_idx]
    for method, steps in [("grad", 1)] + [("ig", s) for s in args.ig_steps]:
        label = "grad" if method == "grad" else f"ig, {steps} steps"
        print(f"\nattribute {label}: every head, MLP and neuron ({n_all:,})", flush=True)
        att, s, c = timed_attribute(model, prompts, replacement, metric, method, steps)
        rows.append(row("every head, MLP and neuron", f"jaxablate.attribute ({label})", n_all,
                        n_all, s, c))
        est_heads = att.per_example(heads.names).mean(1)
        est_neurons = att.per_example(neuron_names).mean(1)
        agreement[label] = {
            "spearman_heads": spearman(est_heads, exact_head_effect),
            "spearman_sampled_neurons": spearman(est_neurons, exact_neuron_effect),
            "max_abs_error_heads": float(np.abs(est_heads - exact_head_effect).max()),
            "largest_exact_head_effect": float(np.abs(exact_head_effect).max())}
        print(f"  {s:.2f} s (+ compile {c:.1f} s); Spearman vs exact: heads "
              f"{agreement[label]['spearman_heads']:.3f}, sampled neurons "
              f"{agreement[label]['spearman_sampled_neurons']:.3f}", flush=True)

    table = markdown_table(rows)
    print("\n" + table)
    print("\n`*` extrapolated in proportion from the components run.")
    print("agreement with exact effects (random weights): " + "; ".join(
        f"{k}: heads {v['spearman_heads']:.3f}, neurons {v['spearman_sampled_neurons']:.3f}"
        for k, v in agreement.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": machine, "settings": {k: (str(v) if isinstance(v, Path) else v)
                                         for k, v in vars(args).items()},
        "model": {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model,
                  "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab},
        "setup_s": setup, "rows": rows, "checks": checks, "agreement": agreement,
        "table": table}, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(c["ok"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
