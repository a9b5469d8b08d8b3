"""The ablation-study protocol: every step a few `jaxablate.sweep` calls on one model and task.

    study = Study(model, task, ablation="mean")        # or tokens=..., metric=...
    result = study.run()                                # baseline, single, screening, cumulative,
    print(result.table(10))                             # circuit, interactions, comparison;
    study.run(steps=STEPS)                              # + patching (needs a counterfactual)
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
screening   gradient screening of every component (`jaxablate.attribute`, "ig" by default),
            then the top-k verified by exact ablation: Spearman, precision at k, failures
            (definitions in `jaxablate.study.screen`).
cumulative, circuit, interactions, comparison: `jaxablate.study.steps`.
optimal     ablation="optimal" (and the comparison's "optimal"): each component replaced by
            its own optimal constant, fitted once on the reference prompts with a prompt-only
            objective; the result's "optimal" section: Delta_OA vs Delta_mean per component
            (`jaxablate.study.optimal`). The circuit step's circuit_ablation="optimal" also
            ablates the circuit's complement with constants optimised for it jointly.
patching    optional (not in DEFAULT_STEPS): denoising activation patching of the critical
            heads and MLPs position by position, and path patching to the logits, from the
            counterfactual prompts (`jaxablate.study.patching`).

Replacement values (`steps.replacement_values`): mean = `mean_replacement(model, reference)`
(per position when the reference prompts have the evaluated length, else over batch and
positions); resample draws each prompt's values from another prompt of the reference set;
optimal = each component's own optimal constant (`jaxablate.study.optimal`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from jaxablate.ablation.components import parse_component
from jaxablate.ablation.masks import (
    MaskSet,
    concat,
    from_components,
    single_heads,
    single_mlps,
    single_neurons,
)
from jaxablate.ablation.metrics import effect
from jaxablate.engine.schedule import check_chunk_size
from jaxablate.engine.sharding import placement
from jaxablate.engine.sweeping import clean_metric, planned_chunk_size, sweep
from jaxablate.errors import InputError
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.replacement import Replacement
from jaxablate.model.validation import check_int, check_tokens
from jaxablate.optimal.search import OptimalAblation
from jaxablate.store.digest import masks_digest
from jaxablate.store.results import ResultsStore
from jaxablate.study import optimal as optimal_step
from jaxablate.study import patching as patching_step
from jaxablate.study import progress as study_progress
from jaxablate.study import run as study_run
from jaxablate.study import steps as protocol_steps
from jaxablate.study.checks import (  # noqa: F401  (STEPS, DEFAULT_STEPS: re-exported)
    ABLATIONS,
    DEFAULT_FRACTIONS,
    DEFAULT_TYPES,
    DEFAULT_STEPS,
    STEPS,
    check_counterfactual,
    check_optimal,
    check_screening,
    check_study_inputs,
)
from jaxablate.study.result import StudyResult, jsonable
from jaxablate.study.screen import screen_and_verify
from jaxablate.study.stats import Effects, bootstrap_counts, effect_stats
from jaxablate.tasks.base import Task

# ---------------------------------------------------------------------------------------------
# The study.


class Study:
    """An ablation study of one model on one task: see the module docstring for definitions.

    model: a jaxablate GPT2. task: a `jaxablate.tasks.Task` (tokens, metric, reference), or
    tokens int [batch, seq] with `metric`. reference: int [n_ref, seq'] prompts for mean and
    resample values (default: the task's reference set, else the prompts). counterfactual:
    int [batch, seq] prompts paired with the prompts by index, the patching step's source
    set (default: the task's, `Task.counterfactual`). ablation: "zero", "mean", "resample"
    or "optimal". components: kinds studied, among "heads", "mlps", "neurons"
    (neurons of `neuron_layers` only, default all). threshold: the critical effect (default
    10% of |baseline|). progress: True for tqdm bars, or progress(step, done, total) per chunk.
    oa_steps, oa_lr, oa_objective ("kl_to_clean" or "loss"): the fit of "optimal" values
    (Adam steps, rate, what they minimise on the reference; `jaxablate.study.optimal`). The
    comparison's default types are zero, mean, resample: types=ABLATIONS adds optimal (as the
    command line does; its fit costs ~oa_steps x 3 passes of the reference per component).
    Results of each step are cached; `run()` returns all of them as a `StudyResult`.
    store: a folder (or `jaxablate.store.ResultsStore`) where every sweep is committed chunk
    by chunk: a study run again with the same inputs resumes from it, one with other inputs
    is refused (`StoreMismatchError`) unless `overwrite=True` empties it first.
    chunk_size: masks per compiled call per device (default: planned from the
    single-component set). devices / mesh: the devices every sweep and the screening are
    split over (default every local device; see `jaxablate.engine.sharding`).

    Example:
        >>> study = Study(model, tasks.induction(64, vocab=model.cfg.d_vocab), ablation="mean")
        >>> study.single()[0]["effect"], study.minimal_circuit(0.8)["members"]
        >>> Study(model, task, ablation="optimal").optimal_record().shift_share()  # [N]
    """

    def __init__(self, model: GPT2, task: Task | None = None, *, tokens: Any = None,
                 metric: Any = None, reference: Any = None, counterfactual: Any = None,
                 ablation: str = "mean",
                 components: str | Sequence[str] = ("heads",),
                 neuron_layers: Sequence[int] | None = None, threshold: float | int | None = None,
                 seed: int = 0, n_bootstrap: int = 1000, resample_draws: int = 5,
                 progress: Any = None, oa_steps: int = 100, oa_lr: float | int = 0.01,
                 oa_objective: str = "kl_to_clean",
                 model_name: str | None = None, store: Any = None, overwrite: bool = False,
                 chunk_size: int | None = None, devices: Any = None, mesh: Any = None):
        metric, kinds, neuron_layers = check_study_inputs(
            model, task, tokens, metric, progress, ablation, components, neuron_layers,
            threshold)
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
        self.counterfactual = check_counterfactual(
            task.counterfactual if counterfactual is None and task is not None
            else counterfactual, self.tokens, model.cfg)
        self.model, self.task, self.metric, self.ablation = model, task, metric, ablation
        self.kinds, self.neuron_layers = kinds, neuron_layers
        self.seed = check_int(seed, "seed", 0)
        self.n_bootstrap = check_int(n_bootstrap, "n_bootstrap", 1)
        self.resample_draws = check_int(resample_draws, "resample_draws", 1)
        self.oa_steps, self.oa_lr, self.oa_objective = check_optimal(oa_steps, oa_lr,
                                                                     oa_objective)
        self.progress, self.model_name = study_progress.progress_callback(progress), model_name
        self._threshold = None if threshold is None else float(threshold)
        cfg = model.cfg
        parts = {"heads": lambda: single_heads(cfg),
                 "mlps": lambda: single_mlps(cfg),
                 "neurons": lambda: single_neurons(cfg, layers=neuron_layers)}
        self.single_masks: MaskSet = concat([parts[k]() for k in kinds])
        self.names: list[str] = list(self.single_masks.names)
        self._parsed = {name: parse_component(name) for name in self.names}
        self._counts = bootstrap_counts(batch, self.n_bootstrap, self.seed)
        self._draw_counts: np.ndarray | None = None  # resample draws' bootstrap weights
        self._cache: dict[Any, Any] = {}
        self._chunk: int | None = chunk_size
        self.pairs_with_singles, self.pair_values = False, {}  # see steps.single_values
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

    def replacements(self, ablation: str) -> list[Replacement]:
        """One replacement (zero, mean, optimal) or `resample_draws` of them (resample), built
        once (`steps.replacement_values`)."""
        return self._cached(("replacement", ablation),
                            lambda: protocol_steps.replacement_values(self, ablation))

    def optimal_fit(self) -> tuple[Replacement, OptimalAblation, float]:
        """The optimal constants of every single component (per-mask values [N, ...]), the
        fit's record and the seconds it took, fitted once (`jaxablate.study.optimal.fit`)."""
        return self._cached("optimal_fit", lambda: optimal_step.fit(
            self, self.single_masks, "optimal fit"))

    def has_optimal_fit(self) -> bool:
        """Whether the single components' optimal constants are fitted already."""
        return "optimal_fit" in self._cache

    def optimal_record(self) -> OptimalAblation:
        """The fit's `OptimalAblation` record: Delta_OA, Delta_mean, curves (reference
        prompts, objective units), fitting it first if needed."""
        return self.optimal_fit()[1]

    def sweep_sets(self, sets: MaskSet | list[list[str]], ablation: str, step: str,
                   reuse_prefix: bool = True, *, tokens: Any = None,
                   replacement: Replacement | None = None) -> Float[np.ndarray, "draws n batch"]:
        """The metric under each mask, per draw of the replacement and per example.
        tokens, replacement: other prompts of the same shape and one replacement for them
        (the patching step's counterfactual run and clean values); `ablation` names it.

        Lists of component names are ablated together (an empty list is the clean model).
        Sets smaller than the study's chunk size are padded with clean masks to a power of
        two, so the study compiles a handful of programs instead of one per set size.
        Masks that ablate nearly everything (circuit steps) start at layer 0 anyway: they run
        with `reuse_prefix=False`, one program for every step, not the odd parent trajectory.
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
            mask_set = from_components(self.model.cfg, padded)
        drawn = self.replacements(ablation) if replacement is None else [replacement]
        # Draws (resample) run in one sweep: a chunk of c masks does the work of c * draws.
        chunk = min(max(1, self._chunk // len(drawn)) * self._n_devices, len(mask_set))
        report = study_progress.sweep_reporter(self, step, ablation)
        tokens = self.tokens if tokens is None else tokens
        repl = drawn if len(drawn) > 1 else drawn[0]
        if self.store is None:
            out = sweep(self.model, tokens, mask_set, repl, self.metric, chunk,
                        progress=report, reuse_prefix=reuse_prefix, devices=self.devices,
                        mesh=self.mesh)
        else:  # one stored sweep, keyed by what it computes
            tag = ("d0" if len(drawn) == 1 else f"draws{len(drawn)}") + "-" + masks_digest(
                mask_set)[:12]
            out = self.store.sweep(self.model, tokens, mask_set, repl, self.metric, chunk,
                                   key=f"{step}-{ablation}-{tag}", seed=self.seed,
                                   ablation=optimal_step.store_ablation(self, ablation),
                                   progress=report, reuse_prefix=reuse_prefix,
                                   devices=self.devices, mesh=self.mesh)
        return (out if len(drawn) > 1 else out[None]).astype(np.float64)[:, :n]

    def effect_of(self, ablated: Float[np.ndarray, "*draws n batch"]
                ) -> Float[np.ndarray, "*draws n batch"]:
        """Signed effect per example: positive = the ablated components helped."""
        return effect(self.metric, ablated, self.baseline_values())

    def stats_of(self, effects: Float[np.ndarray, "draws n batch"]) -> Effects:
        """Effect statistics of per-draw, per-example effects; with several draws (resample)
        the CI and s.e. include the variance between draws (`stats.effect_stats`)."""
        draws = len(effects)
        if draws > 1 and self._draw_counts is None:
            self._draw_counts = bootstrap_counts(draws, self.n_bootstrap, self.seed + 1)
        return effect_stats(effects, self._counts, self.threshold,
                            self._draw_counts if draws > 1 else None)

    def recovered(self, values: Float[np.ndarray, " n"]) -> Float[np.ndarray, " n"]:
        """(m - m_all) / (baseline - m_all): 1 = clean, 0 = all ablated; NaN if they agree."""
        base = float(self.baseline_values().mean())
        floor = float(self.all_ablated(self.ablation).mean())
        return (values - floor) / (base - floor) if base != floor else np.full_like(values, np.nan)

    def baseline_values(self) -> Float[np.ndarray, " batch"]:
        return self._cached("baseline", lambda: clean_metric(
            self.model, self.tokens, self.metric).astype(np.float64))

    def all_ablated(self, ablation: str) -> Float[np.ndarray, " batch"]:
        """The metric per example with every studied component ablated (mean over draws)."""
        return self._cached(("all", ablation), lambda: self.sweep_sets(
            [self.names], ablation, "all_ablated", reuse_prefix=False).mean(0)[0])

    @property
    def threshold(self) -> float:
        """The critical effect: given, or 10% of |baseline| (see the module docstring)."""
        return protocol_steps.threshold(self, self._threshold)[0]

    @property
    def threshold_rule(self) -> str:
        return protocol_steps.threshold(self, self._threshold)[1]

    def has_single(self, ablation: str) -> bool:
        """Whether the single-component effects under `ablation` are computed already."""
        return ("single", ablation) in self._cache

    def effects(self, ablation: str | None = None) -> Effects:
        """Single-component effects under `ablation` (default the study's) as arrays."""
        return self.single_effects(ablation or self.ablation)[0]

    def single_effects(self, ablation: str) -> tuple[Effects, Float[np.ndarray, "draws n"]]:
        """Effects (mean over draws per example) and the mean effect of each draw."""
        def compute() -> tuple[Effects, np.ndarray]:
            per_draw = self.effect_of(protocol_steps.single_values(self, ablation))
            return self.stats_of(per_draw), per_draw.mean(2)
        return self._cached(("single", ablation), compute)

    # -- the protocol -------------------------------------------------------------------------

    def baseline(self) -> dict[str, Any]:
        """The metric without ablation: {"mean", "sem", "per_example"}."""
        values = self.baseline_values()
        return jsonable({"mean": values.mean(),
                         "sem": values.std(ddof=1) / math.sqrt(len(values)),
                         "per_example": values})

    def single(self) -> list[dict[str, Any]]:
        """One record per component (study order): effect, sem, CI, rank, flags, per example
        (`steps.single_records`)."""
        return protocol_steps.single_records(self)

    def cumulative(self, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[str, Any]:
        """Ablate the round(f * N) least important components (smallest |effect|) together,
        for each fraction f (`steps.cumulative`)."""
        return protocol_steps.cumulative(self, fractions)

    def minimal_circuit(self, target: float | int = 0.8, *, max_size: int | None = None,
                        circuit_ablation: str = "same") -> dict[str, Any]:
        """Greedy restoration from everything ablated until `target` is recovered (at most
        `max_size` members): each step is one sweep over every candidate addition; with
        circuit_ablation="optimal", also the circuit's recovered fraction with its complement
        ablated jointly at constants optimised for it (`steps.minimal_circuit`)."""
        return protocol_steps.minimal_circuit(self, target, max_size, circuit_ablation)

    def default_interaction_top_k(self) -> int:
        """Components whose pairs `interactions` tests when top_k is not given: every head when
        only heads are studied and there are <= 200, else the 20 of largest |effect| (at most
        N)."""
        n = len(self.names)
        return n if self.kinds == ("heads",) and n <= 200 else min(20, n)

    def interaction_top_k(self, top_k: int | None) -> int:
        n = len(self.names)
        k = self.default_interaction_top_k() if top_k is None else check_int(top_k, "top_k", 2)
        if k > n:
            raise InputError(f"top_k must be <= the {n} components studied, got {k}")
        return k

    def interactions(self, top_k: int | None = None) -> dict[str, Any]:
        """Joint ablation of every pair of the top-k components by |effect|, listed in study
        order; the table stays signed (`steps.interactions`)."""
        return protocol_steps.interactions(self, top_k)

    def screen(self, method: str = "ig", steps: int = 16, top_k: int | None = None
               ) -> dict[str, Any]:
        """Score every component by gradients of the mask, verify the top-k exactly; see
        `jaxablate.study.screen.screen_and_verify` (exact effects come from `single()` when it
        has run, else from a sweep of the top-k alone)."""
        check_screening(method, steps, top_k, len(self.names))
        have_all = self.has_single(self.ablation)  # the section differs with it
        return self._cached(("screening", method, steps, top_k, have_all), lambda: jsonable(
            screen_and_verify(self, method, steps, top_k)))

    def compare_ablations(self, types: Sequence[str] = DEFAULT_TYPES) -> dict[str, Any]:
        """The single study under each ablation type (of ABLATIONS; default zero, mean,
        resample): effects, Spearman correlations, verdict changes (`steps.compare_ablations`)."""
        return protocol_steps.compare_ablations(self, types)

    def patching(self) -> dict[str, Any]:
        """Denoising activation patching of the critical heads and MLPs by position, and
        path patching to the logits (`jaxablate.study.patching`; needs a counterfactual)."""
        patching_step.check_patching(self)
        return self._cached("patching", lambda: patching_step.patching(self))

    def run(self, *, fractions: Sequence[float] = DEFAULT_FRACTIONS, target: float | int = 0.8,
            top_k: int | None = None, types: Sequence[str] = DEFAULT_TYPES,
            steps: Sequence[str] = DEFAULT_STEPS, screen_method: str = "ig", screen_steps: int = 16,
            screen_top_k: int | None = None, circuit_ablation: str = "same") -> "StudyResult":
        """The default steps (or those in `steps`, of STEPS: "patching" is asked for by
        name; skipped ones are None) as a `StudyResult`, with the "optimal" section when
        optimal ablation ran (the study's ablation or one of `types`).

        screen_method, screen_steps, screen_top_k: the screening step's `method`, `steps`
        and `top_k` (see `screen`); circuit_ablation: the circuit step's (see
        `minimal_circuit`)."""
        return study_run.run_steps(
            self, fractions=fractions, target=target, top_k=top_k, types=types, steps=steps,
            screen_method=screen_method, screen_steps=screen_steps,
            screen_top_k=screen_top_k, circuit_ablation=circuit_ablation)

    def meta(self, seconds: dict[str, float] | None = None) -> dict[str, Any]:
        """What was studied, how, with which versions, when (`steps.study_meta`)."""
        return protocol_steps.study_meta(self, seconds)
