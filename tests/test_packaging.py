"""The install without a clone: the wheel holds every module of the package, and the README, the notebooks'
install cell and the hint in a saved SAE's cfg.json name the same route."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GIT_ROUTE = 'pip install "sae-atoms @ git+https://<your-host>/<path>.git"'


def package_files() -> set[str]:
    """Every file of the package as the wheel names it (``sae_atoms/...``), caches left out."""
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "sae_atoms").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Install without a clone")
    return text[start:text.find("\n## ", start + 1)]


def test_the_readme_the_install_cell_and_the_load_hint_name_one_route():
    import nbformat

    from sae_atoms.saes.tsae import LOAD_HINT

    section = readme_section()
    assert GIT_ROUTE in section and "pip install torch==2.13.0" in section and "-py3-none-any.whl" in section
    cell = nbformat.read(next((ROOT / "tutorials").glob("01_*.ipynb")), as_version=4).cells[1].source
    route = GIT_ROUTE.split("install ", 1)[1]
    assert route in LOAD_HINT.replace('\\"', '"') and route.strip('"') in cell
    assert "-py3-none-any.whl" in LOAD_HINT and "-py3-none-any.whl" in cell


def test_setuptools_finds_every_package_of_the_tree():
    # what [tool.setuptools.packages.find] includes is every folder of sae_atoms that holds Python code
    tomllib = pytest.importorskip("tomllib")
    from setuptools import find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = set(find_packages(str(ROOT), include=find["include"]))
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sae_atoms").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert found == folders, (found ^ folders)


@pytest.mark.slow
def test_the_wheel_holds_every_file_of_the_package(tmp_path):
    if importlib.util.find_spec("build") is None:
        pytest.skip("the `build` package is not installed here (pip install build) to run python -m build")
    # built from a copy of what the wheel is made of: a build/ folder left in the checkout by an earlier build
    # can carry modules deleted since into the wheel
    src = tmp_path / "src"
    shutil.copytree(ROOT / "sae_atoms", src / "sae_atoms", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    res = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("sae_atoms-*-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n for n in names if n.startswith("sae_atoms/")} == package_files()
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = zipfile.ZipFile(wheel).read(info).decode()
    for field in ("Name: sae-atoms", "Requires-Python: >=3.10", "Requires-Dist: sae-lens", "Requires-Dist: markov-draftjs"):
        assert field in meta, field
    entry = zipfile.ZipFile(wheel).read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "sae-atoms = sae_atoms.cli:main" in entry
