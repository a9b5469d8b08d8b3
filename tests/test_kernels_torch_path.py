"""The PyTorch comparison path (`jaxablate_kernels.sweep` on `TorchGPT2`) against jaxablate.

Same weights (the tiny random GPT-2 of conftest.py, loaded by jaxablate and converted), same
prompts, same masks, replacements and metrics: the sweep must return `jaxablate.sweep`'s
`[N, batch]` values to 1e-4 (absolute; the values are logit differences and KLs of order
1-5), with the fused Triton kernel (kernel="triton", in the CPU interpreter without a GPU) and
with the unfused PyTorch op (kernel="torch"). The clean model is checked against Hugging Face
directly, and the PyTorch metric scorers against jaxablate's own JAX `score` functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import jaxablate as ja  # noqa: E402
import jaxablate_kernels as jk  # noqa: E402
from jaxablate.ablation.metrics import vocab_columns  # noqa: E402
from jaxablate_kernels.torch_sweep import dense_keep  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SEQ = 7
TOL = dict(rtol=0.0, atol=1e-4)  # the bar: equal to jaxablate.sweep to 1e-4
# bfloat16 on both sides: same roundings of the matmul inputs, but a float32 value that two
# summation orders put on either side of a bfloat16 rounding boundary moves by 2^-8 relative.
BF16_TOL = dict(rtol=0.0, atol=1e-3)
KERNELS = ["torch", "triton"]


# Without a GPU the kernel runs in Triton's CPU interpreter (conftest.triton_interpreter).
pytestmark = pytest.mark.usefixtures("triton_interpreter")


@pytest.fixture(scope="module")
def prompts(tiny_model):
    rng = np.random.default_rng(7)
    vocab = tiny_model.cfg.d_vocab
    correct = rng.integers(0, vocab, 3)
    return {"tokens": rng.integers(0, vocab, (3, SEQ)),
            "reference": rng.integers(0, vocab, (5, SEQ)),
            "correct": correct, "wrong": (correct + rng.integers(1, vocab, 3)) % vocab}


@pytest.fixture(scope="module")
def tmodel(tiny_model):
    return jk.TorchGPT2.from_jaxablate(tiny_model, DEVICE)


@pytest.fixture(scope="module")
def mask_sets(tiny_model):
    """Single heads, head pairs across and within layers, heads at one query position, and
    fractional keep-weights mixing per-head and per-position masks."""
    cfg = tiny_model.cfg
    return {
        "single heads": ja.masks.single_heads(cfg),
        "head pairs": ja.masks.head_pairs(cfg).subset(range(0, 28, 3)),
        "heads at position 3": ja.masks.single_heads(cfg, position=3, seq_len=SEQ),
        "fractions, mixed kinds": ja.masks.from_components(
            cfg, [["0.1", "1.2@4"], ["1.3@6"], ["0.0", "0.3"], "1.1@0"], weight=0.4,
            seq_len=SEQ),
    }


@pytest.fixture(scope="module")
def replacements(tiny_model, prompts):
    return {"zero": ja.zero_replacement(tiny_model),
            "mean": ja.mean_replacement(tiny_model, prompts["reference"]),
            "resample": ja.resample_replacement(tiny_model, prompts["tokens"],
                                                jax.random.key(3))}


def make_metric(name, prompts):
    if name == "logit_diff":
        return ja.metrics.logit_diff(prompts["correct"], prompts["wrong"])
    return ja.metrics.kl_to_clean()


@pytest.fixture(scope="module")
def jax_sweep(tiny_model, prompts, mask_sets, replacements):
    """jaxablate.sweep over all the mask sets at once (one compilation), by
    (replacement, metric); returns {set name: [n, batch]}."""
    @functools.cache
    def run(replacement, metric):
        sets = list(mask_sets.values())
        values = ja.sweep(tiny_model, prompts["tokens"], ja.masks.concat(sets),
                          replacements[replacement], make_metric(metric, prompts))
        bounds = np.cumsum([0] + [len(s) for s in sets])
        return {name: values[a:b] for name, a, b in zip(mask_sets, bounds, bounds[1:])}
    return run


# ---------------------------------------------------------------------------------------------
# The clean model.


def test_clean_logits_match_hugging_face(tiny_hf, tmodel, prompts):
    tokens = torch.as_tensor(prompts["tokens"])
    with torch.no_grad():
        want = tiny_hf(tokens).logits
    torch.testing.assert_close(tmodel.logits(tokens.to(DEVICE)).cpu(), want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("per_position", [True, False])
def test_mean_z_matches_jaxablate(tiny_model, tmodel, prompts, per_position):
    want = ja.mean_replacement(tiny_model, prompts["reference"], per_position=per_position).z
    got = tmodel.mean_z(torch.as_tensor(prompts["reference"]).to(DEVICE), per_position)
    np.testing.assert_allclose(got.cpu().numpy(), np.asarray(want), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The sweep against jaxablate.sweep.


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("replacement, metric", [
    ("zero", "logit_diff"), ("mean", "logit_diff"), ("resample", "logit_diff"),
    ("mean", "kl_to_clean")])
def test_sweep_matches_jaxablate(tmodel, prompts, mask_sets, replacements, jax_sweep,
                                 replacement, metric, kernel):
    want = jax_sweep(replacement, metric)
    for name, mask_set in mask_sets.items():
        got = jk.sweep(tmodel, prompts["tokens"], mask_set, replacements[replacement],
                       make_metric(metric, prompts), kernel=kernel)
        assert got.shape == (len(mask_set), 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, want[name], **TOL, err_msg=name)
    # The ablations matter here: values spread over more than the tolerance, many times.
    assert np.ptp(want["single heads"]) > 0.05


@pytest.mark.parametrize("kernel", KERNELS)
def test_sweep_bfloat16_matches_jaxablate(tiny_hf, prompts, mask_sets, kernel):
    jmodel = ja.load_gpt2(tiny_hf, dtype="bfloat16")
    tmodel = jk.TorchGPT2.from_jaxablate(jmodel, DEVICE)
    assert tmodel.dtype == torch.bfloat16
    masks = ja.masks.concat([mask_sets["single heads"], mask_sets["head pairs"]])
    replacement, metric = ja.zero_replacement(jmodel), make_metric("logit_diff", prompts)
    want = ja.sweep(jmodel, prompts["tokens"], masks, replacement, metric)
    got = jk.sweep(tmodel, prompts["tokens"], masks, replacement, metric, kernel=kernel)
    np.testing.assert_allclose(got, want, **BF16_TOL)


def test_chunks_prefix_reuse_and_mask_forms_agree(tmodel, prompts, mask_sets, replacements):
    """Chunk size, prefix reuse and a dense stacked Mask instead of a MaskSet change nothing;
    the unfused op and the kernel agree on the same chunks."""
    masks = ja.masks.concat([mask_sets["head pairs"], mask_sets["single heads"]])
    args = (prompts["tokens"], masks, replacements["mean"], make_metric("logit_diff", prompts))
    base = jk.sweep(tmodel, *args, kernel="torch")
    variants = {
        "chunk 1": jk.sweep(tmodel, *args, 1, kernel="torch"),
        "chunk 7": jk.sweep(tmodel, *args, 7, kernel="torch"),
        "no prefix reuse": jk.sweep(tmodel, *args, kernel="torch", reuse_prefix=False),
        "triton, chunk 5": jk.sweep(tmodel, *args, 5, kernel="triton"),
    }
    stacked = masks.materialize(np.arange(len(masks)))
    variants["stacked Mask"] = jk.sweep(tmodel, args[0], stacked, *args[2:], kernel="torch")
    for name, values in variants.items():
        np.testing.assert_allclose(values, base, rtol=0, atol=1e-5, err_msg=name)


def test_masks_that_keep_everything_give_the_clean_metric(tiny_model, tmodel, prompts,
                                                          replacements):
    masks = ja.masks.from_components(tiny_model.cfg, [["0.1"], ["1.2", "0.0"]], weight=1.0)
    metric = make_metric("logit_diff", prompts)
    got = jk.sweep(tmodel, prompts["tokens"], masks, replacements["zero"], metric)
    clean = ja.clean_metric(tiny_model, prompts["tokens"], metric)
    np.testing.assert_allclose(got, np.broadcast_to(clean, got.shape), **TOL)


def test_dense_keep_multiplies_heads_and_positions(tiny_model, mask_sets):
    """heads then head_positions (jaxablate's two blends in a row) is one blend by the product."""
    masks = ja.masks.concat([mask_sets["single heads"], mask_sets["fractions, mixed kinds"]])
    idx = np.arange(len(masks))
    dense = masks.materialize(idx)
    want = np.asarray(dense.heads)[:, :, None, :] * np.asarray(dense.head_positions)
    np.testing.assert_array_equal(dense_keep(masks, idx, SEQ), want)
    assert dense_keep(mask_sets["single heads"], np.arange(3), SEQ).shape == (3, 2, 4)


# ---------------------------------------------------------------------------------------------
# The PyTorch scorers against jaxablate's JAX metrics.


class _MaxLogit(ja.metrics.Metric):
    """A metric the PyTorch path has no scorer for: scored by its JAX `score` on the host."""

    name = "max_logit"

    def prepare(self, tokens, cfg):
        return np.full((tokens.shape[0], 1), tokens.shape[1] - 1, np.int32), {}

    score = staticmethod(lambda logits, tokens, clean, data: logits.max())


@pytest.mark.parametrize("name", ["logit_diff", "accuracy_vs_wrong", "accuracy_top1", "prob",
                                  "loss", "kl_to_clean", "custom"])
def test_scorers_match_jax_scores(tiny_model, prompts, name):
    c, w = prompts["correct"], prompts["wrong"]
    metric = {"logit_diff": ja.metrics.logit_diff(c, w),
              "accuracy_vs_wrong": ja.metrics.accuracy(c, w),
              "accuracy_top1": ja.metrics.accuracy(c), "prob": ja.metrics.prob(c),
              "loss": ja.metrics.loss(), "kl_to_clean": ja.metrics.kl_to_clean(positions=None),
              "custom": _MaxLogit()}[name]
    tokens = prompts["tokens"]
    positions, data = metric.prepare(tokens, tiny_model.cfg)
    columns, data = vocab_columns(metric, data)
    n_cols = tiny_model.cfg.d_vocab if columns is None else columns.shape[1]
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 3, positions.shape[1], n_cols)).astype(np.float32)
    logits[0] = logits[1]  # ties between masks are fine; a clean row equal to a mask's too
    clean = rng.normal(size=(3, positions.shape[1], n_cols)).astype(np.float32)
    per_example = jax.vmap(metric.score, in_axes=(0, 0, 0, 0))
    want = jax.vmap(per_example, in_axes=(0, None, None, None))(
        jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(clean),
        {k: jnp.asarray(v) for k, v in data.items()})
    got = jk.scorer(metric)(torch.as_tensor(logits), torch.as_tensor(clean),
                            torch.as_tensor(tokens), {k: torch.as_tensor(np.asarray(v))
                                                      for k, v in data.items()})
    np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert np.ptp(np.asarray(want)) > 0 or name.startswith("accuracy")


# ---------------------------------------------------------------------------------------------
# Errors.


def test_errors(tiny_model, tmodel, prompts, replacements):
    cfg = tiny_model.cfg
    metric = make_metric("logit_diff", prompts)
    heads, zero = ja.masks.single_heads(cfg), replacements["zero"]
    with pytest.raises(ValueError, match="ablates heads only"):
        jk.sweep(tmodel, prompts["tokens"], ja.masks.single_mlps(cfg), zero, metric)
    with pytest.raises(ValueError, match="kernel: expected one of"):
        jk.sweep(tmodel, prompts["tokens"], heads, zero, metric, kernel="cuda")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        jk.sweep(tmodel, prompts["tokens"], heads, zero, metric, 0)
    with pytest.raises(ValueError, match="masks were built for sequence length 5"):
        jk.sweep(tmodel, prompts["tokens"], ja.masks.single_heads(cfg, position=1, seq_len=5),
                 zero, metric)
    with pytest.raises(ValueError, match=r"replacement z: expected \[layer, seq\|1"):
        jk.sweep(tmodel, prompts["tokens"], heads, torch.zeros(2, 1, 4, 7), metric)
    with pytest.raises(TypeError, match="metric: expected one of jaxablate.metrics"):
        jk.sweep(tmodel, prompts["tokens"], heads, zero, lambda logits: logits)
    with pytest.raises(ValueError, match="tokens: expected int"):
        jk.sweep(tmodel, prompts["tokens"][0], heads, zero, metric)


# ---------------------------------------------------------------------------------------------
# CUDA only: the compiled kernel in the sweep, against jaxablate on the same weights.


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_sweep_matches_jaxablate(tmodel, prompts, mask_sets, replacements, jax_sweep):
    assert tmodel.device.type == "cuda"
    want = jax_sweep("mean", "logit_diff")
    for name, mask_set in mask_sets.items():
        got = jk.sweep(tmodel, prompts["tokens"], mask_set, replacements["mean"],
                       make_metric("logit_diff", prompts), kernel="triton")
        np.testing.assert_allclose(got, want[name], **TOL, err_msg=name)
