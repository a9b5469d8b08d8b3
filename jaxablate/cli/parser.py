"""The `jaxablate study` argument parser: its options, their help texts, the types that
refuse a bad value in one line (argparse's usage error, status 2), and the constants they
share with the option checks (`jaxablate.cli.options`).

    build_parser()      the argument parser (subcommand `study`)

Example:
    >>> build_parser().parse_args(["study", "--ablation", "optimal"]).ablation
    'optimal'
"""

from __future__ import annotations

import argparse
import math
from typing import NoReturn

from jaxablate.version import VERSION

PROG = "jaxablate"
COMPONENT_KINDS = ("heads", "mlps", "neurons")
OPTIONAL_STEPS = ("screening", "cumulative", "circuit", "interactions", "ablation_comparison")
OPT_IN_STEPS = ("patching",)  # off unless asked for (--patching)
DEFAULT_N_PROMPTS = 64
# The optimal-ablation fit's settings (Study's oa_steps, oa_lr, oa_objective defaults; the
# command line passes them explicitly, so the report records what ran).
DEFAULT_OA_STEPS, DEFAULT_OA_LR, DEFAULT_OA_OBJECTIVE = 100, 0.01, "kl_to_clean"
OA_OBJECTIVES = ("kl_to_clean", "loss")
INDUCTION_HALF = 16
ABLATION_TYPES = ("zero", "mean", "resample", "optimal")
TASKS = ("induction", "ioi", "ioi-toy")
# The model a task runs on when --model is not given (ioi-toy is the toy model's own task).
DEFAULT_MODELS = {"ioi-toy": "bundled:ioi_toy"}
DEFAULT_MODEL = "bundled:induction"
# With no --compare, the comparison leaves optimal ablation out when nothing else fits optimal
# constants and the plan estimates its fit at more than this on the machine (GPT-2 small's
# full-vocabulary fit is hours on a CPU); a line says so.
OA_COMPARE_BUDGET_S = 600

_DESCRIPTION = """\
Ablation studies on GPT-2-family models: knock out attention heads, MLP layers or single
neurons with zero, mean, resample or optimal ablation and measure what breaks."""

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
  - zero vs mean vs resample vs optimal ablation: Spearman correlations, changed
    verdicts; optimal ablation (Li & Janson 2024) replaces each component by the constant
    that least changes the model's output on the reference prompts, and the report sets
    its damage (Delta_OA) beside mean ablation's: the share that was distribution shift;
  - with --patching: the critical heads and MLPs patched from the clean prompts into their
    counterfactual ones (denoising), position by position and along the direct path to the
    logits: the fraction of the clean - counterfactual gap each restores.
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
  jaxablate study --patching --components heads,mlps
      adds activation and path patching of the critical components (--task only)
  jaxablate study --ablation optimal --oa-steps 200 --circuit-ablation optimal
      every step under optimal ablation (each head at its own best constant), and the
      minimal circuit's complement also ablated at constants optimised for it jointly
  jaxablate study --task ioi-toy
      the bundled 4-layer x 4-head toy IOI model (name movers, backups) on its own task
  jaxablate study --model gpt2 --task ioi --dry-run
      the plan and its estimated time; optimal ablation is left out of the comparison when
      its fit would take long (the plan says so): --compare zero,mean,resample,optimal

The report needs pandas, pyarrow and matplotlib: pip install 'jaxablate[report]'.
Compiled programs are cached in $JAXABLATE_CACHE (default ~/.cache/jaxablate/jax), which
makes a repeated run start faster; --no-cache turns this off."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with a pointer to --help) and status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


def _ablation_types(text: str) -> tuple[str, ...]:
    """"zero,mean" -> ("zero", "mean"): two or more distinct ablation types."""
    types = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    bad = [t for t in types if t not in ABLATION_TYPES]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown ablation type {bad[0]!r}; choose from {', '.join(ABLATION_TYPES)}")
    if len(types) < 2:
        raise argparse.ArgumentTypeError(f"expected two or more ablation types to compare, "
                                         f"such as zero,mean; got {text!r}")
    return types


def _steps(text: str) -> tuple[str, ...]:
    """"interactions,comparison" -> ("interactions", "ablation_comparison")."""
    aliases = {"comparison": "ablation_comparison", "ablation-comparison": "ablation_comparison"}
    steps = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        step = aliases.get(part, part)
        if step in OPT_IN_STEPS:
            raise argparse.ArgumentTypeError(f"{step} is off unless --{step} is given")
        if step not in OPTIONAL_STEPS:
            raise argparse.ArgumentTypeError(
                f"unknown step {part!r}; choose from screening, cumulative, circuit, "
                "interactions, comparison")
        steps.append(step)
    return tuple(steps)


def _learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


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
    parser = _Parser(prog=PROG, description=_DESCRIPTION,
                     epilog="Run 'jaxablate study --help' for the study's options.",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND",
                                     required=True, parser_class=_Parser)
    study = commands.add_parser(
        "study", help="run the ablation protocol and write a report folder",
        description=_STUDY_DESCRIPTION, epilog=_STUDY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)

    source = study.add_argument_group("model and prompts")
    source.add_argument("--model", default=None, metavar="SOURCE",
                        help="hub id (gpt2, gpt2-medium, ...), a folder with config.json and "
                             "model.safetensors, or bundled:NAME (default: bundled:induction; "
                             "with --task ioi-toy, bundled:ioi_toy)")
    source.add_argument("--task", choices=TASKS, default=None,
                        help="built-in task: induction (random sequences repeated once; loss on "
                             "the repeat), ioi (indirect object identification; logit "
                             "difference IO - S; needs a GPT-2 tokenizer) or ioi-toy (the "
                             "bundled toy IOI model's own task over its 64 token ids; logit "
                             "difference IO - S) (default: induction)")
    source.add_argument("--prompts", metavar="FILE.jsonl", default=None,
                        help='your own prompts instead of --task: one {"prompt", "correct", '
                             '"wrong"} object per line, all prompts the same token length')
    source.add_argument("--tokenizer", metavar="SOURCE", default=None,
                        help="GPT-2 tokenizer for --task ioi and --prompts: hub id or folder; "
                             "its ids must fit the model's vocabulary, so a model smaller "
                             "than GPT-2's 50257 ids needs its own (default: gpt2, shipped "
                             "with jaxablate)")
    source.add_argument("--template", type=int, default=None, metavar="N",
                        help="IOI template 0-29 (BABA 0-14, ABBA 15-29), or ioi-toy's 0-5 "
                             "(default: 0)")
    source.add_argument("--n-prompts", type=_positive_int, default=None, metavar="N",
                        help=f"prompts to generate for --task (default: {DEFAULT_N_PROMPTS})")
    source.add_argument("--no-bos", action="store_true",
                        help="--task ioi and --prompts: do not start each prompt with the "
                             "BOS token (by default they do, as TransformerLens's to_tokens "
                             "does; every labelled position counts it)")

    ablation = study.add_argument_group("ablation")
    ablation.add_argument("--ablation", choices=("zero", "mean", "resample", "optimal"),
                          default="mean",
                          help="replacement value of an ablated component: zero, the mean "
                               "over the reference prompts, another prompt's value, or "
                               "optimal, the constant that least changes the model's output "
                               "on the reference prompts (fitted once per component, see "
                               "--oa-steps) (default: mean)")
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
    ablation.add_argument("--compare", type=_ablation_types, default=None, metavar="LIST",
                          help="the ablation types the comparison step compares, e.g. "
                               "zero,mean,optimal (default: zero, mean, resample and "
                               "optimal; optimal is left out, and a line says so, when "
                               "nothing else fits optimal constants and its fit is "
                               f"estimated at over {OA_COMPARE_BUDGET_S // 60} min on this "
                               "machine)")
    ablation.add_argument("--patching", action="store_true",
                          help="add the patching step: activation patching of the critical "
                               "heads and MLPs at each position and path patching to the "
                               "logits, clean values into the task's counterfactual prompts "
                               "(--task only: a --prompts file has no counterfactual)")

    optimal = study.add_argument_group(
        "optimal ablation",
        "each component's optimal constant, fitted once on the task's reference prompts (the\n"
        "ones mean ablation averages over) and used by --ablation optimal, the comparison\n"
        "step (unless --skip comparison) and --circuit-ablation optimal")
    optimal.add_argument("--oa-steps", type=_positive_int, default=None, metavar="N",
                         help=f"Adam steps of the fit (default: {DEFAULT_OA_STEPS})")
    optimal.add_argument("--oa-lr", type=_learning_rate, default=None, metavar="X",
                         help=f"Adam's learning rate (default: {DEFAULT_OA_LR})")
    optimal.add_argument("--oa-objective", choices=OA_OBJECTIVES, default=None,
                         help="what the constants minimise: kl_to_clean (KL from the clean "
                              "next-token distribution at every position) or loss "
                              f"(next-token loss) (default: {DEFAULT_OA_OBJECTIVE})")
    optimal.add_argument("--circuit-ablation", choices=("same", "optimal"), default="same",
                         help="same: the minimal circuit's complement ablated like every "
                              "step; optimal: also ablated jointly at constants optimised "
                              "for the complement as a whole (a separate fit), its "
                              "recovered fraction reported beside the usual one "
                              "(default: same)")

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
    output.add_argument("--dry-run", action="store_true",
                        help="print the plan (every sweep: step, ablation, masks, draws) and "
                             "its estimated time on this machine, and stop: nothing is swept, "
                             "compiled or written (a run estimated at over a minute prints "
                             "the plan before it starts anyway)")
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
