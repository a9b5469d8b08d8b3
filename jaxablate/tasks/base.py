"""A task: prompts, the answers a metric reads, labelled positions and a reference set."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from jaxtyping import Int

from jaxablate.ablation.metrics import Metric


@dataclasses.dataclass(frozen=True)
class Task:
    """What a sweep or a study evaluates: every array has the prompts' batch axis first.

    tokens: int32 [batch, seq], all prompts of one length (the sweep takes a rectangle).
    metric: the task's default metric (IOI and JSONL prompts: logit difference correct -
        wrong at the last position; induction: loss on the repeated half).
    correct, wrong: int32 [batch] answer ids at the last position, or None.
    positions: label -> int32 [batch] (or [batch, k]), e.g. IOI's "IO", "S1", "S2", "S1+1",
        "END"; induction's "repeat".
    reference: int32 [n_ref, seq] prompts whose activations give mean-ablation values
        (IOI's ABC set), or None to use `tokens` themselves.
    counterfactual: int32 [batch, seq] prompts paired with `tokens` by index that differ in
        what the task depends on (IOI: each prompt's ABC version; induction: the first
        occurrence replaced by other tokens), the source set of activation and path
        patching; or None.
    texts: the prompts as text, when they came from text.
    info: how the task was made (seed, template, sizes): recorded in reports.

    BOS: the text tasks (`ioi`, `from_jsonl`, `from_records`) start each prompt with the
    tokenizer's BOS id by default, as TransformerLens's `to_tokens` does, with a
    `prepend_bos` option recorded in info; positions count it. `induction` draws raw ids for
    any vocabulary (the bundled model's 64 have no BOS, and it was trained without one), so
    it takes no such option.

    Example:
        >>> task = jaxablate.tasks.induction(n_prompts=32, half=12, vocab=64, seed=0)
        >>> out = jaxablate.sweep(model, task.tokens, masks.single_heads(model.cfg),
        ...                       mean_replacement(model, task.reference_tokens), task.metric)
    """

    name: str
    tokens: Int[np.ndarray, "batch seq"]
    metric: Metric
    correct: Int[np.ndarray, " batch"] | None = None
    wrong: Int[np.ndarray, " batch"] | None = None
    positions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    reference: Int[np.ndarray, "n_ref seq"] | None = None
    counterfactual: Int[np.ndarray, "batch seq"] | None = None
    texts: tuple[str, ...] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def reference_tokens(self) -> np.ndarray:
        """The mean-ablation reference prompts: `reference`, else the prompts themselves."""
        return self.tokens if self.reference is None else self.reference

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __repr__(self) -> str:
        batch, seq = self.tokens.shape
        ref = "" if self.reference is None else f", reference {self.reference.shape[0]}"
        return f"Task({self.name!r}: {batch} prompts x {seq} tokens, {self.metric!r}{ref})"
