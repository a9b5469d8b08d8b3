"""Models shipped inside the package, loaded offline with `load_gpt2("bundled:NAME")`.

Each lives in its own folder in the standard Hugging Face GPT-2 layout (config.json,
model.safetensors) with a model card (README.md) and its figures as JSON (card.json).

  induction   2 layers x 4 heads, vocabulary 64, trained by `train_induction.py` on a copying
              task: a previous-token head feeding an induction head (see its card).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxablate.errors import InputError

BUNDLED = ("induction",)
_HERE = Path(__file__).resolve().parent


def bundled_path(name: str) -> Path:
    """The folder of the bundled model `name`.

    Example:
        >>> bundled_path("induction").name
        'induction'
    """
    if name not in BUNDLED:
        raise InputError(f"no bundled model {name!r}; bundled models: {', '.join(BUNDLED)}")
    folder = _HERE / name
    if not (folder / "model.safetensors").is_file():
        raise InputError(f"bundled model {name!r} is missing its weights in {folder} (a broken "
                         "install?); retrain with python -m jaxablate.zoo.train_" + name)
    return folder


def model_card(name: str) -> dict[str, Any]:
    """The bundled model's card as a dict: config, training settings, evaluation figures and
    the circuit heads by attention-pattern scores.

    Example:
        >>> model_card("induction")["evaluation"]["circuit"]["induction_heads"]
    """
    return json.loads((bundled_path(name) / "card.json").read_text())
