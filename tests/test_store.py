"""The results store (`jaxablate.store`): resume after a real SIGKILL, refusal of changed inputs,
damaged files recomputed, determinism, NaN reporting, and the Study and CLI on top of it.

The sweep: the tiny model's 8 single heads, 28 head pairs and 2 MLPs (38 masks; pairs share
prefixes, so parent trajectories run too), mean ablation, a logit difference; 4 masks per
file, 2 per compiled call: 10 files.

Determinism bound: regrouping the masks (another file size, order; chunk size and prefix
reuse in the engine's own tests) changes values by float32 rounding only; tested at
1e-5 x max(1, max |value|) (measured: 1.2e-6 here, at most 2.2e-6 x max(1, max |metric|) on
larger models, see jaxablate/store.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxablate as ja
from jaxablate.store import results as store_lib
from jaxablate.cli.command import main
from jaxablate.store.results import ResultsStore, StoreMismatchError, StoreWarning

PACKAGE_PARENT = Path(ja.__file__).resolve().parent.parent
PER_FILE, CHUNK = 4, 2
N_FILES = 10
REL_BOUND = 1e-5


def close_enough(a, b):
    np.testing.assert_allclose(a, b, rtol=0, atol=REL_BOUND * max(1.0, float(np.abs(b).max())))


@pytest.fixture(scope="module")
def setup(tiny_model):
    cfg = tiny_model.cfg
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.d_vocab, (4, 8)).astype(np.int32)
    mask_set = ja.masks.concat([ja.masks.single_heads(cfg), ja.masks.head_pairs(cfg),
                                ja.masks.single_mlps(cfg)])
    repl = ja.mean_replacement(tiny_model, rng.integers(0, cfg.d_vocab, (6, 8)))
    metric = ja.metrics.logit_diff(rng.integers(0, cfg.d_vocab, 4),
                                   rng.integers(0, cfg.d_vocab, 4))
    return tiny_model, tokens, mask_set, repl, metric


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """The stored sweep, uninterrupted, and its folder (do not modify: copy it)."""
    model, tokens, mask_set, repl, metric = setup
    store = ResultsStore(tmp_path_factory.mktemp("reference"))
    values = store.sweep(model, tokens, mask_set, repl, metric, CHUNK, masks_per_file=PER_FILE)
    assert (store.computed, store.reused) == (N_FILES, 0)
    return values, store.folder


def chunk_files(folder):
    return sorted((Path(folder) / "sweep").glob("chunk-*.npy"))


def stored(setup, folder, **kwargs):
    model, tokens, mask_set, repl, metric = setup
    store = ResultsStore(folder, overwrite=kwargs.pop("overwrite", False))
    kwargs.setdefault("masks_per_file", PER_FILE)
    values = store.sweep(model, tokens, kwargs.pop("masks", mask_set),
                         kwargs.pop("replacement", repl), kwargs.pop("metric", metric),
                         kwargs.pop("chunk_size", CHUNK), **kwargs)
    return values, store


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A compilation cache shared by this module's child processes (only the first compiles)."""
    return tmp_path_factory.mktemp("jax-cache")


def run_python(code, *args, cache=None, **kwargs):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if cache is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            env=env, cwd=PACKAGE_PARENT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(predicate, process, timeout=120.0):
    start = time.monotonic()
    while not predicate():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the run ended before it could be killed:\n{out}\n{err}")
        if time.monotonic() - start > timeout:
            process.kill()
            process.communicate()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# Kill and resume: real processes.

SWEEP_SCRIPT = """
    import sys, time
    import numpy as np
    import jaxablate as ja
    from jaxablate.store.results import ResultsStore

    model_dir, folder, result, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    model = ja.load_gpt2(model_dir)
    cfg = model.cfg
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.d_vocab, (4, 8)).astype(np.int32)
    masks = ja.masks.concat([ja.masks.single_heads(cfg), ja.masks.head_pairs(cfg),
                             ja.masks.single_mlps(cfg)])
    repl = ja.mean_replacement(model, rng.integers(0, cfg.d_vocab, (6, 8)))
    metric = ja.metrics.logit_diff(rng.integers(0, cfg.d_vocab, 4),
                                   rng.integers(0, cfg.d_vocab, 4))
    store = ResultsStore(folder)
    slow = (lambda done, total: time.sleep(delay)) if delay else None
    values = store.sweep(model, tokens, masks, repl, metric, 2, masks_per_file=4,
                         progress=slow)
    np.save(result, values)
    print(store.computed, store.reused)
"""


def test_sigkill_half_way_then_resume_equals_an_uninterrupted_run(tiny_dir, tmp_path,
                                                                  compile_cache, reference):
    # `reference`: the same sweep, uninterrupted, in this process.
    killed = run_python(SWEEP_SCRIPT, tiny_dir, tmp_path / "run", tmp_path / "never.npy", 0.1,
                        cache=compile_cache)
    wait_for(lambda: len(chunk_files(tmp_path / "run")) >= 3, killed)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    left = len(chunk_files(tmp_path / "run"))
    assert 3 <= left < N_FILES, left  # killed half-way
    assert not (tmp_path / "never.npy").exists()

    resumed = run_python(SWEEP_SCRIPT, tiny_dir, tmp_path / "run", tmp_path / "resumed.npy", 0,
                         cache=compile_cache)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    computed, reused = map(int, out.split())
    assert reused == left and computed == N_FILES - left, (computed, reused, left)
    a, b = reference[0], np.load(tmp_path / "resumed.npy")
    assert a.shape == (38, 4) and np.array_equal(a, b), np.abs(a - b).max()
    assert not list((tmp_path / "run" / "sweep").glob(".*.tmp"))  # the killed write is gone


def test_resume_in_process_computes_only_what_is_missing(setup, reference, tmp_path):
    want, folder = reference
    copy = tmp_path / "copy"
    (copy / "sweep").mkdir(parents=True)
    for path in (folder / "sweep").iterdir():
        (copy / "sweep" / path.name).write_bytes(path.read_bytes())
    for path in chunk_files(copy)[3::2]:  # as if killed: some files never written
        path.unlink()
    (copy / "sweep" / ".chunk-000009.999999999.tmp").write_bytes(b"half a file")  # dead pid
    calls = []
    values, store = stored(setup, copy, progress=lambda d, t: calls.append((d, t)))
    assert np.array_equal(values, want)
    assert (store.computed, store.reused) == (4, 6)
    assert calls[-1] == (38, 38) and all(b[0] >= a[0] for a, b in zip(calls, calls[1:]))
    assert not (copy / "sweep" / ".chunk-000009.999999999.tmp").exists()
    again, store = stored(setup, copy)
    assert np.array_equal(again, want) and (store.computed, store.reused) == (0, N_FILES)


def test_damaged_files_are_detected_and_recomputed(setup, reference, tmp_path):
    want, folder = reference
    copy = tmp_path / "copy"
    (copy / "sweep").mkdir(parents=True)
    for path in (folder / "sweep").iterdir():
        (copy / "sweep" / path.name).write_bytes(path.read_bytes())
    files = chunk_files(copy)
    data = bytearray(files[1].read_bytes())
    data[-3] ^= 0x40  # one flipped bit in a value
    files[1].write_bytes(bytes(data))
    files[4].write_bytes(files[4].read_bytes()[:50])  # truncated
    files[7].write_bytes(b"")  # empty
    with pytest.warns(StoreWarning, match="checksum does not match") as caught:
        values, store = stored(setup, copy)
    assert len(caught) == 3 and "recomputing" in str(caught[0].message)
    assert np.array_equal(values, want) and (store.computed, store.reused) == (3, 7)

    (copy / "sweep" / "manifest.json").write_text('{"format": "jaxablate-results-st')
    with pytest.warns(StoreWarning, match="manifest.json cannot be read"):
        values, store = stored(setup, copy)
    assert np.array_equal(values, want) and (store.computed, store.reused) == (N_FILES, 0)


# ---------------------------------------------------------------------------------------------
# Changed inputs are refused; overwrite starts afresh.


def test_changed_inputs_are_refused_and_overwrite_starts_afresh(setup, reference, tmp_path,
                                                                tiny_hf):
    model, tokens, mask_set, repl, metric = setup
    want, folder = reference
    copy = tmp_path / "copy"
    (copy / "sweep").mkdir(parents=True)
    for path in (folder / "sweep").iterdir():
        (copy / "sweep" / path.name).write_bytes(path.read_bytes())
    other_model = ja.load_gpt2(tiny_hf)  # same weights: accepted
    assert np.array_equal(ResultsStore(copy).sweep(other_model, tokens, mask_set, repl, metric,
                                                   CHUNK, masks_per_file=PER_FILE), want)
    import equinox as eqx

    nudged = eqx.tree_at(lambda m: m.lnf_b, model, model.lnf_b.at[0].add(1e-3))
    changes = [
        (dict(model=nudged), r"\(changed: model weights\)"),
        (dict(tokens=tokens[:, ::-1].copy()), r"\(changed: tokens\)"),
        (dict(masks=mask_set.subset(range(37, -1, -1))), r"\(changed: mask set\)"),
        (dict(replacement=ja.zero_replacement(model)),
         r"\(changed: replacement values; ablation type: 'mean' there, 'zero' now\)"),
        (dict(metric=ja.metrics.logit_diff([1, 2, 3, 4], [5, 6, 7, 8])),
         r"\(changed: metric\)"),
        (dict(seed=3), "seed: None there, 3 now"),
        (dict(chunk_size=3), "chunk size: 2 there, 3 now"),
        (dict(reuse_prefix=False), "reuse_prefix: True there, False now"),
    ]
    for change, message in changes:
        args = dict(model=model, tokens=tokens, masks=mask_set, replacement=repl,
                    metric=metric, chunk_size=CHUNK)
        args.update(change)
        extra = {k: args.pop(k) for k in ("seed", "reuse_prefix") if k in args}
        with pytest.raises(StoreMismatchError, match=message) as caught:
            ResultsStore(copy).sweep(*args.values(), masks_per_file=PER_FILE, **extra)
        assert "overwrite=True" in str(caught.value), caught.value
    assert len(chunk_files(copy)) == N_FILES  # nothing was touched

    store = ResultsStore(copy, overwrite=True)
    assert not (copy / "sweep").exists()
    values = store.sweep(nudged, tokens, mask_set, repl, metric, CHUNK, masks_per_file=PER_FILE)
    assert store.computed == N_FILES and not np.array_equal(values, want)


def test_package_versions_are_part_of_the_manifest(setup, tmp_path, monkeypatch):
    _, store = stored(setup, tmp_path)
    manifest = json.loads((tmp_path / "sweep" / "manifest.json").read_text())
    assert manifest["inputs"]["versions"]["jax"] == jax.__version__
    assert manifest["inputs"]["platform"] == "cpu" and manifest["inputs"]["batch"] == 4
    assert manifest["about"]["first_masks"][:2] == ["0.0", "0.1"]
    real = store_lib.versions
    monkeypatch.setattr(store_lib, "versions", lambda: {**real(), "jax": "0.0.1"})
    with pytest.raises(StoreMismatchError, match=f"jax {jax.__version__} there, 0.0.1 now"):
        stored(setup, tmp_path)


def test_unwritable_folder_is_refused_up_front(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder; choose another folder"):
        ResultsStore(blocker)
    with pytest.raises(ValueError, match="cannot write to .* choose a folder you can write"):
        ResultsStore(blocker / "inside")


# ---------------------------------------------------------------------------------------------
# Determinism.


def test_same_inputs_same_numbers_and_the_regrouping_bound(setup, reference, tmp_path):
    model, tokens, mask_set, repl, metric = setup
    want, _ = reference
    plain = ja.sweep(model, tokens, mask_set, repl, metric, CHUNK)
    assert np.array_equal(plain, ja.sweep(model, tokens, mask_set, repl, metric, CHUNK))
    close_enough(plain, want)
    # ja.sweep(store=...) is the same stored sweep
    hooked = ja.sweep(model, tokens, mask_set, repl, metric, CHUNK, store=tmp_path / "hook")
    assert np.array_equal(hooked, ja.sweep(model, tokens, mask_set, repl, metric, CHUNK,
                                           store=tmp_path / "hook"))
    close_enough(hooked, want)
    # Other files, another order: other groupings of the masks into compiled calls. (Chunk
    # sizes and prefix reuse of the engine alone: tests/test_engine_properties.py and
    # tests/test_properties_design.py.)
    order = np.random.default_rng(5).permutation(len(mask_set))
    for i, kwargs in enumerate([dict(masks_per_file=7), dict(masks_per_file=3),
                                dict(masks=mask_set.subset(order.tolist()))]):
        values, _ = stored(setup, tmp_path / str(i), **kwargs)
        if "masks" in kwargs:
            values = values[np.argsort(order)]
        close_enough(values, want)


# ---------------------------------------------------------------------------------------------
# NaN and inf in the metric.


def test_non_finite_metric_names_the_masks_and_keeps_the_files(setup, tmp_path):
    model, tokens, mask_set, repl, metric = setup
    # A finite but huge replacement for head 0.1 overflows float32 downstream.
    huge = ja.Replacement(z=repl.z.at[0, :, 1].set(3e38), mlp_out=repl.mlp_out,
                          post=repl.post, resid=repl.resid, kind="custom")
    heads = mask_set.subset(range(8))  # the single heads (same kinds: same programs)
    with pytest.raises(ja.NonFiniteMetricError, match=r"NaN or inf under 1 mask: 0\.1 "
                                                      r"\(examples 0, 1, 2, 3\)") as caught:
        ja.sweep(model, tokens, heads, huge, metric, CHUNK)
    assert caught.value.names == ["0.1"] and caught.value.values.shape == (8, 4)
    assert np.isfinite(np.delete(caught.value.values, 1, axis=0)).all()

    # Stored: the file holding 0.0 .. 0.3 is committed, then the error names 0.1.
    with pytest.raises(ja.NonFiniteMetricError, match=r"under 1 mask: 0\.1 .*stored in"):
        stored(setup, tmp_path, replacement=huge)
    assert len(chunk_files(tmp_path)) == 1
    store = ResultsStore(tmp_path)
    with pytest.raises(ja.NonFiniteMetricError, match=r"under 1 mask: 0\.1 "):
        store.sweep(model, tokens, mask_set, huge, metric, CHUNK, masks_per_file=PER_FILE)
    assert (store.computed, store.reused) == (0, 1)


# ---------------------------------------------------------------------------------------------
# The command line: resume after SIGTERM / SIGINT, refuse a changed input, --overwrite.

CLI_SCRIPT = """
    import sys, time
    from jaxablate.store import results as store
    from jaxablate.cli.command import main

    commit = store.write_chunk
    def slow_commit(*args):
        commit(*args)
        time.sleep(0.3)
    store.write_chunk = slow_commit
    sys.exit(main(sys.argv[1:]))
"""


def cli_args(tiny_dir, out, *extra):
    return ["study", "--model", str(tiny_dir), "--n-prompts", "6", "--components",
            "heads,mlps", "--ablation", "resample", "--skip",
            "screening,circuit,interactions,comparison", "--chunk-size", "2", "--no-plots",
            "--quiet", "--no-cache", "--out", str(out), *extra]


@pytest.mark.parametrize("sig, status, word", [(signal.SIGTERM, 143, "terminated"),
                                               (signal.SIGINT, 130, "interrupted")])
def test_cli_stops_on_a_signal_and_resumes(tiny_dir, tmp_path, capsys, compile_cache, sig,
                                            status, word):
    out = tmp_path / "report"
    run = run_python(CLI_SCRIPT, *cli_args(tiny_dir, out), cache=compile_cache)
    wait_for(lambda: len(list(out.glob("sweeps/*/chunk-*.npy"))) >= 1, run)
    run.send_signal(sig)
    _, err = run.communicate(timeout=120)
    assert run.returncode == status, err
    line, = err.strip().splitlines()
    assert line.startswith(f"jaxablate study: {word}") and "Traceback" not in err
    assert line.endswith(f"; the sweep results finished so far are kept in {out / 'sweeps'}: "
                         "run the same command again to resume"), line
    saved = len(list(out.glob("sweeps/*/chunk-*.npy")))
    assert main(cli_args(tiny_dir, out)) == 0
    printed = capsys.readouterr().out
    assert f"reused from {out / 'sweeps'}" in printed
    reused = int(printed.split(" reused from")[0].split(", ")[-1].split()[0])
    assert reused >= saved >= 1


def without_times(path):
    data = json.loads(path.read_text())
    del data["meta"]["date"], data["meta"]["seconds"]
    return data


def test_cli_resumes_refuses_a_changed_input_and_is_deterministic(tiny_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(cli_args(tiny_dir, out)) == 0
    first = without_times(out / "study.json")
    assert ", 0 reused" in capsys.readouterr().out
    assert main(cli_args(tiny_dir, out)) == 0  # resumed: nothing left to compute
    assert "sweeps: 0 files computed" in capsys.readouterr().out
    assert without_times(out / "study.json") == first

    assert main(cli_args(tiny_dir, out, "--seed", "1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    # The report of the seed-0 run is refused first (before the model loads) ...
    assert "holds the report of a run with other settings (seed: 0 there, 1 now)" in err, err
    # ... and without the report, the stored sweeps refuse the changed inputs themselves.
    kept = tmp_path / "sweeps-only"
    kept.mkdir()
    shutil.copytree(out / "sweeps", kept / "sweeps")
    assert main(cli_args(tiny_dir, kept, "--seed", "1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"jaxablate study: error: --out {kept} holds sweep results of another "
                          "run (changed: tokens, replacement values, metric; seed: 0 there, 1 "
                          "now); re-run with --overwrite to start afresh, or choose another "
                          "--out"), err
    assert main(cli_args(tiny_dir, out, "--seed", "1", "--overwrite")) == 0
    assert ", 0 reused" in capsys.readouterr().out
    assert without_times(out / "study.json") != first
    # The same seed again, recomputed from nothing (resample draws, bootstrap): the same
    # numbers, bit for bit.
    assert main(cli_args(tiny_dir, out, "--overwrite")) == 0
    assert ", 0 reused" in capsys.readouterr().out
    assert without_times(out / "study.json") == first
