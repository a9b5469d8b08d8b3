"""The results store: long sweeps that survive interruption and resume where they stopped.

    values = ja.sweep(model, tokens, masks.head_pairs(cfg), repl, metric, store="runs/pairs")
    # killed half-way (Ctrl-C, SIGTERM, kill -9, a crash)? The same call again computes only
    # the chunks that are missing and returns the same numbers, bit for bit.

Layout: one sub-folder per sweep, named by its `key` ("sweep" for `ja.sweep(store=...)`; a
`Study` keys each of its sweeps by step, ablation, draw and mask set):

    runs/pairs/sweep/manifest.json            what produced the results (below)
    runs/pairs/sweep/chunk-000003.<sha>.npy   float32 [masks 3S .. 4S-1, batch]
                                              ([draws, masks, batch] for a list of draws)

Chunks. The mask set is cut, in its own order, into files of S masks (`masks_per_file`,
default 8 compute chunks); each file is one `sweep` call whose last chunk is padded with
clean masks, so every file runs the same compiled programs. A file is written under a
temporary name, fsynced, then renamed over its final name (atomic on POSIX): a run killed
by SIGINT, SIGTERM or SIGKILL loses at most the file in flight. `<sha>` is the first 16 hex
digits of the file's SHA-256: a truncated or corrupted file fails the check, is deleted (a
`StoreWarning` says so) and recomputed.

Manifest. SHA-256 digests of the model (every weight array, with the config), the tokens,
the mask set (entries, names, kinds), the replacement values and the metric (its kind and
the positions and token ids it prepared for these tokens); the ablation type, the seed, the
chunk sizes, prefix reuse, the JAX platform and the package versions. A run whose inputs
differ from the manifest's is refused with a `StoreMismatchError` naming what changed, so
results of two runs are never mixed; `ResultsStore(folder, overwrite=True)` (command line:
`--overwrite`) deletes the folder's sweeps first.

Several processes (`jax.distributed.initialize`, one folder all of them see). Process p of
P computes the missing files i with i % P == p on its own devices; process 0 writes the
manifest and the others wait for it; each then reads the other processes' files as they
appear, so every process returns the whole result and no file is computed twice.

Determinism. A file's numbers depend only on its masks (same composition, same compiled
programs), so a resumed sweep equals an uninterrupted one bit for bit (tested with a real
SIGKILL). Another chunk size, file size, mask order or `reuse_prefix` regroups the masks
into other compiled calls: the numbers then agree up to float32 rounding. Measured over
chunk sizes 1 to N, files of 5 and 64 masks, a permuted order and reuse_prefix off:
|difference| <= 2.2e-6 x max(1, max |metric|) (the bundled model: 1.4e-6 with |metric| up
to 5.2; a random 6-layer, 768-wide GPT-2: 2.2e-6 with |metric| up to 1.1); tested at
1e-5 x max(1, max |metric|) (`tests/test_store.py`).
NaN or inf in the metric stops the sweep with a `NonFiniteMetricError` naming the masks,
after the file that holds them is committed.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from jaxablate.ablation.masks import MaskSet, concat, from_components
from jaxablate.engine.draws import is_drawn
from jaxablate.engine.sharding import placement
from jaxablate.engine.sweeping import NonFiniteMetricError, check_sweep, planned_chunk_size, sweep
from jaxablate.errors import InputError
from jaxablate.model.gpt2 import GPT2
from jaxablate.model.replacement import Replacement
from jaxablate.model.validation import check_int
from jaxablate.store.digest import (
    digest,
    masks_digest,
    metric_digest,
    model_digest,
    replacement_digest,
    versions,
)
from jaxablate.store.files import (
    MANIFEST,
    StoreWarning,
    read_chunk,
    remove_stale_tmp,
    wipe,
    write_atomic,
    write_chunk,
)

FORMAT = "jaxablate-results-store/1"
CHUNKS_PER_FILE = 8  # compute chunks per committed file, by default
POLL_S = 0.5  # seconds between looks for other processes' files
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# How a changed input is named in messages (manifest "inputs" keys, in this order).
LABELS = {
    "model": "model weights", "tokens": "tokens", "masks": "mask set",
    "replacement": "replacement values", "metric": "metric", "ablation": "ablation type",
    "seed": "seed", "reuse_prefix": "reuse_prefix", "chunk_size": "chunk size",
    "masks_per_file": "masks per file", "n_masks": "number of masks",
    "batch": "number of prompts", "platform": "JAX platform", "versions": "versions",
}


class StoreMismatchError(InputError):
    """The store holds results of other inputs. `changed`: the manifest keys that differ."""

    def __init__(self, folder: Path, changed: list[str], details: str):
        self.folder, self.changed, self.details = folder, changed, details
        super().__init__(f"results store {folder} holds results of another run ({details}); "
                         "pass overwrite=True (command line: --overwrite) to start afresh, or "
                         "use another folder")


# ---------------------------------------------------------------------------------------------
# Files: atomic writes, checked reads.


class ResultsStore:
    """A folder of sweep results committed chunk by chunk (see the module docstring).

    folder: created if needed; refused up front when it cannot be written. overwrite: delete
    the sweeps already stored there first. `computed` and `reused` count the files this
    object computed and read back.

    Example:
        >>> store = ResultsStore("runs/neurons")
        >>> out = store.sweep(model, tokens, masks.single_neurons(cfg), repl, metric)
        >>> store.computed, store.reused          # (12, 0); after a kill and re-run: (7, 5)
    """

    def __init__(self, folder: str | os.PathLike, *, overwrite: bool = False):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"results store: {self.folder} is a file, not a folder; choose "
                             "another folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".write-test.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise InputError(f"results store: cannot write to {self.folder} "
                             f"({error.strerror or error}); choose a folder you can write "
                             "to") from None
        self.computed = 0
        self.reused = 0
        self.computed_files: list[int] = []  # indices of the files this object computed
        self._memo: dict[Any, tuple[Any, str]] = {}
        if overwrite:
            self.clear()

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.folder)!r})"

    def keys(self) -> list[str]:
        """The sweeps stored here (sub-folders with a manifest)."""
        return sorted(p.name for p in self.folder.iterdir() if (p / MANIFEST).is_file())

    def clear(self) -> None:
        """Delete every stored sweep (only files this store writes)."""
        for key in self.keys():
            wipe(self.folder / key, manifest=True)

    # -- one sweep ----------------------------------------------------------------------------

    def sweep(
        self,
        model: GPT2,
        tokens: Any,
        masks: Any,
        replacement: Replacement | list[Replacement] | None,
        metric: Any,
        chunk_size: Any = None,
        *,
        key: str = "sweep",
        seed: int | None = None,
        ablation: str | None = None,
        progress: Any = None,
        reuse_prefix: bool = True,
        memory_budget: int | None = None,
        masks_per_file: int | None = None,
        devices: Any = None,
        mesh: Any = None,
        wait_timeout: float | None = None,
    ) -> Float[np.ndarray, "*draws n batch"]:
        """`jaxablate.sweep` with its results committed under `key`, resuming what is there.

        Arguments as `sweep`'s (a list of D replacements: every mask under each draw, the
        result `[D, N, batch]`, each file holding its masks' values under every draw); key: the sweep's sub-folder; seed, ablation: recorded in the
        manifest (ablation defaults to the replacement's kind); masks_per_file: masks per
        committed file (default 8 compute chunks). chunk_size defaults to the manifest's
        when resuming, else to the one `sweep` plans for the whole set (per device, times
        the devices). devices / mesh: as `sweep`'s (this process's devices).
        Several processes (`jax.distributed.initialize`, a folder all of them see): process
        p of P computes the missing files i with i % P == p, process 0 writes the manifest,
        and each then waits (up to `wait_timeout` seconds, default forever) for the others'
        files and returns the whole result: no file is computed twice.
        Raises StoreMismatchError when the stored results came from other inputs.
        """
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise InputError(f"key: expected letters, digits, '.', '_' or '-', got {key!r}")
        tokens, mask_set, _, _, chunk_size = check_sweep(model, tokens, masks, replacement,
                                                         metric, chunk_size, memory_budget,
                                                         progress)
        batch = tokens.shape[0]
        drawn = is_drawn(replacement)
        if masks_per_file is not None:
            check_int(masks_per_file, "masks_per_file", 1)
        n = len(mask_set)
        inputs = {
            "model": self._memo_digest(model, model_digest),
            "tokens": digest(tokens),
            "masks": masks_digest(mask_set),
            "replacement": (digest("draws", [self._memo_digest(r, replacement_digest)
                                             for r in replacement]) if drawn
                            else self._memo_digest(replacement, replacement_digest)),
            "metric": metric_digest(metric, tokens, model.cfg),
            "ablation": ablation if ablation is not None else
            (None if replacement is None else (replacement[0] if drawn else replacement).kind),
            "seed": seed, "reuse_prefix": bool(reuse_prefix), "n_masks": n, "batch": batch,
            "platform": jax.default_backend(), "versions": versions()}
        if drawn:  # (only then: the manifests of earlier single-replacement stores still match)
            inputs["draws"] = len(replacement)
        lead = (len(replacement),) if drawn else ()  # a file: [(draws,) masks, batch]
        folder = self.folder / key
        old = self._read_manifest(folder)
        if old is not None:
            stored = old["inputs"]
            self._compare(folder, stored, inputs)
            chunk_size = stored["chunk_size"] if chunk_size is None else chunk_size
            masks_per_file = (stored["masks_per_file"] if masks_per_file is None
                              else masks_per_file)
        place = placement(devices, mesh)
        rank, world = jax.process_index(), jax.process_count()
        if chunk_size is None:
            chunk_size = place.n_devices * planned_chunk_size(
                model, tokens, mask_set, metric, reuse_prefix=reuse_prefix,
                memory_budget=memory_budget, draws=len(replacement) if drawn else 1)
        chunk_size = min(chunk_size, n)
        per_file = int(masks_per_file or chunk_size * CHUNKS_PER_FILE)
        chunk_size = min(chunk_size, per_file)  # files smaller than a chunk: smaller chunks
        inputs.update(chunk_size=chunk_size, masks_per_file=per_file)
        if old is None and world > 1 and rank > 0:  # process 0 writes the manifest
            old = self._wait_for_manifest(folder, wait_timeout)
        if old is not None:
            self._compare(folder, old["inputs"], inputs)
        else:
            folder.mkdir(exist_ok=True)
            wipe(folder, manifest=False)  # chunks without a manifest are not trusted
            about = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "model_config": repr(model.cfg), "metric": repr(metric),
                     "mask_kinds": list(mask_set.kinds), "first_masks": mask_set.names[:5],
                     "files": -(-n // per_file)}
            text = json.dumps({"format": FORMAT, "inputs": inputs, "about": about}, indent=1)
            write_atomic(folder, MANIFEST, "manifest", text.encode())
        if world == 1:  # another host's file in flight is not ours to judge by pid
            remove_stale_tmp(folder)

        out = np.empty(lead + (n, batch), np.float32)
        spans = [(i, lo, min(n, lo + per_file)) for i, lo in enumerate(range(0, n, per_file))]
        others = []  # files another process computes
        done = 0
        for i, lo, hi in spans:
            values = read_chunk(folder, i, lead + (hi - lo, batch))
            if values is None and i % world != rank:
                others.append((i, lo, hi))
                continue
            if values is None:
                values = self._compute(model, tokens, mask_set, replacement, metric, lo, hi,
                                       chunk_size, progress, reuse_prefix, memory_budget,
                                       devices, mesh)
                write_chunk(folder, i, values)
                self.computed += 1
                self.computed_files.append(i)
            else:
                self.reused += 1
            done = self._take(out, values, mask_set, lo, hi, folder, progress, done)
        deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
        while others:
            waiting = []
            for i, lo, hi in others:
                values = read_chunk(folder, i, lead + (hi - lo, batch))
                if values is None:
                    waiting.append((i, lo, hi))
                else:
                    self.reused += 1
                    done = self._take(out, values, mask_set, lo, hi, folder, progress,
                                      done)
            others = waiting
            if others and deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"results store {folder}: files {[i for i, *_ in others]} "
                                   f"of other processes did not appear within {wait_timeout} "
                                   "s; run the same command again to resume")
            if others:
                time.sleep(POLL_S)
        return out

    def _take(self, out: np.ndarray, values: np.ndarray, mask_set: MaskSet, lo: int, hi: int,
              folder: Path, progress: Callable[[int, int], None] | None, done: int) -> int:
        """Put a file's values in `out` (NaN/inf: an error naming the masks) and report
        progress; returns the masks done so far."""
        out[..., lo:hi, :] = values
        if not np.isfinite(values).all():
            raise NonFiniteMetricError(mask_set.names, values, offset=lo,
                                       where=f" (stored in {folder})")
        if progress is not None:
            progress(done + hi - lo, len(mask_set))
        return done + hi - lo

    def _wait_for_manifest(self, folder: Path, timeout: float | None) -> dict[str, Any]:
        """Process 0's manifest of this sweep (other processes wait for it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (manifest := self._read_manifest(folder)) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"results store {folder}: process 0 wrote no manifest "
                                   f"within {timeout} s; is it running, on the same folder?")
            time.sleep(POLL_S)
        return manifest

    # -- internals ----------------------------------------------------------------------------

    def _memo_digest(self, obj: Any, fn: Callable[[Any], str]) -> str:
        """fn(obj), once per object (the object is kept alive so its id stays unique)."""
        if obj is None:
            return fn(obj)
        if id(obj) not in self._memo:
            self._memo[id(obj)] = (obj, fn(obj))
        return self._memo[id(obj)][1]

    def _compute(self, model, tokens, mask_set, replacement, metric, lo, hi, chunk_size,
                 progress, reuse_prefix, memory_budget, devices, mesh) -> np.ndarray:
        """Masks [lo, hi) in one sweep, padded with clean masks to a multiple of chunk_size
        (the same compiled programs for every file)."""
        part = mask_set.subset(range(lo, hi))
        size = -(-(hi - lo) // chunk_size) * chunk_size
        if size > hi - lo:
            pad = from_components(mask_set.cfg, [[]] * (size - (hi - lo)),
                                            seq_len=mask_set.seq_len,
                                            n_features=mask_set.n_features)
            part = concat([part, pad])  # the same kinds: the same compiled programs
        if isinstance(replacement, Replacement) and replacement.per_mask:  # own values
            rows = np.concatenate([np.arange(lo, hi), np.full(size - (hi - lo), lo)])
            replacement = replacement.take(jnp.asarray(rows))
        report = None if progress is None else (
            lambda done, total: progress(min(lo + int(done), hi), len(mask_set)))
        try:
            values = sweep(model, tokens, part, replacement, metric, chunk_size,
                           progress=report, reuse_prefix=reuse_prefix,
                           memory_budget=memory_budget, devices=devices, mesh=mesh)
        except NonFiniteMetricError as error:  # committed first, reported by the caller
            values = error.values
        return np.ascontiguousarray(values[..., : hi - lo, :], np.float32)

    def _read_manifest(self, folder: Path) -> dict[str, Any] | None:
        path = folder / MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if manifest.get("format") != FORMAT or not isinstance(manifest.get("inputs"), dict):
                raise InputError("not a jaxablate results store manifest")
        except (OSError, ValueError, AttributeError) as error:
            warnings.warn(f"{path} cannot be read ({error}); its results are discarded and "
                          "recomputed", StoreWarning, stacklevel=3)
            wipe(folder, manifest=True)
            return None
        return manifest

    def _compare(self, folder: Path, stored: dict[str, Any], now: dict[str, Any]) -> None:
        changed = [k for k in now if stored.get(k) != now[k]]
        if not changed:
            return
        digests = [LABELS.get(k, k) for k in changed
                   if isinstance(now[k], str) and len(now[k]) == 64]
        parts = [f"changed: {', '.join(digests)}"] if digests else []
        for k in changed:
            old, new = stored.get(k), now[k]
            if isinstance(new, str) and len(new) == 64:
                continue
            if k == "versions" and isinstance(old, dict):
                parts += [f"{p} {old.get(p)} there, {new.get(p)} now" for p in new
                          if old.get(p) != new.get(p)]
            else:
                parts.append(f"{LABELS.get(k, k)}: {old!r} there, {new!r} now")
        raise StoreMismatchError(folder, changed, "; ".join(parts))
