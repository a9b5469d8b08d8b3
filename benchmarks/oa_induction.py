"""Optimal vs mean ablation of every head and MLP of the bundled induction model: the README's
table (held-out Delta_mean, Delta_OA, and the share of the mean-ablation effect that was
distribution shift).

    PYTHONPATH=. python benchmarks/oa_induction.py [--prompts 64] [--steps 200] [--lr 0.03]
"""

from __future__ import annotations

import argparse
import time

import jaxablate as ja


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--half", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--objective", default="kl_to_clean", choices=("kl_to_clean", "loss"))
    args = parser.parse_args()
    model = ja.load_gpt2("bundled:induction")
    task = ja.tasks.induction(args.prompts, half=args.half, vocab=model.cfg.d_vocab, seed=0)
    ms = ja.masks.concat([ja.masks.single_heads(model.cfg), ja.masks.single_mlps(model.cfg)])
    start = time.perf_counter()
    _, record = ja.optimal_replacement(model, task.tokens, ms, args.objective,
                                       steps=args.steps, learning_rate=args.lr, held_out=0.25,
                                       key=0)
    seconds = time.perf_counter() - start
    print(f"bundled induction model, {args.prompts} prompts x {2 * args.half} tokens "
          f"({len(record.held_out_prompts)} held out), {args.objective}, {args.steps} Adam "
          f"steps at lr {args.lr}, {seconds:.1f} s")
    print("| component | Delta_mean | Delta_OA | share that was distribution shift | "
          "best step | Delta_mean fit | Delta_OA fit |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    share = record.shift_share(held_out=True)
    for i, name in enumerate(record.names):
        print(f"| {name} | {record.delta_init_held_out[i]:.3f} | {record.delta_held_out[i]:.3f} "
              f"| {share[i]:.0%} | {record.best_step[i]} | {record.delta_init[i]:.3f} | "
              f"{record.delta[i]:.3f} |")


if __name__ == "__main__":
    main()
