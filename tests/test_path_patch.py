"""`jaxablate.path_patch` (Wang et al. 2022, path patching) against path patching written here
with TransformerLens hooks, against activation patching where the two must agree, on the
bundled induction model's circuit, and its refusals of bad input.

The TL reference is independent of jaxablate: its own `run_with_cache` for the base and the
source, `run_with_hooks` freezing every `hook_z` (the sender's slot from the source, or
`hook_mlp_out` for an MLP sender) and recording the receivers' `attn.hook_q/k/v` (or the last
block's `hook_resid_post`, the input of ln_final), then a run replacing the receivers only;
the logit difference is computed here in float64 from TL's logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_hf_model, nothing_compiles, tiny_hf_config, tl_from_hf

import jaxablate as ja
from jaxablate import metrics, patching, zoo
from jaxablate.errors import InputError
from jaxablate.patching import paths

ATOL = 1e-4  # float32 on both sides, logits of order 1 (conftest's initializer_range 0.2)
N_LAYERS, N_HEADS, VOCAB, BATCH, SEQ = 4, 4, 101, 3, 8


@pytest.fixture(scope="module")
def hf():
    return make_hf_model(tiny_hf_config(n_layer=N_LAYERS, n_head=N_HEADS), seed=3)


@pytest.fixture(scope="module")
def model(hf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("path-patch-gpt2")
    hf.save_pretrained(folder)
    return ja.load_gpt2(folder)


@pytest.fixture(scope="module")
def tl(hf):
    return tl_from_hf(hf)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (BATCH, SEQ)).astype(np.int32)
    source = rng.integers(0, VOCAB, (BATCH, SEQ)).astype(np.int32)
    correct, wrong = rng.integers(0, VOCAB, BATCH), rng.integers(0, VOCAB, BATCH)
    return tokens, source, correct, wrong


def _receiver_hook(name: str) -> str:
    if name == "resid_final":
        return f"blocks.{N_LAYERS - 1}.hook_resid_post"
    layer, _, kind = name.split(".")
    return f"blocks.{layer}.attn.hook_{kind}"


def tl_path_patch(tl, tokens, source, sender: str, receivers: list[str], correct, wrong):
    """The three steps with TL hooks: logit difference at the last position, [batch]."""
    t = torch.as_tensor(tokens, dtype=torch.long)
    with torch.no_grad():
        _, base = tl.run_with_cache(t)
        _, src = tl.run_with_cache(torch.as_tensor(source, dtype=torch.long))
        is_mlp = sender.startswith("mlp")
        s_layer, s_head = (int(sender[3:]), None) if is_mlp else map(int, sender.split("."))

        def freeze(z, hook, layer):
            out = base[hook.name].clone()
            if not is_mlp and layer == s_layer:
                out[:, :, s_head] = src[hook.name][:, :, s_head]
            return out

        hooks = [(f"blocks.{layer}.attn.hook_z",
                  lambda z, hook, layer=layer: freeze(z, hook, layer))
                 for layer in range(N_LAYERS)]
        if is_mlp:
            hooks.append((f"blocks.{s_layer}.hook_mlp_out",
                          lambda a, hook: src[hook.name].clone()))
        recorded = {}

        def save(act, hook):
            recorded[hook.name] = act.clone()

        hooks += [(name, save) for name in sorted({_receiver_hook(r) for r in receivers})]
        tl.run_with_hooks(t, fwd_hooks=hooks)

        def replace(act, hook):
            if hook.name.endswith("hook_resid_post"):
                return recorded[hook.name]
            out = act.clone()
            for r in receivers:
                if _receiver_hook(r) == hook.name:
                    head = int(r.split(".")[1])
                    out[:, :, head] = recorded[hook.name][:, :, head]
            return out

        logits = tl.run_with_hooks(
            t, fwd_hooks=[(name, replace) for name in {_receiver_hook(r) for r in receivers}])
    last = logits[:, -1].double().numpy()
    rows = np.arange(len(tokens))
    return last[rows, correct] - last[rows, wrong]


# Head senders in several layers and an MLP sender for each receiver type; the mixed case
# replaces q, k and v of different heads together.
CASES = {
    "q": (["0.1", "1.2", "0.3", "mlp1"], ["2.0.q", "3.1.q"]),
    "k": (["0.0", "1.3", "mlp0", "mlp1"], ["2.1.k", "2.3.k", "3.0.k"]),
    "v": (["0.2", "1.1", "mlp0"], ["2.2.v", "3.3.v"]),
    "qkv": (["0.1", "1.0", "mlp1"], ["2.0.k", "3.1.q", "2.2.v", "2.2.q"]),
    "resid_final": (["0.1", "1.2", "2.3", "3.0", "mlp0", "mlp3"], ["resid_final"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_path_patch_equals_transformer_lens_hooks(case, model, tl, data):
    tokens, source, correct, wrong = data
    senders, receivers = CASES[case]
    metric = metrics.logit_diff(correct, wrong)
    # chunk_size 2 for "k": two chunks, the last padded (its padding row is dropped).
    got = ja.path_patch(model, tokens, source, senders, receivers, metric,
                        chunk_size=2 if case == "k" else None)
    assert got.shape == (len(senders), BATCH) and got.dtype == np.float32
    want = np.stack([tl_path_patch(tl, tokens, source, s, receivers, correct, wrong)
                     for s in senders])
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    # The patch must matter, or the comparison would pass for a no-op.
    clean = ja.clean_metric(model, tokens, metric)
    assert np.abs(want - clean[None]).max() > 0.05


def test_last_layer_sender_to_resid_final_is_activation_patching(model, data):
    # Nothing is downstream of a last-layer head but its MLP and the unembedding, which path
    # patching recomputes too: the two must agree.
    tokens, source, correct, wrong = data
    metric = metrics.logit_diff(correct, wrong)
    got = ja.path_patch(model, tokens, source, [f"3.{h}" for h in range(N_HEADS)],
                        "resid_final", metric)
    _, act = patching.attn_head_out_all_pos(model, tokens, source, metric, per_example=True)
    np.testing.assert_allclose(got, act[N_LAYERS - 1], rtol=0, atol=1e-5)


def test_next_layer_receivers_differ_from_activation_patching(model, data):
    # Every head of layer 1 as receiver (q, k and v): path patching a layer-0 head leaves out
    # its direct path, MLPs after layer 0 seeing it directly and heads of layers 2-3.
    tokens, source, correct, wrong = data
    metric = metrics.logit_diff(correct, wrong)
    receivers = [f"1.{h}.{x}" for h in range(N_HEADS) for x in "qkv"]
    senders = [f"0.{h}" for h in range(N_HEADS)]
    got = ja.path_patch(model, tokens, source, senders, receivers, metric)
    _, act = patching.attn_head_out_all_pos(model, tokens, source, metric, per_example=True)
    assert np.abs(got - act[0]).max() > 0.1, (got, act[0])


def test_senders_run_in_one_compiled_program(model, data, monkeypatch):
    # Counting traces of the step-3 resume: chunks of other senders (other layers, MLPs,
    # padding) reuse the program; the sender is data, not structure.
    tokens, source, correct, wrong = data
    traces = []
    real = paths.resume
    monkeypatch.setattr(paths, "resume", lambda *a, **k: traces.append(1) or real(*a, **k))
    metric = metrics.logit_diff(correct[:2], wrong[:2])  # batch 2: a shape no other test has
    first = ja.path_patch(model, tokens[:2], source[:2], ["0.1", "mlp0", "1.3"], ["2.1.v"],
                          metric, chunk_size=2)
    second = ja.path_patch(model, tokens[:2], source[:2], ["1.0", "0.2"], ["2.1.v"], metric,
                           chunk_size=2)
    assert len(traces) == 1
    # Sender order is the caller's, whatever the chunks' order by layer.
    alone = ja.path_patch(model, tokens[:2], source[:2], ["1.3"], ["2.1.v"], metric)
    np.testing.assert_allclose(first[2], alone[0], rtol=0, atol=1e-6)
    assert second.shape == (2, 2)


def test_induction_previous_token_head_acts_through_keys():
    """Path patching 0.1 (the previous-token head) to the induction heads 1.0 and 1.1.

    Noising: tokens = the task's [x, x] prompts, source = its counterfactual [y, x]. The
    fraction of 0.1's effect (activation patching it alone, loss on the repeated half) that
    path patching carries, measured with n_prompts=32, half=16, seed=0: through k 1.014,
    through q 0.000 (|q| < 1e-3), through v -0.002, through q, k and v together 1.000 (this
    2-layer model has no direct path for 0.1 to speak of: to resid_final 0.000). Seeds 1 and 2
    and n_prompts 64 or half 12 gave k in [1.002, 1.014] and |q| < 1e-3.
    """
    model = ja.load_gpt2("bundled:induction")
    circuit = zoo.model_card("induction")["evaluation"]["circuit"]
    prev, heads = circuit["primary"]["previous_token"], circuit["induction_heads"]
    assert prev == "0.1" and heads == ["1.0", "1.1"]
    task = ja.tasks.induction(32, half=16, vocab=64, seed=0)
    clean = ja.clean_metric(model, task.tokens, task.metric).mean()
    act = patching.attn_head_out_all_pos(model, task.tokens, task.counterfactual, task.metric)
    effect = act[0, 1] - clean  # loss: the increase
    assert effect > 1.0, effect

    def fraction(kind: str) -> float:
        out = ja.path_patch(model, task.tokens, task.counterfactual, [prev],
                            [f"{h}.{kind}" for h in heads], task.metric)
        return float((out.mean() - clean) / effect)

    k, q = fraction("k"), fraction("q")
    assert 0.9 < k < 1.1, k
    assert abs(q) < 0.05, q


# Each bad input, as a change to a valid call, and what its message must say.
BAD = {
    "source batch": ({"source_tokens": lambda s: s[:2]},
                     r"source_tokens: expected \[batch, seq\] = \[3, 8\]"),
    "source length": ({"source_tokens": lambda s: s[:, :-1]}, r"got \[3, 7\]"),
    "same layer": ({"senders": ["2.0"], "receivers": ["2.1.q"]},
                   r"receiver '2.1.q' \(layer 2\) is not after sender '2.0'"),
    "mlp same layer": ({"senders": ["0.0", "mlp1"], "receivers": ["1.0.k"]},
                       r"not after sender 'mlp1'"),
    "unknown receiver": ({"receivers": ["1.0.z"]}, r"unknown receiver '1.0.z'"),
    "unknown stream": ({"receivers": "resid_post"}, r"unknown receiver 'resid_post'"),
    "unknown sender": ({"senders": ["head5"]}, r"senders: unknown component name 'head5'"),
    "sender kind": ({"senders": ["resid1@2"]}, r"'resid1@2' is a positions component"),
    "sender layer": ({"senders": ["4.0"]}, r"senders: .*layer 4 is out of range \[0, 4\)"),
    "sender head": ({"senders": ["0.4"]}, r"senders: .*head 4 is out of range \[0, 4\)"),
    "mlp layer": ({"senders": ["mlp4"]}, r"senders: .*layer 4 is out of range"),
    "receiver layer": ({"receivers": ["4.0.q"]},
                       r"receivers: '4.0.q': layer 4 is out of range \[0, 4\)"),
    "receiver head": ({"receivers": ["3.4.k"]}, r"receivers: '3.4.k': head 4 is out of range"),
    "no senders": ({"senders": []}, r"senders: empty"),
    "no receivers": ({"receivers": []}, r"receivers: empty"),
    "duplicate sender": ({"senders": ["0.1", "mlp0", "0.1"]}, r"senders: '0.1' is given twice"),
    "duplicate receiver": ({"receivers": ["3.0.q", "3.0.q"]},
                           r"receivers: '3.0.q' is given twice"),
    "final and heads": ({"receivers": ["resid_final", "3.0.q"]},
                        r"'resid_final' cannot be mixed"),
    "chunk size": ({"chunk_size": 0}, r"chunk_size must be an int >= 1"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_before_compiling(case, model, data, monkeypatch):
    tokens, source, correct, wrong = data
    changes, message = BAD[case]
    args = {"source_tokens": source, "senders": ["0.1", "mlp0"], "receivers": ["2.0.q"],
            "chunk_size": None} | changes
    if callable(args["source_tokens"]):
        args["source_tokens"] = args["source_tokens"](source)

    def forbidden(*a, **k):
        raise AssertionError("path_patch compiled before refusing its input")

    monkeypatch.setattr(paths, "_run_senders", forbidden)
    with nothing_compiles(), pytest.raises(InputError, match=message) as caught:
        ja.path_patch(model, tokens, args["source_tokens"], args["senders"],
                      args["receivers"], metrics.logit_diff(correct, wrong),
                      chunk_size=args["chunk_size"])
    assert "\n" not in str(caught.value)


def test_the_valid_call_reaches_the_compiled_program(model, data):
    # So each bad case above is refused for its own change, not for the call it changes.
    tokens, source, correct, wrong = data
    with nothing_compiles(), pytest.raises(AssertionError, match="jitted function"):
        ja.path_patch(model, tokens, source, ["0.1", "mlp0"], ["2.0.q"],
                      metrics.logit_diff(correct, wrong))


def test_public_names():
    assert ja.path_patch is patching.path_patch is paths.path_patch
    assert "path_patch" in ja.__all__ and "path_patch" in patching.__all__
