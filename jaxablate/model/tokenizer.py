"""The GPT-2 tokenizer, through transformers: shipped with the package (offline), from a
local folder, or from the hub.

Every GPT-2 size (and distilgpt2) uses the same BPE files; they ship in
`jaxablate/model/gpt2-tokenizer` (MIT licence, see SOURCE.md there), so `load_tokenizer("gpt2")`
and `tasks.ioi` need no network. `to_tokens` turns text into token ids the way
TransformerLens's `HookedTransformer.to_tokens` does (BOS first by default).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Int

from jaxablate.errors import InputError, InputTypeError
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


def bos_id(tokenizer: Any) -> int:
    """The id `to_tokens` puts first: the tokenizer's BOS token, else its EOS token (as
    TransformerLens's `set_tokenizer` falls back); 50256 (<|endoftext|>) for GPT-2.

    Example:
        >>> bos_id(load_tokenizer("gpt2"))
        50256
    """
    for token_id in (getattr(tokenizer, "bos_token_id", None),
                     getattr(tokenizer, "eos_token_id", None)):
        if token_id is not None:
            return int(token_id)
    raise InputError("the tokenizer has neither a BOS nor an EOS token; pass "
                     "prepend_bos=False")


def to_tokens(
    tokenizer: Any,
    text: str | Sequence[Any],  # Any: a non-str entry reaches the named error below
    prepend_bos: bool = True,
    padding_side: str = "right",
) -> Int[np.ndarray, "batch seq"]:
    """Token ids of a text or a list of texts, as TransformerLens's `model.to_tokens` gives
    them (TL 3.9 `HookedTransformer.to_tokens`, its defaults for GPT-2).

    text: a str (batch 1) or a list of str. prepend_bos: put `bos_id(tokenizer)` (50256 for
    GPT-2) first, TL's default; pass False when tokenizing a piece of a prompt. Texts of
    different lengths are padded on `padding_side` ("right", TL's default, or "left") with
    the tokenizer's pad id, else its EOS id (TL's fallback: 50256 for GPT-2). Unlike TL,
    nothing is truncated to a context length (a forward pass refuses a sequence longer than
    the model's). Returns a numpy int32 array [batch, seq] (numpy: tokens are host data,
    and every jaxablate entry point takes it).

    Example:
        >>> tok = load_tokenizer("gpt2")
        >>> to_tokens(tok, "Hello world!")
        array([[50256, 15496,   995,     0]], dtype=int32)
        >>> to_tokens(tok, ["Hi", "Hello world"], prepend_bos=False)   # right-padded
        array([[17250, 50256], [15496,   995]], dtype=int32)
    """
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, Sequence) or isinstance(texts, bytes) or \
            not all(isinstance(t, str) for t in texts):
        raise InputTypeError(f"to_tokens: expected a str or a list of str, got "
                             f"{type(text).__name__} {text!r:.80}")
    if not texts:
        raise InputError("to_tokens: the list of texts is empty")
    if not isinstance(prepend_bos, (bool, np.bool_)):
        raise InputTypeError(f"to_tokens: prepend_bos must be True or False, got "
                             f"{prepend_bos!r}")
    if padding_side not in ("right", "left"):
        raise InputError(f"to_tokens: padding_side must be 'right' or 'left', got "
                         f"{padding_side!r}")
    first = [bos_id(tokenizer)] if prepend_bos else []
    # add_special_tokens=False: the BOS is ours to add, never the tokenizer's as well.
    rows = [first + list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    empty = [i for i, row in enumerate(rows) if not row]
    if empty:
        raise InputError(f"to_tokens: text {empty[0]} ({texts[empty[0]]!r}) gives no tokens "
                         "(prepend_bos=False); a sequence needs at least one")
    pad = next((int(i) for i in (getattr(tokenizer, "pad_token_id", None),
                                 getattr(tokenizer, "eos_token_id", None)) if i is not None),
               first[0] if first else bos_id(tokenizer))
    seq = max(len(row) for row in rows)
    tokens = np.full((len(rows), seq), pad, np.int32)
    for i, row in enumerate(rows):
        if padding_side == "right":
            tokens[i, :len(row)] = row
        else:
            tokens[i, seq - len(row):] = row
    return tokens
