"""The `jaxablate study` option checks: options that do not go together or files that are
not there, all refused before any work (`check_options`); the parser is
`jaxablate.cli.parser` (re-exported here with its constants).

    build_parser()                the argument parser (subcommand `study`; `cli.parser`)
    check_options(args)           UsageError for what can be refused up front, including an
                                  --out folder holding what jaxablate did not write
    check_prompts_file(path)      a --prompts file that can be read as UTF-8
    settings_from_options(args)   the options as the meta keys of the report folder's
                                  fingerprint (`jaxablate.report.report_fingerprint`)
    oa_settings(args)             the Study's oa_steps, oa_lr, oa_objective
    uses_optimal(args)            whether the run may fit optimal constants
    asks_for_optimal(args)        whether the options ask for them whatever they cost
"""

from __future__ import annotations

import argparse
import codecs
import importlib.util
import os
from pathlib import Path
from typing import Any

from jaxablate.cli.parser import (  # noqa: F401  (re-exported: the parser and its constants)
    ABLATION_TYPES,
    DEFAULT_MODEL,
    DEFAULT_MODELS,
    COMPONENT_KINDS,
    DEFAULT_N_PROMPTS,
    DEFAULT_OA_LR,
    DEFAULT_OA_OBJECTIVE,
    DEFAULT_OA_STEPS,
    INDUCTION_HALF,
    OA_COMPARE_BUDGET_S,
    OA_OBJECTIVES,
    OPT_IN_STEPS,
    OPTIONAL_STEPS,
    PROG,
    build_parser,
)
from jaxablate.errors import InputError
from jaxablate.report.files import check_report_folder, report_fingerprint


class UsageError(InputError):
    """Bad input from the user (an option, a file): reported in one line, exit status 2."""


def check_options(args: argparse.Namespace) -> None:
    """Options that do not go together, and files that are not there (before any work)."""
    if args.model is None:
        args.model = model_source(args)
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
        if args.patching:
            raise UsageError("--patching needs counterfactual prompts paired with the prompts "
                             "(--task induction or ioi); a --prompts file has none")
    task = "prompts" if args.prompts is not None else args.task or "induction"
    if args.template is not None and task not in ("ioi", "ioi-toy"):
        raise UsageError("--template applies to --task ioi and ioi-toy only")
    if args.no_bos and task in ("induction", "ioi-toy"):
        raise UsageError("--no-bos applies to --task ioi and --prompts only; induction and "
                         "ioi-toy prompts are token ids of their own")
    if args.tokenizer is not None and task == "ioi-toy":
        raise UsageError("--tokenizer applies to --task ioi and --prompts only; ioi-toy uses "
                         "token ids directly")
    if args.tokenizer is not None and task == "induction":
        raise UsageError("--tokenizer applies to --task ioi and --prompts only; induction "
                         "uses token ids directly")
    if args.neuron_layers is not None and "neurons" not in args.components:
        raise UsageError("--neuron-layers applies only with --components including neurons")
    if args.circuit_ablation != "same" and "circuit" in args.skip:
        raise UsageError("--circuit-ablation applies to the circuit step, which --skip "
                         "leaves out")
    if args.compare is not None and "ablation_comparison" in args.skip:
        raise UsageError("--compare sets the comparison step's types, which --skip leaves out")
    given = [flag for flag, value in (("--oa-steps", args.oa_steps), ("--oa-lr", args.oa_lr),
                                      ("--oa-objective", args.oa_objective)) if value is not None]
    if given and not uses_optimal(args):
        raise UsageError(f"{given[0]} applies only when optimal ablation runs: --ablation "
                         "optimal, the comparison step (not in --skip) with optimal among "
                         "its --compare types, or --circuit-ablation optimal")
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


def check_prompts_file(path: str) -> None:
    """Refuse (`UsageError`) a --prompts path that is missing, a folder, unreadable or not
    UTF-8 text, before any work.

    Example:
        >>> check_prompts_file("photo.jpg")
        UsageError: --prompts: 'photo.jpg' is not UTF-8 text (byte 0); save it as UTF-8, ...
    """
    if os.path.isdir(path):
        raise UsageError(f"--prompts: {path!r} is a folder; pass the .jsonl file")
    if not os.path.exists(path):
        raise UsageError(f"--prompts: no such file {path!r}")
    decoder = codecs.getincrementaldecoder("utf-8")()
    read = start = 0  # bytes read; where the decoder's input (carried bytes + block) starts
    try:
        with open(path, "rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                start = read - len(decoder.getstate()[0])  # an unfinished character carried
                decoder.decode(block)
                read += len(block)
            start = read - len(decoder.getstate()[0])
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:
        raise UsageError(f"--prompts: {path!r} is not UTF-8 text (byte {start + error.start});"
                         " save it as UTF-8, one JSON object per line") from None
    except OSError as error:
        raise UsageError(f"--prompts: cannot read {path!r} ({error.strerror or error}); check "
                         "its permissions") from None


def model_source(args: argparse.Namespace) -> str:
    """--model, or the task's default model when it is not given (bundled:ioi_toy for
    --task ioi-toy, else bundled:induction).

    Example:
        >>> model_source(build_parser().parse_args(["study", "--task", "ioi-toy"]))
        'bundled:ioi_toy'
    """
    if args.model is not None:
        return args.model
    return DEFAULT_MODELS.get(args.task, DEFAULT_MODEL)


def uses_optimal(args: argparse.Namespace) -> bool:
    """Whether the run may fit optimal constants: --ablation optimal, the comparison step
    (its --compare types include optimal, as the default's may) or --circuit-ablation
    optimal."""
    return (args.ablation == "optimal" or args.circuit_ablation == "optimal"
            or ("ablation_comparison" not in args.skip
                and "optimal" in (args.compare or ABLATION_TYPES)))


def asks_for_optimal(args: argparse.Namespace) -> bool:
    """Whether the options ask for optimal ablation whatever it costs: --ablation optimal,
    --circuit-ablation optimal, optimal in --compare, or an --oa-* option."""
    return (args.ablation == "optimal" or args.circuit_ablation == "optimal"
            or "optimal" in (args.compare or ())
            or any(v is not None for v in (args.oa_steps, args.oa_lr, args.oa_objective)))


def oa_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The Study's optimal-ablation arguments from the options (their defaults filled in).

    Example:
        >>> oa_settings(build_parser().parse_args(["study", "--oa-steps", "50"]))
        {'oa_steps': 50, 'oa_lr': 0.01, 'oa_objective': 'kl_to_clean'}
    """
    return {"oa_steps": DEFAULT_OA_STEPS if args.oa_steps is None else args.oa_steps,
            "oa_lr": DEFAULT_OA_LR if args.oa_lr is None else args.oa_lr,
            "oa_objective": args.oa_objective or DEFAULT_OA_OBJECTIVE}


def settings_from_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings as the keys of a result's meta that the options decide (what
    `jaxablate.report.report_fingerprint` reads), so that the --out check compares them with
    the earlier report's before anything loads. The metric is the task's, and a prompts
    file's size is only known once read: both are left to the task and prompts keys.

    Example:
        >>> settings_from_options(build_parser().parse_args(["study", "--ablation", "zero"]))
        {'model': 'bundled:induction', 'task': {'name': 'induction'}, 'ablation': 'zero', ...}
    """
    task = "prompts" if args.prompts is not None else args.task or "induction"
    meta: dict[str, Any] = {
        "model": model_source(args), "task": {"name": task.replace("-", "_")}, "ablation": args.ablation,
        "components": list(args.components),
        "neuron_layers": None if args.neuron_layers is None else list(args.neuron_layers),
        "seed": args.seed, "threshold": args.threshold,
        # as Study.meta words it: a given threshold is part of the settings, the default
        # follows from the others
        "threshold_rule": "default" if args.threshold is None else "given (threshold=)"}
    oa = oa_settings(args)
    meta["optimal"] = {"objective": oa["oa_objective"], "steps": oa["oa_steps"],
                       "learning_rate": oa["oa_lr"]}
    if task in ("ioi", "ioi-toy"):
        meta["task"]["template"] = 0 if args.template is None else args.template
    if task in ("ioi", "prompts"):
        meta["task"]["prepend_bos"] = not args.no_bos
    if task == "prompts":
        meta["task"]["source"] = args.prompts
    else:
        meta["n_prompts"] = args.n_prompts or DEFAULT_N_PROMPTS
    return meta
