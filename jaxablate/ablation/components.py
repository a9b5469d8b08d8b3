"""Component names as researchers write them, and where each lives in a `Mask`.

    "5.2"  or ("head", 5, 2)              head 2 of layer 5, all positions      -> heads[5, 2]
    "5.2@7" or ("head", 5, 2, 7)          head 5.2 at query position 7     -> head_positions[5, 7, 2]
    "mlp8" or ("mlp", 8)                  the MLP of layer 8                    -> mlps[8]
    "n3.1207", "neuron 3.1207" or ("neuron", 3, 1207)
                                          neuron 1207 of layer 3's MLP          -> neurons[3, 1207]
    "resid4@7" or ("resid", 4, 7)         residual stream entering layer 4 at position 7
                                                                                -> positions[4, 7]
    "sae123" or ("sae", 123)              SAE feature 123                       -> sae_features[123]
    "mid4@7" or ("mid", 4, 7)             the stream after layer 4's attention at position 7
                                                                                -> mid_positions[4, 7]
    "mlp8@7" or ("mlp", 8, 7)             MLP 8's output at position 7          -> mlp_positions[8, 7]
    "5.2.q@7" or ("q", 5, 2, 7)           head 5.2's query vector at position 7 -> q_positions[5, 7, 2]
    "5.2.k@7", "5.2.v@7"                  its key and value vectors there       -> k/v_positions
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from jaxablate.errors import InputError
from jaxablate.model.config import GPT2Config


class Component(NamedTuple):
    """One ablatable component: its mask kind and its index into that kind's array."""

    kind: str  # a field of Mask
    index: tuple[int, ...]  # index into the per-mask array of that kind

    @property
    def name(self) -> str:
        i = self.index
        return {
            "heads": lambda: f"{i[0]}.{i[1]}",
            "head_positions": lambda: f"{i[0]}.{i[2]}@{i[1]}",
            "mlps": lambda: f"mlp{i[0]}",
            "neurons": lambda: f"n{i[0]}.{i[1]}",
            "positions": lambda: f"resid{i[0]}@{i[1]}",
            "sae_features": lambda: f"sae{i[0]}",
            "mid_positions": lambda: f"mid{i[0]}@{i[1]}",
            "mlp_positions": lambda: f"mlp{i[0]}@{i[1]}",
            "q_positions": lambda: f"{i[0]}.{i[2]}.q@{i[1]}",
            "k_positions": lambda: f"{i[0]}.{i[2]}.k@{i[1]}",
            "v_positions": lambda: f"{i[0]}.{i[2]}.v@{i[1]}",
        }[self.kind]()


_PATTERNS = [
    # "head 1.10" is how the report's CSVs write a head (so pandas reads it back as text)
    (re.compile(r"^(?:head\s+)?(\d+)\.(\d+)$"), lambda g: ("heads", (g[0], g[1]))),
    (re.compile(r"^(\d+)\.(\d+)@(\d+)$"), lambda g: ("head_positions", (g[0], g[2], g[1]))),
    (re.compile(r"^mlp\s*(\d+)$"), lambda g: ("mlps", (g[0],))),
    (re.compile(r"^(?:n|neuron\s+)(\d+)\.(\d+)$"), lambda g: ("neurons", (g[0], g[1]))),
    (re.compile(r"^resid\s*(\d+)@(\d+)$"), lambda g: ("positions", (g[0], g[1]))),
    (re.compile(r"^sae\s*(\d+)$"), lambda g: ("sae_features", (g[0],))),
    (re.compile(r"^mid\s*(\d+)@(\d+)$"), lambda g: ("mid_positions", (g[0], g[1]))),
    (re.compile(r"^mlp\s*(\d+)@(\d+)$"), lambda g: ("mlp_positions", (g[0], g[1]))),
    (re.compile(r"^(\d+)\.(\d+)\.q@(\d+)$"), lambda g: ("q_positions", (g[0], g[2], g[1]))),
    (re.compile(r"^(\d+)\.(\d+)\.k@(\d+)$"), lambda g: ("k_positions", (g[0], g[2], g[1]))),
    (re.compile(r"^(\d+)\.(\d+)\.v@(\d+)$"), lambda g: ("v_positions", (g[0], g[2], g[1]))),
]
_TUPLE_KINDS = {
    ("head", 3): lambda t: ("heads", (t[1], t[2])),
    ("head", 4): lambda t: ("head_positions", (t[1], t[3], t[2])),
    ("mlp", 2): lambda t: ("mlps", (t[1],)),
    ("neuron", 3): lambda t: ("neurons", (t[1], t[2])),
    ("resid", 3): lambda t: ("positions", (t[1], t[2])),
    ("sae", 2): lambda t: ("sae_features", (t[1],)),
    ("mid", 3): lambda t: ("mid_positions", (t[1], t[2])),
    ("mlp", 3): lambda t: ("mlp_positions", (t[1], t[2])),
    ("q", 4): lambda t: ("q_positions", (t[1], t[3], t[2])),
    ("k", 4): lambda t: ("k_positions", (t[1], t[3], t[2])),
    ("v", 4): lambda t: ("v_positions", (t[1], t[3], t[2])),
}
_EXAMPLES = ('"5.2", "5.2@7", "mlp8", "n3.1207", "resid4@7", "sae123", "mid4@7", "mlp8@7", '
             '"5.2.q@7" or ("head", 5, 2)')


def parse_component(spec: Any) -> Component:
    """A `Component` from a name or tuple (see module docstring); ValueError if unknown.

    Example:
        >>> parse_component("n3.1207")
        Component(kind='neurons', index=(3, 1207))
    """
    if isinstance(spec, Component):
        return spec
    if isinstance(spec, str):
        text = spec.strip().lower()
        for pattern, build in _PATTERNS:
            match = pattern.match(text)
            if match:
                kind, index = build([int(g) for g in match.groups()])
                return Component(kind, tuple(index))
        raise InputError(f"unknown component name {spec!r}; write e.g. {_EXAMPLES}")
    if isinstance(spec, tuple) and spec and isinstance(spec[0], str):
        build = _TUPLE_KINDS.get((spec[0], len(spec)))
        if build and all(isinstance(v, int) for v in spec[1:]):
            kind, index = build(spec)
            return Component(kind, tuple(index))
    raise InputError(f"unknown component {spec!r}; write e.g. {_EXAMPLES}")


def check_component(
    component: Component, cfg: GPT2Config, seq_len: int | None, n_features: int | None
) -> None:
    """ValueError if the component's indices lie outside this model (or sequence length)."""
    limits = {
        "heads": [("layer", cfg.n_layers), ("head", cfg.n_heads)],
        "head_positions": [("layer", cfg.n_layers), ("position", seq_len), ("head", cfg.n_heads)],
        "mlps": [("layer", cfg.n_layers)],
        "neurons": [("layer", cfg.n_layers), ("neuron", cfg.d_mlp)],
        "positions": [("layer", cfg.n_layers), ("position", seq_len)],
        "sae_features": [("SAE feature", n_features)],
        "mid_positions": [("layer", cfg.n_layers), ("position", seq_len)],
        "mlp_positions": [("layer", cfg.n_layers), ("position", seq_len)],
        "q_positions": [("layer", cfg.n_layers), ("position", seq_len), ("head", cfg.n_heads)],
        "k_positions": [("layer", cfg.n_layers), ("position", seq_len), ("head", cfg.n_heads)],
        "v_positions": [("layer", cfg.n_layers), ("position", seq_len), ("head", cfg.n_heads)],
    }[component.kind]
    for value, (what, limit) in zip(component.index, limits):
        if limit is None:
            need = "seq_len" if what == "position" else "a model with an SAE"
            raise InputError(f"component {component.name!r} needs {need}")
        if not 0 <= value < limit:
            raise InputError(f"component {component.name!r}: {what} {value} is out of range "
                             f"[0, {limit})")
