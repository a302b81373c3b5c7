"""Planted dictionaries: the generator's guarantees, and the evaluator on an oracle SAE with a known answer."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig

from sae_atoms.synthetic import evaluate, planted, welch_bound


def test_planted_coherence_distortion_and_codes():
    data = planted(d=24, n_atoms=40, k=3, coherence=0.35, n_samples=3000, seed=1)
    v = data.intrinsic_atoms.double()
    g = v @ v.T
    torch.testing.assert_close(g.diagonal(), torch.ones(40, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    g.fill_diagonal_(0)
    assert float(g.abs().max()) <= 0.35 + 1e-6
    assert data.coherence == pytest.approx(float(g.abs().max()), abs=1e-6)
    # the distortion is the stated linear map with the stated condition number
    sv = torch.linalg.svdvals(data.distortion.double())
    assert float(sv.max() / sv.min()) == pytest.approx(10.0, rel=1e-3)
    expect = data.codes @ (data.intrinsic_atoms @ data.distortion.T)
    torch.testing.assert_close(data.activations, expect, rtol=1e-4, atol=1e-4)
    # the distortion makes the observed atoms more coherent in Euclid
    assert data.coherence_observed > data.coherence
    # codes: mean L0 near k, magnitudes in the range, reproducible
    l0 = data.support.float().sum(1).mean()
    assert abs(float(l0) - 3) < 0.2
    on = data.codes[data.support]
    assert float(on.min()) >= 0.5 and float(on.max()) <= 1.5
    again = planted(d=24, n_atoms=40, k=3, coherence=0.35, n_samples=3000, seed=1)
    assert torch.equal(again.activations, data.activations)
    assert not torch.equal(planted(d=24, n_atoms=40, k=3, coherence=0.35, n_samples=3000, seed=2).activations,
                           data.activations)


def test_unreachable_coherence_is_a_clear_error():
    assert welch_bound(16, 64) > 0.2
    with pytest.raises(ValueError, match="Welch bound"):
        planted(d=16, n_atoms=64, k=2, coherence=0.05, n_samples=10, seed=0)
    with pytest.raises(ValueError, match="k="):
        planted(d=16, n_atoms=20, k=0, coherence=0.5, n_samples=10)
    with pytest.raises(ValueError, match="distortion"):
        planted(d=16, n_atoms=20, k=2, coherence=0.5, n_samples=10, distortion=0.5)


def _oracle(data, threshold: float) -> JumpReLUSAE:
    """The TSAE of the theorem: W_dec = D (observed atoms), W_enc = (D^+)^T, per-unit threshold."""
    atoms = data.feature_dict.feature_vectors.detach()  # [N, d], rows A d_j (un-normalised)
    n, d = atoms.shape
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d, d_sae=n))
    with torch.no_grad():
        sae.W_dec.copy_(atoms)
        sae.W_enc.copy_(torch.linalg.pinv(atoms))  # exact inverse on orthonormal intrinsic atoms
        sae.b_dec.zero_()
        sae.b_enc.zero_()
        sae.threshold.fill_(threshold)
    return sae


def test_evaluate_scores_an_oracle_perfectly_and_a_scrambled_one_poorly():
    data = planted(d=32, n_atoms=24, k=3, coherence=0.0, n_samples=2000, seed=0, distortion=30.0)
    assert data.coherence < 1e-5  # n_atoms <= d: orthonormal intrinsic atoms
    good = evaluate(_oracle(data, threshold=0.25), data, n_eval_samples=2000)
    assert good["atoms_recovered"] == 1.0 and good["support_recovered"] == 1.0
    assert good["r2"] > 0.9999 and good["mcc"] > 0.999
    assert good["l0"] == pytest.approx(good["true_l0"])
    bad_sae = _oracle(data, threshold=0.25)
    with torch.no_grad():
        bad_sae.W_dec.copy_(torch.randn_like(bad_sae.W_dec))
    bad = evaluate(bad_sae, data, sae_lens_metrics=False)
    assert bad["atoms_recovered"] < 0.1 and bad["support_recovered"] < 0.1
    # a threshold above the smallest coefficient misses supports but keeps the atoms
    high = evaluate(_oracle(data, threshold=0.8), data, sae_lens_metrics=False)
    assert high["atoms_recovered"] == 1.0 and high["support_recovered"] < 0.9


def test_union_of_orthonormal_bases():
    data = planted(d=16, n_atoms=48, k=3, coherence=0.0, n_samples=500, seed=0, distortion=1.0, n_bases=3)
    v = data.intrinsic_atoms.double()
    for b in range(3):
        block = v[16 * b:16 * (b + 1)]
        assert torch.allclose(block @ block.T, torch.eye(16, dtype=torch.float64), atol=1e-5)  # each an orthonormal basis
    assert 0.2 < data.coherence < 0.99  # coherent across bases
    with pytest.raises(ValueError, match="n_bases"):
        planted(d=16, n_atoms=40, k=3, coherence=0.0, n_samples=10, n_bases=3)
