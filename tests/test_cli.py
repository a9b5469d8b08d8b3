"""The `jaxablate` command line: help, bad input (one line, status 2), the study flow with a
stand-in Study, and one end-to-end run of the real Study on the tiny model."""

from __future__ import annotations

import copy
import json
import sys
import types

import pytest
from test_report import BASELINE, synthetic_result

from jaxablate.cli import ProgressBars, main

STUDY_OPTIONS = ("--model", "--task", "--prompts", "--tokenizer", "--template", "--n-prompts",
                 "--ablation", "--components", "--neuron-layers", "--seed", "--threshold",
                 "--out", "--json", "--no-plots", "--top", "--quiet", "--no-cache", "--screen",
                 "--ig-steps", "--screen-top-k", "--devices", "--distributed", "--coordinator",
                 "--num-processes", "--process-id")


class FakeResult:
    def __init__(self):
        self.data = synthetic_result()

    def to_dict(self):
        return copy.deepcopy(self.data)

    def table(self, k):
        return f"RANKED TABLE top {k}"


class FakeStudy:
    """Records how the CLI built it; reports progress over two 'sweeps'."""

    calls: list = []

    def __init__(self, model, task=None, **kwargs):
        FakeStudy.calls.append((model, task, kwargs))
        self.progress = kwargs.get("progress")

    def run(self, **kwargs):
        FakeStudy.calls[-1][2]["run"] = kwargs
        if self.progress is not None:
            for step, total in (("single", 4), ("cumulative", 2)):
                for done in range(total + 1):
                    self.progress(step, done, total)
        return FakeResult()


def write_prompts(path):
    pairs = [("Mary", "John"), ("Tom", "James"), ("Anna", "Paul"), ("Kate", "Mark")]
    lines = [json.dumps({"prompt": f"When {a} and {b} went to the store, {b} gave a drink to",
                         "correct": f" {a}", "wrong": f" {b}"}) for a, b in pairs]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fake_study(monkeypatch):
    """Put FakeStudy where the CLI imports Study from."""
    module = types.ModuleType("jaxablate.study")
    module.Study = FakeStudy
    monkeypatch.setitem(sys.modules, "jaxablate.study", module)
    FakeStudy.calls = []
    return FakeStudy


def test_help_names_the_command_and_its_options(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert "study" in top and "ablation" in top.lower()
    assert main(["study", "--help"]) == 0
    text = capsys.readouterr().out
    for option in STUDY_OPTIONS:
        assert option in text, f"{option} missing from study --help"
    assert "examples:" in text and "jaxablate study --model gpt2 --task ioi" in text
    assert main(["--version"]) == 0
    assert "jaxablate 0." in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    ([], "required: COMMAND"),
    (["study", "--components", "heads,attn"], "unknown component kind 'attn'"),
    (["study", "--n-prompts", "0"], "expected a number >= 1"),
    (["study", "--ablation", "half"], "invalid choice: 'half'"),
    (["study", "--neuron-layers", "a,b"], "comma-separated layer numbers"),
    (["study", "--skip", "everything"], "unknown step 'everything'"),
    (["study", "--screen", "shap"], "invalid choice: 'shap'"),
    (["study", "--ig-steps", "0"], "expected a number >= 1"),
    (["study", "--devices", "0"], "expected a number >= 1"),
    (["study", "--coordinator", "localhost:1"], "go with --distributed"),
    (["study", "--distributed", "--coordinator", "localhost:1"], "needs all of --coordinator"),
    (["study", "--distributed", "--coordinator", "h:1", "--num-processes", "2",
      "--process-id", "2"], "--process-id must be in [0, 2)"),
    (["study", "--distributed", "--overwrite"], "--overwrite cannot be used with"),
    (["study", "--target", "1.5"], "fraction in (0, 1]"),
    (["study", "--prompts", "no-such-file.jsonl"], "no such file"),
    (["study", "--prompts", "{prompts}", "--task", "ioi"], "--prompts replaces --task"),
    (["study", "--prompts", "{prompts}", "--n-prompts", "8"], "--n-prompts"),
    (["study", "--template", "3"], "--template applies to --task ioi"),
    (["study", "--tokenizer", "gpt2"], "--tokenizer applies to --task ioi"),
    (["study", "--neuron-layers", "0"], "--neuron-layers applies only"),
    (["study", "--out", "{prompts}"], "is not a folder"),
    (["study", "--model", "{missing}"], "is not a folder"),
    (["study", "--model", "{tiny}", "--components", "neurons", "--neuron-layers", "0,5"],
     "out of range"),
])
def test_bad_input_is_one_line_and_status_2(argv, message, tmp_path, tiny_dir, fake_study,
                                            capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a b", "correct": " c", "wrong": " d"}\n')
    where = {"prompts": str(prompts), "missing": str(tmp_path / "nothing" / "here"),
             "tiny": str(tiny_dir)}
    argv = [a.format(**where) for a in argv]
    if argv and "--out" not in argv:  # never write into the working directory
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.strip().count("\n") == 0, f"expected one line, got:\n{err}"
    assert "Traceback" not in err and fake_study.calls == []


def test_tokenizer_must_fit_the_model(tmp_path, tiny_dir, tokenizer_dir, fake_study, capsys):
    argv = ["study", "--model", str(tiny_dir), "--task", "ioi", "--tokenizer",
            str(tokenizer_dir), "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "vocabulary has 101" in capsys.readouterr().err


def test_ioi_and_prompts_build_their_tasks(tmp_path, gpt2_vocab_dir, tokenizer_dir,
                                          fake_study):
    common = ["--model", str(gpt2_vocab_dir), "--tokenizer", str(tokenizer_dir), "--out",
              str(tmp_path), "--no-plots", "--quiet", "--no-cache"]
    assert main(["study", "--task", "ioi", "--template", "16", "--n-prompts", "6"]
                + common) == 0
    assert main(["study", "--prompts", str(write_prompts(tmp_path / "p.jsonl"))] + common) == 0
    (_, ioi, _), (_, mine, _) = fake_study.calls
    assert ioi.name == "ioi" and ioi.info["template"] == 16 and len(ioi) == 6
    assert len(mine) == 4 and mine.metric.name == "logit_diff"


def test_study_options_reach_the_study_and_the_report(tmp_path, tiny_dir, fake_study, capsys):
    out = tmp_path / "report"
    argv = ["study", "--model", str(tiny_dir), "--n-prompts", "8", "--ablation", "zero",
            "--components", "heads,mlp,neurons", "--neuron-layers", "1", "--threshold", "0.5",
            "--seed", "3", "--top", "5", "--out", str(out), "--no-cache", "--target", "0.9",
            "--interaction-top-k", "3", "--skip", "interactions,comparison", "--screen",
            "grad", "--ig-steps", "4", "--screen-top-k", "6", "--devices", "1"]
    assert main(argv) == 0
    (model, task, kwargs), = fake_study.calls
    assert model.cfg.n_layers == 2 and task.name == "induction" and len(task) == 8
    assert task.info["seed"] == 3 and task.tokens.max() < model.cfg.d_vocab
    assert {k: kwargs[k] for k in ("ablation", "components", "neuron_layers", "threshold",
                                   "seed", "devices")} == {
        "ablation": "zero", "components": ("heads", "mlps", "neurons"),
        "neuron_layers": (1,), "threshold": 0.5, "seed": 3, "devices": 1}
    assert callable(kwargs["progress"]) and kwargs["model_name"] == str(tiny_dir)
    assert kwargs["run"] == {"target": 0.9, "top_k": 3,
                             "steps": ("baseline", "single", "screening", "cumulative",
                                       "circuit"),
                             "screen_method": "grad", "screen_steps": 4, "screen_top_k": 6}
    captured = capsys.readouterr()
    assert "RANKED TABLE top 5" in captured.out and "model: " in captured.out
    assert "summary.md" in captured.out
    assert "single:" in captured.err and "cumulative:" in captured.err  # progress bars
    for name in ("study.json", "single.csv", "summary.md", "single_heads.png"):
        assert (out / name).is_file(), name


def test_json_goes_to_stdout_alone(tmp_path, tiny_dir, fake_study, capsys):
    argv = ["study", "--model", str(tiny_dir), "--n-prompts", "8", "--json", "--no-plots",
            "--quiet", "--out", str(tmp_path), "--no-cache"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["baseline"]["mean"] == BASELINE
    assert data == json.loads((tmp_path / "study.json").read_text())
    assert "model: " in captured.err and "single:" not in captured.err
    assert not list(tmp_path.glob("*.png"))


def test_progress_bars_restart_per_sweep(capsys):
    bars = ProgressBars()
    for step, total in (("single", 3), ("single", 3), ("circuit", 4), ("circuit", 3)):
        for done in range(1, total + 1):  # the sweep reports after each chunk
            bars(step, done, total)
        if step == "single":
            assert bars.bar.total == bars.bar.n == bars.count
    assert (bars.step, bars.count, bars.bar.total, bars.bar.n) == ("circuit", 7, 7, 7)
    bars.close()
    assert bars.bar is None
    err = capsys.readouterr().err
    assert "single: 100%" in err and "6/6" in err and "7/7" in err, err
    quiet = ProgressBars(enabled=False)
    quiet("single", 1, 2)
    assert quiet.bar is None


def test_end_to_end_on_the_tiny_model(tmp_path, tiny_dir, capsys):
    pytest.importorskip("jaxablate.study")
    out = tmp_path / "report"
    argv = ["study", "--model", str(tiny_dir), "--task", "induction", "--n-prompts", "8",
            "--out", str(out), "--json", "--quiet", "--no-cache"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == json.loads((out / "study.json").read_text())
    heads = [r for r in data["single"] if r["kind"] == "head"]
    assert sorted(r["component"] for r in heads) == [f"{l}.{h}" for l in range(2)
                                                     for h in range(4)]
    assert data["meta"]["n_prompts"] == 8 and data["meta"]["ablation"] == "mean"
    for name in ("single.csv", "single.parquet", "per_example.parquet", "summary.md",
                 "single_heads.png", "screening.csv", "screening.parquet", "screening.png"):
        assert (out / name).is_file(), name
    text = (out / "summary.md").read_text()
    assert "clean baseline" in text and heads[0]["component"] in text
    screening = data["screening"]
    assert screening["method"] == "ig" and screening["steps"] == 16
    assert screening["top_k"] == 8 and "## Gradient screening" in text


def test_end_to_end_on_your_own_prompts(tmp_path, gpt2_vocab_dir, tokenizer_dir, capsys):
    pytest.importorskip("jaxablate.study")
    out = tmp_path / "report"
    argv = ["study", "--model", str(gpt2_vocab_dir), "--prompts",
            str(write_prompts(tmp_path / "p.jsonl")), "--tokenizer", str(tokenizer_dir),
            "--ablation", "zero", "--components", "heads,mlps", "--skip",
            "interactions,comparison,screening", "--out", str(out), "--no-plots", "--quiet",
            "--no-cache"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "study.json").read_text())
    assert data["meta"]["metric"] == "logit_diff" and data["meta"]["ablation"] == "zero"
    assert len(data["single"]) == 2 * 4 + 2 and data["interactions"] is None
    assert data["screening"] is None and not (out / "screening.csv").exists()
    top = min(data["single"], key=lambda r: r["rank"])
    assert top["component"] in printed and "report:" in printed
    assert (out / "cumulative.csv").is_file() and not (out / "interactions.csv").exists()


def test_more_devices_than_there_are_is_one_line(tmp_path, tiny_dir, capsys):
    argv = ["study", "--model", str(tiny_dir), "--n-prompts", "4", "--devices", "3", "--out",
            str(tmp_path), "--quiet", "--no-cache"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "devices: expected a count in [1, 1]" in err and err.strip().count("\n") == 0, err
