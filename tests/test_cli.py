"""The `jaxablate` command line: help, bad input (one line, status 2), the study flow with a
stand-in Study, the report folder rules (--out, --overwrite; and write_report's own check),
and end-to-end runs of the real Study on the tiny models. How each kind of failure is
reported is tests/test_cli_errors.py."""

from __future__ import annotations

import copy
import json
import sys
import types

import numpy as np
import pytest
from test_report import BASELINE, synthetic_result

import jaxablate
from jaxablate.report import files as report
from jaxablate.cli.command import main
from jaxablate.engine.bars import ProgressBars
from jaxablate.errors import InputError
from jaxablate.report.files import REPORT_MARKER, write_report

STUDY_OPTIONS = ("--model", "--task", "--prompts", "--tokenizer", "--template", "--n-prompts",
                 "--ablation", "--components", "--neuron-layers", "--seed", "--threshold",
                 "--out", "--json", "--no-plots", "--top", "--quiet", "--no-cache", "--screen",
                 "--ig-steps", "--screen-top-k", "--devices", "--distributed", "--coordinator",
                 "--num-processes", "--process-id", "--compare", "--dry-run", "--no-bos")


class FakeResult:
    """The synthetic result, with the meta a real Study would record for these options and
    only the sections of the steps that ran."""

    def __init__(self, meta=None, steps=None):
        self.data = synthetic_result()
        self.data["meta"].update(meta or {})
        if steps is not None:
            for section in ("screening", "cumulative", "circuit", "interactions",
                            "ablation_comparison"):
                if section not in steps:
                    self.data[section] = None

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
        self.task, self.kwargs = task, kwargs

    def meta(self):
        """What Study.meta records of the settings (the report folder's fingerprint)."""
        k, task = self.kwargs, self.task
        threshold = k.get("threshold")
        return {"model": k.get("model_name"), "task": {"name": task.name, **task.info},
                "ablation": k.get("ablation", "mean"), "metric": task.metric.name,
                "seed": k.get("seed", 0), "n_prompts": len(task),
                "components": list(k.get("components", ("heads",))),
                "neuron_layers": (None if k.get("neuron_layers") is None
                                  else list(k["neuron_layers"])),
                "threshold": 0.3125 if threshold is None else threshold,
                "threshold_rule": ("0.1 x |baseline mean|" if threshold is None
                                   else "given (threshold=)"),
                "optimal": {"objective": k.get("oa_objective", "kl_to_clean"),
                            "steps": k.get("oa_steps", 100),
                            "learning_rate": k.get("oa_lr", 0.01)}}

    def run(self, **kwargs):
        FakeStudy.calls[-1][2]["run"] = kwargs
        if self.progress is not None:
            for step, total in (("single", 4), ("cumulative", 2)):
                for done in range(total + 1):
                    self.progress(step, done, total)
        return FakeResult(self.meta(), kwargs.get("steps"))


def write_prompts(path):
    pairs = [("Mary", "John"), ("Tom", "James"), ("Anna", "Paul"), ("Kate", "Mark")]
    lines = [json.dumps({"prompt": f"When {a} and {b} went to the store, {b} gave a drink to",
                         "correct": f" {a}", "wrong": f" {b}"}) for a, b in pairs]
    path.write_text("\n".join(lines) + "\n")
    return path


class FakePlan:
    """What the CLI reads of a `StudyPlan` (the real one needs a real Study)."""

    seconds = upper_seconds = planning_s = 1.0
    steps: list = []  # no optimal fit in the plan: the comparison keeps its four types

    def lines(self):
        return ["plan: FAKE", "estimated time: ~1 s"]

    def progress_totals(self):
        return {"single": 4, "cumulative": 2}

    def bounded_labels(self):
        return set()


@pytest.fixture
def fake_study(monkeypatch):
    """Put FakeStudy where the CLI imports Study from (and a plan of it where the CLI
    imports plan_study from)."""
    module = types.ModuleType("jaxablate.study.protocol")
    module.Study = FakeStudy
    monkeypatch.setitem(sys.modules, "jaxablate.study.protocol", module)
    estimate = types.ModuleType("jaxablate.study.estimate")
    estimate.plan_study = lambda study, **settings: FakePlan()
    monkeypatch.setitem(sys.modules, "jaxablate.study.estimate", estimate)
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
    (["study", "--compare", "zero,half"], "unknown ablation type 'half'"),
    (["study", "--compare", "mean"], "two or more ablation types"),
    (["study", "--compare", "zero,mean", "--skip", "comparison"], "--skip leaves out"),
    (["study", "--compare", "zero,mean", "--oa-steps", "5"], "--oa-steps applies only"),
    (["study", "--ig-steps", "0"], "expected a number >= 1"),
    (["study", "--devices", "0"], "expected a number >= 1"),
    (["study", "--coordinator", "localhost:1"], "go with --distributed"),
    (["study", "--distributed", "--coordinator", "localhost:1"], "needs all of --coordinator"),
    (["study", "--distributed", "--coordinator", "h:1", "--num-processes", "2",
      "--process-id", "2"], "--process-id must be in [0, 2)"),
    (["study", "--distributed", "--overwrite"], "--overwrite cannot be used with"),
    (["study", "--target", "1.5"], "fraction in (0, 1]"),
    (["study", "--seed", "-1"], "expected a number >= 0, got -1"),
    (["study", "--prompts", "no-such-file.jsonl"], "no such file"),
    (["study", "--prompts", "{prompts}", "--task", "ioi"], "--prompts replaces --task"),
    (["study", "--prompts", "{prompts}", "--n-prompts", "8"], "--n-prompts"),
    (["study", "--template", "3"], "--template applies to --task ioi and ioi-toy"),
    (["study", "--task", "ioi-toy", "--tokenizer", "gpt2"], "ioi-toy uses token ids"),
    (["study", "--no-bos"], "--no-bos applies to --task ioi and --prompts only"),
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
    common = ["--model", str(gpt2_vocab_dir), "--tokenizer", str(tokenizer_dir),
              "--no-plots", "--quiet", "--no-cache"]
    assert main(["study", "--task", "ioi", "--template", "16", "--n-prompts", "6", "--out",
                 str(tmp_path / "ioi")] + common) == 0
    assert main(["study", "--prompts", str(write_prompts(tmp_path / "p.jsonl")), "--out",
                 str(tmp_path / "prompts")] + common) == 0
    (_, ioi, _), (_, mine, _) = fake_study.calls
    assert ioi.name == "ioi" and ioi.info["template"] == 16 and len(ioi) == 6
    assert len(mine) == 4 and mine.metric.name == "logit_diff"
    # BOS first by default, as TL's to_tokens; --no-bos the bare prompts, one token shorter
    assert ioi.info["prepend_bos"] and mine.info["prepend_bos"]
    assert (ioi.tokens[:, 0] == 50256).all() and (mine.tokens[:, 0] == 50256).all()
    assert main(["study", "--task", "ioi", "--template", "16", "--n-prompts", "6", "--out",
                 str(tmp_path / "ioi"), "--no-bos"] + common) == 2  # other settings there
    assert main(["study", "--task", "ioi", "--template", "16", "--n-prompts", "6", "--out",
                 str(tmp_path / "ioi-bare"), "--no-bos"] + common) == 0
    bare = fake_study.calls[-1][1]
    assert not bare.info["prepend_bos"] and bare.tokens.shape[1] == ioi.tokens.shape[1] - 1
    np.testing.assert_array_equal(bare.tokens, ioi.tokens[:, 1:])


def test_ioi_toy_runs_on_the_toy_model_by_default(tmp_path, fake_study):
    argv = ["study", "--task", "ioi-toy", "--template", "2", "--n-prompts", "6", "--out",
            str(tmp_path / "toy"), "--no-plots", "--quiet", "--no-cache"]
    assert main(argv) == 0
    assert main(argv) == 0  # the same settings again: the fingerprint matches its own meta
    (model, task, kwargs), _ = fake_study.calls
    expected = jaxablate.tasks.ioi_toy(6, template=2, seed=0)
    assert kwargs["model_name"] == "bundled:ioi_toy" and model.cfg.n_layers == 4
    assert task.name == "ioi_toy" and task.info["template"] == 2
    np.testing.assert_array_equal(task.tokens, expected.tokens)
    assert main(argv + ["--no-bos"]) == 2


def test_study_options_reach_the_study_and_the_report(tmp_path, tiny_dir, fake_study, capsys):
    out = tmp_path / "report"
    argv = ["study", "--model", str(tiny_dir), "--n-prompts", "8", "--ablation", "zero",
            "--components", "heads,neurons", "--neuron-layers", "1", "--threshold", "0.5",
            "--seed", "3", "--top", "5", "--out", str(out), "--no-cache", "--target", "0.9",
            "--interaction-top-k", "3", "--skip", "interactions,comparison", "--screen",
            "grad", "--ig-steps", "4", "--screen-top-k", "6", "--devices", "1"]
    assert main(argv) == 0
    (model, task, kwargs), = fake_study.calls
    assert model.cfg.n_layers == 2 and task.name == "induction" and len(task) == 8
    assert task.info["seed"] == 3 and task.tokens.max() < model.cfg.d_vocab
    assert {k: kwargs[k] for k in ("ablation", "components", "neuron_layers", "threshold",
                                   "seed", "devices")} == {
        "ablation": "zero", "components": ("heads", "neurons"),
        "neuron_layers": (1,), "threshold": 0.5, "seed": 3, "devices": 1}
    assert callable(kwargs["progress"]) and kwargs["model_name"] == str(tiny_dir)
    assert kwargs["run"] == {"target": 0.9, "top_k": 3,
                             "steps": ("baseline", "single", "screening", "cumulative",
                                       "circuit"),
                             "screen_method": "grad", "screen_steps": 4, "screen_top_k": 6,
                             "types": ("zero", "mean", "resample", "optimal"),
                             "circuit_ablation": "same"}
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
    pytest.importorskip("jaxablate.study.protocol")
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
    pytest.importorskip("jaxablate.study.protocol")
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


# -- the report folder: never replace what jaxablate did not write ---------------------------


def report_run(tmp_path, *extra):
    """`jaxablate study` (the fake Study) into tmp_path/report; returns the status."""
    return main(["study", "--n-prompts", "8", "--out", str(tmp_path / "report"), "--quiet",
                 "--no-cache", "--no-plots", *extra])


def record(folder):
    return json.loads((folder / REPORT_MARKER).read_text())


def contents(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def model_never_loads(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the --out check")

    monkeypatch.setattr(jaxablate, "load_gpt2", forbidden)


def one_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("jaxablate study: error: ") and err.count("\n") == 1, err
    return err


def test_report_folder_fresh_or_empty_is_written_with_a_record(tmp_path, fake_study):
    assert report_run(tmp_path) == 0
    out = tmp_path / "report"
    marker = record(out)
    written = {p.name for p in out.iterdir() if p.is_file()} - {REPORT_MARKER}
    assert marker["complete"] and set(marker["files"]) == written and "summary.md" in written
    assert marker["settings"]["model"] == "bundled:induction"
    assert (marker["settings"]["ablation"], marker["settings"]["n_prompts"]) == ("mean", 8)
    (tmp_path / "empty").mkdir()
    assert main(["study", "--out", str(tmp_path / "empty"), "--quiet", "--no-cache",
                 "--no-plots"]) == 0
    assert (tmp_path / "empty" / "summary.md").is_file()


@pytest.mark.parametrize("name", ["summary.md", "study.json", "single.csv", "screening.png"])
def test_report_folder_refuses_a_file_jaxablate_did_not_write(name, tmp_path, fake_study,
                                                              model_never_loads, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / name).write_text("my own notes")
    for extra in ((), ("--overwrite",)):  # --overwrite replaces only jaxablate's own files
        assert report_run(tmp_path, *extra) == 2
        err = one_line(capsys)
        assert (f"--out {out}: {name} was not written by jaxablate (the folder has no "
                "record .jaxablate-report.json)") in err, err
        assert "move the file out of the folder or choose another --out" in err, err
    assert (out / name).read_text() == "my own notes" and fake_study.calls == []


def test_report_folder_same_settings_again_replaces_the_report(tmp_path, fake_study, capsys):
    assert report_run(tmp_path) == 0
    assert report_run(tmp_path) == 0  # the resume case: no flag needed
    assert len(fake_study.calls) == 2 and record(tmp_path / "report")["complete"]


def test_report_folder_of_other_settings_is_refused_unless_overwrite(
        tmp_path, fake_study, monkeypatch, capsys):
    out = tmp_path / "report"
    assert report_run(tmp_path) == 0
    before = contents(out)
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(jaxablate, "load_gpt2", lambda *a, **k: pytest.fail("model loaded"))
        assert report_run(tmp_path, "--ablation", "zero") == 2
        err = one_line(capsys)
        assert (f"--out {out} holds the report of a run with other settings (ablation: mean "
                "there, zero now); pass --overwrite to start afresh (it replaces that "
                f"report's files and empties {out / 'sweeps'}; files jaxablate did not write "
                "are kept), or choose another --out") in err, err
        assert "or choose another --out" in err
        assert report_run(tmp_path, "--seed", "3", "--components", "heads,mlps") == 2
        assert "(components: heads there, heads,mlps now; seed: 0 there, 3 now)" in \
            one_line(capsys)
    assert contents(out) == before and len(fake_study.calls) == 1
    assert report_run(tmp_path, "--ablation", "zero", "--overwrite") == 0
    assert json.loads((out / "study.json").read_text())["meta"]["ablation"] == "zero"
    assert record(out)["settings"]["ablation"] == "zero"


def test_report_folder_files_of_other_names_are_left_alone(tmp_path, fake_study):
    out = tmp_path / "report"
    (out / "mine").mkdir(parents=True)
    (out / "notes.txt").write_text("keep")
    (out / "summary.md.orig").write_text("keep")
    (out / "mine" / "summary.md").write_text("keep")  # not in the report folder itself
    assert report_run(tmp_path) == 0
    assert report_run(tmp_path, "--ablation", "zero", "--overwrite") == 0
    for name in ("notes.txt", "summary.md.orig", "mine/summary.md"):
        assert (out / name).read_text() == "keep", name
    assert {"notes.txt", "summary.md.orig"}.isdisjoint(record(out)["files"])


def test_report_folder_refuses_a_report_file_changed_since(tmp_path, fake_study, capsys):
    out = tmp_path / "report"
    assert report_run(tmp_path) == 0
    (out / "summary.md").write_text("# my edited summary\n")
    capsys.readouterr()
    for extra in ((), ("--overwrite",)):
        assert report_run(tmp_path, *extra) == 2
        assert "summary.md changed since jaxablate wrote it" in one_line(capsys)
    assert (out / "summary.md").read_text() == "# my edited summary\n"


def test_report_folder_drops_the_earlier_reports_files_it_no_longer_writes(tmp_path,
                                                                           fake_study):
    out = tmp_path / "report"
    assert report_run(tmp_path) == 0
    assert (out / "interactions.csv").is_file()
    assert report_run(tmp_path, "--skip", "interactions") == 0
    assert not (out / "interactions.csv").exists()
    assert "interactions.csv" not in record(out)["files"]
    assert report_run(tmp_path) == 0 and (out / "interactions.csv").is_file()


def test_write_report_never_replaces_what_it_did_not_write(tmp_path):
    result = synthetic_result(full=False)
    folder = tmp_path / "report"
    write_report(result, folder, plots=False)
    write_report(result, folder, plots=False)  # the same settings again: replaced
    other = copy.deepcopy(result)
    other["meta"]["ablation"] = "zero"
    with pytest.raises(InputError, match=r"report folder .* holds the report of a run with "
                       r"other settings \(ablation: mean there, zero now\); pass "
                       r"overwrite=True .* or pass another folder"):
        write_report(other, folder, plots=False)
    assert json.loads((folder / "study.json").read_text())["meta"]["ablation"] == "mean"
    (folder / "notes.md").write_text("mine")
    write_report(other, folder, plots=False, overwrite=True)
    assert record(folder)["settings"]["ablation"] == "zero"
    (folder / "single.csv").write_text("edited")
    with pytest.raises(InputError, match="single.csv changed since jaxablate wrote it"):
        write_report(other, folder, plots=False, overwrite=True)
    assert (folder / "single.csv").read_text() == "edited"
    assert (folder / "notes.md").read_text() == "mine"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "study.json").write_text("{}")
    with pytest.raises(InputError, match=r"study.json was not written by jaxablate \(the "
                       r"folder has no record \.jaxablate-report\.json\), and a report would "
                       r"replace it; move the file out of the folder or pass another folder"):
        write_report(result, foreign, plots=False, overwrite=True)
    assert (foreign / "study.json").read_text() == "{}"


def test_write_report_record_damaged_or_alone(tmp_path):
    result = synthetic_result(full=False)
    damaged = write_report(result, tmp_path / "damaged", plots=False)
    (damaged / REPORT_MARKER).write_text("{")
    with pytest.raises(InputError, match=r"study.json was not written by jaxablate \(its "
                       r"record \.jaxablate-report\.json cannot be read\)"):
        write_report(result, damaged, plots=False)
    unlisted = write_report(result, tmp_path / "unlisted", plots=False)  # no interactions
    (unlisted / "interactions.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=r"interactions.csv was not written by jaxablate \(its "
                       r"record \.jaxablate-report\.json does not list it\)"):
        write_report(synthetic_result(), unlisted, plots=False)
    alone = write_report(result, tmp_path / "alone", plots=False)
    for path in alone.iterdir():  # the user removed the report but not its record
        if path.name != REPORT_MARKER:
            path.unlink()
    other = copy.deepcopy(result)
    other["meta"]["seed"] = 5
    write_report(other, alone, plots=False)
    assert record(alone)["settings"]["seed"] == 5


def test_write_report_killed_part_way_can_be_written_again(tmp_path, monkeypatch):
    result = synthetic_result(full=False)
    folder = tmp_path / "report"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(report, "summary_markdown", killed)
        with pytest.raises(KeyboardInterrupt):
            write_report(result, folder, plots=False)
    assert (folder / "study.json").is_file() and not record(folder)["complete"]
    other = copy.deepcopy(result)
    other["meta"]["ablation"] = "zero"
    with pytest.raises(InputError, match="ablation: mean there, zero now"):
        write_report(other, folder, plots=False)  # the partial report is of the first run
    write_report(result, folder, plots=False)
    assert record(folder)["complete"] and (folder / "summary.md").is_file()


@pytest.mark.parametrize("options", [
    ["--n-prompts", "4"],
    ["--task", "ioi", "--template", "3", "--n-prompts", "4", "--tokenizer", "{tokenizer}"],
    ["--prompts", "{prompts}", "--tokenizer", "{tokenizer}", "--threshold", "0.25"],
    ["--ablation", "zero", "--seed", "2", "--components", "heads,neurons", "--neuron-layers",
     "1", "--n-prompts", "4"],
    ["--ablation", "optimal", "--oa-steps", "3", "--oa-lr", "0.5", "--oa-objective", "loss",
     "--n-prompts", "4"],
], ids=["induction", "ioi", "prompts-threshold", "neurons", "optimal"])
def test_the_options_fingerprint_is_the_real_studys(options, tmp_path, gpt2_vocab_dir,
                                                    tokenizer_dir, monkeypatch):
    """The --out check compares the options' settings with a report's before anything loads:
    they must be what the real Study records in its meta for the same options."""
    from jaxablate.cli.options import build_parser, settings_from_options
    from jaxablate.report.files import fingerprint_differences, report_fingerprint

    class Stop(Exception):
        pass

    def run(self, **kwargs):
        raise Stop(self.meta())

    monkeypatch.setattr(sys.modules["jaxablate.study.protocol"].Study, "run", run)
    where = {"tokenizer": tokenizer_dir, "prompts": write_prompts(tmp_path / "p.jsonl")}
    argv = ["study", "--model", str(gpt2_vocab_dir), *(a.format(**where) for a in options),
            "--out", str(tmp_path / "out"), "--quiet", "--no-cache"]
    with pytest.raises(Stop) as stopped:
        main(argv)
    real = report_fingerprint(stopped.value.args[0])
    early = report_fingerprint(settings_from_options(build_parser().parse_args(argv)))
    assert fingerprint_differences(real, early) == [], (real, early)
    assert set(early) <= set(real) and len(early) >= 8, (early, real)
    assert {"metric", "n_prompts"} <= set(real)
