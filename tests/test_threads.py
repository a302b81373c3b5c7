"""Thread count under load: SAE_ATOMS_THREADS, CPU affinity, runnable processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sae_atoms import threads


def test_env_wins_and_is_checked():
    assert threads.choose_threads(env={"SAE_ATOMS_THREADS": "3"}, load=50) == 3
    with pytest.raises(ValueError, match="positive integer"):
        threads.choose_threads(env={"SAE_ATOMS_THREADS": "0"})


def test_idle_uses_affinity_and_loaded_uses_one():
    cores = len(os.sched_getaffinity(0))
    assert threads.choose_threads(env={}, load=0.0) == min(cores, threads._TORCH_DEFAULT)
    assert threads.choose_threads(env={}, load=float(cores + 2)) == 1


def test_passive_wait_keeps_all_cores_under_load():
    cores = len(os.sched_getaffinity(0))
    env = {"OMP_WAIT_POLICY": "passive"}
    assert threads.passive_wait(env) and not threads.passive_wait({"OMP_WAIT_POLICY": "ACTIVE"})
    assert threads.choose_threads(env=env, load=float(cores + 2)) == min(cores, threads._TORCH_DEFAULT)


@pytest.mark.slow
def test_import_sets_a_short_spin_unless_user_chose_or_torch_came_first():
    code = "import {first}, os; print('wait', os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def wait(first: str, env: dict[str, str]) -> str:
        out = subprocess.run([sys.executable, "-c", code.format(first=first)], capture_output=True, text=True,
                             env={**base, **env}, timeout=120).stdout
        return out.split("wait ")[1].strip()

    assert wait("sae_atoms", {}) == "None 3000"
    assert wait("sae_atoms", {"OMP_WAIT_POLICY": "PASSIVE"}) == "PASSIVE None"
    assert wait("sae_atoms", {"GOMP_SPINCOUNT": "0"}) == "None 0"
    assert wait("torch, sae_atoms", {}) == "None None"  # too late for libgomp: left alone


def test_own_running_threads_are_not_counted_as_load():
    assert threads._own_running_threads() >= 1  # the thread reading /proc is running
    assert threads.other_runnable() >= 0.0


@pytest.mark.slow
def test_cli_threads_option_and_env_reach_torch():
    code = ("import sys, torch; from sae_atoms import cli, bench\n"
            "bench.run_cases = lambda names, quick=False: print('threads', torch.get_num_threads()) or {}\n"
            "sys.exit(cli.main(sys.argv[1:]))")
    run = lambda argv, env: subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                                           env={**os.environ, **env}, timeout=120)
    assert "threads 1" in run(["--threads", "1", "bench"], {}).stdout
    assert "threads 1" in run(["bench"], {"SAE_ATOMS_THREADS": "1"}).stdout
