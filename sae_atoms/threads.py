"""How many CPU threads torch should use: the cores this process may run on, fewer under load.

torch's intra-op thread pool synchronises its threads at every operation; when other CPU-bound
processes take the cores, a pool as wide as the machine waits for descheduled threads and runs
many times slower than its fair share (5.7x for extraction, over 12x for training, measured on
2 cores with two competitors). ``choose_threads()`` picks:

* ``SAE_ATOMS_THREADS`` when set (a positive integer), else
* ``min(cores in this process's CPU affinity, torch's default)``, reduced to the cores the other
  runnable processes leave free right now (``/proc/loadavg``'s runnable count, else the
  1-minute load average), at least 1.

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


def other_runnable() -> float:
    """How many other processes want a CPU now (runnable count minus this one; load average if unknown)."""
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
        return max(0.0, running - 1.0)
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
    busy = other_runnable() if load is None else load
    free = int(cores - busy + 0.5)
    return max(1, min(n, free))


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (default ``choose_threads()``); returns the count."""
    n = choose_threads() if n is None else parse_threads(n)
    torch.set_num_threads(n)
    return n
