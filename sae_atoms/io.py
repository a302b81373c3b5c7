"""Atomic file writes: nothing the package writes is ever left half-written.

Each writer writes to a temporary file (``atomic_write``) or folder (``atomic_dir``) in the
destination's folder and renames it into place (``os.replace`` is atomic on one file system), so an
interrupted run leaves either the old copy or the new one. What is written gets the modes the
user's umask gives (``follow_umask``): ``mkstemp`` / ``mkdtemp`` make 0600 / 0700 entries, and
safetensors writes 0600 files, which others could not read. Output paths are checked before any
compute (``check_output_dir`` / ``check_output_file``); a damaged file is read as a ``ValueError``
naming it (``read_json`` / ``readable``), not a decoder error that names no file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        follow_umask(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` to fill; on success it replaces ``path`` (modes
    from the umask), on an error it is removed and ``path`` is untouched.

    An existing ``path`` is moved aside before the rename and deleted after it, so a kill at any
    point leaves the old folder or the new one (at worst beside a ``.NAME.old-*`` folder).
    """
    path = Path(path).resolve()  # through a symlink: replace the folder it points at
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield tmp
        follow_umask(tmp)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-")) / "old"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale(path: str | os.PathLike) -> None:
    """Remove the temporary folders a killed ``atomic_dir(path)`` left beside ``path``. Call it only
    while holding ``output_lock(path)``: another writer's folders look the same."""
    path = Path(path).resolve()
    for stale in [*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f".{path.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def umask() -> int:
    """The process's umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> Path:
    """Give ``path`` (and, for a folder, everything under it) the modes a plain ``open`` / ``mkdir``
    would: 0666 / 0777 less the umask. Symbolic links are left alone."""
    path, mask = Path(path), umask()
    entries = [path] + (list(path.rglob("*")) if path.is_dir() and not path.is_symlink() else [])
    for p in entries:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes (read in blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tensors(tensors: dict[str, Any]) -> str:
    """The hex sha256 of named tensors' exact bytes, with their names, dtypes and shapes (a float
    sum would not do: its value depends on the reduction order, hence on torch's thread count)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(obj: Any, path: str | os.PathLike, indent: int | None = 2,
               default: Callable[[Any], Any] = str) -> Path:
    """JSON (``default`` converts what JSON lacks: paths, dtypes, ...), written atomically."""
    return write_text(path, json.dumps(obj, indent=indent, default=default))


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (format from the suffix) and close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda p: fig.savefig(p, dpi=dpi))
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- reading
@contextmanager
def readable(path: str | os.PathLike, fix: str) -> Iterator[None]:
    """Turn a damaged file's decoder error (JSON, text, safetensors) into a ``ValueError`` naming ``path``.

    ``fix`` says what to do (e.g. "write it again with save_model"); the decoder's own error
    names neither the file nor a remedy.
    """
    from safetensors import SafetensorError

    try:
        yield
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError) as e:
        raise ValueError(f"{path} is truncated or damaged ({' '.join(str(e).split())}); {fix}") from e


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """``json.loads`` of the file at ``path``; a garbled file is a ``ValueError`` naming it (see ``readable``)."""
    with readable(path, fix):
        return json.loads(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- output folders
class OutputError(ValueError):
    """An output folder cannot be used (not ours, not writable, or another writer holds it)."""


def check_output_dir(path: str | os.PathLike, is_ours: Callable[[Path], bool] | None = None,
                     overwrite: bool = False) -> Path:
    """Check, before any compute, that ``path`` can be written and replaced.

    A folder that exists, is not empty and is not one this tool wrote (``is_ours(path)``) is
    refused unless ``overwrite``: the tool never deletes a folder it did not write. The parent
    must be writable (a file is created and removed there).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {path} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite and not (is_ours is not None and is_ours(path)):
        raise OutputError(f"--out {path} is a non-empty folder this tool did not write; it would be replaced. "
                          "Choose a new folder, or pass --overwrite to replace it.")
    _probe_writable(path, "--out")
    return path


def check_output_file(path: str | os.PathLike, what: str = "the output file",
                      fix: str = "choose a writable location") -> Path:
    """Check, before any compute, that the file ``path`` can be written (an existing file is replaced)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file path (e.g. {path / 'results.json'})")
    _probe_writable(path, what, fix)
    return path


def _probe_writable(path: Path, what: str, fix: str = "choose a writable location") -> None:
    """Create and remove a file beside ``path`` (its folder is made if missing): the write will not fail there."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{what} {path} cannot be written: {e.strerror or e} ({parent}); {fix}") from None


_HELD: dict[Path, Any] = {}  # lock path -> open file, for the locks this process holds


@contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the output ``path`` (a ``.NAME.lock`` file beside it).

    A second writer, in this process or another, fails at once with a message naming the holder
    (pid, host, command) instead of computing and then overwriting or crashing. Re-entrant in
    one process.
    """
    import fcntl
    import socket
    import sys

    path = Path(path).resolve()  # a symlink and its target are one folder: one lock
    lock = path.parent / f".{path.name}.lock"
    if lock in _HELD:
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise OutputError(f"{path} is being written by {holder}; wait for it to finish or choose another --out") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv)[:200]})")
    fh.flush()
    _HELD[lock] = fh
    try:
        yield
    finally:
        _HELD.pop(lock, None)
        fh.seek(0)
        fh.truncate()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
