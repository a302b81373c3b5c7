"""The tutorial notebooks execute headless, small (SAE_ATOMS_TUTORIAL_SMALL=1), on the embedded model."""

import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "tutorials").glob("*.ipynb"))


def test_there_are_three_tutorials():
    assert len(NOTEBOOKS) == 3, [n.name for n in NOTEBOOKS]


@pytest.mark.real_model
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("SAE_ATOMS_TUTORIAL_SMALL", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = "".join(o.get("text", "") for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []))
    checks = {"01": [r"logits unchanged: True", r"whiten\(raw\): True"],
              "02": [r"active atoms at the last token: \d+ of \d+ \(\d+\.\d%\)"],  # L0 beside the width
              # every intervention's rank is printed beside the clean rank, and the summary says which moved it up
              "03": [r"atoms by effect: top-1 .* \(clean \d+: (better|worse|unchanged)\)", r"moved 'China' up on this prompt: \["]}
    for expected in checks.get(path.stem[:2], []):
        assert re.search(expected, text), (expected, text[-3000:])


def test_notebooks_claim_no_result_they_do_not_compute():
    import nbformat

    for path in NOTEBOOKS:
        cells = nbformat.read(path, as_version=4).cells
        # sae_atoms is not on PyPI: the install cell never falls back to `pip install sae-atoms`
        assert '"sae-atoms")' not in cells[1].source and "SAE_ATOMS_SOURCE" in cells[1].source, path.name
    intro = nbformat.read(NOTEBOOKS[2], as_version=4).cells[0].source
    assert "more often than atoms" not in intro and "cannot tell which method steers" in intro


# --------------------------------------------------------------------------- the install cell
GIT_ROUTE = '"sae-atoms @ git+https://<your-host>/<path>.git"'  # the route the README documents


def install_cell() -> str:
    import nbformat

    cells = {nbformat.read(path, as_version=4).cells[1].source for path in NOTEBOOKS}
    assert len(cells) == 1, "the three notebooks start with the same install cell"
    return cells.pop()


def run_install_cell(monkeypatch, source: str | None) -> str:
    """Run the install cell with sae_atoms hidden (as in a fresh environment); return what it stops with."""
    import sys

    monkeypatch.setitem(sys.modules, "sae_atoms", None)  # find_spec("sae_atoms") is None, as when not installed
    if source is None:
        monkeypatch.delenv("SAE_ATOMS_SOURCE", raising=False)
    else:
        monkeypatch.setenv("SAE_ATOMS_SOURCE", source)
    with pytest.raises(SystemExit) as stop:  # not CalledProcessError: pip's failure is caught
        exec(compile(install_cell(), "install-cell", "exec"), {"__name__": "__cell__"})
    return str(stop.value.code)


def one_sentence(text: str) -> bool:
    return "\n" not in text and text.endswith("then rerun this cell.") and "Traceback" not in text


def test_install_cell_says_what_to_do_when_nothing_is_set(monkeypatch):
    said = run_install_cell(monkeypatch, None)
    assert one_sentence(said) and "SAE_ATOMS_SOURCE" in said and GIT_ROUTE.strip('"') in said, said


def test_install_cell_names_what_it_tried_when_pip_fails(monkeypatch, tmp_path):
    missing = str(tmp_path / "nowhere" / "sae_atoms-0.1.0-py3-none-any.whl")
    said = run_install_cell(monkeypatch, missing)  # a real pip run, which fails on the missing file
    assert one_sentence(said) and said.startswith("pip could not install sae_atoms from") and repr(missing) in said, said
    assert "CalledProcessError" not in said


def test_install_cell_installs_the_source_and_keeps_the_installed_torch(monkeypatch):
    import importlib.metadata
    import subprocess
    import sys

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append(args) or subprocess.CompletedProcess(args, 0))
    monkeypatch.setitem(sys.modules, "sae_atoms", None)
    monkeypatch.setenv("SAE_ATOMS_SOURCE", "/some/sae_atoms-0.1.0-py3-none-any.whl")
    exec(compile(install_cell(), "install-cell", "exec"), {"__name__": "__cell__"})
    # one pip run, for the source, asking for the torch already there (Colab's torch is not reinstalled)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "/some/sae_atoms-0.1.0-py3-none-any.whl",
                      f"torch=={importlib.metadata.version('torch')}"]]
