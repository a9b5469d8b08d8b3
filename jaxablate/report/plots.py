"""Figures of a study's result dict (`StudyResult.to_dict()`), as PNG files.

  plot_single_heads(result, path)     layer x head heatmap of single-head effects; * where
                                      the 95% CI excludes 0, a black outline on critical heads
  plot_single_layers(result, path)    MLP layers (and the top neurons) as bars with 95% CIs
  plot_screening(result, path)        screening estimate vs exact effect per component, the
                                      verified top-k filled, failures in red, the diagonal
  plot_cumulative(result, path)       metric vs fraction ablated, +- s.e.m. band, cliff marked,
                                      recovered on the right axis
  plot_interactions(result, path)     pair interaction matrix, diverging colours centred at 0
  plot_ablation_types(result, path)   zero / mean / resample / optimal effects (resample +- std)
  plot_patching, plot_optimal         restored fraction by position; optimal ablation's damage
                                      per Adam step (`patching_plot`, `optimal_plot`)
  plot_all(result, folder)            every figure whose section is present

Each function returns the path it wrote, or None when its section is absent (or holds no
component of its kind). matplotlib is imported inside the functions and drives its Agg canvas
directly (no pyplot, no global backend switch, no figure left open), so `import jaxablate`
stays light and plotting never touches a user's interactive session.

Example:
    >>> from jaxablate.plots import plot_all
    >>> plot_all(study.run().to_dict(), "report")       # {"single_heads": Path(...), ...}
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FIGURES = ("single_heads", "single_layers", "screening", "cumulative", "interactions",
           "ablation_types")
OPT_IN_FIGURES = ("patching", "optimal")  # of sections only some runs have
_DPI = 120


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure bound to an Agg canvas, with constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, format="png")
    fig.clear()
    return path


def _float(value: Any) -> float:
    """A float from a JSON number, NaN for null."""
    return math.nan if value is None else float(value)


def colour_limit(values: np.ndarray) -> float:
    """A symmetric colour limit: the largest finite |value|, 1 when there is none."""
    finite = np.abs(values[np.isfinite(values)])
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 else 1.0


def _meta(result: Mapping[str, Any]) -> Mapping[str, Any]:
    return result.get("meta") or {}


def _effect_label(result: Mapping[str, Any]) -> str:
    meta = _meta(result)
    return f"effect ({meta.get('ablation', '?')} ablation, {meta.get('metric', 'metric')})"


def figure_title(result: Mapping[str, Any], what: str) -> str:
    meta = _meta(result)
    task = (meta.get("task") or {}).get("name", "task")
    return f"{what}: {meta.get('model', 'model')}, {task}"


def _significant(row: Mapping[str, Any]) -> bool:
    low, high = _float(row.get("ci_low")), _float(row.get("ci_high"))
    return bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))


def plot_single_heads(result: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Heatmap [layer, head] of single-head effects (diverging colours centred at 0).

    Each cell shows the effect; "*" marks a CI that excludes 0; a black outline marks a
    critical head. Heads the study did not ablate stay blank. None without head rows.
    """
    rows = [r for r in result.get("single") or () if r.get("kind") == "head"]
    if not rows:
        return None
    config = _meta(result).get("model_config") or {}
    n_layers = int(config.get("n_layers") or 1 + max(int(r["layer"]) for r in rows))
    n_heads = int(config.get("n_heads") or 1 + max(int(r["index"]) for r in rows))
    grid = np.full((n_layers, n_heads), np.nan)
    for r in rows:
        grid[int(r["layer"]), int(r["index"])] = _float(r.get("effect"))
    fig = new_figure(min(max(5.0, 2.5 + 0.6 * n_heads), 16.0), min(2.0 + 0.45 * n_layers, 12.0))
    ax = fig.add_subplot()
    limit = colour_limit(grid)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", vmin=-limit, vmax=limit,
                      aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=_effect_label(result))
    annotate = n_layers * n_heads <= 256
    from matplotlib.patches import Rectangle

    for r in rows:
        layer, head = int(r["layer"]), int(r["index"])
        star = "*" if _significant(r) else ""
        if annotate:
            value = grid[layer, head]
            colour = "white" if np.isfinite(value) and abs(value) > 0.6 * limit else "black"
            ax.text(head, layer, f"{value:.2g}{star}", ha="center", va="center",
                    fontsize=7, color=colour)
        elif star:
            ax.text(head, layer, star, ha="center", va="center", fontsize=8)
        if r.get("critical"):
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False,
                                   edgecolor="black", linewidth=2))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_title(figure_title(result, "single-head ablation") + "\n* 95% CI excludes 0, "
                 "outlined: critical", fontsize=9)
    return save_figure(fig, path)


def _bars(ax: Any, rows: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> None:
    effect = np.array([_float(r.get("effect")) for r in rows])
    low = np.array([_float(r.get("ci_low")) for r in rows])
    high = np.array([_float(r.get("ci_high")) for r in rows])
    err = np.stack([np.clip(effect - low, 0, None), np.clip(high - effect, 0, None)])
    err = np.nan_to_num(err)
    colours = ["tab:red" if r.get("critical") else "tab:blue" if _significant(r) else "0.6"
               for r in rows]
    x = np.arange(len(rows))
    ax.bar(x, np.nan_to_num(effect), yerr=err, color=colours, capsize=3)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, labels, rotation=90 if len(rows) > 12 else 0, fontsize=8)


def plot_single_layers(result: Mapping[str, Any], path: str | os.PathLike,
                       top: int = 30) -> Path | None:
    """Bars with 95% CIs: one per MLP layer, and the `top` neurons by rank (red: critical,
    blue: CI excludes 0, grey: neither). None without MLP or neuron rows."""
    single = result.get("single") or ()
    mlps = sorted((r for r in single if r.get("kind") == "mlp"), key=lambda r: int(r["layer"]))
    neurons = [r for r in single if r.get("kind") == "neuron"]
    neurons = sorted(neurons, key=lambda r: (r.get("rank") is None, r.get("rank") or 0))[:top]
    panels = [p for p in (("MLP layers", mlps), (f"top {len(neurons)} neurons", neurons)) if p[1]]
    if not panels:
        return None
    fig = new_figure(max(6.0, 0.3 * max(len(p[1]) for p in panels) + 2.0), 3.2 * len(panels))
    fig.suptitle(figure_title(result, "single ablation") + "\nred: critical, blue: 95% CI "
                 "excludes 0, grey: neither; bars: 95% CI", fontsize=9)
    for i, (what, rows) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        _bars(ax, rows, [str(r["component"]) for r in rows])
        ax.set_ylabel(_effect_label(result), fontsize=8)
        ax.set_title(what, fontsize=9)
    return save_figure(fig, path)


def plot_screening(result: Mapping[str, Any], path: str | os.PathLike,
                   labels: int = 12) -> Path | None:
    """Scatter of the screening estimate (x) against the exact single-ablation effect (y)
    for every component whose exact effect is known; verified top-k filled, the rest
    hollow, failures in red, the `labels` largest by |exact| named; y = x dashed.
    None without a screening section."""
    section = result.get("screening") or None
    if section is None or not section.get("components"):
        return None
    names = [str(n) for n in section["components"]]
    x = np.array([_float(v) for v in section.get("estimated_effect") or ()])
    exact = section.get("exact_effect_all") or section.get("exact_effect") or ()
    y = np.array([_float(v) for v in exact])
    verified = np.array([bool(v) for v in section.get("verified") or [False] * len(names)])
    fails = np.array([bool(v) for v in section.get("fails") or [False] * len(names)])
    known = np.isfinite(x) & np.isfinite(y)
    if not known.any():
        return None
    fig = new_figure(5.2, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    rest = known & ~verified
    if rest.any():
        ax.scatter(x[rest], y[rest], s=14, facecolors="none", edgecolors="tab:gray",
                   label="not in the top k")
    for sel, colour, label in ((known & verified & ~fails, "tab:blue", "verified"),
                               (known & fails, "tab:red", "verified, estimate fails")):
        if sel.any():
            ax.scatter(x[sel], y[sel], s=22, color=colour, label=label)
    span = np.concatenate([x[known], y[known], np.zeros(1)])
    low, high = float(span.min()), float(span.max())
    ax.plot([low, high], [low, high], color="black", linewidth=0.8, linestyle="--")
    for i in sorted(np.nonzero(known)[0], key=lambda i: -abs(y[i]))[:labels]:
        ax.annotate(names[i], (x[i], y[i]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    method = {"ig": f"integrated gradients, {section.get('steps')} steps",
              "grad": "gradient at the clean model"}.get(section.get("method"), "estimate")
    ax.set_xlabel(f"screening estimate ({method})")
    ax.set_ylabel(_effect_label(result))
    rho = section.get("spearman_all")
    rho = section.get("spearman_top_k") if rho is None else rho
    ax.set_title(figure_title(result, "screening vs exact")
                 + (f"\nSpearman {float(rho):.2f}" if rho is not None else ""), fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_cumulative(result: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """The metric as more components are ablated together (in `cumulative.order`), from the
    clean model, with a +- s.e.m. band, the clean baseline, the cliff, and "recovered" (1 =
    clean, 0 = all ablated) on the right axis. None without a cumulative section."""
    cumulative = result.get("cumulative") or None
    if cumulative is None or not cumulative.get("fractions"):
        return None
    x = np.array([_float(v) for v in cumulative["fractions"]])
    y = np.array([_float(v) for v in cumulative["metric"]])
    sem = np.array([_float(v) for v in cumulative.get("sem") or [None] * len(y)])
    recovered = np.array([_float(v) for v in cumulative.get("recovered") or [None] * len(y)])
    baseline = result.get("baseline") or {}
    if baseline.get("mean") is not None and x[0] > 0:  # start at the clean model
        x, y = np.r_[0.0, x], np.r_[float(baseline["mean"]), y]
        sem, recovered = np.r_[_float(baseline.get("sem")), sem], np.r_[1.0, recovered]
    fig = new_figure(6.5, 4.0)
    ax = fig.add_subplot()
    from jaxablate.report.summary import cumulative_order

    order = cumulative_order(result)
    ax.plot(x, y, marker="o", markersize=3, color="tab:blue",
            label="ablated together" + (f" ({order})" if order else ""))
    band = np.isfinite(sem)
    if band.any():
        ax.fill_between(x, y - np.where(band, sem, 0), y + np.where(band, sem, 0),
                        color="tab:blue", alpha=0.25, linewidth=0, label="± s.e.m.")
    if baseline.get("mean") is not None:
        ax.axhline(float(baseline["mean"]), color="black", linestyle="--", linewidth=1,
                   label="clean baseline")
    cliff = cumulative.get("cliff") or {}
    if cliff.get("fraction") is not None:
        drop = cliff.get("drop")
        text = f"cliff: {cliff.get('n_ablated')} ablated" + (
            f", drop {float(drop):.3g}" if drop is not None else "")
        ax.axvline(float(cliff["fraction"]), color="tab:red", linewidth=1.2, label=text)
    _recovered_axis(ax, y, recovered)
    meta = _meta(result)
    ax.set_xlabel("fraction of components ablated")
    ax.set_ylabel(str(meta.get("metric", "metric")))
    ax.set_title(figure_title(result, f"cumulative {meta.get('ablation', '')} ablation"),
                 fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _recovered_axis(ax: Any, metric: np.ndarray, recovered: np.ndarray) -> None:
    """A right-hand axis in units of `recovered`, an affine function of the metric."""
    ok = np.isfinite(metric) & np.isfinite(recovered)
    if ok.sum() < 2 or np.ptp(metric[ok]) == 0:
        return
    slope, offset = np.polyfit(metric[ok], recovered[ok], 1)
    if not np.isfinite(slope) or abs(slope) < 1e-12:
        return
    axis = ax.secondary_yaxis("right", functions=(lambda m: slope * m + offset,
                                                  lambda r: (r - offset) / slope))
    axis.set_ylabel("recovered (1 = clean, 0 = all ablated)")


def plot_interactions(result: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Heatmap of pair interactions (joint effect minus the sum of the singles), diverging
    colours centred at 0; backup candidates outlined. None without an interactions section."""
    section = result.get("interactions") or None
    if section is None or not section.get("components"):
        return None
    names = [str(n) for n in section["components"]]
    matrix = np.array([[_float(v) for v in row] for row in section["matrix"]], dtype=float)
    n = len(names)
    size = min(3.0 + 0.45 * n, 14.0)
    fig = new_figure(size + 1.2, size)
    ax = fig.add_subplot()
    limit = colour_limit(matrix)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu_r", vmin=-limit, vmax=limit,
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, label="interaction (joint - single a - single b)")
    from matplotlib.patches import Rectangle

    if n <= 16:
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                colour = "white" if abs(value) > 0.6 * limit else "black"
                ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=7,
                        color=colour)
    where = {name: i for i, name in enumerate(names)}
    for pair in section.get("pairs") or ():
        if pair.get("backup_candidate") and pair.get("a") in where and pair.get("b") in where:
            i, j = where[pair["a"]], where[pair["b"]]
            for r, c in ((i, j), (j, i)):
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False,
                                       edgecolor="black", linewidth=2))
    every = max(1, math.ceil(n / 40))  # at most ~40 labels per axis
    ticks = list(range(0, n, every))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=8)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=8)
    ax.set_title(figure_title(result, "pair interactions") + "\noutlined: backup candidates",
                 fontsize=9)
    return save_figure(fig, path)


def plot_ablation_types(result: Mapping[str, Any], path: str | os.PathLike,
                        top: int = 12) -> Path | None:
    """Left: each other ablation type's effects against the study's own (resample with +- std
    over draws), with the diagonal. Right: grouped bars of the `top` components by rank.
    None without an ablation_comparison section."""
    section = result.get("ablation_comparison") or None
    if section is None or not section.get("components") or not section.get("effects"):
        return None
    names = [str(n) for n in section["components"]]
    effects = {t: np.array([_float(v) for v in section["effects"][t]])
               for t in section.get("types") or section["effects"] if t in section["effects"]}
    std = np.array([_float(v) for v in section.get("resample_std") or [None] * len(names)])
    base = _meta(result).get("ablation")
    base = base if base in effects else next(iter(effects))
    colours = {"zero": "tab:orange", "mean": "tab:blue", "resample": "tab:green",
               "optimal": "tab:purple"}
    fig = new_figure(11.0, 4.2)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    x = effects[base]
    for kind, y in effects.items():
        if kind == base:
            continue
        yerr = np.nan_to_num(std) if kind == "resample" and np.isfinite(std).any() else None
        left.errorbar(x, y, yerr=yerr, fmt="o", markersize=4, capsize=2, label=kind,
                      color=colours.get(kind))
    span = np.concatenate([v[np.isfinite(v)] for v in effects.values()] + [np.zeros(1)])
    low, high = float(span.min()), float(span.max())
    left.plot([low, high], [low, high], color="black", linewidth=0.8, linestyle="--")
    left.set_xlabel(f"effect, {base} ablation")
    left.set_ylabel("effect, other ablation")
    spearman = section.get("spearman") or {}
    pairs = [f"{k} {float(v):.2f}" for k, v in spearman.items() if v is not None]
    text = ",\n".join(", ".join(pairs[i:i + 3]) for i in range(0, len(pairs), 3))  # 3 a line
    left.set_title("Spearman: " + text if text else "effects by ablation type", fontsize=9)
    if len(effects) > 1:
        left.legend(fontsize=8)

    order = _ranked_positions(result, names)[:top]
    width = 0.8 / len(effects)
    for k, (kind, y) in enumerate(effects.items()):
        yerr = (np.nan_to_num(std[order]) if kind == "resample" and np.isfinite(std).any()
                else None)
        right.bar(np.arange(len(order)) + (k - (len(effects) - 1) / 2) * width,
                  np.nan_to_num(y[order]), width, yerr=yerr, capsize=2, label=kind,
                  color=colours.get(kind))
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set_xticks(np.arange(len(order)), [names[i] for i in order], rotation=90, fontsize=8)
    right.set_ylabel("effect")
    right.set_title(f"top {len(order)} components by rank"
                    + (" (resample: ± std over draws)" if np.isfinite(std).any() else ""),
                    fontsize=9)
    right.legend(fontsize=8)
    return save_figure(fig, path)


def _ranked_positions(result: Mapping[str, Any], names: Sequence[str]) -> list[int]:
    """Indices into `names` ordered by the single-ablation rank (unranked last)."""
    rank = {str(r.get("component")): r.get("rank") for r in result.get("single") or ()}
    return sorted(range(len(names)),
                  key=lambda i: (rank.get(names[i]) is None, rank.get(names[i]) or 0, i))


def plot_all(result: Mapping[str, Any], folder: str | os.PathLike) -> dict[str, Path]:
    """Write every figure whose section is present into `folder` as NAME.png.

    Returns {name: path} for the figures written, names from `FIGURES` + `OPT_IN_FIGURES`."""
    from jaxablate.report.optimal_plot import plot_optimal  # they import this module
    from jaxablate.report.patching_plot import plot_patching

    folder = Path(folder)
    makers = {"single_heads": plot_single_heads, "single_layers": plot_single_layers,
              "screening": plot_screening,
              "cumulative": plot_cumulative, "interactions": plot_interactions,
              "ablation_types": plot_ablation_types, "patching": plot_patching,
              "optimal": plot_optimal}
    written = {}
    for name in FIGURES + OPT_IN_FIGURES:
        path = makers[name](result, folder / f"{name}.png")
        if path is not None:
            written[name] = path
    return written
