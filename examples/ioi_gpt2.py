"""The IOI study on real GPT-2 small, set up as Wang et al. 2022 (arXiv 2211.00593) did: mean
ablation over the "ABC" distribution with means per template, BOS prepended, and the paper's
reference figures printed beside what this run measures.

It needs the hub weights (`--model gpt2`, or a local folder); it has NOT been run on real
weights on the project's machines (they cannot reach the hub); tests/test_example_ioi.py runs
it only for its plumbing, on a random GPT-2-small-sized model.

Usage:
    python examples/ioi_gpt2.py                             # gpt2, 15 BABA + 15 ABBA templates
    python examples/ioi_gpt2.py --templates 0 15 --n-prompts 32 --steps baseline single
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

import jaxablate as ja
from jaxablate.model.tokenizer import bos_id

# Wang et al. 2022, GPT-2 small (/work/shared/REFERENCE.md, "Ablation results").
PAPER_LOGIT_DIFF = 3.56
PAPER_FAITHFULNESS = 0.87
PAPER_CIRCUIT: dict[str, tuple[str, ...]] = {
    "name mover": ("9.6", "9.9", "10.0"),
    "backup name mover": ("9.0", "9.7", "10.1", "10.2", "10.6", "10.10", "11.2", "11.9"),
    "negative name mover": ("10.7", "11.10"),
    "S-inhibition": ("7.3", "7.9", "8.6", "8.10"),
    "induction": ("5.5", "5.8", "5.9", "6.9"),
    "duplicate token": ("0.1", "0.10", "3.0"),
    "previous token": ("2.2", "4.11"),
}


def with_bos(task: ja.tasks.Task, bos: int) -> ja.tasks.Task:
    """`task` with `bos` (`bos_id(tokenizer)`: 50256, <|endoftext|>, for GPT-2, what
    TransformerLens's to_tokens prepends) prepended to its prompts, reference and counterfactual, and its
    labelled positions shifted by one (the metric reads the last position, unchanged).

    Example:
        >>> with_bos(ja.tasks.ioi(tok, 4), 50256).tokens[:, 0]           # [50256, 50256, ...]
    """
    def prepend(tokens: np.ndarray | None) -> np.ndarray | None:
        if tokens is None:
            return None
        return np.concatenate([np.full((len(tokens), 1), bos, np.int32), tokens], axis=1)

    return dataclasses.replace(
        task, tokens=prepend(task.tokens), reference=prepend(task.reference),
        counterfactual=prepend(task.counterfactual),
        positions={k: v + 1 for k, v in task.positions.items()},
        info={**task.info, "bos": bos})


def run_ioi(model: Any, tokenizer: Any, *, n_prompts: int = 64,
            templates: Sequence[int] = tuple(range(30)), seed: int = 0,
            steps: Sequence[str] = ("baseline", "single", "circuit")) -> dict[str, Any]:
    """One mean-ablation (ABC) study per template; returns the per-template results and
    the head effects averaged over templates, float [layer, head] under "effects".

    Example:
        >>> out = run_ioi(ja.load_gpt2("gpt2"), ja.load_tokenizer("gpt2"), templates=[0])
        >>> out["logit_diff"], out["effects"].shape                  # (3.4, (12, 12))
    """
    cfg = model.cfg
    per_template, effects = [], []
    for template in templates:
        task = with_bos(ja.tasks.ioi(tokenizer, n_prompts, template=template, seed=seed),
                        bos_id(tokenizer))
        result = ja.Study(model, task, ablation="mean").run(steps=steps)
        effects.append(np.array([r["effect"] for r in result.single]).reshape(
            cfg.n_layers, cfg.n_heads))
        per_template.append({"template": template, "order": task.info["order"],
                             "logit_diff": result.baseline["mean"],
                             "critical": [r["component"] for r in result.single
                                          if r["critical"]],
                             "circuit": result.circuit})
    return {"per_template": per_template,
            "logit_diff": float(np.mean([r["logit_diff"] for r in per_template])),
            "effects": np.mean(effects, axis=0)}


def report(out: dict[str, Any], top: int = 26) -> str:
    """Text: this run's logit difference and top heads beside the paper's figures."""
    effects = out["effects"]
    n_heads = effects.shape[1]
    paper_class = {h: c for c, heads in PAPER_CIRCUIT.items() for h in heads}
    lines = [f"logit difference IO - S: {out['logit_diff']:.3f} (paper: {PAPER_LOGIT_DIFF})"]
    for r in out["per_template"]:
        circuit = r["circuit"]
        extra = ("" if circuit is None else f", circuit {circuit['size']} heads, "
                 f"faithfulness {circuit['faithfulness']:.3f} (paper: {PAPER_FAITHFULNESS})")
        lines.append(f"  template {r['template']:>2} ({r['order']}): logit diff "
                     f"{r['logit_diff']:.3f}, critical {len(r['critical'])}{extra}")
    order = np.argsort(-np.abs(effects).ravel(), kind="stable")[:top]
    lines.append(f"top {top} heads by |mean-ablation effect| (averaged over templates):")
    for i in order:
        name = f"{i // n_heads}.{i % n_heads}"
        lines.append(f"  {name:>6} {effects.ravel()[i]:+.3f}  "
                     f"{paper_class.get(name, '(not in the paper circuit)')}")
    found = {f"{i // n_heads}.{i % n_heads}" for i in order}
    lines.append("paper circuit by class (* = in this run's top list):")
    for kind, heads in PAPER_CIRCUIT.items():
        lines.append(f"  {kind}: " + " ".join(h + ("*" if h in found else "") for h in heads))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, model: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2", help="hub id or local folder")
    parser.add_argument("--n-prompts", type=int, default=64)
    parser.add_argument("--templates", type=int, nargs="+", default=list(range(30)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", nargs="+", default=["baseline", "single", "circuit"])
    args = parser.parse_args(argv)
    model = ja.load_gpt2(args.model) if model is None else model
    out = run_ioi(model, ja.load_tokenizer("gpt2"), n_prompts=args.n_prompts,
                  templates=args.templates, seed=args.seed, steps=args.steps)
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
