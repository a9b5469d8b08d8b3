"""The toy IOI model's card: what it scores on its task, its heads' IOI attention classes, and
what a mean-ablation study finds, all measured here (`train_ioi_toy` writes them to card.json
and README.md; tests/test_zoo_ioi_toy.py re-measures them with Hugging Face transformers).

Head classes, from attention patterns only (pattern[b, layer, head, query, key], averaged over
the evaluation prompts), as Wang et al. 2022 name them in GPT-2 small:
    name_mover       END -> IO     (copies the indirect object to the answer)
    s_inhibition     END -> S2     (tells the name movers which name not to copy)
    duplicate_token  S2 -> S1      (marks S2 as a repeat)
    induction        S2 -> S1+1    (the same, through the previous-token route)
A head belongs to a class when its score is at least CLASS_THRESHOLD.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxablate.model.gpt2 import GPT2

CLASS_ROUTES = {"name_mover": ("END", "IO"), "s_inhibition": ("END", "S2"),
                "duplicate_token": ("S2", "S1"), "induction": ("S2", "S1+1")}
CLASS_THRESHOLD = 0.3
EVAL = {"n_prompts": 512, "seed": 1}  # every template, both orders mixed
STUDY = {"n_prompts": 64, "template": 0, "seed": 0, "ablation": "mean"}
STUDY_STEPS = ("baseline", "single", "cumulative", "circuit", "interactions")


def class_scores(pattern: np.ndarray, positions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-class attention scores float64 [layer, head] from patterns float
    [batch, layer, head, query, key] and a task's labelled positions (int [batch] each).

    Example:
        >>> class_scores(cache.pattern, task.positions)["name_mover"].shape    # (4, 4)
    """
    pattern = np.asarray(pattern, np.float64)
    rows = np.arange(pattern.shape[0])
    return {kind: pattern[rows, :, :, positions[q], positions[k]].mean(0)
            for kind, (q, k) in CLASS_ROUTES.items()}


def head_classes(scores: dict[str, np.ndarray], threshold: float = CLASS_THRESHOLD
                 ) -> dict[str, list[str]]:
    """Heads ("layer.head") scoring at least `threshold` per class, best first.

    Example:
        >>> head_classes(class_scores(pattern, task.positions))["name_mover"]  # e.g. ['3.1']
    """
    out = {}
    for kind, values in scores.items():
        flat = [(float(v), f"{i // values.shape[1]}.{i % values.shape[1]}")
                for i, v in enumerate(values.ravel())]
        out[kind] = [name for v, name in sorted(flat, key=lambda t: -t[0]) if v >= threshold]
    return out


def answer_scores(logits: np.ndarray, correct: np.ndarray, wrong: np.ndarray
                  ) -> tuple[float, float]:
    """(top-1 accuracy of IO over the whole vocabulary, mean logit difference IO - S) from
    logits float [batch, vocab] at END.

    Example:
        >>> answer_scores(logits[:, -1], task.correct, task.wrong)        # (0.99, 6.1)
    """
    rows = np.arange(len(correct))
    accuracy = float((logits.argmax(-1) == correct).mean())
    return accuracy, float((logits[rows, correct] - logits[rows, wrong]).mean())


def study_summary(result: dict[str, Any]) -> dict[str, Any]:
    """What the card states of a study result (`StudyResult.to_dict()`): critical, negative
    heads, the cumulative curve at half the heads ablated, the minimal circuit, and the pairs
    whose joint effect exceeds the sum of their singles by more than the critical threshold
    (backups), strongest first.

    Example:
        >>> study_summary(Study(model, task).run(steps=STUDY_STEPS).to_dict())["critical"]
    """
    single, threshold = result["single"], result["meta"]["threshold"]
    n = len(single)
    cum = result["cumulative"]
    base = result["baseline"]["mean"]
    # The most heads ablated (at least half, not all) that still keep 80% of the metric and
    # of its recovery; else the first point with half the heads ablated.
    half = [i for i, k in enumerate(cum["n_ablated"]) if n / 2 <= k < n]
    kept = [i for i in half if cum["recovered"][i] >= 0.8 and cum["metric"][i] >= 0.8 * base]
    best = kept[-1] if kept else half[0]
    backups = sorted((p for p in result["interactions"]["pairs"]
                      if p["interaction"] > threshold
                      and p["joint_ci_low"] > p["single_a"] + p["single_b"]),
                     key=lambda p: -p["interaction"])
    circuit = result["circuit"]
    return {
        "baseline_logit_diff": base, "threshold": threshold, "n_heads": n,
        "critical": [r["component"] for r in sorted(single, key=lambda r: r["rank"])
                     if r["critical"]],
        "negative": [r["component"] for r in single if r["negative"]],
        "effects": {r["component"]: round(r["effect"], 4) for r in single},
        "cumulative": {"n_ablated": cum["n_ablated"], "recovered": cum["recovered"],
                       "metric_over_baseline": [m / base for m in cum["metric"]]},
        "half_ablated": {"n_ablated": cum["n_ablated"][best],
                         "recovered": cum["recovered"][best],
                         "metric_over_baseline": cum["metric"][best] / base},
        "circuit": {"members": circuit["members"], "size": circuit["size"],
                    "share": circuit["share"], "faithfulness": circuit["faithfulness"]},
        "backups": [{k: p[k] for k in ("a", "b", "single_a", "single_b", "joint",
                                       "joint_ci_low", "interaction")} for p in backups[:8]],
        "n_backup_pairs": len(backups),
    }


def evaluate(model: GPT2, study: bool = True) -> dict[str, Any]:
    """Accuracy and logit difference per template, head-class scores, and (study=True) the
    mean-ablation study's summary, for the card."""
    from jaxablate.model.batched import forward, run_with_cache
    from jaxablate.study.protocol import Study
    from jaxablate.tasks.ioi_toy import IOI_TOY_TEMPLATES, ioi_toy

    per_template = []
    for t in range(len(IOI_TOY_TEMPLATES)):
        task = ioi_toy(EVAL["n_prompts"], template=t, seed=EVAL["seed"])
        logits = np.asarray(forward(model, task.tokens))[:, -1]
        accuracy, diff = answer_scores(logits, task.correct, task.wrong)
        per_template.append({"template": t, "fillers": task.info["fillers"],
                             "accuracy": round(accuracy, 4), "logit_diff": round(diff, 4)})
    task = ioi_toy(EVAL["n_prompts"], template=STUDY["template"], seed=EVAL["seed"])
    _, cache = run_with_cache(model, task.tokens, names=("pattern",))
    scores = class_scores(np.asarray(cache.pattern), task.positions)
    heads = [f"{layer}.{head}" for layer in range(model.cfg.n_layers)
             for head in range(model.cfg.n_heads)]
    out: dict[str, Any] = {
        "eval_task": {"task": "ioi_toy", **EVAL, "order": "mixed"},
        "accuracy": round(float(np.mean([r["accuracy"] for r in per_template])), 4),
        "logit_diff": round(float(np.mean([r["logit_diff"] for r in per_template])), 4),
        "per_template": per_template,
        "class_task": {"template": STUDY["template"], **EVAL},
        "class_threshold": CLASS_THRESHOLD,
        "class_scores": {kind: {h: round(float(v), 4) for h, v in zip(heads, s.ravel())}
                         for kind, s in scores.items()},
        "classes": head_classes(scores),
    }
    if study:
        study_task = ioi_toy(STUDY["n_prompts"], template=STUDY["template"],
                             seed=STUDY["seed"])
        result = Study(model, study_task, ablation=STUDY["ablation"]).run(
            steps=STUDY_STEPS, top_k=len(heads))
        out["study"] = {"task": {k: STUDY[k] for k in ("n_prompts", "template", "seed")},
                        "ablation": STUDY["ablation"], "steps": list(STUDY_STEPS),
                        **study_summary(result.to_dict())}
    return out


def _grid(values: dict[str, float]) -> str:
    return ", ".join(f"{h} {v:.2f}" for h, v in sorted(values.items(), key=lambda t: -t[1])[:4])


def model_card(card: dict[str, Any]) -> str:
    """The README.md (Hugging Face model card) written beside the weights."""
    c, tr, ev = card["config"], card["training"], card["evaluation"]
    runs = tr["filler_runs"]
    templates = "\n".join(f"| {r['template']} | {tuple(r['fillers'])} | {r['accuracy']:.4f} | "
                          f"{r['logit_diff']:.3f} |" for r in ev["per_template"])
    scores = ev["class_scores"]
    heads = list(next(iter(scores.values())))
    rows = "\n".join(f"| {h} | " + " | ".join(f"{scores[k][h]:.3f}" for k in CLASS_ROUTES)
                     + " |" for h in heads)
    classes = "\n".join(f"- {kind} ({' -> '.join(CLASS_ROUTES[kind])}): "
                        f"**{', '.join(found) or 'none'}**"
                        for kind, found in ev["classes"].items())
    text = f"""---
license: mit
tags: [gpt2, interpretability, indirect-object-identification, jaxablate]
---
# jaxablate bundled model: `ioi_toy`

A {c['n_layer']}-layer, {c['n_head']}-head GPT-2 (d_model {c['n_embd']}, d_mlp {c['n_inner']},
vocabulary {c['vocab_size']}, context {c['n_positions']}; LayerNorm, GELU MLP, tied unembedding)
trained by jaxablate on a toy indirect-object task, so that an IOI-like circuit with backup heads
forms. Standard Hugging Face GPT-2 layout (`transformers.GPT2LMHeadModel.from_pretrained`). In
jaxablate: `jaxablate.load_gpt2("bundled:ioi_toy")`, task `jaxablate.tasks.ioi_toy(...)`.

## Task
Token ids: BOS 0, AND 1, GAVE 2, TO 3, fillers 4-15, names 16-63. A prompt is
`BOS f.. N1 AND N2 f.. S GAVE f.. TO`, the answer the name that occurs once (IO); ABBA (IO
first) and BABA (S first) prompts; the three filler runs set the template.

## Training
- Script: `python -m jaxablate.zoo.train_ioi_toy` (jaxablate/zoo/train_ioi_toy.py), seed
  {tr['seed']}, {tr['steps']} steps of AdamW (lr {tr['lr']}, warm-up then cosine decay, weight
  decay 0.01, gradient clipping 1.0), batch {tr['batch']}, float32, on {tr['machine']}
  ({tr['seconds']:.0f} s, on a CPU shared with other jobs).
- Data: filler runs of {runs['pre'][0]}-{runs['pre'][1]}, {runs['mid'][0]}-{runs['mid'][1]}
  and {runs['post'][0]}-{runs['post'][1]} tokens (8 random layouts per batch), ABBA or BABA at
  random, names uniform without repeats; loss: cross-entropy of the answer at TO only.
- **Head dropout**: each head's z zeroed with probability {tr['head_dropout']} per training
  example, a known way to grow backup heads (no head may be the only path).
- Last training batch (with dropout): loss {tr['final_loss']:.4f}, accuracy
  {tr['final_batch_accuracy']:.3f}.

## Evaluation
`jaxablate.tasks.ioi_toy(n_prompts={ev['eval_task']['n_prompts']}, template=t,
seed={ev['eval_task']['seed']})`, ABBA and BABA mixed; accuracy is top-1 over the whole
vocabulary, logit difference IO - S at TO:

| template | filler runs | accuracy | logit diff |
|---|---|---:|---:|
{templates}

Mean over templates: accuracy **{ev['accuracy']:.4f}**, logit difference
**{ev['logit_diff']:.3f}**.

## Head classes, by attention patterns (no ablation involved)
Mean attention on template {ev['class_task']['template']} ({ev['class_task']['n_prompts']}
prompts, seed {ev['class_task']['seed']}) along each IOI route (query -> key):

| head | {' | '.join(f'{k} {"->".join(v)}' for k, v in CLASS_ROUTES.items())} |
|---|{'---:|' * len(CLASS_ROUTES)}
{rows}

Heads scoring at least {ev['class_threshold']}:
{classes}

A class says where a head looks, not what it writes: the labels borrow the IOI paper's
vocabulary and are not a finding of what each head computes (ablation, below, says which of
them the answer depends on).
"""
    if "study" in ev:
        text += _study_section(ev["study"])
    return text


def _study_section(s: dict[str, Any]) -> str:
    half, circuit = s["half_ablated"], s["circuit"]
    backups = "\n".join(
        f"| {p['a']} + {p['b']} | {p['single_a']:+.3f} | {p['single_b']:+.3f} | "
        f"{p['joint']:+.3f} | {p['interaction']:+.3f} |" for p in s["backups"]) or "| none |"
    return f"""
## What ablation finds
`jaxablate.Study(model, ioi_toy({s['task']['n_prompts']}, template={s['task']['template']},
seed={s['task']['seed']}), ablation="{s['ablation']}").run(steps={tuple(s['steps'])},
top_k={s['n_heads']})`: mean ablation over the task's ABC set, clean logit difference
{s['baseline_logit_diff']:.3f}, critical above {s['threshold']:.3f}.
- critical heads ({len(s['critical'])} of {s['n_heads']}): **{', '.join(s['critical']) or
'none'}**; negative heads: **{', '.join(s['negative']) or 'none'}**.
- cumulative (least important first): with {half['n_ablated']} of {s['n_heads']} heads ablated
  the metric keeps {half['metric_over_baseline']:.1%} of the clean logit difference (recovered
  {half['recovered']:.3f}).
- minimal circuit: **{', '.join(circuit['members'])}** ({circuit['size']} heads,
  {circuit['share']:.0%}), faithfulness {circuit['faithfulness']:.3f}.
- backups: {s['n_backup_pairs']} pairs whose joint effect exceeds the sum of their singles by
  more than the critical threshold (and whose joint CI lies above that sum); the strongest:

| pair | single a | single b | joint | interaction |
|---|---:|---:|---:|---:|
{backups}
"""
