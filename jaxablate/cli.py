"""The `jaxablate` command line: `jaxablate study` runs the ablation protocol and writes a
report folder.

    jaxablate study                         bundled induction model and task, offline
    jaxablate study --model gpt2 --task ioi --template 3 --components heads,mlps
    jaxablate study --model ./my-gpt2 --prompts mine.jsonl --tokenizer ./my-gpt2 --json

Bad input (a missing file, an unknown component kind, options that do not go together, a
chunk size that cannot fit in memory, an --out folder holding another run's results) prints
one line, `jaxablate study: error: ...`, and exits with status 2, with no traceback. Sweep
results are committed to DIR/sweeps as they are computed (`jaxablate.store`): Ctrl-C exits
with 130 and SIGTERM with 143, keeping them, and the same command run again resumes. An
accelerator running out of memory is one line too (exit 1). Nothing else is caught, so a
bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

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


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


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
                        help="GPT-2 tokenizer for --task ioi and --prompts: hub id or folder "
                             "(default: gpt2)")
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
    ablation.add_argument("--seed", type=int, default=0,
                          help="seed of the prompts, resampling and bootstrap (default: 0)")
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
                        help="report folder, created or overwritten; sweep results are kept in "
                             "DIR/sweeps as they are computed, so running the same command "
                             "again (after Ctrl-C, a kill or a crash) resumes where it stopped "
                             "(default: jaxablate-report)")
    output.add_argument("--overwrite", action="store_true",
                        help="discard the sweep results an earlier run left in --out and start "
                             "afresh (needed when the inputs changed)")
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
    if args.prompts is not None:
        if args.task is not None:
            raise UsageError("--prompts replaces --task; pass one of them")
        if args.n_prompts is not None:
            raise UsageError("--n-prompts sets the size of a generated --task; a --prompts "
                             "file uses all its lines")
        if not os.path.isfile(args.prompts):
            raise UsageError(f"--prompts: no such file {args.prompts!r}")
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
    needed = ["pandas", "pyarrow"] + ([] if args.no_plots else ["matplotlib"])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        hint = " (or --no-plots to skip the figures)" if missing == ["matplotlib"] else ""
        raise UsageError(f"the report needs {', '.join(missing)}: pip install "
                         f"'jaxablate[report]'{hint}")


class ProgressBars:
    """A Study progress callback `(step, done, total)`: one tqdm bar on stderr per step, which
    grows by each further sweep of the same step (the circuit search runs one per member).
    Silent when disabled; a plain "step: n ablations" line per step without tqdm."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar: Any = None
        self.step = ""
        self.done = 0  # within the current sweep
        self.total = 0  # of the current sweep
        self.count = 0  # ablations of the current step so far

    def __call__(self, step: str, done: int | np.integer, total: int | np.integer) -> None:
        if not self.enabled:
            return
        done, total = int(done), int(total)
        if step != self.step or self.bar is None:
            self.close()
            self.bar = self._new(step, total)
            self.step, self.done, self.total, self.count = step, 0, total, 0
        elif self.done >= self.total or done <= self.done or total != self.total:
            # the next sweep of the same step
            if self.bar:
                self.bar.total += total
                self.bar.refresh()
            self.done, self.total = 0, total
        if self.bar:
            self.bar.update(done - self.done)
        self.count += done - self.done
        self.done = done

    def _new(self, step: str, total: int) -> Any:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return False
        return tqdm(total=total, desc=step, file=sys.stderr, unit="ablation",
                    dynamic_ncols=True)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        elif self.bar is False:
            print(f"{self.step}: {self.count} ablations", file=sys.stderr)
        self.bar = None


def _enable_compilation_cache() -> None:
    """Persist compiled programs across runs (unless the user configured JAX's own)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import jax

    folder = os.environ.get("JAXABLATE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxablate", "jax")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _load_task(args: argparse.Namespace, cfg: Any) -> Any:
    from jaxablate import tasks

    if args.prompts is not None or args.task == "ioi":
        from jaxablate.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer or "gpt2")
        if len(tokenizer) > cfg.d_vocab:
            raise UsageError(f"the tokenizer has {len(tokenizer)} ids but the model's "
                             f"vocabulary has {cfg.d_vocab}; pass the model's own tokenizer")
        if args.prompts is not None:
            task = tasks.from_jsonl(args.prompts, tokenizer)
        else:
            task = tasks.ioi(tokenizer, args.n_prompts or _DEFAULT_N_PROMPTS,
                             template=0 if args.template is None else args.template,
                             seed=args.seed)
    else:
        # GPT-2's own vocabulary: stay clear of the end-of-text id.
        vocab = cfg.d_vocab if cfg.d_vocab < 50257 else 50256
        half = min(_INDUCTION_HALF, cfg.n_ctx // 2)
        task = tasks.induction(args.n_prompts or _DEFAULT_N_PROMPTS, half=half, vocab=vocab,
                               seed=args.seed)
    if task.tokens.shape[1] > cfg.n_ctx:
        raise UsageError(f"the prompts have {task.tokens.shape[1]} tokens, more than the "
                         f"model's context of {cfg.n_ctx}")
    return task


def run_study(args: argparse.Namespace) -> int:
    """`jaxablate study`: load, run the Study, print, write the report."""
    _check_options(args)
    if args.distributed:
        _start_distributed(args)
    if not args.no_cache:
        _enable_compilation_cache()
    import jax

    import jaxablate as ja
    from jaxablate.engine import check_chunk_size
    from jaxablate.report import jsonable, write_report
    from jaxablate.store import StoreWarning
    from jaxablate.study import Study

    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    start = time.perf_counter()
    model = ja.load_gpt2(args.model)
    cfg = model.cfg
    if args.neuron_layers is not None:
        bad = [layer for layer in args.neuron_layers if not 0 <= layer < cfg.n_layers]
        if bad:
            raise UsageError(f"--neuron-layers {bad} out of range; the model has layers "
                             f"0-{cfg.n_layers - 1}")
    task = _load_task(args, cfg)
    say(f"model: {args.model} ({cfg.n_layers} layers x {cfg.n_heads} heads, d_model "
        f"{cfg.d_model}, vocabulary {cfg.d_vocab})")
    say(f"task: {task}")
    say(f"ablation: {args.ablation}; components: {', '.join(args.components)}; "
        f"seed {args.seed}")
    if args.chunk_size is not None:
        n_read = task.metric.prepare(task.tokens, cfg)[0].shape[1]
        check_chunk_size(model, *task.tokens.shape, n_read, args.chunk_size,
                         what="--chunk-size")
    progress = ProgressBars(enabled=not args.quiet)
    with contextlib.closing(progress), warnings.catch_warnings():
        # A damaged stored file is one line on stderr (it is recomputed), not a warning dump.
        warnings.simplefilter("always", StoreWarning)
        warnings.showwarning = _show_warning
        study = Study(model, task, ablation=args.ablation, components=args.components,
                      neuron_layers=args.neuron_layers, threshold=args.threshold,
                      seed=args.seed, progress=progress, model_name=args.model,
                      store=Path(args.out) / "sweeps", overwrite=args.overwrite,
                      chunk_size=args.chunk_size, devices=args.devices)
        steps = ("baseline", "single") + tuple(s for s in OPTIONAL_STEPS if s not in args.skip)
        result = study.run(target=args.target, top_k=args.interaction_top_k, steps=steps,
                           screen_method=args.screen, screen_steps=args.ig_steps,
                           screen_top_k=args.screen_top_k)
    data = result.to_dict()
    if jax.process_index() > 0:  # every host has the whole result; one writes the report
        say(f"process {jax.process_index()} of {jax.process_count()}: done; process 0 "
            f"writes the report to {args.out}")
        return 0
    if args.json:
        json.dump(jsonable(data), sys.stdout)
        sys.stdout.write("\n")
    else:
        print()
        print(result.table(args.top))
        print()
    folder = write_report(data, args.out, plots=not args.no_plots)
    store = getattr(study, "store", None)
    if store is not None:
        say(f"sweeps: {store.computed} files computed, {store.reused} reused from "
            f"{store.folder}")
    say(f"report: {Path(folder) / 'summary.md'} (study.json, tables"
        f"{'' if args.no_plots else ', figures'}) in {time.perf_counter() - start:.1f} s")
    return 0


def _start_distributed(args: argparse.Namespace) -> None:
    """jax.distributed.initialize, from the flags or from the cluster's environment."""
    import jax

    kwargs = {}
    if args.coordinator is not None:
        kwargs = dict(coordinator_address=args.coordinator, num_processes=args.num_processes,
                      process_id=args.process_id)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as error:
        raise UsageError(f"--distributed: jax.distributed.initialize failed "
                         f"({' '.join(str(error).split())[:300]})") from None


def _show_warning(message: Any, category: Any, filename: Any, lineno: Any, file: Any = None,
                  line: Any = None) -> None:
    print(f"{PROG} study: warning: {' '.join(str(message).split())}", file=sys.stderr)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread the way Ctrl-C raises KeyboardInterrupt."""


@contextlib.contextmanager
def _sigterm_raises() -> Any:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    except UsageError as error:
        return _fail(str(error))
    except (ValueError, TypeError, OSError) as error:  # the library's and the OS's
        details = getattr(error, "details", None)  # a StoreMismatchError
        if details is not None and hasattr(error, "changed"):
            return _fail(f"--out {args.out} holds sweep results of another run ({details}); "
                         "re-run with --overwrite to start afresh, or choose another --out")
        return _fail(str(error) or type(error).__name__)
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


if __name__ == "__main__":
    raise SystemExit(main())
