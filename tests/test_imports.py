"""The JAX path never imports torch (DESIGN.md: "The JAX path needs no torch")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jaxablate

# The folder that holds the jaxablate package under test, put first on the child's path.
PACKAGE_PARENT = Path(jaxablate.__file__).resolve().parent.parent


def run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=PACKAGE_PARENT,
                          env=env, capture_output=True, text=True, timeout=120)


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.stdout.strip().endswith("OK"), result.stdout


def test_import_does_not_import_torch():
    check(run_python(f"""
        import sys
        import jaxablate
        assert jaxablate.__file__.startswith({str(PACKAGE_PARENT)!r}), jaxablate.__file__
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not loaded, loaded
        print("OK")
    """))


def test_load_folder_and_forward_do_not_import_torch(tiny_dir):
    check(run_python(f"""
        import sys
        import numpy as np
        import jaxablate
        model = jaxablate.load_gpt2({str(tiny_dir)!r})
        logits, cache = jaxablate.run_with_cache(model, np.array([[1, 2, 3]]), names=("z",))
        logits = jaxablate.forward(model, np.array([[1, 2, 3]]), positions=-1)
        assert logits.shape == (1, 1, model.cfg.d_vocab), logits.shape
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not loaded, loaded
        print("OK")
    """))
