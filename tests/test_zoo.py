"""The bundled induction model: loads offline everywhere, matches its card, and the ablation
sweep finds the circuit its attention patterns show."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
import transformers

import jaxablate
from jaxablate import masks, metrics, zoo
from jaxablate.model.saving import save_gpt2
from jaxablate.tasks.induction import induction
from conftest import tl_from_hf


@pytest.fixture(scope="module")
def card():
    return zoo.model_card("induction")


@pytest.fixture(scope="module")
def model():
    return jaxablate.load_gpt2("bundled:induction")


@pytest.fixture(scope="module")
def eval_task(card):
    spec = card["evaluation"]["eval_task"]
    return induction(spec["n_prompts"], half=spec["half"], vocab=spec["vocab"],
                     seed=spec["seed"])


@pytest.fixture(scope="module")
def hf_model():
    hf = transformers.GPT2LMHeadModel.from_pretrained(zoo.bundled_path("induction"),
                                                      attn_implementation="eager")
    return hf.eval()


def test_bundled_folder_is_standard_hf_layout(card):
    folder = zoo.bundled_path("induction")
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors",
                                                  "README.md", "card.json"}
    assert (folder / "model.safetensors").stat().st_size < 4_000_000
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config == card["config"]
    readme = (folder / "README.md").read_text()
    assert f"{card['evaluation']['accuracy_repeated_half']:.4f}" in readme


def test_loads_in_transformers_and_matches(model, hf_model, eval_task):
    tokens = eval_task.tokens[:16]
    with torch.no_grad():
        want = hf_model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
    got = np.asarray(jaxablate.forward(model, tokens))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_loads_in_transformer_lens_and_matches(model, hf_model, eval_task):
    tl = tl_from_hf(hf_model)
    tokens = eval_task.tokens[:16]
    with torch.no_grad():
        want = tl(torch.as_tensor(tokens, dtype=torch.long)).numpy()
    np.testing.assert_allclose(np.asarray(jaxablate.forward(model, tokens)), want, rtol=0,
                               atol=1e-4)


def test_reaches_its_stated_accuracy(model, hf_model, card, eval_task):
    stated = card["evaluation"]["accuracy_repeated_half"]
    assert stated >= 0.9
    repeat = eval_task.positions["repeat"][0]
    targets = eval_task.tokens[:, repeat + 1]
    with torch.no_grad():  # the reference: Hugging Face's forward on the card's prompts
        logits = hf_model(torch.as_tensor(eval_task.tokens, dtype=torch.long)).logits.numpy()
    accuracy = float((logits[:, repeat].argmax(-1) == targets).mean())
    assert accuracy == pytest.approx(stated, abs=1e-3)
    # The first half is unpredictable: near uniform guessing, as the card says.
    assert card["evaluation"]["loss_first_half"] > 0.9 * card["evaluation"]["uniform_loss"]


def test_circuit_heads_have_their_stated_pattern_scores(model, card, eval_task):
    scores = jaxablate.attention_scores(model, eval_task.tokens)
    stated = card["evaluation"]["scores"]
    circuit = card["evaluation"]["circuit"]
    assert circuit["previous_token_heads"] and circuit["induction_heads"]
    for kind, heads in (("previous_token", circuit["previous_token_heads"]),
                        ("induction", circuit["induction_heads"])):
        got = getattr(scores, kind)
        for name in stated[kind]:
            layer, head = map(int, name.split("."))
            assert got[layer, head] == pytest.approx(stated[kind][name], abs=1e-3)
        for name in heads:
            layer, head = map(int, name.split("."))
            assert got[layer, head] >= circuit["threshold"]
    # The circuit's shape: previous-token heads come before the induction heads they feed.
    assert max(int(h.split(".")[0]) for h in circuit["previous_token_heads"]) < \
        min(int(h.split(".")[0]) for h in circuit["induction_heads"])


def test_mean_ablation_sweep_ranks_the_circuit_heads_first(model, card):
    task = induction(64, half=16, vocab=model.cfg.d_vocab, seed=123)
    replacement = jaxablate.mean_replacement(model, task.reference_tokens)
    heads = masks.single_heads(model.cfg)
    ablated = jaxablate.sweep(model, task.tokens, heads, replacement, task.metric)
    clean = jaxablate.clean_metric(model, task.tokens, task.metric)
    effect = (ablated - clean[None]).mean(1)  # loss goes up when a needed head is removed
    circuit = card["evaluation"]["circuit"]
    wanted = set(circuit["previous_token_heads"]) | set(circuit["induction_heads"])
    ranked = [heads.names[i] for i in np.argsort(-effect)]
    # Every head the patterns name ranks above every head they do not name...
    assert set(ranked[:len(wanted)]) == wanted, (ranked, effect)
    # ...and the primary path (the best previous-token head, then the best induction head it
    # feeds) comes first, each with a large effect in nats; backups matter less alone.
    primary = card["evaluation"]["circuit"]["primary"]
    assert ranked[:2] == [primary["previous_token"], primary["induction"]], (ranked, effect)
    assert effect[np.argsort(-effect)[1]] > 0.3


def test_unknown_bundled_name():
    with pytest.raises(ValueError, match="no bundled model 'nope'; bundled models: induction"):
        jaxablate.load_gpt2("bundled:nope")


def test_save_gpt2_round_trips_through_transformers(tiny_model, tiny_hf, tmp_path):
    folder = save_gpt2(tiny_model, tmp_path / "saved")
    again = jaxablate.load_gpt2(folder)
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(tiny_model)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager")
    tokens = np.arange(12).reshape(2, 6)
    with torch.no_grad():
        want = tiny_hf(torch.as_tensor(tokens)).logits.numpy()
        got = hf.eval()(torch.as_tensor(tokens)).logits.numpy()
    np.testing.assert_array_equal(got, want)


def test_training_script_smoke(tmp_path):
    from jaxablate.zoo import train_induction

    out = tmp_path / "smoke"
    assert train_induction.main(["--steps", "20", "--batch", "8", "--eval-prompts", "16",
                                 "--out", str(out)]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["steps"] == 20 and len(card["training"]["log"]) >= 1
    assert np.isfinite(card["training"]["final_loss"])
    # What it wrote loads, and its card's accuracy is that model's.
    model = jaxablate.load_gpt2(out)
    spec = card["evaluation"]["eval_task"]
    task = induction(spec["n_prompts"], half=spec["half"], vocab=spec["vocab"],
                     seed=spec["seed"])
    accuracy = jaxablate.clean_metric(model, task.tokens, metrics.loss(
        positions=task.positions["repeat"][0]))
    assert np.isfinite(accuracy).all()
    assert (out / "README.md").read_text().startswith("---\nlicense: mit")


def test_main_command_ranks_the_bundled_circuit_first(card, capsys):
    from jaxablate.cli.rank import main

    assert main(["--prompts", "32"]) == 0
    out = capsys.readouterr().out
    circuit = card["evaluation"]["circuit"]
    wanted = set(circuit["previous_token_heads"]) | set(circuit["induction_heads"])
    ranked = [line.split()[1] for line in out.splitlines() if line[:4].strip().isdigit()]
    n_heads = card["config"]["n_layer"] * card["config"]["n_head"]
    assert len(ranked) == min(10, n_heads) and set(ranked[:len(wanted)]) == wanted, out
    primary = card["evaluation"]["circuit"]["primary"]
    assert ranked[:2] == [primary["previous_token"], primary["induction"]], out
    assert "bundled:induction" in out


def test_study_command_on_the_bundled_model(card, model, tmp_path, capsys):
    """`jaxablate study` with defaults: the circuit first, a small minimal circuit, and a
    report folder whose numbers equal a direct sweep's."""
    import pandas as pd

    from jaxablate.cli.command import main

    out = tmp_path / "report"
    assert main(["study", "--out", str(out), "--quiet", "--no-cache"]) == 0
    printed = capsys.readouterr().out
    for name in ("study.json", "single.csv", "single.parquet", "per_example.parquet",
                 "cumulative.csv", "interactions.csv", "ablation_comparison.csv", "summary.md",
                 "single_heads.png", "cumulative.png", "interactions.png",
                 "ablation_types.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    result = json.loads((out / "study.json").read_text())
    single = sorted(result["single"], key=lambda r: r["rank"])
    primary = card["evaluation"]["circuit"]["primary"]
    assert [r["component"] for r in single[:2]] == [primary["previous_token"],
                                                    primary["induction"]]
    assert all(r["critical"] for r in single[:2])
    assert printed.index(primary["previous_token"]) < printed.index(primary["induction"])
    # The minimal circuit holds the primary path, is minimal and at most half of the heads.
    circuit = result["circuit"]
    assert {primary["previous_token"], primary["induction"]} <= set(circuit["members"])
    assert circuit["minimal"] and circuit["faithfulness"] >= circuit["target"]
    assert circuit["share"] <= 0.5
    # The JSON's effects are the sweep's: mean ablation, loss goes up = positive effect.
    task = induction(result["meta"]["n_prompts"], half=16, vocab=model.cfg.d_vocab,
                     seed=result["meta"]["seed"])
    heads = masks.single_heads(model.cfg)
    ablated = jaxablate.sweep(model, task.tokens, heads,
                              jaxablate.mean_replacement(model, task.reference_tokens),
                              task.metric)
    effect = (ablated - jaxablate.clean_metric(model, task.tokens, task.metric)[None]).mean(1)
    by_name = {r["component"]: r["effect"] for r in result["single"]}
    np.testing.assert_allclose([by_name[n] for n in heads.names], effect, rtol=0, atol=1e-5)
    table = pd.read_csv(out / "single.csv")  # heads written "head 1.0" there
    table["component"] = table["component"].str.removeprefix("head ")
    np.testing.assert_allclose(table.set_index("component").loc[heads.names, "effect"],
                               effect, rtol=0, atol=1e-5)
