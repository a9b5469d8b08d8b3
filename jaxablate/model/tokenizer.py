"""The GPT-2 tokenizer, through transformers: shipped with the package (offline), from a
local folder, or from the hub.

Every GPT-2 size (and distilgpt2) uses the same BPE files; they ship in
`jaxablate/model/gpt2-tokenizer` (MIT licence, see SOURCE.md there), so `load_tokenizer("gpt2")`
and `tasks.ioi` need no network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jaxablate.errors import InputError
from jaxablate.model.hub import require_hub

GPT2_TOKENIZER_DIR = Path(__file__).resolve().parent / "gpt2-tokenizer"
# Hub ids whose tokenizer is exactly the bundled GPT-2 BPE.
GPT2_TOKENIZER_IDS = frozenset(
    prefix + name for prefix in ("", "openai-community/")
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")) | {"distilgpt2",
                                                                      "distilbert/distilgpt2"}


def load_tokenizer(source: str | os.PathLike) -> Any:
    """A transformers GPT-2 tokenizer: "gpt2" (or any GPT-2 size: the bundled files,
    offline), a folder with vocab.json and merges.txt (or tokenizer.json), or another hub id.

    Example:
        >>> tok = load_tokenizer("gpt2")
        >>> tok("Hello world!")["input_ids"]
        [15496, 995, 0]
    """
    from transformers import AutoTokenizer, GPT2TokenizerFast

    text = os.fspath(source)
    if text in GPT2_TOKENIZER_IDS and not os.path.isdir(text):
        return GPT2TokenizerFast.from_pretrained(GPT2_TOKENIZER_DIR)
    if os.path.isdir(text):
        has_bpe = all(os.path.isfile(os.path.join(text, f)) for f in ("vocab.json", "merges.txt"))
        if os.path.isfile(os.path.join(text, "tokenizer_config.json")) or \
                os.path.isfile(os.path.join(text, "tokenizer.json")):
            return AutoTokenizer.from_pretrained(text)
        if has_bpe:
            return GPT2TokenizerFast.from_pretrained(text)
        raise InputError(f"{text} holds no tokenizer (need vocab.json + merges.txt, or "
                         "tokenizer.json)")
    if os.path.exists(text):
        raise InputError(f"{text!r} is not a folder; pass the folder that holds vocab.json")
    try:  # the local cache first: no network needed once downloaded
        return AutoTokenizer.from_pretrained(text, local_files_only=True)
    except Exception:
        require_hub(f"tokenizer {text!r}")
    try:
        return AutoTokenizer.from_pretrained(text)
    except Exception as error:
        raise InputError(f"could not load tokenizer {text!r} ({type(error).__name__}: {error})"
                         ) from error
