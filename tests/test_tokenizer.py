"""The real GPT-2 tokenizer, loaded from local files (vocab.json + merges.txt), no network."""

from __future__ import annotations

import shutil

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
