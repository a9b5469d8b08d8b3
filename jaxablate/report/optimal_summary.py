"""The summary.md section of a study's optimal-ablation fit (`jaxablate.study.optimal`): what
was fitted on which prompts, Delta_OA beside Delta_mean for the components that mean ablation
damages most, and the share of that damage that was distribution shift; nothing when the
study ran no optimal ablation.

    optimal_markdown(result, figures, top=10) -> list[str]     lines of summary.md

Example:
    >>> print("\\n".join(optimal_markdown(Study(model, task, ablation="optimal").run().to_dict())))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxablate.report.markdown import fraction, markdown_table, number

OBJECTIVE_TEXT = {"kl_to_clean": "KL divergence from the clean next-token distribution "
                                 "(mean over positions)",
                  "loss": "next-token loss"}


def _column(section: Mapping[str, Any], key: str, n: int) -> list[Any]:
    values = section.get(key)
    return [None] * n if values is None else list(values)


def optimal_markdown(result: Mapping[str, Any], figures: Mapping[str, str] | None = None,
                     top: int = 10) -> list[str]:
    """Lines of the "Optimal ablation" section (none without an "optimal" section): the fit,
    a table of the `top` components by Delta_mean (Delta_mean, Delta_OA, shift share on the
    fit prompts; the study's effects under mean and optimal ablation where computed), the
    median shift share, and the figure `figures["optimal"]` when given."""
    section = result.get("optimal")
    if not section:
        return []
    names = [str(n) for n in section.get("components") or []]
    n = len(names)
    mean, best, share = (_column(section, k, n) for k in
                         ("delta_mean", "delta_optimal", "shift_share"))
    effect_mean, effect_best = (_column(section, k, n) for k in ("effect_mean",
                                                                  "effect_optimal"))
    objective = str(section.get("objective", "?"))
    units = section.get("units") or ""
    where = ("evaluated" if section.get("fit_prompts") == "prompts" else "reference")
    lines = ["", "## Optimal ablation", "",
             f"Each component replaced by the constant that least changes the "
             f"{OBJECTIVE_TEXT.get(objective, objective)} on the "
             f"{number(section.get('n_fit_prompts'))} "
             f"{where} prompts (Li & Janson 2024): {number(section.get('steps'))} Adam steps "
             f"of rate {number(section.get('learning_rate'))} from the mean-ablation values"
             f"{', one constant per position' if section.get('per_position') else ''}, the "
             "step of least damage kept. **Δ_mean** and **Δ_OA**: the damage of mean and "
             f"of optimal ablation on those prompts ({objective}{', ' + units if units else ''}); "
             "**shift share** = (Δ_mean − Δ_OA) / Δ_mean, the part of the mean-ablation "
             "damage that was distribution shift rather than information the component "
             "carries. Under optimal ablation every step of this study sets each ablated "
             "component to its own single-component optimum (not to constants fitted for a "
             "set jointly)."]
    if section.get("note"):
        lines.append(f"Note: {section['note']}.")
    finite = np.array([s for s in share if s is not None], dtype=float)
    if finite.size:
        lines += ["", f"Median shift share over the {n} components: "
                      f"**{fraction(float(np.median(finite)))}**."]
    order = sorted(range(n), key=lambda i: -(mean[i] if mean[i] is not None else -np.inf))
    evaluated = any(v is not None for v in effect_mean + effect_best)
    header = ["component", "Δ_mean", "Δ_OA", "shift share"]
    header += [f"effect, mean ({section.get('metric', 'metric')})", "effect, optimal"] \
        if evaluated else []
    rows = [[f"`{names[i]}`", mean[i], best[i], fraction(share[i])]
            + ([effect_mean[i], effect_best[i]] if evaluated else []) for i in order[:top]]
    lines += [""] + markdown_table(header, rows, "l" + "r" * (len(header) - 1))
    lines += ["", f"Δ on the fit prompts; effects on the {number(result['meta'].get('n_prompts'))} "
                  "evaluated prompts" + (f"; top {top} of {n} by Δ_mean" if n > top else "")
                  + ". Every component is in `optimal.csv`."]
    if figures and "optimal" in figures:
        lines += ["", f"![Optimal ablation: damage per Adam step]({figures['optimal']})"]
    return lines
