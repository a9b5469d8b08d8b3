"""The real GPT-2 tokenizer, loaded from local files (vocab.json + merges.txt), no network;
`to_tokens` against TransformerLens's own `HookedTransformer.to_tokens` with that tokenizer."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

import jaxablate

# Ids as published for GPT-2 (openai-community/gpt2) and used by the IOI literature.
KNOWN = [
    ("Hello world!", [15496, 995, 0]),
    (" Mary", [5335]),
    (" John", [1757]),
    ("<|endoftext|>", [50256]),
]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return jaxablate.load_tokenizer(tokenizer_dir)


@pytest.mark.parametrize("text, ids", KNOWN, ids=[repr(t) for t, _ in KNOWN])
def test_known_ids(tokenizer, text, ids):
    assert tokenizer(text)["input_ids"] == ids
    assert tokenizer.decode(ids) == text


def test_vocab_size_is_gpt2s(tokenizer):
    assert len(tokenizer) == 50257
    assert tokenizer.eos_token_id == 50256


@pytest.mark.parametrize(
    "text",
    [
        "When Mary and John went to the store, John gave a drink to Mary",
        "  leading spaces, trailing  ",
        "Unicode: café, naïve, 東京, emoji 🙂\nand a new line\t(tab).",
        "",
    ],
)
def test_round_trip(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert all(0 <= i < 50257 for i in ids)
    assert tokenizer.decode(ids) == text


def test_str_path_accepted(tokenizer_dir, tokenizer):
    assert jaxablate.load_tokenizer(str(tokenizer_dir))("Hello world!")["input_ids"] == [
        15496, 995, 0]


def test_folder_without_tokenizer_files_refused(tmp_path):
    with pytest.raises(ValueError, match="holds no tokenizer"):
        jaxablate.load_tokenizer(tmp_path)


def test_folder_with_only_vocab_refused(tmp_path, tokenizer_dir):
    shutil.copy(tokenizer_dir / "vocab.json", tmp_path / "vocab.json")
    with pytest.raises(ValueError, match=r"holds no tokenizer \(need vocab.json \+ merges.txt"):
        jaxablate.load_tokenizer(tmp_path)


def test_file_path_refused(tokenizer_dir):
    with pytest.raises(ValueError, match="is not a folder"):
        jaxablate.load_tokenizer(tokenizer_dir / "vocab.json")


# ---------------------------------------------------------------------------------------------
# to_tokens: TransformerLens's to_tokens is the reference.

TEXTS = [
    "Hello world!",
    ["When Mary and John went to the store, John gave a drink to", "Hi", " spaced  out "],
    ["One", "Two words", "Three words here"],
    "<|endoftext|>already there",
    "",
    ["Unicode: café, 東京 🙂\n(tab)\t", "x"],
]


@pytest.fixture(scope="module")
def tl_with_tokenizer(tokenizer_dir):
    """A TransformerLens model holding the bundled GPT-2 tokenizer (weights irrelevant:
    only its to_tokens is used), built offline; TL's GPT-2 defaults: prepend BOS, pad right."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, n_ctx=1024,
                                  d_vocab=50257, act_fn="gelu_new", normalization_type="LN",
                                  device="cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer=jaxablate.load_tokenizer(tokenizer_dir))
    assert model.cfg.default_prepend_bos and model.tokenizer.padding_side == "right"
    return model


# "" without a BOS has no tokens at all: refused (test_to_tokens_refuses).
CASES = [(t, bos) for t in TEXTS for bos in (True, False) if t or bos]


@pytest.mark.parametrize("text, prepend_bos", CASES, ids=[f"{t!r:.24}-{b}" for t, b in CASES])
def test_to_tokens_equals_transformer_lens(tokenizer, tl_with_tokenizer, text, prepend_bos):
    ours = jaxablate.to_tokens(tokenizer, text, prepend_bos=prepend_bos)
    theirs = tl_with_tokenizer.to_tokens(text, prepend_bos=prepend_bos).numpy()
    assert ours.dtype == np.int32 and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_to_tokens_defaults_are_tls(tokenizer, tl_with_tokenizer):
    text = ["Hi there", "Hello world, how are you?"]
    ours = jaxablate.to_tokens(tokenizer, text)
    np.testing.assert_array_equal(ours, tl_with_tokenizer.to_tokens(text).numpy())
    assert ours[0, 0] == ours[1, 0] == 50256 and ours[0, -1] == 50256  # BOS, right padding
    left = jaxablate.to_tokens(tokenizer, text, padding_side="left")
    np.testing.assert_array_equal(
        left, tl_with_tokenizer.to_tokens(text, padding_side="left").numpy())


@pytest.mark.parametrize("kwargs, error, message", [
    ({"text": ""}, ValueError, r"text 0 \(''\) gives no tokens"),
    ({"text": []}, ValueError, "the list of texts is empty"),
    ({"text": ["a", 3]}, TypeError, "expected a str or a list of str"),
    ({"text": b"bytes"}, TypeError, "expected a str or a list of str"),
    ({"text": "a", "padding_side": "middle"}, ValueError, "padding_side must be 'right' or"),
])
def test_to_tokens_refuses(tokenizer, kwargs, error, message):
    kwargs = {"prepend_bos": False, **kwargs}
    with pytest.raises(error, match=message):
        jaxablate.to_tokens(tokenizer, **kwargs)
