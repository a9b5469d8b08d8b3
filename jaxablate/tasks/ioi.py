"""Indirect Object Identification (IOI) prompts, as in Wang et al. 2022 (arXiv 2211.00593).

"Then, John and Mary went to the store. John gave a drink to" -> " Mary": the model should
name the indirect object (IO, " Mary") rather than the subject (S, " John"); the task's
metric is the logit difference IO - S at the last token.

Templates, names, places and objects are those of the authors' code (`ioi_dataset.py` of
redwoodresearch/Easy-Transformer): 15 "BABA" templates (S, IO, S) and their "ABBA" swaps
(IO, S, S), 99 first names (the paper says 100), 8 places and 8 objects. In a template `[B]`
is S and `[A]` is IO; the final `[A]` is the answer and is not part of the prompt. (The
authors' "mixed" dataset samples only the first 7 templates of each order; here each of the 30
is available.)

One `Task` holds one template, so every prompt has the same token length and each position
means the same thing in every prompt: per-position means (IOI's "means per template") and
labelled positions line up. `ioi_tasks` builds one task per template.

Every prompt starts with the BOS token (<|endoftext|>, 50256 for GPT-2) by default, as the
IOI prompts do in TransformerLens (its `to_tokens` prepends BOS: TL's IOI notebooks and
`jaxablate.to_tokens`); `prepend_bos=False` gives the bare sentences. The labelled positions
count the BOS: with it, IO of template 0 is token 5, without it token 4.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxablate.ablation.metrics import logit_diff
from jaxablate.errors import InputError, InputTypeError
from jaxablate.model.tokenizer import bos_id
from jaxablate.model.validation import check_int
from jaxablate.tasks.base import Task

BABA_TEMPLATES: tuple[str, ...] = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] "
    "to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
)

# The authors' swap: the first "[B] and [A]" becomes "[A] and [B]"; S still comes second
# after the clause, so the order of the three names reads IO, S, S.
ABBA_TEMPLATES: tuple[str, ...] = tuple(
    t.replace("[B] and [A]", "[A] and [B]", 1) for t in BABA_TEMPLATES)

NAMES: tuple[str, ...] = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda",
    "Daniel", "David", "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon",
    "Jason", "Justin", "Sarah", "William", "Jonathan", "Stephanie", "Brian", "Nicole",
    "Nicholas", "Anthony", "Heather", "Eric", "Elizabeth", "Adam", "Megan", "Melissa", "Kevin",
    "Steven", "Thomas", "Timothy", "Christina", "Kyle", "Rachel", "Laura", "Lauren", "Amber",
    "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy", "Crystal", "Michelle",
    "Tiffany", "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca", "Jacob",
    "Stephen", "Patrick", "Sean", "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara",
    "Dustin", "Paul", "Angela", "Tyler", "Scott", "Katherine", "Andrea", "Gregory", "Erica",
    "Mary", "Travis", "Lisa", "Kenneth", "Bryan", "Lindsey", "Kristen", "Jose", "Alexander",
    "Jesse", "Katie", "Lindsay", "Shannon", "Vanessa", "Courtney", "Christine", "Alicia",
    "Cody", "Allison", "Bradley", "Samuel",
)
PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
OBJECTS: tuple[str, ...] = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")

_SLOT = re.compile(r"\[(A|B|PLACE|OBJECT)\]")
_ANSWER = " [A]"
# IO and S of a prompt, plus the three ABC names that must differ from both.
_MIN_NAMES = 5


def ioi_templates() -> tuple[str, ...]:
    """The 30 IOI templates: BABA 0-14 (S, IO, S), then their ABBA swaps 15-29 (IO, S, S).

    Template t + 15 is template t with its first "[B] and [A]" swapped. `[B]` is the subject,
    `[A]` the indirect object; the final `[A]` is the answer.

    Example:
        >>> ioi_templates()[0]
        'Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]'
        >>> ioi_templates()[15]
        'Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]'
    """
    return BABA_TEMPLATES + ABBA_TEMPLATES


def _single_tokens(tokenizer: Any, words: Sequence[str]) -> tuple[str, ...]:
    """The words that are one token with a leading space (the way they occur mid-sentence),
    dropping a word whose token another word already took."""
    kept, seen = [], set()
    for word in words:
        ids = tokenizer(" " + word)["input_ids"]
        if len(ids) == 1 and ids[0] not in seen:
            kept.append(word)
            seen.add(ids[0])
    return tuple(kept)


def ioi_vocabulary(tokenizer: Any) -> dict[str, tuple[str, ...]]:
    """The names, places and objects that are a single token (with a leading space) for
    `tokenizer`: the pool `ioi` draws from. Multi-token words are dropped because a name's
    position must be one token for IO/S positions and the answer id to make sense.

    Returns {"names": ..., "places": ..., "objects": ...} (tuples of words, no space).

    Example:
        >>> vocab = ioi_vocabulary(load_tokenizer("gpt2"))
        >>> len(vocab["names"]), len(vocab["places"]), len(vocab["objects"])
        (99, 8, 8)
    """
    return {"names": _single_tokens(tokenizer, NAMES),
            "places": _single_tokens(tokenizer, PLACES),
            "objects": _single_tokens(tokenizer, OBJECTS)}


def _fill(body: str, io: str, s1: str, s2: str, place: str, obj: str) -> str:
    """`body` with its [A] slot set to `io`, its two [B] slots to `s1` then `s2`."""
    subjects = iter((s1, s2))

    def one(match: re.Match) -> str:
        slot = match.group(1)
        if slot == "A":
            return io
        if slot == "B":
            return next(subjects)
        return place if slot == "PLACE" else obj

    return _SLOT.sub(one, body)


def _slot_positions(tokenizer: Any, body: str, words: tuple[str, ...],
                    first: int) -> dict[str, int]:
    """Token index of the IO, S1 and S2 slots of `body` filled with `words`, counting the
    `first` tokens put before the text (1 for a BOS, else 0).

    A name token carries its leading space, so the tokens before a slot are those of the text
    before it minus that space; GPT-2's pre-tokenizer always splits before " Name", so that
    prefix tokenizes to exactly the tokens before the slot. (The caller still checks every
    prompt's ids at these positions.)
    """
    found: dict[str, int] = {}
    for match in _SLOT.finditer(body):
        slot = match.group(1)
        if slot == "A":
            label = "IO"
        elif slot == "B":
            label = "S2" if "S1" in found else "S1"
        else:
            continue
        prefix = _fill(body[:match.start()], *words).removesuffix(" ")
        found[label] = first + len(tokenizer(prefix)["input_ids"])
    if set(found) != {"IO", "S1", "S2"}:  # holds for all 30 templates
        raise InputError(f"template {body!r} needs one [A] and two [B] before the answer")
    return found


def _tokenize(tokenizer: Any, texts: Sequence[str], what: str,
              first: Sequence[int]) -> np.ndarray:
    """int32 [n, seq], each text's ids after the ids `first` (a BOS, or none); ValueError
    listing the lengths when they differ."""
    ids = [list(first) + list(tokenizer(text)["input_ids"]) for text in texts]
    lengths = sorted({len(i) for i in ids})
    if len(lengths) > 1:
        example = {n: texts[[len(i) for i in ids].index(n)] for n in lengths}
        raise InputError(f"{what}: prompts tokenize to different lengths {lengths} (one task "
                         f"needs one length); examples: {example}")
    return np.asarray(ids, np.int32)


def ioi(tokenizer: Any, n_prompts: int = 64, *, template: int = 0, seed: int = 0,
        n_reference: int | None = None, prepend_bos: bool = True) -> Task:
    """IOI prompts from one template, with the "ABC" reference set for mean ablation.

    tokenizer: a GPT-2 tokenizer (`jaxablate.load_tokenizer`). template: index into
    `ioi_templates()` (BABA 0-14, ABBA 15-29). Each prompt draws IO != S from the names that
    are one token, and a place and an object, with `np.random.default_rng(seed)`: the same
    seed gives the same task, whatever `n_reference` is. prepend_bos: start every prompt
    (and reference and counterfactual) with the BOS id, as TransformerLens's IOI prompts
    start (its `to_tokens` default); the tokens equal `jaxablate.to_tokens(tokenizer,
    task.texts, prepend_bos)`.

    Returns a `Task` with
        tokens: int32 [n_prompts, seq] (BOS, then the prompt, which stops before the final
            IO name);
        correct / wrong: int32 [n_prompts], the ids of " IO" / " S";
        metric: `logit_diff(correct, wrong)` at the last position;
        positions: "IO", "S1", "S2", "S1+1", "END" -> int32 [n_prompts] (token indices
            in `tokens`, the BOS counted; END = seq - 1);
        reference: int32 [n_reference, seq], the ABC set: reference prompt j keeps prompt
            (j mod n_prompts)'s template, place and object, and its IO, S1 and S2 slots hold
            three distinct names, none of them that prompt's IO or S;
        counterfactual: int32 [n_prompts, seq], prompt i's ABC version (the source set of
            activation and path patching, paired by index);
        texts: the prompt strings (without the BOS); info: task, template, seed, pool
            sizes and prepend_bos.

    Example:
        >>> task = ioi(load_tokenizer("gpt2"), 4, template=0, seed=0)
        >>> task.texts[0]
        'Then, Erin and Lindsey went to the hospital. Erin gave a necklace to'
        >>> task.tokens.shape, task.tokens[0, 0], task.positions["IO"][0]  # (4, 16), 50256, 5
        >>> out = sweep(model, task.tokens, masks.single_heads(model.cfg),
        ...             mean_replacement(model, task.reference), task.metric)
    """
    templates = ioi_templates()
    template = check_int(template, "template", 0, len(templates))
    n_prompts = check_int(n_prompts, "n_prompts", 1)
    n_reference = n_prompts if n_reference is None else check_int(n_reference,
                                                                     "n_reference", 1)
    seed = check_int(seed, "seed", 0)
    if not isinstance(prepend_bos, (bool, np.bool_)):
        raise InputTypeError(f"prepend_bos must be True or False, got {prepend_bos!r}")
    first = [bos_id(tokenizer)] if prepend_bos else []
    text = templates[template]
    if not text.endswith(_ANSWER):  # holds for all 30; guards an edited template list
        raise InputError(f"template {template} must end with the answer slot '{_ANSWER}'")
    body = text[:-len(_ANSWER)]

    vocab = ioi_vocabulary(tokenizer)
    names, places, objects = vocab["names"], vocab["places"], vocab["objects"]
    if len(names) < _MIN_NAMES or not places or not objects:
        raise InputError(
            f"this tokenizer leaves {len(names)} single-token names, {len(places)} places and "
            f"{len(objects)} objects; IOI needs at least {_MIN_NAMES} names (IO, S and three "
            "ABC names) and one of each noun")
    name_ids = np.array([tokenizer(" " + n)["input_ids"][0] for n in names], np.int32)

    rng = np.random.default_rng(seed)
    pairs = np.stack([rng.choice(len(names), 2, replace=False) for _ in range(n_prompts)])
    io, s = pairs[:, 0], pairs[:, 1]
    place = rng.integers(len(places), size=n_prompts)
    obj = rng.integers(len(objects), size=n_prompts)
    # Drawn after the prompts, so n_reference never changes the prompts. Row j < n_prompts
    # is prompt j's counterfactual (patching pairs by index); the reference is the first
    # n_reference rows, the same draws whether or not more rows follow.
    base = np.arange(max(n_reference, n_prompts)) % n_prompts
    every = np.arange(len(names))
    abc = np.stack([rng.choice(np.setdiff1d(every, pairs[b]), 3, replace=False) for b in base])

    def words(i: int | np.integer, a: int | np.integer, b1: int | np.integer,
              b2: int | np.integer) -> tuple[str, ...]:
        """(IO, S1, S2, place, object) words for prompt i's nouns and the given names."""
        return names[a], names[b1], names[b2], places[place[i]], objects[obj[i]]

    texts = [_fill(body, *words(i, io[i], s[i], s[i])) for i in range(n_prompts)]
    ref_texts = [_fill(body, *words(b, *abc[j])) for j, b in enumerate(base)]
    where = f"IOI template {template}"
    tokens = _tokenize(tokenizer, texts, where, first)
    abc_tokens = _tokenize(tokenizer, ref_texts, f"{where} (ABC reference)", first)
    seq = tokens.shape[1]
    if abc_tokens.shape[1] != seq:
        raise InputError(f"{where}: ABC prompts have {abc_tokens.shape[1]} tokens, the IOI "
                         f"prompts {seq}; per-position means need one length")

    slots = _slot_positions(tokenizer, body, words(0, io[0], s[0], s[0]), len(first))
    # Every prompt must carry its names at the slot positions, or the labels would lie.
    expected = {"IO": (name_ids[io], name_ids[abc[:, 0]]),
                "S1": (name_ids[s], name_ids[abc[:, 1]]),
                "S2": (name_ids[s], name_ids[abc[:, 2]])}
    for label, (ids, ref_ids) in expected.items():
        if not (np.array_equal(tokens[:, slots[label]], ids)
                and np.array_equal(abc_tokens[:, slots[label]], ref_ids)):
            raise InputError(f"{where}: the {label} name is not at token {slots[label]} in "
                             "every prompt; the tokenizer splits the template differently "
                             "from GPT-2's")

    full = {label: np.full(n_prompts, slots[label], np.int32) for label in ("IO", "S1", "S2")}
    positions = {**full, "S1+1": full["S1"] + 1, "END": np.full(n_prompts, seq - 1, np.int32)}
    correct, wrong = name_ids[io], name_ids[s]
    return Task(
        name="ioi",
        tokens=tokens,
        metric=logit_diff(correct, wrong),
        correct=correct,
        wrong=wrong,
        positions=positions,
        reference=abc_tokens[:n_reference],
        counterfactual=abc_tokens[:n_prompts],
        texts=tuple(texts),
        info={"task": "ioi", "template": template, "order": "BABA" if template < 15 else "ABBA",
              "template_text": text, "seed": seed, "n_prompts": n_prompts,
              "n_reference": n_reference, "n_names": len(names), "n_places": len(places),
              "n_objects": len(objects), "prepend_bos": bool(prepend_bos)},
    )


def ioi_tasks(tokenizer: Any, n_prompts: int = 64, *, templates: Sequence[int] | None = None,
              seed: int = 0, n_reference: int | None = None,
              prepend_bos: bool = True) -> list[Task]:
    """One `ioi` task per template (default all 30), each with its own ABC reference, so that
    mean ablation uses means per template.

    Every task uses the same `seed`, so template t draws the same IO/S pairs, places and
    objects as any other template (a paired comparison across templates; BABA t and ABBA
    t + 15 differ only in name order). Pass different seeds to `ioi` for independent draws.

    Returns a list of `Task`, one per template, each tokens int32 [n_prompts, seq_t]
    (BOS first unless prepend_bos=False, as `ioi`).

    Example:
        >>> tasks = ioi_tasks(tok, 32, templates=range(15))           # the BABA templates
        >>> [t.tokens.shape[1] for t in tasks][:3]                     # [16, 20, 19]
    """
    chosen = range(len(ioi_templates())) if templates is None else templates
    return [ioi(tokenizer, n_prompts, template=t, seed=seed, n_reference=n_reference,
                prepend_bos=prepend_bos) for t in chosen]
