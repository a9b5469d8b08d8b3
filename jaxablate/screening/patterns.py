"""Attention-pattern scores that label heads: previous-token, induction and duplicate-token.

Each score is one number per head ([layer, head]): the attention mass that a query position
puts on the keys its kind calls for, averaged over every (example, query) pair that has at
least one such key. With pattern[b, h, q, k] a head's softmax over keys (TransformerLens
`blocks.L.attn.hook_pattern`):

    previous_token   keys k = q - 1                                  (queries q >= 1)
    duplicate_token  keys k < q with tokens[k] == tokens[q]          (an earlier duplicate)
    induction        keys 1 <= k <= q with tokens[k - 1] == tokens[q] (the token after an
                     earlier occurrence of the current token)

A query with several qualifying keys contributes their summed mass; every qualifying query
weighs the same, whichever example it is in. On a random half repeated twice (distinct
tokens) induction reduces to the usual score, the mean of pattern[q, q - half + 1] over the
repeated half, and duplicate_token to the mean of pattern[q, q - half].

Duplicate-token and induction qualify the same queries (those whose token occurred earlier in
the sequence), so prompts without repeated tokens give NaN for both, and prompts of one token
give NaN previous_token: NaN is the score, with a note saying why, never an exception.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxablate.ablation.components import Component
from jaxablate.errors import InputError
from jaxablate.model.batched import run_with_cache, validate_call
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.validation import check_int

PATTERN_KINDS = ("previous_token", "induction", "duplicate_token")

_DESCRIPTIONS = {
    "previous_token": "attention to the previous token",
    "induction": "attention to the token after an earlier occurrence of the current token",
    "duplicate_token": "attention to earlier occurrences of the current token",
}
_NAN_NOTES = {
    "previous_token": "previous_token is NaN: every prompt is one token long, so no query "
                      "has a previous token",
    "induction": "induction is NaN: no token occurs twice within a prompt, so no query has "
                 "an induction target; use prompts with repeats (e.g. a random half repeated "
                 "twice)",
    "duplicate_token": "duplicate_token is NaN: no token occurs twice within a prompt, so no "
                       "query has an earlier duplicate; use prompts with repeats",
}


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class AttentionScores:
    """Per-head attention-pattern scores (see the module docstring for the definitions).

    previous_token, induction, duplicate_token: float64 numpy [layer, head], in [0, 1], or
        NaN where no (example, query) pair qualified for that score.
    counts: kind -> the number of (example, query) pairs averaged over.
    notes: why a score is NaN, one line per such score (empty when none is).

    Example:
        >>> scores = jaxablate.attention_scores(model, tokens)      # tokens int [batch, seq]
        >>> scores.induction.shape                                  # [layer, head]
        (12, 12)
        >>> scores.top("induction", 3)                              # GPT-2 small, e.g.
        ['5.5', '6.9', '5.1']
        >>> print(scores)                                           # a grid per score
    """

    previous_token: Float[np.ndarray, "layer head"]
    induction: Float[np.ndarray, "layer head"]
    duplicate_token: Float[np.ndarray, "layer head"]
    counts: dict[str, int]
    notes: tuple[str, ...] = ()

    def _values(self, kind: str) -> np.ndarray:
        if kind not in PATTERN_KINDS:
            raise InputError(f"kind: expected one of {list(PATTERN_KINDS)}, got {kind!r}")
        return getattr(self, kind)

    def top(self, kind: str, k: int = 5) -> list[str]:
        """The `k` highest-scoring heads of `kind` as names ("layer.head"), best first.

        Ties keep layer-major order; NaN scores are never listed (a NaN kind gives []), and
        fewer than `k` names come back when the model has fewer heads.

        Example:
            >>> scores.top("previous_token", 2)                     # GPT-2 small, e.g.
            ['4.11', '2.2']
        """
        return [Component("heads", index).name for index in self._top_indices(kind, k)]

    def _top_indices(self, kind: str, k: int) -> list[tuple[int, int]]:
        check_int(k, "k", 1)
        values = self._values(kind)
        flat = values.ravel()
        # A stable sort of the negated scores: ties keep layer-major order; NaNs sort last.
        order = [int(i) for i in np.argsort(-flat, kind="stable") if not np.isnan(flat[i])]
        return [divmod(i, values.shape[1]) for i in order[:k]]

    def table(self, k: int = 5) -> str:
        """A readable report: per score, a [layer x head] grid and its top `k` heads.

        Example:
            >>> print(scores.table(k=3))
            previous_token: attention to the previous token (189 queries)
              layer     h0     h1 ...
        """
        lines = []
        for kind in PATTERN_KINDS:
            values = self._values(kind)
            lines.append(f"{kind}: {_DESCRIPTIONS[kind]} ({self.counts[kind]} queries)")
            if np.isnan(values).all():
                lines.append("  NaN (see the notes below)")
                continue
            lines.append("  layer" + "".join(f"{'h' + str(h):>7}" for h in range(values.shape[1])))
            for layer, row in enumerate(values):
                lines.append(f"  {layer:>5}" + "".join(f"{v:7.3f}" for v in row))
            best = ", ".join(f"{Component('heads', i).name} ({values[i]:.3f})"
                             for i in self._top_indices(kind, k))
            lines.append(f"  top: {best}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        layers, heads = self.previous_token.shape
        best = ", ".join(f"{kind}={(self.top(kind, 1) or ['NaN'])[0]}" for kind in PATTERN_KINDS)
        return f"AttentionScores([layer, head] = [{layers}, {heads}], top: {best})"


def _masses(
    pattern: Float[Array, "batch layer head seq key"],
    tokens: Int[Array, "batch seq"],
    weight: Float[Array, " batch"],
) -> tuple[Float[Array, "3 layer head"], Float[Array, " 3"]]:
    """Summed qualifying attention mass per kind and head, and the number of qualifying
    (example, query) pairs per kind (PATTERN_KINDS order); `weight` 0 drops padding examples."""
    seq = tokens.shape[1]
    q = jnp.arange(seq)[:, None]
    k = jnp.arange(seq)[None, :]
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, q, k]: tokens[q] == tokens[k]
    # after[b, q, k] = tokens[k - 1] == tokens[q]: `same` shifted one key to the right.
    after = jnp.concatenate([jnp.zeros_like(same[:, :, :1]), same[:, :, :-1]], axis=2)
    keys = jnp.stack([
        jnp.broadcast_to((k == q - 1)[None], same.shape),
        after & (k <= q)[None],
        same & (k < q)[None],
    ]).astype(jnp.float32)  # [kind, batch, q, k]
    keys = keys * weight[None, :, None, None]
    # HIGHEST: a GPU would otherwise contract float32 in TF32 (~1e-3 relative error).
    total = jnp.einsum("nbqk,blhqk->nlh", keys, pattern.astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST)
    # A query qualifies when it has at least one qualifying key.
    count = (keys.max(axis=-1)).sum(axis=(1, 2))
    return total, count


_masses_jit = jax.jit(_masses)


def _finish(total: np.ndarray, count: np.ndarray) -> AttentionScores:
    """Means from summed masses [3, layer, head] and counts [3]; NaN (and a note) at 0."""
    fields, counts, notes = {}, {}, []
    for i, kind in enumerate(PATTERN_KINDS):
        n = int(round(float(count[i])))
        counts[kind] = n
        # No division when nothing qualified: 0/0 would warn (an error under pytest).
        values = total[i] / n if n else np.full(total[i].shape, np.nan)
        values = np.asarray(values, np.float64)
        values.setflags(write=False)
        fields[kind] = values
        if not n:
            notes.append(_NAN_NOTES[kind])
    return AttentionScores(**fields, counts=counts, notes=tuple(notes))


def scores_from_patterns(
    pattern: Float[Array | np.ndarray, "batch layer head seq key"],
    tokens: Int[Array | np.ndarray, "batch seq"],
) -> AttentionScores:
    """The scores of attention patterns already in hand (pure: no model, no forward pass).

    pattern: float [batch, layer, head, seq, key], each row a distribution over keys, e.g.
        `run_with_cache(model, tokens, names=("pattern",))[1].pattern`.
    tokens: int [batch, seq], the prompts the patterns were computed on.

    Example:
        >>> _, cache = jaxablate.run_with_cache(model, tokens, names=("pattern",))
        >>> scores = scores_from_patterns(cache.pattern, tokens)
        >>> scores.previous_token.shape                             # [layer, head]
    """
    shape, token_shape = np.shape(pattern), np.shape(tokens)
    token_dtype = np.asarray(tokens).dtype
    if not np.issubdtype(token_dtype, np.integer) or len(token_shape) != 2:
        raise InputError(f"tokens: expected int [batch, seq], got {token_dtype} "
                         f"{list(token_shape)}")
    if len(shape) != 5 or shape[0] != token_shape[0] or shape[3:] != (token_shape[1],) * 2:
        batch, seq = token_shape
        raise InputError(f"pattern: expected [batch, layer, head, seq, key] = "
                         f"[{batch}, layer, head, {seq}, {seq}], got {list(shape)}")
    weight = jnp.ones((shape[0],), jnp.float32)
    total, count = _masses_jit(jnp.asarray(pattern), jnp.asarray(tokens), weight)
    return _finish(np.asarray(total, np.float64), np.asarray(count, np.float64))


def attention_scores(model: GPT2, tokens: Any, *, chunk_size: int | None = None
                     ) -> AttentionScores:
    """Previous-token, induction and duplicate-token scores of every head on `tokens`.

    tokens: int [batch, seq] token ids (validated like `forward`: ValueError before anything
        compiles). Induction and duplicate-token scores need repeated tokens within a prompt;
        without any they are NaN, with a note in `scores.notes`.
    chunk_size: examples per forward pass (None: all at once). The patterns of a chunk take
        chunk_size * layer * head * seq^2 floats; the last chunk is padded, so one program
        serves every chunk. The result does not depend on it.
    Returns an `AttentionScores` with numpy [layer, head] arrays.

    Example:
        >>> half = np.random.default_rng(0).integers(0, 50257, size=(8, 20))
        >>> scores = attention_scores(model, np.concatenate([half, half], axis=1))
        >>> scores.top("induction", 3)                              # e.g. ['5.5', '6.9', '5.1']
    """
    tokens = validate_call(model, tokens, None, None)
    batch = tokens.shape[0]
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", 1)
    chunk = batch if chunk_size is None else min(int(chunk_size), batch)
    total = np.zeros((len(PATTERN_KINDS), model.cfg.n_layers, model.cfg.n_heads))
    count = np.zeros(len(PATTERN_KINDS))
    for start in range(0, batch, chunk):
        part = tokens[start:start + chunk]
        n = part.shape[0]
        # Pad with copies of the first row, weighted 0, so the shapes (and program) stay fixed.
        padded = np.concatenate([part, np.repeat(part[:1], chunk - n, axis=0)])
        weight = jnp.asarray(np.arange(chunk) < n, jnp.float32)
        # positions=-1: the logits are not needed, so skip the unembedding almost everywhere.
        _, cache = run_with_cache(model, padded, names=("pattern",), positions=-1)
        t, c = _masses_jit(cache.pattern, jnp.asarray(padded), weight)
        # Accumulate chunks in float64 on the host.
        total += np.asarray(t, np.float64)
        count += np.asarray(c, np.float64)
    return _finish(total, count)
