"""The mask-set constructors of the patching kinds: each mask touches exactly the component its
name says (checked against `from_components` parsing that name, an independent path), in the
order TransformerLens's patching module lays its results out."""

from __future__ import annotations

import numpy as np
import pytest

from jaxablate import GPT2Config, InputError, masks

CFG = GPT2Config(n_layers=3, n_heads=2, d_model=8, d_mlp=16, d_vocab=20, n_ctx=8)
SEQ = 4


def same_masks(a, b):
    assert a.names == b.names and a.kinds == b.kinds
    dense_a, dense_b = a.materialize(np.arange(len(a))), b.materialize(np.arange(len(b)))
    for kind in a.kinds:
        np.testing.assert_array_equal(np.asarray(getattr(dense_a, kind)),
                                      np.asarray(getattr(dense_b, kind)))


@pytest.mark.parametrize("build, kind, prefix", [
    (masks.mid_positions, "mid_positions", "mid"),
    (masks.mlp_positions, "mlp_positions", "mlp"),
])
def test_layer_position_sets(build, kind, prefix):
    ms = build(CFG, SEQ)
    assert len(ms) == CFG.n_layers * SEQ and ms.kinds == (kind,)
    assert ms.names[:SEQ + 1] == [f"{prefix}0@{p}" for p in range(SEQ)] + [f"{prefix}1@0"]
    same_masks(ms, masks.from_components(CFG, ms.names, seq_len=SEQ))
    # mask i zeroes exactly (layer, pos) = divmod(i, SEQ)
    dense = np.asarray(getattr(ms.materialize(np.arange(len(ms))), kind))
    for i in range(len(ms)):
        expect = np.ones((CFG.n_layers, SEQ), np.float32)
        expect[divmod(i, SEQ)] = 0.0
        np.testing.assert_array_equal(dense[i], expect)
    only = build(CFG, SEQ, layers=[2], weight=0.25)
    assert only.names == [f"{prefix}2@{p}=0.25" for p in range(SEQ)] or \
        only.names == [f"{prefix}2@{p}" for p in range(SEQ)]
    assert set(only.entries_of(kind)[2]) == {0.25}


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_head_vectors_in_tl_order(which):
    ms = masks.head_vectors(CFG, which, SEQ)
    assert len(ms) == CFG.n_layers * SEQ * CFG.n_heads
    assert ms.kinds == (f"{which}_positions",)
    same_masks(ms, masks.from_components(CFG, ms.names, seq_len=SEQ))
    # [layer, pos, head] row-major, as get_act_patch_attn_head_*_by_pos lays out its result
    layer, pos, head = np.unravel_index(np.arange(len(ms)), (CFG.n_layers, SEQ, CFG.n_heads))
    assert ms.names == [f"{a}.{c}.{which}@{b}" for a, b, c in zip(layer, pos, head)]
    last = masks.head_vectors(CFG, which, SEQ, position=-1)
    assert last.names == [f"{a}.{h}.{which}@{SEQ - 1}" for a in range(CFG.n_layers)
                          for h in range(CFG.n_heads)]


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(InputError, match="which must be 'q', 'k' or 'v'"):
        masks.head_vectors(CFG, "z", SEQ)
    with pytest.raises(InputError, match="position 4 needs"):
        masks.head_vectors(CFG, "q", SEQ, position=4)
    with pytest.raises(InputError, match="layer 3 is out of range"):
        masks.mlp_positions(CFG, SEQ, layers=[3])
    with pytest.raises(InputError, match="layer 5 is out of range"):
        masks.mid_positions(CFG, SEQ, layers=[0, 5])
