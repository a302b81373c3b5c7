"""The token benchmark (``sae_atoms.experiments.token_frontier``): goal check, config checks, the
first-step threshold calibration, and one small run on the real model."""

from __future__ import annotations

import json

import pytest
import torch

from sae_atoms.corpus import hook_activations
from sae_atoms.experiments import token_frontier as TF
from sae_atoms.experiments import token_reading as TR
from sae_atoms.units import ATOMS_ALPHA_TOKENS


def _row(unit: str, t: float, l0: float, ce: float, q: float) -> dict:
    return {"unit": unit, "target_l0": t, "l0": l0, "ce_loss_score": ce, "q_star_b": q}


def test_goal_check_reads_the_ce_margin_and_the_highest_q_star():
    rows = [_row("atoms", 16, 16.5, 0.900, 0.30), _row("features_topk", 16, 16.0, 0.904, 0.20),
            _row("atoms", 32, 40.0, 0.890, 0.10), _row("features_topk", 32, 32.0, 0.900, 0.20),
            _row("atoms", 64, 64.0, 0.950, 0.00), _row("features_topk", 64, 64.0, 0.950, 0.00)]
    g16, g32, g64 = TR.goal_check(rows)
    assert g64["ce_ok"] and not g64["q_ok"]  # a tie at zero: no unit is stable
    assert (g16["ce_ok"], g16["q_ok"], g16["matched"]) == (True, True, True)  # 0.900 >= 0.904 - 0.005
    assert (g32["ce_ok"], g32["q_ok"], g32["matched"]) == (False, False, False)  # 40 is 25% above 32
    assert g32["best_ce"] == ("features_topk", 0.900)
    text = TR.reading(rows)[0]
    assert "CE part met at 2/3" in text and "q* part at 1/3" in text and "L0 not matched" in text
    assert g16["ce_gap_se"] is None and "paired SE" not in text
    rows[1] |= {"ce_minus_atoms": 0.004, "ce_minus_atoms_se": 0.0021}
    assert TR.goal_check(rows)[0]["ce_gap_se"] == 0.0021
    assert "(features_topk; atoms minus it -0.0040 ± 0.0021 paired SE), q* (b) 0.300 vs 0.200" in TR.reading(rows)[0]


def test_atoms_stable_is_read_for_the_goal_like_atoms_and_is_no_rival_of_atoms():
    rows = [_row("atoms", 16, 16.0, 0.900, 0.10) | {"ce_minus_atoms": None},
            _row("atoms_stable", 16, 16.0, 0.930, 0.40) | {"ce_minus_atoms": 0.030, "ce_minus_atoms_se": 0.002},
            _row("features_topk", 16, 16.0, 0.920, 0.00) | {"ce_minus_atoms": 0.020, "ce_minus_atoms_se": 0.003}]
    (a,), (s,) = TR.goal_check(rows), TR.goal_check(rows, atoms_unit="atoms_stable")
    assert a["best_ce"] == s["best_ce"] == ("features_topk", 0.920) and a["best_q"] == ("features_topk", 0.00)
    assert (a["ce_ok"], a["q_ok"], a["ce_gap_se"]) == (False, True, 0.003)  # 0.900 < 0.920 - 0.005
    assert (s["ce_ok"], s["q_ok"], s["ce_gap_se"]) == (True, True, None)  # paired SEs are with atoms only
    text = TR.reading(rows)
    assert len(text) == 2 and "CE part met at 0/1" in text[0] and "atoms with the stability objective (atoms_stable)" in text[1]
    assert "atoms_stable minus it +0.0100)" in text[1]


def test_orthonormal_atoms_are_read_for_the_goal_like_atoms_and_are_no_rival():
    rows = [_row("atoms", 128, 128.0, 0.980, 0.00), _row("atoms_onb", 128, 128.0, 0.990, 1.00),
            _row("features_batchtopk", 128, 125.0, 0.986, 0.00)]
    (a,), (o,) = TR.goal_check(rows), TR.goal_check(rows, atoms_unit="atoms_onb")
    assert a["best_ce"] == o["best_ce"] == ("features_batchtopk", 0.986)  # atoms_onb's 0.990 is no rival's
    assert (a["ce_ok"], a["q_ok"], o["ce_ok"], o["q_ok"]) == (False, False, True, True)
    text = TR.reading(rows)
    assert len(text) == 2 and "orthonormal atoms by ICA (atoms_onb)" in text[1] and "q* part at 1/1" in text[1]


def test_orthonormal_atoms_are_built_not_trained(tiny_model, tmp_path):
    c = TF.TokenFrontierConfig(hook="blocks.1.hook_resid_post", units=("atoms", "atoms_onb"), targets=(4, 8), tokens=4096,
                               batch_tokens=256, context_size=16)
    assert TF.trained_units(c) == ("atoms",) and TF.row_units(c) == ("atoms", "atoms_onb")
    assert set(TF.runner_config(c, tiny_model, tmp_path, "cpu").saes) == {"atoms_l0_4", "atoms_l0_8"}
    with pytest.raises(ValueError, match="onb_refine=-1 must be >= 0"):
        TF.check_config(TF.TokenFrontierConfig(units=("atoms_onb",), onb_refine=-1))
    with pytest.raises(ValueError, match=r"onb_contrast='tanh': choose from \['logcosh', 'skew'\]"):
        TF.check_config(TF.TokenFrontierConfig(units=("atoms_onb",), onb_contrast="tanh"))


def test_build_onb_gives_one_basis_at_every_target_and_its_twins(tiny_model):
    """One ICA basis serves every target (K only sets the encoder), orthonormal in the reference AIP,
    so every active set meets the bound, whichever atoms of largest raw contribution a token keeps;
    the seed twin is another basis, the wide twin two; refining fits each target's basis to its own
    K-term code, still orthonormal."""
    from sae_atoms.aip import AIPMetric
    from sae_atoms.evals import evaluate_units
    from sae_atoms.experiments.token_onb import build_onb

    g = torch.Generator().manual_seed(0)
    rows = torch.randint(1, 50, (96, 16), generator=g).tolist()
    c = TF.TokenFrontierConfig(hook="blocks.1.hook_resid_post", units=("atoms_onb",), stability=True, onb_refine=0)
    x = hook_activations(tiny_model, rows, c.hook)
    ref = AIPMetric.fit(x)
    saes = build_onb(x, c, ref, {2: "o2", 6: "o6"})
    assert set(saes) == {f"o{t}{s}" for t in (2, 6) for s in ("", "_init2", "_wide")}
    assert (saes["o2"].cfg.k, saes["o6"].cfg.k, saes["o6_wide"].cfg.k) == (2, 6, 6)
    assert all(sae.cfg.rescale_acts_by_decoder_norm for sae in saes.values())  # raw_selecting: raw contributions kept
    assert torch.equal(saes["o2"].W_dec, saes["o6"].W_dec) and not torch.allclose(saes["o2"].W_dec, saes["o2_init2"].W_dec)
    assert saes["o2"].W_dec.shape[0] == 2 * 32 and saes["o6_wide"].W_dec.shape[0] == 4 * 32
    z = saes["o6"].encode(x)
    assert bool(((z > 0).sum(1) == 6).all())
    q = ref.whiten(saes["o6"].W_dec[:32] + ref.mean.float()).double()  # the basis, whitened
    assert torch.allclose(q @ q.T, torch.eye(32, dtype=torch.float64), atol=1e-3)  # orthonormal where q* is read
    assert evaluate_units(saes["o6"], x, ref)["q_star_b"] == 1.0
    plain = TF.TokenFrontierConfig(**{**TF.asdict(c), "stability": False, "onb_refine": 3})
    refined = build_onb(x, plain, ref, {2: "o2", 6: "o6"})
    assert not torch.allclose(refined["o2"].W_dec, refined["o6"].W_dec) and refined["o6"].cfg.k == 6
    assert refined["o6"].cfg.rescale_acts_by_decoder_norm
    assert evaluate_units(refined["o6"], x, ref)["q_star_b"] == 1.0
    skew = build_onb(x, TF.replace(c, onb_contrast="skew"), ref, {6: "o6"})  # every basis by its contrast
    assert all(not torch.allclose(skew[n].W_dec, saes[n].W_dec) for n in ("o6", "o6_init2", "o6_wide"))
    assert evaluate_units(skew["o6"], x, ref)["q_star_b"] == 1.0


def test_orthonormal_atoms_on_more_tokens_than_the_trained_units_warn(tiny_model):
    """atoms_onb learns on the reference tokens: more of them than the runner trains on is a comparison
    on unequal data, which the user is told; alone, or on as many tokens, it is not."""
    import warnings

    from sae_atoms.aip import AIPMetric
    from sae_atoms.experiments.token_onb import build_onb

    x = hook_activations(tiny_model, torch.randint(1, 50, (48, 16), generator=torch.Generator().manual_seed(0)).tolist(),
                         "blocks.1.hook_resid_post")
    ref = AIPMetric.fit(x)
    c = TF.TokenFrontierConfig(hook="blocks.1.hook_resid_post", units=("atoms", "atoms_onb"), tokens=4096, ref_tokens=8192,
                               onb_refine=0)
    with pytest.warns(UserWarning, match="ref_tokens=8192 tokens, more than the tokens=4096"):
        build_onb(x, c, ref, {2: "o2"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fair in (TF.replace(c, ref_tokens=4096), TF.replace(c, units=("atoms_onb",))):
            build_onb(x, fair, ref, {2: "o2"})


def test_atoms_stable_trains_atoms_recipe_with_the_objective_at_the_token_weight():
    from sae_atoms.units import STABILITY_TOKENS

    c = TF.TokenFrontierConfig(norm_batches=3)
    cfg = TF.trained_config(c, "atoms_stable", 8, 16, 4.0)
    assert (cfg.architecture(), cfg.topk_training, cfg.topk_mode, cfg.n_batches_for_metric) == ("tsae_aip", True, "batch", 3)
    assert (cfg.stability_coefficient, cfg.stability_design, cfg.stability_geometry, cfg.stability_margin) == (
        STABILITY_TOKENS["stability_coefficient"], "coactive_own_k", "aip", STABILITY_TOKENS["stability_margin"])
    assert (cfg.stability_rows, cfg.stability_every) == (32, 1)  # none of atoms_stable's subject-token fields leak
    assert TF.trained_config(c, "atoms", 8, 16, 4.0).stability_coefficient == 0.0
    with pytest.raises(ValueError, match=r"would take the names of unit kinds"):
        TF.check_config(TF.TokenFrontierConfig(atoms_variants=(("stable", (("aip_alpha", 0.5),)),)))


@pytest.mark.parametrize("field, value, match", [("units", ("atoms", "neurons"), "unknown token-frontier units"),
                                                 ("targets", (16, 0), "positive"), ("eval_tokens", 0, "eval_tokens"),
                                                 ("batch_tokens", 10**9, "exceeds tokens"),
                                                 ("atoms_training", "l1", "atoms_training='l1'"),
                                                 ("atoms_alpha", 1.5, r"atoms_alpha=1.5 must be in \[0, 1\]")])
def test_check_config_names_what_is_wrong(field, value, match):
    from dataclasses import replace

    with pytest.raises(ValueError, match=match):
        TF.check_config(replace(TF.TokenFrontierConfig(), **{field: value}))


def test_atoms_training_sets_the_recipe_of_atoms_their_variants_and_tsae_only():
    from dataclasses import replace

    c = TF.TokenFrontierConfig(atoms_variants=(("raw", (("aip_loss_space", "raw"),)),))
    recipe = {u: (getattr(cfg, "topk_training", None), getattr(cfg, "topk_mode", None))
              for u in ("atoms", "atoms_raw", "tsae", "features_jumprelu", "features_topk")
              for cfg in [TF.trained_config(c, u, 8, 16, 4.0)]}
    assert recipe == {"atoms": (True, "batch"), "atoms_raw": (True, "batch"), "tsae": (True, "batch"),
                      "features_jumprelu": (None, None), "features_topk": (None, None)}
    assert all(TF.trained_config(replace(c, atoms_training="topk"), u, 8, 16, 4.0).topk_mode == "sample"
               for u in ("atoms", "atoms_raw", "tsae"))
    c = replace(c, atoms_training="threshold")
    assert not any(TF.trained_config(c, u, 8, 16, 4.0).topk_training for u in ("atoms", "atoms_raw", "tsae"))
    pinned = replace(c, atoms_training="topk", atoms_variants=(("thr", (("topk_training", False),)),))
    assert TF.trained_config(pinned, "atoms_thr", 8, 16, 4.0).topk_training is False  # a variant's own field wins


def test_atoms_alpha_sets_the_whitening_of_atoms_and_their_variants_unless_a_variant_names_its_own():
    import argparse

    c = TF.TokenFrontierConfig(atoms_alpha=0.2, atoms_variants=(("full", (("aip_alpha", 1.0),)), ("raw", (("aip_loss_space", "raw"),))))
    alpha = {u: TF.trained_config(c, u, 8, 16, 4.0).aip_alpha for u in ("atoms", "atoms_raw", "atoms_full")}
    assert alpha == {"atoms": 0.2, "atoms_raw": 0.2, "atoms_full": 1.0}
    assert TF.trained_config(TF.TokenFrontierConfig(), "atoms", 8, 16, 4.0).aip_alpha == TF.TokenFrontierConfig.atoms_alpha
    p = argparse.ArgumentParser()
    TF.configure_parser(p)
    assert p.parse_args(["--atoms-alpha", "0.6", "--out", "x"]).atoms_alpha == 0.6


def test_latest_checkpoint_is_the_one_with_most_samples(tmp_path):
    assert TF.latest_checkpoint(tmp_path) is None
    for n in ("2048", "10240", "final_x"):
        (tmp_path / "checkpoints" / "abc" / n).mkdir(parents=True)
    assert TF.latest_checkpoint(tmp_path).endswith("abc/10240")


def test_calibrate_at_first_step_sets_l0_to_the_target_on_that_steps_input():
    """Thresholds calibrated on the first step's (normalised) input fire the target number of units
    on it; the SAE's own forward pass runs from the second step on."""
    from sae_lens.registry import get_sae_training_class
    from sae_lens.saes.sae import TrainStepInput

    from sae_atoms.training import calibrate_at_first_step
    from sae_atoms.units import unit_config

    torch.manual_seed(0)
    cfg = unit_config("features_jumprelu", 16, 64, 8.0)
    sae = get_sae_training_class("jumprelu")[0](cfg)
    x = 5.0 * torch.randn(512, 16)
    calibrate_at_first_step(sae, 8.0)
    step = TrainStepInput(sae_in=x, coefficients={"l0": 1.0, "pre_act": 0.0}, dead_neuron_mask=None,
                          n_training_steps=0, is_logging_step=False)
    before = sae.threshold.detach().clone()
    out = sae.training_forward_pass(step)
    assert not torch.equal(before, sae.threshold.detach())
    assert float((out.feature_acts != 0).sum(-1).float().mean()) == pytest.approx(8.0, rel=0.05)
    assert "training_forward_pass" not in vars(sae)  # the class's method again
    thr = sae.threshold.detach().clone()
    sae.training_forward_pass(step)
    assert torch.equal(thr, sae.threshold.detach())


def test_runner_config_trains_every_unit_at_every_target_from_one_pass(tiny_model, tmp_path):
    c = TF.TokenFrontierConfig(hook="blocks.1.hook_resid_post", units=("atoms", "features_jumprelu_whitened", "features_matryoshka"),
                               targets=(4, 8), tokens=4096, batch_tokens=256, context_size=16, norm_batches=3)
    cfg = TF.runner_config(c, tiny_model, tmp_path, "cpu")
    assert set(cfg.saes) == {TF.sae_name(u, t) for u in c.units for t in c.targets}
    assert cfg.n_batches_for_norm_estimate == 3 and cfg.saes["atoms_l0_4"].n_batches_for_metric == 3
    assert cfg.saes["features_jumprelu_whitened_l0_8"].normalize_activations == "covariance_whitening"
    assert cfg.saes["features_matryoshka_l0_8"].matryoshka_widths == [8, 32, 128]
    assert cfg.saes["atoms_l0_8"].d_sae == 4 * 32 and cfg.training_tokens == 4096
    twins = TF.runner_config(TF.TokenFrontierConfig(**{**TF.asdict(c), "stability": True}), tiny_model, tmp_path, "cpu").saes
    assert set(twins) == {TF.sae_name(u, t) + s for u in c.units for t in c.targets for s in ("", "_init2", "_wide")}
    assert twins["atoms_l0_4_init2"].d_sae == 4 * 32 and twins["atoms_l0_4_wide"].d_sae == 8 * 32


def test_the_runners_buffer_holds_two_batches_of_a_large_batch(tiny_model, tmp_path):
    from sae_atoms.runners import check_runner_buffer

    small = TF.runner_config(TF.TokenFrontierConfig(tokens=8192, batch_tokens=512), tiny_model, tmp_path, "cpu")
    assert small.n_batches_in_buffer == 8  # the CPU default's runner is unchanged
    big = TF.runner_config(TF.TokenFrontierConfig(tokens=1 << 20, batch_tokens=4096), tiny_model, tmp_path, "cpu")
    assert big.n_batches_in_buffer * big.context_size == 2 * 4096
    check_runner_buffer(big)  # a GPU's batch size needs no other flag


def test_atoms_variants_train_beside_atoms_and_are_not_their_rivals(tiny_model, tmp_path):
    """``--atoms-variant NAME=FIELD:VALUE,...`` adds ``atoms_NAME`` SAEs (atoms' config with those
    fields) to the same runner pass; the goal check compares atoms with the other unit kinds only."""
    import argparse

    from sae_atoms.argtypes import named_fields

    variants = (named_fields("alpha0.6=aip_alpha:0.6"), named_fields("raw=aip_loss_space:raw,n_batches_for_metric:5"))
    assert variants == (("alpha0.6", (("aip_alpha", 0.6),)), ("raw", (("aip_loss_space", "raw"), ("n_batches_for_metric", 5))))
    assert named_fields("k=topk_training:True,aip_metric_path:None") == ("k", (("topk_training", True), ("aip_metric_path", None)))
    c = TF.TokenFrontierConfig(hook="blocks.1.hook_resid_post", units=("atoms", "features_topk"), targets=(4,), tokens=4096,
                               batch_tokens=256, context_size=16, norm_batches=3, atoms_variants=variants)
    TF.check_config(c)
    saes = TF.runner_config(c, tiny_model, tmp_path, "cpu").saes
    assert set(saes) == {"atoms_l0_4", "features_topk_l0_4", "atoms_alpha0.6_l0_4", "atoms_raw_l0_4"}
    assert (saes["atoms_l0_4"].aip_alpha, saes["atoms_alpha0.6_l0_4"].aip_alpha) == (ATOMS_ALPHA_TOKENS, 0.6)
    assert saes["atoms_raw_l0_4"].aip_loss_space == "raw" and saes["atoms_raw_l0_4"].n_batches_for_metric == 5
    assert saes["atoms_alpha0.6_l0_4"].n_batches_for_metric == 3 and saes["atoms_alpha0.6_l0_4"].target_l0 == 4.0
    rows = [_row("atoms", 4, 4.0, 0.90, 0.1), _row("features_topk", 4, 4.0, 0.89, 0.0),
            _row("atoms_alpha0.6", 4, 4.0, 0.99, 0.5) | {"design": {"aip_alpha": 0.6}}]
    g = TR.goal_check(rows)[0]
    assert g["ce_ok"] and g["q_ok"] and g["best_ce"] == ("features_topk", 0.89)
    for bad, match in (("x=no_such_field:1", "no_such_field"), ("x=aip_alpha:2", "aip_alpha")):
        with pytest.raises(ValueError, match=match):
            TF.check_config(TF.TokenFrontierConfig(atoms_variants=(named_fields(bad),)))
    with pytest.raises(ValueError, match="must differ"):
        TF.check_config(TF.TokenFrontierConfig(atoms_variants=variants[:1] * 2))
    for bad in ("alpha", "=aip_alpha:1", "a=aip_alpha", "a=aip_alpha:"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=FIELD:VALUE"):
            named_fields(bad)


def test_unit_learning_rates_reach_every_sae_of_that_unit(tiny_model, tmp_path, monkeypatch):
    import argparse
    from dataclasses import replace

    from sae_atoms.argtypes import unit_lr

    assert unit_lr("features_topk=3e-3") == ("features_topk", 3e-3)
    for bad in ("features_topk", "features_topk=0", "x=-1", "x=inf", "=1e-3", "x=fast"):
        with pytest.raises(argparse.ArgumentTypeError, match="UNIT=LR"):
            unit_lr(bad)
    c = TF.TokenFrontierConfig(hook="blocks.1.hook_resid_post", units=("atoms", "features_topk"), targets=(4, 8), tokens=4096,
                               batch_tokens=256, context_size=16, stability=True, atoms_variants=(("raw", (("aip_loss_space", "raw"),)),),
                               unit_lrs=(("features_topk", 3e-3), ("atoms_raw", 5e-4)))
    TF.check_config(c)
    for bad in ((("neurons", 1e-3),), (("features_topk", 0.0),)):
        with pytest.raises(ValueError, match="unit learning rates"):
            TF.check_config(replace(c, unit_lrs=bad))
    got = {}

    def capture(cfg, model, train, seed, lrs=None, massive_ratio=None):
        got.update(lrs)
        raise KeyboardInterrupt

    monkeypatch.setattr(TF, "seeded_runner", capture)
    with pytest.raises(KeyboardInterrupt):
        TF.train_units(c, tiny_model, None, tmp_path, "cpu")
    assert got == {TF.sae_name(u, t): lr for u, lr in c.unit_lrs for t in (4, 8)}  # the SAEs' own pass comes first
    for suffixes in TF.passes(c)[1:]:  # each twins' pass names its own SAEs
        with pytest.raises(KeyboardInterrupt):
            TF._train_pass(c, tiny_model, None, TF.pass_dir(tmp_path, suffixes), "cpu", suffixes, False)
    assert got == {TF.sae_name(u, t) + k: lr for u, lr in c.unit_lrs for t in (4, 8) for k in ("", "_init2", "_wide")}


@pytest.mark.slow
@pytest.mark.real_model
def test_the_runners_initialisations_do_not_depend_on_what_ran_before(real_model, tmp_path):
    c = TF.TokenFrontierConfig(units=("atoms", "features_topk"), targets=(16,), tokens=512, context_size=32, batch_tokens=128,
                               val_tokens=64, eval_tokens=64, ref_tokens=64, norm_batches=1, n_checkpoints=0)
    train = TF.token_data(real_model, c)["train"]
    first = TF.seeded_runner(TF.runner_config(c, real_model, tmp_path, "cpu"), real_model, train, c.seed)
    torch.rand(1000)  # an earlier stage drew from the global RNG
    again = TF.seeded_runner(TF.runner_config(c, real_model, tmp_path, "cpu"), real_model, train, c.seed)
    for name, sae in first.saes.items():
        assert torch.equal(sae.W_dec, again.saes[name].W_dec) and torch.equal(sae.W_enc, again.saes[name].W_enc)


@pytest.mark.slow
@pytest.mark.real_model
def test_twins_trained_in_passes_of_their_own_equal_those_of_one_joint_pass(real_model, tmp_path, monkeypatch):
    """With ``stability`` the SAEs, their other-initialisation twins and their wide twins train in three
    runner passes (``passes``), so that only one kind's SAEs are held at a time; each SAE equals the
    one trained in a single pass holding all three kinds. A resumed run loads finished passes."""
    from sae_lens.training.sae_trainer import SAETrainer

    c = TF.TokenFrontierConfig(units=("atoms", "features_topk"), targets=(16,), tokens=512, context_size=32, batch_tokens=128,
                               val_tokens=64, eval_tokens=64, ref_tokens=64, norm_batches=1, n_checkpoints=0, stability=True)
    assert TF.passes(c) == [("",), ("_init2",), ("_wide",)]
    train = TF.token_data(real_model, c)["train"]
    joint, rows_joint = TF._train_pass(c, real_model, train, tmp_path / "joint", "cpu", tuple(TF.twin_widths(c)), False)
    apart, rows_apart = TF.train_units(c, real_model, train, tmp_path / "apart", "cpu")
    assert set(apart) == set(joint) == {TF.sae_name(u, 16) + k for u in c.units for k in ("", "_init2", "_wide")}
    assert rows_apart == rows_joint
    for name, sae in joint.items():
        for key, w in sae.state_dict().items():
            assert torch.equal(w, apart[name].state_dict()[key]), (name, key)
    assert (tmp_path / "apart" / "pass_wide" / "pass.json").exists()
    steps = []
    step = SAETrainer.step
    monkeypatch.setattr(SAETrainer, "step", lambda self, batch: steps.append(1) or step(self, batch))
    again, _ = TF.train_units(c, real_model, train, tmp_path / "apart", "cpu", resume=True)
    assert not steps and all(torch.equal(again[n].W_dec, sae.W_dec) for n, sae in apart.items())  # every pass had finished
    TF._remove_training_files(c, tmp_path / "apart")
    assert not any((tmp_path / "apart").iterdir())


@pytest.mark.slow
@pytest.mark.real_model
def test_a_small_token_frontier_on_the_real_model(real_model, tmp_path):
    """One runner pass trains atoms, jumprelu and topk at one target on human-written text, beside
    orthonormal atoms built from the same stream; every row carries the run_evals figures and the
    project's, the threshold units' L0 is matched on the validation documents, and the matched SAEs reload."""
    from sae_lens import SAE

    from sae_atoms.evals.downstream import sparsity_and_variance
    from sae_atoms.io import write_json

    c = TF.TokenFrontierConfig(units=("atoms", "atoms_stable", "features_jumprelu", "features_topk", "atoms_onb"), targets=(16,),
                               tokens=4096, context_size=64, batch_tokens=512, val_tokens=1024, eval_tokens=512, ref_tokens=1024,
                               norm_batches=2, n_checkpoints=0, stability=True, atoms_variants=(("full", (("aip_alpha", 1.0),)),))
    res = TF.run_token_frontier(real_model, c, out=tmp_path, progress=False)
    write_json(res, tmp_path / "r.json")
    rows = {r["unit"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert set(rows) == {*c.units, "atoms_full"} and rows["atoms_full"]["design"] == {"aip_alpha": 1.0}
    assert res["settings"]["atoms_variants"] == {"atoms_full": {"aip_alpha": 1.0}}
    for unit, r in rows.items():
        assert set(TR.ROW_KEYS) <= set(r)
        assert -1.0 < r["ce_loss_score"] <= 1.0 and r["ce_loss_with_ablation"] > r["ce_loss_without_sae"]
        assert 0.0 <= r["dead_frac"] <= 1.0 and 0.0 <= r["q_star_b"] <= 1.0
        assert 0.0 <= r["seed_consistency"] <= 1.0 and 0.0 < r["width_mean_cos"] <= 1.0  # the twins' consistency
        assert r["bound_ratio_p50"] > 0 and r["k_allowed_p50"] >= 1 and r["l0_p50"] > 1  # which side of q* (b) binds
    assert sorted(p.name for p in (tmp_path / "saes").iterdir()) == sorted(TF.sae_name(u, 16) for u in rows)  # no twin saved
    assert "seed_consistency" in TR.format_table(res["rows"]) and "ce_minus_atoms_se" in TR.format_table(res["rows"])
    assert "ce_minus_atoms" not in rows["atoms"]  # the others' CE-loss score minus atoms', paired over tokens
    for unit in ("atoms_stable", "features_jumprelu", "features_topk", "atoms_full", "atoms_onb"):
        assert rows[unit]["ce_minus_atoms"] == pytest.approx(rows[unit]["ce_loss_score"] - rows["atoms"]["ce_loss_score"])
        assert rows[unit]["ce_minus_atoms_se"] > 0
    assert rows["features_topk"]["l0"] == pytest.approx(16.0, abs=0.5) and rows["features_topk"]["threshold_factor"] is None
    onb = rows["atoms_onb"]  # the bound by construction: every held-out token's active atoms orthonormal in the AIP
    assert (onb["l0"], onb["q_star_b"], onb["threshold_factor"]) == (16.0, 1.0, None)
    assert SAE.load_from_disk(str(tmp_path / "saes" / "atoms_onb_l0_16")).cfg.k == 16
    data = TF.token_data(real_model, c)
    x_val = hook_activations(real_model, data["val"]["tokens"], c.hook)
    for unit in ("atoms", "atoms_stable", "features_jumprelu"):
        sae = SAE.load_from_disk(str(tmp_path / "saes" / TF.sae_name(unit, 16)))
        assert sparsity_and_variance(sae, x_val)["l0"] == pytest.approx(16.0, rel=0.02)  # matched on validation docs
    assert res["settings"]["unit_fields"] == {"atoms_stable": TF.TOKEN_FIELDS["atoms_stable"]}
    assert res["settings"]["val_activations"] == x_val.shape[0]
    assert 0 < res["settings"]["train_rows_read"] <= res["settings"]["train_rows"]  # no training row read twice


@pytest.mark.slow
@pytest.mark.real_model
def test_orthonormal_atoms_alone_need_no_runner(real_model, tmp_path):
    c = TF.TokenFrontierConfig(units=("atoms_onb",), targets=(8,), tokens=512, context_size=32, batch_tokens=128,
                               val_tokens=64, eval_tokens=64, ref_tokens=2048, onb_refine=2)
    (row,) = TF.run_token_frontier(real_model, c, out=tmp_path, progress=False)["rows"]
    assert (row["unit"], row["l0"], row["q_star_b"]) == ("atoms_onb", 8.0, 1.0) and 0 < row["ce_loss_score"] <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saes"]  # no runner output, no checkpoint


@pytest.mark.slow
@pytest.mark.real_model
def test_a_killed_run_resumes_from_the_runners_checkpoint(real_model, tmp_path, monkeypatch):
    """Interrupted after 3 of 8 steps, the runner saves a checkpoint; ``resume=True`` loads the latest
    one, starts from the weights the killed run had (not a new initialisation) and takes only the 5
    steps left for each SAE. (SAELens resumes its data stream at the dataset position and refills its
    mixing buffer there, so the batches after the resume are not those of an uninterrupted run: no
    equality with one is asserted.)"""
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer
    from sae_lens.training.sae_trainer import SAETrainer

    c = TF.TokenFrontierConfig(units=("atoms", "features_topk"), targets=(16,), tokens=1024, context_size=32,
                               batch_tokens=128, val_tokens=64, eval_tokens=64, ref_tokens=64, norm_batches=1,
                               n_checkpoints=0)
    train = TF.token_data(real_model, c)["train"]
    checkpointed, load = MultiSAETrainer._checkpoint_if_needed, MultiSAETrainer.load_checkpoint
    at_kill, at_resume, steps = {}, {}, []

    def killed_after_3(self):
        checkpointed(self)
        if self.n_training_steps == 2:  # the 3rd step is done (the counter moves after this call)
            at_kill.update({n: sae.W_dec.detach().clone() for n, sae in self.saes.items()})
            raise KeyboardInterrupt

    def loaded(self, path):
        load(self, path)
        at_resume.update({n: sae.W_dec.detach().clone() for n, sae in self.saes.items()})

    monkeypatch.setattr(MultiSAETrainer, "_checkpoint_if_needed", killed_after_3)
    with pytest.raises(KeyboardInterrupt):
        TF.train_units(c, real_model, train, tmp_path, "cpu")
    assert TF.latest_checkpoint(tmp_path).endswith("/384")  # 3 steps x 128 tokens
    monkeypatch.setattr(MultiSAETrainer, "_checkpoint_if_needed", checkpointed)
    monkeypatch.setattr(MultiSAETrainer, "load_checkpoint", loaded)
    step = SAETrainer.step
    monkeypatch.setattr(SAETrainer, "step", lambda self, batch: steps.append(1) or step(self, batch))
    resumed, _ = TF.train_units(c, real_model, train, tmp_path, "cpu", resume=True)
    assert len(steps) == 5 * len(c.units) and set(resumed) == set(at_kill) == set(at_resume)
    for name, w in at_kill.items():
        assert torch.equal(at_resume[name], w)  # tsae kinds too: a checkpoint keeps the decoder parameter as it was


def test_the_cli_passes_the_held_out_and_pass_sizes_to_the_config(monkeypatch, tmp_path):
    import sae_atoms.models
    from sae_atoms.cli import main

    seen = {}

    def run(model, c, **kw):
        seen["c"] = c
        raise SystemExit(0)

    monkeypatch.setattr(sae_atoms.models, "load_model", lambda *a, **k: None)
    monkeypatch.setattr(TF, "run_token_frontier", run)
    with pytest.raises(SystemExit):
        main(["token-frontier", "--out", str(tmp_path), "--heldout-doc-tokens", "1024", "--ref-tokens", "4096",
              "--eval-batch-prompts", "32", "--batch-tokens", "4096", "--tokens", "8192"])
    c = seen["c"]
    assert (c.heldout_doc_tokens, c.ref_tokens, c.eval_batch_prompts, c.batch_tokens) == (1024, 4096, 32, 4096)
