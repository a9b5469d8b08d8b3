"""The ablation-study protocol: every step a few `jaxablate.sweep` calls on one model and task.

    study = Study(model, task, ablation="mean")        # or tokens=..., metric=...
    result = study.run()                                # baseline, single, cumulative, circuit,
    print(result.table(10))                             # interactions, ablation comparison
    json.dump(result.to_dict(), f, allow_nan=False)

Definitions (signs: docs/conventions.md, the one place they are defined):

effect      signed so that positive = the component helps the task: baseline - ablated when
            `metric.higher_is_better` (logit difference, accuracy, probability), else
            ablated - baseline (loss, KL) (`metrics.effect`). Per example, then its mean,
            standard error (std ddof=1 / sqrt(batch)) and a 95% percentile bootstrap CI over
            examples (`n_bootstrap` resamples drawn once from `seed`, the same for every
            component). Resample ablation: the mean over `resample_draws` draws, and the s.e.
            and CI include the variance between draws (the bootstrap resamples draws too;
            `stats.effect_stats`).
rank        importance: 1 = the largest |effect| (a component whose removal helps the task a
            lot ranks high too); the tables keep the signed effect.
threshold   `threshold=` if given, else 10% of |baseline mean| (logit difference: 10% of the
            clean logit difference; loss: 10% of the clean loss). Where the baseline is 0
            (kl_to_clean), 10% of |metric(all studied components ablated) - baseline|.
flags       critical: effect > threshold and the CI excludes 0; negative: the CI lies below 0
            (ablation measurably improves the task); no_effect: the CI contains 0.
            verdict = "critical" | "negative" | "none" (at most one flag of the first two).
recovered   (m - m_all) / (baseline - m_all), m_all = the metric with every studied component
            ablated together: 1 = clean performance, 0 = nothing left (above 1 or below 0 when
            the components left intact push the metric past either end). Sign-free, so the
            same for loss-type and logit-type metrics. NaN (null in JSON) when m_all = baseline.
cumulative  components ordered by |effect|, least important first; fraction f ablates the
            round(f * N) least important together. Cliff: the step (from the previous point, the first from the
            clean model) with the largest drop in `recovered`; `below_half` is the first
            fraction where recovered < 0.5.
circuit     greedy restoration from everything ablated: each step evaluates every candidate
            (the circuit so far plus one component kept, all else ablated) in ONE sweep and
            keeps the one of highest recovered, until recovered >= target. faithfulness =
            recovered of the circuit alone. Minimality: a member "hurts" when the circuit
            without it recovers less by more than float32 rounding (`stats.recovered_tolerance`:
            the sweep's determinism bound carried through the recovered fraction); minimal =
            every member hurts. Cost: up to
            N (N + 1) / 2 masks (10,440 for GPT-2 small's heads); `max_size` caps the steps.
interactions  interaction = joint effect - effect(a) - effect(b) over the top-k components
            by |effect| (default: every head when only heads are studied and there are <= 200,
            else the 20 most important), listed in study order. Backup candidate: neither
            single ablation is measurable (both CIs contain 0) but the joint effect is (its
            CI lies above 0).
screening   gradient screening of every component (`jaxablate.attribute`, "ig" by default),
            then the top-k verified by exact ablation: Spearman, precision at k, failures
            (definitions in `jaxablate.screening`).
comparison  the single study under several ablation types; resample = the mean over
            `resample_draws` draws (keys from `jax.random.split`), per example; Spearman
            correlation of effects (average ranks for ties); components whose verdict differs
            (one threshold, the study's, for every type).

Replacement values: mean = `mean_replacement(model, reference)` (per position when the
reference prompts have the evaluated length, else over batch and positions); resample draws
each prompt's values from another prompt of the reference set (never itself when the reference
set is the evaluated prompts; the evaluated prompts when the lengths differ).
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jaxtyping import Float

from jaxablate import masks as masks_lib
from jaxablate.components import parse_component
from jaxablate.engine import check_chunk_size, clean_metric, planned_chunk_size, sweep
from jaxablate.errors import InputError, InputTypeError
from jaxablate.masks import MaskSet
from jaxablate.metrics import check_metric, effect
from jaxablate.model import GPT2
from jaxablate.replacement import Replacement
from jaxablate.replacements import mean_replacement, resample_replacement, zero_replacement
from jaxablate.screening import screen_and_verify
from jaxablate.sharding import placement
from jaxablate.stats import (
    CI_LEVEL,
    Effects,
    bootstrap_counts,
    effect_stats,
    find_cliff,
    interaction_table,
    recovered_tolerance,
    spearman,
)
from jaxablate.store import ResultsStore, masks_digest
from jaxablate.study_checks import (
    ABLATIONS,
    KINDS,
    _check_fractions,
    _check_int,
    _check_kinds,
    _check_screening,
    _check_target,
    _check_types,
)
from jaxablate.study_result import StudyResult
from jaxablate.tasks.base import Task
from jaxablate.validation import check_tokens

STEPS = ("baseline", "single", "screening", "cumulative", "circuit", "interactions",
         "ablation_comparison")
DEFAULT_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 11))
THRESHOLD_FRACTION = 0.1


def _json(x: Any) -> Any:
    """Python floats (non-finite -> None), ints, bools, lists: what json.dumps takes strictly."""
    if isinstance(x, dict):
        return {k: _json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_json(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


# ---------------------------------------------------------------------------------------------
# The study.


class Study:
    """An ablation study of one model on one task: see the module docstring for definitions.

    model: a jaxablate GPT2. task: a `jaxablate.tasks.Task` (tokens, metric, reference), or
    tokens int [batch, seq] with `metric`. reference: int [n_ref, seq'] prompts for mean and
    resample values (default: the task's reference set, else the prompts). ablation: "zero",
    "mean" or "resample". components: kinds studied, among "heads", "mlps", "neurons"
    (neurons of `neuron_layers` only, default all). threshold: the critical effect (default
    10% of |baseline|). progress(step, done, total) is called after every sweep chunk.
    Results of each step are cached; `run()` returns all of them as a `StudyResult`.
    store: a folder (or `jaxablate.store.ResultsStore`) where every sweep is committed chunk
    by chunk: a study run again with the same inputs resumes from it, one with other inputs
    is refused (`StoreMismatchError`) unless `overwrite=True` empties it first.
    chunk_size: masks per compiled call per device (default: planned from the
    single-component set). devices / mesh: the devices every sweep and the screening are
    split over (default every local device; see `jaxablate.sharding`).

    Example:
        >>> study = Study(model, tasks.induction(64, vocab=model.cfg.d_vocab), ablation="mean")
        >>> study.single()[0]["effect"], study.minimal_circuit(0.8)["members"]
    """

    def __init__(self, model: GPT2, task: Task | None = None, *, tokens: Any = None,
                 metric: Any = None, reference: Any = None, ablation: str = "mean",
                 components: str | Sequence[str] = ("heads",),
                 neuron_layers: Sequence[int] | None = None, threshold: float | int | None = None,
                 seed: int = 0, n_bootstrap: int = 1000, resample_draws: int = 5,
                 progress: Any = None,
                 model_name: str | None = None, store: Any = None, overwrite: bool = False,
                 chunk_size: int | None = None, devices: Any = None, mesh: Any = None):
        if not isinstance(model, GPT2):
            raise InputTypeError(f"model: expected a jaxablate GPT2 (load_gpt2), got "
                            f"{type(model).__name__}")
        if (task is None) == (tokens is None):
            raise InputError("give either a task or tokens (with metric=), not both or neither")
        if task is not None and not isinstance(task, Task):
            raise InputTypeError(f"task: expected a jaxablate.tasks.Task, got {type(task).__name__}")
        if task is None and metric is None:
            raise InputError("metric is required with tokens, e.g. "
                             "metric=jaxablate.metrics.logit_diff(correct, wrong)")
        metric = task.metric if metric is None else metric
        check_metric(metric)
        if progress is not None and not callable(progress):
            raise InputTypeError(f"progress: expected None or a function progress(step, done, "
                                 f"total), got {type(progress).__name__} {progress!r}")
        if ablation not in ABLATIONS:
            raise InputError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
        kinds = _check_kinds(components)
        if neuron_layers is not None:
            if "neurons" not in kinds:
                raise InputError("neuron_layers is given but components has no 'neurons'")
            neuron_layers = [_check_int(v, "neuron_layers entry", 0) for v in neuron_layers]
            if not neuron_layers or max(neuron_layers) >= model.cfg.n_layers:
                raise InputError(f"neuron_layers must be layers in [0, {model.cfg.n_layers}), "
                                 f"got {neuron_layers!r}")
        if threshold is not None and (isinstance(threshold, bool) or
                                      not isinstance(threshold, (int, float)) or
                                      not threshold >= 0 or not math.isfinite(threshold)):
            raise InputError(f"threshold must be a finite number >= 0, got {threshold!r}")
        self.tokens = check_tokens(task.tokens if task is not None else tokens, model.cfg)
        batch, seq = self.tokens.shape
        if batch < 2:
            raise InputError(f"a study needs at least 2 prompts (standard errors, bootstrap, "
                             f"resampling), got {batch}")
        # checks answer ids and positions on the host
        n_read = metric.prepare(self.tokens, model.cfg)[0].shape[1]
        if chunk_size is not None:
            chunk_size = check_chunk_size(model, batch, seq, n_read, chunk_size)
        if reference is None:
            reference = None if task is None else task.reference
        self.reference = (self.tokens if reference is None
                          else check_tokens(reference, model.cfg))
        self.model, self.task, self.metric, self.ablation = model, task, metric, ablation
        self.kinds, self.neuron_layers = kinds, neuron_layers
        self.seed = _check_int(seed, "seed", 0)
        self.n_bootstrap = _check_int(n_bootstrap, "n_bootstrap", 1)
        self.resample_draws = _check_int(resample_draws, "resample_draws", 1)
        self.progress, self.model_name = progress, model_name
        self._threshold = None if threshold is None else float(threshold)
        cfg = model.cfg
        parts = {"heads": lambda: masks_lib.single_heads(cfg),
                 "mlps": lambda: masks_lib.single_mlps(cfg),
                 "neurons": lambda: masks_lib.single_neurons(cfg, layers=neuron_layers)}
        self.single_masks: MaskSet = masks_lib.concat([parts[k]() for k in kinds])
        self.names: list[str] = list(self.single_masks.names)
        self._parsed = {name: parse_component(name) for name in self.names}
        self._counts = bootstrap_counts(batch, self.n_bootstrap, self.seed)
        self._draw_counts: np.ndarray | None = None  # resample draws' bootstrap weights
        self._cache: dict[Any, Any] = {}
        self._chunk: int | None = chunk_size
        self.devices, self.mesh = devices, mesh
        self._n_devices = placement(devices, mesh).n_devices  # checks them, before any work
        if store is not None and not isinstance(store, ResultsStore):
            store = ResultsStore(store, overwrite=overwrite)
        elif store is not None and overwrite:
            store.clear()
        self.store: ResultsStore | None = store

    # -- plumbing -----------------------------------------------------------------------------

    def _cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def _replacements(self, ablation: str) -> list[Replacement]:
        """One replacement (zero, mean) or `resample_draws` of them (resample)."""
        def build() -> list[Replacement]:
            seq = self.tokens.shape[1]
            same = self.reference.shape[1] == seq
            if ablation == "zero":
                return [zero_replacement(self.model)]
            if ablation == "mean":
                return [mean_replacement(self.model, self.reference, per_position=same)]
            keys = jax.random.split(jax.random.key(self.seed), self.resample_draws)
            own = self.reference is self.tokens or not same
            return [resample_replacement(self.model, self.tokens, k) if own else
                    resample_replacement(self.model, self.reference, k,
                                         n_examples=self.tokens.shape[0]) for k in keys]
        return self._cached(("replacement", ablation), build)

    def _sweep(self, sets: MaskSet | list[list[str]], ablation: str, step: str,
               reuse_prefix: bool = True) -> Float[np.ndarray, "draws n batch"]:
        """The metric under each mask, per draw of the replacement and per example.

        Lists of component names are ablated together (an empty list is the clean model).
        Sets smaller than the study's chunk size are padded with clean masks to a power of
        two, so the study compiles a handful of programs instead of one per set size.
        Masks that ablate nearly everything (circuit steps) start at layer 0 anyway: they run
        with `reuse_prefix=False`, one program for every step, rather than sharing the odd
        parent trajectory (a different program) depending on which candidates remain.
        """
        if self._chunk is None:
            self._chunk = planned_chunk_size(self.model, self.tokens, self.single_masks,
                                             self.metric)
        mask_set = sets if isinstance(sets, MaskSet) else None
        n = len(sets)
        if mask_set is None:
            size = n if n >= self._chunk else min(self._chunk, 1 << (n - 1).bit_length())
            # Components parsed once (names would be re-parsed for every mask).
            padded = [[self._parsed[c] for c in s] for s in sets] + [[]] * (size - n)
            mask_set = masks_lib.from_components(self.model.cfg, padded)
        chunk = min(self._chunk * self._n_devices, len(mask_set))
        report = None if self.progress is None else (
            lambda done, total: self.progress(step, done, total))
        if self.store is None:
            out = [sweep(self.model, self.tokens, mask_set, r, self.metric, chunk,
                         progress=report, reuse_prefix=reuse_prefix, devices=self.devices,
                         mesh=self.mesh)
                   for r in self._replacements(ablation)]
        else:  # one stored sweep per draw, keyed by what it computes
            tag = masks_digest(mask_set)[:12]
            out = [self.store.sweep(self.model, self.tokens, mask_set, r, self.metric, chunk,
                                    key=f"{step}-{ablation}-d{d}-{tag}", seed=self.seed,
                                    ablation=ablation, progress=report,
                                    reuse_prefix=reuse_prefix, devices=self.devices,
                                    mesh=self.mesh)
                   for d, r in enumerate(self._replacements(ablation))]
        return np.stack(out).astype(np.float64)[:, :n]

    def _effect(self, ablated: Float[np.ndarray, "*draws n batch"]
                ) -> Float[np.ndarray, "*draws n batch"]:
        """Signed effect per example: positive = the ablated components helped."""
        return effect(self.metric, ablated, self._baseline_values())

    def _stats(self, effects: Float[np.ndarray, "draws n batch"]) -> Effects:
        """Effect statistics of per-draw, per-example effects; with several draws (resample)
        the CI and s.e. include the variance between draws (`stats.effect_stats`)."""
        draws = len(effects)
        if draws > 1 and self._draw_counts is None:
            self._draw_counts = bootstrap_counts(draws, self.n_bootstrap, self.seed + 1)
        return effect_stats(effects, self._counts, self.threshold,
                            self._draw_counts if draws > 1 else None)

    def _recovered(self, values: Float[np.ndarray, " n"]) -> Float[np.ndarray, " n"]:
        """(m - m_all) / (baseline - m_all): 1 = clean, 0 = all ablated; NaN if they agree."""
        base = float(self._baseline_values().mean())
        floor = float(self._all_ablated(self.ablation).mean())
        return (values - floor) / (base - floor) if base != floor else np.full_like(values, np.nan)

    def _baseline_values(self) -> Float[np.ndarray, " batch"]:
        return self._cached("baseline", lambda: clean_metric(
            self.model, self.tokens, self.metric).astype(np.float64))

    def _all_ablated(self, ablation: str) -> Float[np.ndarray, " batch"]:
        """The metric per example with every studied component ablated (mean over draws)."""
        return self._cached(("all", ablation), lambda: self._sweep(
            [self.names], ablation, "all_ablated", reuse_prefix=False).mean(0)[0])

    @property
    def threshold(self) -> float:
        """The critical effect: given, or 10% of |baseline| (see the module docstring)."""
        if self._threshold is not None:
            return self._threshold
        base = float(self._baseline_values().mean())
        if abs(base) > 1e-6:
            return THRESHOLD_FRACTION * abs(base)
        return THRESHOLD_FRACTION * abs(float(self._all_ablated(self.ablation).mean()) - base)

    @property
    def threshold_rule(self) -> str:
        if self._threshold is not None:
            return "given (threshold=)"
        if abs(float(self._baseline_values().mean())) > 1e-6:
            return f"{THRESHOLD_FRACTION:g} x |baseline mean|"
        return (f"{THRESHOLD_FRACTION:g} x |metric(all studied components ablated) - baseline| "
                f"(the baseline is 0)")

    def effects(self, ablation: str | None = None) -> Effects:
        """Single-component effects under `ablation` (default the study's) as arrays."""
        return self._single(ablation or self.ablation)[0]

    def _single(self, ablation: str) -> tuple[Effects, Float[np.ndarray, "draws n"]]:
        """Effects (mean over draws per example) and the mean effect of each draw."""
        def compute() -> tuple[Effects, np.ndarray]:
            per_draw = self._effect(self._sweep(self.single_masks, ablation, "single"))
            return self._stats(per_draw), per_draw.mean(2)
        return self._cached(("single", ablation), compute)

    # -- the protocol -------------------------------------------------------------------------

    def baseline(self) -> dict[str, Any]:
        """The metric without ablation: {"mean", "sem", "per_example"}."""
        values = self._baseline_values()
        return _json({"mean": values.mean(),
                      "sem": values.std(ddof=1) / math.sqrt(len(values)),
                      "per_example": values})

    def single(self) -> list[dict[str, Any]]:
        """One record per component (study order): effect, sem, CI, rank, flags, per example."""
        e = self.effects()
        records = []
        for i, name in enumerate(self.names):
            c = self._parsed[name]
            records.append({
                "component": name, "kind": KINDS[c.kind], "layer": c.index[0],
                "index": c.index[1] if len(c.index) > 1 else None, "effect": e.mean[i],
                "sem": e.sem[i], "ci_low": e.ci_low[i], "ci_high": e.ci_high[i],
                "rank": e.rank[i], "critical": e.critical[i], "negative": e.negative[i],
                "no_effect": e.no_effect[i], "per_example": e.per_example[i]})
        return _json(records)

    def cumulative(self, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[str, Any]:
        """Ablate the round(f * N) least important components (smallest |effect|) together,
        for each fraction f."""
        fractions = _check_fractions(fractions)
        e = self.effects()
        order = [self.names[i] for i in np.argsort(np.abs(e.mean), kind="stable")]
        n_ablated = np.array([math.floor(f * len(order) + 0.5) for f in fractions], np.int64)
        values = self._sweep([order[:k] for k in n_ablated], self.ablation,
                             "cumulative").mean(0)
        metric = values.mean(1)
        recovered = self._recovered(metric)
        return _json({"order": order, "fractions": fractions, "n_ablated": n_ablated,
                      "metric": metric,
                      "sem": values.std(1, ddof=1) / math.sqrt(values.shape[1]),
                      "recovered": recovered,
                      "cliff": find_cliff(fractions, n_ablated, recovered)})

    def minimal_circuit(self, target: float | int = 0.8, *, max_size: int | None = None
                        ) -> dict[str, Any]:
        """Greedy restoration from everything ablated until `target` is recovered (at most
        `max_size` members): each step is one sweep over every candidate addition."""
        target = _check_target(target)
        limit = len(self.names) if max_size is None else _check_int(max_size, "max_size", 1)
        floor = float(self._all_ablated(self.ablation).mean())
        members: list[str] = []
        steps: list[dict[str, Any]] = []
        recovered, metric = float(self._recovered(np.array([floor]))[0]), floor
        while (not recovered >= target) and len(members) < limit and math.isfinite(recovered):
            candidates = [n for n in self.names if n not in members]
            kept = set(members)
            sets = [[n for n in self.names if n not in kept and n != c] for c in candidates]
            values = self._sweep(sets, self.ablation, "circuit", False).mean(0).mean(1)
            scores = self._recovered(values)
            best = int(np.argmax(scores))
            members.append(candidates[best])
            recovered, metric = float(scores[best]), float(values[best])
            steps.append({"added": candidates[best], "recovered": recovered})
        minimality = []
        if members:
            sets = [[n for n in self.names if n not in members or n == m] for m in members]
            without = self._recovered(self._sweep(sets, self.ablation, "minimality", False)
                                      .mean(0).mean(1))
            base = float(self._baseline_values().mean())
            minimality = [{"component": m, "recovered_without": float(w),
                           "hurts": bool(w < recovered - recovered_tolerance(
                               (recovered, w), base, floor)),
                           "below_target": bool(w < target)}
                          for m, w in zip(members, without)]
        return _json({"target": target, "members": members, "size": len(members),
                      "share": len(members) / len(self.names), "faithfulness": recovered,
                      "reached": bool(recovered >= target), "metric_all_ablated": floor,
                      "metric_circuit": metric, "steps": steps, "minimality": minimality,
                      "minimal": all(m["hurts"] for m in minimality)})

    def default_top_k(self) -> int:
        """Components whose pairs `interactions` tests when top_k is not given: every head when
        only heads are studied and there are <= 200, else the 20 of largest |effect| (at most
        N)."""
        n = len(self.names)
        return n if self.kinds == ("heads",) and n <= 200 else min(20, n)

    def _top_k(self, top_k: int | None) -> int:
        n = len(self.names)
        k = self.default_top_k() if top_k is None else _check_int(top_k, "top_k", 2)
        if k > n:
            raise InputError(f"top_k must be <= the {n} components studied, got {k}")
        return k

    def interactions(self, top_k: int | None = None) -> dict[str, Any]:
        """Joint ablation of every pair of the top-k components by importance, |effect| (a
        strongly negative component, e.g. a negative name mover, is tested too), listed in
        study order; the table stays signed."""
        k = self._top_k(top_k)
        e = self.effects()
        chosen = np.sort(np.argsort(-np.abs(e.mean), kind="stable")[:k])
        names = [self.names[i] for i in chosen]
        pairs = [[a, b] for a, b in itertools.combinations(names, 2)]
        joint = self._stats(self._effect(self._sweep(pairs, self.ablation, "interactions")))
        matrix, records = interaction_table(names, e.mean[chosen], e.no_effect[chosen], joint)
        return _json({"components": names, "matrix": matrix, "pairs": records})

    def screen(self, method: str = "ig", steps: int = 16, top_k: int | None = None
               ) -> dict[str, Any]:
        """Score every component by gradients of the mask, verify the top-k exactly; see
        `jaxablate.screening.screen_and_verify` (exact effects come from `single()` when it
        has run, else from a sweep of the top-k alone)."""
        _check_screening(method, steps, top_k, len(self.names))
        have_all = ("single", self.ablation) in self._cache  # the section differs with it
        return self._cached(("screening", method, steps, top_k, have_all), lambda: _json(
            screen_and_verify(self, method, steps, top_k)))

    def compare_ablations(self, types: Sequence[str] = ABLATIONS) -> dict[str, Any]:
        """The single study under each ablation type: effects, Spearman correlations, verdict
        changes; resample effects are means over draws, with their std over draws."""
        types = _check_types(types)
        found = {t: self._single(t) for t in types}
        verdicts = {t: found[t][0].verdicts() for t in types}
        changed = [{"component": name, "verdicts": {t: verdicts[t][i] for t in types}}
                   for i, name in enumerate(self.names)
                   if len({verdicts[t][i] for t in types}) > 1]
        spread = None
        if "resample" in types:
            per_draw = found["resample"][1]
            spread = per_draw.std(0, ddof=1) if len(per_draw) > 1 else np.zeros(len(self.names))
        return _json({
            "types": types, "components": self.names,
            "effects": {t: found[t][0].mean for t in types}, "resample_std": spread,
            "spearman": {f"{a}~{b}": spearman(found[a][0].mean, found[b][0].mean)
                         for a, b in itertools.combinations(types, 2)},
            "verdicts": verdicts, "changed": changed})

    def run(self, *, fractions: Sequence[float] = DEFAULT_FRACTIONS, target: float | int = 0.8,
            top_k: int | None = None, types: Sequence[str] = ABLATIONS,
            steps: Sequence[str] = STEPS, screen_method: str = "ig", screen_steps: int = 16,
            screen_top_k: int | None = None) -> "StudyResult":
        """Every step (or those in `steps`; skipped ones are None) as a `StudyResult`.

        screen_method, screen_steps, screen_top_k: the screening step's `method`, `steps`
        and `top_k` (see `screen`)."""
        bad = [s for s in steps if s not in STEPS]
        if bad:
            raise InputError(f"unknown steps {bad}; known: {STEPS}")
        _check_fractions(fractions)
        _check_target(target)
        _check_types(types)
        self._top_k(top_k)
        _check_screening(screen_method, screen_steps, screen_top_k, len(self.names))
        calls = {"baseline": self.baseline, "single": self.single,
                 "screening": lambda: self.screen(screen_method, screen_steps, screen_top_k),
                 "cumulative": lambda: self.cumulative(fractions),
                 "circuit": lambda: self.minimal_circuit(target),
                 "interactions": lambda: self.interactions(top_k),
                 "ablation_comparison": lambda: self.compare_ablations(types)}
        out: dict[str, Any] = {}
        seconds: dict[str, float] = {}
        for step in ("baseline", "single") + tuple(s for s in STEPS[2:] if s in steps):
            start = time.perf_counter()
            out[step] = calls[step]()
            seconds[step] = time.perf_counter() - start
        seconds["total"] = sum(seconds.values())
        return StudyResult(meta=self.meta(seconds), baseline=out["baseline"],
                           single=out["single"], screening=out.get("screening"),
                           cumulative=out.get("cumulative"),
                           circuit=out.get("circuit"), interactions=out.get("interactions"),
                           ablation_comparison=out.get("ablation_comparison"))

    def meta(self, seconds: dict[str, float] | None = None) -> dict[str, Any]:
        """What was studied, how, with which versions, when."""
        import jaxablate  # at call time: jaxablate/__init__ imports this module

        batch, seq = self.tokens.shape
        task = ({"name": self.task.name, **self.task.info} if self.task is not None
                else {"name": "tokens"})
        cfg = self.model.cfg
        return _json({
            "model": self.model_name or f"gpt2 ({cfg.n_layers} layers x {cfg.n_heads} heads)",
            "model_config": dataclasses.asdict(cfg), "task": task, "ablation": self.ablation,
            "metric": self.metric.name, "higher_is_better": self.metric.higher_is_better,
            "seed": self.seed, "n_prompts": batch, "seq_len": seq,
            "components": [k for k in self.kinds], "n_components": len(self.names),
            "neuron_layers": self.neuron_layers, "threshold": self.threshold,
            "threshold_rule": self.threshold_rule, "n_bootstrap": self.n_bootstrap,
            "ci_level": CI_LEVEL,
            "replacement": {"n_reference": len(self.reference),
                            "mean_per_position": self.reference.shape[1] == seq,
                            "resample_draws": self.resample_draws},
            "versions": {"jaxablate": jaxablate.__version__, "jax": jax.__version__,
                         "numpy": np.__version__},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": seconds or {}})
