"""Files and folders the studies write follow the user's umask (sae_atoms.io.follow_umask / atomic_dir)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import datasets
import pytest
import torch

from sae_atoms.activations import ActivationSet
from sae_atoms.aip import AIPMetric
from sae_atoms.experiments import frontier


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
