"""The `jaxablate` command line: `jaxablate study` runs the ablation protocol and writes a
report folder.

    jaxablate study                         bundled induction model and task, offline
    jaxablate study --model gpt2 --task ioi --template 3 --components heads,mlps
    jaxablate study --model ./my-gpt2 --prompts mine.jsonl --tokenizer ./my-gpt2 --json

Exit status and what is printed:
  0    the study ran and the report was written.
  2    bad input: one line on stderr, `jaxablate study: error: ...`, no traceback. That is a
       usage error (`UsageError`: options that do not go together, a --prompts file that
       cannot be read, an --out that cannot be written, a tokenizer that does not fit the
       model's vocabulary), or any `jaxablate.errors.InputError` the library raises (an
       unknown component, a chunk size that cannot fit in memory, a damaged checkpoint, an
       --out holding another run's sweeps). Files the command line can check are checked
       before the model loads.
  1    a NaN or inf metric (one line naming the masks), or the accelerator running out of
       memory (one line: pass a smaller --chunk-size).
  130  Ctrl-C; 143 SIGTERM. Sweep results are committed to DIR/sweeps as they are computed
       (`jaxablate.store`), so the same command run again resumes.
Anything else (a TypeError, KeyError, OSError, ... from inside) is a bug or a failure of the
machine, not bad input: `main` lets it through with its traceback, and the process exits
with status 1.

The report folder (--out DIR): jaxablate never overwrites a file it did not write. DIR may
be absent or empty; it may hold an earlier report of a run with the same settings (a resumed
run), which is replaced. It is refused, before the model loads, when it holds a file of a
report's name (study.json, summary.md, single.csv, the PNGs, ...: `jaxablate.report
.report_names()`) that jaxablate did not write or that changed since (its record is
DIR/.jaxablate-report.json), or the report of a run with other settings (model, task,
template, prompts, n_prompts, ablation, components, neuron layers, seed, threshold), naming
what differs. --overwrite replaces that earlier report's own files (and empties DIR/sweeps),
never files jaxablate did not write. Files of other names in DIR are left alone.

The run itself (loading, the Study, progress, the report) is `jaxablate.cli_study`; this
module is the parser, the option checks and `main`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

# ProgressBars is re-exported: the tests (and users) import it from here.
from jaxablate.cli_study import (  # noqa: F401
    ProgressBars,
    _sigterm_raises,
    _Terminated,
    check_prompts_file,
    run_study,
    settings_from_options,
)
from jaxablate.engine import NonFiniteMetricError
from jaxablate.errors import InputError
from jaxablate.report import check_report_folder, report_fingerprint
from jaxablate.store import StoreMismatchError

PROG = "jaxablate"
COMPONENT_KINDS = ("heads", "mlps", "neurons")
OPTIONAL_STEPS = ("screening", "cumulative", "circuit", "interactions", "ablation_comparison")
_DEFAULT_N_PROMPTS = 64
_INDUCTION_HALF = 16

_DESCRIPTION = """\
Ablation studies on GPT-2-family models: knock out attention heads, MLP layers or single
neurons with zero, mean or resample ablation and measure what breaks."""

_STUDY_DESCRIPTION = """\
Run the ablation protocol on one model and task:
  - the clean baseline;
  - every component ablated alone: effect +- s.e.m., 95% bootstrap CI, and critical /
    negative / no-effect flags;
  - gradient screening: every component scored by integrated gradients of the mask (or the
    plain gradient), the top candidates checked against the exact effects;
  - components ablated together, least important first: the cliff;
  - the minimal circuit: size, share, faithfulness, minimality;
  - pair interactions among the top components: backup candidates;
  - zero vs mean vs resample ablation: Spearman correlations, changed verdicts.
Prints the ranked table and writes a report folder: study.json (every number), CSV and
Parquet tables, summary.md and PNG figures.

With no options it studies the bundled 2-layer induction model on its own task (offline;
under a minute on a 2-core CPU)."""

_STUDY_EPILOG = """\
examples:
  jaxablate study
      the bundled induction model, 64 induction prompts, mean ablation of every head
  jaxablate study --model gpt2 --task ioi --template 3 --n-prompts 128 --components heads,mlps
      GPT-2 small on IOI template 3 (downloads the model and tokenizer once)
  jaxablate study --model ./my-gpt2 --prompts prompts.jsonl --tokenizer ./my-gpt2
      your own prompts, one {"prompt": ..., "correct": " Mary", "wrong": " John"} per line;
      the answers must be single tokens; the metric is the logit difference correct - wrong
  jaxablate study --components neurons --neuron-layers 1 --ablation resample --json > out.json
      every neuron of layer 1, resample ablation, the result dict as JSON on stdout

The report needs pandas, pyarrow and matplotlib: pip install 'jaxablate[report]'.
Compiled programs are cached in $JAXABLATE_CACHE (default ~/.cache/jaxablate/jax), which
makes a repeated run start faster; --no-cache turns this off."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with a pointer to --help) and status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class UsageError(InputError):
    """Bad input from the user (an option, a file): reported in one line, exit status 2."""


def _positive_int(text: str, least: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a number >= {least}, got {value}")
    return value


def _seed(text: str) -> int:
    """A seed: numpy's and JAX's generators take whole numbers >= 0."""
    return _positive_int(text, least=0)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer numbers such as 0,1; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one layer number")
    return values


def _components(text: str) -> tuple[str, ...]:
    """"heads,mlps" -> ("heads", "mlps"); singular forms are accepted."""
    kinds = []
    for part in (p.strip().lower() for p in text.split(",")):
        kind = part if part.endswith("s") else part + "s"
        if kind not in COMPONENT_KINDS:
            raise argparse.ArgumentTypeError(
                f"unknown component kind {part!r}; choose from {', '.join(COMPONENT_KINDS)}")
        if kind not in kinds:
            kinds.append(kind)
    return tuple(kinds)


def _steps(text: str) -> tuple[str, ...]:
    """"interactions,comparison" -> ("interactions", "ablation_comparison")."""
    aliases = {"comparison": "ablation_comparison", "ablation-comparison": "ablation_comparison"}
    steps = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        step = aliases.get(part, part)
        if step not in OPTIONAL_STEPS:
            raise argparse.ArgumentTypeError(
                f"unknown step {part!r}; choose from screening, cumulative, circuit, "
                "interactions, comparison")
        steps.append(step)
    return tuple(steps)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `jaxablate` argument parser (subcommand `study`)."""
    from jaxablate import __version__

    parser = _Parser(prog=PROG, description=_DESCRIPTION,
                     epilog="Run 'jaxablate study --help' for the study's options.",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND",
                                     required=True, parser_class=_Parser)
    study = commands.add_parser(
        "study", help="run the ablation protocol and write a report folder",
        description=_STUDY_DESCRIPTION, epilog=_STUDY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)

    source = study.add_argument_group("model and prompts")
    source.add_argument("--model", default="bundled:induction", metavar="SOURCE",
                        help="hub id (gpt2, gpt2-medium, ...), a folder with config.json and "
                             "model.safetensors, or bundled:NAME (default: bundled:induction)")
    source.add_argument("--task", choices=("induction", "ioi"), default=None,
                        help="built-in task: induction (random sequences repeated once; loss on "
                             "the repeat) or ioi (indirect object identification; logit "
                             "difference IO - S; needs a GPT-2 tokenizer) (default: induction)")
    source.add_argument("--prompts", metavar="FILE.jsonl", default=None,
                        help='your own prompts instead of --task: one {"prompt", "correct", '
                             '"wrong"} object per line, all prompts the same token length')
    source.add_argument("--tokenizer", metavar="SOURCE", default=None,
                        help="GPT-2 tokenizer for --task ioi and --prompts: hub id or folder; "
                             "its ids must fit the model's vocabulary, so a model smaller "
                             "than GPT-2's 50257 ids needs its own (default: gpt2, shipped "
                             "with jaxablate)")
    source.add_argument("--template", type=int, default=None, metavar="N",
                        help="IOI template 0-29 (BABA 0-14, ABBA 15-29) (default: 0)")
    source.add_argument("--n-prompts", type=_positive_int, default=None, metavar="N",
                        help=f"prompts to generate for --task (default: {_DEFAULT_N_PROMPTS})")

    ablation = study.add_argument_group("ablation")
    ablation.add_argument("--ablation", choices=("zero", "mean", "resample"), default="mean",
                          help="replacement value of an ablated component (default: mean)")
    ablation.add_argument("--components", type=_components, default=("heads",), metavar="LIST",
                          help="comma-separated kinds to ablate one at a time: heads, mlps, "
                               "neurons (default: heads)")
    ablation.add_argument("--neuron-layers", type=_int_list, default=None, metavar="LIST",
                          help="with neurons: only these layers' neurons, e.g. 0,1 "
                               "(default: every layer)")
    ablation.add_argument("--threshold", type=float, default=None, metavar="X",
                          help="effect size that makes a component critical (default: the "
                               "study's rule, recorded in the report)")
    ablation.add_argument("--seed", type=_seed, default=0,
                          help="seed of the prompts, resampling and bootstrap, >= 0 (default: 0)")
    ablation.add_argument("--target", type=_fraction, default=0.8, metavar="F",
                          help="share of the clean performance the minimal circuit must "
                               "recover (default: 0.8)")
    ablation.add_argument("--interaction-top-k", type=int, default=None, metavar="K",
                          help="pairs among the K largest effects (default: every head when "
                               "only heads are studied and there are <= 200, else 20)")
    ablation.add_argument("--skip", type=_steps, default=(), metavar="LIST",
                          help="steps to leave out: screening, cumulative, circuit, "
                               "interactions, comparison (e.g. --skip interactions on big "
                               "models)")

    screening = study.add_argument_group("gradient screening")
    screening.add_argument("--screen", choices=("ig", "grad"), default="ig",
                           help="how every component is scored from gradients of the mask: "
                                "ig (integrated gradients along the path ablating all "
                                "together) or grad (first order at the clean model) "
                                "(default: ig)")
    screening.add_argument("--ig-steps", type=_positive_int, default=16, metavar="N",
                           help="integrated-gradients steps (forward + backward passes per "
                                "prompt) (default: 16)")
    screening.add_argument("--screen-top-k", type=_positive_int, default=None, metavar="K",
                           help="screened components verified by exact ablation (default: "
                                "20, or all when fewer)")

    output = study.add_argument_group("output")
    output.add_argument("--out", default="jaxablate-report", metavar="DIR",
                        help="report folder, created if needed (default: jaxablate-report). "
                             "Sweep results are kept in DIR/sweeps as they are computed, so "
                             "running the same command again (after Ctrl-C, a kill or a "
                             "crash) resumes where it stopped and replaces the earlier "
                             "report. jaxablate never overwrites a file it did not write: "
                             "DIR is refused, before anything loads, when it holds a file of "
                             "a report's name (study.json, summary.md, single.csv, the PNGs, "
                             "...) that jaxablate did not write or that changed since, or "
                             "the report of a run with other settings (the message names "
                             "what differs; see --overwrite). Other files in DIR are left "
                             "alone")
    output.add_argument("--overwrite", action="store_true",
                        help="start afresh: empty DIR/sweeps and replace the files of the "
                             "earlier report in DIR (those jaxablate wrote, as its record "
                             "DIR/.jaxablate-report.json lists them), needed when the settings "
                             "or inputs changed; files jaxablate did not write are never "
                             "replaced")
    output.add_argument("--chunk-size", type=_positive_int, default=None, metavar="N",
                        help="masks per compiled call (default: chosen within the memory "
                             "budget); refused up front when it cannot fit in memory")
    output.add_argument("--json", action="store_true",
                        help="print the result dict as JSON on stdout instead of the table")
    output.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    output.add_argument("--top", type=_positive_int, default=20, metavar="K",
                        help="rows of the printed ranked table (default: 20)")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    output.add_argument("--no-cache", action="store_true",
                        help="do not use the persistent compilation cache")

    hardware = study.add_argument_group("devices and hosts")
    hardware.add_argument("--devices", type=_positive_int, default=None, metavar="N",
                          help="split every sweep's masks over the first N local devices "
                               "(default: all of them; results equal one device's up to "
                               "float32 rounding)")
    hardware.add_argument("--distributed", action="store_true",
                          help="several hosts: call jax.distributed.initialize() (it finds "
                               "its peers on Cloud TPU, SLURM and Open MPI, or from "
                               "--coordinator/--num-processes/--process-id); each host "
                               "computes its share of every sweep into --out, which all "
                               "hosts must see, and process 0 writes the report")
    hardware.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                          help="with --distributed: process 0's address")
    hardware.add_argument("--num-processes", type=_positive_int, default=None, metavar="N",
                          help="with --distributed: the number of processes")
    hardware.add_argument("--process-id", type=int, default=None, metavar="I",
                          help="with --distributed: this process's index, 0 to N-1")
    return parser


def _check_options(args: argparse.Namespace) -> None:
    """Options that do not go together, and files that are not there (before any work)."""
    if "mlps" in args.components and "neurons" in args.components:
        raise UsageError("--components: mlps and neurons overlap (an MLP's output is its "
                         "neurons' sum); run two studies, e.g. heads,mlps and heads,neurons")
    if args.prompts is not None:
        if args.task is not None:
            raise UsageError("--prompts replaces --task; pass one of them")
        if args.n_prompts is not None:
            raise UsageError("--n-prompts sets the size of a generated --task; a --prompts "
                             "file uses all its lines")
        check_prompts_file(args.prompts)
    task = "prompts" if args.prompts is not None else args.task or "induction"
    if args.template is not None and task != "ioi":
        raise UsageError("--template applies to --task ioi only")
    if args.tokenizer is not None and task == "induction":
        raise UsageError("--tokenizer applies to --task ioi and --prompts only; induction "
                         "uses token ids directly")
    if args.neuron_layers is not None and "neurons" not in args.components:
        raise UsageError("--neuron-layers applies only with --components including neurons")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out: {args.out!r} exists and is not a folder")
    manual = [args.coordinator, args.num_processes, args.process_id]
    if any(v is not None for v in manual) and not args.distributed:
        raise UsageError("--coordinator, --num-processes and --process-id go with "
                         "--distributed")
    if any(v is not None for v in manual) and any(v is None for v in manual):
        raise UsageError("--distributed by hand needs all of --coordinator, --num-processes "
                         "and --process-id (or none of them, to let JAX find its peers)")
    if args.process_id is not None and not 0 <= args.process_id < args.num_processes:
        raise UsageError(f"--process-id must be in [0, {args.num_processes}), got "
                         f"{args.process_id}")
    if args.distributed and args.overwrite:
        raise UsageError("--overwrite cannot be used with --distributed (one host could delete "
                         "another's results): delete the --out folder's sweeps first")
    existing = Path(os.path.abspath(args.out))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--out: cannot create {args.out!r}: {str(existing)!r} is a file, not "
                         "a folder; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out: {str(existing)!r} is not writable; choose another --out")
    sweeps = Path(args.out) / "sweeps"
    if sweeps.exists() and not sweeps.is_dir():
        raise UsageError(f"--out: {str(sweeps)!r} (where the sweep results go) is a file, not "
                         "a folder; move it or choose another --out")
    if sweeps.is_dir() and not os.access(sweeps, os.W_OK | os.X_OK):
        raise UsageError(f"--out: {str(sweeps)!r} is not writable; choose another --out")
    # Before the model loads: never replace a file jaxablate did not write, nor (without
    # --overwrite) the report of a run with other settings.
    check_report_folder(args.out, report_fingerprint(settings_from_options(args)),
                        overwrite=args.overwrite, command_line=True)
    needed = ["pandas", "pyarrow"] + ([] if args.no_plots else ["matplotlib"])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        hint = " (or --no-plots to skip the figures)" if missing == ["matplotlib"] else ""
        raise UsageError(f"the report needs {', '.join(missing)}: pip install "
                         f"'jaxablate[report]'{hint}")


def _stopped(args: argparse.Namespace, what: str, status: int) -> int:
    """One line: how the run stopped, and that running it again resumes."""
    sweeps = Path(args.out) / "sweeps"
    kept = (f"; the sweep results finished so far are kept in {sweeps}: run the same command "
            "again to resume" if sweeps.is_dir() else "")
    print(f"{PROG} study: {what}{kept}", file=sys.stderr)
    return status


def _fail(message: str) -> int:
    """One line on stderr (library messages can span lines), exit status 2."""
    print(f"{PROG} study: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jaxablate` command; returns the exit status.

    Example:
        >>> main(["study", "--n-prompts", "32", "--out", "report"])
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, usage errors: argparse already printed
        return stop.code if isinstance(stop.code, int) else 2
    try:
        with _sigterm_raises():
            return run_study(args)
    except StoreMismatchError as error:  # an InputError, worded for the command line
        return _fail(f"--out {args.out} holds sweep results of another run ({error.details}); "
                     "re-run with --overwrite to start afresh, or choose another --out")
    except InputError as error:  # UsageError, and every bad-input check of the library
        return _fail(str(error) or type(error).__name__)
    except NonFiniteMetricError as error:  # a result that overflowed: not bad input, no bug
        print(f"{PROG} study: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        print(f"{PROG} study: error: the device ran out of memory; pass a smaller "
              f"--chunk-size{'' if args.chunk_size is None else f' than {args.chunk_size}'} "
              f"(finished sweeps are kept in {Path(args.out) / 'sweeps'})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _stopped(args, "interrupted", 130)
    except _Terminated:
        return _stopped(args, "terminated (SIGTERM)", 143)
    # Anything else (a ValueError, TypeError, KeyError, OSError from inside) is a bug or a
    # failure of the machine: it keeps its traceback, and the process exits with status 1.


if __name__ == "__main__":
    # `python -m jaxablate.cli` runs this file as __main__, a second copy of the module:
    # run the imported jaxablate.cli's main, whose classes are the ones cli_study raises.
    from jaxablate.cli import main as _main

    raise SystemExit(_main())
