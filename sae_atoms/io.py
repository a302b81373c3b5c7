"""Atomic file writes: nothing the package writes is ever left half-written.

Each writer writes to a temporary file in the destination's folder and renames it into place
(``os.replace`` is atomic on one file system), so an interrupted run leaves either the old file
or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
