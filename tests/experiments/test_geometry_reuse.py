"""The studies reuse one dictionary geometry per SAE (evals.dictionary_geometry) and the library table."""

from __future__ import annotations

import warnings

import pytest
import torch

from sae_atoms import evals as E
from sae_atoms.aip import AIPMetric
from tests.evals.test_geometry_reuse import _count_coherence


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return torch.randn(300, 12, generator=torch.Generator().manual_seed(3)) + 1.5


def test_frontier_row_computes_the_geometry_once(data, monkeypatch):
    from sae_atoms.experiments import frontier as F

    calls = _count_coherence(monkeypatch)
    ref = AIPMetric.robust(data)
    row = F.evaluate_row("neurons", E.neurons(12), None, F.Splits(data[:200], data[200:], None, data[:50]), ref)
    assert calls == ["raw", "aip"]  # not once per split
    assert row["r2"] == pytest.approx(1.0) and row["l0_val"] == 12.0 and row["r2_heldout"] == pytest.approx(1.0)


def test_compare_units_computes_the_geometry_once_per_unit(data, monkeypatch):
    from sae_atoms.experiments import capacity as C

    calls = _count_coherence(monkeypatch)
    table = C.compare_units(data[:200], data[200:], architectures=(), top_k=5)
    assert list(table) == ["neurons"] and calls == ["raw", "aip"]
    assert table["neurons"]["r2_heldout"] == pytest.approx(1.0) and table["neurons"]["geometry"] == "aip"


@pytest.mark.slow
def test_compare_units_trains_and_reuses_the_geometry(data, monkeypatch):
    from sae_atoms.experiments import capacity as C

    calls = _count_coherence(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = C.compare_units(data[:200], data[200:], expansion=2, architectures=("jumprelu",), steps=5,
                                batch_size=50, progress=False, top_k=5)
    assert list(table) == ["neurons", "jumprelu"] and calls == ["raw", "aip"] * 2
    assert table["jumprelu"]["n_units"] == 24 and "r2_heldout" in table["jumprelu"]


# --------------------------------------------------------------------------- the table
def test_frontier_table_is_the_library_table():
    from sae_atoms.experiments import frontier as F

    row = {"unit": "neurons", "target_l0": None, "r2": 1.0, "l0": 12.0, "dead_frac": 0}
    keys = F.ROW_KEYS[1:]
    cells = ["–" if row.get(k) is None else (f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k])) for k in keys]
    expected = ("| unit | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1) + "\n"
                + "| neurons | " + " | ".join(cells) + " |")
    assert F.format_table([row]) == expected and "| 12.000 |" in expected and "| 0 |" in expected
