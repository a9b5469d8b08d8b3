"""Models shipped inside the package, loaded offline with `load_gpt2("bundled:NAME")`.

Each lives in its own folder in the standard Hugging Face GPT-2 layout (config.json,
model.safetensors) with a model card (README.md) and its figures as JSON (card.json).

  induction   2 layers x 4 heads, vocabulary 64, trained by `train_induction.py` on a copying
              task: a previous-token head feeding an induction head (see its card).
"""

from __future__ import annotations

import json
from typing import Any

# Where the files are is the model wing's business (it loads them); re-exported here.
from jaxablate.model.bundled import BUNDLED, bundled_path

__all__ = ["BUNDLED", "bundled_path", "model_card"]


def model_card(name: str) -> dict[str, Any]:
    """The bundled model's card as a dict: config, training settings, evaluation figures and
    the circuit heads by attention-pattern scores.

    Example:
        >>> model_card("induction")["evaluation"]["circuit"]["induction_heads"]
    """
    return json.loads((bundled_path(name) / "card.json").read_text())
