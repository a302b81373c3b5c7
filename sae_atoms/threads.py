"""How many CPU threads torch should use, and how its threads wait.

torch's OpenMP pool (libgomp in the Linux wheels) synchronises its threads at the end of every
parallel operation, and how a thread waits there sets two costs:

* spinning (``OMP_WAIT_POLICY=ACTIVE``): when other CPU-bound processes take the cores, the pool
  spends its share spinning; extraction and training under load were several times slower;
* sleeping at once (``OMP_WAIT_POLICY=PASSIVE``): every operation pays a wake-up. On idle cores
  that made the frontier's small SAE steps, the model's small batches and so the main job slower;
* a short spin, then sleep (libgomp's own policy with a spin count, ``GOMP_SPINCOUNT``): about the
  idle speed of spinning, and at most one short spin lost per operation under load, where
  ``choose_threads`` also gives up the threads other processes need.

``import sae_atoms`` sets ``GOMP_SPINCOUNT=3000`` when the user has set neither variable and torch
is not yet imported (libgomp reads them once, at load). The closing notes of issue 24 hold the
measurements (``sae-atoms bench under_load``, ``stability_step``, the main job's stages).

``choose_threads()`` picks:

* ``SAE_ATOMS_THREADS`` when set (a positive integer), else
* ``min(cores in this process's CPU affinity, torch's default)``; unless the wait is passive, this
  is reduced to the cores the other runnable processes leave free right now (``/proc/loadavg``'s
  runnable count less this process's own running threads, else the 1-minute load average), at
  least 1.

``set_threads(n)`` applies it (``sae-atoms --threads N`` and every subcommand call it).
"""

from __future__ import annotations

import os

import torch

ENV = "SAE_ATOMS_THREADS"
_TORCH_DEFAULT = torch.get_num_threads()


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def passive_wait(env: dict[str, str] | None = None) -> bool:
    """Whether torch's OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``, module docstring)."""
    env = os.environ if env is None else env
    return env.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def _own_running_threads() -> int:
    """Threads of this process in state R (they appear in ``/proc/loadavg``'s runnable count)."""
    n = 0
    try:
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/stat") as fh:
                    n += fh.read().rsplit(")", 1)[1].split()[0] == "R"
            except (OSError, IndexError):
                continue
    except OSError:
        return 1
    return max(1, n)


def other_runnable() -> float:
    """How many other tasks want a CPU now (runnable count less this process's; load average if unknown)."""
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
        return max(0.0, running - float(_own_running_threads()))
    except (OSError, IndexError, ValueError):
        pass
    try:
        return max(0.0, os.getloadavg()[0] - 1.0)
    except (AttributeError, OSError):
        return 0.0


def parse_threads(value: str | int) -> int:
    """A thread count: a positive integer (ValueError otherwise)."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"threads must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"threads must be a positive integer, got {value!r}")
    return n


def choose_threads(env: dict[str, str] | None = None, load: float | None = None) -> int:
    """The thread count to use (module docstring); ``env`` / ``load`` default to the live values."""
    env = os.environ if env is None else env
    if env.get(ENV):
        return parse_threads(env[ENV])
    cores = available_cores()
    n = min(cores, _TORCH_DEFAULT)
    if passive_wait(env):
        return n
    busy = other_runnable() if load is None else load
    free = int(cores - busy + 0.5)
    return max(1, min(n, free))


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (default ``choose_threads()``); returns the count."""
    n = choose_threads() if n is None else parse_threads(n)
    torch.set_num_threads(n)
    return n
