"""The bundled toy IOI model: it solves its task (re-measured with Hugging Face transformers),
its heads' IOI classes read from HF's own attentions match the card, and a mean-ablation study
on it shows what the protocol exists to reveal: sparsity, a late cumulative cliff, a small
faithful circuit and backup heads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

import jaxablate
from jaxablate import zoo
from jaxablate.errors import InputError
from jaxablate.tasks.ioi_toy import AND, BOS, FILLERS, GAVE, NAMES, TO, ioi_toy

# A backup: the pair's joint effect exceeds the sum of its singles by at least this share of
# the clean logit difference (the critical threshold is 10% of it).
BACKUP_MARGIN = 0.10


@pytest.fixture(scope="module")
def card():
    return zoo.model_card("ioi_toy")


@pytest.fixture(scope="module")
def model():
    return jaxablate.load_gpt2("bundled:ioi_toy")


@pytest.fixture(scope="module")
def hf_model():
    hf = transformers.GPT2LMHeadModel.from_pretrained(zoo.bundled_path("ioi_toy"),
                                                      attn_implementation="eager")
    return hf.eval()


def hf_run(hf_model, tokens, attentions=False):
    with torch.no_grad():
        out = hf_model(torch.as_tensor(tokens, dtype=torch.long),
                       output_attentions=attentions)
    return out


def test_task_labels_and_abc_set():
    task = ioi_toy(16, template=2, seed=3, n_reference=24)
    rows = np.arange(16)
    tok, pos = task.tokens, task.positions
    assert task.tokens.shape == (16, 7 + sum(task.info["fillers"]))
    np.testing.assert_array_equal(tok[rows, pos["IO"]], task.correct)
    np.testing.assert_array_equal(tok[rows, pos["S1"]], task.wrong)
    np.testing.assert_array_equal(tok[rows, pos["S2"]], task.wrong)
    assert (tok[:, 0] == BOS).all() and (tok[rows, pos["END"]] == TO).all()
    assert (tok[rows, pos["S2"] + 1] == GAVE).all()
    assert (tok[rows, np.minimum(pos["IO"], pos["S1"]) + 1] == AND).all()
    assert (task.correct != task.wrong).all() and np.isin(task.correct, NAMES).all()
    abba = pos["IO"] < pos["S1"]
    assert abba.any() and (~abba).any()  # both orders in one task
    # ABC: three distinct names, none of the prompt's, at the same slots; all else the same.
    abc = task.counterfactual
    slots = np.stack([pos["IO"], pos["S1"], pos["S2"]], 1)
    names = abc[rows[:, None], slots]
    assert all(len(set(r)) == 3 for r in names)
    for row, io, s in zip(names, task.correct, task.wrong):
        assert not set(row.tolist()) & {int(io), int(s)}
    other = np.ones(tok.shape, bool)
    other[rows[:, None], slots] = False
    np.testing.assert_array_equal(abc[other], tok[other])
    assert np.isin(tok[other], (BOS, AND, GAVE, TO) + FILLERS).all()
    np.testing.assert_array_equal(task.reference[:16], abc)
    assert task.reference.shape == (24, tok.shape[1])
    for bad in ({"template": 99}, {"order": "AB"}, {"n_prompts": 0}):
        with pytest.raises(InputError):
            ioi_toy(**bad)


def test_solves_its_task_in_transformers(card, hf_model, model):
    ev = card["evaluation"]
    print(f"\ncard: accuracy {ev['accuracy']}, logit diff {ev['logit_diff']}")
    assert ev["accuracy"] >= 0.95 and ev["logit_diff"] >= 2.0
    for row in ev["per_template"]:
        task = ioi_toy(ev["eval_task"]["n_prompts"], template=row["template"],
                       seed=ev["eval_task"]["seed"])
        logits = hf_run(hf_model, task.tokens).logits.numpy()[:, -1]
        rows = np.arange(len(task))
        accuracy = float((logits.argmax(-1) == task.correct).mean())
        diff = float((logits[rows, task.correct] - logits[rows, task.wrong]).mean())
        print(f"template {row['template']}: HF accuracy {accuracy:.4f} (card "
              f"{row['accuracy']}), logit diff {diff:.4f} (card {row['logit_diff']})")
        assert accuracy == pytest.approx(row["accuracy"], abs=1e-3)
        assert diff == pytest.approx(row["logit_diff"], abs=1e-3)
    # jaxablate's own forward agrees with HF on the bundled weights.
    ours = np.asarray(jaxablate.forward(model, task.tokens))[:, -1]
    np.testing.assert_allclose(ours, logits, atol=1e-4, rtol=1e-4)


def test_head_classes_from_hf_attentions_match_the_card(card, hf_model):
    ev = card["evaluation"]
    spec = ev["class_task"]
    task = ioi_toy(spec["n_prompts"], template=spec["template"], seed=spec["seed"])
    attentions = hf_run(hf_model, task.tokens, attentions=True).attentions
    pattern = np.stack([a.numpy() for a in attentions], 1)  # [batch, layer, head, q, k]
    rows = np.arange(len(task))
    routes = {"name_mover": ("END", "IO"), "s_inhibition": ("END", "S2"),
              "duplicate_token": ("S2", "S1"), "induction": ("S2", "S1+1")}
    n_heads = pattern.shape[2]
    for kind, (q, k) in routes.items():
        scores = pattern[rows, :, :, task.positions[q], task.positions[k]].mean(0)
        names = {f"{i // n_heads}.{i % n_heads}": float(v) for i, v in enumerate(scores.ravel())}
        for name, value in names.items():
            assert value == pytest.approx(ev["class_scores"][kind][name], abs=1e-3), (kind, name)
        found = {h for h, v in names.items() if v >= ev["class_threshold"]}
        print(f"{kind}: {sorted(found)}")
        assert found == set(ev["classes"][kind]), kind
    # The circuit's classes all show in the patterns.
    assert ev["classes"]["name_mover"] and ev["classes"]["s_inhibition"]
    assert ev["classes"]["duplicate_token"] or ev["classes"]["induction"]


def test_study_finds_sparsity_a_small_circuit_and_backups(card, model):
    from jaxablate.zoo.ioi_toy_card import STUDY_STEPS

    spec = card["evaluation"]["study"]
    task = ioi_toy(spec["task"]["n_prompts"], template=spec["task"]["template"],
                   seed=spec["task"]["seed"])
    result = jaxablate.Study(model, task, ablation=spec["ablation"]).run(
        steps=STUDY_STEPS, top_k=spec["n_heads"]).to_dict()
    n = len(result["single"])
    base = result["baseline"]["mean"]
    critical = [r["component"] for r in result["single"] if r["critical"]]
    print(f"\nbaseline logit diff {base:.4f}; critical {len(critical)}/{n}: {critical}")
    assert len(critical) <= 0.3 * n
    assert sorted(critical) == sorted(spec["critical"])

    cum = result["cumulative"]
    kept = [(k, m / base, r) for k, m, r in zip(cum["n_ablated"], cum["metric"],
                                                 cum["recovered"])]
    print("cumulative (n ablated, metric / clean, recovered):",
          [(k, round(a, 3), round(r, 3)) for k, a, r in kept])
    assert any(k >= n / 2 and a >= 0.8 and r >= 0.8 for k, a, r in kept)

    circuit = result["circuit"]
    print(f"circuit {circuit['members']} ({circuit['size']}/{n}), faithfulness "
          f"{circuit['faithfulness']:.3f}")
    assert circuit["size"] <= 0.4 * n and circuit["faithfulness"] >= 0.8

    pairs = result["interactions"]["pairs"]
    best = max(pairs, key=lambda p: p["interaction"])
    print(f"strongest backup pair {best['a']} + {best['b']}: singles {best['single_a']:.3f}, "
          f"{best['single_b']:.3f}, joint {best['joint']:.3f} (CI low "
          f"{best['joint_ci_low']:.3f}); margin {BACKUP_MARGIN * base:.3f}")
    assert best["joint"] - best["single_a"] - best["single_b"] >= BACKUP_MARGIN * base
    assert best["joint_ci_low"] > best["single_a"] + best["single_b"]


def test_training_script_smoke(tmp_path):
    from jaxablate.zoo import train_ioi_toy

    out = tmp_path / "smoke"
    assert train_ioi_toy.main(["--steps", "3", "--batch", "16", "--no-study",
                               "--out", str(out)]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["steps"] == 3 and np.isfinite(card["training"]["final_loss"])
    model = jaxablate.load_gpt2(out)
    ev = card["evaluation"]
    task = ioi_toy(ev["eval_task"]["n_prompts"], template=0, seed=ev["eval_task"]["seed"])
    logits = np.asarray(jaxablate.forward(model, task.tokens))[:, -1]
    assert float((logits.argmax(-1) == task.correct).mean()) == pytest.approx(
        ev["per_template"][0]["accuracy"], abs=1e-3)
    assert (out / "README.md").read_text().startswith("---\nlicense: mit")
