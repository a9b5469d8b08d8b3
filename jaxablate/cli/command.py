"""The `jaxablate` command line: `jaxablate study` runs the ablation protocol and writes a
report folder.

    jaxablate study                         bundled induction model and task, offline
    jaxablate study --model gpt2 --task ioi --template 3 --components heads,mlps
    jaxablate study --model ./my-gpt2 --prompts mine.jsonl --tokenizer ./my-gpt2 --json

Exit status and what is printed:
  0    the study ran and the report was written.
  2    bad input: one line on stderr, `jaxablate study: error: ...`, no traceback. That is a
       usage error (`UsageError`: options that do not go together, such as --patching with
       --prompts (a prompts file has no counterfactual), a --prompts file that cannot be
       read, an --out that cannot be written, a tokenizer that does not fit the model's
       vocabulary), or any `jaxablate.errors.InputError` the library raises (an
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
template, prompts, n_prompts, ablation, components, neuron layers, seed, threshold, the
optimal-ablation fit's objective, steps and learning rate), naming what differs. --overwrite replaces that earlier report's own files (and empties DIR/sweeps),
never files jaxablate did not write. Files of other names in DIR are left alone.

The parser and the option checks are `jaxablate.cli.options`, the run itself (loading, the
Study, progress, the report) `jaxablate.cli.run`; this module is `main` and how each way of
stopping is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxablate.cli.options import PROG, build_parser
from jaxablate.cli.run import run_study
from jaxablate.engine.sweeping import NonFiniteMetricError
from jaxablate.errors import InputError
from jaxablate.store.results import StoreMismatchError


class Terminated(BaseException):
    """SIGTERM, raised in the main thread the way Ctrl-C raises KeyboardInterrupt."""


@contextlib.contextmanager
def sigterm_raises() -> Any:
    """Within it, SIGTERM raises `Terminated` in the main thread (as Ctrl-C raises
    KeyboardInterrupt), so that `main` reports both in one line and the sweeps are kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

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
        with sigterm_raises():
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
    except Terminated:
        return _stopped(args, "terminated (SIGTERM)", 143)
    # Anything else (a ValueError, TypeError, KeyError, OSError from inside) is a bug or a
    # failure of the machine: it keeps its traceback, and the process exits with status 1.


if __name__ == "__main__":
    # Run as a file, this is a second copy of the module: use the imported one's main, whose
    # classes are the ones the rest of the package raises (`python -m jaxablate.cli` runs
    # jaxablate/cli/__main__.py, which does the same).
    from jaxablate.cli.command import main as imported_main

    raise SystemExit(imported_main())
