"""Jobs in worker processes (``sae_atoms.workers``): order, errors, worker counts, and a frontier
trained in workers equal to the same frontier trained in process."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from sae_atoms import workers


def _square_plus(shared: dict, job: int) -> tuple[int, int, int]:
    if job == shared["bad"]:
        raise ValueError(f"job {job} is bad")
    return job * job + shared["add"], os.getpid(), torch.get_num_threads()


def test_jobs_in_workers_come_back_in_order_from_one_thread_processes():
    done = []
    out = workers.map_jobs(_square_plus, list(range(7)), {"add": 1, "bad": -1}, workers=2,
                           progress=lambda: done.append(1))
    assert [v for v, _, _ in out] == [j * j + 1 for j in range(7)]
    assert {pid for _, pid, _ in out} - {os.getpid()} and os.getpid() not in {pid for _, pid, _ in out}
    assert {n for _, _, n in out} == {1} and len(done) == 7
    same = workers.map_jobs(_square_plus, list(range(7)), {"add": 1, "bad": -1}, workers=1)
    assert [v for v, _, _ in same] == [v for v, _, _ in out] and {pid for _, pid, _ in same} == {os.getpid()}


def test_costliest_jobs_start_first_and_results_keep_the_jobs_order():
    jobs = [1, 5, 2, 4, 3]
    out = workers.map_jobs(_started_at, jobs, None, workers=2, cost=float)
    assert [j for j, _ in out] == jobs
    starts = sorted(out, key=lambda r: r[1])
    assert {starts[0][0], starts[1][0]} == {5, 4}  # the two costliest went first, one to each worker


def _started_at(_shared: None, job: int) -> tuple[int, float]:
    t = time.monotonic()
    time.sleep(0.05 * job)
    return job, t


def test_an_error_in_a_worker_is_raised_here_with_its_message():
    with pytest.raises(ValueError, match="job 3 is bad"):
        workers.map_jobs(_square_plus, list(range(6)), {"add": 0, "bad": 3}, workers=2)


def test_worker_count_follows_the_request_the_threads_and_the_device(monkeypatch):
    monkeypatch.setenv("SAE_ATOMS_THREADS", "3")
    assert workers.choose_workers(None, 10) == 3  # one per thread torch would use
    assert workers.choose_workers(None, 2) == 2  # at most one per job
    assert workers.choose_workers(5, 10) == 5 and workers.choose_workers(0, 10) == 1
    assert workers.choose_workers(None, 10, device="meta") == 1  # an accelerator: in process
    with pytest.raises(ValueError, match="workers \(--workers\) must be >= 0"):
        workers.choose_workers(-1, 4)


@pytest.mark.slow
def test_a_frontier_trained_in_two_workers_equals_the_same_frontier_trained_in_process(tmp_path):
    """Same seed, one torch thread on both sides (the thread count changes float sums): every row
    and every saved SAE file is identical, not merely close."""
    from sae_atoms.cli import main
    from tests.experiments.test_frontier import _acts_on_disk

    acts = _acts_on_disk(tmp_path / "acts")
    before = torch.get_num_threads()
    try:
        for w in ("1", "2"):
            assert main(["--threads", "1", "frontier", "--activations", acts, "--out", str(tmp_path / w), "--units",
                         "atoms", "features_topk", "--targets", "2", "3", "--steps", "5", "--batch-size", "16",
                         "--workers", w]) == 0
    finally:
        torch.set_num_threads(before)
    rows = [json.loads((tmp_path / w / "results.json").read_text())["rows"] for w in ("1", "2")]
    strip = lambda rs: json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in rs])  # noqa: E731
    assert len(rows[0]) == 5 and strip(rows[0]) == strip(rows[1])
    files = [{p.relative_to(tmp_path / w): p.read_bytes() for p in (tmp_path / w / "saes").rglob("*") if p.is_file()}
             for w in ("1", "2")]
    assert len(files[0]) >= 8 and files[0] == files[1]
