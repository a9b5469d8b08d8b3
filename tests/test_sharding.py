"""Scale-out (`jaxablate.sharding`): sweeps, attributions and studies split over 4 forced CPU
devices equal single-device results, and two processes joined by `jax.distributed` share a
stored sweep without computing any file twice.

Each check runs in a subprocess: the device count is fixed when JAX starts (XLA_FLAGS), and
the rest of the suite keeps one device.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import jaxablate
from jaxablate.engine.sharding import placement

PACKAGE_PARENT = Path(jaxablate.__file__).resolve().parent.parent

# A random 3-layer GPT-2 shared by the child processes (seeded: every process builds the same).
SETUP = """
import json, os, sys
import numpy as np
import jax
import transformers
import jaxablate as ja
from jaxablate.model.reference import random_hf_model

config = transformers.GPT2Config(n_layer=3, n_head=4, n_embd=32, vocab_size=101,
                                 n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                                 attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
config._attn_implementation = "eager"
model = ja.load_gpt2(random_hf_model(config, 0, noise=0.1))
rng = np.random.default_rng(0)
tokens = rng.integers(0, 101, (6, 9)).astype(np.int32)
reference = rng.integers(0, 101, (8, 9)).astype(np.int32)
metric = ja.metrics.logit_diff(rng.integers(0, 101, 6), rng.integers(0, 101, 6))
mean = ja.mean_replacement(model, reference)
"""


def run_child(code: str, env_extra: dict[str, str] | None = None, args: tuple = (),
              timeout: int = 300) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["JAX_PLATFORMS"] = "cpu"
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            cwd=PACKAGE_PARENT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(child: subprocess.Popen, timeout: int = 300) -> dict:
    out, err = child.communicate(timeout=timeout)
    assert child.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    return json.loads(out.strip().splitlines()[-1])


def test_four_devices_equal_one():
    code = SETUP + """
import jaxablate.engine.sweeping as engine
assert len(jax.devices()) == 4, jax.devices()
spans = []  # how many devices each chunk's result is spread over
run_chunk = engine._run_chunk
def spy(*a, **k):
    out = run_chunk(*a, **k)
    spans.append(len(out.sharding.device_set))
    return out
engine._run_chunk = spy

report = {"sweep": {}, "attribute": {}}
resample = ja.resample_replacement(model, tokens, jax.random.key(1))
cases = [("heads", ja.masks.single_heads(model.cfg), resample),
         ("pairs", ja.masks.head_pairs(model.cfg), mean),  # parents' trajectories too
         ("positions", ja.masks.positions(model.cfg, 9), mean),
         ("neurons", ja.masks.single_neurons(model.cfg, layers=[1]), mean)]
for name, masks, repl in cases:
    one = ja.sweep(model, tokens, masks, repl, metric, devices=1)
    spans.clear()
    four = ja.sweep(model, tokens, masks, repl, metric)                 # every local device
    odd = ja.sweep(model, tokens, masks, repl, metric, chunk_size=5, devices=4)
    report["sweep"][name] = [float(np.abs(four - one).max()), float(np.abs(odd - one).max()),
                             min(spans)]
for method, repl in (("grad", mean), ("ig", resample)):
    kw = dict(kinds=("heads", "mlps", "neurons"), steps=4)
    one = ja.attribute(model, tokens, repl, metric, method, devices=1, **kw)
    odd = ja.attribute(model, tokens, repl, metric, method, chunk_size=5, **kw)
    report["attribute"][method] = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                                      for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(odd)))
task = ja.Task("tokens", tokens, metric, reference=reference)
steps = ("baseline", "single", "screening", "cumulative", "circuit", "interactions")
results = [ja.Study(model, task, devices=d, n_bootstrap=50).run(steps=steps, screen_top_k=4)
           .to_dict() for d in (1, 4)]
def pairs(a, b, path=""):
    if isinstance(a, dict):
        for k in a:
            if k not in ("meta", "seconds"):
                yield from pairs(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from pairs(x, y, f"{path}[{i}]")
    elif isinstance(a, (int, float)) and not isinstance(a, bool):
        yield path, float(a), float(b)
report["study"] = list(pairs(*results))
report["baseline"] = results[0]["baseline"]["mean"]
report["floor"] = results[0]["circuit"]["metric_all_ablated"]
report["gap"] = report["baseline"] - report["floor"]
report["recovered"] = results[0]["cumulative"]["recovered"]
report["members"] = [r["circuit"]["members"] for r in results]
print(json.dumps(report))
"""
    report = finish(run_child(code, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}))
    for name, (four, odd, span) in report["sweep"].items():
        assert four <= 1e-5 and odd <= 1e-5, (name, four, odd)
        assert span == 4, f"{name}: a chunk ran on {span} of 4 devices"
    for method, diff in report["attribute"].items():
        assert diff <= 1e-5, (method, diff)
    # Metric values agree to float32 rounding: eps = 1e-5 x max(1, |metric|), as the sweeps.
    # A recovered fraction r = (m - m_all) / (baseline - m_all) moves by
    # dr = (dm - r d baseline - (1 - r) d m_all) / gap, at most eps (1 + |r| + |1 - r|) / |gap|
    # (jaxablate.stats.recovered_tolerance), and the cliff's drop, a difference of two
    # recovered fractions, by the sum of their bounds.
    assert len(report["study"]) > 500
    eps = 1e-5 * max(1.0, abs(report["baseline"]), abs(report["floor"]))
    gap = abs(report["gap"])
    curve = max(abs(r) for r in report["recovered"])
    for path, a, b in report["study"]:
        if "recovered" in path or "faithfulness" in path:
            tol = eps * (1 + abs(a) + abs(1 - a)) / gap
        elif path.endswith("/cliff/drop"):
            tol = 2 * eps * (1 + curve + abs(1 + curve)) / gap
        else:
            tol = 1e-5 * max(1.0, abs(a))
        assert abs(a - b) <= tol, (path, a, b, tol)
    assert report["members"][0] == report["members"][1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_share_a_stored_sweep(tmp_path):
    # Two processes on localhost joined by jax.distributed, one results folder: each computes
    # the files i with i % 2 == its index, then reads the other's; both return everything.
    code = """
import sys
import jax
rank, port, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                           process_id=rank, initialization_timeout=120)
""" + SETUP + """
assert jax.process_count() == 2 and jax.process_index() == rank
store = ja.ResultsStore(folder)
masks = ja.masks.head_pairs(model.cfg)
values = store.sweep(model, tokens, masks, mean, metric, chunk_size=4, masks_per_file=8,
                     wait_timeout=240)
np.save(f"{folder}/values-{rank}.npy", values)
print(json.dumps({"computed": store.computed_files, "reused": store.reused}))
jax.distributed.shutdown()
"""
    port = _free_port()
    folder = tmp_path / "store"
    children = [run_child(code, args=(rank, port, folder)) for rank in (0, 1)]
    reports = [finish(child) for child in children]
    n_files = -(-(12 * 11 // 2) // 8)  # 3 layers x 4 heads: 66 pairs in files of 8
    computed = [set(r["computed"]) for r in reports]
    assert computed[0] == set(range(0, n_files, 2)) and computed[1] == set(range(1, n_files, 2))
    chunk_files = sorted((folder / "sweep").glob("chunk-*.npy"))
    assert len(chunk_files) == n_files  # one file per chunk: nothing computed twice
    values = [np.load(folder / f"values-{rank}.npy") for rank in (0, 1)]
    np.testing.assert_array_equal(values[0], values[1])
    # Against one process computing the same files alone (same programs: equal bit for bit).
    alone = run_child(SETUP + f"""
values = ja.ResultsStore({str(tmp_path / 'alone')!r}).sweep(
    model, tokens, ja.masks.head_pairs(model.cfg), mean, metric, chunk_size=4,
    masks_per_file=8)
np.save({str(tmp_path / 'alone.npy')!r}, values)
print(json.dumps({{}}))
""")
    finish(alone)
    np.testing.assert_array_equal(values[0], np.load(tmp_path / "alone.npy"))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(devices=0), ValueError, r"devices: expected a count in \[1, 1\]"),
    (dict(devices=3), ValueError, r"devices: expected a count in \[1, 1\]"),
    (dict(devices=["cpu:0"]), TypeError, "expected jax devices"),
    (dict(devices="all"), ValueError, "expected None, a count or a list"),
    (dict(devices=1, mesh=object()), ValueError, "not both"),
    (dict(mesh=object()), TypeError, "expected a jax.sharding.Mesh"),
])
def test_bad_device_arguments(tiny_model, kwargs, error, message):
    with pytest.raises(error, match=message):
        placement(**kwargs)
    with pytest.raises(error, match=message):
        jaxablate.sweep(tiny_model, np.zeros((2, 4), np.int32),
                        jaxablate.masks.single_heads(tiny_model.cfg),
                        jaxablate.zero_replacement(tiny_model), jaxablate.metrics.loss(),
                        **kwargs)


def test_one_device_is_the_unsharded_program():
    assert placement().mesh is None and placement(1).n_devices == 1
    assert placement().round_up(7) == 7


def test_distributed_command_line(tmp_path, tiny_dir):
    # `jaxablate study --distributed` on two local processes: both finish, process 1 leaves
    # the report to process 0, and the study equals a one-process run.
    port = _free_port()
    common = ["study", "--model", str(tiny_dir), "--n-prompts", "6", "--skip",
              "circuit,comparison", "--quiet", "--no-cache", "--json", "--no-plots"]
    code = "import sys; from jaxablate.cli import main; sys.exit(main(sys.argv[1:]))"
    children = [run_child(code, args=common + [
        "--out", tmp_path / "shared", "--distributed", "--coordinator", f"localhost:{port}",
        "--num-processes", "2", "--process-id", str(rank)]) for rank in (0, 1)]
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "process 1 of 2: done" in outputs[1][1] and outputs[1][0] == ""
    shared = json.loads((tmp_path / "shared" / "study.json").read_text())
    alone_child = run_child(code, args=common + ["--out", tmp_path / "alone"])
    out, err = alone_child.communicate(timeout=300)
    assert alone_child.returncode == 0, err
    alone = json.loads((tmp_path / "alone" / "study.json").read_text())
    for a, b in zip(shared["single"], alone["single"]):
        assert a["component"] == b["component"]
        assert a["effect"] == pytest.approx(b["effect"], abs=1e-6)
    assert [p["joint"] for p in shared["interactions"]["pairs"]] == pytest.approx(
        [p["joint"] for p in alone["interactions"]["pairs"]], abs=1e-6)
