"""train_on_activations (SAETrainer on a fixed set) and `sae-atoms train` (SAELens's runner via our CLI)."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.standard_sae import StandardSAE, StandardTrainingSAEConfig

from sae_atoms.synthetic import evaluate, planted
from sae_atoms.saes import TSAEAIPSAE, TSAEAIPTrainingSAEConfig
from sae_atoms.training import train_on_activations


# The identifiable regime: 32 orthonormal intrinsic atoms in d=32 seen through a distortion of
# condition 10 (Euclidean coherence of the observed atoms ~0.55), about 2 active per sample with
# magnitudes in [0.5, 1.5]. The AIP undoes the distortion (uncentred E[m m^T] = c A A^T), so in the
# whitened space the atoms are orthonormal: mu = 0 < 1/(2K-1) and every threshold in
# (0, min magnitude) separates supports. Width 2x (surplus units die under the L0 penalty).
RECOVERY = dict(d=32, n_atoms=32, k=2, coherence=0.0, n_samples=5000, distortion=10.0)
RECOVERY_TRAIN = dict(steps=1000, batch_size=256, lr=3e-3, progress=False)


def _recovery_configs(d: int, width: int) -> dict:
    # Coefficients in each SAE's own units: tsae_aip in whitened units (E||y||^2 = d, active
    # coefficients ~1.9 to 5.8, threshold starts inside that gap); the raw-space SAEs get the
    # same relative penalty (raw E||m||^2 ~ 4.8, i.e. x0.15).
    return {
        "tsae_aip": TSAEAIPTrainingSAEConfig(d_in=d, d_sae=width, l0_coefficient=2.0, jumprelu_init_threshold=1.5,
                                             jumprelu_bandwidth=0.1),
        "jumprelu": JumpReLUTrainingSAEConfig(d_in=d, d_sae=width, l0_coefficient=0.3),
        "standard": StandardTrainingSAEConfig(d_in=d, d_sae=width, l1_coefficient=0.05),
    }


@pytest.fixture(scope="module")
def recovery():
    data = planted(**RECOVERY, seed=0)
    out = {}
    for name, cfg in _recovery_configs(RECOVERY["d"], 2 * RECOVERY["n_atoms"]).items():
        sae = train_on_activations(data.activations, cfg, seed=0, **RECOVERY_TRAIN)
        out[name] = (sae, evaluate(sae, data, sae_lens_metrics=False))
    print("\nplanted recovery (d=32, 32 atoms, k=2, distortion 10, 5000 samples, 1000 steps):")
    for name, (_, r) in out.items():
        print(f"  {name:9s} atoms {r['atoms_recovered']:.3f}  supports {r['support_recovered']:.3f}  "
              f"R2 {r['r2']:.4f}  L0 {r['l0']:.2f} (true {r['true_l0']:.2f})")
    return out


@pytest.mark.slow
def test_tsae_aip_recovers_planted_atoms_and_supports(recovery):
    r = recovery["tsae_aip"][1]
    assert r["atoms_recovered"] >= 0.99, r
    assert r["support_recovered"] >= 0.95, r
    assert abs(r["l0"] - r["true_l0"]) < 0.1, r


@pytest.mark.slow
def test_same_function_trains_standard_jumprelu_and_tsae_aip(recovery):
    for name, cls in [("standard", StandardSAE), ("jumprelu", JumpReLUSAE), ("tsae_aip", TSAEAIPSAE)]:
        sae, r = recovery[name]
        assert type(sae) is cls
        assert r["r2"] > 0.5, (name, r)
    # tsae_aip is never behind the raw-space SAEs on supports here (measured, seed 0: tsae_aip 1.000,
    # jumprelu 0.992, standard 0.130 at l1 0.05 where it stays dense); jumprelu's free encoder can
    # undo the distortion too, so only "not worse" is asserted.
    best_raw = max(recovery[n][1]["support_recovered"] for n in ("standard", "jumprelu"))
    assert recovery["tsae_aip"][1]["support_recovered"] >= best_raw


@pytest.mark.slow
def test_autocast_trains_in_bfloat16_and_still_recovers_planted_atoms(monkeypatch):
    """SAELens's autocast reaches the step (its forward pass runs under CPU bfloat16 autocast), the
    weights stay float32, and tsae_aip still recovers the planted atoms and supports of the regime above."""
    from sae_atoms.saes.tsae_aip import TSAEAIPTrainingSAE

    seen, forward = [], TSAEAIPTrainingSAE.training_forward_pass

    def spy(self, step_input):
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(self, step_input)

    monkeypatch.setattr(TSAEAIPTrainingSAE, "training_forward_pass", spy)
    data = planted(**RECOVERY, seed=0)
    cfg = _recovery_configs(RECOVERY["d"], 2 * RECOVERY["n_atoms"])["tsae_aip"]
    sae = train_on_activations(data.activations, cfg, seed=0, autocast=True, **RECOVERY_TRAIN)
    r = evaluate(sae, data, sae_lens_metrics=False)
    assert len(seen) == RECOVERY_TRAIN["steps"] and all(seen) and sae.W_dec.dtype == torch.float32
    assert r["atoms_recovered"] >= 0.99 and r["support_recovered"] >= 0.95 and abs(r["l0"] - r["true_l0"]) < 0.1, r


@pytest.mark.slow
def test_train_on_activations_is_seeded_and_checks_input():
    x = planted(d=16, n_atoms=24, k=2, coherence=0.3, n_samples=1000, seed=0).activations
    cfg = TSAEAIPTrainingSAEConfig(d_in=16, d_sae=24)
    a = train_on_activations(x, cfg, steps=20, batch_size=100, progress=False, seed=3)
    b = train_on_activations(x, cfg, steps=20, batch_size=100, progress=False, seed=3)
    torch.testing.assert_close(a.W_dec, b.W_dec)
    with pytest.raises(ValueError, match="d_in=16"):
        train_on_activations(torch.randn(100, 17), cfg, steps=2, progress=False)
    bad = x.clone()
    bad[7, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="1 non-finite"):
        train_on_activations(bad, cfg, steps=2, progress=False)
    with pytest.raises(ValueError, match="steps or epochs"):
        train_on_activations(x, cfg, steps=2, epochs=1, progress=False)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("arch,overrides,kwargs,needle", [
    ("standard", {"d_sae": 0}, {}, r"d_sae=0 must be an integer >= 1"),
    ("standard", {"l1_coefficient": NAN}, {}, r"l1_coefficient=nan is not finite; give a finite number >= 0"),
    ("standard", {"l1_coefficient": -0.1}, {}, r"l1_coefficient=-0.1 must be a finite number >= 0"),
    ("jumprelu", {"jumprelu_bandwidth": 0.0}, {}, r"jumprelu_bandwidth=0.0 must be a finite number > 0"),
    ("topk", {"k": 65}, {}, r"k=65 must be a finite number in \(0, 64\]"),
    ("tsae_aip", {}, {"lr": INF}, r"lr=inf is not finite; give a finite number > 0"),
    ("standard", {}, {"steps": None, "epochs": -1}, r"epochs=-1 must be a finite number > 0"),
    ("standard", {}, {"steps": None, "epochs": NAN}, r"epochs=nan is not finite"),
    ("jumprelu", {}, {"steps": 2.5}, r"steps=2.5 must be an integer >= 1"),
    ("standard", {}, {"lr_decay_frac": NAN}, r"lr_decay_frac=nan is not finite; give a finite number in \[0, 1\]"),
])
def test_every_architecture_gets_finiteness_and_range_checks(arch, overrides, kwargs, needle, monkeypatch):
    from sae_atoms import training
    from sae_atoms.training import training_config

    monkeypatch.setattr(training, "fit_sae", _must_not_train)
    overrides = dict(overrides)
    with pytest.raises(ValueError, match=needle):
        cfg = training_config(arch, 32, overrides.pop("d_sae", 64), **overrides)
        train_on_activations(torch.randn(64, 32), cfg, **{"steps": 1, **kwargs}, progress=False)


def _must_not_train(*args, **kwargs):
    raise AssertionError("training started although an argument was out of range")


def test_saelens_config_built_by_hand_is_checked_at_train(monkeypatch):
    from sae_atoms import training

    monkeypatch.setattr(training, "fit_sae", _must_not_train)
    cfg = StandardTrainingSAEConfig(d_in=32, d_sae=64, l1_coefficient=NAN)
    with pytest.raises(ValueError, match="l1_coefficient=nan"):
        train_on_activations(torch.randn(64, 32), cfg, steps=1, progress=False)


def test_match_on_width_is_checked_before_training(monkeypatch):
    from sae_atoms import training

    monkeypatch.setattr(training, "fit_sae", _must_not_train)
    cfg = JumpReLUTrainingSAEConfig(d_in=32, d_sae=64)
    with pytest.raises(ValueError, match=r"match_on set has width 16 .* d_in=32"):
        train_on_activations(torch.randn(64, 32), cfg, steps=1, progress=False, target_l0=4, match_on=torch.randn(10, 16))
    with pytest.raises(ValueError, match="give target_l0"):
        train_on_activations(torch.randn(64, 32), cfg, steps=1, progress=False, match_on=torch.randn(10, 32))


@pytest.mark.real_model
def test_tsae_aip_on_real_subject_activations(real_acts):
    x = real_acts.select(split="train").x()
    cfg = TSAEAIPTrainingSAEConfig(d_in=x.shape[1], d_sae=4 * x.shape[1])
    sae = train_on_activations(x, cfg, steps=150, batch_size=128, progress=False)
    recon = sae(x)
    r2 = 1 - float((x - recon).pow(2).sum()) / float((x - x.mean(0)).pow(2).sum())
    l0 = float((sae.encode(x) > 0).float().sum(1).mean())
    assert r2 > 0.5 and 0 < l0 < cfg.d_sae / 2, (r2, l0)


@pytest.mark.real_model
def test_cli_train_runs_sae_lens_runner_on_smollm2(tmp_path):
    from sae_atoms.cli import main

    text = tmp_path / "text.jsonl"
    lines = [f"The city of {c} is in {k}. People there speak many languages and trade with neighbours."
             for c, k in [("Paris", "France"), ("Tokyo", "Japan"), ("Lima", "Peru"), ("Cairo", "Egypt"),
                          ("Oslo", "Norway"), ("Quito", "Ecuador"), ("Hanoi", "Vietnam"), ("Accra", "Ghana")]]
    text.write_text("\n".join(json.dumps({"text": t * 3}) for t in lines))
    out = tmp_path / "out"
    rc = main(["train", "--architecture", "tsae_aip", "--d_in", "576", "--d_sae", "1152", "--model_name", "smollm2-135m",
               "--hook_name", "blocks.3.hook_resid_post", "--dataset_path", str(text), "--is_dataset_tokenized", "False",
               "--context_size", "32", "--training_tokens", "1536", "--train_batch_size_tokens", "128",
               "--store_batch_size_prompts", "4", "--n_batches_in_buffer", "4", "--n_batches_for_metric", "6",
               "--output_path", str(out), "--checkpoint_path", str(tmp_path / "ckpt"), "--device", "cpu",
               "--streaming", "False"])
    assert rc == 0
    sae = SAE.load_from_disk(out)
    assert isinstance(sae, TSAEAIPSAE) and sae.cfg.d_in == 576
    assert not torch.equal(sae.aip_W, torch.eye(576))
    with pytest.raises(SystemExit):
        main(["train", "--architecture", "tsae_aip", "--d_in", "100", "--d_sae", "200", "--model_name", "smollm2-135m",
              "--hook_name", "blocks.3.hook_resid_post", "--dataset_path", str(text), "--is_dataset_tokenized", "False",
              "--no-such-flag", "1"])


@pytest.mark.real_model
def test_cli_train_d_in_mismatch_is_clear(tmp_path, real_model):
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    from sae_atoms.runners import build_runner

    cfg = LanguageModelSAERunnerConfig(sae=TSAEAIPTrainingSAEConfig(d_in=512, d_sae=1024), model_name="smollm2-135m",
                                       hook_name="blocks.3.hook_resid_post", logger=LoggingConfig(log_to_wandb=False),
                                       verbose=False, checkpoint_path=None, output_path=None,
                                       n_batches_in_buffer=32)  # a buffer that holds a batch: only d_in is wrong
    with pytest.raises(ValueError, match="--d_in 576"):
        build_runner(cfg, model=real_model)


# ---------------------------------------------------------------- issue 11: coherent dictionary, L0 control
@pytest.mark.slow
@pytest.mark.parametrize(("n_threads", "data_seed"), [(1, 0), (2, 1)])
def test_tsae_aip_recovers_a_union_of_orthonormal_bases_behind_a_shift(n_threads, data_seed):
    """Two random orthonormal bases of R^64 (intrinsic mu ~0.42; ~0.65 in Euclid after a distortion of
    condition 10), K = 3 active: the default (robust, centred) metric undoes the shift and the TSAE
    recovers >= 99% of the 128 atoms (|cos| > 0.99), on either thread count the machine gives.

    4,000 steps: at 2,000 training has not settled, and an atom can still be left to a unit that
    straddles it and an atom of the other basis (data seed 1), or to a dead unit only (data seed 0 in
    some runs); 99% of 128 atoms allows one miss, so that knife-edge flipped with the numerics."""
    torch.set_num_threads(n_threads)
    data = planted(d=64, n_atoms=128, k=3, coherence=0.0, n_samples=16000, seed=data_seed, distortion=10.0,
                   n_bases=2)
    assert data.coherence > 0.3 and data.coherence_observed > 0.5  # coherent, and more so in Euclid
    cfg = TSAEAIPTrainingSAEConfig(d_in=64, d_sae=256, l0_coefficient=2.0, jumprelu_init_threshold=1.5,
                                   jumprelu_bandwidth=0.1)
    assert cfg.aip_kind == "centered" and cfg.aip_outlier_factor == 10.0  # the defaults under test
    sae = train_on_activations(data.activations, cfg, steps=4000, batch_size=256, lr=3e-3, seed=0, progress=False)
    r = evaluate(sae, data, sae_lens_metrics=False)
    assert r["atoms_recovered"] >= 0.99, r


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["jumprelu", "tsae", "tsae_aip", "standard"])
def test_target_l0_holds_every_unit_kind_to_the_target(arch):
    from sae_atoms.units import UNIT_KINDS, unit_config

    unit = {k.architecture: n for n, k in UNIT_KINDS.items()}[arch]
    x = planted(d=16, n_atoms=48, k=4, coherence=0.4, n_samples=3000, seed=0).activations
    cfg = unit_config(unit, 16, 64, 6.0)
    sae = train_on_activations(x, cfg, steps=300, batch_size=256, seed=0, progress=False, target_l0=6.0)
    l0 = float((sae.encode(x) != 0).sum(1).float().mean())
    tol = 0.02  # matched post hoc: thresholds (threshold units) or the encoder bias (standard)
    assert abs(l0 - 6.0) <= tol * 6.0, (arch, l0)
    with pytest.raises(ValueError, match="target_l0"):
        train_on_activations(x, cfg, steps=1, progress=False, target_l0=0.0)


@pytest.mark.slow
def test_match_l0_moves_only_thresholds():
    from sae_atoms.training import match_l0

    x = planted(d=16, n_atoms=48, k=4, coherence=0.4, n_samples=2000, seed=1).activations
    cfg = TSAEAIPTrainingSAEConfig(d_in=16, d_sae=64)
    sae = train_on_activations(x, cfg, steps=50, batch_size=256, seed=0, progress=False)
    w = sae.W_dec.detach().clone()
    for target in (3.0, 10.0):
        match_l0(sae, x, target)
        assert float((sae.encode(x) != 0).sum(1).float().mean()) == pytest.approx(target, rel=0.01)
    assert torch.equal(sae.W_dec, w)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["jumprelu", "standard", "tsae", "tsae_aip"])
def test_l0_counter_counts_as_encode_does_without_encoding(arch):
    """match_l0's counter does the pre-activations' matrix product once: at every threshold level (some
    below zero) and encoder bias, with a NaN row among the rows, it gives encode's count exactly, and
    never calls encode (all four use SAELens's jumprelu or standard encode; tsae_aip's inference SAE holds
    its weights folded into raw space)."""
    from sae_atoms.training import l0_counter, training_config

    x = planted(d=16, n_atoms=48, k=4, coherence=0.4, n_samples=700, seed=2).activations
    sae = train_on_activations(x, training_config(arch, 16, 48), steps=20, batch_size=128, seed=0, progress=False,
                               target_l0=6.0)
    x = torch.cat([x, torch.full((1, 16), float("nan"))])  # encode fires NaN codes: they count
    slow = l0_counter(sae, x, batch_size=256, max_cached=0)  # encode on every call (sets over the cache limit)
    fast = l0_counter(sae, x, batch_size=256)
    sae.encode = lambda *a: pytest.fail("the cached counter encoded")  # (the class's encode is what it reads)
    thr, b = getattr(sae, "threshold", None), sae.b_enc
    settings = [(thr * f, b) for f in (0.25, 0.5, 1.0, 1.7, 3.0)] + [(thr - thr.mean(), b), (thr, b + 0.3)] \
        if thr is not None else [(None, b - (f - 1.0)) for f in (0.25, 0.5, 1.0, 1.7, 3.0)]
    settings = [(None if t is None else t.detach().clone(), c.detach().clone()) for t, c in settings]

    def counts(counter) -> list[float]:
        out = []
        for t, c in settings:
            if t is not None:
                sae.threshold.data.copy_(t)
            sae.b_enc.data.copy_(c)
            out.append(counter())
        return out

    got = counts(fast)
    vars(sae).pop("encode", None)
    assert got == counts(slow), arch
    assert len(set(got)) >= 4  # the settings move the count


def test_trainer_adam_runs_foreach_and_matches_the_default_bit_for_bit(monkeypatch):
    """MetricFirstTrainer switches SAELens's Adam to the multi-tensor path: same weights as the
    per-tensor loop torch uses on a CPU by default."""
    import sae_atoms.training as training

    data = planted(d=16, n_atoms=16, k=2, coherence=0.0, n_samples=600, distortion=3.0, seed=1).activations
    cfg = _recovery_configs(16, 32)["tsae_aip"]
    seen = []
    init = training.MetricFirstTrainer.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen.append(self.optimizer.param_groups[0]["foreach"])

    monkeypatch.setattr(training.MetricFirstTrainer, "__init__", record)
    fast = train_on_activations(data, cfg, seed=0, steps=40, batch_size=64, progress=False)

    def per_tensor(self, *args, **kwargs):
        record(self, *args, **kwargs)
        for group in self.optimizer.param_groups:
            group["foreach"] = False

    monkeypatch.setattr(training.MetricFirstTrainer, "__init__", per_tensor)
    slow = train_on_activations(data, cfg, seed=0, steps=40, batch_size=64, progress=False)
    assert seen == [True, True]
    for name, p in fast.state_dict().items():
        assert torch.equal(p, slow.state_dict()[name]), name
