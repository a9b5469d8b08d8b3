"""Gradient screening (`jaxablate.attribution`) against independent numbers on the tiny model:
finite differences of the metric for "grad", exact sweeps for "ig" (completeness, and single
components, where IG must equal the exact ablation effect)."""

from __future__ import annotations

import contextlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxablate
from jaxablate import metrics
from jaxablate.screening import attribution as attribution_lib
from jaxablate.screening.attribution import Attribution, attribute

BATCH, SEQ = 3, 7


@pytest.fixture(scope="module")
def setup(tiny_model):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, tiny_model.cfg.d_vocab, (BATCH, SEQ)).astype(np.int32)
    reference = rng.integers(0, tiny_model.cfg.d_vocab, (8, SEQ)).astype(np.int32)
    replacement = jaxablate.mean_replacement(tiny_model, reference)
    correct = rng.integers(0, tiny_model.cfg.d_vocab, BATCH)
    wrong = (correct + 1 + rng.integers(0, 50, BATCH)) % tiny_model.cfg.d_vocab
    metric = metrics.logit_diff(correct, wrong)
    return tiny_model, tokens, replacement, metric, correct, wrong


@eqx.filter_jit
def _last_logits(model, tokens, replacement, mask):
    def one(tok):
        logits, _ = model.run(tok, mask, replacement, positions=jnp.array([SEQ - 1]))
        return logits[0]

    return jax.vmap(one)(tokens)


def _logit_diff_at(model, tokens, replacement, mask, correct, wrong):
    """The metric per example computed by hand from `model.run` (no range check on the mask,
    so keep-weights 1 + eps are allowed for a central difference)."""
    logits = np.asarray(_last_logits(model, jnp.asarray(tokens), replacement, mask), np.float64)
    rows = np.arange(len(tokens))
    return logits[rows, correct] - logits[rows, wrong]


def _set(mask, kind, index, value):
    return eqx.tree_at(lambda m: getattr(m, kind), mask,
                       getattr(mask, kind).at[index].set(value))


@pytest.mark.parametrize("kind, index", [("heads", (1, 2)), ("heads", (0, 3)), ("mlps", (0,)),
                                         ("neurons", (1, 5))])
def test_grad_matches_central_finite_difference(setup, kind, index):
    model, tokens, replacement, metric, correct, wrong = setup
    att = attribute(model, tokens, replacement, metric, "grad",
                    kinds=("heads", "mlps", "neurons"))
    ones = jaxablate.Mask.keep_all(model.cfg, ("heads", "mlps", "neurons"))

    def fd(eps):
        up = _logit_diff_at(model, tokens, replacement, _set(ones, kind, index, 1.0 + eps),
                            correct, wrong)
        down = _logit_diff_at(model, tokens, replacement, _set(ones, kind, index, 1.0 - eps),
                              correct, wrong)
        return (up - down) / (2 * eps)

    # estimate = -df/dm. Central differences err by f'''(m) eps^2 / 6 (truncation) plus
    # ~1e-7 |f| / eps (float32 rounding). Comparing eps and 2 eps measures the truncation
    # error: fd(2 eps) - fd(eps) = 3 f''' eps^2 / 6, three times fd(eps)'s own.
    eps = 1e-2
    f1, f2 = fd(eps), fd(2 * eps)
    truncation = np.abs(f2 - f1) / 3
    got = np.asarray(getattr(att.estimate, kind))[(slice(None),) + index]
    assert np.abs(f1).max() > 1e-2, "the component should matter for a meaningful test"
    np.testing.assert_allclose(got, -f1, atol=float(2 * truncation.max() + 2e-4), rtol=1e-3)


def test_clean_value_and_shapes(setup):
    model, tokens, replacement, metric, *_ = setup
    att = attribute(model, tokens, replacement, metric, kinds=("heads", "mlps", "neurons"))
    assert isinstance(att, Attribution)
    cfg = model.cfg
    assert att.estimate.heads.shape == (BATCH, cfg.n_layers, cfg.n_heads)
    assert att.estimate.mlps.shape == (BATCH, cfg.n_layers)
    assert att.estimate.neurons.shape == (BATCH, cfg.n_layers, cfg.d_mlp)
    assert att.ablated is None
    np.testing.assert_allclose(att.clean, jaxablate.clean_metric(model, tokens, metric),
                               atol=1e-5)
    np.testing.assert_allclose(att.mean().heads, np.asarray(att.estimate.heads).mean(0),
                               atol=1e-6)
    names = [name for name, _ in att.components()]
    assert names[:5] == ["0.0", "0.1", "0.2", "0.3", "1.0"]
    assert "mlp0" in names and "n1.5" in names
    assert len(names) == cfg.n_layers * (cfg.n_heads + 1 + cfg.d_mlp)
    ranked = att.ranking(top=4)
    assert len(ranked) == 4
    assert abs(ranked[0][1]) >= abs(ranked[1][1]) >= abs(ranked[3][1])


def test_ig_completeness_converges(setup):
    model, tokens, replacement, metric, *_ = setup
    cfg = model.cfg
    kinds = ("heads", "mlps")
    everything = jaxablate.Mask(heads=jnp.zeros((1, cfg.n_layers, cfg.n_heads)),
                                mlps=jnp.zeros((1, cfg.n_layers)))
    exact = jaxablate.sweep(model, tokens, everything, replacement, metric)[0]
    clean = jaxablate.clean_metric(model, tokens, metric)
    effect = exact - clean
    assert np.abs(effect).min() > 0.1
    errors = []
    for steps in (2, 8, 32):
        att = attribute(model, tokens, replacement, metric, "ig", kinds=kinds, steps=steps)
        np.testing.assert_allclose(att.ablated, exact, atol=1e-4)
        total = np.asarray(att.estimate.heads).sum((1, 2)) + np.asarray(att.estimate.mlps).sum(1)
        errors.append(np.abs(total - effect).max())
    # Midpoint rule: error ~ 1/steps^2, so x4 steps should cut it by ~16 (asked: > 4).
    assert errors[1] < errors[0] / 4 and errors[2] < errors[1] / 4, errors
    assert errors[2] < 5e-3 * max(1.0, np.abs(effect).max()), errors


@pytest.mark.parametrize("name", ["1.2", "mlp0", "n0.7"])
def test_ig_of_one_component_is_its_exact_ablation_effect(setup, name):
    # The component scored alone cannot interact with anything: IG integrates along its own
    # keep-weight only and must give the exact single-ablation effect (where the first-order
    # "grad" estimate is off by up to 0.4 for mlp0 on this model). The selection is data: one
    # compiled program serves all three.
    model, tokens, replacement, metric, *_ = setup
    att = attribute(model, tokens, replacement, metric, "ig", kinds=("heads", "mlps", "neurons"),
                    steps=32, components=[name])
    exact = jaxablate.sweep(model, tokens, jaxablate.masks.from_components(model.cfg, [[name]]),
                            replacement, metric)[0]
    effect = exact - jaxablate.clean_metric(model, tokens, metric)
    scores = dict(att.components())
    others = [s for n, s in scores.items() if n != name]
    assert np.all(np.asarray(others) == 0.0)
    c = jaxablate.parse_component(name)
    got = np.asarray(getattr(att.estimate, c.kind))[(slice(None),) + c.index]
    np.testing.assert_allclose(got, effect, atol=1e-3 * max(1.0, np.abs(effect).max()))


def test_chunking_and_per_example_replacement(setup):
    model, tokens, _, metric, *_ = setup
    replacement = jaxablate.resample_replacement(model, tokens, jax.random.key(1))
    whole = attribute(model, tokens, replacement, metric, "ig", kinds=("heads",), steps=2)
    chunked = attribute(model, tokens, replacement, metric, "ig", kinds=("heads",), steps=2,
                        chunk_size=2)
    np.testing.assert_allclose(chunked.estimate.heads, whole.estimate.heads, atol=1e-5)
    np.testing.assert_allclose(chunked.ablated, whole.ablated, atol=1e-5)
    np.testing.assert_allclose(chunked.clean, whole.clean, atol=1e-5)


def _kl_last(model, tok, replacement, mask):
    """KL(clean || ablated) at the last position of one prompt, by hand from `model.run`."""
    logq = jax.nn.log_softmax(model.run(tok, positions=jnp.array([SEQ - 1]))[0][0])
    logp = jax.nn.log_softmax(model.run(tok, mask, replacement,
                                        positions=jnp.array([SEQ - 1]))[0][0])
    return (jnp.exp(logq) * (logq - logp)).sum()


def test_grad_refuses_kl_to_clean_whose_gradient_vanishes_at_clean(setup):
    # KL(clean || ablated) is minimal (0) at the clean point, so its gradient there is 0 for
    # every component: "grad" would return zeros that look like results, so it is refused.
    model, tokens, replacement, *_ = setup
    with pytest.raises(ValueError, match="minimal at the clean model.*method='ig'"):
        attribute(model, tokens, replacement, metrics.kl_to_clean(), "grad", kinds=("mlps",))
    # The reason, checked independently: jax.grad of the KL at the keep-all mask is 0.
    ones = jaxablate.Mask.keep_all(model.cfg, ("mlps",))
    grad = jax.grad(lambda m: _kl_last(model, jnp.asarray(tokens[0]), replacement, m))(ones)
    np.testing.assert_allclose(grad.mlps, 0.0, atol=1e-5)
    # "ig" integrates along the path, where the KL is not flat: non-zero estimates.
    att = attribute(model, tokens, replacement, metrics.kl_to_clean(), "ig", kinds=("mlps",),
                    steps=4)
    assert np.abs(np.asarray(att.metric_change.mlps)).max() > 1e-3


def test_refuses_a_piecewise_constant_metric_and_an_empty_component_list(setup):
    model, tokens, replacement, metric, correct, wrong = setup
    with nothing_compiles():
        for method in ("grad", "ig"):
            with pytest.raises(ValueError, match="piecewise constant"):
                attribute(model, tokens, replacement, metrics.accuracy(correct, wrong), method)
        with pytest.raises(ValueError, match="empty list"):
            attribute(model, tokens, replacement, metric, "ig", components=[])


@contextlib.contextmanager
def nothing_compiles():
    """Reaching the compiled attribution fails the test: the input is checked first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the compiled attribution was reached")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attribution_lib, "_attribute_chunk", forbidden)
        yield


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="shap"), "method"),
    (dict(method="ig", steps=0), "steps"),
    (dict(method="grad", steps=-3), "steps"),
    (dict(kinds=("heads", "bogus")), "unknown mask kinds"),
    (dict(kinds=()), "kinds"),
    (dict(kinds=("sae_features",)), "SAE"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(method="grad", components=["1.2"]), "components"),
    (dict(method="ig", components=["mlp0"]), "kind"),
    (dict(method="ig", components=["7.1"]), "out of range"),
])
def test_validation_errors(setup, kwargs, match):
    model, tokens, replacement, metric, *_ = setup
    method = kwargs.pop("method", "grad")
    with pytest.raises(ValueError, match=match):
        attribute(model, tokens, replacement, metric, method, **kwargs)


def test_input_errors(setup):
    model, tokens, replacement, metric, *_ = setup
    with pytest.raises(ValueError, match="replacement"):
        attribute(model, tokens, None, metric)
    with pytest.raises(ValueError, match="tokens"):
        attribute(model, tokens[0], replacement, metric)
    with pytest.raises(TypeError, match="metric"):
        attribute(model, tokens, replacement, "logit_diff")


_TRACES = []


def _counting_logit_diff(logits, tokens, clean, data):
    _TRACES.append(1)  # runs at trace time only
    return logits[0, data["correct"]] - logits[0, data["wrong"]]


class _CountingLogitDiff(metrics.LogitDiff):
    score = staticmethod(_counting_logit_diff)


def test_chunks_reuse_one_compiled_program(setup):
    model, tokens, replacement, _, correct, wrong = setup
    metric = _CountingLogitDiff(correct, wrong)
    attribute(model, tokens, replacement, metric, "grad", chunk_size=2)  # chunks of 2 and 1
    traced = len(_TRACES)
    assert traced > 0
    other = (tokens + 1) % model.cfg.d_vocab
    attribute(model, other, replacement, metric, "grad", chunk_size=2)
    assert len(_TRACES) == traced  # padded last chunk and new tokens: no retrace
