"""Shared fixtures: a tiny random GPT-2 in Hugging Face, jaxablate and TransformerLens form.

Nothing here touches the network. Every model is built from a seeded random initialisation;
biases and LayerNorm parameters (zero / one after HF's init) are randomised too, so a swapped
bias or a dropped LayerNorm gain changes the logits and the equivalence tests catch it.

Strict JAX numerics for the whole suite (as in Equinox's tests/conftest.py): implicit rank
promotion raises, and dtype promotion is strict (no silent float32 + bfloat16 -> float32).
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import jax
import pytest

# Test modules import these from conftest; they live in the package so the benchmark shares them.
from jaxablate.model.reference import random_hf_model as make_hf_model  # noqa: F401
from jaxablate.model.reference import tl_from_hf  # noqa: F401
from jaxablate.model.tokenizer import GPT2_TOKENIZER_DIR as BUNDLED_TOKENIZER_DIR

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

REPO_ROOT = Path(__file__).resolve().parent.parent
# The real GPT-2 tokenizer files ship inside the package: no test needs anything beside the repo.
TOKENIZER_DIR = BUNDLED_TOKENIZER_DIR

# Small enough for 2 CPU cores, large enough to have several layers, heads and a real causal mask.
TINY = dict(n_layer=2, n_head=4, n_embd=32, vocab_size=101, n_positions=64)


def tiny_hf_config(**overrides):
    """The tiny test config as a `transformers.GPT2Config` (eager attention, no dropout).

    initializer_range 0.2 (HF's default is 0.02) makes attention patterns far from uniform
    and logits of order 1, so a 1e-4 tolerance is a real constraint.
    """
    import transformers

    kwargs = dict(
        TINY,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    kwargs.update(overrides)
    config = transformers.GPT2Config(**kwargs)
    config._attn_implementation = "eager"  # transformers 5: sdpa drifts by ~1e-3
    return config



@pytest.fixture(scope="session")
def tiny_hf():
    """The tiny random HF `GPT2LMHeadModel` (eval mode, seed 0)."""
    return make_hf_model(tiny_hf_config(), seed=0)


@pytest.fixture(scope="session")
def tiny_dir(tiny_hf, tmp_path_factory):
    """A folder with the tiny model as `save_pretrained` writes it (config + safetensors)."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_hf.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    """The tiny model loaded by jaxablate from `tiny_dir` (float32)."""
    import jaxablate

    return jaxablate.load_gpt2(tiny_dir)


@pytest.fixture(scope="session")
def tiny_tl(tiny_hf):
    """The tiny model as a TransformerLens `HookedTransformer` (same weights, nothing folded)."""
    return tl_from_hf(tiny_hf)


@pytest.fixture(scope="session")
def tokenizer_dir():
    """The real GPT-2 tokenizer files (vocab.json + merges.txt) shipped in the package."""
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def gpt2_vocab_dir(tmp_path_factory):
    """A tiny random GPT-2 with GPT-2's own vocabulary (saved like `save_pretrained`), so the
    real tokenizer fits it."""
    folder = tmp_path_factory.mktemp("tiny-gpt2-vocab")
    make_hf_model(tiny_hf_config(vocab_size=50257, eos_token_id=50256, bos_token_id=50256),
                  seed=1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def triton_interpreter():
    """Without a GPU, run Triton kernels in Triton's CPU interpreter (for the module that asks,
    with `pytestmark = pytest.mark.usefixtures("triton_interpreter")`)."""
    import torch

    with pytest.MonkeyPatch.context() as mp:
        if not torch.cuda.is_available():
            mp.setenv("TRITON_INTERPRET", "1")
        yield



@pytest.fixture(autouse=True, scope="session")
def no_persistent_compilation_cache():
    """In-process CLI runs must not turn on JAX's persistent compilation cache for the rest of
    the test session (a process-wide setting, pointed at the user's ~/.cache): the CLI's
    switch is replaced here, and `test_cli_errors.py` checks the real one in a subprocess."""
    from jaxablate.cli import run as cli_study

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_study, "_enable_compilation_cache", lambda: None)
        yield


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Drop JAX's compiled programs after each test module. Every XLA CPU executable holds
    memory mappings, and the suite compiles thousands of shapes: kept all session long they
    reached the kernel's limit (vm.max_map_count, 65,530) and XLA crashed with a segmentation
    fault in a later compile."""
    yield
    jax.clear_caches()


@contextlib.contextmanager
def nothing_compiles():
    """Reaching any jitted entry point of the engine or the forward pass fails the test:
    bad input must be refused on the host first."""
    engine = importlib.import_module("jaxablate.engine.sweeping")
    forward = importlib.import_module("jaxablate.model.batched")

    def forbidden(*args, **kwargs):
        raise AssertionError("a jitted function was reached: the input was not checked first")

    with pytest.MonkeyPatch.context() as mp:
        for module, name in ((engine, "_run_chunk"), (engine, "_clean_pass"),
                             (engine, "_run_trajectories"), (forward, "_forward")):
            mp.setattr(module, name, forbidden)
        yield

