"""Induction: a random token sequence repeated once; the repeated half is predictable only by
copying (attend to the token after the previous occurrence of the current token)."""

from __future__ import annotations

import numpy as np

from jaxablate.ablation import metrics
from jaxablate.errors import InputError
from jaxablate.tasks.base import Task


def repeated_tokens(rng: np.random.Generator, n: int, half: int, vocab: int,
                    low: int = 0) -> np.ndarray:
    """`n` sequences `[x, x]` of `2 * half` tokens, x drawn from ids [low, vocab) without a
    repeated id inside x (so every position of the second half has one earlier match).

    Example:
        >>> repeated_tokens(np.random.default_rng(0), 2, 3, 10)     # [[a, b, c, a, b, c], ...]
    """
    if vocab - low < half:
        raise InputError(f"induction: {half} distinct tokens per half need a vocabulary of at "
                         f"least {half} ids, got [{low}, {vocab})")
    first = np.stack([rng.choice(np.arange(low, vocab), half, replace=False) for _ in range(n)])
    return np.concatenate([first, first], axis=1).astype(np.int32)


GPT2_END_OF_TEXT = 50256  # GPT-2's <|endoftext|>, the last id of its 50,257


def induction_vocab(d_vocab: int) -> int:
    """The token ids an induction task should draw from for a model of `d_vocab` ids: all of
    them, except GPT-2's end-of-text id with GPT-2's own vocabulary (a document boundary in
    the middle of a sequence would be a different task).

    Example:
        >>> induction_vocab(50257), induction_vocab(64)
        (50256, 64)
    """
    return d_vocab if d_vocab <= GPT2_END_OF_TEXT else GPT2_END_OF_TEXT


def induction(n_prompts: int = 64, *, half: int = 16, vocab: int = 50257, seed: int = 0,
              n_reference: int | None = None, low: int = 0) -> Task:
    """Repeated random sequences `[x, x]`, `[n_prompts, 2 * half]`, scored by the next-token
    loss on the repeated half (positions half .. 2 half - 2, whose next token is a copy).

    The reference set (for mean ablation) is `n_reference` (default n_prompts) other repeated
    sequences of the same shape. The counterfactual (patching's source set) is each prompt
    `[x, x]` as `[y, x]`, y drawn from the ids not in x when the vocabulary allows. ids are drawn from [low, vocab): pass the model's vocabulary
    size (and `low` to keep clear of special tokens).

    Example:
        >>> task = induction(32, half=12, vocab=model.cfg.d_vocab, seed=0)
        >>> task.tokens.shape, task.positions["repeat"].shape        # (32, 24), (32, 11)
    """
    for name, value, least in (("n_prompts", n_prompts, 1), ("half", half, 2)):
        if not isinstance(value, (int, np.integer)) or value < least:
            raise InputError(f"induction: {name} must be an int >= {least}, got {value!r}")
    n_reference = n_prompts if n_reference is None else n_reference
    if not isinstance(n_reference, (int, np.integer)) or n_reference < 1:
        raise InputError(f"induction: n_reference must be an int >= 1, got {n_reference!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"induction: seed must be an int >= 0, got {seed!r}")
    rng = np.random.default_rng(seed)
    tokens = repeated_tokens(rng, n_prompts, half, vocab, low)
    reference = repeated_tokens(rng, n_reference, half, vocab, low)
    # The counterfactual [y, x]: the first occurrence replaced by tokens drawn from the ids
    # not in x where the vocabulary allows it, so the second half has nothing to copy.
    # Drawn last, so the prompts and the reference are those of earlier versions.
    counterfactual = tokens.copy()
    ids = np.arange(low, vocab)
    for i in range(n_prompts):
        fresh = np.setdiff1d(ids, tokens[i, :half])
        pool = fresh if len(fresh) >= half else ids
        counterfactual[i, :half] = rng.choice(pool, half, replace=False)
    # Position q of the second half predicts token q + 1 = x[q + 1 - half]: a copy.
    repeat = np.arange(half, 2 * half - 1)
    return Task(
        name="induction",
        tokens=tokens,
        metric=metrics.loss(positions=repeat),
        positions={"repeat": np.tile(repeat, (n_prompts, 1)).astype(np.int32)},
        reference=reference,
        counterfactual=counterfactual,
        info={"task": "induction", "n_prompts": int(n_prompts), "half": int(half),
              "vocab": int(vocab), "low": int(low), "seed": int(seed),
              "n_reference": int(n_reference)},
    )
