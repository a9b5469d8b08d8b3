"""Running `jaxablate study` from its parsed arguments: check what can be checked from the
model's config.json and the tokenizer before the weights load (a tokenizer too big for the
vocabulary, neuron layers out of range), start the hosts (--distributed) and the compilation
cache, load the model and the task, plan the run (`jaxablate.study.estimate`: the plan is
printed when the run is estimated at over LONG_RUN_S, its estimate in one line otherwise;
--dry-run prints it and stops), run the `Study` with progress bars on stderr whose totals
are the plan's, print the ranked table (or the JSON), write the report folder.

    run_study(args) -> exit status      args: `jaxablate.cli.options.build_parser().parse_args(...)`
    ProgressBars (jaxablate.engine.bars) the Study's progress callback: one tqdm bar per step

`Study` is imported from `jaxablate.study` when the run starts, so a stand-in placed in
`sys.modules` (the tests' fake Study) is the one used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from jaxablate.cli.options import (
    ABLATION_TYPES,
    DEFAULT_N_PROMPTS,
    INDUCTION_HALF,
    OA_COMPARE_BUDGET_S,
    OPTIONAL_STEPS,
    PROG,
    UsageError,
    asks_for_optimal,
    check_options,
    oa_settings,
)
from jaxablate.engine.bars import ProgressBars


def _enable_compilation_cache() -> None:
    """Persist compiled programs across runs (unless the user configured JAX's own)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import jax

    folder = os.environ.get("JAXABLATE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxablate", "jax")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


LONG_RUN_S = 60  # a run estimated at more than this prints its plan before it starts
GPT2_VOCAB = 50257  # ids of GPT-2's BPE tokenizer (the bundled one), end-of-text included


def _peek_config(source: str) -> Any:
    """The model's GPT2Config read from config.json alone, when that is cheap and offline (a
    bundled model, a local folder, a hub id already in the local cache), so that the checks
    that need only the config run before the weights load; None when it is not at hand
    (`load_gpt2` then reports whatever is wrong)."""
    from jaxablate.model.config import GPT2Config

    if source.startswith("bundled:"):
        from jaxablate.zoo import bundled_path

        path: Any = bundled_path(source[len("bundled:"):]) / "config.json"
    elif os.path.isdir(source):
        path = Path(source) / "config.json"
    elif os.path.exists(source) or source.startswith((".", "/", "~")):
        return None
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            path = try_to_load_from_cache(source, "config.json")
        except ValueError:  # not a valid repo id: load_gpt2 says so
            return None
        if not isinstance(path, str):  # not cached (or cached as absent)
            return None
    if not os.path.isfile(path):
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
        config = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"--model {source}: cannot read {path} as JSON ({error}); download or "
                         "convert the model again") from None
    if not isinstance(config, dict):
        raise UsageError(f"--model {source}: {path} holds no JSON object; download or convert "
                         "the model again")
    return GPT2Config.from_hf(config)


def _tokenizer_size(args: argparse.Namespace) -> int | None:
    """Ids of the task's tokenizer when known without loading it: GPT-2's (the default, or
    any GPT-2 hub id) has 50257. None for another tokenizer."""
    from jaxablate.model.tokenizer import GPT2_TOKENIZER_IDS

    source = args.tokenizer or "gpt2"
    return GPT2_VOCAB if source in GPT2_TOKENIZER_IDS and not os.path.isdir(source) else None


def _check_fit(args: argparse.Namespace, cfg: Any, n_ids: int | None) -> None:
    """Options that need the model's config: neuron layers in range, and a tokenizer whose ids
    fit the vocabulary (n_ids: the tokenizer's size, None when it is not known yet)."""

    if args.neuron_layers is not None:
        bad = [layer for layer in args.neuron_layers if not 0 <= layer < cfg.n_layers]
        if bad:
            raise UsageError(f"--neuron-layers {bad} out of range; the model has layers "
                             f"0-{cfg.n_layers - 1}")
    if n_ids is None or n_ids <= cfg.d_vocab:
        return
    what = "--prompts" if args.prompts is not None else "--task ioi"
    if args.tokenizer is None:
        raise UsageError(
            f"{what} needs GPT-2's tokenizer (the default --tokenizer gpt2): the tokenizer has "
            f"{n_ids} ids but the model's vocabulary has {cfg.d_vocab} (--model {args.model}); "
            f"pass --model gpt2 or another model with GPT-2's {GPT2_VOCAB}-token vocabulary, "
            "or --tokenizer with the model's own tokenizer (a model without one, such as "
            "bundled:induction, studies --task induction)")
    raise UsageError(f"--tokenizer {args.tokenizer}: the tokenizer has {n_ids} ids but the "
                     f"model's vocabulary has {cfg.d_vocab} (--model {args.model}); pass the "
                     "model's own tokenizer, or a model whose vocabulary holds this one")


def _load_task(args: argparse.Namespace, cfg: Any, tokenizer: Any) -> Any:
    from jaxablate.tasks.induction import induction, induction_vocab
    from jaxablate.tasks.ioi import ioi
    from jaxablate.tasks.ioi_toy import ioi_toy
    from jaxablate.tasks.prompts import from_jsonl

    if args.prompts is not None:
        task = from_jsonl(args.prompts, tokenizer, prepend_bos=not args.no_bos)
    elif args.task == "ioi-toy":
        task = ioi_toy(args.n_prompts or DEFAULT_N_PROMPTS,
                       template=0 if args.template is None else args.template, seed=args.seed)
    elif args.task == "ioi":
        task = ioi(tokenizer, args.n_prompts or DEFAULT_N_PROMPTS,
                   template=0 if args.template is None else args.template, seed=args.seed,
                   prepend_bos=not args.no_bos)
    else:
        # GPT-2's own vocabulary: stay clear of the end-of-text id.
        vocab = induction_vocab(cfg.d_vocab)
        half = min(INDUCTION_HALF, cfg.n_ctx // 2)
        task = induction(args.n_prompts or DEFAULT_N_PROMPTS, half=half, vocab=vocab,
                         seed=args.seed)
    if task.tokens.shape[1] > cfg.n_ctx:
        raise UsageError(f"the prompts have {task.tokens.shape[1]} tokens, more than the "
                         f"model's context of {cfg.n_ctx}")
    return task


def _prepare(args: argparse.Namespace) -> tuple[Any, Any]:
    """(the model's config when it can be read up front, else None; the tokenizer, or None
    for induction), every check that needs only these done before the weights load."""
    cfg = _peek_config(args.model)
    if args.prompts is None and args.task != "ioi":
        if cfg is not None:
            _check_fit(args, cfg, None)
        return cfg, None
    if cfg is not None:  # refused before the tokenizer (transformers) loads, when it can be
        _check_fit(args, cfg, _tokenizer_size(args))
    from jaxablate.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer or "gpt2")
    if cfg is not None:
        _check_fit(args, cfg, len(tokenizer))
    return cfg, tokenizer


def run_study(args: argparse.Namespace) -> int:
    """`jaxablate study`: load, run the Study, print, write the report."""

    check_options(args)
    early_cfg, tokenizer = _prepare(args)
    if args.distributed:
        _start_distributed(args)
    if not args.no_cache and not args.dry_run:
        _enable_compilation_cache()
    import jax

    from jaxablate.engine.sweeping import check_chunk_size
    from jaxablate.model.loading import load_gpt2
    from jaxablate.report.files import write_report
    from jaxablate.store.results import StoreWarning
    from jaxablate.study.checks import ABLATIONS
    from jaxablate.study.protocol import Study
    from jaxablate.study.result import jsonable

    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    start = time.perf_counter()
    model = load_gpt2(args.model)
    cfg = model.cfg
    if early_cfg is None:  # a hub model just downloaded: the checks that needed its config
        _check_fit(args, cfg, None if tokenizer is None else len(tokenizer))
    task = _load_task(args, cfg, tokenizer)
    say(f"model: {args.model} ({cfg.n_layers} layers x {cfg.n_heads} heads, d_model "
        f"{cfg.d_model}, vocabulary {cfg.d_vocab})")
    say(f"task: {task}")
    oa = oa_settings(args)
    if args.chunk_size is not None:
        n_read = task.metric.prepare(task.tokens, cfg)[0].shape[1]
        check_chunk_size(model, *task.tokens.shape, n_read, args.chunk_size,
                         what="--chunk-size")
    progress = ProgressBars(enabled=not args.quiet)
    with contextlib.closing(progress), warnings.catch_warnings():
        # A damaged stored file is one line on stderr (it is recomputed), not a warning dump.
        warnings.simplefilter("always", StoreWarning)
        warnings.showwarning = _show_warning
        # --dry-run writes nothing: no store (nor --overwrite emptying one).
        study = Study(model, task, ablation=args.ablation, components=args.components,
                      neuron_layers=args.neuron_layers, threshold=args.threshold,
                      seed=args.seed, progress=progress, model_name=args.model,
                      store=None if args.dry_run else Path(args.out) / "sweeps",
                      overwrite=args.overwrite and not args.dry_run,
                      chunk_size=args.chunk_size, devices=args.devices, **oa)
        steps = ("baseline", "single") + tuple(s for s in OPTIONAL_STEPS if s not in args.skip)
        steps += ("patching",) if args.patching else ()
        settings = {"target": args.target, "top_k": args.interaction_top_k, "steps": steps,
                    "screen_method": args.screen, "screen_steps": args.ig_steps,
                    "screen_top_k": args.screen_top_k, "types": args.compare or ABLATIONS,
                    "circuit_ablation": args.circuit_ablation}
        plan, left_out = _plan(study, settings, args)
        fits = (args.ablation == "optimal" or args.circuit_ablation == "optimal"
                or "ablation_comparison" in steps and "optimal" in settings["types"])
        say(f"ablation: {args.ablation}; components: {', '.join(args.components)}; "
            f"seed {args.seed}" + (f"; optimal constants: {oa['oa_objective']}, "
                                   f"{oa['oa_steps']} Adam steps, lr {oa['oa_lr']:g}"
                                   if fits else ""))
        if "ablation_comparison" in steps:
            say(f"comparison: {', '.join(settings['types'])}" + (left_out and f" ({left_out})"))
        _print_plan(plan, args, say)
        if args.dry_run:
            say(f"--dry-run: nothing was run (the plan took {plan.planning_s:.1f} s)")
            return 0
        progress.planned, progress.bounded = plan.progress_totals(), plan.bounded_labels()
        result = study.run(**settings)
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
    folder = write_report(data, args.out, plots=not args.no_plots,
                          overwrite=args.overwrite)
    store = getattr(study, "store", None)
    if store is not None:
        say(f"sweeps: {store.computed} files computed, {store.reused} reused from "
            f"{store.folder}")
    say(f"report: {Path(folder) / 'summary.md'} (study.json, tables"
        f"{'' if args.no_plots else ', figures'}) in {time.perf_counter() - start:.1f} s")
    return 0


def _plan(study: Any, settings: dict[str, Any], args: argparse.Namespace
          ) -> tuple[Any, str]:
    """The study's plan (`jaxablate.study.estimate.plan_study`, with `Study.run`'s
    `settings`) and why optimal ablation was left out of the comparison ("" when it was
    not). With no --compare and nothing else asking for optimal ablation
    (`asks_for_optimal`), optimal is left out (`settings["types"]` updated) when the plan
    estimates its fit at over OA_COMPARE_BUDGET_S on this machine."""
    from jaxablate.study.estimate import plan_study

    plan = plan_study(study, chunk_size=args.chunk_size, **settings)
    if (args.compare is not None or asks_for_optimal(args)
            or "ablation_comparison" not in settings["steps"]):
        return plan, ""
    fit_s = sum(seconds for step in plan.steps for what, seconds in step.other
                if what.startswith("optimal fit"))
    if fit_s <= OA_COMPARE_BUDGET_S:
        return plan, ""
    from jaxablate.study.checks import DEFAULT_TYPES
    from jaxablate.study.estimate import duration

    settings["types"] = DEFAULT_TYPES
    plan = plan_study(study, chunk_size=args.chunk_size, speed=plan.speed, **settings)
    return plan, (f"optimal left out: its fit is estimated at ~{duration(fit_s)} on this "
                  f"machine; --compare {','.join(ABLATION_TYPES)} adds it")


def _print_plan(plan: Any, args: argparse.Namespace, say: Any) -> None:
    """The plan printed in full with --dry-run or when the run is estimated at over
    LONG_RUN_S, else its estimate in one line."""
    if args.dry_run or plan.upper_seconds > LONG_RUN_S:
        for line in plan.lines():
            say(line)
    else:
        say(plan.lines()[-1] + " (--dry-run prints the plan)")


def _start_distributed(args: argparse.Namespace) -> None:
    """jax.distributed.initialize, from the flags or from the cluster's environment."""
    import jax


    kwargs = {}
    if args.coordinator is not None:
        kwargs = {"coordinator_address": args.coordinator, "num_processes": args.num_processes,
                      "process_id": args.process_id}
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as error:
        raise UsageError(f"--distributed: jax.distributed.initialize failed "
                         f"({' '.join(str(error).split())[:300]})") from None


def _show_warning(message: Any, category: Any, filename: Any, lineno: Any, file: Any = None,
                  line: Any = None) -> None:

    print(f"{PROG} study: warning: {' '.join(str(message).split())}", file=sys.stderr)


