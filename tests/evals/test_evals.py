"""Known-answer tests of sae_atoms.evals: orthonormal, duplicated and planted dictionaries,
labels a unit fires on exactly, identity units, AIP == raw after whitening, and the real model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sae_atoms import evals as E
from sae_atoms.aip import AIPMetric


def _orthonormal(d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q.float()


def _equiangular(n: int, c: float) -> torch.Tensor:
    """n unit vectors with every pairwise cosine exactly c: v_i = sqrt(1-c) e_i + sqrt(c) f."""
    v = torch.zeros(n, n + 1, dtype=torch.float64)
    v[:, :n] = math.sqrt(1 - c) * torch.eye(n, dtype=torch.float64)
    v[:, n] = math.sqrt(c)
    return v.float()


def _pm_sae(cls_name: str, Q: torch.Tensor):
    """An SAE of width 2d with W_dec = [Q; -Q], W_enc = W_dec^T: reconstructs every x exactly."""
    import sae_lens

    d = Q.shape[0]
    kw = {"k": d} if cls_name == "TopK" else {}
    cfg = getattr(sae_lens, f"{cls_name}SAEConfig")(d_in=d, d_sae=2 * d, **kw)
    sae = getattr(sae_lens, f"{cls_name}SAE")(cfg)
    with torch.no_grad():
        W = torch.cat([Q, -Q])
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
        sae.b_dec.zero_()
        sae.b_enc.zero_()
    return sae


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(24, 24, generator=g)
    return torch.randn(600, 24, generator=g) @ A + 2.0


# --------------------------------------------------------------------------- coherence
def test_orthonormal_units_mu_zero_bound_and_qstar_one():
    Q = _orthonormal(32)
    coh = E.coherence(Q, block=5)
    assert coh.mu < 1e-6
    assert coh.n_pairs == 32 * 31 // 2 and coh.hist.sum().item() == pytest.approx(coh.n_pairs)
    for k in (1, 2, 5, 16, 32, 10_000):
        assert coh.mu < E.uniqueness_bound(k)
    assert E.max_unique_k(0.0) == math.inf
    # any codes at all: both readings give 1
    codes = torch.randn(200, 32).relu()
    k = E.l0(codes)
    assert E.q_star_a(coh, k) == 1.0
    qb, mu_i = E.q_star_b(codes, E.unit_directions(Q))
    assert qb == 1.0 and float(mu_i.max()) < 1e-6


@pytest.mark.parametrize("max_elements", [1 << 24, 300])  # the |Gram| read; batched products (40 units^2 > 4 * 300)
def test_per_sample_coherence_is_the_largest_active_pair_cosine(max_elements):
    g = torch.Generator().manual_seed(3)
    D = E.unit_directions(torch.randn(40, 12, generator=g))
    codes = torch.randn(300, 40, generator=g).relu() * (torch.rand(300, 40, generator=g) < 0.15)
    codes[:30] = codes[30:60]  # repeated active sets; some rows have 0 or 1 active unit
    mu_i = E.per_sample_coherence(codes, D, "cpu", max_elements=max_elements)
    for i in range(len(codes)):  # brute force: every pair of active units
        act = codes[i].nonzero().flatten().tolist()
        want = max((abs(float(D[j] @ D[k])) for j in act for k in act if j < k), default=0.0)
        assert float(mu_i[i]) == pytest.approx(want, abs=1e-6)
    assert (mu_i == 0).any() and (mu_i > 0).any()


def test_duplicated_units_mu_one():
    D = torch.randn(20, 16)
    D2 = torch.cat([D, 3.0 * D[:1]])  # a rescaled copy of unit 0
    coh = E.coherence(D2, block=4)
    assert coh.mu == pytest.approx(1.0, abs=1e-9)
    assert set(coh.pair) == {0, 20}
    assert E.max_unique_k(coh.mu) == 0  # not even 1-sparse codes are unique with a duplicate
    assert E.coherence(torch.cat([D, -D[:1]])).mu == pytest.approx(1.0, abs=1e-9)  # antiparallel too


@pytest.mark.parametrize("c", [0.05, 0.2, 0.6])
def test_planted_coherence_is_measured(c):
    D = _equiangular(40, c)
    coh = E.coherence(D, block=16)
    assert coh.mu == pytest.approx(c, abs=1e-6)
    # every pair has |cos| = c: all quantiles equal c to the histogram's resolution
    q = coh.quantile(torch.tensor([0.01, 0.5, 1.0]))
    assert torch.allclose(q, torch.full_like(q, c), atol=2.0 / E.HIST_BINS)
    # q* (a) with a constant L0 = K: 1 if c < 1/(2K-1), else 0
    for K in (1, 2, 3, 6, 12):
        k = torch.full((50,), K)
        assert E.q_star_a(coh, k) == (1.0 if c < 1 / (2 * K - 1) else 0.0)


def test_planted_pair_in_orthonormal_basis():
    c = 0.37
    D = torch.eye(10)
    D[3] = c * D[0] + math.sqrt(1 - c * c) * D[3]
    coh = E.coherence(D)
    assert coh.mu == pytest.approx(c, abs=1e-6) and set(coh.pair) == {0, 3}
    # one pair in 45 is coherent: q* (a) stops just below 44/45 for any K >= 2 with c >= 1/(2K-1)
    k = torch.full((10,), 2)
    assert E.q_star_a(coh, k) == pytest.approx(44 / 45, abs=2e-4)


def test_blocked_equals_dense_and_sampled_histogram():
    g = torch.Generator().manual_seed(3)
    D = torch.randn(300, 12, generator=g)
    Dn = D / D.norm(dim=1, keepdim=True)
    G = (Dn @ Dn.T).abs()
    iu = torch.triu_indices(300, 300, 1)
    v = G[iu[0], iu[1]]
    for block in (7, 64, 300):
        coh = E.coherence(D, block=block)
        assert coh.mu == pytest.approx(float(v.max()), abs=1e-6)
        assert coh.hist.sum().item() == pytest.approx(len(v))
        assert torch.allclose(coh.quantile(torch.tensor([0.5, 0.9])), torch.quantile(v.double(), torch.tensor([0.5, 0.9], dtype=torch.float64)), atol=1e-4)
    sampled = E.coherence(D, block=64, hist_pairs=-(-len(v) // 8))
    assert sampled.hist_stride == 8 and sampled.mu == pytest.approx(float(v.max()), abs=1e-6)  # max stays exact
    assert torch.allclose(sampled.quantile(torch.tensor([0.5])), torch.quantile(v.double(), 0.5).reshape(1), atol=0.02)


def test_coherence_memory_budget_at_paper_scale():
    N, d = 65_536, 2_304
    B = E.coherence_block_size(N, d)
    assert B >= 1024
    assert E.coherence_memory_bytes(N, d, B) <= 1 << 30
    # the estimate covers what the loop allocates: normalised copy + Gram block + |.| rows + hist
    assert E.coherence_memory_bytes(N, d, B) >= 4 * (N * d + 3 * B * B)
    with pytest.raises(MemoryError, match="raise it"):
        E.coherence_block_size(N, d, max_bytes=100 << 20)


def test_coherence_bad_input():
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        E.coherence(torch.randn(5))
    assert E.coherence(torch.randn(1, 4)).mu == 0.0


# --------------------------------------------------------------------------- q* (b), noise floor
def test_q_star_b_counts_samples_against_the_bound():
    c = 0.25  # 1/(2K-1) = 1/3 at K = 2 (holds), 1/5 at K = 3 (fails)
    D = torch.eye(6)
    D[1] = c * D[0] + math.sqrt(1 - c * c) * D[1]
    codes = torch.zeros(10, 6)
    codes[0:4, [0, 1]] = 1.0        # K = 2, mu_i = c < 1/3: unique
    codes[4:7, [0, 1, 2]] = 1.0     # K = 3, mu_i = c > 1/5: not
    codes[7:9, [2, 3, 4]] = 1.0     # K = 3, mu_i = 0: unique
    codes[9, 5] = 1.0               # K = 1: unique
    qb, mu_i = E.q_star_b(codes, E.unit_directions(D))
    assert qb == pytest.approx(7 / 10)
    assert torch.allclose(mu_i[:7], torch.full((7,), c, dtype=torch.float64), atol=1e-6)
    assert float(mu_i[7:].max()) < 1e-6


def test_noise_floor_and_gap():
    pre = torch.tensor([[2.0, 0.3, -1.0], [0.1, 1.5, 0.9]])
    codes = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.5, 0.9]])
    r = E.noise_floor_gap(pre, codes)
    assert r["noise_floor"] == pytest.approx(0.3) and r["on_support_min"] == pytest.approx(0.9)
    assert r["amplitude_gap"] == pytest.approx(0.6)
    assert r["amplitude_gap_sample_pos_frac"] == 1.0


# --------------------------------------------------------------------------- faithfulness, AIP
def test_identity_units_r2_one(data):
    res = E.evaluate_units("neurons", data)
    assert res["r2"] == pytest.approx(1.0, abs=1e-12) and res["mse"] == 0.0
    assert res["l0_mean"] == 24 and res["mu_raw"] == 0.0 and res["q_star_a"] == 1.0 and res["q_star_b"] == 1.0
    assert res["r2_aip"] is None and res["geometry"] == "raw"
    json.dumps(res)  # JSON-able


def test_r2_known_values(data):
    x = data
    assert E.r2(x, x.mean(0, keepdim=True).expand_as(x)) == pytest.approx(0.0, abs=1e-9)  # predicting the mean
    noise = torch.randn_like(x) * x.std() * 0.1
    expected = 1 - float((noise.double() ** 2).sum()) / float(((x - x.mean(0)).double() ** 2).sum())
    assert E.r2(x, x + noise) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="equal shapes"):
        E.r2(x, x[:, :3])


def test_aip_versions_equal_raw_after_whitening(data):
    metric = AIPMetric.fit(data)
    W = metric.W.float()
    xh = data + 0.3 * torch.randn_like(data)
    assert E.r2(data, xh, metric) == pytest.approx(E.r2(data @ W.T, xh @ W.T), rel=1e-6)
    D = torch.randn(50, 24)
    a, b = E.coherence(D, metric), E.coherence(D @ W.T)
    assert a.geometry == "aip" and b.geometry == "raw"
    assert a.mu == pytest.approx(b.mu, abs=1e-5) and a.pair == b.pair
    assert torch.allclose(a.quantile(torch.tensor([0.5, 0.9])), b.quantile(torch.tensor([0.5, 0.9])), atol=1e-4)
    codes = (torch.randn(100, 50) > 1.0).float()
    assert E.q_star_b(codes, E.unit_directions(D, metric))[0] == pytest.approx(E.q_star_b(codes, E.unit_directions(D @ W.T))[0])
    # neurons: orthonormal in raw space but not in the AIP (the data are correlated)
    res = E.evaluate_units("neurons", data, metric)
    assert res["geometry"] == "aip" and res["r2_aip"] == pytest.approx(1.0)
    assert res["mu_raw"] == 0.0 and res["mu"] > 0.1 and res["q_star_a_raw"] == 1.0 and res["q_star_a"] < 1.0


@pytest.mark.parametrize("arch", ["Standard", "JumpReLU", "TopK"])
def test_saelens_saes_exact_dictionary(arch, data):
    Q = _orthonormal(24, seed=2)
    sae = _pm_sae(arch, Q)
    res = E.evaluate_units(sae, data)
    assert res["r2"] == pytest.approx(1.0, abs=1e-6)
    assert res["architecture"] == arch.lower() and res["n_units"] == 48
    assert res["l0_mean"] == pytest.approx(24, abs=0.5)  # one of q_i, -q_i per coordinate
    assert res["mu"] == pytest.approx(1.0, abs=1e-6)  # q_i and -q_i are antiparallel
    # q_i and -q_i never fire together: every active set is orthonormal -> reading (b) = 1
    assert res["q_star_b"] == 1.0
    # 24 of the 1128 pairs are antiparallel: reading (a) stops just below 1 - 24/1128
    assert res["q_star_a"] == pytest.approx(1 - 24 / 1128, abs=2e-4)
    assert res["dead_frac"] == 0.0 and res["noise_floor"] <= res["on_support_min"] + 1e-6


def test_metric_carried_by_the_sae_is_used(data):
    metric = AIPMetric.fit(data)
    sae = _pm_sae("JumpReLU", _orthonormal(24))
    sae.register_buffer("aip_W", metric.W.float())
    res = E.evaluate_units(sae, data)
    assert res["geometry"] == "aip" and res["r2_aip"] == pytest.approx(1.0, abs=1e-5)
    sae.aip_W.copy_(torch.eye(24))  # an unfitted placeholder is ignored
    assert E.evaluate_units(sae, data)["geometry"] == "raw"


def test_bad_inputs(data):
    with pytest.raises(ValueError, match="d=24"):
        E.evaluate_units(_pm_sae("Standard", _orthonormal(8)), data)
    with pytest.raises(TypeError, match="cannot evaluate units"):
        E.evaluate_units(object(), data)
    with pytest.raises(ValueError, match="NaN"):
        E.evaluate_units("neurons", torch.full((4, 3), float("nan")))
    with pytest.raises(ValueError, match="metric"):
        E.evaluate_units("neurons", data, AIPMetric.fit(torch.randn(100, 5)))


# --------------------------------------------------------------------------- monosemanticity
def test_monosemanticity_exact_and_random():
    n, V = 1200, 4
    g = torch.Generator().manual_seed(0)
    lab = torch.randint(0, V, (n,), generator=g)
    codes = torch.zeros(n, V + 1)
    for v in range(V):  # unit v fires exactly on label v
        codes[lab == v, v] = 1.0 + torch.rand(int((lab == v).sum()), generator=g)
    codes[:, V] = torch.rand(n, generator=g)  # a unit firing at random
    labels = {"a": [f"L{int(i)}" for i in lab]}
    exact = E.monosemanticity(codes[:, :V], labels, top_k=50)
    assert exact["mono_a_purity"] == 1.0 and exact["monosemanticity"] == 1.0
    rnd = E.monosemanticity(codes[:, V:], labels, top_k=600)
    base = exact["mono_a_base_rate"]
    assert base == pytest.approx(max(torch.bincount(lab).tolist()) / n)
    assert abs(rnd["mono_a_purity"] - base) < 0.06
    assert rnd["mono_a_mi_bits"] < 0.02
    # MI when the top set is exactly one label's samples: I = H(1[y = v]) (binary entropy)
    full = E.monosemanticity(codes[:, :1], labels, top_k=n)
    p = float((lab == 0).double().mean())
    assert full["mono_a_mi_bits"] == pytest.approx(-(p * math.log2(p) + (1 - p) * math.log2(1 - p)), rel=1e-6)


def test_monosemanticity_groups_and_unknown_labels_and_judge():
    # 3 subjects x 4 prompts; unit 0 fires most on subject s0, then s1; labels of s2 unknown
    groups = [f"s{i // 4}" for i in range(12)]
    labels = {"country": ["A"] * 4 + ["B"] * 4 + [""] * 4}
    codes = torch.zeros(12, 1)
    codes[:4, 0] = 5.0
    codes[4:8, 0] = 1.0
    codes[8:, 0] = 3.0
    ungrouped = E.monosemanticity(codes, labels, top_k=4)
    assert ungrouped["mono_country_purity"] == 1.0  # four prompts of one subject
    grouped = E.monosemanticity(codes, labels, top_k=2, groups=groups)
    assert grouped["mono_country_purity"] == 0.5  # distinct subjects: A and B (s2 unknown, skipped)
    seen = {}
    judged = E.monosemanticity(codes, labels, top_k=3, judge=lambda j, rows: seen.setdefault(j, rows) and 0.75)
    assert judged["judge_mean"] == 0.75 and len(seen[0]) == 3 and set(seen[0]) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="entries"):
        E.monosemanticity(codes, {"x": ["a"]})


# --------------------------------------------------------------------------- CLI / table / bench
def test_cli_evaluate_writes_results(tmp_path, data):
    import datasets

    from sae_atoms.activations import ActivationSet
    from sae_atoms.cli import main

    n = data.shape[0]
    rows = datasets.Dataset.from_dict({"prompt": [f"p{i}" for i in range(n)], "subject": [f"s{i // 3}" for i in range(n)],
                                       "split": ["train" if i % 5 else "heldout" for i in range(n)],
                                       "country": [f"c{i % 7}" for i in range(n)]})
    ActivationSet({"blocks.0.hook_resid_post": data}, rows, {}).save(tmp_path / "acts")
    sae_dir = tmp_path / "sae"
    _pm_sae("JumpReLU", _orthonormal(24)).save_model(sae_dir)
    assert main(["evaluate", str(sae_dir), "--activations", str(tmp_path / "acts")]) == 0
    res = json.loads((sae_dir / "results.json").read_text())
    assert set(res["splits"]) == {"train", "heldout"}
    for sp in res["splits"].values():
        assert sp["r2"] == pytest.approx(1.0, abs=1e-5) and sp["geometry"] == "aip"
        assert "mono_country_purity" in sp
    assert main(["evaluate", "neurons", "--activations", str(tmp_path / "acts"), "--out", str(tmp_path / "n")]) == 0
    assert json.loads((tmp_path / "n" / "results.json").read_text())["splits"]["train"]["r2"] == 1.0


def test_format_table():
    t = E.format_table({"neurons": {"r2": 1.0, "mu": 0.5}, "atoms": {"r2": 0.99}}, keys=("r2", "mu"))
    lines = t.splitlines()
    assert len(lines) == 3 and "neurons" in lines[1] and lines[2].rstrip().endswith("-")


# --------------------------------------------------------------------------- real model
@pytest.mark.real_model
def test_real_neurons_in_aip_geometry(real_acts):
    tr = real_acts.select(split="train")
    metric = AIPMetric.fit(tr.x())
    res = E.evaluate_units("neurons", tr, metric, top_k=10)
    d = tr.x().shape[1]
    assert res["r2"] == pytest.approx(1.0) and res["r2_aip"] == pytest.approx(1.0)
    assert res["l0_mean"] == pytest.approx(d, rel=0.01)  # neurons are dense
    assert res["mu_raw"] < 1e-6 and res["q_star_a_raw"] == 1.0
    # in the AIP the standard basis is far from orthonormal; with dense codes (K ~ d) the
    # bound 1/(2d-1) is tiny, so q* collapses (the paper: neurons ~0.5%)
    assert res["mu_aip"] > 0.1 and res["q_star_a"] < 0.5 and res["q_star_b"] < 0.5
    for attr in ("country", "continent"):
        assert res[f"mono_{attr}_base_rate"] <= res[f"mono_{attr}_purity"] <= 1.0
    ho = E.evaluate_units("neurons", real_acts.select(split="heldout"), metric, top_k=10)
    assert ho["r2"] == pytest.approx(1.0) and ho["n_samples"] < res["n_samples"]


@pytest.mark.real_model
def test_real_model_evals_exact_sae_recovers_loss(real_model):
    from sae_atoms.data import fact_prompts

    d = real_model.cfg.d_model
    sae = _pm_sae("JumpReLU", _orthonormal(d, seed=5))
    prompts = list(fact_prompts(n_cities=4, seed=0)["prompt"][:3])
    r = E.model_evals(sae, real_model, prompts, hook_name="blocks.6.hook_resid_post", batch_size=3)
    assert r["ce_loss_score"] == pytest.approx(1.0, abs=1e-3)
    assert r["kl_div_with_sae"] < 1e-4 and r["kl_div_with_ablation"] > 0.1
    # a bad SAE (random decoder) recovers much less
    bad = _pm_sae("JumpReLU", _orthonormal(d, seed=5))
    with torch.no_grad():
        bad.W_dec.copy_(torch.randn_like(bad.W_dec) * 0.05)
    rb = E.model_evals(bad, real_model, prompts, hook_name="blocks.6.hook_resid_post", batch_size=3)
    assert rb["ce_loss_score"] < 0.9


def test_bound_ratio_and_the_binding_side_have_known_answers():
    from sae_atoms.evals.evaluate import _binding
    from sae_atoms.evals.geometry import bound_ratio, q_star_b

    c = 0.5  # atoms 0 and 1 at cos 0.5; atoms 2, 3 orthogonal to everything
    D = torch.tensor([[1.0, 0, 0, 0], [c, (1 - c * c) ** 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    codes = torch.tensor([[1.0, 1.0, 0, 0],    # K 2, mu 0.5: ratio 0.5 * 3 = 1.5, outside the bound
                          [0, 0, 1.0, 1.0],    # K 2, mu 0: ratio 0, inside
                          [1.0, 0, 1.0, 1.0],  # K 3, mu 0: inside
                          [0, 0, 0, 1.0]])     # K 1: no pair, left out of the ratio
    q, mu_i = q_star_b(codes, D)
    k = (codes != 0).sum(1)
    assert q == 0.75 and torch.allclose(bound_ratio(mu_i, k), torch.tensor([1.5, 0.0, 0.0], dtype=torch.float64))
    b = _binding(mu_i[:1].expand(3), k[:1].expand(3))  # every sample like the first
    assert b["mu_sample_p50"] == 0.5 and b["bound_ratio_p50"] == 1.5 and b["k_allowed_p50"] == 1.0
    assert math.isnan(_binding(mu_i[3:], k[3:])["bound_ratio_p50"])  # no sample with a pair
    b = _binding(mu_i, k)  # median K 2: samples at K <= 2 pass 2 of 3 (the first fails), the one at K 3 passes
    assert b["q_star_b_k_upto_p50"] == pytest.approx(2 / 3) and b["q_star_b_k_above_p50"] == 1.0
    assert math.isnan(_binding(mu_i[:2], k[:2])["q_star_b_k_above_p50"])  # every K at the median: no upper half
