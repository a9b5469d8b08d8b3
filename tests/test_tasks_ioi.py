"""IOI prompts (Wang et al. 2022) with the real GPT-2 tokenizer: pools, lengths, labelled
positions, the ABC reference set, seeds, argument checks, BOS as TransformerLens puts it, and
one sweep end to end."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import make_hf_model, tiny_hf_config

import jaxablate
from jaxablate import masks, metrics
from jaxablate.tasks.ioi import (
    ABBA_TEMPLATES,
    BABA_TEMPLATES,
    NAMES,
    OBJECTS,
    PLACES,
    ioi,
    ioi_tasks,
    ioi_templates,
    ioi_vocabulary,
)

N_TEMPLATES = 30
BOS = 50256  # GPT-2's <|endoftext|>, TransformerLens's BOS for GPT-2


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return jaxablate.load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def all_tasks(tokenizer):
    """One small task per template (n_reference differs from n_prompts on purpose)."""
    return ioi_tasks(tokenizer, 12, seed=3, n_reference=17)


def _single(tokenizer, word: str) -> int:
    ids = tokenizer(" " + word)["input_ids"]
    assert len(ids) == 1, (word, ids)
    return ids[0]


def test_templates_are_the_papers_30():
    templates = ioi_templates()
    assert len(templates) == N_TEMPLATES == 2 * len(BABA_TEMPLATES)
    assert templates[0] == "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]"
    assert templates[14] == ("Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it "
                             "to [A]")
    for baba, abba in zip(BABA_TEMPLATES, ABBA_TEMPLATES):
        assert baba.count("[A]") == baba.count("[B]") == 2 and baba.endswith(" [A]")
        assert abba == baba.replace("[B] and [A]", "[A] and [B]", 1) != baba


def test_vocabulary_is_single_tokens(tokenizer):
    vocab = ioi_vocabulary(tokenizer)
    # GPT-2 keeps every word of the authors' lists
    assert (len(vocab["names"]), len(vocab["places"]), len(vocab["objects"])) == (99, 8, 8)
    assert vocab["names"] == NAMES and vocab["places"] == PLACES and vocab["objects"] == OBJECTS
    ids = {_single(tokenizer, w) for pool in vocab.values() for w in pool}
    assert len(ids) == 99 + 8 + 8


class _Splitting:
    """The real tokenizer, except that " Michael" and " store" come out as two tokens."""

    def __init__(self, tokenizer, spread_garden: bool = False):
        self.tokenizer, self.spread_garden = tokenizer, spread_garden
        self.bos_token_id = tokenizer.bos_token_id

    def __call__(self, text):
        ids = list(self.tokenizer(text)["input_ids"])
        if text in (" Michael", " store"):
            ids = ids + ids
        if self.spread_garden and "garden" in text and text != " garden":
            ids = ids + [13]  # an extra "." only in context: same word, longer prompt
        return {"input_ids": ids}

    def decode(self, ids):
        return self.tokenizer.decode(ids)


def test_multi_token_words_are_dropped(tokenizer):
    fake = _Splitting(tokenizer)
    vocab = ioi_vocabulary(fake)
    assert "Michael" not in vocab["names"] and len(vocab["names"]) == 98
    assert "store" not in vocab["places"] and len(vocab["places"]) == 7
    task = ioi(fake, 64, seed=0)
    assert not any("Michael" in t or "store" in t for t in task.texts)
    assert task.info["n_names"] == 98


def test_unequal_lengths_are_refused(tokenizer):
    with pytest.raises(ValueError, match=r"template 0.*different lengths \[16, 17\]"):
        ioi(_Splitting(tokenizer, spread_garden=True), 32, template=0, seed=0)


def _check(task, tokenizer, template):
    """Every invariant of one IOI task."""
    batch, seq = task.tokens.shape
    n_ref = task.reference.shape[0]
    assert task.tokens.dtype == task.reference.dtype == np.int32
    assert task.reference.shape[1] == seq
    rows = np.arange(batch)
    pos = task.positions
    assert set(pos) == {"IO", "S1", "S2", "S1+1", "END"}
    for value in pos.values():
        assert value.shape == (batch,) and value.dtype == np.int32
    # the labels point at the right tokens
    np.testing.assert_array_equal(task.tokens[rows, pos["IO"]], task.correct)
    np.testing.assert_array_equal(task.tokens[rows, pos["S1"]], task.wrong)
    np.testing.assert_array_equal(task.tokens[rows, pos["S2"]], task.wrong)
    np.testing.assert_array_equal(pos["S1+1"], pos["S1"] + 1)
    np.testing.assert_array_equal(pos["END"], seq - 1)
    assert (pos["S1"] < pos["S2"]).all() and (pos["IO"] < pos["S2"]).all()
    assert (task.correct != task.wrong).all()
    # BABA: S1 before IO; ABBA: IO before S1, right next to each other around " and"
    if template < 15:
        np.testing.assert_array_equal(pos["IO"], pos["S1"] + 2)
    else:
        np.testing.assert_array_equal(pos["S1"], pos["IO"] + 2)
    # the prompt stops right before the answer: " to" ends every template
    assert all(text.endswith(" to") for text in task.texts)
    # text and tokens agree: BOS (as TL's to_tokens puts it), then the prompt's own tokens
    assert task.info["prepend_bos"] is True
    for tokens in (task.tokens, task.reference, task.counterfactual):
        np.testing.assert_array_equal(tokens[:, 0], BOS)
    assert [tokenizer.decode(row[1:]) for row in task.tokens.tolist()] == list(task.texts)
    np.testing.assert_array_equal(task.tokens, jaxablate.to_tokens(tokenizer, task.texts))
    # the names and nouns come from the single-token pools
    vocab = ioi_vocabulary(tokenizer)
    name_ids = {_single(tokenizer, n) for n in vocab["names"]}
    assert set(task.correct.tolist()) | set(task.wrong.tolist()) <= name_ids
    # ABC: reference j belongs to prompt j mod batch; same template, place and object ...
    base = np.arange(n_ref) % batch
    slots = [int(pos[k][0]) for k in ("IO", "S1", "S2")]
    others = np.setdiff1d(np.arange(seq), slots)
    np.testing.assert_array_equal(task.reference[:, others], task.tokens[base][:, others])
    # ... and three distinct names, none of them that prompt's IO or S
    abc = task.reference[:, slots]
    assert set(abc.ravel().tolist()) <= name_ids
    for j, b in enumerate(base):
        assert len(set(abc[j].tolist())) == 3
        assert not {int(task.correct[b]), int(task.wrong[b])} & set(abc[j].tolist())
    # the metric is the logit difference IO - S at the last token
    assert isinstance(task.metric, metrics.LogitDiff) and task.metric.position == -1
    np.testing.assert_array_equal(task.metric.correct, task.correct)
    np.testing.assert_array_equal(task.metric.wrong, task.wrong)
    assert task.info["task"] == "ioi" and task.info["template"] == template


@pytest.mark.parametrize("template", range(N_TEMPLATES))
def test_every_template_builds_with_its_invariants(all_tasks, tokenizer, template):
    task = all_tasks[template]
    assert task.tokens.shape[0] == 12 and task.reference.shape[0] == 17
    _check(task, tokenizer, template)


def test_prompt_text_follows_the_template(tokenizer):
    task = ioi(tokenizer, 8, template=0, seed=1)
    pattern = re.compile(r"Then, (\w+) and (\w+) went to the (\w+)\. (\w+) gave a (\w+) to")
    for text, io, s in zip(task.texts, task.correct, task.wrong):
        m = pattern.fullmatch(text)
        assert m is not None, text
        assert m.group(1) == m.group(4) != m.group(2)
        assert _single(tokenizer, m.group(2)) == io and _single(tokenizer, m.group(1)) == s
        assert m.group(3) in PLACES and m.group(5) in OBJECTS
    # BOS, "Then", ",", " S", " and", " IO": IO is token 5 (4 without the BOS)
    assert task.tokens.shape == (8, 16) and task.positions["IO"][0] == 5


def test_abba_swaps_the_first_two_names_of_baba(tokenizer):
    for t in (0, 6, 13):
        baba = ioi(tokenizer, 16, template=t, seed=5)
        abba = ioi(tokenizer, 16, template=t + 15, seed=5)
        assert baba.info["order"] == "BABA" and abba.info["order"] == "ABBA"
        io, s1 = int(baba.positions["IO"][0]), int(baba.positions["S1"][0])
        swapped = baba.tokens.copy()
        swapped[:, [io, s1]] = swapped[:, [s1, io]]
        np.testing.assert_array_equal(abba.tokens, swapped)
        np.testing.assert_array_equal(abba.correct, baba.correct)


def test_reproducible_by_seed(tokenizer):
    a = ioi(tokenizer, 16, template=3, seed=7)
    b = ioi(tokenizer, 16, template=3, seed=7)
    c = ioi(tokenizer, 16, template=3, seed=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.reference, b.reference)
    assert a.texts == b.texts and a.info == b.info
    assert not np.array_equal(a.tokens, c.tokens)
    assert not np.array_equal(a.reference, c.reference)
    # the reference size never changes the prompts
    d = ioi(tokenizer, 16, template=3, seed=7, n_reference=40)
    np.testing.assert_array_equal(a.tokens, d.tokens)
    assert d.reference.shape == (40, a.tokens.shape[1])
    assert a.reference.shape == a.tokens.shape  # n_reference defaults to n_prompts


def test_one_prompt_works(tokenizer):
    task = ioi(tokenizer, 1, template=29, seed=0)
    _check(task, tokenizer, 29)


@pytest.mark.parametrize("kwargs, message", [
    (dict(template=30), r"template must be an int in \[0, 29\], got 30"),
    (dict(template=-1), r"template must be an int in \[0, 29\], got -1"),
    (dict(n_prompts=0), r"n_prompts must be an int >= 1, got 0"),
    (dict(n_reference=0), r"n_reference must be an int >= 1, got 0"),
    (dict(seed=-3), r"seed must be an int >= 0, got -3"),
])
def test_bad_arguments(tokenizer, kwargs, message):
    kwargs = {"n_prompts": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        ioi(tokenizer, **kwargs)


def test_sweep_matches_a_loop_of_forwards(tokenizer):
    # A tiny random model with GPT-2's vocabulary, so the IOI ids are in range.
    model = jaxablate.load_gpt2(make_hf_model(tiny_hf_config(vocab_size=50257), seed=4))
    task = ioi(tokenizer, 4, template=5, seed=2, n_reference=6)
    replacement = jaxablate.mean_replacement(model, task.reference)
    mask_set = masks.from_components(model.cfg, ["0.1", ["1.2", "mlp0"]])
    out = jaxablate.sweep(model, task.tokens, mask_set, replacement, task.metric)
    assert out.shape == (2, 4)
    rows = np.arange(4)
    for i in range(len(mask_set)):
        logits = np.asarray(jaxablate.forward(model, task.tokens, mask_set.mask(i), replacement))
        last = logits[:, -1]
        expected = last[rows, task.correct] - last[rows, task.wrong]
        np.testing.assert_allclose(out[i], expected, rtol=1e-5, atol=1e-5)
    clean = np.asarray(jaxablate.forward(model, task.tokens))[:, -1]
    assert not np.allclose(out[0], clean[rows, task.correct] - clean[rows, task.wrong])


@pytest.mark.parametrize("template", [0, 7, 16, 29])
def test_without_bos_every_array_and_position_shifts_by_one(tokenizer, template):
    """prepend_bos=False: the same prompts without their first token, every labelled
    position one earlier (still pointing at its name), the same draws."""
    bare = ioi(tokenizer, 6, template=template, seed=4, n_reference=9, prepend_bos=False)
    with_bos = ioi(tokenizer, 6, template=template, seed=4, n_reference=9)
    for field in ("tokens", "reference", "counterfactual"):
        np.testing.assert_array_equal(getattr(with_bos, field)[:, 1:], getattr(bare, field))
    assert set(bare.positions) == set(with_bos.positions)
    for label, value in bare.positions.items():
        np.testing.assert_array_equal(value + 1, with_bos.positions[label], err_msg=label)
    assert bare.texts == with_bos.texts and bare.info["prepend_bos"] is False
    rows = np.arange(6)
    np.testing.assert_array_equal(bare.tokens[rows, bare.positions["IO"]], bare.correct)
    np.testing.assert_array_equal(bare.tokens[rows, bare.positions["S2"]], bare.wrong)
    np.testing.assert_array_equal(bare.tokens,
                                  jaxablate.to_tokens(tokenizer, bare.texts, prepend_bos=False))
    assert [tokenizer.decode(row) for row in bare.tokens.tolist()] == list(bare.texts)
    tasks = ioi_tasks(tokenizer, 6, templates=[template], seed=4, n_reference=9,
                      prepend_bos=False)
    np.testing.assert_array_equal(tasks[0].tokens, bare.tokens)


def test_prepend_bos_must_be_a_bool(tokenizer):
    # (under the suite's beartype the annotation refuses it first; either names the argument)
    with pytest.raises(TypeError, match="prepend_bos"):
        ioi(tokenizer, 4, prepend_bos="no")
