"""AIPMetric, AIPMoments and the TransformerLens hook: known answers that could fail."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from sae_atoms.aip import AIPConditioningWarning, AIPMetric, AIPMoments, aip_hook, attach


def _gaussian(n: int, d: int, seed: int = 0, mean: float | torch.Tensor = 0.0):
    """Samples with a known covariance C = A A^T (and a known mean)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    scales = torch.logspace(0, 1.5, d, dtype=torch.float64)  # eigenvalues 1 .. 1000 of C
    a = q * scales.sqrt()
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    return z @ a.T + mean, a @ a.T


def test_uncentered_metric_matches_inverse_of_known_second_moment():
    d, n = 6, 400_000
    x, c = _gaussian(n, d)
    m = AIPMetric.fit(x.float())  # float32 input, float64 accumulation
    s_true = torch.linalg.inv(c)
    rel = (m.S - s_true).norm() / s_true.norm()
    assert rel < 0.02, rel  # sampling error ~ sqrt(d / n) * cond-dependent factor
    assert m.kind == "uncentered" and m.d == d and m.n_samples == n and m.shrinkage == 0.0
    # W is the symmetric square root of S and its exact inverse is W_inv
    assert torch.allclose(m.W.T @ m.W, m.S, atol=1e-12 * m.S.abs().max())
    assert torch.allclose(m.W, m.W.T)
    assert torch.allclose(m.W @ m.W_inv, torch.eye(d, dtype=torch.float64), atol=1e-10)
    # whitened data has identity second moment (exactly, in-sample)
    y = m.whiten(x)
    assert torch.allclose(y.T @ y / n, torch.eye(d, dtype=torch.float64), atol=1e-4)
    # C has eigenvalues logspace(0, 1.5): condition number 10^1.5, effective rank exp(H(p))
    assert m.condition_number == pytest.approx(10**1.5, rel=0.03)
    lam = torch.logspace(0, 1.5, d, dtype=torch.float64)
    p = lam / lam.sum()
    assert m.effective_rank == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=0.02)


def test_centered_metric_uses_covariance_and_mean():
    d, n = 5, 200_000
    mu = torch.arange(1, d + 1, dtype=torch.float64) * 3.0
    x, c = _gaussian(n, d, seed=1, mean=mu)
    m = AIPMetric.fit(x, kind="centered")
    assert torch.allclose(m.mean, mu, atol=0.3)
    rel = (m.S - torch.linalg.inv(c)).norm() / torch.linalg.inv(c).norm()
    assert rel < 0.02, rel
    y = m.whiten(x)
    assert y.mean(0).abs().max() < 1e-8
    assert torch.allclose(y.T @ y / n, torch.eye(d, dtype=torch.float64), atol=1e-6)
    # uncentred metric on the same data is a different one: the mean is a dominant direction
    mu_ = AIPMetric.fit(x)
    assert (mu_.S - m.S).norm() / m.S.norm() > 0.1


def test_unwhiten_is_exact_inverse_and_dtype_device_kept():
    x, _ = _gaussian(2000, 16, seed=2, mean=0.5)
    for kind in ("uncentered", "centered"):
        m = AIPMetric.fit(x, kind=kind)
        assert torch.allclose(m.unwhiten(m.whiten(x)), x, atol=1e-10)
        x32 = x.float()
        y32 = m.whiten(x32)
        assert y32.dtype == torch.float32 and y32.shape == x32.shape
        assert torch.allclose(m.unwhiten(y32), x32, atol=1e-4 * x32.abs().max())
        # batched shapes [b, t, d] work
        assert m.whiten(x32.reshape(10, 200, 16)).shape == (10, 200, 16)


def test_merged_partial_sums_equal_one_fit_and_streaming():
    x, _ = _gaussian(3000, 12, seed=3, mean=1.0)
    one = AIPMetric.fit(x, kind="centered")
    parts = [AIPMoments().update(x[:1000]), AIPMoments().update(x[1000:1700]), AIPMoments().update(x[1700:])]
    merged = parts[0] + parts[1]
    merged = merged.merge(parts[2])
    assert merged.n == 3000
    m2 = AIPMetric.from_moments(merged, kind="centered")
    assert torch.allclose(m2.W, one.W, atol=1e-10) and torch.allclose(m2.mean, one.mean, atol=1e-12)
    m3 = AIPMetric.fit(iter(x.split(257)), kind="centered", progress=False)  # an iterator of batches
    assert torch.allclose(m3.S, one.S, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="d=12 and d=5"):
        parts[0] + AIPMoments().update(torch.randn(4, 5))


def test_aip_angles_equal_plain_cosines_after_whitening():
    x, _ = _gaussian(5000, 10, seed=4, mean=2.0)
    a, b = x[:30], x[30:50]
    for kind in ("uncentered", "centered"):
        m = AIPMetric.fit(x, kind=kind)
        ang = m.angles(a, b)
        assert ang.shape == (30, 20)
        wa, wb = m.whiten(a), m.whiten(b)
        cos = torch.nn.functional.normalize(wa, dim=-1) @ torch.nn.functional.normalize(wb, dim=-1).T
        assert torch.allclose(ang, torch.rad2deg(torch.arccos(cos.clamp(-1, 1))), atol=1e-6)
        # the bilinear form agrees with whitening: <u, v>_S = (W u) . (W v)
        u, v = x[:7], x[7:14]
        assert torch.allclose(m.inner(u, v), (u @ m.W.T * (v @ m.W.T)).sum(-1), rtol=1e-9)
        assert torch.allclose(m.norm(u), (u @ m.W.T).norm(dim=-1), rtol=1e-9)
        assert torch.allclose(m.cos(u, v), torch.nn.functional.cosine_similarity(u @ m.W.T, v @ m.W.T), atol=1e-10)
    self_ang = m.angles(a)
    assert self_ang.shape == (30, 30) and self_ang.diagonal().abs().max() < 1e-5
    assert torch.allclose(self_ang, self_ang.T)


def test_whitened_angles_centre_at_90_while_euclid_does_not():
    # a dominant shared direction: Euclidean angles are far below 90, AIP angles centre at 90.
    # Uncentred whitening leaves a mean W mu with |W mu|^2 = |mu|^2 / (1 + |mu|^2) < 1 while
    # E|y|^2 = d, so the expected cosine is ~ |W mu|^2 / d: 90 - 0.45 degrees at d = 128.
    g = torch.Generator().manual_seed(5)
    d, n = 128, 20_000
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 4.0 * torch.ones(d, dtype=torch.float64)
    m = AIPMetric.fit(x)
    a = x[:300]
    iu = torch.triu_indices(300, 300, 1)
    eu = torch.rad2deg(torch.arccos(torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(a, dim=-1).T)
                       .clamp(-1, 1))[iu[0], iu[1]]
    ai = m.angles(a)[iu[0], iu[1]]
    assert eu.mean() < 30
    wmu2 = float((m.W @ x.mean(0)).norm() ** 2)
    assert abs(float(ai.mean()) - (90.0 - math.degrees(wmu2 / d))) < 0.3
    assert abs(float(ai.mean()) - 90.0) < 1.0
    assert abs(float(AIPMetric.fit(x, kind="centered").angles(a)[iu[0], iu[1]].mean()) - 90.0) < 0.3


def test_singular_moment_gives_finite_results_and_one_warning():
    x, _ = _gaussian(500, 8, seed=6)
    x = torch.cat([x, x[:, :2], torch.zeros(500, 1, dtype=torch.float64)], dim=1)  # duplicated + dead dims
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        m = AIPMetric.fit(x)
    cw = [w for w in rec if issubclass(w.category, AIPConditioningWarning)]
    assert len(cw) == 1
    msg = str(cw[0].message)
    assert "singular" in msg and "condition number" in msg and "ridge" in msg
    assert math.isinf(m.condition_number)
    assert m.shrinkage > 0 and m.condition_number_used == pytest.approx(1e6, rel=1e-6)
    for t in (m.S, m.W, m.W_inv, m.whiten(x), m.angles(x[:20]), m.norm(x[:5])):
        assert torch.isfinite(t).all()
    assert torch.allclose(m.unwhiten(m.whiten(x)), x, atol=1e-8)
    # fewer samples than dimensions also warns (and says so)
    with pytest.warns(AIPConditioningWarning, match="fewer samples than dimensions"):
        AIPMetric.fit(torch.randn(5, 20))
    # the plain inverse on a singular moment is a clear error, not NaN
    with pytest.raises(ValueError, match="singular"):
        AIPMetric.fit(x, shrinkage=0.0)
    # explicit shrinkage: ridge = s * mean eigenvalue
    m5 = AIPMetric.fit(x, shrinkage=0.1)
    mom, _ = AIPMoments().update(x).moment()
    assert m5.ridge == pytest.approx(0.1 * float(mom.trace()) / mom.shape[0])


def test_well_conditioned_fit_does_not_warn():
    x, _ = _gaussian(5000, 8, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AIPConditioningWarning)
        m = AIPMetric.fit(x)
    assert m.shrinkage == 0.0 and m.ridge == 0.0


def test_bad_input_errors_are_clear(tmp_path):
    x, _ = _gaussian(200, 4, seed=8)
    m = AIPMetric.fit(x)
    with pytest.raises(ValueError, match="d=4"):
        m.whiten(torch.randn(3, 5))
    with pytest.raises(ValueError, match="kind"):
        AIPMetric.fit(x, kind="whitened")
    with pytest.raises(ValueError, match="NaN"):
        AIPMetric.fit(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="zero"):
        AIPMetric.fit(torch.zeros(10, 3))
    with pytest.raises(ValueError, match="no activations"):
        AIPMetric.from_moments(AIPMoments())
    with pytest.raises(FileNotFoundError, match="not a saved AIP metric"):
        AIPMetric.load(tmp_path / "nothing")


def test_save_load_roundtrip_and_mismatch_errors(tmp_path):
    x, _ = _gaussian(1000, 6, seed=9, mean=1.0)
    m = AIPMetric.fit(x, kind="centered")
    m.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["aip_metric.json", "aip_metric.safetensors"]
    m2 = AIPMetric.load(tmp_path / "m", d=6, kind="centered")
    for k in ("W", "W_inv", "S", "mean"):
        assert torch.equal(getattr(m2, k), getattr(m, k))
    assert (m2.kind, m2.d, m2.n_samples, m2.shrinkage) == ("centered", 6, 1000, 0.0)
    assert torch.equal(m2.whiten(x), m.whiten(x))
    with pytest.raises(ValueError, match="d=6 but d=7"):
        AIPMetric.load(tmp_path / "m", d=7)
    with pytest.raises(ValueError, match="'centered' but 'uncentered'"):
        AIPMetric.load(tmp_path / "m", kind="uncentered")


# --------------------------------------------------------------------------- the hook
HOOK = "blocks.1.hook_resid_post"


def _tiny_metric(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    return AIPMetric.fit(cache[HOOK], kind="centered")


def test_hook_caches_whitened_activation_and_leaves_logits(tiny_model):
    tokens = torch.randint(0, 50, (8, 16), generator=torch.Generator().manual_seed(0))
    metric = _tiny_metric(tiny_model, tokens)
    clean = tiny_model(tokens)
    h = attach(tiny_model, HOOK, metric)
    assert f"{HOOK}.hook_aip" in tiny_model.hook_dict
    logits, cache = tiny_model.run_with_cache(tokens, names_filter=[HOOK, f"{HOOK}.hook_aip"])
    assert torch.equal(logits, clean)
    assert torch.equal(cache[f"{HOOK}.hook_aip"], metric.whiten(cache[HOOK]))
    assert torch.equal(tiny_model(tokens), clean)  # no listener: nothing changes
    with pytest.raises(ValueError, match="already has an AIP hook"):
        attach(tiny_model, HOOK, metric)
    h.remove()
    h.remove()  # idempotent
    assert f"{HOOK}.hook_aip" not in tiny_model.hook_dict
    assert not tiny_model.mod_dict[HOOK].fwd_hooks
    # context-manager form
    with aip_hook(tiny_model, HOOK, metric):
        _, cache = tiny_model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_aip"))
        assert list(cache.keys()) == [f"{HOOK}.hook_aip"]
    assert f"{HOOK}.hook_aip" not in tiny_model.hook_dict


def test_hook_errors(tiny_model):
    metric = AIPMetric.fit(torch.randn(500, 16))
    with pytest.raises(KeyError, match="no hook"):
        attach(tiny_model, "blocks.9.hook_resid_post", metric)
    with aip_hook(tiny_model, HOOK, metric):
        with pytest.raises(ValueError, match="d=16"):
            tiny_model.run_with_cache(torch.zeros(1, 4, dtype=torch.long), names_filter=[f"{HOOK}.hook_aip"])


def test_hook_works_with_hooked_sae_transformer():
    from sae_lens import HookedSAETransformer
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=32,
                                  d_vocab=50, act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedSAETransformer(cfg).eval()
    tokens = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(1))
    metric = _tiny_metric(model, tokens)
    sae_hook = "blocks.0.hook_resid_post"
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64, metadata=SAEMetadata(hook_name=sae_hook)))
    with aip_hook(model, HOOK, metric):
        logits, cache = model.run_with_cache_with_saes(tokens, saes=[sae], names_filter=[HOOK, f"{HOOK}.hook_aip"])
        assert torch.equal(cache[f"{HOOK}.hook_aip"], metric.whiten(cache[HOOK]))
        ref, _ = model.run_with_cache_with_saes(tokens, saes=[sae], names_filter=[HOOK])
        assert torch.equal(logits, ref)
    assert f"{HOOK}.hook_aip" not in model.hook_dict


def test_hook_is_found_and_removed_without_lens_handle_user_hook(tiny_model, monkeypatch):
    """TransformerLens before 3.3 has no ``LensHandle.user_hook``: attach and remove must not need it,
    and must leave another permanent hook on the same point in place."""
    from dataclasses import dataclass

    from transformer_lens import hook_points

    @dataclass
    class OldLensHandle:  # the fields of TransformerLens 3.0
        hook: object
        is_permanent: bool = False
        context_level: int | None = None

    monkeypatch.setattr(hook_points, "LensHandle",
                        lambda hook, is_permanent=False, context_level=None, **_: OldLensHandle(hook, is_permanent, context_level))
    tokens = torch.randint(0, 50, (4, 10), generator=torch.Generator().manual_seed(2))
    metric = _tiny_metric(tiny_model, tokens)
    hp = tiny_model.mod_dict[HOOK]
    hp.add_hook(lambda x, hook: None, dir="fwd", is_permanent=True)  # someone else's permanent hook
    with aip_hook(tiny_model, HOOK, metric) as h:
        assert len(hp.fwd_hooks) == 2 and not any(hasattr(x, "user_hook") for x in hp.fwd_hooks)
        _, cache = tiny_model.run_with_cache(tokens, names_filter=[HOOK, h.name])
        assert torch.equal(cache[h.name], metric.whiten(cache[HOOK]))
    assert len(hp.fwd_hooks) == 1 and len(hp._forward_hooks) == 1  # ours gone, the other kept
    assert h.name not in tiny_model.hook_dict
    hp.remove_hooks(including_permanent=True)


@pytest.fixture(scope="module")
def small_real_acts(real_model, fact_data):
    """~200 real subject-token activations at blocks.12 (a fast subset of the fact prompts)."""
    from sae_atoms.activations import extract
    from tests.conftest import REAL_HOOK

    rows = fact_data.select(range(0, len(fact_data), max(1, len(fact_data) // 200)))
    return extract(real_model, rows, REAL_HOOK, position="subject_last", batch_size=64, progress=False).x(REAL_HOOK)


@pytest.mark.real_model
def test_hook_on_real_model(real_model, small_real_acts):
    from tests.conftest import REAL_HOOK

    x = small_real_acts
    with pytest.warns(AIPConditioningWarning, match="fewer samples than dimensions"):  # ~200 rows in d=576
        metric = AIPMetric.fit(x)
    assert metric.d == real_model.cfg.d_model
    assert all(torch.isfinite(t).all() for t in (metric.W, metric.S, metric.W_inv))
    tokens = real_model.to_tokens(["The Eiffel Tower is located in the city of", "Tokyo is a city in the country of"])
    clean = real_model(tokens)
    with aip_hook(real_model, REAL_HOOK, metric) as h:
        logits, cache = real_model.run_with_cache(tokens, names_filter=[REAL_HOOK, h.name])
    assert torch.equal(logits, clean)
    got = cache[f"{REAL_HOOK}.hook_aip"]
    assert got.shape == cache[REAL_HOOK].shape
    assert torch.equal(got, metric.whiten(cache[REAL_HOOK]))
    assert f"{REAL_HOOK}.hook_aip" not in real_model.hook_dict
    # known answer in-sample: the whitened second moment is V diag(lam / (lam + r)) V^T (I without ridge)
    y = metric.whiten(x.double())
    lam = metric.eigvals.clamp_min(0)
    expect = (metric.eigvecs * (lam / (lam + metric.ridge))) @ metric.eigvecs.T
    assert torch.allclose(y.T @ y / len(y), expect, atol=1e-6)
    assert torch.allclose(metric.unwhiten(y), x.double(), atol=1e-6 * float(x.abs().max()))


def test_block_upper_triangle_accumulation_matches_full_second_moment():
    # d >= 128 takes the two-block upper-triangle path; chunks of uneven size and a merge
    x, _ = _gaussian(5000, 160, seed=10, mean=0.7)
    mom = AIPMoments().update(x[:1234]) + AIPMoments().update(x[1234:])
    m, mean = mom.moment("uncentered")
    assert torch.allclose(m, x.T @ x / len(x), rtol=1e-12, atol=1e-12)
    c, _ = mom.moment("centered")
    assert torch.allclose(c, torch.cov(x.T, correction=0), rtol=1e-9, atol=1e-9)
    assert torch.allclose(mean, x.mean(0), atol=1e-12)


# ---------------------------------------------------------------- robust estimation (issue 11)
def _shifted(n: int = 4000, d: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ a + 5.0  # shifted, correlated


def test_outlier_rows_are_excluded_and_counted():
    x = _shifted()
    bad = x.clone()
    bad[7] *= 500.0  # one row far above 10 x the median norm
    plain = AIPMetric.fit(bad, kind="centered", shrinkage=0.0)
    robust = AIPMetric.fit(bad, kind="centered", shrinkage=0.0, outlier_factor=10.0)
    clean = AIPMetric.fit(torch.cat([x[:7], x[8:]]), kind="centered", shrinkage=0.0)
    assert robust.n_excluded == 1 and plain.n_excluded == 0
    assert torch.allclose(robust.S, clean.S, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(plain.S, clean.S, rtol=1e-2)
    with pytest.raises(ValueError, match="outlier_factor"):
        AIPMetric.fit(x, outlier_factor=0.5)


def test_robust_preset_and_provenance_round_trip(tmp_path):
    from sae_atoms.aip import ROBUST

    x = _shifted()
    m = AIPMetric.robust(x)
    assert (m.kind, m.shrinkage, m.outlier_factor) == (ROBUST["kind"], ROBUST["shrinkage"], ROBUST["outlier_factor"])
    p = m.provenance()
    assert p["n_excluded"] == 0 and p["alpha"] == 1.0 and p["condition_number"] > 1
    back = AIPMetric.load(m.save(tmp_path / "m"))
    assert back.provenance() == p
    assert torch.allclose(back.W, m.W)


def test_alpha_interpolates_between_euclid_and_the_aip():
    x = _shifted()
    full = AIPMetric.fit(x, kind="centered", shrinkage=0.0)
    half = AIPMetric.fit(x, kind="centered", shrinkage=0.0, alpha=0.5)
    zero = AIPMetric.fit(x, kind="centered", shrinkage=0.0, alpha=0.0)
    d = x.shape[1]
    # alpha = 0: a multiple of the identity (Euclid up to scale)
    c = zero.W[0, 0]
    assert torch.allclose(zero.W, c * torch.eye(d, dtype=torch.float64), atol=1e-10)
    # alpha = 1/2: W_half^2 is proportional to W (S^(1/2) = W up to scale)
    w2 = half.W @ half.W
    ratio = (w2 / full.W)[full.W.abs() > 1e-6 * full.W.abs().max()]
    assert float(ratio.std() / ratio.mean().abs()) < 1e-8
    # every alpha keeps E||W (m - mean)||^2 = d on the fitted data
    for m in (full, half, zero):
        y = m.whiten(x)
        assert abs(float(y.pow(2).sum(1).mean()) / d - 1.0) < 1e-6
    assert half.condition_number_used == pytest.approx(full.condition_number_used ** 0.5, rel=1e-9)
    with pytest.raises(ValueError, match="alpha"):
        AIPMetric.fit(x, alpha=1.5)
