"""Optimal ablation (`jaxablate.optimal_replacement`, Li & Janson 2024) against independent
references: TransformerLens hooks that set a component to the returned constant, sweeps with
mean and zero values, a finite difference of the objective, and repeated runs.

Models: a random 4-layer GPT-2 (Hugging Face, with its TransformerLens twin), and the bundled
induction model for what OA says about a trained circuit.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_hf_model, tiny_hf_config, tl_from_hf

import jaxablate
from jaxablate import masks, metrics
from jaxablate.engine.sharding import placement
from jaxablate.optimal.objective import MaskObjective, resolve_objective

BATCH, SEQ = 8, 7
# Float32 rounding of a KL or loss between two compiled programs (per example, values of
# order 1): the sweep-vs-loop tolerance of test_engine.py.
ATOL = 1e-5


@pytest.fixture(scope="module")
def hf4():
    return make_hf_model(tiny_hf_config(n_layer=4), seed=3)


@pytest.fixture(scope="module")
def model4(hf4):
    return jaxablate.load_gpt2(hf4)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 101, (BATCH, SEQ)).astype(np.int32)


def mixed_set(cfg):
    """Heads, MLPs, two neurons, two residual positions, and per-position heads."""
    return masks.concat([
        masks.single_heads(cfg), masks.single_mlps(cfg),
        masks.from_components(cfg, [["n1.3"], ["n2.40"]]),
        masks.from_components(cfg, [["resid2@3"], ["resid1@6"], ["1.2@4"], ["3.0@6"]],
                              seq_len=SEQ)])


def kl_all(logits, clean):
    """KL(clean || ablated) per example, averaged over positions, float64 numpy."""
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    lq, lp = log_softmax(clean), log_softmax(logits)
    return (np.exp(lq) * (lq - lp)).sum(-1).mean(-1)


def tl_hook(component, r):
    """A TransformerLens (name, hook) setting `component` to its constants in `r` (one
    mask's shared Replacement, fields [layer, seq|1, ...])."""
    import torch

    c = jaxablate.parse_component(component)
    layer = c.index[0]

    def values(field, *index):
        return torch.tensor(np.asarray(getattr(r, field)[(layer,) + index]))

    if c.kind == "heads":
        z = values("z", slice(None), c.index[1])  # [seq|1, d_head]

        def hook(act, hook):
            act[:, :, c.index[1], :] = z
            return act
        return f"blocks.{layer}.attn.hook_z", hook
    if c.kind == "head_positions":
        pos, head = c.index[1], c.index[2]
        row = min(pos, getattr(r, "z").shape[1] - 1)

        def hook(act, hook):
            act[:, pos, head, :] = values("z", row, head)
            return act
        return f"blocks.{layer}.attn.hook_z", hook
    if c.kind == "mlps":
        def hook(act, hook):
            act[:] = values("mlp_out")
            return act
        return f"blocks.{layer}.hook_mlp_out", hook
    if c.kind == "neurons":
        def hook(act, hook):
            act[:, :, c.index[1]] = values("post", slice(None), c.index[1])
            return act
        return f"blocks.{layer}.mlp.hook_post", hook
    if c.kind == "positions":
        pos = c.index[1]
        row = min(pos, getattr(r, "resid").shape[1] - 1)

        def hook(act, hook):
            act[:, pos] = values("resid", row)
            return act
        return f"blocks.{layer}.hook_resid_pre", hook
    raise AssertionError(c.kind)


@pytest.mark.parametrize("per_position", [False, True], ids=["constant", "per-position"])
def test_constants_applied_by_transformer_lens_hooks_give_the_sweep(hf4, model4, tokens,
                                                                    per_position):
    import torch

    tl = tl_from_hf(hf4)
    ms = mixed_set(model4.cfg)
    r, record = jaxablate.optimal_replacement(model4, tokens, ms, steps=4, learning_rate=0.05,
                                              per_position=per_position, held_out=0)
    assert r.per_mask and r.kind == "optimal" and r.z.shape[0] == len(ms)
    assert r.z.shape[2] == (SEQ if per_position else 1)
    ours = jaxablate.sweep(model4, tokens, ms, r, metrics.kl_to_clean(None))
    with torch.no_grad():
        clean = tl(torch.tensor(tokens, dtype=torch.long)).double().numpy()
        theirs = []
        for n, name in enumerate(ms.names):
            hooked = tl.run_with_hooks(torch.tensor(tokens, dtype=torch.long),
                                       fwd_hooks=[tl_hook(name, r.for_mask(n))])
            theirs.append(kl_all(hooked.double().numpy(), clean))
    np.testing.assert_allclose(ours, np.stack(theirs), rtol=0, atol=1e-4)
    # The record's Delta is that sweep's mean (the descent's own evaluation of the same values)
    np.testing.assert_allclose(record.delta, ours.mean(1), rtol=0, atol=ATOL)
    assert np.any(record.delta < record.delta_init - 1e-4)  # the descent moved something


def test_optimal_never_worse_than_mean_on_the_fit_prompts(model4, tokens):
    ms = mixed_set(model4.cfg)
    r, record = jaxablate.optimal_replacement(model4, tokens, ms, "loss", steps=15,
                                              learning_rate=0.05, held_out=0.25, key=3)
    fit, held = record.optimisation_prompts, record.held_out_prompts
    assert len(held) == 2 and sorted(np.concatenate([fit, held])) == list(range(BATCH))
    metric = metrics.loss()
    mean = jaxablate.mean_replacement(model4, tokens[fit], per_position=False)

    def delta(idx, repl):
        out = jaxablate.sweep(model4, tokens[idx], ms, repl, metric)
        return (out - jaxablate.clean_metric(model4, tokens[idx], metric)).mean(1)

    oa_fit, mean_fit = delta(fit, r), delta(fit, mean)
    np.testing.assert_allclose(record.delta, oa_fit, rtol=0, atol=ATOL)
    np.testing.assert_allclose(record.delta_init, mean_fit, rtol=0, atol=ATOL)
    assert np.all(oa_fit <= mean_fit + 2 * ATOL)
    oa_held, mean_held = delta(held, r), delta(held, mean)
    np.testing.assert_allclose(record.delta_held_out, oa_held, rtol=0, atol=ATOL)
    np.testing.assert_allclose(record.delta_init_held_out, mean_held, rtol=0, atol=ATOL)
    holds = float(np.mean(oa_held <= mean_held + 2 * ATOL))
    print(f"held out: Delta_OA <= Delta_mean for {holds:.0%} of {len(ms)} components")
    # resid1@6 and 3.0@6 change only the last position, whose prediction the loss skips
    share, moved = record.shift_share(), mean_fit != 0
    assert [n for n, m in zip(ms.names, moved) if not m] == ["resid1@6", "3.0@6"]
    m, o = mean_fit[moved], oa_fit[moved]
    # (m - o) / m with m and o each within ATOL: the share within ATOL (|m| + |o|) / m^2
    np.testing.assert_array_less(np.abs(share[moved] - (m - o) / m),
                                 ATOL * (np.abs(m) + np.abs(o)) / m ** 2 + 1e-12)


def test_input_independent_head_has_no_optimal_ablation_effect(model4, tokens):
    """Head 2.1 with W_V = 0 and a value bias: z = b_V whatever the input. Its zero ablation
    hurts; its optimal ablation, found from zero, costs nothing."""
    layer, head = 2, 1
    rng = np.random.default_rng(1)
    w = model4.blocks.W_qkv.at[layer, :, 2, head, :].set(0.0)
    bias = jnp.asarray(3.0 * rng.standard_normal(model4.cfg.d_head).astype(np.float32))
    b = model4.blocks.b_qkv.at[layer, 2, head, :].set(bias)
    model = eqx.tree_at(lambda m: (m.blocks.W_qkv, m.blocks.b_qkv), model4, (w, b))
    one = masks.from_components(model.cfg, [[f"{layer}.{head}"]])
    zero = jaxablate.sweep(model, tokens, one, jaxablate.zero_replacement(model),
                           metrics.kl_to_clean(None)).mean()
    r, record = jaxablate.optimal_replacement(model, tokens, one, init="zero", steps=300,
                                              learning_rate=0.05, held_out=0)
    print(f"input-independent head: zero ablation {zero:.4f}, Delta_OA {record.delta[0]:.2e}")
    assert zero > 1e-2
    assert record.delta[0] <= 1e-4
    np.testing.assert_allclose(np.asarray(r.z[0, layer, 0, head]), np.asarray(bias), atol=0.05)


def test_gradient_of_each_mask_matches_a_finite_difference(model4, tokens):
    ms = mixed_set(model4.cfg)
    metric = resolve_objective("kl_to_clean")
    objective = MaskObjective(model4, tokens, ms, metric, 5, BATCH, placement())
    batch = objective.prompts(np.arange(BATCH))
    rng = np.random.default_rng(2)
    shape = (objective.n_pad, model4.cfg.n_layers, SEQ)  # per position (head@pos reads it)
    cfg = model4.cfg
    values = {f: jnp.asarray(rng.standard_normal(shape + s).astype(np.float32) * 0.5)
              for f, s in (("z", (cfg.n_heads, cfg.d_head)), ("mlp_out", (cfg.d_model,)),
                           ("post", (cfg.d_mlp,)), ("resid", (cfg.d_model,)))}
    damage, grads = objective.damage_and_grad(values, batch)
    rows = {name: int(np.nonzero(objective.order == i)[0][0]) for i, name in enumerate(ms.names)}
    # (row of the mask, field, index in the field) of a few constants the mask reads
    probes = [(rows["1.2"], "z", (1, 2, 2, 1)), (rows["mlp3"], "mlp_out", (3, 5, 5)),
              (rows["n2.40"], "post", (2, 3, 40)), (rows["resid1@6"], "resid", (1, 6, 7)),
              (rows["3.0@6"], "z", (3, 6, 0, 2))]
    # masks other than the probed one that read its constant: head 3.0 at every position
    readers = {rows["3.0@6"]: [rows["3.0"]]}
    h = 1e-2
    for row, field, index in probes:
        def at(shift):
            moved = dict(values)
            moved[field] = values[field].at[(row,) + index].add(shift)
            return objective.damage(moved, batch)
        up, down = at(h), at(-h)
        fd = (up[row] - down[row]) / (2 * h)
        g = float(grads[field][(row,) + index])
        # Central difference: truncation h^2/6 f''' (f''' of order 1 here) plus float32
        # rounding of the damage (~1e-7 relative, values < 1) over 2h: ~1e-5 + 5e-6.
        assert abs(fd - g) <= 1e-4 + 1e-3 * abs(g), (field, index, fd, g)
        others = np.delete(np.arange(objective.n_pad), row)
        np.testing.assert_allclose(up[others], damage[others], rtol=0, atol=ATOL)
        # Masks that do not read this constant keep weight 1 there: d/dr (1 h + 0 r) = 0.
        blind = np.setdiff1d(others, readers.get(row, []))
        assert np.all(np.asarray(grads[field][blind][(slice(None),) + index]) == 0.0)


def test_same_seed_same_constants_and_chunking_changes_only_rounding(model4, tokens):
    ms = masks.concat([masks.single_heads(model4.cfg), masks.single_mlps(model4.cfg)])
    kwargs = dict(steps=6, learning_rate=0.05, held_out=0.25, batch_size=3, key=5)
    r1, rec1 = jaxablate.optimal_replacement(model4, tokens, ms, **kwargs)
    r2, rec2 = jaxablate.optimal_replacement(model4, tokens, ms, **kwargs)
    for f in r1.fields():
        np.testing.assert_array_equal(np.asarray(getattr(r1, f)), np.asarray(getattr(r2, f)))
    np.testing.assert_array_equal(rec1.history, rec2.history)
    r3, rec3 = jaxablate.optimal_replacement(model4, tokens, ms, chunk_size=3, **kwargs)
    # Adam normalises each step by the gradient's own scale, so float32 rounding of the
    # gradient (~1e-6 relative) moves an update by about that share of the learning rate:
    # over 6 steps at lr 0.05, ~1e-6; the damage by its gradient times that.
    for f in r1.fields():
        np.testing.assert_allclose(np.asarray(getattr(r3, f)), np.asarray(getattr(r1, f)),
                                   rtol=0, atol=1e-5)
    np.testing.assert_allclose(rec3.history, rec1.history, rtol=0, atol=ATOL)
    _, rec4 = jaxablate.optimal_replacement(model4, tokens, ms, **dict(kwargs, key=6))
    assert not np.array_equal(rec4.held_out_prompts, rec1.held_out_prompts) or \
        not np.array_equal(rec4.history, rec1.history)


def test_metric_objective_with_a_direction(model4, tokens):
    """A higher-is-better metric: damage is its decrease, and the descent reduces it."""
    rng = np.random.default_rng(4)
    correct = rng.integers(0, 101, BATCH)
    metric = metrics.logit_diff(correct, (correct + 1) % 101)
    ms = masks.single_heads(model4.cfg)
    r, record = jaxablate.optimal_replacement(model4, tokens, ms, metric, steps=5,
                                              learning_rate=0.05, held_out=0)
    out = jaxablate.sweep(model4, tokens, ms, r, metric)
    clean = jaxablate.clean_metric(model4, tokens, metric)
    np.testing.assert_allclose(record.delta, (clean - out).mean(1), rtol=0, atol=ATOL)
    assert np.all(record.delta <= record.delta_init)


def test_bad_arguments_are_refused_up_front(model4, tokens):
    ms = masks.single_heads(model4.cfg)
    call = jaxablate.optimal_replacement
    cases = [
        (dict(objective="kl"), "objective: expected one of"),
        (dict(objective=metrics.accuracy(np.zeros(BATCH, int))), "piecewise constant"),
        (dict(steps=-1), "steps"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(held_out=1.0), "held_out"),
        (dict(held_out=0.05), "keeps none out"),
        (dict(batch_size=9, held_out=0), "batch_size=9"),
        (dict(init="median"), "init: expected one of"),
        (dict(init=jaxablate.resample_replacement(model4, tokens, 0)), "per-example"),
        (dict(per_position=1), "per_position"),
        (dict(key="seed"), "key"),
    ]
    for kwargs, message in cases:
        objective = kwargs.pop("objective", "kl_to_clean")
        with pytest.raises((jaxablate.InputError, TypeError), match=message):
            call(model4, tokens, ms, objective, **kwargs)


def test_induction_model_circuit_keeps_its_optimal_ablation_effect():
    """The bundled induction model: a previous-token head (card: 0.1, primary) feeding
    induction heads (1.0 primary, 1.1). OA removes most of the mean-ablation effect of the
    heads the card calls secondary and of MLP 0, and keeps most of the primary
    previous-token head's: mean ablation overstated the secondary ones."""
    from jaxablate import tasks, zoo

    model = jaxablate.load_gpt2("bundled:induction")
    circuit = zoo.model_card("induction")["evaluation"]["circuit"]
    task = tasks.induction(32, half=16, vocab=model.cfg.d_vocab, seed=0)
    ms = masks.concat([masks.single_heads(model.cfg), masks.single_mlps(model.cfg)])
    _, record = jaxablate.optimal_replacement(model, task.tokens, ms, steps=60,
                                              learning_rate=0.03)
    ratio = dict(zip(ms.names, record.delta_held_out / record.delta_init_held_out))
    print("\n".join(f"{n}: Delta_mean {a:.4f} Delta_OA {b:.4f} (held out)" for n, a, b in
                    zip(ms.names, record.delta_init_held_out, record.delta_held_out)))
    prev = circuit["primary"]["previous_token"]
    secondary = [h for h in circuit["previous_token_heads"] + circuit["induction_heads"]
                 if h not in circuit["primary"].values()]
    assert ratio[prev] > 0.5
    assert all(ratio[h] < 0.5 for h in secondary + ["mlp0"])
    assert np.all(record.delta <= record.delta_init)


def test_four_devices_change_the_constants_only_by_rounding():
    """The mask axis split over 4 forced CPU devices (a subprocess: the device count is
    fixed when JAX starts), against one device, per-mask sweeps of the result included."""
    from test_sharding import SETUP, finish, run_child

    code = SETUP + """
assert len(jax.devices()) == 4, jax.devices()
config.initializer_range = 0.2  # effects of order 0.1 (HF's 0.02 gives ~1e-7)
model = ja.load_gpt2(random_hf_model(config, 0, noise=0.1))
ms = ja.masks.concat([ja.masks.single_heads(model.cfg), ja.masks.single_mlps(model.cfg)])
runs = [ja.optimal_replacement(model, tokens, ms, steps=5, learning_rate=0.05, held_out=0,
                               devices=d) for d in (1, 4)]
(r1, rec1), (r4, rec4) = runs
kl = ja.metrics.kl_to_clean(None)
sweeps = [ja.sweep(model, tokens, ms, r, kl, devices=d) for r, d in ((r1, 1), (r4, 4))]
print(json.dumps({
    "values": max(float(np.abs(np.asarray(getattr(r1, f)) - np.asarray(getattr(r4, f))).max())
                  for f in r1.fields()),
    "history": float(np.abs(rec1.history - rec4.history).max()),
    "sweep": float(np.abs(sweeps[0] - sweeps[1]).max()),
    "moved": float((rec1.delta_init - rec1.delta).max())}))
"""
    report = finish(run_child(code, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}))
    assert report["moved"] > 1e-4  # the descent did something to compare
    # as the chunking test: Adam steps move by rounding's share of the learning rate
    assert report["values"] <= 1e-5, report
    assert report["history"] <= ATOL and report["sweep"] <= ATOL, report


def test_sae_features(model4, tokens):
    """SAE features (an SAE attached at layer 2): the constants found give, applied one mask
    at a time by `jaxablate.forward`, the record's Delta."""
    rng = np.random.default_rng(8)
    d, n = model4.cfg.d_model, 6
    sae = jaxablate.SAE.create(rng.normal(0, 0.3, (d, n)).astype(np.float32),
                               rng.normal(0.2, 0.1, n).astype(np.float32),
                               rng.normal(0, 0.3, (n, d)).astype(np.float32),
                               rng.normal(0, 0.1, d).astype(np.float32),
                               hook_point="blocks.2.hook_resid_pre")
    model = jaxablate.attach_sae(model4, sae)
    ms = masks.single_features(model.cfg, n)
    r, record = jaxablate.optimal_replacement(model, tokens, ms, steps=5, learning_rate=0.05,
                                              held_out=0)
    assert r.sae_features.shape == (n, 1, n)
    clean = np.asarray(jaxablate.forward(model, tokens), np.float64)
    loop = [kl_all(np.asarray(jaxablate.forward(model, tokens, ms.mask(i), r.for_mask(i)),
                              np.float64), clean).mean() for i in range(n)]
    np.testing.assert_allclose(record.delta, loop, rtol=0, atol=ATOL)
    assert np.all(record.delta <= record.delta_init) and np.any(record.delta < record.delta_init)


@pytest.mark.parametrize("index", [0, 2], ids=["3L", "5L"])
def test_differentiable_path_equals_a_forward_loop_with_fractional_weights(index):
    """The objective's own path (`resume_differentiable`, chunks resumed at their earliest
    mask's layer) against a loop of `jaxablate.forward` with each mask's values: fractional
    keep-weights, mixed kinds, multi-layer masks, chunks that straddle layers."""
    from test_engine_paths import components, make_setup, weighted_set

    cfg, model, tokens, _, _, _ = make_setup(index)
    rng = np.random.default_rng(9)
    singles = components(cfg, ("heads", "head_positions", "mlps", "neurons", "positions"))
    groups = [[c] for c in singles] + [[singles[0], singles[-1]], [singles[2], singles[-3]]]
    ms = weighted_set(cfg, groups, rng, seq_len=tokens.shape[1])
    objective = MaskObjective(model, tokens, ms, resolve_objective("kl_to_clean"), 5,
                              len(tokens), placement())
    seq = tokens.shape[1]
    shapes = {"z": (cfg.n_heads, cfg.d_head), "mlp_out": (cfg.d_model,), "post": (cfg.d_mlp,),
              "resid": (cfg.d_model,)}
    values = {f: jnp.asarray(rng.standard_normal((objective.n_pad, cfg.n_layers, seq) + s)
                             .astype(np.float32)) for f, s in shapes.items()}
    got = objective.damage(values, objective.prompts(np.arange(len(tokens))))
    clean = np.asarray(jaxablate.forward(model, tokens), np.float64)
    for row, n in enumerate(objective.order.tolist()):
        r = jaxablate.Replacement(**{f: v[row] for f, v in values.items()})
        logits = np.asarray(jaxablate.forward(model, tokens, ms.mask(n), r), np.float64)
        np.testing.assert_allclose(got[row], kl_all(logits, clean).mean(), rtol=0, atol=ATOL,
                                   err_msg=ms.names[n])
    assert len({int(start) for _, start, _ in objective.chunks}) > 1  # several start layers
