"""Running `jaxablate study` from its parsed arguments: start the hosts (--distributed) and
the compilation cache, load the model and the task, run the `Study` with progress bars on
stderr, print the ranked table (or the JSON), write the report folder.

    run_study(args) -> exit status      args: `jaxablate.cli.build_parser().parse_args(...)`
    ProgressBars(enabled)               the Study's progress callback: one tqdm bar per step
    _sigterm_raises()                   SIGTERM raises `_Terminated`, as Ctrl-C raises
                                        KeyboardInterrupt (`jaxablate.cli.main` reports both)

`Study` is imported from `jaxablate.study` when the run starts, so a stand-in placed in
`sys.modules` (the tests' fake Study) is the one used. `UsageError`, the option checks and the
defaults are `jaxablate.cli`'s; they are imported at call time, because `jaxablate.cli`
imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np


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
    from jaxablate.cli import _DEFAULT_N_PROMPTS, _INDUCTION_HALF, UsageError

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
    from jaxablate.cli import OPTIONAL_STEPS, UsageError, _check_options

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

    from jaxablate.cli import UsageError

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
    from jaxablate.cli import PROG

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
