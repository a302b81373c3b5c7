"""sae_atoms.io: written files follow the umask, atomic folders, output locks on the resolved folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from sae_atoms.activations import ActivationSet
from sae_atoms.aip import AIPMetric
from sae_atoms.experiments import frontier
from sae_atoms.io import OutputError, output_lock


def _modes(root: Path) -> dict[str, set[int]]:
    """``{"dirs": modes, "files": modes}`` of ``root`` and everything under it."""
    out: dict[str, set[int]] = {"dirs": set(), "files": set()}
    for p in [root, *root.rglob("*")]:
        out["dirs" if p.is_dir() else "files"].add(stat.S_IMODE(p.stat().st_mode))
    return out


def _entities(n: int = 24, d: int = 8, split: str = "train") -> ActivationSet:
    subjects = [f"{split}{i}" for i in range(n) for _ in range(3)]
    rows = datasets.Dataset.from_dict({"subject": subjects, "split": [split] * len(subjects)})
    return ActivationSet({"h": torch.randn(len(subjects), d)}, rows)


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.mark.slow
def test_saved_saes_activation_sets_and_metrics_follow_the_umask(tmp_path, umask):
    torch.manual_seed(0)
    train, held = _entities(), _entities(8, split="heldout")
    train.save(tmp_path / "acts")
    AIPMetric.robust(train.x("h")).save(tmp_path / "metric")
    frontier.run_frontier(train, held, "h", targets=(2.0,), units=("atoms", "features_jumprelu"), steps=3,
                          batch_size=16, progress=False, save_dir=tmp_path / "saes")
    want = {"dirs": {0o777 & ~umask}, "files": {0o666 & ~umask}}
    for name in ("acts", "metric", "saes"):
        assert _modes(tmp_path / name) == want, name
    assert (tmp_path / "saes" / "atoms_l0_2" / "sae_weights.safetensors").exists()


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    from sae_atoms.io import atomic_dir

    dest = tmp_path / "d"
    with atomic_dir(dest) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in dest.iterdir()) == ["a"]
    with atomic_dir(dest) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in dest.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folder left


@pytest.mark.slow
def test_a_symlink_to_a_locked_folder_is_locked(tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    holder = subprocess.Popen([sys.executable, "-c", "import time; from sae_atoms.io import output_lock\n"
                               f"with output_lock({str(real)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"pid {holder.pid}"):
            with output_lock(link):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(link):  # free again once the holder is gone
        pass
