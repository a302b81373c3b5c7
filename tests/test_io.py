"""sae_atoms.io: atomic folders, output locks on the resolved folder (file modes: tests/experiments/test_file_modes.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sae_atoms.io import OutputError, output_lock


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
