"""Prompts from a JSON-lines file or a list of dicts, with the real GPT-2 tokenizer: a good file
round-trips, and every malformed input is refused with a message naming the line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import jaxablate
from jaxablate import metrics
from jaxablate.tasks.prompts import from_jsonl, from_records

# Same sentence shape with single-token names and nouns: the same token length.
GOOD = [
    {"prompt": "When Mary and John went to the store, John gave a drink to",
     "correct": " Mary", "wrong": " John"},
    {"prompt": "When Tom and James went to the park, James gave a ring to",
     "correct": " Tom", "wrong": " James", "id": 7},          # extra keys are ignored
    {"prompt": "When Lisa and Paul went to the school, Paul gave a book to",
     "correct": " Lisa", "wrong": " Paul"},
]
SHORT = {"prompt": "The capital of France is", "correct": " Paris", "wrong": " London"}
BOS = 50256  # GPT-2's <|endoftext|>


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return jaxablate.load_tokenizer(tokenizer_dir)


def _write(tmp_path, lines, name="prompts.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _line(record):
    return json.dumps(record)


def test_good_file_round_trips(tmp_path, tokenizer):
    # a blank line in the middle and at the end is skipped
    path = _write(tmp_path, [_line(GOOD[0]), "", _line(GOOD[1]), _line(GOOD[2]), ""])
    task = from_jsonl(path, tokenizer)
    # BOS first (TransformerLens's to_tokens default), then the prompt's own tokens
    expected = np.array([[BOS] + tokenizer(r["prompt"])["input_ids"] for r in GOOD], np.int32)
    np.testing.assert_array_equal(task.tokens, expected)
    assert task.tokens.dtype == np.int32 and task.tokens.shape == (3, expected.shape[1])
    assert task.correct.tolist() == [tokenizer(r["correct"])["input_ids"][0] for r in GOOD]
    assert task.wrong.tolist() == [tokenizer(r["wrong"])["input_ids"][0] for r in GOOD]
    assert task.correct[0] == 5335 and task.wrong[0] == 1757  # " Mary", " John"
    assert task.texts == tuple(r["prompt"] for r in GOOD)
    np.testing.assert_array_equal(task.positions["END"], [expected.shape[1] - 1] * 3)
    assert isinstance(task.metric, metrics.LogitDiff) and task.metric.position == -1
    np.testing.assert_array_equal(task.metric.correct, task.correct)
    assert task.info == {"task": "prompts", "source": str(path), "n_prompts": 3,
                         "seq_len": expected.shape[1], "prepend_bos": True}
    np.testing.assert_array_equal(task.tokens, jaxablate.to_tokens(tokenizer, task.texts))
    assert task.reference is None and task.reference_tokens is task.tokens
    # the in-memory path gives the same task
    again = from_records(GOOD, tokenizer)
    np.testing.assert_array_equal(again.tokens, task.tokens)
    np.testing.assert_array_equal(again.correct, task.correct)
    np.testing.assert_array_equal(again.wrong, task.wrong)
    assert again.info["source"] == "records"


def test_str_path_accepted(tmp_path, tokenizer):
    path = _write(tmp_path, [_line(GOOD[0])])
    assert from_jsonl(str(path), tokenizer).tokens.shape[0] == 1


def _error(tmp_path, tokenizer, lines):
    path = _write(tmp_path, lines)
    with pytest.raises(ValueError) as info:
        from_jsonl(path, tokenizer)
    message = str(info.value)
    assert str(path) in message
    return message


def test_invalid_json_names_the_line(tmp_path, tokenizer):
    # line 3: the blank line 2 still counts
    message = _error(tmp_path, tokenizer, [_line(GOOD[0]), "", '{"prompt": "x",'])
    assert re.search(r"line 3: invalid JSON", message), message


def test_not_an_object(tmp_path, tokenizer):
    message = _error(tmp_path, tokenizer, [_line(GOOD[0]), "[1, 2]"])
    assert "line 2: expected a JSON object, got list" in message


def test_missing_key(tmp_path, tokenizer):
    record = {"prompt": GOOD[0]["prompt"], "correct": " Mary"}
    message = _error(tmp_path, tokenizer, [_line(record)])
    assert "line 1: missing key(s) 'wrong'" in message


@pytest.mark.parametrize("key, value, kind", [("correct", 5, "int"), ("prompt", None, "NoneType"),
                                              ("wrong", [" John"], "list")])
def test_wrong_type(tmp_path, tokenizer, key, value, kind):
    record = {**GOOD[0], key: value}
    message = _error(tmp_path, tokenizer, [_line(GOOD[1]), _line(record)])
    assert f"line 2: {key!r} must be a string, got {kind}" in message


@pytest.mark.parametrize("key", ["correct", "wrong"])
def test_multi_token_answer(tmp_path, tokenizer, key):
    answer = " Kristoffersen"
    ids = tokenizer(answer)["input_ids"]
    assert len(ids) > 1
    record = {**GOOD[1], key: answer}
    message = _error(tmp_path, tokenizer, [_line(GOOD[0]), _line(GOOD[2]), _line(record)])
    assert f"line 3: {key!r} answer {answer!r} is {len(ids)} tokens" in message
    assert "expected exactly 1 token" in message and str(ids) in message


def test_answer_without_its_leading_space_gets_a_hint(tmp_path, tokenizer):
    assert len(tokenizer("Travis")["input_ids"]) > 1
    record = {**GOOD[0], "correct": "Travis"}
    message = _error(tmp_path, tokenizer, [_line(record)])
    assert "line 1: 'correct' answer 'Travis'" in message
    assert "with a leading space, ' Travis' is one token" in message


def test_empty_answer(tmp_path, tokenizer):
    message = _error(tmp_path, tokenizer, [_line({**GOOD[0], "wrong": ""})])
    assert "line 1: 'wrong' answer '' is 0 tokens" in message


def test_empty_prompt(tmp_path, tokenizer):
    message = _error(tmp_path, tokenizer, [_line({**GOOD[0], "prompt": ""})])
    assert "line 1: the prompt is empty" in message


def test_same_correct_and_wrong(tmp_path, tokenizer):
    message = _error(tmp_path, tokenizer, [_line({**GOOD[0], "wrong": " Mary"})])
    assert "line 1: 'correct' and 'wrong' are the same token" in message


@pytest.mark.parametrize("lines", [[], [""], ["", "   ", ""]])
def test_empty_file(tmp_path, tokenizer, lines):
    message = _error(tmp_path, tokenizer, lines)
    assert "empty" in message and "no prompts" in message


def test_different_lengths_list_the_groups(tmp_path, tokenizer):
    # the lengths of the task's rows: the BOS and the prompt
    long = 1 + len(tokenizer(GOOD[0]["prompt"])["input_ids"])
    short = 1 + len(tokenizer(SHORT["prompt"])["input_ids"])
    assert short < long
    lines = [_line(GOOD[0]), _line(SHORT), _line(GOOD[1]), _line(SHORT), _line(GOOD[2])]
    message = _error(tmp_path, tokenizer, lines)
    assert "different token lengths" in message
    assert f"{short} tokens: 2 prompts (line 2, line 4)" in message
    assert f"{long} tokens: 3 prompts (line 1, line 3, line 5)" in message
    assert "[batch, seq]" in message and "separate files" in message


def test_records_errors_name_the_record(tokenizer):
    with pytest.raises(ValueError, match=r"mine, record 1: missing key\(s\) 'correct'"):
        from_records([GOOD[0], {"prompt": "x", "wrong": " a"}], tokenizer, source="mine")
    with pytest.raises(ValueError, match=r"records, record 0: expected a JSON object"):
        from_records(["not a dict"], tokenizer)
    with pytest.raises(ValueError, match=r"records: no prompts"):
        from_records([], tokenizer)


def test_without_bos_the_prompts_are_bare(tmp_path, tokenizer):
    path = _write(tmp_path, [_line(r) for r in GOOD])
    with_bos = from_jsonl(path, tokenizer)
    bare = from_jsonl(path, tokenizer, prepend_bos=False)
    expected = np.array([tokenizer(r["prompt"])["input_ids"] for r in GOOD], np.int32)
    np.testing.assert_array_equal(bare.tokens, expected)
    np.testing.assert_array_equal(with_bos.tokens[:, 1:], bare.tokens)
    np.testing.assert_array_equal(bare.positions["END"], [expected.shape[1] - 1] * 3)
    np.testing.assert_array_equal(with_bos.positions["END"], bare.positions["END"] + 1)
    np.testing.assert_array_equal(bare.correct, with_bos.correct)  # answers: no BOS
    assert bare.info["prepend_bos"] is False and bare.info["seq_len"] == expected.shape[1]
    again = from_records(GOOD, tokenizer, prepend_bos=False)
    np.testing.assert_array_equal(again.tokens, bare.tokens)
    # an empty prompt stays refused with a BOS to stand on
    with pytest.raises(ValueError, match="record 0: the prompt is empty"):
        from_records([{**GOOD[0], "prompt": ""}], tokenizer)
