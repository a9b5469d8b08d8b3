"""Your own prompts as a task: a JSON-lines file (or a list of dicts) of prompt and answers.

One object per line:

    {"prompt": "When Mary and John went to the store, John gave a drink to",
     "correct": " Mary", "wrong": " John"}

The metric is the logit difference correct - wrong at the last token, so each answer must be
exactly one token (mid-sentence words usually need their leading space: " Mary", not "Mary").
The sweep takes a rectangle [batch, seq], so all prompts of a task must have the same token
length; put prompts of different lengths in separate files.

Each prompt starts with the BOS token (50256 for GPT-2) unless `prepend_bos=False`, as
TransformerLens's `to_tokens` gives it (`jaxablate.to_tokens`); the answers are tokenized
without one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxablate.ablation.metrics import logit_diff
from jaxablate.errors import InputError, InputTypeError
from jaxablate.model.tokenizer import bos_id
from jaxablate.tasks.base import Task

KEYS = ("prompt", "correct", "wrong")
_FORMAT = ('expected one JSON object per line with string keys "prompt", "correct" and '
           '"wrong", e.g. {"prompt": "When Mary and John went to the store, John gave a drink '
           'to", "correct": " Mary", "wrong": " John"}')
# Lines listed per length in the "different lengths" error.
_SHOWN = 5


def _answer_id(tokenizer: Any, answer: str, key: str, where: str) -> int:
    """The single token id of `answer`, or a ValueError saying what it tokenizes to."""
    ids = tokenizer(answer)["input_ids"]
    if len(ids) == 1:
        return int(ids[0])
    pieces = [tokenizer.decode([i]) for i in ids]
    hint = ""
    if answer and not answer.startswith(" ") and len(tokenizer(" " + answer)["input_ids"]) == 1:
        hint = f"; with a leading space, {' ' + answer!r} is one token"
    raise InputError(f"{where}: {key!r} answer {answer!r} is {len(ids)} tokens {pieces} "
                     f"(ids {list(ids)}), expected exactly 1 token{hint}")


def _check_record(record: Any, where: str) -> tuple[str, str, str]:
    if not isinstance(record, Mapping):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__} "
                         f"{record!r}; {_FORMAT}")
    missing = [k for k in KEYS if k not in record]
    if missing:
        raise InputError(f"{where}: missing key(s) {', '.join(map(repr, missing))} "
                         f"(found {sorted(map(str, record))}); {_FORMAT}")
    for key in KEYS:
        if not isinstance(record[key], str):
            raise InputError(f"{where}: {key!r} must be a string, got "
                             f"{type(record[key]).__name__} {record[key]!r}")
    return record["prompt"], record["correct"], record["wrong"]


def _build(entries: Sequence[tuple[str, Any]], tokenizer: Any, source: str,
           prepend_bos: bool) -> Task:
    """The task from (location, record) pairs; `location` names each record in errors."""
    if not isinstance(prepend_bos, (bool, np.bool_)):
        raise InputTypeError(f"{source}: prepend_bos must be True or False, got "
                             f"{prepend_bos!r}")
    if not entries:
        raise InputError(f"{source}: no prompts; {_FORMAT}")
    first = [bos_id(tokenizer)] if prepend_bos else []
    prompts, ids, correct, wrong = [], [], [], []
    for location, record in entries:
        where = f"{source}, {location}"
        prompt, good, bad = _check_record(record, where)
        prompt_ids = tokenizer(prompt)["input_ids"]
        if not prompt_ids:
            raise InputError(f"{where}: the prompt is empty (0 tokens)")
        good_id = _answer_id(tokenizer, good, "correct", where)
        bad_id = _answer_id(tokenizer, bad, "wrong", where)
        if good_id == bad_id:
            raise InputError(f"{where}: 'correct' and 'wrong' are the same token "
                             f"({good!r} = {bad!r}, id {good_id}); the logit difference "
                             "would be 0")
        prompts.append(prompt)
        ids.append(first + list(prompt_ids))
        correct.append(good_id)
        wrong.append(bad_id)

    by_length: dict[int, list[str]] = {}
    for (location, _), prompt_ids in zip(entries, ids):
        by_length.setdefault(len(prompt_ids), []).append(location)
    if len(by_length) > 1:
        groups = []
        for length, places in sorted(by_length.items()):
            shown = ", ".join(places[:_SHOWN]) + (", ..." if len(places) > _SHOWN else "")
            groups.append(f"{length} tokens: {len(places)} prompt"
                          f"{'s' if len(places) > 1 else ''} ({shown})")
        raise InputError(
            f"{source}: prompts have different token lengths: {'; '.join(groups)}. The sweep "
            "takes a rectangle [batch, seq], so one task needs one prompt length: group the "
            "prompts by token length into separate files (one task per length).")

    tokens = np.asarray(ids, np.int32)
    correct_ids, wrong_ids = np.asarray(correct, np.int32), np.asarray(wrong, np.int32)
    batch, seq = tokens.shape
    return Task(
        name="prompts",
        tokens=tokens,
        metric=logit_diff(correct_ids, wrong_ids),
        correct=correct_ids,
        wrong=wrong_ids,
        positions={"END": np.full(batch, seq - 1, np.int32)},
        texts=tuple(prompts),
        info={"task": "prompts", "source": source, "n_prompts": batch, "seq_len": seq,
              "prepend_bos": bool(prepend_bos)},
    )


def from_records(records: Sequence[Any], tokenizer: Any, source: str = "records", *,
                 prepend_bos: bool = True) -> Task:
    """A task from in-memory records, each a dict with string keys "prompt", "correct",
    "wrong" (extra keys are ignored). Errors name the record as `source, record i` (0-based).
    prepend_bos: start each prompt with the BOS id (TransformerLens's default).

    Returns a `Task`: tokens int32 [batch, seq] (BOS and the prompt; every prompt must
    have `seq` tokens);
    correct / wrong int32 [batch] (each answer exactly one token); metric
    `logit_diff(correct, wrong)` at the last position; positions {"END": int32 [batch]};
    texts the prompts; info {"task": "prompts", "source": source, ...}.

    Example:
        >>> task = from_records([{"prompt": "The capital of France is", "correct": " Paris",
        ...                       "wrong": " London"}], load_tokenizer("gpt2"))
        >>> task.tokens.shape, task.correct                  # ((1, 6), array([6342]))
    """
    if isinstance(records, (str, bytes)) or not isinstance(records, Sequence):
        raise InputError(f"{source}: expected a list of dicts, got {type(records).__name__}")
    return _build([(f"record {i}", r) for i, r in enumerate(records)], tokenizer, source,
                  prepend_bos)


def from_jsonl(path: str | os.PathLike, tokenizer: Any, *, prepend_bos: bool = True) -> Task:
    """A task from a JSON-lines file: one {"prompt", "correct", "wrong"} object per line
    (blank lines are skipped). Errors name the file and the line number. prepend_bos:
    start each prompt with the BOS id (TransformerLens's default).

    Returns a `Task` as `from_records` does, with info["source"] the path: tokens int32
    [batch, seq], correct / wrong int32 [batch], positions {"END": int32 [batch]}.

    Example:
        >>> task = from_jsonl("ioi_prompts.jsonl", load_tokenizer("gpt2"))
        >>> out = sweep(model, task.tokens, masks.single_heads(model.cfg),
        ...             zero_replacement(model), task.metric)        # [144, batch]
    """
    source = os.fspath(path)
    entries = []
    try:
        with open(source, "rb") as file:
            text = file.read()
    except OSError as error:
        raise InputError(f"{source}: cannot read the prompts file ({error.strerror or error})"
                         ) from None
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise InputError(f"{source}: not UTF-8 text (byte {error.start}); {_FORMAT}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{source}, line {number}: invalid JSON ({error.msg} at "
                             f"column {error.colno}); {_FORMAT}") from None
        entries.append((f"line {number}", record))
    if not entries:
        raise InputError(f"{source}: the file is empty (no prompts); {_FORMAT}")
    return _build(entries, tokenizer, source, prepend_bos)
