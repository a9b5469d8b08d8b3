"""A toy Indirect Object Identification task over a 64-token vocabulary (bundled:ioi-toy).

A prompt reads, in token ids,

    BOS  f..f  N1 AND N2  f..f  S GAVE  f..f  TO        -> answer: IO

two names N1, N2 (IO and S in either order: ABBA = IO, S, ..., S; BABA = S, IO, ..., S), runs
of filler tokens, the subject S repeated, and the indirect object IO as the answer: the name
that occurs once. The vocabulary (`IOI_TOY_VOCAB`): BOS 0, AND 1, GAVE 2, TO 3, fillers 4-15,
names 16-63. A template is the three filler-run lengths (before the names, between the names
and S2, between GAVE and TO); every prompt of one task shares one template, so positions
line up and per-position means mean something, while ABBA and BABA prompts are mixed in one
task (their positions are labelled per prompt).

The ABC set, as in IOI: each prompt with its IO, S1 and S2 slots holding three distinct names,
none of them the prompt's IO or S, and the same fillers; the task's reference (mean
ablation) and counterfactual (patching, paired by index).
"""

from __future__ import annotations

import numpy as np

from jaxablate.ablation.metrics import logit_diff
from jaxablate.errors import InputError
from jaxablate.model.validation import check_int
from jaxablate.tasks.base import Task

BOS, AND, GAVE, TO = 0, 1, 2, 3
FILLERS = tuple(range(4, 16))
NAMES = tuple(range(16, 64))
IOI_TOY_VOCAB = 64
# Filler-run lengths (before the names, between the names and S2, between GAVE and TO).
IOI_TOY_TEMPLATES: tuple[tuple[int, int, int], ...] = (
    (2, 3, 1), (0, 2, 0), (1, 4, 2), (3, 1, 1), (4, 5, 3), (0, 6, 0))
ORDERS = ("ABBA", "BABA", "mixed")


def ioi_toy_layout(pre: int, mid: int, post: int) -> dict[str, int]:
    """Token index of each labelled slot in a prompt of filler runs (pre, mid, post), and its
    length `seq` (END = seq - 1, the TO token whose next token is the answer).

    Example:
        >>> ioi_toy_layout(2, 3, 1)
        {'N1': 3, 'N2': 5, 'S2': 9, 'END': 12, 'seq': 13}
    """
    n1 = 1 + pre
    s2 = n1 + 3 + mid
    end = s2 + 2 + post
    return {"N1": n1, "N2": n1 + 2, "S2": s2, "END": end, "seq": end + 1}


def ioi_toy_prompts(rng: np.random.Generator, names: np.ndarray, abba: np.ndarray,
                    pre: int, mid: int, post: int, fillers: np.ndarray | None = None
                    ) -> np.ndarray:
    """Prompts int32 [n, seq] from names int [n, 3] = (IO, S1, S2) per prompt (S1 = S2 in
    an IOI prompt, three names in an ABC one), `abba` bool [n] (IO first) and the filler runs;
    fillers int [n, pre + mid + post] (drawn from `rng` when None).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> ioi_toy_prompts(rng, np.array([[20, 30, 30]]), np.array([True]), 0, 1, 0)
        array([[ 0, 20,  1, 30, 14, 30,  2,  3]], dtype=int32)
    """
    n = names.shape[0]
    layout = ioi_toy_layout(pre, mid, post)
    if fillers is None:
        fillers = rng.choice(np.asarray(FILLERS), (n, pre + mid + post))
    tokens = np.empty((n, layout["seq"]), np.int32)
    tokens[:, 0] = BOS
    tokens[:, 1:1 + pre] = fillers[:, :pre]
    n1 = layout["N1"]
    tokens[:, n1] = np.where(abba, names[:, 0], names[:, 1])
    tokens[:, n1 + 1] = AND
    tokens[:, n1 + 2] = np.where(abba, names[:, 1], names[:, 0])
    tokens[:, n1 + 3:layout["S2"]] = fillers[:, pre:pre + mid]
    tokens[:, layout["S2"]] = names[:, 2]
    tokens[:, layout["S2"] + 1] = GAVE
    tokens[:, layout["S2"] + 2:layout["END"]] = fillers[:, pre + mid:]
    tokens[:, layout["END"]] = TO
    return tokens


def ioi_toy(n_prompts: int = 64, *, template: int = 0, order: str = "mixed", seed: int = 0,
            n_reference: int | None = None) -> Task:
    """Toy IOI prompts of one template (`IOI_TOY_TEMPLATES[template]`), with the ABC set.

    order: "ABBA", "BABA" or "mixed" (prompt i is ABBA when i is even). Names, fillers and
    the ABC names are drawn with `np.random.default_rng(seed)`, the prompts first, so
    `n_reference` never changes them.

    Returns a `Task` with
        tokens: int32 [n_prompts, seq] (the prompt stops before the answer);
        correct / wrong: int32 [n_prompts], IO / S ids; metric: `logit_diff(correct, wrong)`
            at END (the last position);
        positions: "IO", "S1", "S2", "S1+1", "END" -> int32 [n_prompts] (IO and S1 swap
            between ABBA and BABA prompts);
        reference: int32 [n_reference, seq], the ABC set (row j from prompt j mod n_prompts);
        counterfactual: int32 [n_prompts, seq], each prompt's ABC version;
        info: task, template, its filler runs, order, seed, sizes.

    Example:
        >>> task = ioi_toy(4, template=0, seed=0)
        >>> task.tokens.shape, task.positions["END"][0], task.positions["S2"][0]
        ((4, 13), 12, 9)
    """
    template = check_int(template, "template", 0, len(IOI_TOY_TEMPLATES))
    n_prompts = check_int(n_prompts, "n_prompts", 1)
    n_reference = n_prompts if n_reference is None else check_int(n_reference,
                                                                     "n_reference", 1)
    seed = check_int(seed, "seed", 0)
    if order not in ORDERS:
        raise InputError(f"order: expected one of {list(ORDERS)}, got {order!r}")
    pre, mid, post = IOI_TOY_TEMPLATES[template]
    layout = ioi_toy_layout(pre, mid, post)
    rng = np.random.default_rng(seed)
    pool = np.asarray(NAMES)
    pairs = np.stack([rng.choice(pool, 2, replace=False) for _ in range(n_prompts)])
    io, s = pairs[:, 0], pairs[:, 1]
    abba = (np.arange(n_prompts) % 2 == 0) if order == "mixed" else np.full(
        n_prompts, order == "ABBA")
    fillers = rng.choice(np.asarray(FILLERS), (n_prompts, pre + mid + post))
    tokens = ioi_toy_prompts(rng, np.stack([io, s, s], 1), abba, pre, mid, post, fillers)
    # Drawn after the prompts; rows j < n_prompts are the paired counterfactuals.
    base = np.arange(max(n_prompts, n_reference)) % n_prompts
    abc = np.stack([rng.choice(np.setdiff1d(pool, pairs[b]), 3, replace=False) for b in base])
    abc_tokens = ioi_toy_prompts(rng, abc, abba[base], pre, mid, post, fillers[base])

    n1 = np.full(n_prompts, layout["N1"], np.int32)
    io_pos = np.where(abba, n1, n1 + 2).astype(np.int32)
    s1_pos = np.where(abba, n1 + 2, n1).astype(np.int32)
    positions = {"IO": io_pos, "S1": s1_pos, "S2": np.full(n_prompts, layout["S2"], np.int32),
                 "S1+1": s1_pos + 1, "END": np.full(n_prompts, layout["END"], np.int32)}
    correct, wrong = io.astype(np.int32), s.astype(np.int32)
    return Task(
        name="ioi_toy",
        tokens=tokens,
        metric=logit_diff(correct, wrong),
        correct=correct,
        wrong=wrong,
        positions=positions,
        reference=abc_tokens[:n_reference],
        counterfactual=abc_tokens[:n_prompts],
        info={"task": "ioi_toy", "template": template, "fillers": [pre, mid, post],
              "order": order, "seed": seed, "n_prompts": n_prompts,
              "n_reference": n_reference, "n_names": len(NAMES), "vocab": IOI_TOY_VOCAB},
    )
