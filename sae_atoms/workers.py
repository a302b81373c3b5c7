"""Independent jobs in worker processes, one torch thread each.

Why: a study's SAE at the frontier's sizes (d 576, batch 256) takes steps of small matrix products
and many small element-wise ops. torch splits each op over its threads and joins them after it,
so on few cores a second thread adds little to one SAE's step. Two SAEs in two processes with
one thread each keep both cores on arithmetic (``sae-atoms bench frontier_together``).

``map_jobs(fn, jobs, shared, workers=n)`` returns ``[fn(shared, job) for job in jobs]``:

* ``workers <= 1``, or one job: in this process, one job after the other;
* else a pool of ``workers`` processes, each with one torch thread and ``shared`` set once. On
  Linux they are forked, as PyTorch's ``DataLoader`` workers are: ``shared`` (tensors, configs,
  activation sets) is inherited, not copied, and a script needs no ``if __name__ ==
  "__main__"`` guard. Elsewhere they are spawned: ``shared`` is pickled, and the calling script
  needs the guard (Python's rule for spawned processes). ``fn`` must be a module-level function.
  Results come back in job order. An error in a job is raised here with the worker's traceback;
  it, or Ctrl-C here, ends the workers at once (they ignore Ctrl-C themselves), so a job's
  own output must be atomic (``io.atomic_dir``).

A job's numbers do not depend on which process ran it: each job seeds its own generators. A pool
of one-thread workers equals the in-process path run with one thread (``tests/test_workers.py``);
against a run with more threads they can differ by rounding, where the thread count changes the
order of a float sum.

``choose_workers(requested, n_jobs, device)``: ``requested`` when given (0 or 1: in process),
else one per thread torch would use here (``threads.choose_threads``: ``SAE_ATOMS_THREADS``,
the CPU affinity, the load), at most one per job; always in process on an accelerator.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

import torch

from sae_atoms.threads import choose_threads

J = TypeVar("J")
R = TypeVar("R")
_SHARED: Any = None  # a worker's copy of ``shared`` (set once, by ``_start``)


def choose_workers(requested: int | None, n_jobs: int, device: Any = None) -> int:
    """How many worker processes ``map_jobs`` should use (module docstring); 1 means in process."""
    if requested is not None and requested < 0:
        raise ValueError(f"workers (--workers) must be >= 0 (0 or 1: in this process), got {requested}")
    if device is not None and torch.device(device).type != "cpu":
        return 1
    n = choose_threads() if requested is None else max(1, requested)
    return max(1, min(n, n_jobs))


def add_workers_argument(parser: Any) -> None:
    """A study's ``--workers N`` (its config's ``workers``; checked by ``choose_workers``)."""
    parser.add_argument("--workers", type=int, default=None,
                        help="processes training SAEs at once, one torch thread each (default: one per free core on "
                             "CPU; 1: in this process)")


def _start(shared: Any) -> None:
    global _SHARED
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    torch.set_num_threads(1)
    _SHARED = shared


def _call(fn: Callable[[Any, J], R], job: J) -> R:
    return fn(_SHARED, job)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued jobs and end the workers now (``terminate_workers`` from Python 3.14)."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    for p in list((pool._processes or {}).values()):
        p.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def map_jobs(fn: Callable[[Any, J], R], jobs: Sequence[J], shared: Any, *, workers: int = 1,
             progress: Callable[[], None] | None = None, cost: Callable[[J], float] | None = None) -> list[R]:
    """``[fn(shared, job) for job in jobs]``, in ``workers`` processes when > 1 (module docstring);
    ``progress()`` is called as each job finishes. With ``cost`` (a job's relative cost) workers take
    the costliest jobs first, so that one long job does not start last (longest processing time
    first); the results keep the jobs' order."""
    tick = progress or (lambda: None)
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for job in jobs:
            out.append(fn(shared, job))
            tick()
        return out
    order = sorted(range(len(jobs)), key=lambda i: -cost(jobs[i])) if cost else range(len(jobs))
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=_start, initargs=(shared,))
    try:
        futures = {i: pool.submit(_call, fn, jobs[i]) for i in order}
        for f in futures.values():
            f.add_done_callback(lambda f: f.cancelled() or tick())
        results = [futures[i].result() for i in range(len(jobs))]
    except BaseException:  # an error or Ctrl-C: stop the running jobs too, not only the queued ones
        _stop(pool)
        raise
    pool.shutdown(wait=True)
    return results
