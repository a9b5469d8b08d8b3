"""What `jaxablate study` does with each kind of failure: bad input is one line and status 2
(checked before the model loads where the options and files allow it), a NaN metric is one
line and status 1, and a bug from inside keeps its traceback (status 1 as a process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import jaxablate
from jaxablate.cli import options as cli_options
from jaxablate.model import loading, tokenizer
from jaxablate.cli.command import main
from jaxablate.engine.sweeping import NonFiniteMetricError
from jaxablate.errors import InputError

PACKAGE_PARENT = Path(jaxablate.__file__).resolve().parent.parent
study_module = sys.modules["jaxablate.study.protocol"]  # the real one (test_cli's fixture swaps it)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("jaxablate study: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, f"not one line:\n{err}"
    return err


def run_cli_process(args, code=""):
    """`python -m jaxablate.cli ARGS` in a child (after running `code`, which may patch the
    library), the way a user runs it; returns the CompletedProcess."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if not code:
        command = [sys.executable, "-m", "jaxablate.cli", *map(str, args)]
    else:  # runpy with alter_sys is what -m does, after the patch
        command = [sys.executable, "-c", textwrap.dedent(code) + textwrap.dedent(f"""
            import runpy, sys
            sys.argv = ["jaxablate", *{[str(a) for a in args]!r}]
            runpy.run_module("jaxablate.cli", run_name="__main__", alter_sys=True)
            """)]
    return subprocess.run(command, cwd=PACKAGE_PARENT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture
def nothing_loads(monkeypatch):
    """Loading model weights or a tokenizer fails the test: the refusal came too late."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the refusal")

    for module, name in ((jaxablate, "load_gpt2"), (loading, "load_gpt2"),
                         (loading, "load_folder"), (tokenizer, "load_tokenizer")):
        monkeypatch.setattr(module, name, forbidden)


def study_argv(tmp_path, *extra):
    return ["study", "--model", "bundled:induction", "--n-prompts", "4", "--out",
            str(tmp_path / "out"), "--quiet", "--no-cache", "--no-plots", *extra]


# -- bugs keep their traceback ---------------------------------------------------------------


@pytest.mark.parametrize("error", [ValueError("bug"), TypeError("bug"), KeyError("bug"),
                                   OSError("bug")], ids=lambda e: type(e).__name__)
def test_a_bug_inside_the_study_propagates_from_main(error, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(study_module, "clean_metric", broken)  # deep inside Study.run
    with pytest.raises(type(error), match="bug"):
        main(study_argv(tmp_path))
    assert "error:" not in capsys.readouterr().err  # not turned into a one-line "error"


def test_a_bug_inside_exits_1_with_its_traceback_as_a_process(tmp_path):
    done = run_cli_process(study_argv(tmp_path), code="""
        import jaxablate.study.protocol
        def broken(*args, **kwargs):
            raise ValueError("bug deep inside")
        jaxablate.study.protocol.clean_metric = broken
        """)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" in done.stderr and "ValueError: bug deep inside" in done.stderr
    assert "jaxablate study: error:" not in done.stderr, done.stderr


def test_python_m_jaxablate_cli_reports_usage_errors_in_one_line(tmp_path):
    # As __main__, cli.py is a second copy of the module: its errors must still be caught.
    done = run_cli_process(["study", "--prompts", tmp_path / "missing.jsonl", "--out",
                            tmp_path / "out"])
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.startswith("jaxablate study: error: --prompts: no such file")
    assert done.stderr.count("\n") == 1, done.stderr


def test_a_nan_metric_is_one_line_and_status_1(tmp_path, monkeypatch, capsys):
    def overflow(*args, **kwargs):
        raise NonFiniteMetricError(["0.1", "1.0"], np.array([[np.nan, 1.0], [2.0, np.inf]]))

    monkeypatch.setattr(study_module, "clean_metric", overflow)
    assert main(study_argv(tmp_path)) == 1
    err = one_line_error(capsys)
    assert "NaN or inf under 2 masks: 0.1 (examples 0), 1.0 (examples 1)" in err, err


def test_bad_input_from_inside_the_library_is_one_line_and_status_2(tmp_path, monkeypatch,
                                                                   capsys):
    def refuse(*args, **kwargs):
        raise InputError("the prompts are wrong;\nfix them")

    monkeypatch.setattr(study_module, "clean_metric", refuse)
    assert main(study_argv(tmp_path)) == 2
    assert "error: the prompts are wrong; fix them" in one_line_error(capsys)


# -- user files checked up front -------------------------------------------------------------


def test_a_prompts_folder_is_refused_up_front(tmp_path, nothing_loads, capsys):
    (tmp_path / "prompts").mkdir()
    argv = ["study", "--prompts", str(tmp_path / "prompts"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "--prompts: " in (err := one_line_error(capsys)) and "is a folder" in err, err


def test_a_binary_prompts_file_is_refused_up_front(tmp_path, nothing_loads, capsys):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n\xff\xfe\x00binary')
    assert main(["study", "--prompts", str(path), "--out", str(tmp_path / "out")]) == 2
    err = one_line_error(capsys)
    assert "is not UTF-8 text (byte 16)" in err and "save it as UTF-8" in err, err


def test_an_unreadable_prompts_file_is_refused_up_front(tmp_path, nothing_loads, monkeypatch,
                                                       capsys):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a b", "correct": " c", "wrong": " d"}\n')

    def denied(file, *args, **kwargs):  # what chmod 0 gives (except to root, who runs CI)
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(cli_options, "open", denied, raising=False)
    assert main(["study", "--prompts", str(path), "--out", str(tmp_path / "out")]) == 2
    err = one_line_error(capsys)
    assert "--prompts: cannot read" in err and "(Permission denied)" in err, err


def test_out_whose_sweeps_is_a_file_is_refused_up_front(tmp_path, nothing_loads, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sweeps").write_text("not a folder")
    assert main(study_argv(tmp_path)) == 2
    err = one_line_error(capsys)
    assert "sweeps" in err and "is a file, not a folder" in err, err


def test_a_damaged_config_json_is_one_line(tmp_path, tiny_dir, nothing_loads, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt2", "n_layer": ')
    assert main(["study", "--model", str(model), "--out", str(tmp_path / "out")]) == 2
    err = one_line_error(capsys)
    assert "config.json as JSON" in err and "download or convert the model again" in err, err


# -- a tokenizer that cannot fit the model, refused before anything loads --------------------


@pytest.mark.parametrize("task", [["--task", "ioi"], ["--prompts", "{prompts}"]],
                         ids=["ioi", "prompts"])
@pytest.mark.parametrize("model, vocab", [("bundled:induction", 64), ("{tiny}", 101)],
                         ids=["bundled", "folder"])
def test_gpt2_tokenizer_on_a_small_vocabulary_is_refused_before_loading(
        task, model, vocab, tmp_path, tiny_dir, nothing_loads, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a b", "correct": " c", "wrong": " d"}\n')
    where = {"prompts": prompts, "tiny": tiny_dir}
    argv = ["study", "--model", model.format(**where), *(a.format(**where) for a in task),
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = one_line_error(capsys)
    what = "--task ioi" if task[0] == "--task" else "--prompts"
    for needle in (f"{what} needs GPT-2's tokenizer", "the tokenizer has 50257 ids",
                   f"the model's vocabulary has {vocab}", "pass --model gpt2",
                   "GPT-2's 50257-token vocabulary", "--tokenizer with the model's own"):
        assert needle in err, (needle, err)


def test_a_tokenizer_folder_is_checked_before_the_weights_load(tmp_path, tiny_dir,
                                                                tokenizer_dir, monkeypatch,
                                                                capsys):
    def forbidden(*args, **kwargs):
        raise AssertionError("the weights were loaded before the refusal")

    monkeypatch.setattr(jaxablate, "load_gpt2", forbidden)
    argv = ["study", "--model", str(tiny_dir), "--task", "ioi", "--tokenizer",
            str(tokenizer_dir), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert "the tokenizer has 50257 ids but the model's vocabulary has 101" in err, err
    assert "pass the model's own tokenizer" in err, err


def test_neuron_layers_are_checked_before_the_weights_load(tmp_path, tiny_dir, nothing_loads,
                                                           capsys):
    argv = ["study", "--model", str(tiny_dir), "--components", "neurons", "--neuron-layers",
            "0,5", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "--neuron-layers [5] out of range; the model has layers 0-1" in \
        one_line_error(capsys)


def test_the_cli_persists_compiled_programs_where_jaxablate_cache_says(tiny_dir, tmp_path):
    # The real switch (the test session replaces it in-process, see conftest): a run fills
    # $JAXABLATE_CACHE; --no-cache leaves another folder empty.
    cache, other = tmp_path / "cache", tmp_path / "other"
    common = [sys.executable, "-m", "jaxablate.cli", "study", "--model", str(tiny_dir),
              "--n-prompts", "4", "--skip", "screening,cumulative,circuit,interactions,"
              "comparison", "--quiet", "--no-plots"]
    env = {**os.environ, "JAXABLATE_CACHE": str(cache)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    done = subprocess.run(common + ["--out", str(tmp_path / "a")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert cache.is_dir() and any(cache.iterdir())
    env["JAXABLATE_CACHE"] = str(other)
    done = subprocess.run(common + ["--out", str(tmp_path / "b"), "--no-cache"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not other.exists() or not any(other.iterdir())
