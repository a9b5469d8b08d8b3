"""examples/ioi_gpt2.py, for its plumbing only: it runs end to end on a random
GPT-2-small-sized model (real weights need the hub), its BOS-prepended prompts give the logit
difference Hugging Face computes on the same tokens, and it prints the paper's figures."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import transformers
from conftest import REPO_ROOT, make_hf_model

import jaxablate as ja


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("ioi_gpt2", REPO_ROOT / "examples/ioi_gpt2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_on_a_random_gpt2_small(example, capsys):
    config = transformers.GPT2Config(n_layer=12, n_head=12, n_embd=768, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0)
    config._attn_implementation = "eager"
    hf = make_hf_model(config, seed=0)
    model = ja.load_gpt2(hf)
    assert example.main(["--templates", "0", "--n-prompts", "2", "--steps", "baseline",
                         "single"], model=model) == 0
    text = capsys.readouterr().out
    print(text)
    assert "(paper: 3.56)" in text
    plain = text.replace("*", "")  # the marks of heads in this run's top list
    for kind, heads in example.PAPER_CIRCUIT.items():
        assert f"  {kind}: {' '.join(heads)}\n" in plain
    assert sum(len(h) for h in example.PAPER_CIRCUIT.values()) == 26
    # The study's prompts: template 0 with BOS first; HF's logit difference on them.
    task = example.with_bos(ja.tasks.ioi(ja.load_tokenizer("gpt2"), 2, template=0, seed=0),
                            50256)
    assert (task.tokens[:, 0] == 50256).all()
    rows = np.arange(2)
    np.testing.assert_array_equal(task.tokens[rows, task.positions["IO"]], task.correct)
    with torch.no_grad():
        logits = hf(torch.as_tensor(task.tokens, dtype=torch.long)).logits.numpy()[:, -1]
    expected = float((logits[rows, task.correct] - logits[rows, task.wrong]).mean())
    stated = float(text.split("logit difference IO - S: ")[1].split()[0])
    assert stated == pytest.approx(expected, abs=1.5e-3)
    assert len([line for line in text.splitlines() if line.startswith("  ") and (
        "(not in the paper circuit)" in line or line.split()[-1] in {
            c.split()[-1] for c in example.PAPER_CIRCUIT})]) == 26
