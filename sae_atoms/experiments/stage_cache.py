"""The main job's stage cache: each stage's result under ``OUT/cache/<name>`` with a key of its inputs.

``Progress`` prints each stage with its time and records the seconds and the peak resident memory
(the process's high-water mark, so the stage where it rises is the one that set it), and that of
its largest child process so far: the embedded model's first-use processing, and the workers that
train a study's SAEs (``sae_atoms.workers``; forked, so their resident pages include those they
still share with the main process: the two figures do not add up).

``stage(out, name, key, force, compute, load)`` returns the cached result when the key matches and
the files are intact (their sizes and sha256, recorded when written), else computes it into a
temporary folder renamed into place once done: an interrupted run never leaves a half-written stage,
and a damaged one is recomputed with a warning. ``json_stage`` is the same for a JSON result.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import resource
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from sae_atoms.io import atomic_dir, remove_stale, sha256_file


class Progress:
    """Stage names with elapsed time and peak RSS (each stage shows its own tqdm bars)."""

    def __init__(self, names: list[str]):
        self.names, self.i, self.t0 = names, 0, time.time()
        self.times: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}
        self.child_peak_rss_mb: dict[str, float] = {}

    def __call__(self, name: str) -> None:  # a stage starts
        self.i += 1
        print(f"\n[{self.i}/{len(self.names)}] {name}  (elapsed {time.time() - self.t0:.0f} s)", flush=True)
        self._cur, self._start = name, time.time()

    def done(self, reused: bool = False) -> None:
        self.times[self._cur] = round(time.time() - self._start, 1)
        release_freed_memory()
        self.peak_rss_mb[self._cur] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux
        self.child_peak_rss_mb[self._cur] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
        print(f"      {self._cur}: {'reused from cache' if reused else 'done'} in {self.times[self._cur]:.1f} s "
              f"(peak RSS so far {self.peak_rss_mb[self._cur]} MB; largest child process {self.child_peak_rss_mb[self._cur]} MB)",
              flush=True)


def release_freed_memory() -> None:
    """Hand memory the stage freed back to the system (glibc ``malloc_trim``; a no-op elsewhere): glibc
    keeps freed small blocks in its arenas, and the next stage's peak would stack on them."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _key(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage(out: Path, name: str, key: Any, force: bool, compute: Callable[[Path], Any],
           load: Callable[[Path], Any]) -> tuple[Any, bool]:
    """Return the stage's result, from ``OUT/cache/name`` when its key matches, else computed.

    ``compute(folder)`` writes into a temporary folder that is renamed into place once done,
    so an interrupted run never leaves a half-written stage. Returns ``(result, reused)``.
    """
    folder = out / "cache" / name
    keyfile = folder / "key.json"
    k = _key(key)
    if not force and keyfile.exists():
        cached = _load_verified(folder, k, load)
        if cached is not None:
            return cached[0], True
    remove_stale(folder)
    with atomic_dir(folder) as tmp:
        result = compute(tmp)
        (tmp / "key.json").write_text(json.dumps({"key": k, "inputs": key, "files": _manifest(tmp)}, default=str, indent=1))
    return (load(folder) if result is None else result), False


def _manifest(folder: Path) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` of the files under ``folder`` (key.json aside)."""
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != "key.json":
            out[str(f.relative_to(folder))] = [f.stat().st_size, sha256_file(f)]
    return out


def _load_verified(folder: Path, k: str, load: Callable[[Path], Any]) -> tuple[Any] | None:
    """``(result,)`` of a cached stage whose key is ``k`` and whose files are intact; None to recompute.

    A stage whose files differ from the manifest written with it, or that fails to load, is
    recomputed with a warning (an older stage without a manifest is only loaded).
    """
    try:
        info = json.loads((folder / "key.json").read_text())
    except (json.JSONDecodeError, OSError):
        info = {}
    if info.get("key") != k:
        return None
    try:
        files = info.get("files")
        if files is not None:
            now = _manifest(folder)
            bad = sorted(f for f in set(files) | set(now) if files.get(f) != now.get(f))
            if bad:
                raise ValueError(f"files changed since it was written: {bad[:5]}")
        return (load(folder),)
    except Exception as e:  # a damaged stage is recomputed, never fatal
        warnings.warn(f"reproduce: the cached stage {folder.name!r} is damaged ({type(e).__name__}: "
                      f"{str(e)[:300]}); recomputing it.", stacklevel=3)
        return None


def json_stage(out: Path, name: str, key: Any, force: bool, fn: Callable[[], Any]) -> tuple[Any, bool]:
    def compute(folder: Path) -> Any:
        res = fn()
        (folder / "result.json").write_text(json.dumps(res, default=str))
        return res

    return stage(out, name, key, force, compute, lambda f: json.loads((f / "result.json").read_text()))
