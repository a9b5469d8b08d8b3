"""The protocol's steps as the sweeps they will run, priced before anything runs: one method
per study step, each mirroring what that step asks of the study (`jaxablate.study.steps`,
`screen`, `optimal`, `patching`, `Study.sweep_sets`: the same mask sets, padded the same way,
the same chunk size and draws, the same progress labels), priced on one `cost.Ledger` so
that a program compiled by one step is not charged again to the next. `estimate.plan_study`
runs them in protocol order.

    planner = Planner(study, speed, chunk_size=None, steps=DEFAULT_STEPS, top_k=None)
    planner.single()                  # StepPlan: the single sweep(s), values, seconds
    planner.circuit("same")           # its estimate (assumed size) and upper bound

Assumed where only a run can tell (the step's `bound` and `note` say so): a circuit of
`assumed_size(N)` = ceil(sqrt(N)) members (upper bound: N, i.e. N (N + 1) / 2 masks), as
many critical heads and MLPs for patching (upper bound: all), the least important
components of a cumulative set reaching layer 0, a top-k spread evenly over the layers.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxablate.ablation.components import parse_component
from jaxablate.ablation.masks import from_components
from jaxablate.engine.sweeping import planned_chunk_size
from jaxablate.study.checks import check_fractions, check_types
from jaxablate.study.cost import Ledger, Part
from jaxablate.study.speed import Speed

if TYPE_CHECKING:
    from jaxablate.study.protocol import Study


def assumed_size(n: int) -> int:
    """Members the estimate assumes a minimal circuit of n components has (and critical
    components the patching step has): ceil(sqrt(n)), e.g. 12 of GPT-2 small's 144 heads.

    Example:
        >>> assumed_size(144), assumed_size(4)
        (12, 2)
    """
    return min(n, max(1, math.ceil(math.sqrt(n))))


@dataclasses.dataclass
class PlannedSweep:
    """One sweep: label (the study's progress callback names it), ablation, n_masks (as
    swept, padding included: its progress total), draws (replacements vmapped per mask),
    seconds (compile_s of them compiling its new programs)."""

    label: str
    ablation: str
    n_masks: int
    draws: int
    seconds: float
    compile_s: float


@dataclasses.dataclass
class StepPlan:
    """One study step: sweeps, other work [(what, seconds)] (values, fits, gradients),
    seconds in all (compile_s of it compiling), bound ("exact", "estimate" or "upper
    bound"), upper_s (the seconds at the upper bound, None when exact), note (what was
    assumed), progress ({label: planned total}, at the upper bound where there is one),
    bounded (the labels whose total is an upper bound)."""

    name: str
    sweeps: list[PlannedSweep]
    other: list[tuple[str, float]]
    seconds: float
    compile_s: float
    bound: str = "exact"
    upper_s: float | None = None
    note: str = ""
    progress: dict[str, int] = dataclasses.field(default_factory=dict)
    bounded: tuple[str, ...] = ()


class Planner:
    """Prices the steps of one study run in protocol order (see the module docstring).

    chunk_size: the study's (None: the one it plans from its single-component set);
    steps, top_k: as `Study.run`'s (the single step shares its sweep with every pair when
    the interactions step tests all of them).
    """

    def __init__(self, study: Study, speed: Speed, chunk_size: int | None,
                 steps: tuple[str, ...], top_k: int | None):
        self.study, self.cfg, self.top_k = study, study.model.cfg, top_k
        self.ledger = Ledger(study.model, speed, study.tokens, study.metric,
                             study.devices, study.mesh)
        self.chunk = chunk_size or planned_chunk_size(study.model, study.tokens,
                                                      study.single_masks, study.metric)
        self.names = list(study.names)
        self.n = len(self.names)
        self.values: set[str] = {"zero"}  # replacement types built (zero costs nothing)
        self.have_single: set[str] = set()
        self.all_ablated = False
        # As `run_steps` decides it (`Study.pairs_with_singles`): singles and every pair in
        # one sweep.
        self.merged = ("interactions" in steps and not study.has_single(study.ablation)
                       and study.interaction_top_k(top_k) == self.n)

    # -- pricing ------------------------------------------------------------------------------

    def _padded(self, n: int) -> int:
        """Masks `Study.sweep_sets` sweeps for n lists of components: clean masks pad a
        set smaller than the chunk to a power of two."""
        return n if n >= self.chunk else min(self.chunk, 1 << (n - 1).bit_length())

    def _lists(self, lists: list[list[str]]) -> Any:
        """The MaskSet `Study.sweep_sets` sweeps for these lists of components."""
        return from_components(self.cfg, lists + [[]] * (self._padded(len(lists)) - len(lists)))

    def _sweep(self, into: list, label: str, ablation: str, masks: Any = None,
               sets: int | None = None, reuse_prefix: bool = True,
               ledger: Ledger | None = None) -> Part:
        """A sweep of a MaskSet, or of `sets` lists of components priced by their count
        (each from layer 0, padded as `sweep_sets` pads lists)."""
        ledger = ledger or self.ledger
        draws = self.study.resample_draws if ablation == "resample" else 1
        n = len(masks) if masks is not None else self._padded(sets)
        chunk = min(max(1, self.chunk // draws) * ledger.place.n_devices, n)
        if masks is None:  # the cost of a set from layer 0 does not depend on its members
            part = ledger.sweep_from_layer0(n, chunk, self.study.single_masks.kinds,
                                            draws=draws, reuse_prefix=reuse_prefix,
                                            ablation=ablation)
        else:
            part = ledger.sweep(masks, chunk, draws=draws, reuse_prefix=reuse_prefix,
                                ablation=ablation, per_mask=ablation in ("optimal", "joint"))
        into.append(PlannedSweep(label, ablation, n, draws, part.seconds, part.compile_s))
        return part

    def _values(self, ablation: str, other: list) -> Part:
        """The replacement values of `ablation`, built once (optimal: the fit)."""
        if ablation in self.values or ablation == "patch":
            return Part()
        self.values.add(ablation)
        study = self.study
        ref = tuple(int(v) for v in study.reference.shape)
        if ablation == "optimal":
            part = self.ledger.optimal_fit(study.single_masks, ref, study.oa_steps)
            other.append((f"optimal fit ({study.oa_steps} Adam steps x {self.n})",
                          part.seconds))
            return part
        draws = study.resample_draws if ablation == "resample" else 1
        part = self.ledger.forwards(ref, draws, program=f"{ablation} values")
        if draws > 1:
            part += self.ledger.compile_once("draws", (draws,))
        other.append((f"{ablation} values ({draws} forward{'s' * (draws > 1)})",
                      part.seconds))
        return part

    def _all_ablated(self, sweeps: list, ledger: Ledger | None = None) -> Part:
        """Every studied component ablated together (`Study.all_ablated`), once."""
        if self.all_ablated:
            return Part()
        self.all_ablated = True
        return self._sweep(sweeps, "all_ablated", self.study.ablation, sets=1,
                           reuse_prefix=False, ledger=ledger)

    def _step(self, name: str, sweeps: list, other: list, part: Part, **kwargs: Any
              ) -> StepPlan:
        progress: dict[str, int] = {}
        for s in sweeps:
            progress[s.label] = progress.get(s.label, 0) + s.n_masks
        for what, _ in other:
            for label in ("optimal fit", "circuit optimal fit"):
                if what.startswith(label):
                    progress[label] = self.study.oa_steps + 1
        progress.update(kwargs.pop("progress", {}))
        return StepPlan(name, sweeps, other, part.seconds, part.compile_s, progress=progress,
                        **kwargs)

    # -- the steps ----------------------------------------------------------------------------

    def baseline(self) -> StepPlan:
        return self._step("baseline", [], [], self.ledger.clean_pass())

    def single(self) -> StepPlan:
        sweeps: list = []
        other: list = []
        ablation = self.study.ablation
        part = self._values(ablation, other)
        if self.merged:
            sets = [[c] for c in self.names] + [list(p) for p in
                                                itertools.combinations(self.names, 2)]
            part += self._sweep(sweeps, "single_interactions", ablation, self._lists(sets))
        else:
            part += self._sweep(sweeps, "single", ablation, self.study.single_masks)
        self.have_single.add(ablation)
        if self.study.metric.reads_clean:  # a baseline of 0: the threshold needs it
            part += self._all_ablated(sweeps)
        return self._step("single", sweeps, other, part)

    def screening(self, method: str, steps: int) -> StepPlan:
        study = self.study
        draws = study.resample_draws if study.ablation == "resample" else 1
        part = self.ledger.attribution(method, steps, study.kinds, draws)
        label = f"{method} attribution ({steps} steps)" if method == "ig" else "gradient"
        return self._step("screening", [], [(label, part.seconds)], part)

    def cumulative(self, fractions: Any) -> StepPlan:
        sweeps: list = []
        part = self._sweep(sweeps, "cumulative", self.study.ablation,
                           sets=len(check_fractions(fractions)))
        part += self._all_ablated(sweeps)
        return self._step("cumulative", sweeps, [], part, bound="estimate",
                          note="each set priced from layer 0")

    def circuit(self, circuit_ablation: str) -> StepPlan:
        # The upper bound first, on a copy: its programs stay uncompiled for later steps.
        upper = copy.copy(self.ledger)
        upper.compiled = set(self.ledger.compiled)
        bound: list = []
        was = self.all_ablated
        upper_part = self._greedy(bound, [], self.n, circuit_ablation, upper)
        self.all_ablated = was
        sweeps: list = []
        other: list = []
        k = assumed_size(self.n)
        part = self._greedy(sweeps, other, k, circuit_ablation, self.ledger)
        progress = {s.label: 0 for s in bound}
        for s in bound:
            progress[s.label] += s.n_masks
        return self._step(
            "circuit", sweeps, other, part, bound="estimate", upper_s=upper_part.seconds,
            progress=progress, bounded=("circuit", "minimality"),
            note=f"assumes {k} members of {self.n}; at most {self.n} greedy steps")

    def _greedy(self, sweeps: list, other: list, k: int, circuit_ablation: str,
                ledger: Ledger) -> Part:
        """The circuit step with k members: everything ablated (when not yet), k greedy
        sweeps of N, N - 1, ... candidates, the minimality sweep, the optimal complement."""
        ablation = self.study.ablation
        part = self._all_ablated(sweeps, ledger)
        for i in range(k):
            part += self._sweep(sweeps, "circuit", ablation, sets=self.n - i,
                                reuse_prefix=False, ledger=ledger)
        part += self._sweep(sweeps, "minimality", ablation, sets=k, reuse_prefix=False,
                            ledger=ledger)
        if circuit_ablation == "optimal" and k < self.n:
            ref = tuple(int(v) for v in self.study.reference.shape)
            complement = from_components(self.cfg, [self.names[k:]])
            fit = ledger.optimal_fit(complement, ref, self.study.oa_steps)
            other.append((f"circuit optimal fit ({self.study.oa_steps} Adam steps x 1)",
                          fit.seconds))
            part += fit + self._sweep(sweeps, "circuit_optimal", "joint", complement,
                                      reuse_prefix=False, ledger=ledger)
        return part

    def interactions(self) -> StepPlan:
        if self.merged:
            return self._step("interactions", [], [], Part(),
                              note="every pair runs in the single step's sweep")
        k = self.study.interaction_top_k(self.top_k)
        chosen = [self.names[i] for i in np.linspace(0, self.n - 1, k).round().astype(int)]
        pairs = [list(p) for p in itertools.combinations(chosen, 2)]
        sweeps: list = []
        part = self._sweep(sweeps, "interactions", self.study.ablation, self._lists(pairs))
        exact = k == self.n
        return self._step("interactions", sweeps, [], part,
                          bound="exact" if exact else "estimate",
                          note="" if exact else f"the top {k} spread over the layers")

    def comparison(self, types: Any) -> StepPlan:
        sweeps: list = []
        other: list = []
        part = Part()
        for ablation in check_types(types):
            if ablation in self.have_single:
                continue
            part += self._values(ablation, other)
            part += self._sweep(sweeps, "comparison", ablation, self.study.single_masks)
            self.have_single.add(ablation)
        return self._step("ablation_comparison", sweeps, other, part)

    def patching(self) -> StepPlan:
        study = self.study
        seq = study.tokens.shape[1]
        candidates = [c for c in self.names if parse_component(c).kind in ("heads", "mlps")]
        k = assumed_size(len(candidates)) if candidates else 0
        sweeps: list = []
        other: list = []
        part = self.ledger.clean_pass()  # the counterfactual's metric
        if not k:
            return self._step("patching", [], [], part, note="no heads or MLPs to patch")

        def price(names: list[str], into: list, ledger: Ledger) -> tuple[Part, Part]:
            groups = [[n] for n in names] + [[f"{n}@{p}"] for n in names for p in range(seq)]
            masks = from_components(self.cfg, groups, seq_len=seq)
            paths = ledger.forwards(self.ledger.shape, 3 * len(names), program="path patching")
            return self._sweep(into, "patching", "patch", masks, ledger=ledger), paths

        upper = copy.copy(self.ledger)
        upper.compiled = set(self.ledger.compiled)
        everything: list = []
        upper_part = part + sum(price(candidates, everything, upper), Part())
        spread = [candidates[i] for i in np.linspace(0, len(candidates) - 1, k).round()
                  .astype(int)]
        activation, paths = price(spread, sweeps, self.ledger)
        other.append((f"path patching ({k} senders to the logits)", paths.seconds))
        return self._step("patching", sweeps, other, part + activation + paths,
                          bound="estimate", upper_s=upper_part.seconds,
                          progress={"patching": everything[0].n_masks},
                          bounded=("patching",),
                          note=f"assumes {k} critical heads and MLPs of {len(candidates)}")
