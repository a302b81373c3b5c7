"""Geometry diagnostics: angle statistics with known answers, Euclid vs AIP, the CLI pieces."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sae_atoms.experiments.geometry import (angle_stats, dedupe_subject_prefix, euclid_angles, layer_geometry, plot_geometry,
                                resolve_layers, run_geometry, summary_table, upper_angles, write_results)


def test_angle_stats_known_answers():
    a = torch.tensor([10.0, 20.0, 30.0, 45.2, 45.7, 45.9, 170.0])
    s = angle_stats(a, bin_width=1.0)
    assert s["mean"] == pytest.approx(a.double().mean().item())
    assert s["median"] == pytest.approx(45.2)
    assert s["mode"] == pytest.approx(45.5)  # three values in [45, 46)
    assert s["n"] == 7 and sum(s["hist"]) == 7 and len(s["hist"]) == 180
    assert angle_stats(a, bin_width=5.0)["mode"] == pytest.approx(47.5)
    with pytest.raises(ValueError, match="at least two"):
        angle_stats(torch.tensor([]))


def test_euclid_angles_on_orthonormal_duplicated_and_opposite_vectors():
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    ang = upper_angles(euclid_angles(q * torch.arange(1, 17, dtype=torch.float64)[:, None]))  # scaled rows
    assert ang.numel() == 16 * 15 // 2
    assert torch.allclose(ang, torch.full_like(ang, 90.0), atol=1e-9)
    x = torch.stack([q[0], 3 * q[0], -q[0]])
    assert torch.allclose(upper_angles(euclid_angles(x)), torch.tensor([0.0, 180.0, 180.0], dtype=torch.float64), atol=1e-5)


def _shifted(n: int, d: int, seed: int, shift: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, 1, d, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scales + shift


def test_layer_geometry_recentres_planted_shift_and_flags_other_family():
    d = 64
    shift = torch.zeros(d, dtype=torch.float64)
    shift[:8] = 20.0  # a dominant shared direction (the "representation shift")
    train, heldout = _shifted(6000, d, 0, shift), _shifted(600, d, 1, shift)
    # another family: offset along the train data's lowest-variance direction (dim 0 has scale 1)
    other_shift = shift.clone()
    other_shift[0] += 20.0
    other = _shifted(300, d, 2, other_shift)
    r = layer_geometry(train, heldout, other, n_angle_samples=250, seed=0)
    assert r["euclid"]["mean"] < 60 and r["euclid_heldout"]["mean"] < 60
    for view in ("aip", "aip_heldout", "aip_centered", "aip_centered_heldout"):
        assert abs(r[view]["mean"] - 90.0) < 1.0, (view, r[view]["mean"])
        assert abs(r[view]["median"] - 90.0) < 2.0
    # the metric from train does not whiten the other family's offset: AIP angles stay far below 90
    assert r["aip_other_family"]["mean"] < 80
    assert r["aip"]["n"] == 250 * 249 // 2 and r["aip"]["n_samples"] == 250
    assert r["aip_heldout"]["n_samples"] == 250 and r["aip_other_family"]["n_samples"] == 300 - 50
    assert r["metric"]["kind"] == "uncentered" and r["metric"]["n_samples"] == 6000 and not r["metric"]["warnings"]


def test_layer_geometry_records_conditioning_and_is_finite():
    x = torch.randn(40, 32, generator=torch.Generator().manual_seed(3))  # fewer samples than dims
    r = layer_geometry(x[:30], x[30:], None, warn=False)
    assert r["metric"]["shrinkage"] > 0 and r["metric"]["warnings"]
    assert "aip_other_family" not in r
    assert all(math.isfinite(r[v]["mean"]) for v in ("euclid", "aip", "aip_heldout"))
    with pytest.raises(ValueError, match="train_x"):
        layer_geometry(torch.randn(1, 4))


def test_dedupe_subject_prefix_and_resolve_layers():
    import datasets

    ds = datasets.Dataset.from_list([
        {"prompt": "Paris is a city in the country of", "subject_end": 5},
        {"prompt": "Paris is a town in the nation of", "subject_end": 5},
        {"prompt": "The city of Paris is located in", "subject_end": 17},
    ])
    assert dedupe_subject_prefix(ds)["prompt"] == [ds[0]["prompt"], ds[2]["prompt"]]
    assert resolve_layers("all", 4) == [0, 1, 2, 3]
    assert resolve_layers("3, 1", 4) == [1, 3] and resolve_layers(2, 4) == [2]
    with pytest.raises(ValueError, match="not in 0..3"):
        resolve_layers("1,7", 4)
    with pytest.raises(ValueError, match="comma-separated"):
        resolve_layers("first", 4)


@pytest.mark.real_model
def test_subject_prefix_duplicates_have_identical_activations(real_model):
    """The premise of the de-duplication: a causal model's subject-last-token activation depends
    only on the prompt up to the subject's end."""
    from sae_atoms.activations import extract

    rows = [{"prompt": "Madrid is a city in the country of", "subject_start": 0, "subject_end": 6},
            {"prompt": "Madrid is a town in the nation of", "subject_start": 0, "subject_end": 6}]
    x = extract(real_model, rows, "blocks.3.hook_resid_post", progress=False).x()
    assert torch.allclose(x[0], x[1], atol=1e-4)


@pytest.mark.real_model
def test_run_geometry_on_real_model_writes_results_and_plots(real_model, tmp_path):
    res = run_geometry(real_model, layers=[0, 6], n_facts=240, n_reasoning=40, n_angle_samples=120,
                       batch_size=64, progress=False)
    assert sorted(res["layers"]) == ["0", "6"]
    meta = res["meta"]
    assert meta["n_train"] + meta["n_heldout"] == 240 and meta["n_heldout"] >= 2
    for layer in ("0", "6"):
        r = res["layers"][layer]
        for view in ("euclid", "aip", "aip_heldout", "aip_other_family"):
            assert {"mean", "median", "mode", "n"} <= set(r[view]) and math.isfinite(r[view]["mean"])
        # fewer train activations than d: in-sample AIP angles are 90 by construction (reported, with a ridge)
        assert abs(r["aip"]["mean"] - 90) < 1.0
        assert r["metric"]["shrinkage"] > 0
    # the representation shift: subject activations share a dominant direction in Euclid
    assert res["layers"]["6"]["euclid"]["mean"] < 80
    write_results(res, tmp_path)
    back = json.loads((tmp_path / "results.json").read_text())
    assert back["layers"]["6"]["aip_heldout"]["n"] == res["layers"]["6"]["aip_heldout"]["n"]
    plots = plot_geometry(res, tmp_path)
    assert {p.name for p in plots} == {"centroid_by_layer.png", "hist_layer0.png", "hist_layer6.png"}
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in plots)
    assert "| 6 |" in summary_table(res)
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_rejects_bad_layers(tiny_model, monkeypatch):
    with pytest.raises(ValueError, match="not in 0..1"):
        run_geometry(tiny_model, layers="5")


def _planted(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shift = torch.ones(d) * 3.0
    return torch.randn(n, d, generator=g) + shift


def test_generic_metric_geometry_recentres_with_a_metric_fitted_elsewhere(tmp_path):
    import datasets

    from sae_atoms.activations import ActivationSet
    from sae_atoms.aip import AIPMetric
    from sae_atoms.experiments.geometry import SITES, generic_metric_geometry, generic_table

    dims = {"resid": 64, "mlp": 96}  # uncentred AIP: cos ~ 1/d from the whitened mean
    hooks = {s: SITES[s].format(layer=0) for s in dims}
    for i, (s, d) in enumerate(dims.items()):  # the "generic text" metric: same distribution, other samples
        AIPMetric.fit(_planted(20000, d, 100 + i)).save_with_metadata(tmp_path / hooks[s], corpus={"corpus": "planted"},
                                                                       n_tokens_run=20000)
    n = 300
    rows = datasets.Dataset.from_dict({"split": ["train"] * 200 + ["heldout"] * 100})
    fa = ActivationSet({hooks[s]: _planted(n, d, i) for i, (s, d) in enumerate(dims.items())}, rows)
    ra = ActivationSet({hooks[s]: _planted(80, d, 10 + i) for i, (s, d) in enumerate(dims.items())},
                       datasets.Dataset.from_dict({"split": ["x"] * 80}))
    train = torch.tensor([s == "train" for s in rows["split"]])
    block = generic_metric_geometry(tmp_path, fa, ra, train, layers=[0, 1], n_angle_samples=150)
    assert block["provenance"]["corpus"] == {"corpus": "planted"} and block["provenance"]["n_tokens_run"] == 20000
    assert list(block["layers"]) == ["0"]  # layer 1 has no metric: skipped
    for s in dims:
        r = block["layers"]["0"][s]
        assert r["euclid_deg"] < 75  # the shared direction
        for k in ("facts_deg", "heldout_deg", "reasoning_deg"):
            assert abs(r[k] - 90) < 2.5, (s, k, r[k])
    assert "| 0 | mlp |" in generic_table(block)
    with pytest.raises(FileNotFoundError, match="no metric"):
        generic_metric_geometry(tmp_path, fa, ra, train, layers=[1])


@pytest.mark.real_model
def test_run_geometry_with_a_generic_metric_at_both_sites(real_model, tmp_path):
    from sae_atoms.experiments.fit_metric import run_fit_metric

    hooks = ["blocks.1.hook_resid_post", "blocks.1.mlp.hook_post"]
    run_fit_metric(real_model, hooks, tmp_path / "m", n_tokens=512, context_size=64, batch_size=4, progress=False,
                   shrinkage=0.01)
    res = run_geometry(real_model, layers=[1], n_facts=120, n_reasoning=30, n_angle_samples=60, batch_size=64,
                       progress=False, metric_dir=tmp_path / "m")
    g = res["generic_metric"]
    assert g["provenance"]["corpus"]["package"] == "markov_draftjs" and g["provenance"]["n_tokens_run"] == 512
    for site, d in (("resid", 576), ("mlp", 1536)):
        r = g["layers"]["1"][site]
        assert r["metric"]["n_samples"] > 400 and r["hook"] == hooks[site == "mlp"]
        assert all(0 < r[k] < 180 for k in ("euclid_deg", "facts_deg", "heldout_deg", "reasoning_deg"))
    assert "aip_heldout" in res["layers"]["1"]  # the fitted-on-subjects views are still there
    with pytest.raises(ValueError, match="unknown"):
        run_geometry(real_model, layers=[1], metric_dir=tmp_path / "m", sites=["attn"])
