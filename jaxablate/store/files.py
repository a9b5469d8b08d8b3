"""The results store's files: written atomically, read back only when their checksum holds.

    write_atomic(folder, name, stem, data)   temporary file, fsync, rename, fsync the folder
    write_chunk(folder, i, values)           chunk-<i>.<sha256[:16]>.npy, atomically
    read_chunk(folder, i, shape)             the values, or None (a damaged file is deleted,
                                             with a StoreWarning, so it is recomputed)
    wipe(folder, manifest=...)               only files this store writes
    remove_stale_tmp(folder)                 temporary files of processes that died mid-write

A run killed by SIGINT, SIGTERM or SIGKILL loses at most the file in flight.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
CHUNK = re.compile(r"chunk-(\d{6})\.([0-9a-f]{16})\.npy")
TMP = re.compile(r"\.(?:chunk-\d{6}|manifest)\.(\d+)\.tmp")


class StoreWarning(UserWarning):
    """A stored file failed its check and is recomputed."""


def fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_atomic(folder: Path, name: str, tmp_stem: str, data: bytes) -> None:
    """Write `data` to folder/name: a temporary file, fsync, rename (atomic), fsync folder.

    Example:
        >>> write_atomic(Path("runs/pairs/sweep"), "manifest.json", "manifest", b"{}")
    """
    tmp = folder / f".{tmp_stem}.{os.getpid()}.tmp"
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, folder / name)
    fsync_folder(folder)


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (on this host)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        pass
    return True


def write_chunk(folder: Path, i: int, values: np.ndarray) -> None:
    """Commit file i of a sweep: float32 `[masks, batch]`, its SHA-256 in its name."""
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()[:16]
    write_atomic(folder, f"chunk-{i:06d}.{sha}.npy", f"chunk-{i:06d}", data)


def read_chunk(folder: Path, i: int, shape: tuple[int, ...]) -> np.ndarray | None:
    """File i if present and sound (float32 of `shape`); a damaged one is deleted, with a
    `StoreWarning`, and None returned so that it is recomputed."""
    for path in sorted(folder.glob(f"chunk-{i:06d}.*.npy")):
        match = CHUNK.fullmatch(path.name)
        if match is None:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        problem = None
        if hashlib.sha256(data).hexdigest()[:16] != match.group(2):
            problem = "its checksum does not match (truncated or corrupted)"
        else:
            try:
                values = np.load(io.BytesIO(data), allow_pickle=False)
            except ValueError as error:
                problem = f"it cannot be read ({error})"
            else:
                if values.shape != shape or values.dtype != np.float32:
                    problem = (f"it holds {values.dtype} {list(values.shape)}, expected "
                               f"float32 {list(shape)}")
        if problem is None:
            return values
        warnings.warn(f"{path}: {problem}; recomputing it", StoreWarning, stacklevel=3)
        path.unlink(missing_ok=True)
    return None


def wipe(folder: Path, *, manifest: bool) -> None:
    """Delete the chunk and temporary files (and the manifest, then the emptied folder)."""
    for path in folder.iterdir():
        if CHUNK.fullmatch(path.name) or TMP.fullmatch(path.name) or \
                (manifest and path.name == MANIFEST):
            path.unlink(missing_ok=True)
    if manifest and not any(folder.iterdir()):
        folder.rmdir()


def remove_stale_tmp(folder: Path) -> None:
    """Temporary files of runs that died mid-write (their process is gone)."""
    for path in folder.iterdir():
        match = TMP.fullmatch(path.name)
        if match and not process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
