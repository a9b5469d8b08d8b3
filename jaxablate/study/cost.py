"""Seconds of the work a study asks for, from the engine's own cost model: a sweep's plan
(`engine.plan.plan_sweep`: start layers, row starts, parents, the chunk size) priced by
`engine.schedule.layer_costs` / `chunk_cost` in row-layers (one token through one full
layer), turned into seconds by the machine's measured matmul rate (`study.speed`), plus the
compilation of every program not compiled yet.

    ledger = Ledger(model, speed, tokens, metric)
    part = ledger.sweep(mask_set, chunk, draws=5, ablation="resample")
    part.compute_s, part.compile_s, part.programs               # seconds, seconds, new ones

One `Ledger` prices a whole study in order: a program (one shape of one compiled function:
a sweep chunk of c masks resumed over r rows, a trajectory block, a clean pass, a gradient)
is charged its compilation once, the first time a step needs it, as the process's jit cache
does. Work the engine does not count in row-layers (the gradients of screening and optimal
ablation) is priced in forward passes of the same layers: a backward pass to the masks or
the replacement values costs about one forward (`BACKWARD_FACTOR`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxablate.ablation.masks import MaskSet
from jaxablate.engine.plan import plan_sweep
from jaxablate.engine.schedule import (
    CALL_OVERHEAD_ROW_LAYERS,
    MIN_EFFICIENT_ROWS,
    budget_bytes,
    bytes_per_example,
    chunk_cost,
    layer_costs,
)
from jaxablate.engine.sharding import placement
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.mask import REATTEND_BREAKING
from jaxablate.study.speed import Speed

# Achieved rate over the matmul probe's, by kind of work (what is not matmul, attention,
# LayerNorm, GELU, gathers, takes time the row-layer count leaves out). Measured on 2 CPU
# cores, 2026-12-01, on a GPT-2-small-sized random model: 144 single heads at 0.9-1.0 of the
# probe's rate (8 induction prompts x 32 tokens, loaded host; benchmarks/bench_estimate.py)
# and 0.95 idle (8 x 16, logit difference, README's bench_attribution), integrated
# gradients at 0.65-1.1, optimal ablation's fit at 0.45 (95 GFLOP/s against the idle
# machine's 210 in bench_optimal); on the bundled d_model-64 model the fit ran at 0.36-0.74,
# integrated gradients at 0.8: no dependence on the model's width stood out of the noise.
SWEEP_EFFICIENCY = 0.9
GRADIENT_EFFICIENCY = 0.8  # integrated gradients (screening)
FIT_EFFICIENCY = 0.5  # optimal ablation's damage and gradient
# A backward pass to the keep-weights or replacement values (not to the weights) costs
# about one forward: one transposed matmul per weight.
BACKWARD_FACTOR = 1.0

# Compilation, seconds per program on an idle host (`Speed.host` = 1; a loaded host scales
# them). Measured on 2 CPU cores (jax 0.10.2, XLA CPU, 2026-12-01) from the compile events
# (`jax.monitoring`: tracing, lowering, XLA) of whole studies on a loaded host, divided by
# its load then (`speed.host_load`, 4.6 in the bundled run): one sweep chunk program
# (`_run_chunk`) took 6.0 s for the bundled 2-layer d_model-64 model and 5.2 s for a
# 12-layer d_model-768 GPT-2-small-sized one, a clean pass 3.4 and 3.8 s, integrated
# gradients 14.8 and 10.6 s.
# The layers are a loop over stacked weights, so depth and width added nothing measurable:
# a program's compile time does not depend on the model's size here. Checked against the
# idle-machine benchmarks in the README (GPT-2-small dims, load about 1): 144 single heads
# compiled in 1.9 s (priced 2.6 s), all head pairs in 5.3 s (4.8 s), the optimal fit in
# 8.4 s (6.8 s).
COMPILE_S = {
    "clean": 0.8,        # the clean pass: every layer, caching streams (once per prompt set)
    "chunk": 1.45,       # a sweep chunk resumed at a traced layer (and the small ops with it)
    "trajectory": 1.05,  # the streams of a block of shared parents
    "forward": 0.8,      # run_with_cache (mean and resample values), path patching
    "gradient": 3.2,     # a chunk's integrated gradients (a scan of forward + backward)
    "fit": 6.0,          # optimal ablation: its clean pass, damage and gradient, damage, Adam
    "draws": 1.0,        # resample: the keys, the permutations, the draws stacked
}
PER_SWEEP_S = 0.05  # host work of one sweep (plan, masks, the store's files), at host 1
PER_CALL_S = 0.004  # dispatch and host transfer of one compiled call, at host 1


@dataclasses.dataclass
class Part:
    """The price of one piece of work: compute_s (running it), compile_s (its programs not
    compiled before), programs (their names), calls (compiled calls it makes)."""

    compute_s: float = 0.0
    compile_s: float = 0.0
    programs: list[str] = dataclasses.field(default_factory=list)
    calls: int = 0

    @property
    def seconds(self) -> float:
        return self.compute_s + self.compile_s

    def __add__(self, other: Part) -> Part:
        return Part(self.compute_s + other.compute_s, self.compile_s + other.compile_s,
                    self.programs + other.programs, self.calls + other.calls)


class Ledger:
    """Prices work on `model` at `speed`, charging each program's compilation once.

    tokens: int [batch, seq], the prompts every sweep and the screening run on; metric:
    their metric (the positions and token ids it reads price the last layer).

    Example:
        >>> ledger = Ledger(model, measure_speed(model.cfg), tokens, metric)
        >>> ledger.sweep(single_heads(cfg), 12).seconds            # e.g. 9.3
    """

    def __init__(self, model: GPT2, speed: Speed, tokens: np.ndarray, metric: Any,
                 devices: Any = None, mesh: Any = None):
        self.model, self.cfg, self.speed, self.metric = model, model.cfg, speed, metric
        self.shape = tuple(int(v) for v in np.shape(tokens))
        self.n_read = int(metric.prepare(np.asarray(tokens), model.cfg)[0].shape[1])
        self.n_columns = len(metric.columns) if metric.columns else None
        self.compiled: set[tuple] = set()
        self.place = placement(devices, mesh)
        self.row_layer_flops = 2.0 * (4 * self.cfg.d_model ** 2
                                      + 2 * self.cfg.d_model * self.cfg.d_mlp)

    def _work(self, starts: np.ndarray, chunk: int, costs: np.ndarray, rows_per_mask: int
              ) -> tuple[float, int]:
        """(row-layers, compiled calls) of masks resuming at sorted `starts` in chunks:
        `chunk_cost` without the two terms it adds to steer the choice of chunk size, the
        per-call overhead in row-layers (priced in seconds here, `PER_CALL_S`) and the
        charge of a small chunk as if it had MIN_EFFICIENT_ROWS rows (a 256-row matmul ran
        at the full rate here: charged the rows it has)."""
        starts = np.asarray(starts, np.int64)
        if not len(starts):
            return 0.0, 0
        calls = len(starts[::chunk])
        work = chunk_cost(starts, chunk, costs, rows_per_mask) - CALL_OVERHEAD_ROW_LAYERS * calls
        rows = chunk * rows_per_mask
        return work * min(1.0, rows / MIN_EFFICIENT_ROWS), calls

    def _seconds(self, row_layers: float | int, efficiency: float) -> float:
        return row_layers * self.row_layer_flops / (self.speed.flops * efficiency)

    def compile_once(self, kind: str, key: tuple) -> Part:
        """The compilation of the program (`kind`, `key`) (a kind of COMPILE_S), charged
        the first time only."""
        return self._compile(kind, key)

    def _compile(self, kind: str, key: tuple) -> Part:
        if (kind,) + key in self.compiled:
            return Part()
        self.compiled.add((kind,) + key)
        return Part(compile_s=COMPILE_S[kind] * self.speed.host, programs=[kind])

    def overhead(self, calls: int, sweeps: int = 0) -> Part:
        """Host time of `calls` compiled calls and `sweeps` sweeps."""
        return Part(compute_s=self.speed.host * (calls * PER_CALL_S + sweeps * PER_SWEEP_S),
                    calls=calls)

    def clean_pass(self, shape: tuple[int, int] | None = None, n_read: int | None = None
                   ) -> Part:
        """The clean pass over prompts of `shape` = (batch, seq) (default the prompts')
        reading `n_read` positions (default the metric's): the cache and the logits."""
        shape = self.shape if shape is None else shape
        n_read = self.n_read if n_read is None else n_read
        batch, seq = shape
        costs = layer_costs(self.cfg, seq, n_read)
        work = batch * seq * (costs[:-1].sum() + 1.0)  # every row of every layer, cached
        return (self._compile("clean", (shape, n_read))
                + Part(compute_s=self._seconds(work, SWEEP_EFFICIENCY)) + self.overhead(1))

    def forwards(self, shape: tuple[int, int], times: int = 1, program: str = "values"
                 ) -> Part:
        """`times` full forward passes over prompts of `shape` = (batch, seq) by one
        `program` (default "values": run_with_cache, the values of mean and resample
        ablation)."""
        batch, seq = shape
        work = times * batch * seq * self.cfg.n_layers
        return (self._compile("forward", (program, shape))
                + Part(compute_s=self._seconds(work, SWEEP_EFFICIENCY)) + self.overhead(times))

    def sweep(self, mask_set: MaskSet, chunk: int, *, draws: int = 1,
              reuse_prefix: bool = True, ablation: str = "mean", per_mask: bool = False
              ) -> Part:
        """A `sweep` of `mask_set` over the prompts with an explicit chunk size (as the
        study passes it), under `draws` replacements vmapped together; per_mask: per-mask
        values (optimal ablation: no shared parents)."""
        shape, n_read, n_columns = self.shape, self.n_read, self.n_columns
        batch, seq = shape
        plan = plan_sweep(self.model, mask_set, batch * draws, seq, n_read, self.metric,
                          chunk, None, reuse_prefix, share_parents=not per_mask)
        n = len(mask_set)
        chunk = min(self.place.round_up(plan.chunk_size), self.place.round_up(n))
        costs = layer_costs(self.cfg, seq, n_read, n_columns)
        attended = reuse_prefix and not set(REATTEND_BREAKING) & set(mask_set.kinds)
        sig = (ablation, draws, attended, mask_set.kinds, shape)
        part = self.clean_pass()
        work, calls = 0.0, 0
        own = plan.own
        for r in np.unique(plan.row_start[own]):
            group = own[plan.row_start[own] == r]
            w, c = self._work(plan.first[group], chunk, costs, batch * draws * (seq - int(r)))
            work, calls = work + w, calls + c
            part += self._compile("chunk", sig + (chunk, seq - int(r), "clean stream"))
        resume_at = plan.resume_at  # a child's layer on its parent's stream
        if plan.blocks:
            p_first = plan.parents.first_layers(
                None if self.model.sae is None else self.model.sae.layer)
            ones = np.ones(self.cfg.n_layers)
            block = self.place.round_up(plan.block)
            for p_idx, kids in plan.blocks:
                w, c = self._work(p_first[p_idx[:1]], 1, ones, block * batch * draws * seq)
                w2, c2 = self._work(resume_at[kids], chunk, costs, batch * draws * seq)
                work, calls = work + w + w2, calls + c + c2
            part += self._compile("trajectory", sig + (block,))
            part += self._compile("chunk", sig + (chunk, seq, "own streams"))
        return (part + Part(compute_s=self._seconds(work, SWEEP_EFFICIENCY))
                + self.overhead(calls, sweeps=1))

    def sweep_from_layer0(self, n: int, chunk: int, kinds: tuple[str, ...], *,
                          draws: int = 1, reuse_prefix: bool = True, ablation: str = "mean"
                          ) -> Part:
        """A sweep of n masks that each start at layer 0 and row 0 with no shared parents
        (sets of many components: the cumulative curve, the circuit search, everything
        ablated), priced by its count: what `sweep` gives such a mask set, without
        building it."""
        batch, seq = self.shape
        chunk = min(self.place.round_up(min(chunk, n)), self.place.round_up(n))
        costs = layer_costs(self.cfg, seq, self.n_read, self.n_columns)
        calls = -(-n // chunk)
        work = calls * self._work(np.zeros(1, np.int64), 1, costs, chunk * batch * draws * seq)[0]
        attended = reuse_prefix and not set(REATTEND_BREAKING) & set(kinds)
        sig = (ablation, draws, attended, tuple(kinds), self.shape)
        return (self.clean_pass()
                + self._compile("chunk", sig + (chunk, seq, "clean stream"))
                + Part(compute_s=self._seconds(work, SWEEP_EFFICIENCY))
                + self.overhead(calls, sweeps=1))

    def attribution(self, method: str, steps: int, kinds: tuple[str, ...], draws: int = 1
                    ) -> Part:
        """`jaxablate.attribute` over the prompts under each of `draws` replacements: per
        prompt, a forward and backward per integrated-gradients step and the clean and fully
        ablated forwards ("ig"), or one forward and backward ("grad"), every layer, logits
        where the metric reads (and the clean logits first for a metric that reads them)."""
        shape = self.shape
        batch, seq = shape
        forward = batch * seq * layer_costs(self.cfg, seq, self.n_read, self.n_columns).sum()
        passes = ((1 + BACKWARD_FACTOR) * (1 if method == "grad" else steps)
                  + (0 if method == "grad" else 2) + (1 if self.metric.reads_clean else 0))
        work = draws * passes * forward
        return (self._compile("gradient", (method, steps, kinds, shape))
                + Part(compute_s=self._seconds(work, GRADIENT_EFFICIENCY))
                + self.overhead(draws, sweeps=draws))

    def optimal_fit(self, mask_set: MaskSet, shape: tuple[int, int], steps: int) -> Part:
        """`optimal_replacement` of `mask_set` on reference prompts of `shape`, `steps` Adam
        steps, full batch, the objective (KL or loss) at every position over the whole
        vocabulary: per step a forward and backward of every mask from its first layer, and
        one more forward at the end; the mean values it starts from."""
        batch, seq = shape
        first = np.sort(mask_set.layer_span(
            None if self.model.sae is None else self.model.sae.layer)[0])
        # The fit's chunk, as `optimal.objective.MaskObjective` sizes it: a backward pass
        # keeps about 3 forwards' activations.
        per_mask = 3 * batch * bytes_per_example(self.model, seq, seq)
        chunk = int(max(1, min(len(mask_set), budget_bytes(None) // per_mask)))
        chunk = self.place.round_up(min(chunk, self.place.round_up(len(mask_set))))
        costs = layer_costs(self.cfg, seq, seq)
        one, calls = self._work(first, chunk, costs, batch * seq)
        work = steps * (1 + BACKWARD_FACTOR) * one + one
        calls = (steps + 1) * calls + 2 * steps  # + Adam's step and the host's copy
        return (self.forwards(shape) + self._compile("fit", (len(mask_set), chunk, shape))
                + Part(compute_s=self._seconds(work, FIT_EFFICIENCY))
                + self.overhead(calls))

