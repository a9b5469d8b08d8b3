"""The Markdown summary of a study result dict: what a paper's methods/results paragraph
needs (model, task, ablation, metric, baseline, statistics, versions), then one section per
step of the study (single ablations, gradient screening, cumulative ablation, minimal circuit,
pair interactions, ablation types, activation and path patching when that optional step ran,
and optimal ablation when it ran: `optimal_summary`), with links to the report's figures and
data files.

    summary_markdown(result, figures, files, top) -> str      # summary.md of `write_report`
    cumulative_order(result) -> str                           # how the cumulative order is sorted

`result` is `StudyResult.to_dict()` (or the StudyResult itself), as in `jaxablate.report`;
missing or None sections read "Not run.". Plain Python and numpy only (no pandas).

Example:
    >>> print(summary_markdown(Study(model, task).run().to_dict()))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxablate.report.markdown import fraction, markdown_table, number
from jaxablate.report.optimal_summary import optimal_markdown
from jaxablate.study.result import as_result_dict

_FLAGS = (("critical", "critical"), ("negative", "negative"), ("no_effect", "no effect"))


def _flags(row: Mapping[str, Any]) -> str:
    return ", ".join(label for key, label in _FLAGS if row.get(key)) or ""


def _describe_task(task: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    size = f"{number(meta.get('n_prompts'))} prompts × {number(meta.get('seq_len'))} tokens"
    details = ", ".join(f"{k} {v}" for k, v in task.items()
                        if k not in ("name", "task", "n_prompts") and isinstance(
                            v, (str, int, float)) and len(str(v)) < 60)
    return f"{task.get('name', '?')} — {size}" + (f" ({details})" if details else "")


def _ablation_text(meta: Mapping[str, Any]) -> str:
    ablation = str(meta.get("ablation", "?"))
    replacement = meta.get("replacement") or {}
    if ablation == "mean" and replacement.get("n_reference"):
        how = "per-position" if replacement.get("mean_per_position") else "batch-and-position"
        return f"mean ({how} means over {replacement['n_reference']} reference prompts)"
    optimal = meta.get("optimal") or {}
    if ablation == "optimal" and optimal:
        return (f"optimal (each component at its own constant of least {optimal.get('objective')}"
                f", {optimal.get('steps')} Adam steps, lr {optimal.get('learning_rate')})")
    if ablation == "resample" and replacement.get("resample_draws"):
        return (f"resample (activations of other prompts; mean over "
                f"{replacement['resample_draws']} draws)")
    return ablation


def _header(result: Mapping[str, Any]) -> list[str]:
    meta, baseline = result["meta"], result["baseline"]
    config = meta.get("model_config") or {}
    shape = ", ".join(f"{k} {v}" for k, v in config.items()
                      if isinstance(v, int) and not isinstance(v, bool))
    direction = {True: "higher is better", False: "lower is better"}.get(
        meta.get("higher_is_better"), "")
    seconds = dict(meta.get("seconds") or {})
    total = seconds.pop("total", None)
    timing = ", ".join(f"{k} {float(v):.2f} s" for k, v in seconds.items() if v is not None)
    if total is not None:
        timing = f"{float(total):.2f} s" + (f" ({timing})" if timing else "")
    versions = ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())
    components = ", ".join(meta.get("components") or [])
    if meta.get("neuron_layers") is not None:
        components += f" (neurons of layers {', '.join(map(str, meta['neuron_layers']))})"
    ci = _ci_level(meta)
    rows = [
        ("model", f"`{meta.get('model', '?')}`" + (f" — {shape}" if shape else "")),
        ("task", _describe_task(meta.get("task") or {}, meta)),
        ("ablation", _ablation_text(meta)),
        ("metric", f"{meta.get('metric', '?')}" + (f" ({direction})" if direction else "")),
        ("components", f"{components}: {len(result['single'])} ablated one at a time"),
        ("clean baseline", f"{number(baseline.get('mean'))} ± {number(baseline.get('sem'))} "
                           f"(mean ± s.e.m. over {number(meta.get('n_prompts'))} prompts)"),
        ("threshold", f"{number(meta.get('threshold'))}"
                      + (f" — {meta['threshold_rule']}" if meta.get("threshold_rule") else "")),
        ("statistics", f"effect ± s.e.m. over prompts; {ci} bootstrap CI over prompts"
                       + (f" ({meta['n_bootstrap']} resamples)" if meta.get("n_bootstrap")
                          else "")),
        ("seed", number(meta.get("seed"))),
        ("versions", versions or "–"),
        ("date", str(meta.get("date", "–"))),
        ("run time", timing or "–"),
    ]
    task = (meta.get("task") or {}).get("name", "task")
    return ([f"# Ablation study: {task} on {meta.get('model', '?')}", ""]
            + markdown_table(["", ""], rows, "ll"))


def _ci_level(meta: Mapping[str, Any]) -> str:
    level = meta.get("ci_level")
    return f"{100 * float(level):g}%" if level is not None else "95%"


def _single(result: Mapping[str, Any], top: int, figures: Mapping[str, str]) -> list[str]:
    rows = sorted(result["single"], key=lambda r: (r.get("rank") is None, r.get("rank") or 0))
    counts = {key: sum(bool(r.get(key)) for r in rows) for key, _ in _FLAGS}
    ci = _ci_level(result["meta"])
    lines = ["", "## Single-component ablations", "",
             f"{len(rows)} components ablated one at a time: **{counts['critical']} critical**, "
             f"{counts['negative']} negative, {counts['no_effect']} with no effect. The effect "
             "is the change in the metric when the component is ablated, signed so that "
             "positive means the component helps the task; critical: effect above the "
             f"threshold and its {ci} CI above 0; negative: CI below 0; no effect: CI "
             "contains 0.", ""]
    lines += markdown_table(["rank", "component", "effect ± s.e.m.", f"{ci} CI", "flags"], [
        (r.get("rank"), f"`{r['component']}`",
         f"{number(r.get('effect'))} ± {number(r.get('sem'))}",
         f"[{number(r.get('ci_low'))}, {number(r.get('ci_high'))}]", _flags(r))
        for r in rows[:top]], "rlrrl")
    if len(rows) > top:
        lines += ["", f"Top {top} of {len(rows)}; every component is in `single.csv`."]
    for name, what in (("single_heads", "Single-head effects"),
                       ("single_layers", "MLP and neuron effects")):
        if name in figures:
            lines += ["", f"![{what}]({figures[name]})"]
    return lines


def cumulative_order(result: Mapping[str, Any]) -> str:
    """How `cumulative.order` is sorted: "lowest effect first", "largest effect first" or ""."""
    order = (result.get("cumulative") or {}).get("order") or []
    effect = {str(r.get("component")): r.get("effect") for r in result["single"]}
    ends = [effect.get(str(order[i])) for i in (0, -1)] if len(order) > 1 else []
    if len(ends) < 2 or None in ends or ends[0] == ends[1]:
        return ""
    return "lowest effect first" if ends[0] < ends[1] else "largest effect first"


def _cumulative(result: Mapping[str, Any], figures: Mapping[str, str]) -> list[str]:
    section = result.get("cumulative")
    lines = ["", "## Cumulative ablation", ""]
    if not section:
        return lines + ["Not run."]
    metric, n = section.get("metric") or [], section.get("n_ablated") or []
    recovered = section.get("recovered") or []
    order = cumulative_order(result)
    if metric:
        lines.append(
            f"- Components ablated together{f' ({order})' if order else ''}: from the clean "
            f"{number(result['baseline'].get('mean'))} the metric goes to {number(metric[0])} with "
            f"{number(n[0] if n else None)} ablated and {number(metric[-1])} with "
            f"{number(n[-1] if n else None)} ablated"
            + (f" (recovered {number(recovered[0], 3)} → {number(recovered[-1], 3)}; 1 = clean, "
               "0 = all ablated)." if recovered else "."))
    cliff = section.get("cliff") or {}
    if cliff.get("n_ablated") is not None or cliff.get("fraction") is not None:
        lines.append(f"- **Cliff** at {number(cliff.get('n_ablated'))} components ablated "
                     f"(fraction {number(cliff.get('fraction'), 3)}): drop "
                     f"{number(cliff.get('drop'))}.")
    else:
        lines.append("- No cliff.")
    if cliff.get("below_half") is not None:
        lines.append(f"- Recovered first falls below 0.5 at fraction "
                     f"{number(cliff['below_half'], 3)}.")
    if cliff.get("rule"):
        lines.append(f"- Rule: {cliff['rule']}.")
    if "cumulative" in figures:
        lines += ["", f"![Cumulative ablation]({figures['cumulative']})"]
    return lines


def _circuit(result: Mapping[str, Any]) -> list[str]:
    section = result.get("circuit")
    lines = ["", "## Minimal circuit", ""]
    if not section:
        return lines + ["Not run."]
    members = ", ".join(f"`{m}`" for m in section.get("members") or []) or "(none)"
    lines += [
        f"- Circuit: {members} — **size {number(section.get('size'))}**, share "
        f"{number(section.get('share'), 3)} of the components, **faithfulness "
        f"{number(section.get('faithfulness'))}** (target {number(section.get('target'))}).",
        f"- Metric with everything else ablated: {number(section.get('metric_circuit'))}; with "
        f"everything ablated: {number(section.get('metric_all_ablated'))}; clean: "
        f"{number(result['baseline'].get('mean'))}.",
        f"- Minimal (removing any member lowers recovery): **{number(section.get('minimal'))}**.",
    ]
    joint = section.get("optimal_complement") or {}
    if joint.get("recovered") is not None:
        lines.append(f"- With its complement ablated jointly at constants optimised for it "
                     f"({joint.get('objective')}, {number(joint.get('steps'))} Adam steps): "
                     f"recovered **{number(joint['recovered'])}** (metric "
                     f"{number(joint.get('metric'))}), beside "
                     f"{number(section.get('faithfulness'))}.")
    if section.get("reached") is False:
        lines.append("- **The target was not reached**: the greedy search ran out of "
                     "components (or the metric gave no recovery).")
    if section.get("steps"):
        lines += ["", "Greedy construction (recovered: 1 = clean, 0 = all ablated):", ""]
        lines += markdown_table(["step", "added", "recovered"],
                                [(i, f"`{s.get('added')}`", s.get("recovered"))
                                 for i, s in enumerate(section["steps"], 1)], "rlr")
    if section.get("minimality"):
        lines += ["", "Minimality check:", ""] + markdown_table(
            ["member", "recovered without it", "removing it hurts"],
            [(f"`{m.get('component')}`", m.get("recovered_without"), m.get("hurts"))
             for m in section["minimality"]], "lrl")
    return lines


def _interactions(result: Mapping[str, Any], figures: Mapping[str, str]) -> list[str]:
    section = result.get("interactions")
    lines = ["", "## Pair interactions", ""]
    if not section:
        return lines + ["Not run."]
    pairs = section.get("pairs") or []
    backup = [p for p in pairs if p.get("backup_candidate")]
    lines.append(f"{len(pairs)} pairs among {len(section.get('components') or [])} components; "
                 f"interaction = joint effect − single a − single b. "
                 f"**{len(backup)} backup candidate{'s' if len(backup) != 1 else ''}**"
                 + (":" if backup else "."))
    if backup:
        lines.append("(A backup candidate: neither single ablation has a measurable effect, "
                     "but ablating both does.)")
    strongest = sorted(pairs, key=lambda p: -abs(p.get("interaction") or 0.0))[:10]
    has_ci = any("joint_ci_low" in p for p in pairs)
    header = ["a", "b", "single a", "single b", "joint"] + (["joint CI"] if has_ci else [])
    for title, shown in (("", backup), ("Strongest interactions:", strongest)):
        if shown:
            rows = [[f"`{p.get('a')}`", f"`{p.get('b')}`", p.get("single_a"), p.get("single_b"),
                     p.get("joint")]
                    + ([f"[{number(p.get('joint_ci_low'))}, {number(p.get('joint_ci_high'))}]"]
                       if has_ci else []) + [p.get("interaction")] for p in shown]
            lines += [""] + ([title, ""] if title else []) + markdown_table(
                header + ["interaction"], rows, "ll" + "r" * (len(header) - 1))
    if "interactions" in figures:
        lines += ["", f"![Pair interactions]({figures['interactions']})"]
    return lines


def _ablation_types(result: Mapping[str, Any], figures: Mapping[str, str]) -> list[str]:
    section = result.get("ablation_comparison")
    lines = ["", "## Ablation types", ""]
    if not section:
        return lines + ["Not run."]
    spearman = section.get("spearman") or {}
    lines.append(f"Effects of {len(section.get('components') or [])} components under "
                 f"{', '.join(section.get('types') or [])} ablation; rank agreement:")
    lines += [""] + markdown_table(
        ["types", "Spearman ρ"], [(k.replace("~", " vs "), v) for k, v in spearman.items()], "lr")
    changed = section.get("changed") or []
    types = list(section.get("types") or [])
    if changed:
        lines += ["", f"The verdict changes with the ablation type for {len(changed)} "
                      "component(s):", ""]
        lines += markdown_table(["component"] + types, [
            [f"`{c.get('component')}`"] + [str((c.get("verdicts") or {}).get(t, "–"))
                                           for t in types] for c in changed],
                                "l" * (len(types) + 1))
    else:
        lines += ["", "Every component gets the same verdict under every ablation type."]
    if "ablation_types" in figures:
        lines += ["", f"![Ablation types]({figures['ablation_types']})"]
    return lines


def _screening(result: Mapping[str, Any], figures: Mapping[str, str]) -> list[str]:
    section = result.get("screening")
    lines = ["", "## Gradient screening", ""]
    if not section:
        return lines + ["Not run."]
    method = {"ig": f"integrated gradients ({section.get('steps')} steps)",
              "grad": "gradient at the clean model"}.get(section.get("method"),
                                                          str(section.get("method")))
    n = len(section.get("components") or [])
    seconds = section.get("seconds") or {}
    lines.append(f"Every one of the {n} components scored by {method} of the metric with "
                 f"respect to its keep-weight in {number(seconds.get('screening'), 3)} s; the "
                 f"top {section.get('top_k')} by |estimate| verified by exact ablation "
                 f"({section.get('verified_from', 'sweep')}).")
    rows = [("Spearman ρ, verified top-k", section.get("spearman_top_k"))]
    if section.get("spearman_all") is not None:
        rows.append(("Spearman ρ, every component", section["spearman_all"]))
    if section.get("precision_at_k") is not None:
        rows.append(("precision at k (by |effect|)", section["precision_at_k"]))
    found = section.get("critical_found")
    if found:
        rows.append(("critical components in the top k", f"{found['found']} of {found['total']}"))
    complete = section.get("completeness")
    if complete:
        rows.append(("IG completeness: Σ estimates vs joint effect",
                     f"{number(complete.get('sum_of_estimates'))} vs "
                     f"{number(complete.get('effect_all_ablated'))}"))
    lines += [""] + markdown_table(["agreement", "value"], rows, "lr")
    records = section.get("records") or []
    if records:
        lines += ["", "Verified components (screen order):", ""]
        lines += markdown_table(
            ["screen rank", "component", "estimated effect", "exact effect ± s.e.m.",
             "difference", "fails"],
            [(r.get("screen_rank"), f"`{r.get('component')}`", r.get("estimated_effect"),
              f"{number(r.get('exact_effect'))} ± {number(r.get('exact_effect_sem'))}",
              r.get("difference"), r.get("fails")) for r in records], "rlrrrl")
    failures = section.get("failures") or []
    lines += ["", (f"The estimate fails for {', '.join(f'`{c}`' for c in failures)}."
                   if failures else "The estimate holds for every verified component.")
              + f" Rule: {section.get('rule', '')}."]
    if section.get("note"):
        lines.append(f"Note: {section['note']}.")
    if "screening" in figures:
        lines += ["", f"![Screening estimate vs exact effect]({figures['screening']})"]
    return lines


PATCHING_COLUMNS, PATCHING_ROWS = 12, 40  # components and positions shown in summary.md


def _patching(result: Mapping[str, Any], figures: Mapping[str, str]) -> list[str]:
    """The patching section; nothing when the (optional) step did not run."""
    section = result.get("patching")
    if not section:
        return []
    names = [str(n) for n in section.get("components") or []]
    clean, cf, gap = (section.get(k) or {} for k in ("clean", "counterfactual", "gap"))
    lines = ["", "## Activation and path patching", "",
             f"Denoising: activations of the clean prompts patched into their counterfactual "
             f"prompts (example i from example i), one patch at a time, scored by "
             f"{section.get('metric', 'the metric')} on the patched run: clean "
             f"{_pm(clean)}, counterfactual {_pm(cf)} (gap {_pm(gap)}). "
             "**Restored** = (patched − counterfactual) / (clean − counterfactual) of batch "
             "means: 1 = the clean metric, 0 = the counterfactual's; ± s.e. by the delta "
             f"method (the gap's spread included). Patched: the {len(names)} critical heads "
             f"and MLPs{' (critical neurons are not)' if section.get('left_out') else ''}."]
    if section.get("note"):
        lines.append(f"Note: {section['note']}.")
    every, direct = section.get("all_positions") or {}, section.get("direct") or {}
    if not names or not every:
        return lines
    lines += ["", "Each component patched at every position, and along the direct path to the "
                  "final residual stream only (path patching: other heads frozen at the "
                  "counterfactual run, MLPs recomputed; CIs in the CSV):", ""] + markdown_table(
        ["component", "every position ± s.e.", "direct path ± s.e."],
        [(f"`{n}`", _pm(every, i), _pm(direct, i)) for i, n in enumerate(names)], "lrr")
    grid = np.array((section.get("by_position") or {}).get("restored") or [], dtype=float)
    if grid.size:
        total = np.abs(np.array(every.get("restored") or [0.0] * len(names), dtype=float))
        shown = np.sort(np.argsort(-np.nan_to_num(total), kind="stable")[:PATCHING_COLUMNS])
        peak = np.nan_to_num(np.abs(grid[shown])).max(0)  # the positions that matter most
        positions = np.sort(np.argsort(-peak, kind="stable")[:PATCHING_ROWS])
        lines += ["", "Restored fraction by position (rows: positions; columns: components, "
                      "each patched at that position alone):", ""] + markdown_table(
            ["position"] + [f"`{names[i]}`" for i in shown],
            [[int(p)] + [fraction(grid[i, p]) for i in shown] for p in positions],
            "r" * (len(shown) + 1))
        if len(shown) < len(names) or len(positions) < grid.shape[1]:
            lines += ["", f"Shown: {len(shown)} of {len(names)} components and "
                          f"{len(positions)} of {grid.shape[1]} positions (largest |restored|); "
                          "every cell is in `patching_positions.csv`."]
    if "patching" in figures:
        lines += ["", f"![Restored fraction by component and position]({figures['patching']})"]
    return lines


def _pm(values: Mapping[str, Any], i: int | None = None) -> str:
    """"mean ± sem" of a summary, or "restored ± sem" (3 decimals) of entry i of columns."""
    if i is None:
        return f"{number(values.get('mean'))} ± {number(values.get('sem'))}"
    value, sem = ((values.get(k) or [None] * (i + 1))[i] for k in ("restored", "sem"))
    return f"{fraction(value)} ± {fraction(sem)}"


def summary_markdown(result: Any, figures: Mapping[str, str] | None = None,
                     files: Sequence[str] = (), top: int = 15) -> str:
    """The Markdown summary of a study result dict; `figures` maps plot names (as in
    `jaxablate.report.plots.FIGURES`) to relative paths to link, `files` lists the data files."""
    result = as_result_dict(result)
    figures = figures or {}
    lines = _header(result) + _single(result, top, figures) + _screening(result, figures)
    lines += _cumulative(result, figures)
    lines += _circuit(result) + _interactions(result, figures) + _ablation_types(result, figures)
    lines += _patching(result, figures) + optimal_markdown(result, figures)
    if files:
        lines += ["", "## Files", ""] + [f"- [{name}]({name})" for name in files]
        lines += ["", "Head names such as `1.10` look like numbers to CSV readers, so the "
                      "CSVs write a head as `head 1.10` (`pandas.read_csv(path)` reads every "
                      "name back as text; `.str.removeprefix(\"head \")` gives `1.10`); "
                      "study.json and the Parquet files keep the names as `1.10`."]
    return "\n".join(lines) + "\n"
