"""Optimal ablation (Li & Janson, "Optimal ablation for interpretability", NeurIPS 2024,
arXiv 2409.09951): each component is replaced by the constant that does the least damage.

    Delta_OA(c) = min_a E_x[L(model with c := a)] - E_x[L(model)]

Zero, mean and resample ablation each mix what a component tells the model about the input
with the damage of pushing the network off its distribution; Delta_OA keeps the first only.
Here every mask's constants are found at once: the objective is the sum over masks of each
mask's own damage, so one backward pass gives each mask's values their own gradient, and
Adam (optax) descends on all of them together, in the sweep's chunks and on its devices.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxablate.ablation.replacements import check_key, mean_replacement, zero_replacement
from jaxablate.engine.plan import as_mask_set
from jaxablate.engine.sharding import placement
from jaxablate.errors import InputError, InputTypeError
from jaxablate.model.batched import validate_call
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.replacement import FIELD_FOR_KIND, Replacement
from jaxablate.model.validation import check_int, check_progress, check_replacement, check_tokens
from jaxablate.optimal.objective import MaskObjective, resolve_objective

INITS = ("mean", "zero")


@functools.lru_cache(maxsize=16)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    """One optimiser object per learning rate, so `_step` compiles once per shape, not once
    per call."""
    return optax.adam(learning_rate)


def _keep(params, best, improved):
    """`best` with the rows where `improved` (bool [n_pad]) taken from `params`."""
    return {f: jnp.where(improved.reshape((-1,) + (1,) * (a.ndim - 1)), a, best[f])
            for f, a in params.items()}


@eqx.filter_jit
def _step(optimiser, params, grads, state, best, improved):
    """Keep the improved rows of `params` in `best`, then one Adam step on every row."""
    keep = _keep(params, best, improved)
    with jax.numpy_dtype_promotion("standard"):  # optax: Python float ** int32 count
        updates, state = optimiser.update(grads, state, params)
    return optax.apply_updates(params, updates), state, keep


@dataclasses.dataclass
class OptimalAblation:
    """The record of an `optimal_replacement` run (N masks, `steps` Adam steps).

    Damage is in the objective's units, positive when the ablation hurts (the study's
    effect sign, docs/conventions.md): KL or loss increase, or a higher-is-better metric's
    decrease, averaged over prompts.

    history: [steps + 1, N] damage on the optimisation prompts at each iterate (row 0: the
    initial values, row t: after t steps). best_step: [N] the iterate kept, per mask.
    delta: [N] Delta_OA on the optimisation prompts (history[best_step]); delta_init: [N] the
    initial values' damage (Delta_mean with init="mean"), so delta <= delta_init always.
    delta_held_out, delta_init_held_out: the same on the held-out prompts (None without).

    Example:
        >>> r, record = optimal_replacement(model, tokens, masks.single_heads(cfg), steps=50)
        >>> record.delta[:3], record.shift_share()[:3]
    """

    names: list[str]
    objective: str
    init: str
    history: np.ndarray
    best_step: np.ndarray
    delta: np.ndarray
    delta_init: np.ndarray
    delta_held_out: np.ndarray | None
    delta_init_held_out: np.ndarray | None
    optimisation_prompts: np.ndarray
    held_out_prompts: np.ndarray
    steps: int
    learning_rate: float
    batch_size: int

    def shift_share(self, held_out: bool = False) -> np.ndarray:
        """(delta_init - delta) / delta_init per mask: with init="mean", the share of the
        mean-ablation effect that was distribution shift rather than information (NaN where
        the initial damage is 0)."""
        init, best = ((self.delta_init_held_out, self.delta_held_out) if held_out
                      else (self.delta_init, self.delta))
        if init is None:
            raise InputError("shift_share(held_out=True): this run held no prompts out")
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(init != 0, (init - best) / init, np.nan)


def _check_init(init: Any, model: GPT2, kinds: tuple[str, ...], seq: int, batch: int) -> str:
    if isinstance(init, Replacement):
        n_features = None if model.sae is None else model.sae.n_features
        if init.per_example or init.per_mask:
            raise InputError("init: expected values shared by every mask and prompt (the "
                             "starting constants), got a per-example or per-mask replacement")
        check_replacement(init, kinds, model.cfg, seq, batch, n_features)
        return init.kind
    if not isinstance(init, str):
        raise InputTypeError(f"init: expected one of {list(INITS)} or a Replacement, got "
                             f"{type(init).__name__}")
    if init not in INITS:
        raise InputError(f"init: expected one of {list(INITS)} or a Replacement, got {init!r}")
    return init


def _start_values(init: Any, model: GPT2, reference: np.ndarray, fields: list[str],
                  per_position: bool, seq: int) -> dict[str, jax.Array]:
    """The initial constants of every field, shared ([layer, seq|1, ...])."""
    if isinstance(init, Replacement):
        shared = init
    elif init == "zero":
        shared = zero_replacement(model)
    else:
        shared = mean_replacement(model, reference, per_position=per_position)
    values = {}
    for f in fields:
        value = jnp.asarray(getattr(shared, f), jnp.float32)
        seq_axis = 0 if f == "sae_features" else 1
        want = seq if per_position else 1
        if value.shape[seq_axis] != want:
            if want == 1:
                raise InputError(f"init: the values of {f!r} are per position but "
                                 "per_position=False asks for one constant over positions")
            value = jnp.repeat(value, seq, axis=seq_axis)  # one constant -> every position
        values[f] = value
    return values


def optimal_replacement(
    model: GPT2,
    tokens: Any,
    masks: Any,
    objective: Any = "kl_to_clean",
    *,
    steps: int = 100,
    learning_rate: float | int = 0.01,
    per_position: bool = False,
    init: Any = "mean",
    reference_tokens: Any = None,
    key: Any = None,
    progress: Any = None,
    held_out: float | int = 0.25,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    devices: Any = None,
    mesh: Any = None,
) -> tuple[Replacement, OptimalAblation]:
    """Optimal ablation: for each mask, the replacement constants that minimise its damage.

    Li & Janson (NeurIPS 2024, arXiv 2409.09951) define Delta_OA(c) = min_a E_x[L(model with
    c := a)] - E_x[L(model)]: the damage left when component c is set to the best constant,
    which is the value of c's input-specific information (zero and mean ablation add the
    damage of moving the network off its distribution). Here mask n's values a_n are found
    by Adam on sum_n damage_n(a_n): each mask's damage depends on its own values only, so
    one backward pass moves all of them, each for its own ablation. A mask of several
    components (a circuit's complement) gets constants optimised *jointly* for ablating them
    together, a different problem from each one's own optimal ablation.

    What is approximated: the minimum over a is taken by `steps` Adam steps from `init`
    (a local minimum, not the global one), on minibatches of `batch_size` prompts (None:
    every optimisation prompt, full-batch descent), and E_x is a mean over the prompts. The
    iterate kept per mask is the one of least damage on the whole optimisation set, step 0
    (the initial values) included, so Delta_OA <= Delta_init holds there by construction.
    Because the constants are fitted to those prompts, `held_out` of the prompts (chosen by
    `key`) are kept out and Delta is reported on them too, the unbiased estimate.

    tokens: int [batch, seq]. masks: a MaskSet (or a stacked Mask) of N masks, any kinds:
    heads (z), head_positions, mlps, neurons, positions, SAE features (an SAE attached)...
    Memory: the values are N copies of the replacement fields those kinds read, e.g. for
    heads N x [layer, seq|1, head, d_head]. objective: "kl_to_clean" (KL(clean || ablated)
    averaged over every position, the default), "loss" (next-token cross-entropy), or a
    differentiable `jaxablate.metrics` Metric (its direction from `higher_is_better`).
    per_position: constants per position ([layer, seq, ...]) instead of one for every
    position. init: "mean" (over `reference_tokens`, default the optimisation prompts),
    "zero", or a shared Replacement. key: PRNG key or int seed for the held-out split and
    the minibatches (default 0: the same call gives identical constants). progress(done,
    total) after each step. chunk_size, memory_budget, devices, mesh: as `sweep`'s.

    Returns (replacement, record): a per-mask Replacement (kind "optimal", fields
    [N, layer, seq|1, ...], for `sweep`; `.for_mask(n)` for one mask) of each mask's best
    values, and an `OptimalAblation` (history per step per mask, best step, Delta).

    Example:
        >>> heads = masks.single_heads(model.cfg)
        >>> r, record = optimal_replacement(model, tokens, heads, steps=50, learning_rate=0.02)
        >>> out = sweep(model, tokens, heads, r, metrics.kl_to_clean(None))   # [144, batch]
        >>> record.delta_init_held_out - record.delta_held_out   # distribution shift, per head
    """
    metric = resolve_objective(objective)
    check_progress(progress)
    steps = check_int(steps, "steps", 0)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or \
            not np.isfinite(learning_rate) or learning_rate <= 0:
        raise InputError(f"learning_rate must be a positive number, got {learning_rate!r}")
    if not isinstance(per_position, bool):
        raise InputTypeError(f"per_position: expected True or False, got {per_position!r}")
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)) or \
            not 0 <= held_out < 1:
        raise InputError(f"held_out: expected the fraction of prompts kept out of the "
                         f"optimisation, in [0, 1), got {held_out!r}")
    tokens = validate_call(model, tokens, None, None)
    n_prompts, seq = tokens.shape
    mask_set = as_mask_set(masks, model, seq)
    n = len(mask_set)
    if n == 0:
        raise InputError("masks: an empty mask set has nothing to optimise")
    init_name = _check_init(init, model, mask_set.kinds, seq, n_prompts)
    if reference_tokens is not None:
        reference_tokens = check_tokens(reference_tokens, model.cfg)
        if per_position and reference_tokens.shape[1] != seq:
            raise InputError(f"reference_tokens have length {reference_tokens.shape[1]}, the "
                             f"prompts {seq}: per-position means need aligned prompts")
    n_hold = int(np.floor(held_out * n_prompts))
    if held_out > 0 and n_hold == 0:
        raise InputError(f"held_out={held_out} of {n_prompts} prompts keeps none out; use "
                         "held_out=0 (no held-out estimate) or more prompts")
    if n_prompts - n_hold < 1:
        raise InputError("held_out leaves no prompt to optimise on")
    n_opt = n_prompts - n_hold
    batch_size = n_opt if batch_size is None else check_int(batch_size, "batch_size", 1)
    if batch_size > n_opt:
        raise InputError(f"batch_size={batch_size} is more than the {n_opt} optimisation "
                         "prompts")
    key = check_key(0 if key is None else key)
    split_key, batch_key = jax.random.split(key)
    order = np.asarray(jax.random.permutation(split_key, n_prompts))
    hold_idx, opt_idx = np.sort(order[:n_hold]), np.sort(order[n_hold:])

    fields = sorted({FIELD_FOR_KIND[k] for k in mask_set.kinds})
    reference = tokens[opt_idx] if reference_tokens is None else reference_tokens
    start_values = _start_values(init, model, reference, fields, per_position, seq)
    if chunk_size is not None:
        chunk_size = check_int(chunk_size, "chunk_size", 1)
    fit = MaskObjective(model, tokens, mask_set, metric, chunk_size, batch_size,
                        placement(devices, mesh), memory_budget)
    n_pad, by_layer = fit.n_pad, fit.order

    initial = {f: jnp.broadcast_to(v, (n_pad,) + v.shape) for f, v in start_values.items()}
    params = initial
    optimiser = _adam(float(learning_rate))
    state = optimiser.init(params)

    full = fit.prompts(opt_idx)
    history = np.zeros((steps + 1, n_pad))
    best_value = np.full(n_pad, np.inf)
    best = params
    for t in range(steps + 1):
        if t < steps:
            if batch_size < n_opt:
                pick = jax.random.permutation(jax.random.fold_in(batch_key, t), n_opt)
                batch = fit.prompts(opt_idx[np.sort(np.asarray(pick)[:batch_size])])
            else:
                batch = full
            value, grads = fit.damage_and_grad(params, batch)
            if batch is not full:
                value = fit.damage(params, full)
        else:
            value = fit.damage(params, full)
        history[t] = value
        improved = value < best_value
        best_value = np.where(improved, value, best_value)
        if t < steps:
            params, state, best = _step(optimiser, params, grads, state, best,
                                        jnp.asarray(improved))
        else:
            best = _keep(params, best, jnp.asarray(improved))
        if progress is not None:
            progress(t + 1, steps + 1)

    # Back to the masks' own order.
    back = np.argsort(by_layer)
    values = {f: a[jnp.asarray(back)] for f, a in best.items()}
    replacement = Replacement(**values, kind="optimal", per_mask=True)
    history = history[:, back]
    best_step = np.argmin(history, axis=0)
    held_best = held_init = None
    if n_hold:
        held = fit.prompts(hold_idx)
        held_best = fit.damage(best, held)[back]
        held_init = fit.damage(initial, held)[back]
    record = OptimalAblation(
        names=list(mask_set.names), objective=metric.name, init=init_name, history=history,
        best_step=best_step, delta=history[best_step, np.arange(n)], delta_init=history[0],
        delta_held_out=held_best, delta_init_held_out=held_init,
        optimisation_prompts=opt_idx, held_out_prompts=hold_idx, steps=steps,
        learning_rate=float(learning_rate), batch_size=int(batch_size))
    return replacement, record
