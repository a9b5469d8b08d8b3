"""Train the bundled induction model: a 2-layer GPT-2 on sequences with a repeated segment.

The data is a random segment of random length repeated after a random prefix, so the only
thing to learn beyond uniform guessing is copying: attend from a token to the token after its
previous occurrence and predict it. Two-layer attention models solve this
with an induction circuit (Olsson et al. 2022): a previous-token head in layer 0 writes "the
token before me" into each position, and an induction head in layer 1 matches the current
token against it. Segment length and prefix vary, so a purely positional shortcut does not
work.

The model card (README.md and card.json beside the weights) records the settings, the final
accuracy on the induction task and the heads' attention-pattern scores, all computed here
without any ablation; the ablation study must then find those heads on its own.

Usage:
    python -m jaxablate.zoo.train_induction                       # the bundled model (~4 min)
    python -m jaxablate.zoo.train_induction --steps 20 --out /tmp/smoke     # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxablate.machine import cpu_name
from jaxablate.model.config import GPT2Config
from jaxablate.model.gpt2 import GPT2, Blocks

CONFIG = GPT2Config(n_layers=2, n_heads=2, d_model=64, d_mlp=256, d_vocab=64, n_ctx=64)
SEQ_LEN = 48
SEGMENT = (4, 20)  # period of the repeated segment, inclusive range
EVAL_HALF = 16  # the card's task: jaxablate.tasks.induction(half=16, vocab=64)
EVAL_PROMPTS = 512
CIRCUIT_THRESHOLD = 0.4  # pattern score above which a head is named part of the circuit


def init_model(cfg: GPT2Config, key: jax.Array) -> GPT2:
    """GPT-2's initialisation: N(0, 0.02) weights, residual outputs scaled by 1/sqrt(2 L),
    zero biases, unit LayerNorms."""
    L, d, h, dh, m = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    keys = iter(jax.random.split(key, 8))

    def normal(shape, std=0.02):
        return std * jax.random.normal(next(keys), shape, jnp.float32)

    out_std = 0.02 / math.sqrt(2 * L)
    blocks = Blocks(
        ln1_w=jnp.ones((L, d)), ln1_b=jnp.zeros((L, d)),
        W_qkv=normal((L, d, 3, h, dh)), b_qkv=jnp.zeros((L, 3, h, dh)),
        W_O=normal((L, h, dh, d), out_std), b_O=jnp.zeros((L, d)),
        ln2_w=jnp.ones((L, d)), ln2_b=jnp.zeros((L, d)),
        W_in=normal((L, d, m)), b_in=jnp.zeros((L, m)),
        W_out=normal((L, m, d), out_std), b_out=jnp.zeros((L, d)),
    )
    return GPT2(wte=normal((cfg.d_vocab, d)), wpe=normal((cfg.n_ctx, d), 0.01), blocks=blocks,
                lnf_w=jnp.ones(d), lnf_b=jnp.zeros(d), cfg=cfg)


def training_batch(rng: np.random.Generator, batch: int, seq_len: int = SEQ_LEN,
                   vocab: int = CONFIG.d_vocab) -> np.ndarray:
    """Random tokens `[batch, seq_len]`: a random prefix of 0-8 tokens, then a random segment
    of SEGMENT tokens repeated until the end. Every token after the first copy is predictable
    by copying, and the varying prefix and period rule out a positional shortcut."""
    tokens = rng.integers(0, vocab, (batch, seq_len))
    for row in tokens:
        prefix = int(rng.integers(0, 9))
        period = int(rng.integers(SEGMENT[0], SEGMENT[1] + 1))
        segment = row[prefix:prefix + period].copy()
        rest = seq_len - prefix
        row[prefix:] = np.tile(segment, rest // period + 1)[:rest]
    return tokens.astype(np.int32)


def loss_fn(model: GPT2, tokens: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over every position of every sequence."""
    def one(seq):
        logits, _ = model.run(seq)
        logp = jax.nn.log_softmax(logits[:-1], axis=-1)
        return -jnp.take_along_axis(logp, seq[1:, None], axis=-1).mean()

    return jax.vmap(one)(tokens).mean()


def train(steps: int, batch: int, lr: float, seed: int, log_every: int = 250
          ) -> tuple[GPT2, list[dict]]:
    """AdamW with linear warm-up and cosine decay; returns the model and the loss log."""
    import optax

    model = init_model(CONFIG, jax.random.PRNGKey(seed))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(200, max(1, steps // 10)),
                                                  steps, lr / 10)
    optimiser = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(schedule, weight_decay=0.01))
    state = optimiser.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, tokens):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, tokens)
        updates, state = optimiser.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss

    rng = np.random.default_rng(seed)
    log, start = [], time.perf_counter()
    for i in range(1, steps + 1):
        # optax's Adam bias correction raises a float to the int32 step count, which strict
        # dtype promotion (the test suite's setting) refuses: standard promotion here.
        with jax.numpy_dtype_promotion("standard"):
            model, state, loss = step(model, state, jnp.asarray(training_batch(rng, batch)))
        if i % log_every == 0 or i == steps:
            log.append({"step": i, "loss": float(loss),
                        "seconds": round(time.perf_counter() - start, 1)})
            print(f"step {i:5d}  loss {float(loss):.4f}  ({log[-1]['seconds']} s)", flush=True)
    return model, log


def evaluate(model: GPT2, seed: int, n_prompts: int = EVAL_PROMPTS) -> dict:
    """Accuracy and loss on the induction task, and every head's attention-pattern scores."""
    from jaxablate.model.batched import forward
    from jaxablate.screening.patterns import attention_scores
    from jaxablate.tasks.induction import induction

    task = induction(n_prompts, half=EVAL_HALF, vocab=CONFIG.d_vocab, seed=seed)
    logits = np.asarray(forward(model, task.tokens))
    repeat = task.positions["repeat"][0]
    targets = task.tokens[:, repeat + 1]
    predicted = logits[:, repeat].argmax(-1)
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
    nll = -np.take_along_axis(logp[:, repeat], targets[..., None], axis=-1)[..., 0]
    first = np.arange(0, EVAL_HALF - 1)
    nll_first = -np.take_along_axis(logp[:, first], task.tokens[:, first + 1][..., None],
                                    axis=-1)[..., 0]
    scores = attention_scores(model, task.tokens)
    heads = [f"{layer}.{head}" for layer in range(CONFIG.n_layers)
             for head in range(CONFIG.n_heads)]

    def per_head(array):
        return {name: round(float(v), 4) for name, v in zip(heads, np.ravel(array))}

    previous = per_head(scores.previous_token)
    induction_scores = per_head(scores.induction)
    return {
        "eval_task": {"task": "induction", "n_prompts": n_prompts, "half": EVAL_HALF,
                      "vocab": CONFIG.d_vocab, "seed": seed},
        "accuracy_repeated_half": round(float((predicted == targets).mean()), 4),
        "loss_repeated_half": round(float(nll.mean()), 4),
        "loss_first_half": round(float(nll_first.mean()), 4),
        "uniform_loss": round(math.log(CONFIG.d_vocab), 4),
        "scores": {"previous_token": previous, "induction": induction_scores,
                   "duplicate_token": per_head(scores.duplicate_token)},
        "circuit": {
            # The highest-scoring head of each role: the path the circuit mainly runs through.
            "primary": {"previous_token": max(previous, key=previous.get),
                        "induction": max(induction_scores, key=induction_scores.get)},
            "threshold": CIRCUIT_THRESHOLD,
            "previous_token_heads": sorted(
                (h for h, v in previous.items() if v >= CIRCUIT_THRESHOLD),
                key=lambda h: -previous[h]),
            "induction_heads": sorted(
                (h for h, v in induction_scores.items() if v >= CIRCUIT_THRESHOLD),
                key=lambda h: -induction_scores[h]),
        },
    }


def model_card(card: dict) -> str:
    """The README.md (Hugging Face model card) written beside the weights."""
    ev, tr = card["evaluation"], card["training"]
    prev, ind = ev["scores"]["previous_token"], ev["scores"]["induction"]
    rows = "\n".join(f"| {h} | {prev[h]:.3f} | {ind[h]:.3f} | "
                     f"{ev['scores']['duplicate_token'][h]:.3f} |" for h in prev)
    circuit = ev["circuit"]
    return f"""---
license: mit
tags: [gpt2, interpretability, induction-heads, jaxablate]
---
# jaxablate bundled model: `induction`

A {card['config']['n_layer']}-layer, {card['config']['n_head']}-head GPT-2 (d_model
{card['config']['n_embd']}, d_mlp {card['config']['n_inner']}, vocabulary
{card['config']['vocab_size']}, context {card['config']['n_positions']}; LayerNorm, GELU MLP,
tied unembedding) trained by jaxablate on a synthetic copying task, so that an induction circuit
forms. Standard Hugging Face GPT-2 layout: `transformers.GPT2LMHeadModel.from_pretrained` and
TransformerLens load it too. In jaxablate: `jaxablate.load_gpt2("bundled:induction")`.

## Training
- Script: `python -m jaxablate.zoo.train_induction` (jaxablate/zoo/train_induction.py), seed
  {tr['seed']}, {tr['steps']} steps of AdamW (lr {tr['lr']}, warm-up then cosine decay, weight
  decay 0.01, gradient clipping 1.0), batch {tr['batch']}, float32, on {tr['machine']}
  ({tr['seconds']:.0f} s).
- Data: sequences of {tr['seq_len']} tokens: a uniformly random prefix of 0-8 tokens, then a
  uniformly random segment of {tr['segment'][0]}-{tr['segment'][1]} tokens repeated to the end;
  loss: next-token cross-entropy at every position (loss on the last training batch:
  {tr['final_loss']:.4f}; copying predicts about two thirds of the positions).

## Evaluation
On `jaxablate.tasks.induction(n_prompts={ev['eval_task']['n_prompts']},
half={ev['eval_task']['half']}, vocab={ev['eval_task']['vocab']}, seed={ev['eval_task']['seed']})`
(a random {ev['eval_task']['half']}-token sequence repeated once):
- top-1 next-token accuracy on the repeated half: **{ev['accuracy_repeated_half']:.4f}**
- loss on the repeated half: {ev['loss_repeated_half']:.4f} nats; on the first half
  (unpredictable): {ev['loss_first_half']:.4f} (uniform guessing: {ev['uniform_loss']:.4f}).

## Circuit, by attention patterns (no ablation involved)
Scores from `jaxablate.attention_scores` on the evaluation prompts: previous-token (attention
from each position to the one before), induction (attention to the token after the previous
occurrence of the current token), duplicate-token (attention to earlier copies of the current
token).

| head | previous-token | induction | duplicate-token |
|---|---:|---:|---:|
{rows}

Heads scoring at least {circuit['threshold']}: previous-token heads
**{', '.join(circuit['previous_token_heads']) or 'none'}**, induction heads
**{', '.join(circuit['induction_heads']) or 'none'}**. The highest-scoring head of each role
(the primary path): previous-token **{circuit['primary']['previous_token']}**, induction
**{circuit['primary']['induction']}**.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-prompts", type=int, default=EVAL_PROMPTS)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "induction",
                        help="folder to write (default: the bundled model's own folder)")
    args = parser.parse_args(argv)
    from jaxablate.model.saving import save_gpt2

    start = time.perf_counter()
    model, log = train(args.steps, args.batch, args.lr, args.seed)
    seconds = time.perf_counter() - start
    evaluation = evaluate(model, args.seed + 1, args.eval_prompts)
    save_gpt2(model, args.out)
    config = json.loads((args.out / "config.json").read_text())
    card = {
        "name": "induction",
        "config": config,
        "training": {"script": "jaxablate/zoo/train_induction.py", "seed": args.seed,
                     "steps": args.steps, "batch": args.batch, "lr": args.lr,
                     "seq_len": SEQ_LEN, "segment": list(SEGMENT),
                     "final_loss": log[-1]["loss"], "seconds": round(seconds, 1),
                     "machine": f"{jax.devices()[0].platform}, {cpu_name()}",
                     "date": datetime.date.today().isoformat(), "log": log},
        "evaluation": evaluation,
    }
    (args.out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (args.out / "README.md").write_text(model_card(card))
    print(json.dumps({k: evaluation[k] for k in ("accuracy_repeated_half", "loss_repeated_half",
                                                 "circuit")}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
