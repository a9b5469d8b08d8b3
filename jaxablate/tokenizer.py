"""The GPT-2 tokenizer, through transformers (hub id or local folder)."""

from __future__ import annotations

import os
from typing import Any


def load_tokenizer(source: str | os.PathLike) -> Any:
    """A transformers GPT-2 tokenizer from a hub id ("gpt2") or a folder with vocab.json and
    merges.txt (or tokenizer.json).

    Example:
        >>> tok = load_tokenizer("gpt2")
        >>> tok("Hello world!")["input_ids"]
        [15496, 995, 0]
    """
    from transformers import AutoTokenizer, GPT2TokenizerFast

    text = os.fspath(source)
    if os.path.isdir(text):
        has_bpe = all(os.path.isfile(os.path.join(text, f)) for f in ("vocab.json", "merges.txt"))
        if os.path.isfile(os.path.join(text, "tokenizer_config.json")) or \
                os.path.isfile(os.path.join(text, "tokenizer.json")):
            return AutoTokenizer.from_pretrained(text)
        if has_bpe:
            return GPT2TokenizerFast.from_pretrained(text)
        raise ValueError(f"{text} holds no tokenizer (need vocab.json + merges.txt, or "
                         "tokenizer.json)")
    if os.path.exists(text):
        raise ValueError(f"{text!r} is not a folder; pass the folder that holds vocab.json")
    try:
        return AutoTokenizer.from_pretrained(text)
    except Exception as error:
        raise ValueError(f"could not load tokenizer {text!r} ({type(error).__name__}: {error})"
                         ) from error
