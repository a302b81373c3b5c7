"""The TSAE's stability objective: which pairs it penalises, and that training with it keeps
co-active atoms less coherent (planted data, same seed with and without)."""

from __future__ import annotations

import pytest
import torch

from sae_atoms.evals.geometry import per_sample_coherence
from sae_atoms.saes import TSAETrainingSAE, TSAETrainingSAEConfig
from sae_atoms.saes.stability import HingeGram, coactive_penalty, default_margin, global_penalty, stability_penalty
from sae_atoms.synthetic import planted
from sae_atoms.training import train_on_activations


def _rows() -> torch.Tensor:
    """Units 0, 1 orthogonal; unit 2 at cos 0.8 to unit 0."""
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.8, 0.6, 0.0]])


def test_coactive_penalty_counts_only_pairs_that_fire_together():
    rows = _rows()
    orth = torch.tensor([[1.0, 2.0, 0.0]] * 4)       # units 0 and 1 together: orthogonal
    coh = torch.tensor([[1.0, 0.0, 2.0]] * 4)        # units 0 and 2 together: |cos| 0.8
    apart = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]] * 2)  # 0 and 2 never together
    assert float(coactive_penalty(orth, rows, 0.1, 4, 8)) == 0.0
    assert float(coactive_penalty(coh, rows, 0.1, 4, 8)) == pytest.approx((0.8 - 0.1) ** 2)
    assert float(coactive_penalty(apart, rows, 0.1, 4, 8)) == 0.0
    assert float(global_penalty(coh, rows, 0.1, 3)) == pytest.approx((0.8 - 0.1) ** 2 / 3 + (0.6 - 0.1) ** 2 / 3)


def test_default_margin_is_half_the_bound_at_the_mean_l0_and_bad_designs_fail_by_name():
    codes = torch.zeros(2, 10)
    codes[:, :4] = 1.0
    assert default_margin(codes) == pytest.approx(0.5 / 7)
    with pytest.raises(ValueError, match="stability_design"):
        stability_penalty("pairs", codes, torch.eye(10), None, 2, 4)
    with pytest.raises(ValueError, match="stability_design"):
        TSAETrainingSAEConfig(d_in=8, d_sae=16, stability_design="pairs")
    with pytest.raises(ValueError, match="stability_coefficient"):
        TSAETrainingSAEConfig(d_in=8, d_sae=16, stability_coefficient=-1.0)


def test_the_penalty_moves_only_decoder_rows():
    rows = _rows().requires_grad_(True)
    codes = torch.tensor([[1.0, 0.0, 2.0]] * 4).requires_grad_(True)
    coactive_penalty(codes, rows, 0.1, 4, 8).backward()
    assert codes.grad is None and rows.grad is not None and rows.grad[[0, 2]].abs().sum() > 0


@pytest.mark.parametrize("shape", [(7, 5), (3, 6, 5)])
def test_hinge_gram_equals_autograd_through_the_plain_expression(shape: tuple[int, ...]):
    """The closed-form gradient (one product) equals autograd's through ``E E^T`` (two), in double
    precision, with a float margin and with a margin per batch entry, signs of both kinds among the
    pairs, and pairs masked off: the form's backward misses a transpose or a sign and it fails."""
    g = torch.Generator().manual_seed(0)
    E = torch.randn(*shape, generator=g, dtype=torch.float64)
    E = (E / E.norm(dim=-1, keepdim=True)).requires_grad_(True)
    k = shape[-2]
    pair = (torch.rand(*shape[:-1], k, generator=g, dtype=torch.float64) < 0.7).double().triu_(1)
    margins = [0.1] + ([torch.tensor([0.05, 0.2, 0.3], dtype=torch.float64).view(3, 1, 1)] if len(shape) == 3 else [])
    for m in margins:
        G = E @ E.transpose(-1, -2)
        plain = (torch.relu(G.abs() - m).square() * pair).sum()
        want = torch.autograd.grad(plain, E)[0]
        got_val = HingeGram.apply(E, pair, m)
        got = torch.autograd.grad(got_val, E)[0]
        assert float(got_val) == pytest.approx(float(plain), rel=1e-12) and float(plain) > 0
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda e: HingeGram.apply(e, pair, 0.1), (E,))


@pytest.mark.slow
def test_training_with_the_objective_lowers_coactive_coherence_on_planted_data():
    data = planted(d=24, n_atoms=48, k=4, coherence=0.3, n_samples=4000, seed=0, distortion=1.0)
    x = data.activations

    def mean_coactive_mu(coef: float) -> float:
        cfg = TSAETrainingSAEConfig(d_in=24, d_sae=48, stability_coefficient=coef, stability_rows=128)
        sae = train_on_activations(x, cfg, steps=600, seed=0, target_l0=4, batch_size=128, progress=False)
        rows = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
        mu_i = per_sample_coherence(sae.encode(x[:1000]).detach(), rows)
        return float(mu_i[mu_i > 0].mean())

    plain, stable = mean_coactive_mu(0.0), mean_coactive_mu(30.0)
    assert stable < 0.8 * plain, (plain, stable)


def test_stability_geometry_aip_reads_the_rows_in_the_full_aip_while_the_sae_trains_at_its_alpha():
    from sae_atoms.aip import AIPMetric
    from sae_atoms.saes.tsae_aip import TSAEAIPTrainingSAE, TSAEAIPTrainingSAEConfig

    torch.manual_seed(0)
    x = torch.randn(2000, 8) @ torch.diag(torch.tensor([4.0, 3, 2, 1, 1, 0.5, 0.3, 0.2])) + 1.0
    full = AIPMetric.fit(x, kind="centered", shrinkage=0.01)
    for alpha, same in ((0.35, False), (1.0, True)):
        sae = {g: TSAEAIPTrainingSAE(TSAEAIPTrainingSAEConfig(d_in=8, d_sae=12, aip_alpha=alpha, stability_geometry=g))
               for g in ("sae", "aip")}
        sae["aip"].load_state_dict(sae["sae"].state_dict())
        for s in sae.values():
            s.fit_metric(x)
        raw = sae["sae"].unit_W_dec().detach().double() @ sae["sae"].aip_W_inv.T.double()  # each atom in raw space
        expect = torch.nn.functional.normalize(raw @ full.W.T, dim=-1)  # ... and in the full AIP
        assert torch.allclose(sae["aip"].stability_directions().double(), expect, atol=1e-4)
        assert torch.allclose(sae["sae"].stability_directions(), sae["sae"].unit_W_dec())
        assert torch.allclose(sae["aip"].stability_directions(), sae["sae"].stability_directions(), atol=1e-5) == same
        idx = torch.tensor([7, 2, 11])  # the rows the penalty reads, mapped alone
        assert torch.allclose(sae["aip"].stability_directions(idx), sae["aip"].stability_directions()[idx], atol=1e-6)
    codes = torch.rand(6, 12) * (torch.rand(6, 12) < 0.4)
    s = sae["aip"]
    with torch.no_grad():
        assert float(coactive_penalty(codes, s.stability_directions, 0.01, 6, 8)) == pytest.approx(
            float(coactive_penalty(codes, s.stability_directions(), 0.01, 6, 8)), rel=1e-5)
    for bad in ({"stability_geometry": "raw"}, {"stability_geometry": "aip", "aip_alpha": 0.0}):
        with pytest.raises(ValueError, match="stability_geometry"):
            TSAEAIPTrainingSAEConfig(d_in=8, d_sae=12, **bad)


@pytest.mark.parametrize("design", ["coactive_own_k", "all"])
@pytest.mark.parametrize("kind", ["tsae", "tsae_aip sae", "tsae_aip aip"])
def test_a_step_reads_the_objective_off_its_own_unit_rows_as_stability_directions_would(kind: str, design: str):
    """A training step hands its unit decoder rows to the objective (``stability_rows``): the loss and the
    decoder's gradient are those read off ``stability_directions`` (which normalise and map the rows anew),
    in the raw space, in tsae_aip's own geometry and in the full AIP it maps to."""
    from sae_lens.saes.sae import TrainStepInput

    from sae_atoms.saes.tsae_aip import TSAEAIPTrainingSAE, TSAEAIPTrainingSAEConfig

    torch.manual_seed(0)
    x = torch.randn(400, 8) @ torch.diag(torch.tensor([4.0, 3, 2, 1, 1, 0.5, 0.3, 0.2])) + 1.0
    codes = torch.rand(16, 24) * (torch.rand(16, 24) < 0.4)
    opts = {"d_in": 8, "d_sae": 24, "stability_coefficient": 1.0, "stability_margin": 0.01, "stability_design": design,
            "stability_rows": 24, "topk_training": True, "target_l0": 4}
    if kind == "tsae":
        sae = TSAETrainingSAE(TSAETrainingSAEConfig(**opts))
    else:
        sae = TSAEAIPTrainingSAE(TSAEAIPTrainingSAEConfig(**opts, aip_alpha=0.35, stability_geometry=kind.split()[1]))
        sae.fit_metric(x)
    unit = sae.unit_W_dec()
    assert (sae.stability_rows(unit) is unit) == (kind != "tsae_aip aip")  # rows at hand are gathered from, not remade

    def read(own_rows: bool) -> tuple[float, torch.Tensor]:
        sae.stability_generator = torch.Generator().manual_seed(3)  # the same random atoms for "all"
        unit = sae.unit_W_dec() if own_rows else None
        loss = sae.calculate_aux_loss(TrainStepInput(x[:16], {}, None, 0, False), codes, codes, x[:16],
                                      unit=unit)["stability_loss"]
        return float(loss), torch.autograd.grad(loss, sae.W_dec)[0]

    (want, g_want), (got, g_got) = read(False), read(True)
    assert want > 0 and got == pytest.approx(want, rel=1e-5)
    assert torch.allclose(g_got, g_want, rtol=1e-4, atol=1e-7) and g_want.abs().sum() > 0


def test_stability_every_applies_the_objective_every_nth_step_at_n_times_its_weight():
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(0)
    x = torch.randn(16, 8)
    codes = torch.rand(16, 12) * (torch.rand(16, 12) < 0.5)

    def loss(every: int, step: int) -> float | None:
        torch.manual_seed(1)
        sae = TSAETrainingSAE(TSAETrainingSAEConfig(d_in=8, d_sae=12, stability_coefficient=2.0, stability_every=every,
                                                    stability_margin=0.01, topk_training=True, target_l0=4))
        aux = sae.calculate_aux_loss(TrainStepInput(x, {}, None, step, False), codes, codes, x)
        return aux["stability_loss"].item() if "stability_loss" in aux else None

    assert loss(1, 5) is not None and loss(1, 5) > 0
    assert loss(3, 6) == pytest.approx(3 * loss(1, 5))
    assert loss(3, 5) is None
    with pytest.raises(ValueError, match="stability_every"):
        TSAETrainingSAEConfig(d_in=8, d_sae=16, stability_every=0)


def test_coactive_own_k_gives_each_sample_the_margin_of_its_own_l0():
    rows = _rows()
    codes = torch.tensor([[1.0, 0.0, 2.0], [1.0, 3.0, 2.0]])  # K 2 (cos 0.8), K 3 (cos 0, 0.8, 0.6)
    m2, m3 = 0.5 / 3, 0.5 / 5
    want = ((0.8 - m2) ** 2 + 0.0 + (0.8 - m3) ** 2 + (0.6 - m3) ** 2) / 4
    assert float(stability_penalty("coactive_own_k", codes, rows, None, 2, 8)) == pytest.approx(want)
    assert float(stability_penalty("coactive_own_k", codes, rows, 1.0, 2, 8)) == pytest.approx(
        ((0.8 - 1 / 3) ** 2 + (0.8 - 0.2) ** 2 + (0.6 - 0.2) ** 2) / 4)
