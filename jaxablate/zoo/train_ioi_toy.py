"""Train the bundled toy IOI model: a 4-layer, 4-head GPT-2 on a synthetic indirect-object task.

The data (`jaxablate.tasks.ioi_toy`): BOS, fillers, two names joined by AND, fillers, the
subject repeated, GAVE, fillers, TO; the target is the name that occurs once (the indirect
object), in both orders (ABBA, BABA), with filler runs of random lengths so that no fixed
offset finds the names. The loss is the cross-entropy of the answer at TO only: telling which
name repeats is the whole task, so the model must compare the two names with the later
subject (duplicate-token / induction heads at S2, S-inhibition at END) and copy the other one
(name movers at END), the circuit Wang et al. 2022 found in GPT-2 small.

Head dropout: on every training example each head's z is zeroed with probability
`--head-dropout` (a fresh draw per example), so no single head can be the only path; this is
the known way to grow backup heads (heads that take over when another is ablated), which only
pairwise ablation reveals.

The model card (README.md and card.json beside the weights) records the settings, accuracy,
logit difference, the heads' IOI attention-pattern scores (no ablation) and what a mean-ablation
`jaxablate.Study` on the card's task finds, all computed here.

Usage:
    python -m jaxablate.zoo.train_ioi_toy                        # the bundled model
    python -m jaxablate.zoo.train_ioi_toy --steps 20 --out /tmp/smoke     # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
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
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.mask import Mask
from jaxablate.tasks.ioi_toy import FILLERS, IOI_TOY_VOCAB, NAMES, ioi_toy_layout, ioi_toy_prompts
from jaxablate.zoo.train_induction import init_model

CONFIG = GPT2Config(n_layers=4, n_heads=4, d_model=64, d_mlp=256, d_vocab=IOI_TOY_VOCAB,
                    n_ctx=32)
SEQ_LEN = 24  # training rows, right-padded past TO (causal: padding never reaches TO)
PRE, MID, POST = (0, 4), (1, 7), (0, 3)  # filler-run lengths, inclusive ranges
LAYOUTS_PER_BATCH = 8
AUX_WEIGHT = 0.5  # the next-token loss before END, beside the answer's
DROPOUT_RAMP = 0.3  # head dropout grows linearly to its rate over this share of the steps


def training_batch(rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """tokens int32 [batch, SEQ_LEN], END positions int32 [batch], IO answers int32 [batch]:
    LAYOUTS_PER_BATCH groups, each with its own random filler runs, half ABBA half BABA at
    random, names drawn without replacement per prompt; rows padded with fillers."""
    rows, ends, answers = [], [], []
    for group in np.array_split(np.arange(batch), LAYOUTS_PER_BATCH):
        n = len(group)
        pre, mid, post = (int(rng.integers(lo, hi + 1)) for lo, hi in (PRE, MID, POST))
        names = np.stack([rng.choice(np.asarray(NAMES), 2, replace=False) for _ in range(n)])
        abba = rng.random(n) < 0.5
        tokens = ioi_toy_prompts(rng, names[:, [0, 1, 1]], abba, pre, mid, post)
        pad = rng.choice(np.asarray(FILLERS), (n, SEQ_LEN - tokens.shape[1]))
        rows.append(np.concatenate([tokens, pad], axis=1))
        ends.append(np.full(n, ioi_toy_layout(pre, mid, post)["END"]))
        answers.append(names[:, 0])
    return (np.concatenate(rows).astype(np.int32), np.concatenate(ends).astype(np.int32),
            np.concatenate(answers).astype(np.int32))


def loss_fn(model: GPT2, tokens: jax.Array, ends: jax.Array, answers: jax.Array,
            keep: jax.Array, zeros) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy of the IO answer at END plus AUX_WEIGHT x the mean next-token loss at
    every earlier position, each example with its own head keep-mask keep float
    [batch, layer, head] (zero ablation); also the answer's accuracy."""
    positions = jnp.arange(tokens.shape[1])

    def one(seq, end, answer, heads):
        logp = jax.nn.log_softmax(model(seq, Mask(heads=heads), zeros), axis=-1)
        # Next-token targets before END; the token after S2 (GAVE) is predictable only by
        # seeing that S2 repeats a name: a training signal for duplicate-token heads.
        targets = jnp.concatenate([seq[1:], seq[-1:]])
        nll = -jnp.take_along_axis(logp, targets[:, None], axis=-1)[:, 0]
        before = (positions < end).astype(jnp.float32)
        aux = (nll * before).sum() / before.sum()
        return -logp[end, answer] + AUX_WEIGHT * aux, (
            jnp.argmax(logp[end]) == answer).astype(jnp.float32)

    nll, correct = jax.vmap(one)(tokens, ends, answers, keep)
    return nll.mean(), correct.mean()


def train(steps: int, batch: int, lr: float, seed: int, head_dropout: float,
          log_every: int = 250) -> tuple[GPT2, list[dict]]:
    """AdamW with linear warm-up and cosine decay; returns the model and the loss log."""
    import optax

    from jaxablate.ablation.replacements import zero_replacement

    model = init_model(CONFIG, jax.random.PRNGKey(seed))
    zeros = zero_replacement(model)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(200, max(1, steps // 10)),
                                                  steps, lr / 10)
    optimiser = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(schedule, weight_decay=0.01))
    state = optimiser.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, tokens, ends, answers, keep):
        (loss, acc), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            model, tokens, ends, answers, keep, zeros)
        updates, state = optimiser.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss, acc

    rng = np.random.default_rng(seed)
    shape = (batch, CONFIG.n_layers, CONFIG.n_heads)
    log, start = [], time.perf_counter()
    for i in range(1, steps + 1):
        tokens, ends, answers = training_batch(rng, batch)
        rate = head_dropout * min(1.0, i / max(1.0, DROPOUT_RAMP * steps))
        keep = (rng.random(shape) >= rate).astype(np.float32)
        # optax's Adam bias correction raises a float to the int32 step count, which strict
        # dtype promotion (the test suite's setting) refuses: standard promotion here.
        with jax.numpy_dtype_promotion("standard"):
            model, state, loss, acc = step(model, state, jnp.asarray(tokens), jnp.asarray(ends),
                                           jnp.asarray(answers), jnp.asarray(keep))
        if i % log_every == 0 or i == steps:
            log.append({"step": i, "loss": float(loss), "accuracy": float(acc),
                        "seconds": round(time.perf_counter() - start, 1)})
            print(f"step {i:5d}  loss {float(loss):.4f}  acc {float(acc):.3f}  "
                  f"({log[-1]['seconds']} s)", flush=True)
    return model, log


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-dropout", type=float, default=0.15)
    parser.add_argument("--no-study", action="store_true",
                        help="skip the ablation study in the card (smoke tests)")
    parser.add_argument("--card-only", action="store_true",
                        help="no training: re-measure the card of the model in --out")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "ioi_toy",
                        help="folder to write (default: the bundled model's own folder)")
    args = parser.parse_args(argv)
    from jaxablate.model.loading import load_gpt2
    from jaxablate.model.saving import save_gpt2
    card_path = args.out / "card.json"
    if args.card_only:
        # Re-measure the card of the weights already in --out (its training section kept).
        training = json.loads(card_path.read_text())["training"]
        model = load_gpt2(str(args.out))
    else:
        start = time.perf_counter()
        model, log = train(args.steps, args.batch, args.lr, args.seed, args.head_dropout)
        seconds = time.perf_counter() - start
        training = {"script": "jaxablate/zoo/train_ioi_toy.py", "seed": args.seed,
                    "steps": args.steps, "batch": args.batch, "lr": args.lr,
                    "head_dropout": args.head_dropout, "dropout_ramp": DROPOUT_RAMP,
                    "aux_weight": AUX_WEIGHT, "seq_len": SEQ_LEN,
                    "filler_runs": {"pre": list(PRE), "mid": list(MID), "post": list(POST)},
                    "final_loss": log[-1]["loss"],
                    "final_batch_accuracy": log[-1]["accuracy"],
                    "seconds": round(seconds, 1),
                    "machine": f"{jax.devices()[0].platform}, {cpu_name()}",
                    "date": datetime.date.today().isoformat(), "log": log}
        save_gpt2(model, args.out)
        # The training record is written at once, so --card-only can finish a card later.
        card_path.write_text(json.dumps({"name": "ioi_toy", "training": training}, indent=2))
    # Imported here, after the training, so the card code may change while a model trains.
    from jaxablate.zoo.ioi_toy_card import evaluate, model_card

    evaluation = evaluate(model, study=not args.no_study)
    config = json.loads((args.out / "config.json").read_text())
    card = {"name": "ioi_toy", "config": config, "training": training,
            "evaluation": evaluation}
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    (args.out / "README.md").write_text(model_card(card))
    print(json.dumps({k: evaluation[k] for k in ("accuracy", "logit_diff", "classes")},
                     indent=2))
    if "study" in evaluation:
        print(json.dumps({k: v for k, v in evaluation["study"].items() if k != "pairs"},
                         indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
