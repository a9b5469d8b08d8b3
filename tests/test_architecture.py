"""The house rules (docs/architecture.md), checked on the source: the import-linter contracts
in pyproject.toml (wings depend one way), no module imports the package root, no `_private`
name is imported from another module, no module is over 400 lines, and the public surface
`import jaxablate as ja` is all there.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

import jaxablate

PACKAGE = Path(jaxablate.__file__).resolve().parent
MAX_LINES = 400
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """(line, imported module, names) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = _module_name(path).split(".")
                base = base[: len(base) - node.level + (path.name == "__init__.py")]
                module = ".".join(base + ([module] if module else []))
            yield node.lineno, module, [alias.name for alias in node.names]


def test_import_linter_contracts_are_kept():
    lint = shutil.which("lint-imports")
    if lint is None:  # installed with the test extra: its absence is a broken environment
        pytest.fail("lint-imports not found: pip install -e '.[test]'")
    done = subprocess.run([lint], cwd=PACKAGE.parent, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout, done.stdout


def test_no_module_imports_the_package_root():
    # `import jaxablate` or `from jaxablate import ...` inside the package would make a wing
    # depend on the root, which imports every wing: import the module itself instead.
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}"
                 for path in MODULES if path != PACKAGE / "__init__.py"
                 for line, module, _ in _imports(path) if module == "jaxablate"]
    assert not offenders, offenders


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for path in MODULES:
        for line, module, names in _imports(path):
            if not module.startswith("jaxablate"):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} {private}")
    assert not offenders, offenders


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in MODULES
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_model_file_is_the_forward_and_its_blend_points():
    source = (PACKAGE / "model" / "gpt2.py").read_text()
    for sweep_word in ("resume", "trajectory", "reattend", "fori_loop"):
        assert sweep_word not in source, sweep_word


def test_the_public_surface_is_all_there():
    # DESIGN.md's names, as `import jaxablate as ja` users write them.
    import jaxablate as ja

    for name in ("load_gpt2", "forward", "run_with_cache", "Mask", "MaskSet", "Replacement",
                 "zero_replacement", "mean_replacement", "resample_replacement", "sweep",
                 "clean_metric", "planned_chunk_size", "attribute", "Attribution", "Study",
                 "StudyResult", "ResultsStore", "StoreMismatchError", "NonFiniteMetricError",
                 "InputError", "load_tokenizer", "save_gpt2", "attach_sae", "SAE",
                 "attention_scores", "parse_component", "Component", "GPT2", "GPT2Config",
                 "Task", "__version__"):
        assert hasattr(ja, name), name
    for name in ("single_heads", "head_pairs", "single_mlps", "single_neurons", "positions",
                 "from_components", "single_features", "concat", "from_stacked"):
        assert callable(getattr(ja.masks, name)), name
    for name in ("logit_diff", "accuracy", "prob", "loss", "kl_to_clean", "effect"):
        assert callable(getattr(ja.metrics, name)), name
    assert callable(ja.report.write_report) and callable(ja.tasks.ioi)
    import jaxablate.cli

    assert callable(jaxablate.cli.main)  # the `jaxablate` command (pyproject's script)
