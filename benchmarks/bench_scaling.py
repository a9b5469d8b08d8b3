"""Scaling of a sweep over devices: the same sweep on 1, 2 and 4 devices, timed and checked.

On this project's CPU machines the devices are forced
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`, set by this script before JAX starts):
four "devices" share the same two cores, so this is a correctness-and-overhead check, not a
speed-up measurement. It reports, per device count: steady seconds, compile seconds, masks/s,
the ratio to one device, and max |difference| from the one-device result (which must stay
within float32 rounding). On a real multi-GPU node run it without `--force-cpu-devices`: it
then uses the node's devices (1, 2, 4, ... up to all of them).

Workload: a random GPT-2 (`--layers`, default 6 layers x 8 heads, d_model 256, vocabulary
4096), `--prompts` prompts of 16 tokens, every head pair (mean ablation, logit difference).

Usage:
    python benchmarks/bench_scaling.py                    # 4 forced CPU devices, ~2 min
    python benchmarks/bench_scaling.py --no-force         # the machine's own devices
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="sweep scaling over devices (module doc)")
    parser.add_argument("--force-cpu-devices", type=int, default=4,
                        help="CPU devices to force (default 4)")
    parser.add_argument("--no-force", action="store_true",
                        help="use the machine's own devices (GPUs, TPUs)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--out", default=None, help="JSON output (default "
                        "benchmarks/results/bench_scaling.json)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.no_force:  # before JAX starts
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count="
                                   f"{args.force_cpu_devices}").strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import json
    import time
    from pathlib import Path

    import jax
    import numpy as np
    import transformers

    import jaxablate as ja
    from jaxablate.engine.sweeping import planned_chunk_size
    from jaxablate.model.reference import random_hf_model

    from bench_sweep import RESULTS_DIR, machine_info

    machine = machine_info()
    devices = jax.local_devices()
    print(f"# bench_scaling: {machine['date']}; {machine['cpu']}, "
          f"{machine['cores_usable']} cores; {len(devices)} {devices[0].platform} devices"
          f"{' (forced)' if not args.no_force else ''}; jax {machine['versions']['jax']}",
          flush=True)
    config = transformers.GPT2Config(n_layer=args.layers, n_head=args.heads,
                                     n_embd=args.d_model, vocab_size=args.vocab,
                                     n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    config._attn_implementation = "eager"
    model = ja.load_gpt2(random_hf_model(config, 0, noise=0.1))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, args.vocab, (args.prompts, 16)).astype(np.int32)
    metric = ja.metrics.logit_diff(rng.integers(0, args.vocab, args.prompts),
                                   rng.integers(0, args.vocab, args.prompts))
    replacement = ja.mean_replacement(model, rng.integers(0, args.vocab, (8, 16)))
    pairs = ja.masks.head_pairs(model.cfg)
    per_device = planned_chunk_size(model, tokens, pairs, metric)
    counts = [n for n in (1, 2, 4, 8, 16, 32) if n <= len(devices)]
    rows, reference = [], None
    for n in counts:
        times = []
        for _ in range(2):  # the first compiles
            start = time.perf_counter()
            values = ja.sweep(model, tokens, pairs, replacement, metric,
                              chunk_size=per_device * n, devices=n)
            times.append(time.perf_counter() - start)
        reference = values if reference is None else reference
        rows.append({"devices": n, "seconds": times[1],
                     "compile_s": max(0.0, times[0] - times[1]),
                     "masks_per_s": len(pairs) / times[1],
                     "max_abs_diff_vs_1": float(np.abs(values - reference).max())})
        print(f"  {n} device(s): {times[1]:.2f} s (+ compile {rows[-1]['compile_s']:.1f} s), "
              f"max |diff| vs 1 device {rows[-1]['max_abs_diff_vs_1']:.1e}", flush=True)
    base = rows[0]["masks_per_s"]
    lines = ["| devices | seconds | compile s | masks/s | × 1 device | max abs diff vs 1 |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['devices']} | {r['seconds']:.2f} | {r['compile_s']:.1f} | "
                     f"{r['masks_per_s']:,.0f} | {r['masks_per_s'] / base:.2f} | "
                     f"{r['max_abs_diff_vs_1']:.1e} |")
    table = "\n".join(lines)
    print(f"\n{len(pairs):,} head pairs of a {args.layers}-layer x {args.heads}-head model, "
          f"{args.prompts} prompts x 16 tokens, chunk {per_device} masks per device\n")
    print(table)
    out = Path(args.out) if args.out else RESULTS_DIR / "bench_scaling.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "forced_cpu_devices": not args.no_force,
                               "settings": vars(args), "masks": len(pairs),
                               "chunk_per_device": per_device, "rows": rows,
                               "table": table}, indent=1) + "\n")
    print(f"wrote {out}")
    ok = all(r["max_abs_diff_vs_1"] <= 1e-5 * max(1.0, float(np.abs(reference).max()))
             for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
