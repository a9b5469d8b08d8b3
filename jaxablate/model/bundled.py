"""Where the models shipped inside the package live (`load_gpt2("bundled:NAME")`).

Their files are in `jaxablate/zoo/NAME/` (the zoo wing also holds their training scripts and
model cards); the model wing only needs to find them, by path, without importing the zoo.
"""

from __future__ import annotations

from pathlib import Path

from jaxablate.errors import InputError

BUNDLED = ("induction", "ioi_toy")
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


def bundled_path(name: str) -> Path:
    """The folder of the bundled model `name` (config.json, model.safetensors, card.json).

    Example:
        >>> bundled_path("induction").name
        'induction'
    """
    if name not in BUNDLED:
        raise InputError(f"no bundled model {name!r}; bundled models: {', '.join(BUNDLED)}")
    folder = ZOO_DIR / name
    if not (folder / "model.safetensors").is_file():
        raise InputError(f"bundled model {name!r} is missing its weights in {folder} (a broken "
                         "install?); retrain with python -m jaxablate.zoo.train_" + name)
    return folder
