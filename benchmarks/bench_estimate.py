"""The study planner's estimate against a measured run, step by step.

What it measures
----------------
A seeded random GPT-2 at GPT-2-small dimensions (12 layers, 12 heads, d_model 768, vocab
50257; `jaxablate.model.reference.random_hf_model`, saved with `save_pretrained` and loaded
from the folder as `jaxablate study --model DIR` loads it), or the bundled induction model
(`--model bundled`), studied on `--n-prompts` induction prompts of 32 tokens with mean
ablation of every head: `jaxablate.study.estimate.plan_study` prices the steps (the machine's
speed measured then), and the same `Study.run` runs them, fresh (no compiled program cached,
the results store in a temporary folder, as `jaxablate study` has it). Per step: estimated
and measured seconds (`StudyResult.meta["seconds"]`) and their ratio, and the totals.

The default steps leave out the two whose size only a run can tell (the circuit's greedy
steps, the patching step: the plan gives them a stated estimate and an upper bound) and the
optimal-ablation fit (hours at this size on 2 CPU cores); the comparison runs zero against
the study's mean. `--ioi-example` instead prints, without running anything, the plan of
`jaxablate study --model gpt2 --task ioi` (the command line's defaults: 64 IOI prompts,
every step, the comparison with optimal ablation) on a model of GPT-2's shapes.

Output: a table and JSON (`--out`, default benchmarks/results/bench_estimate.json) with the
machine, load averages before and after, the plan's lines and every row.

Usage:
    python benchmarks/bench_estimate.py                  # GPT-2-small-sized, ~6 min on 2 cores
    python benchmarks/bench_estimate.py --model bundled --steps all   # the bundled default
    python benchmarks/bench_estimate.py --ioi-example    # the plan only, ~15 s
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import jax

import jaxablate as ja
from jaxablate.machine import cpu_name
from jaxablate.study.checks import ABLATIONS, DEFAULT_STEPS
from jaxablate.study.estimate import plan_study
from jaxablate.study.speed import host_load
from jaxablate.tasks.induction import induction, induction_vocab

RESULTS = Path(__file__).resolve().parent / "results"
GPT2_SMALL = {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257,
              "n_positions": 1024}
DEFAULT_RUN_STEPS = ("baseline", "single", "screening", "cumulative", "interactions",
                     "ablation_comparison")


def random_gpt2_small(folder: Path) -> ja.GPT2:
    """The seeded random GPT-2-small-sized model, saved to `folder` and loaded from it."""
    import transformers

    from jaxablate.model.reference import random_hf_model

    config = transformers.GPT2Config(**GPT2_SMALL, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)
    random_hf_model(config, seed=0).save_pretrained(folder)
    return ja.load_gpt2(folder)


def ioi_example(model: ja.GPT2) -> list[str]:
    """The plan of `jaxablate study --model gpt2 --task ioi` (its defaults) on `model`."""
    from jaxablate.model.tokenizer import load_tokenizer
    from jaxablate.tasks.ioi import ioi

    task = ioi(load_tokenizer("gpt2"), 64, template=0, seed=0)
    study = ja.Study(model, task, ablation="mean")
    plan = plan_study(study, steps=DEFAULT_STEPS, types=ABLATIONS)
    return plan.lines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("gpt2-small-random", "bundled"),
                        default="gpt2-small-random")
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("--steps", default=",".join(DEFAULT_RUN_STEPS),
                        help="comma-separated study steps, or 'all' (the default steps)")
    parser.add_argument("--types", default="zero,mean", help="the comparison's types")
    parser.add_argument("--top-k", type=int, default=6, help="interactions: pairs of the top K "
                        "(0: the study's default)")
    parser.add_argument("--ioi-example", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = (ja.load_gpt2("bundled:induction") if args.model == "bundled"
                 else random_gpt2_small(Path(tmp) / "model"))
        if args.ioi_example:
            print("\n".join(ioi_example(model)))
            return
        steps = DEFAULT_STEPS if args.steps == "all" else tuple(args.steps.split(","))
        types = tuple(args.types.split(","))
        top_k = args.top_k or None
        task = induction(args.n_prompts, half=min(16, model.cfg.n_ctx // 2),
                         vocab=induction_vocab(model.cfg.d_vocab), seed=0)
        study = ja.Study(model, task, ablation="mean", store=Path(tmp) / "sweeps")
        load_before = os.getloadavg()[0]
        jax.clear_caches()
        plan = plan_study(study, steps=steps, types=types, top_k=top_k)
        print("\n".join(plan.lines()), flush=True)
        start = time.perf_counter()
        result = study.run(steps=steps, types=types, top_k=top_k)
        total = time.perf_counter() - start
        load_after = os.getloadavg()[0]

    measured = result.meta["seconds"]
    rows = [{"step": s.name, "bound": s.bound, "estimated_s": float(s.seconds),
             "estimated_compile_s": float(s.compile_s), "measured_s": measured.get(s.name),
             "ratio": (measured.get(s.name) / s.seconds) if s.seconds else None}
            for s in plan.steps]
    print("\n| step | bound | estimated s | measured s | measured / estimated |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        ratio = "–" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"| {r['step']} | {r['bound']} | {r['estimated_s']:.1f} | "
              f"{r['measured_s']:.1f} | {ratio} |")
    print(f"| **total** | | {plan.seconds:.1f} | {total:.1f} | {total / plan.seconds:.2f} |")
    print(f"\n{cpu_name()}, {len(os.sched_getaffinity(0))} cores; load {load_before:.2f} "
          f"before, {load_after:.2f} after (planning saw {plan.speed.host:.2f}x, "
          f"{plan.speed.flops / 1e9:.0f} GFLOP/s); planning took {plan.planning_s:.2f} s")
    name = "bench_estimate_bundled" if args.model == "bundled" else "bench_estimate"
    out = args.out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "bench_estimate",
        "machine": {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)),
                    "jax": jax.__version__, "backend": jax.default_backend(),
                    "load_before": load_before, "load_after": load_after,
                    "host_load_at_planning": plan.speed.host,
                    "matmul_flops_at_planning": plan.speed.flops,
                    "host_load_now": host_load()},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {"model": args.model, "n_prompts": args.n_prompts, "steps": list(steps),
                     "types": list(types), "top_k": top_k},
        "plan": plan.lines(), "rows": rows,
        "total": {"estimated_s": plan.seconds, "upper_s": plan.upper_seconds,
                  "measured_s": total, "ratio": total / plan.seconds}}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
