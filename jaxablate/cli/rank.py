"""`python -m jaxablate`: rank every head of the bundled induction model by mean ablation.

Loads the bundled 2-layer model (`load_gpt2("bundled:induction")`, no network), builds the
induction task (random sequences repeated once), mean-ablates each head in turn with one
`jaxablate.sweep`, and prints the heads ranked by how much the loss on the repeated half goes
up, beside each head's attention-pattern scores and the circuit its model card names. With
`--model NAME_OR_FOLDER` it runs the same sweep on another GPT-2 (hub id or local folder).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from jaxablate.ablation.masks import single_heads
from jaxablate.ablation.replacements import mean_replacement
from jaxablate.engine.sweeping import clean_metric, sweep
from jaxablate.model.loading import load_gpt2
from jaxablate.screening.patterns import attention_scores
from jaxablate.tasks.induction import induction, induction_vocab
from jaxablate.zoo import model_card


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled:induction",
                        help="hub id, folder or bundled:NAME (default: bundled:induction)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts (default 64)")
    parser.add_argument("--half", type=int, default=16,
                        help="length of the repeated sequence (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=10, help="heads to print (default 10)")
    args = parser.parse_args(argv)

    model = load_gpt2(args.model)
    cfg = model.cfg
    # GPT-2's own vocabulary: stay clear of the end-of-text id.
    vocab = induction_vocab(cfg.d_vocab)
    task = induction(args.prompts, half=args.half, vocab=vocab, seed=args.seed)
    print(f"model: {args.model} ({cfg.n_layers} layers x {cfg.n_heads} heads, d_model "
          f"{cfg.d_model}, vocabulary {cfg.d_vocab})")
    print(f"task: {task}")

    heads = single_heads(cfg)
    start = time.perf_counter()
    ablated = sweep(model, task.tokens, heads,
                       mean_replacement(model, task.reference_tokens), task.metric)
    seconds = time.perf_counter() - start
    clean = clean_metric(model, task.tokens, task.metric)
    effect = ablated - clean[None]  # loss increase when the head is mean-ablated
    mean = effect.mean(1)
    sem = effect.std(1, ddof=1) / np.sqrt(effect.shape[1])
    scores = attention_scores(model, task.tokens)
    circuit = set()
    if args.model.startswith("bundled:"):
        found = model_card(args.model.split(":", 1)[1])["evaluation"]["circuit"]
        circuit = set(found["previous_token_heads"]) | set(found["induction_heads"])

    print(f"clean loss on the repeated half: {clean.mean():.4f} nats")
    print(f"single-head mean-ablation sweep: {len(heads)} heads x {args.prompts} prompts in "
          f"{seconds:.2f} s (compile included)\n")
    print("rank  head   loss increase (mean ± s.e.)   prev-token  induction  card circuit")
    for rank, i in enumerate(np.argsort(-mean)[:args.top], 1):
        layer, head = divmod(int(i), cfg.n_heads)
        mark = "yes" if heads.names[i] in circuit else ""
        print(f"{rank:>4}  {heads.names[i]:<6} {mean[i]:+9.4f} ± {sem[i]:.4f}"
              f"{scores.previous_token[layer, head]:>19.3f}{scores.induction[layer, head]:>11.3f}"
              f"  {mark}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
