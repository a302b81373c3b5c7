"""Capacity sweep: a planted dictionary whose width needs are known, cliff finding on known
curves, the width rule, the plot, the CLI, and a small sweep on real activations."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from sae_atoms.experiments import capacity as C
from sae_atoms.training import training_config


@pytest.fixture
def one_thread():
    """Tiny SAEs train far faster single-threaded on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _planted(n: int, d: int = 16, m: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n activations, each one of m unit atoms in d dims times an amplitude in [1, 2]."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(m, d, generator=g)
    D = D / D.norm(dim=1, keepdim=True)
    j = torch.randint(0, m, (n,), generator=g)
    return (1 + torch.rand(n, generator=g))[:, None] * D[j], D


def test_find_cliff_known_curves():
    rows = [{"n_train": 100, "d_sae": w, "expansion": w / 10, "r2_heldout": v, "n_distinct": 100, "d": 10}
            for w, v in zip((10, 20, 40, 80), (0.60, 0.65, 0.97, 0.98))]
    rows += [{"n_train": 400, "d_sae": w, "expansion": w / 10, "r2_heldout": v, "n_distinct": 400, "d": 10}
             for w, v in zip((10, 20, 40, 80), (0.99, 0.995, 0.996, 0.997))]
    rows += [{"n_train": 800, "d_sae": w, "expansion": w / 10, "r2_heldout": v, "n_distinct": 800, "d": 10}
             for w, v in zip((10, 20, 40, 80), (0.50, 0.52, 0.53, 0.55))]
    c = {x["n_train"]: x for x in C.find_cliff(rows, min_jump=0.05)}
    assert c[100]["cliff_d_sae"] == 40 and c[100]["jump"] == pytest.approx(0.32) and c[100]["where"] == "inside_grid"
    assert c[400]["cliff_d_sae"] is None and c[400]["where"] == "below_grid"
    assert c[800]["cliff_d_sae"] is None and c[800]["where"] == "above_grid"
    with pytest.raises(KeyError, match="r2_missing"):
        C.find_cliff(rows, key="r2_missing")


def test_width_rule_slope():
    cliffs = [{"n_train": n, "n_distinct": n, "cliff_d_sae": n // 2, "d": 16, "where": "inside_grid"} for n in (128, 512, 2048)]
    rule = C.width_rule(cliffs)
    assert rule["loglog_slope"] == pytest.approx(1.0) and rule["ratios_width_over_n"] == [0.5, 0.5, 0.5]
    assert "0.5" in rule["statement"]
    flat = C.width_rule([{"n_train": n, "n_distinct": n, "cliff_d_sae": 64, "d": 16} for n in (128, 512)])
    assert flat["loglog_slope"] == pytest.approx(0.0, abs=1e-12)
    none = C.width_rule([{"n_train": 10, "n_distinct": 10, "cliff_d_sae": None, "d": 16, "where": "above_grid"}])
    assert none["loglog_slope"] is None and "no cliff" in none["statement"]


@pytest.mark.slow
def test_sweep_on_planted_dictionary(one_thread, tmp_path):
    """64 atoms in d = 16, one atom per sample: a width of 1x d cannot hold them, 4x (= 64) can."""
    tr, _ = _planted(1024, seed=0)
    ho = _planted(256, seed=0)[1]  # same dictionary ...
    g = torch.Generator().manual_seed(1)
    j = torch.randint(0, 64, (256,), generator=g)
    ho = (1 + torch.rand(256, generator=g))[:, None] * ho[j]  # ... new samples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = C.capacity_sweep(tr, ho, expansions=[1, 4], data_sizes=[512, 1024], architecture="tsae_aip", steps=250,
                               batch_size=128, progress=False)
    assert len(res) == 4 and {r["n_train"] for r in res} == {512, 1024} and {r["d_sae"] for r in res} == {16, 64}
    for n in (512, 1024):
        r1, r4 = (next(r for r in res if r["n_train"] == n and r["d_sae"] == w) for w in (16, 64))
        assert r4["r2_heldout"] > r1["r2_heldout"] + 0.1  # the capacity jump
        assert r4["r2_heldout"] > 0.85 and r1["r2_train"] < 0.9
        assert r4["r2_aip_train"] is not None and r4["n_distinct"] == n
    cliffs = C.find_cliff(res)
    assert all(c["cliff_d_sae"] == 64 for c in cliffs)
    p = C.plot_capacity(res, tmp_path / "cap.png", cliffs)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_bad_input():
    x = torch.randn(50, 8)
    with pytest.raises(ValueError, match="outside"):
        C.capacity_sweep(x, x, expansions=[1], data_sizes=[500], progress=False)
    with pytest.raises(ValueError, match="expansions"):
        C.capacity_sweep(x, x, expansions=[0], progress=False)
    with pytest.raises(ValueError, match="d=8"):
        C.capacity_sweep(x, torch.randn(10, 4), expansions=[1], progress=False)
    with pytest.raises(ValueError, match="unknown SAE architecture"):
        training_config("nope", 8, 16)


@pytest.mark.slow
def test_cli_capacity_from_saved_activations(one_thread, tmp_path):
    import datasets

    from sae_atoms.activations import ActivationSet
    from sae_atoms.cli import main

    x, _ = _planted(600, d=8, m=24, seed=2)
    rows = datasets.Dataset.from_dict({"prompt": [f"p{i}" for i in range(600)],
                                       "split": ["heldout" if i % 5 == 0 else "train" for i in range(600)]})
    ActivationSet({"blocks.0.hook_resid_post": x}, rows, {}).save(tmp_path / "acts")
    out = tmp_path / "cap"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["capacity", "--activations", str(tmp_path / "acts"), "--hook", "blocks.0.hook_resid_post",
                   "--expansions", "1", "4", "--steps", "60", "--batch-size", "64", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["results"]) == 2 and "statement" in res["width_rule"] and len(res["cliffs"]) == 1
    assert (out / "capacity.png").stat().st_size > 1000


@pytest.mark.real_model
def test_real_sweep_and_comparison(real_acts):
    tr, ho = real_acts.select(split="train"), real_acts.select(split="heldout")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = C.capacity_sweep(tr, ho, expansions=[1, 4], architecture="tsae_aip", steps=80, batch_size=256, progress=False)
    d = tr.x().shape[1]
    assert [r["d_sae"] for r in res] == [d, 4 * d]
    for r in res:
        assert 0.0 < r["r2_train"] <= 1.0 and r["r2_heldout"] <= r["r2_train"] + 0.05
        assert 0 < r["l0_train"] < r["d_sae"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = C.compare_units(tr, ho, expansion=1, architectures=("jumprelu",), steps=40, batch_size=256,
                                progress=False, top_k=10)
    assert set(table) == {"neurons", "jumprelu"}
    assert table["neurons"]["r2"] == pytest.approx(1.0) and table["neurons"]["r2_heldout"] == pytest.approx(1.0)
    assert table["jumprelu"]["r2"] < 1.0 and table["jumprelu"]["l0_mean"] < table["neurons"]["l0_mean"]
    assert "monosemanticity_heldout" in table["jumprelu"]
