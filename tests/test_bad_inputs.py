"""One table of bad inputs, through the API and the command line: every one is answered by an
error that names the problem and says what to do instead.

API rows call the library and must raise the row's error type before anything is compiled
(`nothing_compiles` fails the test if a jitted entry point of the engine runs).
Command-line rows run `jaxablate.cli.main` and must print exactly one line on stderr,
`jaxablate study: error: ...`, exit with status 2 and show no traceback (in particular none
from JAX internals). Each row gives two patterns: the problem, and the fix.

Many rows are also tested on their own elsewhere (test_engine_validation.py, test_cli.py,
test_tokens.py, test_store.py); this table is the one place that lists them all.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import shutil
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from conftest import nothing_compiles, TOKENIZER_DIR, make_hf_model, tiny_hf_config

import jaxablate as ja
from jaxablate import Mask, Replacement, masks, metrics
from jaxablate.store import results as store_lib
from jaxablate.cli.command import main

BATCH, SEQ = 3, 8
engine = importlib.import_module("jaxablate.engine.sweeping")
forward = importlib.import_module("jaxablate.model.batched")


@dataclasses.dataclass(frozen=True)
class Api:
    """call(ctx) must raise `error` with a message matching `problem` and `fix`."""

    name: str
    call: Callable[[Any], Any]
    problem: str
    fix: str
    error: type = ValueError


@dataclasses.dataclass(frozen=True)
class Cli:
    """`jaxablate study ARGV` (ARGV formatted with ctx's paths) must fail in one line."""

    name: str
    argv: tuple[str, ...]
    problem: str
    fix: str


def sweep(c, tokens=None, mask_set=None, replacement="zero", metric=None, **kw):
    """ja.sweep on the tiny model with the context's defaults for what is not given."""
    return ja.sweep(c.model, c.tokens if tokens is None else tokens,
                    masks.single_heads(c.cfg) if mask_set is None else mask_set,
                    c.zero if replacement == "zero" else replacement,
                    c.metric if metric is None else metric, **kw)


def stored_then_changed(c):
    """A stored sweep (its computation stubbed out), then the same sweep with another
    replacement: refused before anything runs."""
    folder = c.tmp / "store-mismatch"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store_lib, "sweep",
                   lambda model, tokens, part, *a, **k: np.zeros((len(part), BATCH), np.float32))
        sweep(c, store=folder)
    sweep(c, replacement=c.mean, store=folder)


CASES = [
    # -- tokens --------------------------------------------------------------------------------
    Api("tokens-one-sequence", lambda c: sweep(c, tokens=c.tokens[0]),
        r"tokens: expected int \[batch, seq\], got shape \(8,\)",
        r"wrap one sequence as tokens\[None\]"),
    Api("tokens-float-dtype", lambda c: sweep(c, tokens=c.tokens.astype(np.float32)),
        "tokens: expected integer token ids, got dtype float32", r"tokens\.astype\(np\.int32\)"),
    Api("tokens-outside-vocabulary", lambda c: sweep(c, tokens=c.tokens + 101),
        r"tokens: id \d+ is outside the vocabulary \[0, 101\)",
        "was the prompt tokenized for another model"),
    Api("tokens-longer-than-context", lambda c: sweep(c, tokens=np.zeros((2, 65), np.int32)),
        "sequence length 65 exceeds the model's n_ctx 64",
        "shorten the prompts to at most 64 tokens"),
    Api("tokens-empty", lambda c: sweep(c, tokens=np.zeros((0, 8), np.int32)),
        r"tokens: expected a non-empty \[batch, seq\]", r"got shape \(0, 8\)"),
    # -- masks ---------------------------------------------------------------------------------
    Api("mask-set-for-another-model", lambda c: sweep(c, mask_set=masks.single_heads(c.deep)),
        "masks were built for another model", r"masks\.single_heads\(model\.cfg\)"),
    Api("stacked-mask-wrong-shape",
        lambda c: sweep(c, mask_set=Mask(heads=jnp.ones((1, 3, 4), jnp.float32))),
        r"mask\.heads: expected \[n, layer, head\] = \[1, 2, 4\], got \[1, 3, 4\]",
        "built for another model or sequence length"),
    Api("keep-weight-nan", lambda c: sweep(c, mask_set=Mask(
        heads=jnp.ones((1, 2, 4), jnp.float32).at[0, 1, 2].set(jnp.nan))),
        r"mask\.heads: keep-weights", r"must lie in \[0, 1\]"),
    Api("keep-weight-above-one",
        lambda c: masks.from_components(c.cfg, ["0.1"], weight=1.5),
        "keep-weight .*got 1.5", r"must lie in \[0, 1\]"),
    Api("keep-weights-of-int-dtype",
        # (eqx.tree_at: past Mask's annotations, which the tests check at run time)
        lambda c: sweep(c, mask_set=eqx.tree_at(lambda m: m.heads, Mask(
            heads=jnp.ones((1, 2, 4), jnp.float32)), jnp.ones((1, 2, 4), jnp.int32))),
        r"mask\.heads: keep-weights must be floats, got int32", "must be floats"),
    Api("unknown-component-name", lambda c: masks.from_components(c.cfg, ["head5"]),
        "unknown component name 'head5'", r'write e\.g\. "5\.2"'),
    Api("component-index-out-of-range", lambda c: masks.from_components(c.cfg, ["5.2"]),
        "component '5.2': layer 5 is out of range", r"\[0, 2\)"),
    Api("empty-mask-set", lambda c: masks.from_components(c.cfg, []),
        "the mask set is empty", "give at least one mask"),
    Api("sae-mask-without-sae", lambda c: sweep(c, mask_set=masks.single_features(c.cfg, 4)),
        "masks ablate SAE features but the model has no SAE", r"jaxablate\.attach_sae"),
    # -- weights and replacements -------------------------------------------------------------
    Api("nan-in-weights", lambda c: ja.load_gpt2(c.nan_dir),
        "contains NaN or inf", "download or convert it again"),
    Api("inf-in-replacement", lambda c: sweep(c, replacement=Replacement(
        z=c.zero.z.at[0, 0, 1, 0].set(jnp.inf), mlp_out=c.zero.mlp_out, post=c.zero.post,
        resid=c.zero.resid)), r"replacement\.z contains NaN or inf",
        "build it from finite values"),
    Api("replacement-for-another-model",
        lambda c: sweep(c, replacement=ja.zero_replacement(c.deep_model)),
        r"replacement\.z: expected \[2, 'seq\|1', 4, 8\]",
        "built for another model or sequence length"),
    Api("replacement-for-another-length", lambda c: sweep(c, replacement=c.mean10),
        r"replacement\.z: expected .* with seq=8, got \[2, 10, 4, 8\]",
        "another model or sequence length"),
    Api("replacement-missing-a-field",
        lambda c: sweep(c, mask_set=masks.single_mlps(c.cfg),
                        replacement=Replacement(z=c.zero.z)),
        "replacement has no 'mlp_out' values, needed to ablate mlps",
        "zero_replacement, mean_replacement and resample_replacement fill every field"),
    Api("no-replacement", lambda c: sweep(c, replacement=None),
        "a mask is given but no replacement", r"jaxablate\.zero_replacement\(model\)"),
    Api("resample-from-one-prompt",
        lambda c: ja.resample_replacement(c.model, c.tokens[:1], jax.random.key(0)),
        "resample_replacement needs at least 2 prompts", "at least 2 prompts"),
    # -- metrics -------------------------------------------------------------------------------
    Api("metric-position-out-of-range",
        lambda c: sweep(c, metric=metrics.logit_diff([1, 2, 3], [4, 5, 6], position=8)),
        "logit_diff position: position out of range for sequence length 8",
        r"positions must lie in \[-8, 8\)"),
    Api("metric-answer-outside-vocabulary",
        lambda c: sweep(c, metric=metrics.logit_diff([1, 2, 101], [4, 5, 6])),
        r"logit_diff correct: id outside the vocabulary \[0, 101\)",
        "tokenized for another model"),
    Api("metric-ids-for-another-batch",
        lambda c: sweep(c, metric=metrics.logit_diff([1, 2], [4, 5])),
        r"logit_diff correct: expected ids \[batch\] = \[3\]", r"got shape \(2,\)"),
    Api("loss-on-the-last-position",
        lambda c: sweep(c, metric=metrics.loss(positions=[SEQ - 1])),
        "position 7 \\(the last\\) has no next token", "no next token"),
    # -- sweep settings and the results store -------------------------------------------------
    Api("chunk-size-zero", lambda c: sweep(c, chunk_size=0),
        "chunk_size must be an int >= 1, got 0", r"an int >= 1"),
    Api("chunk-size-out-of-memory", lambda c: sweep(c, chunk_size=10**9),
        r"chunk_size 1000000000 needs about .* TiB of activations .* more than the .* GiB of "
        r"the memory of this CPU device", r"pass chunk_size <= \d+, or leave it out"),
    Api("chunk-size-over-the-budget", lambda c: sweep(c, chunk_size=4, memory_budget=10**5),
        "chunk_size 4 needs about .* more than the .* of the memory budget",
        r"pass chunk_size <= 1"),
    Api("store-holds-another-run", stored_then_changed,
        r"holds results of another run \(changed: replacement values; ablation type: 'zero' "
        r"there, 'mean' now\)", r"pass overwrite=True .* or use another folder"),
    Api("store-folder-unwritable", lambda c: ja.ResultsStore(c.file / "inside"),
        "results store: cannot write to", "choose a folder you can write to"),
    Api("model-dtype-unknown", lambda c: ja.load_gpt2(c.nan_dir, dtype="float16"),
        "unknown dtype 'float16'", r"choose one of \['bfloat16', 'float32'\]"),
    # -- study -------------------------------------------------------------------------------
    Api("study-one-prompt",
        lambda c: ja.Study(c.model, tokens=c.tokens[:1], metric=metrics.logit_diff(1, 2)),
        "a study needs at least 2 prompts", "at least 2 prompts"),
    Api("study-unknown-ablation",
        lambda c: ja.Study(c.model, tokens=c.tokens, metric=c.metric, ablation="gaussian"),
        "ablation must be one of", r"\('zero', 'mean', 'resample', 'optimal'\)"),
    Api("study-chunk-size-out-of-memory",
        lambda c: ja.Study(c.model, tokens=c.tokens, metric=c.metric, chunk_size=10**9),
        "chunk_size 1000000000 needs about", r"pass chunk_size <= \d+"),
    # -- prompt files --------------------------------------------------------------------------
    Api("empty-prompt-file", lambda c: ja.tasks.from_jsonl(c.empty_jsonl, c.tokenizer),
        "the file is empty", "expected one JSON object per line"),
    Api("multi-token-answer", lambda c: ja.tasks.from_jsonl(c.two_token_jsonl, c.tokenizer),
        r"line 1: 'correct' answer 'Maryland' is 2 tokens", "expected exactly 1 token"),
    # -- the command line --------------------------------------------------------------------
    Cli("cli-empty-prompt-file", ("--model", "{gpt2_vocab_dir}", "--prompts", "{empty_jsonl}",
                                  "--tokenizer", "{tokenizer_dir}"),
        "the file is empty", "expected one JSON object per line"),
    Cli("cli-multi-token-answer", ("--model", "{gpt2_vocab_dir}", "--prompts", "{two_token_jsonl}",
                                   "--tokenizer", "{tokenizer_dir}"),
        "'correct' answer 'Maryland' is 2 tokens", "expected exactly 1 token"),
    Cli("cli-nan-in-weights", ("--model", "{nan_dir}"),
        "contains NaN or inf", "download or convert it again"),
    Cli("cli-chunk-size-out-of-memory", ("--model", "{tiny}", "--chunk-size", "1000000000"),
        "--chunk-size 1000000000 needs about .* TiB", r"pass --chunk-size <= \d+"),
    Cli("cli-out-under-a-file", ("--model", "{tiny}", "--out", "{file}/report"),
        "--out: cannot create .* is a file, not a folder", "choose another --out"),
    Cli("cli-one-prompt", ("--model", "{tiny}", "--n-prompts", "1"),
        "a study needs at least 2 prompts", "at least 2 prompts"),
    Cli("cli-unknown-component-kind", ("--components", "heads,attn"),
        "unknown component kind 'attn'", "choose from heads, mlps, neurons"),
    Cli("cli-overlapping-component-kinds", ("--components", "heads,mlps,neurons"),
        "mlps and neurons overlap", "run two studies"),
    Cli("cli-neuron-layer-out-of-range",
        ("--model", "{tiny}", "--components", "neurons", "--neuron-layers", "0,5"),
        r"--neuron-layers \[5\] out of range", "the model has layers 0-1"),
    Cli("cli-tokenizer-for-another-model",
        ("--model", "{tiny}", "--task", "ioi", "--tokenizer", "{tokenizer_dir}"),
        "the tokenizer has 50257 ids but the model's vocabulary has 101",
        "pass the model's own tokenizer"),
]


@pytest.fixture(scope="module")
def ctx(tiny_model, tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-inputs")
    cfg = tiny_model.cfg
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.d_vocab, (BATCH, SEQ)).astype(np.int32)
    deep_model = ja.load_gpt2(make_hf_model(tiny_hf_config(n_layer=3), seed=1))
    # A checkpoint folder with one NaN weight.
    nan_dir = tmp / "nan-model"
    nan_dir.mkdir()
    shutil.copy(tiny_dir / "config.json", nan_dir / "config.json")
    tensors = safetensors.numpy.load_file(tiny_dir / "model.safetensors")
    name = next(k for k in tensors if k.endswith("h.1.mlp.c_fc.weight"))
    tensors[name][3, 4] = np.nan
    safetensors.numpy.save_file(tensors, nan_dir / "model.safetensors")
    blocker = tmp / "a-file"
    blocker.write_text("not a folder")
    empty = tmp / "empty.jsonl"
    empty.write_text("\n\n")
    two = tmp / "two-token.jsonl"
    two.write_text(json.dumps({"prompt": "When Mary and John went to the store, John gave a "
                               "drink to", "correct": "Maryland", "wrong": " John"}) + "\n")
    tokenizer = ja.load_tokenizer(TOKENIZER_DIR)
    return SimpleNamespace(
        model=tiny_model, cfg=cfg, tokens=tokens, tmp=tmp, deep_model=deep_model,
        deep=deep_model.cfg, zero=ja.zero_replacement(tiny_model),
        mean=ja.mean_replacement(tiny_model, tokens),
        mean10=ja.mean_replacement(tiny_model, rng.integers(0, 101, (2, 10))),
        metric=metrics.logit_diff([1, 2, 3], [4, 5, 6]), nan_dir=nan_dir, file=blocker,
        empty_jsonl=empty, two_token_jsonl=two, tokenizer=tokenizer, tiny=tiny_dir)


def test_the_table_has_25_or_more_distinct_bad_inputs():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)) >= 25
    assert sum(isinstance(c, Cli) for c in CASES) >= 8


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_bad_input_names_the_problem_and_the_fix(case, ctx, request, capsys):
    if isinstance(case, Api):
        with nothing_compiles(), pytest.raises(case.error) as caught:
            case.call(ctx)
        message = str(caught.value)
    else:
        where = {"tiny": ctx.tiny, "nan_dir": ctx.nan_dir, "file": ctx.file,
                 "empty_jsonl": ctx.empty_jsonl, "two_token_jsonl": ctx.two_token_jsonl,
                 "tokenizer_dir": TOKENIZER_DIR}
        if "{gpt2_vocab_dir}" in case.argv:
            where["gpt2_vocab_dir"] = request.getfixturevalue("gpt2_vocab_dir")
            capsys.readouterr()  # what building it printed
        argv = ["study", *(a.format(**where) for a in case.argv)]
        if "--out" not in argv:
            argv += ["--out", str(ctx.tmp / "out")]
        with nothing_compiles():
            status = main(argv + ["--quiet", "--no-cache", "--no-plots"])
        message = capsys.readouterr().err
        assert status == 2, (status, message)
        assert message.startswith("jaxablate study: error: "), message
        assert message.count("\n") == 1 and message.endswith("\n"), f"not one line:\n{message}"
        for marker in ("Traceback", "jax._src", "jaxlib"):
            assert marker not in message, message
    assert re.search(case.problem, message), f"problem {case.problem!r} not in: {message}"
    assert re.search(case.fix, message), f"fix {case.fix!r} not in: {message}"
