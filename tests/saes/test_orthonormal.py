"""Orthonormal atoms in the AIP (Procrustes and ICA): they recover a planted orthonormal basis behind a
distortion (known answer), ICA recovers independent sources' mixing directions (known answer), both
meet the uniqueness bound on every sample whatever the data, and both are a SAELens TopK SAE."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from sae_atoms.aip import AIPMetric
from sae_atoms.evals import evaluate_units
from sae_atoms.evals.stability import dictionary_consistency
from sae_atoms.evals.units import whiten_vectors
from sae_atoms.saes.orthonormal import ica_atoms, orthonormal_atoms, raw_selecting, refine_atoms, sparse_code

BUILDERS = pytest.mark.parametrize("build", [orthonormal_atoms, ica_atoms], ids=["procrustes", "ica"])


def _planted(n: int, d: int = 24, k: int = 3, codes_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``x = z Q A + offset``: ``z`` exactly ``k``-sparse with signed amplitudes (zero mean, isotropic),
    ``Q`` a random orthonormal basis, ``A`` a distortion of condition 10 (both fixed); returns ``(x, Q A)``."""
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    U, _, Vh = torch.linalg.svd(torch.randn(d, d, generator=g, dtype=torch.float64))
    A = U @ torch.diag(torch.logspace(0, 1, d, dtype=torch.float64)) @ Vh
    g.manual_seed(1000 + codes_seed)
    z = torch.zeros(n, d, dtype=torch.float64)
    for i in range(n):
        on = torch.randperm(d, generator=g)[:k]
        z[i, on] = (1 + torch.rand(k, generator=g, dtype=torch.float64)) * torch.sign(torch.randn(k, generator=g))
    return (z @ Q @ A + 3.0).float(), (Q @ A).float()


def _raw_error(sae, x: torch.Tensor) -> float:
    """The SAE's squared reconstruction error of ``x`` in the raw space."""
    return float((sae.decode(sae.encode(x)) - x).pow(2).sum().detach())


@BUILDERS
def test_orthonormal_atoms_recover_a_planted_basis_behind_a_distortion_from_any_seed(build):
    x, planted = _planted(6000)
    metric = AIPMetric.fit(x, kind="centered", shrinkage=0.0)
    saes = [build(x, 3, metric, iters=40, seed=s) for s in (0, 1)]
    truth = planted / planted.norm(dim=1, keepdim=True)
    for sae in saes:
        dec = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
        assert float(((truth @ dec.T).abs().max(1).values > 0.99).float().mean()) >= 0.95
        fresh = _planted(500, codes_seed=7)[0]  # new samples of the same dictionary
        recon = sae.decode(sae.encode(fresh)).detach()
        assert float(1 - (fresh - recon).pow(2).sum() / (fresh - fresh.mean(0)).pow(2).sum()) > 0.99
    assert dictionary_consistency(saes[0], saes[1], x, metric)["frac_matched"] >= 0.95  # the same atoms from both seeds


@BUILDERS
def test_every_sample_meets_the_uniqueness_bound_even_on_unstructured_data(build):
    x = torch.randn(600, 16) @ torch.randn(16, 16) + 1.0  # no sparse structure at all
    metric = AIPMetric.fit(x, kind="centered")
    sae = build(x, 5, metric, iters=10)
    codes = sae.encode(x).detach()
    assert bool(((codes > 0).sum(1) == 5).all())
    assert not bool(((codes[:, :16] > 0) & (codes[:, 16:] > 0)).any())  # an atom and its negative never together
    res = evaluate_units(sae, x, metric)
    assert res["q_star_b"] == 1.0  # mu_S = 0 < 1 / (2K - 1) on every sample
    y = metric.whiten(x)  # the code is the best 5-term one in the AIP: the direct projection
    Q = whiten_vectors(sae.W_dec.detach()[:16], metric.W)  # the atoms in the AIP (directions: no mean)
    _, z = sparse_code(y, [Q], 5)
    torch.testing.assert_close(metric.whiten(sae.decode(sae.encode(x)).detach()), z @ Q, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("n_bases", [1, 2])
def test_refining_continues_procrustes_from_the_given_bases(n_bases):
    """``refine_atoms`` reads the bases back out of the SAE: 4 steps then 4 more equal 8 steps in one
    go; from an ICA basis it lowers the K-term error, and it keeps the SAE's k and hook."""
    x, _ = _planted(3000, k=4)
    metric = AIPMetric.fit(x, kind="centered", shrinkage=0.0)
    whole, half = (orthonormal_atoms(x, 4, metric, n_bases=n_bases, iters=i, seed=3) for i in (8, 4))
    again = refine_atoms(half, x, metric, iters=4)
    assert torch.allclose(again.W_dec, whole.W_dec, atol=2e-3) and again.cfg.k == 4
    ica = ica_atoms(x, 2, metric, iters=3, seed=0, hook="blocks.0.hook_resid_post")
    refined = refine_atoms(ica, x, metric, iters=5)
    assert _raw_error(refined, x) < _raw_error(ica, x) and refined.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    assert evaluate_units(refined, x, metric)["q_star_b"] == 1.0


def test_raw_selecting_keeps_each_samples_atoms_of_largest_raw_contribution():
    """``raw_selecting`` keeps the K atoms of largest ``|c_i| ||d_i||`` (computed here by hand), a kept
    support reconstructs as ``sum c_i d_i``, the bound still holds, and where the metric is far from
    Euclid the raw error falls; refining keeps the flag (4 + 4 steps equal 8)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 16, generator=g) @ torch.diag(torch.logspace(0, 1.5, 16)) @ torch.linalg.qr(torch.randn(16, 16, generator=g))[0]
    metric = AIPMetric.fit(x, kind="centered", shrinkage=0.0)
    sae = ica_atoms(x, 4, metric, iters=5)
    raw = raw_selecting(sae)
    Q, dec = whiten_vectors(sae.W_dec.detach()[:16], metric.W), sae.W_dec.detach()[:16]
    c = metric.whiten(x) @ Q.T
    top = (c.abs() * dec.norm(dim=1)).topk(4, dim=1).indices
    expect = torch.zeros_like(c).scatter_(1, top, c.gather(1, top)) @ dec + sae.b_dec.detach()
    torch.testing.assert_close(raw.decode(raw.encode(x)).detach(), expect, atol=2e-3, rtol=1e-3)
    assert _raw_error(raw, x) < 0.95 * _raw_error(sae, x) and evaluate_units(raw, x, metric)["q_star_b"] == 1.0
    whole, again = refine_atoms(raw, x, metric, iters=8), refine_atoms(refine_atoms(raw, x, metric, iters=4), x, metric, iters=4)
    assert whole.cfg.rescale_acts_by_decoder_norm and raw_selecting(sae, 2).cfg.k == 2
    assert torch.allclose(again.W_dec, whole.W_dec, atol=2e-3) and _raw_error(whole, x) < _raw_error(raw, x)


def test_saves_and_loads_as_a_sae_lens_topk_sae(tmp_path):
    from sae_lens import SAE

    x = torch.randn(200, 8)
    sae = orthonormal_atoms(x, 2, AIPMetric.fit(x, kind="centered"), iters=5, hook="blocks.0.hook_resid_post")
    sae.save_model(str(tmp_path / "onb"))
    back = SAE.load_from_disk(str(tmp_path / "onb"))
    assert back.cfg.architecture() == "topk" and back.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    torch.testing.assert_close(back.decode(back.encode(x)), sae.decode(sae.encode(x)))


@pytest.mark.parametrize("bad, match", [({"k": 0}, "between 1 and d"), ({"k": 9}, "between 1 and d"), ({"k": 2.5}, "whole number"),
                                        ({"iters": 0}, "at least 1"), ({"n_bases": 0}, "at least 1"),
                                        ({"x": torch.randn(5, 8)}, "at least 8 activations"),
                                        ({"x": torch.randn(8)}, r"\[n, d\] tensor")])
@BUILDERS
def test_bad_input_says_what_was_wrong(bad, match, build):
    x = torch.randn(50, 8)
    args = {"x": x, "k": 2, "metric": AIPMetric.fit(x, kind="centered")} | bad
    with pytest.raises(ValueError, match=match):
        build(args.pop("x"), args.pop("k"), args.pop("metric"), **args)


@pytest.mark.real_model
def test_on_real_activations_the_bound_holds_held_out_and_learning_beats_a_random_basis(real_acts):
    from sae_atoms.experiments.frontier import reference_metric

    hook = "blocks.12.hook_resid_post"
    train, held = real_acts.select(split="train"), real_acts.select(split="heldout")
    ref = reference_metric(train, hook)
    sae = orthonormal_atoms(train.x(hook).float(), 8, ref, iters=30)
    res = evaluate_units(sae, held.x(hook).float(), ref)
    assert res["q_star_b"] == 1.0 and res["l0_mean"] == 8.0
    y = ref.whiten(held.x(hook).float())
    random_basis = torch.linalg.qr(torch.randn(y.shape[1], y.shape[1], generator=torch.Generator().manual_seed(0)))[0]
    kept = {name: float(sparse_code(y, [q], 8)[1].pow(2).sum()) for name, q in
            (("learned", whiten_vectors(sae.W_dec.detach()[:y.shape[1]], ref.W)), ("random", random_basis))}
    assert kept["learned"] > 1.1 * kept["random"]  # the held-out energy 8 atoms keep (few train rows: it overfits)


def _mixed(sources: Callable[[torch.Generator], torch.Tensor], d: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """``sources(g)`` ``[n, d]`` mixed by a fixed matrix of condition 5 (drawn first from ``g``, seed 0),
    offset by 2; returns ``(x, the unit mixing rows)``."""
    g = torch.Generator().manual_seed(0)
    U, _, Vh = torch.linalg.svd(torch.randn(d, d, generator=g))
    mixing = U @ torch.diag(torch.logspace(0, 0.7, d)) @ Vh
    return sources(g) @ mixing + 2.0, mixing / mixing.norm(dim=1, keepdim=True)


def _laplace(g: torch.Generator, n: int = 8000, d: int = 12) -> torch.Tensor:
    u = torch.rand(n, d, generator=g) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace(0, 1) by its inverse CDF


def _recovered(sae, truth: torch.Tensor) -> torch.Tensor:
    """For each true direction, the |cos| of the decoder's atom nearest to it."""
    dec = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    return (truth @ dec.T).abs().max(1).values


def test_ica_recovers_the_mixing_directions_of_independent_dense_sources():
    """Known answer for ICA alone: every source is on in every sample (nothing K-sparse), Laplace
    amplitudes, mixed by a fixed matrix of condition 5; the decoder's atoms are its rows, from any seed,
    and a mixture of two ICA bases keeps them (what the frontier's width twin reads)."""
    x, truth = _mixed(_laplace)
    metric = AIPMetric.fit(x, kind="centered", shrinkage=0.0)
    for sae, floor in [(ica_atoms(x, 4, metric, iters=100, seed=s), 0.99) for s in (0, 1)] + \
            [(ica_atoms(x, 4, metric, n_bases=2, iters=100), 0.95)]:  # each basis of the mixture sees half the rows
        assert float(_recovered(sae, truth).min()) > floor


def test_skew_contrast_recovers_one_sided_sources_and_cannot_see_symmetric_ones():
    """Known answer for ``contrast="skew"``: sparse non-negative sources (on in 20% of samples,
    exponential amplitudes: what a firing feature adds) are recovered from two seeds; Laplace sources
    are symmetric, so their third cumulant is zero and the skew contrast cannot tell their directions
    from any rotation of them, where logcosh recovers every one."""
    x, truth = _mixed(lambda g: (torch.rand(8000, 12, generator=g) < 0.2) * torch.empty(8000, 12).exponential_(generator=g))
    metric = AIPMetric.fit(x, kind="centered", shrinkage=0.0)
    for s in (0, 1):
        assert float(_recovered(ica_atoms(x, 4, metric, iters=100, seed=s, contrast="skew"), truth).min()) > 0.99
    x, truth = _mixed(_laplace)
    metric = AIPMetric.fit(x, kind="centered", shrinkage=0.0)
    found = {c: _recovered(ica_atoms(x, 4, metric, iters=100, contrast=c), truth) for c in ("logcosh", "skew")}
    assert float(found["logcosh"].min()) > 0.99 and float(found["skew"].min()) < 0.9
    with pytest.raises(ValueError, match="contrast='kurtosis' is not one of"):
        ica_atoms(x, 4, metric, contrast="kurtosis")


def test_a_long_ica_fit_shows_its_progress_and_a_short_one_does_not(monkeypatch, capsys):
    import sae_atoms.saes.orthonormal as O

    x, _ = _planted(200)
    metric = AIPMetric.fit(x, kind="centered")
    ica_atoms(x, 3, metric, iters=4)
    assert "ICA atoms" not in capsys.readouterr().err  # 800 row-steps: a test's fit, silent
    monkeypatch.setattr(O, "LONG_FIT", 100)
    ica_atoms(x, 3, metric, iters=4)
    err = capsys.readouterr().err
    assert "ICA atoms" in err and "4/4" in err


@pytest.mark.real_model
def test_on_real_activations_ica_seeds_agree_more_than_procrustes_seeds(real_acts):
    from sae_atoms.experiments.frontier import reference_metric

    hook = "blocks.12.hook_resid_post"
    train, held = real_acts.select(split="train"), real_acts.select(split="heldout")
    ref = reference_metric(train, hook)
    x = train.x(hook).float()
    pairs = {name: [build(x, 8, ref, iters=100, seed=s) for s in (0, 1)] for name, build in
             (("ica", ica_atoms), ("procrustes", orthonormal_atoms))}
    res = evaluate_units(pairs["ica"][0], held.x(hook).float(), ref)
    assert res["q_star_b"] == 1.0 and res["l0_mean"] == 8.0
    agree = {name: dictionary_consistency(a, b, x, ref)["mean_matched_cos"] for name, (a, b) in pairs.items()}
    assert agree["ica"] > agree["procrustes"] + 0.1
