"""The evals package's seams: the metric an SAE carries (an AIPMetric or None), the dictionary
geometry computed once and reused (same results, one coherence per geometry in the studies), and
the one table formatter."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

import sae_atoms.evals.geometry as G
from sae_atoms import evals as E
from sae_atoms.aip import AIPMetric
from sae_atoms.saes.tsae_aip import to_inference
from sae_atoms.training import training_config


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(300, 12, generator=g) @ torch.randn(12, 12, generator=g) + 1.5


def _tsae_aip(data: torch.Tensor, metric: AIPMetric | None):
    from sae_lens.registry import get_sae_training_class

    cfg = training_config("tsae_aip", 12, 24, aip_kind="centered")
    sae = get_sae_training_class("tsae_aip")[0](cfg)
    return sae if metric is None else sae.set_metric(metric)


def _count_coherence(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = G.coherence

    def spy(directions, metric=None, **kw):
        calls.append("raw" if metric is None else "aip")
        return real(directions, metric, **kw)

    monkeypatch.setattr(G, "coherence", spy)
    return calls


# --------------------------------------------------------------------------- find_metric
def test_find_metric_returns_the_aip_metric_of_a_tsae_aip(data):
    metric = AIPMetric.robust(data)
    for sae in (_tsae_aip(data, metric), to_inference(_tsae_aip(data, metric))):
        found = E.find_metric(sae)
        assert isinstance(found, AIPMetric) and found.kind == "centered"
        torch.testing.assert_close(found.W, metric.W.float().double(), rtol=0, atol=1e-12)
        torch.testing.assert_close(found.mean, metric.mean.float().double(), rtol=0, atol=0)
        torch.testing.assert_close(found.whiten(data), metric.whiten(data), rtol=1e-5, atol=1e-5)


def test_find_metric_is_none_for_a_standard_or_unfitted_sae(data):
    assert E.find_metric(StandardSAE(StandardSAEConfig(d_in=12, d_sae=24))) is None
    assert E.find_metric(_tsae_aip(data, None)) is None  # the identity placeholder, aip_fitted False
    with pytest.raises(ValueError, match="positive definite"):
        E.metric_from_whitening(-torch.eye(3))


def test_whitening_matrix_takes_a_metric_a_tensor_or_none(data):
    metric = AIPMetric.fit(data)
    assert E.whitening_matrix(metric) is metric.W and E.whitening_matrix(None) is None
    assert E.whitening_matrix(metric.W) is metric.W
    with pytest.raises(TypeError, match="AIPMetric"):
        E.whitening_matrix(object())


# --------------------------------------------------------------------------- the geometry, once
def test_a_reused_geometry_gives_the_same_results(data):
    metric = AIPMetric.robust(data)
    sae = to_inference(_tsae_aip(data, metric))
    for m in (metric, None):  # an explicit metric, and the one the SAE carries
        geo = E.dictionary_geometry(sae, m)
        assert geo.name == "aip" and geo.n_units == 24
        assert E.evaluate_units(sae, data[:150], m, geometry=geo) == E.evaluate_units(sae, data[:150], m)
    geo = E.dictionary_geometry("neurons", d=12)
    assert geo.name == "raw" and geo.selected is geo.raw and geo.raw.mu == 0.0


def test_a_geometry_of_other_units_or_another_metric_is_refused(data):
    metric = AIPMetric.robust(data)
    geo = E.dictionary_geometry("neurons", metric, d=12)
    with pytest.raises(ValueError, match="another AIP metric"):
        E.evaluate_units("neurons", data, AIPMetric.fit(data), geometry=geo)
    with pytest.raises(ValueError, match="another AIP metric"):
        E.evaluate_units("neurons", data, geometry=geo)
    with pytest.raises(ValueError, match="24 units"):
        E.evaluate_units("neurons", data, metric, geometry=E.dictionary_geometry(to_inference(_tsae_aip(data, metric))))


def test_evaluate_units_rejects_an_unknown_option(data):
    with pytest.raises(TypeError, match="top_kk"):
        E.evaluate_units("neurons", data, top_kk=3)


def test_one_formatter_for_plain_text_and_markdown():
    rows = [{"unit": "atoms", "r2": 0.98765, "l0": 3}, {"unit": "atoms", "r2": None, "l0": 4}]
    md = E.format_table([(r["unit"], r) for r in rows], ("r2", "l0"), label="unit", digits=3, missing="–", markdown=True)
    assert md == "| unit | r2 | l0 |\n|---|---|---|\n| atoms | 0.988 | 3 |\n| atoms | – | 4 |"
    assert E.format_table({"n": {"r2": 0.5}}, ("r2", "mu")).splitlines() == ["units      r2  mu", "    n  0.5000   -"]
