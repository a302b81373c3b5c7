"""tsae / tsae_aip as SAELens architectures: registration, formula, save/load, splice, runner, errors."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from sae_lens import SAE, HookedSAETransformer, LanguageModelSAERunnerConfig, LoggingConfig
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.jumprelu_sae import JumpReLUSAE
from sae_lens.saes.sae import TrainStepInput

import sae_atoms
from sae_atoms.aip import AIPMetric
from sae_atoms.saes import (
    TSAEAIPSAE,
    TSAEAIPTrainingSAE,
    TSAEAIPTrainingSAEConfig,
    TSAETrainingSAE,
    TSAETrainingSAEConfig,
    register,
    to_jumprelu,
)
from sae_atoms.saes.tsae_aip import to_inference


def _skewed(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g) * torch.logspace(0, 1, d)
    return torch.randn(n, d, generator=g) @ a / math.sqrt(d) + 2.0


def _fitted_aip(d=16, width=48, kind="uncentered", seed=0) -> tuple[TSAEAIPTrainingSAE, torch.Tensor]:
    torch.manual_seed(seed)
    sae = TSAEAIPTrainingSAE(TSAEAIPTrainingSAEConfig(d_in=d, d_sae=width, aip_kind=kind))
    x = _skewed(600, d, seed)
    sae.fit_metric(x)
    with torch.no_grad():  # move away from the init so the fold is tested on generic weights
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            p.add_(0.1 * torch.randn_like(p))
        sae.threshold.uniform_(0.0, 0.3)
    return sae, x


def test_registered_idempotently():
    for name in ("tsae", "tsae_aip"):
        assert name in SAE_CLASS_REGISTRY and name in SAE_TRAINING_CLASS_REGISTRY
    before = dict(SAE_TRAINING_CLASS_REGISTRY)
    register()
    register()
    assert SAE_TRAINING_CLASS_REGISTRY == before
    assert SAE_TRAINING_CLASS_REGISTRY["tsae_aip"][0] is TSAEAIPTrainingSAE


def test_registration_refuses_a_foreign_class():
    from sae_atoms.saes import _register_one

    with pytest.raises(ValueError, match="already registered"):
        _register_one("tsae", SAE_CLASS_REGISTRY, None, (JumpReLUSAE, object))


@pytest.mark.parametrize("kind", ["uncentered", "centered"])
def test_aip_forward_formula_and_unit_aip_atoms(kind):
    sae, x = _fitted_aip(kind=kind)
    metric = AIPMetric.fit(x, **sae.metric_options())
    y = metric.whiten(x)
    e = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    z = (y - sae.b_dec) @ sae.W_enc + sae.b_enc
    delta = z * (z > sae.threshold)
    expect = metric.unwhiten(delta @ e + sae.b_dec)
    torch.testing.assert_close(sae(x), expect, rtol=1e-4, atol=1e-4)
    inf = to_inference(sae)
    torch.testing.assert_close(inf(x), expect, rtol=1e-4, atol=1e-4)
    # raw atoms have unit AIP norm: ||d||_S^2 = d^T S d
    s = metric.S.float()
    aip_norm = torch.einsum("ij,jk,ik->i", inf.W_dec, s, inf.W_dec).sqrt()
    torch.testing.assert_close(aip_norm, torch.ones_like(aip_norm), rtol=1e-4, atol=1e-4)


def test_unit_rows_gradient_equals_autograd_through_norm_and_floor():
    """The decoder's closed-form gradient is autograd's through ``w / |w|``, floored rows included."""
    from sae_atoms.saes.tsae import UnitRows

    g = torch.Generator().manual_seed(3)
    w = torch.randn(12, 7, generator=g, dtype=torch.float64)
    w[4] = 0.0  # a floored row: only g / floor, no norm gradient
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(UnitRows.apply, (w.detach()[[0, 1, 2, 3, 5]].clone().requires_grad_(True),))
    up = torch.randn(12, 7, generator=g, dtype=torch.float64)
    (UnitRows.apply(w) * up).sum().backward()
    ours = w.grad.clone()
    w.grad = None
    (w / w.norm(dim=1, keepdim=True).clamp_min(1e-12) * up).sum().backward()
    torch.testing.assert_close(ours, w.grad, rtol=1e-12, atol=1e-12)
    assert ours[4].abs().max() > 1e6  # the floored row's gradient is g / 1e-12, not zeroed


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_pre_activations_and_their_gradients_are_those_of_the_centred_input(apply_b_dec):
    """``y W_enc + (b_enc - b_dec W_enc)`` (no input gradient) is ``(y - b_dec) W_enc + b_enc``: the same
    values and the same gradients of ``W_enc``, ``b_enc`` and ``b_dec``."""
    sae, x = _fitted_aip(d=16, width=48)
    sae = sae.double()
    sae.cfg.apply_b_dec_to_input = apply_b_dec
    y = sae._to_geometry(x.double())
    up = torch.randn(len(y), 48, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    params = (sae.W_enc, sae.b_enc, sae.b_dec)
    ours = torch.autograd.grad((sae._pre_acts(y) * up).sum(), params, allow_unused=True)
    ref_pre = (y - sae.b_dec * apply_b_dec) @ sae.W_enc + sae.b_enc
    ref = torch.autograd.grad((ref_pre * up).sum(), params, allow_unused=True)
    torch.testing.assert_close(sae._pre_acts(y), ref_pre, rtol=1e-10, atol=1e-10)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(torch.zeros_like(sae.b_dec) if a is None else a, b, rtol=1e-10, atol=1e-10)
    assert (ours[2] is not None and ours[2].abs().max() > 0) == apply_b_dec


def test_training_save_keeps_the_decoder_parameter_and_inference_takes_its_unit_rows(tmp_path):
    """``save_model`` (SAELens's checkpoints) keeps ``W_dec`` as trained, so a resume continues from it;
    the inference SAE loaded from that folder, or made by ``to_inference``, has the unit rows and the
    training SAE's outputs bit for bit; an inference save holds the unit rows."""
    torch.manual_seed(0)
    sae = TSAETrainingSAE(TSAETrainingSAEConfig(d_in=16, d_sae=32))
    sae.threshold.data.fill_(0.01)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 32)[:, None])  # norms drift off 1 in training
    sae.save_model(tmp_path / "train")
    assert torch.equal(TSAETrainingSAE.load_from_disk(tmp_path / "train").W_dec, sae.W_dec)
    x = _skewed(64, 16)
    want = sae.decode(sae.encode(x))
    for inf in (SAE.load_from_disk(tmp_path / "train"), to_inference(sae)):
        torch.testing.assert_close(inf.W_dec.norm(dim=1), torch.ones(32))
        assert torch.equal(inf.decode(inf.encode(x)), want)
    sae.save_inference_model(tmp_path / "inference")
    assert torch.equal(SAE.load_from_disk(tmp_path / "inference").W_dec, to_inference(sae).W_dec)


def test_unit_norm_kept_during_training_and_metric_estimated_from_first_batches():
    torch.manual_seed(0)
    cfg = TSAEAIPTrainingSAEConfig(d_in=8, d_sae=16, n_batches_for_metric=3)
    sae = TSAEAIPTrainingSAE(cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    batches = [_skewed(64, 8, seed=i) for i in range(8)]
    for i, b in enumerate(batches):
        out = sae.training_forward_pass(TrainStepInput(sae_in=b, coefficients={"l0": 0.1}, dead_neuron_mask=None,
                                                      n_training_steps=i, is_logging_step=False))
        assert sae.metric_fitted == (i >= 2)
        if i < 3:  # estimation steps train nothing
            assert float(out.loss) == 0.0 and not out.feature_acts.any()
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    expect = AIPMetric.fit(iter(batches[:3]), **sae.metric_options())  # per-batch outlier rule, as streamed
    torch.testing.assert_close(sae.aip_W, expect.W.float(), rtol=1e-4, atol=1e-5)
    inf = to_inference(sae)
    norms = (inf.W_dec @ inf.aip_W.T).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-5, atol=1e-5)


def test_save_load_identical_and_metric_in_safetensors(tmp_path):
    from safetensors.torch import load_file

    sae, x = _fitted_aip()
    sae.save_inference_model(tmp_path / "inf")
    assert {"aip_W", "aip_W_inv", "aip_mean"} <= set(load_file(str(tmp_path / "inf" / "sae_weights.safetensors")))
    loaded = SAE.load_from_disk(tmp_path / "inf")
    assert isinstance(loaded, TSAEAIPSAE)
    torch.testing.assert_close(loaded(x), to_inference(sae)(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded(x), sae(x), rtol=1e-4, atol=1e-4)
    # a training checkpoint (whitened parameters + metric) round-trips too
    sae.save_model(tmp_path / "ckpt")
    from sae_lens.saes.sae import TrainingSAE

    again = TrainingSAE.load_from_disk(tmp_path / "ckpt")
    assert isinstance(again, TSAEAIPTrainingSAE) and again.metric_fitted
    torch.testing.assert_close(again(x), sae(x), rtol=1e-5, atol=1e-5)


def test_to_jumprelu_loads_in_vanilla_sae_lens(tmp_path):
    sae, x = _fitted_aip(kind="centered")
    jr = to_jumprelu(sae)
    assert type(jr) is JumpReLUSAE
    jr.save_model(tmp_path / "jr")
    cfg = json.loads((tmp_path / "jr" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    back = SAE.load_from_disk(tmp_path / "jr")
    assert type(back) is JumpReLUSAE
    # stated tolerance: float32 round-off, 1e-4 absolute on O(1) activations
    torch.testing.assert_close(back(x), sae(x), rtol=1e-4, atol=1e-4)
    acts_a, acts_b = back.encode(x), sae.encode(x)
    assert ((acts_a > 0) != (acts_b > 0)).float().mean() < 1e-3
    # the raw tsae converts too (same forward as jumprelu)
    torch.manual_seed(1)
    raw = TSAETrainingSAE(TSAETrainingSAEConfig(d_in=16, d_sae=32))
    torch.testing.assert_close(to_jumprelu(raw)(x), raw(x), rtol=1e-5, atol=1e-5)


def test_splice_into_model_with_error_term(tiny_model):
    model = HookedSAETransformer(tiny_model.cfg)
    model.load_state_dict(tiny_model.state_dict(), strict=False)
    model.eval()
    hook = "blocks.0.hook_resid_post"
    toks = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(toks, names_filter=[hook])
    sae = TSAEAIPTrainingSAE(TSAEAIPTrainingSAEConfig(d_in=32, d_sae=64, jumprelu_init_threshold=0.1))
    sae.fit_metric(cache[hook].reshape(-1, 32))
    inf = to_inference(sae)
    inf.cfg.metadata.hook_name = hook
    clean = model(toks)
    spliced, sae_cache = model.run_with_cache_with_saes(toks, saes=[inf])
    assert f"{hook}.hook_sae_acts_post" in sae_cache
    assert not torch.allclose(spliced, clean)
    with_err = model.run_with_saes(toks, saes=[inf], use_error_term=True)
    torch.testing.assert_close(with_err, clean, rtol=1e-4, atol=1e-4)
    # editing the atoms' activations with the error term on changes the output
    def zero(acts, hook):
        return torch.zeros_like(acts)

    model.add_sae(inf, use_error_term=True)
    edited = model.run_with_hooks(toks, fwd_hooks=[(f"{hook}.hook_sae_acts_post", zero)])
    model.reset_saes()
    assert not torch.allclose(edited, clean, atol=1e-4)


def _tiny_runner_cfg(tmp_path, sae_cfg, **kw) -> LanguageModelSAERunnerConfig:
    base = dict(sae=sae_cfg, model_name="tiny", hook_name="blocks.1.hook_resid_post", dataset_path="",
                is_dataset_tokenized=True, context_size=16, training_tokens=16 * 16 * 12, train_batch_size_tokens=64,
                store_batch_size_prompts=4, n_batches_in_buffer=4, device="cpu", seed=0, prepend_bos=False,
                checkpoint_path=str(tmp_path / "ckpt"), output_path=str(tmp_path / "out"), verbose=False,
                logger=LoggingConfig(log_to_wandb=False), model_from_pretrained_kwargs={})
    base.update(kw)
    return LanguageModelSAERunnerConfig(**base)


@pytest.fixture
def token_dataset():
    import datasets

    g = torch.Generator().manual_seed(0)
    return datasets.Dataset.from_dict({"tokens": torch.randint(1, 50, (200, 16), generator=g).tolist()})


@pytest.mark.slow
def test_runner_trains_tsae_aip_on_tiny_model_with_checkpoints_and_resume(tmp_path, tiny_model, token_dataset):
    sae_cfg = TSAEAIPTrainingSAEConfig(d_in=32, d_sae=64, n_batches_for_metric=4)
    cfg = _tiny_runner_cfg(tmp_path, sae_cfg, n_checkpoints=2)
    sae = LanguageModelSAETrainingRunner(cfg, override_dataset=token_dataset, override_model=tiny_model).run()
    assert isinstance(sae, TSAEAIPTrainingSAE) and sae.metric_fitted
    loaded = SAE.load_from_disk(tmp_path / "out")
    assert isinstance(loaded, TSAEAIPSAE)
    assert not torch.equal(loaded.aip_W, torch.eye(32))
    ckpts = sorted((tmp_path / "ckpt").glob("*/*"), key=lambda p: int(p.name))
    assert len(ckpts) == 2
    # resume from the first checkpoint: the metric comes back with the weights, training continues
    cfg2 = _tiny_runner_cfg(tmp_path / "r", TSAEAIPTrainingSAEConfig(d_in=32, d_sae=64, n_batches_for_metric=4),
                            resume_from_checkpoint=str(ckpts[0]))
    runner = LanguageModelSAETrainingRunner(cfg2, override_dataset=token_dataset, override_model=tiny_model)
    resumed = runner.run()
    assert resumed.metric_fitted
    first = TSAEAIPTrainingSAE.load_from_disk(ckpts[0])
    torch.testing.assert_close(resumed.aip_W, first.aip_W)


@pytest.mark.slow
def test_runner_from_dict_config_raw_tsae(tmp_path, tiny_model, token_dataset):
    cfg = _tiny_runner_cfg(tmp_path, TSAETrainingSAEConfig(d_in=32, d_sae=64))
    d = cfg.to_dict()
    assert d["sae"]["architecture"] == "tsae"
    cfg2 = LanguageModelSAERunnerConfig.from_dict(json.loads(json.dumps(d)))
    assert isinstance(cfg2.sae, TSAETrainingSAEConfig)
    LanguageModelSAETrainingRunner(cfg2, override_dataset=token_dataset, override_model=tiny_model).run()
    loaded = SAE.load_from_disk(tmp_path / "out")
    assert loaded.cfg.architecture() == "tsae"
    torch.testing.assert_close(loaded.W_dec.norm(dim=1), torch.ones(64), rtol=1e-5, atol=1e-5)


def test_cli_parses_sae_lens_arguments_for_tsae_aip():
    from sae_lens.llm_sae_training_runner import _parse_cfg_args

    cfg = _parse_cfg_args(["--architecture", "tsae_aip", "--d_in", "32", "--d_sae", "64", "--aip_kind", "centered",
                           "--aip_shrinkage", "0.01", "--n_batches_for_metric", "5", "--l0_coefficient", "0.3",
                           "--model_name", "tiny", "--hook_name", "blocks.0.hook_resid_post"])
    assert isinstance(cfg.sae, TSAEAIPTrainingSAEConfig)
    assert (cfg.sae.aip_kind, cfg.sae.aip_shrinkage, cfg.sae.n_batches_for_metric) == ("centered", "0.01", 5)


def test_bad_input_errors(tmp_path):
    sae = TSAEAIPTrainingSAE(TSAEAIPTrainingSAEConfig(d_in=8, d_sae=16, n_batches_for_metric=1))
    step = dict(coefficients={"l0": 0.1}, dead_neuron_mask=None, is_logging_step=False)
    with pytest.raises(ValueError, match="d_in=8"):
        sae.training_forward_pass(TrainStepInput(sae_in=torch.randn(4, 9), n_training_steps=0, **step))
    sae.training_forward_pass(TrainStepInput(sae_in=_skewed(64, 8), n_training_steps=0, **step))
    bad = _skewed(32, 8)
    bad[3, 2] = float("nan")
    bad[5, 1] = float("inf")
    with pytest.raises(FloatingPointError, match=r"training step 7: .* 2 non-finite"):
        sae.training_forward_pass(TrainStepInput(sae_in=bad, n_training_steps=7, **step))
    # a metric of another d
    with pytest.raises(ValueError, match="d=12"):
        sae.set_metric(AIPMetric.fit(_skewed(100, 12)))
    AIPMetric.fit(_skewed(100, 12)).save(tmp_path / "m12")
    with pytest.raises(ValueError, match="d=12"):
        TSAEAIPTrainingSAE(TSAEAIPTrainingSAEConfig(d_in=8, d_sae=16, aip_metric_path=str(tmp_path / "m12")))
    # a checkpoint of another width / architecture
    sae.save_model(tmp_path / "w16")
    other = TSAEAIPTrainingSAE(TSAEAIPTrainingSAEConfig(d_in=8, d_sae=32))
    with pytest.raises(ValueError, match="d_sae=16"):
        other.load_weights_from_checkpoint(tmp_path / "w16")
    raw = TSAETrainingSAE(TSAETrainingSAEConfig(d_in=8, d_sae=16))
    with pytest.raises(ValueError, match="architecture='tsae_aip'"):
        raw.load_weights_from_checkpoint(tmp_path / "w16")
    with pytest.raises(ValueError, match="aip_kind"):
        TSAEAIPTrainingSAEConfig(d_in=8, d_sae=16, aip_kind="whitened")
    with pytest.raises(ValueError, match="normalize_activations"):
        TSAEAIPTrainingSAEConfig(d_in=8, d_sae=16, normalize_activations="layer_norm")
    with pytest.raises(RuntimeError, match="never estimated"):
        TSAEAIPTrainingSAE(TSAEAIPTrainingSAEConfig(d_in=8, d_sae=16)).encode(torch.randn(2, 8))


def test_package_import_registers():
    assert sae_atoms.TSAEAIPTrainingSAE is TSAEAIPTrainingSAE


# --------------------------------------------------------------------------- issue 14: SAELens compatibility
def _step_input(x: torch.Tensor) -> TrainStepInput:
    return TrainStepInput(sae_in=x, coefficients={"l0": 0.05}, dead_neuron_mask=None, n_training_steps=0,
                          is_logging_step=False)


@pytest.mark.parametrize("arch", ["tsae", "tsae_aip"])
def test_training_forward_pass_fires_every_hook(arch):
    sae = _fitted_aip()[0] if arch == "tsae_aip" else TSAETrainingSAE(TSAETrainingSAEConfig(d_in=16, d_sae=48))
    fired = []
    names = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons")
    for n in names:
        getattr(sae, n).add_hook(lambda t, hook, n=n: fired.append(n))
    sae.training_forward_pass(_step_input(_skewed(32, 16)))
    assert set(fired) == set(names)


def test_tsae_aip_logs_raw_mse_and_explained_variance_and_aip_under_its_own_name():
    sae, x = _fitted_aip()
    out = sae.training_forward_pass(_step_input(x[:64]))
    assert torch.equal(out.sae_in, x[:64])  # raw, as SAELens's explained variance reads it
    assert not out.raw_ready and callable(out.losses["mse_loss"])  # not a logging step: made when read
    raw = (out.sae_out - x[:64]).pow(2).sum(-1).mean()
    assert out.raw_ready and torch.allclose(out.losses["mse_loss"](), raw, rtol=1e-4)
    assert torch.allclose(out.sae_out, sae.decode(sae.encode(x[:64])), atol=1e-4)  # the raw reconstruction
    logged = sae.training_forward_pass(replace(_step_input(x[:64]), is_logging_step=True))
    assert logged.raw_ready and torch.allclose(logged.losses["mse_loss"], raw, rtol=1e-4)
    y, y_hat = sae._to_geometry(x[:64]), sae._to_geometry(out.sae_out.detach())
    assert torch.allclose(out.losses["aip_mse_loss"], (y - y_hat).pow(2).sum(-1).mean(), rtol=1e-3)
    assert torch.allclose(out.loss, out.losses["aip_mse_loss"] + out.losses["l0_loss"])  # the paper's loss is optimised


@pytest.mark.parametrize("kind", ["uncentered", "centered"])
def test_tsae_aip_training_save_model_loads_with_sae_load_from_disk(tmp_path, kind):
    sae, x = _fitted_aip(kind=kind)
    assert all(b.is_floating_point() for b in sae.buffers())  # no bool buffer for SAELens helpers
    sae.to(dtype=torch.float64).to(dtype=torch.float32)
    sae.save_model(tmp_path / "train")
    inf = SAE.load_from_disk(str(tmp_path / "train"))
    assert isinstance(inf, TSAEAIPSAE)
    ref = to_inference(sae)
    assert torch.allclose(inf(x[:50]), ref(x[:50]), atol=1e-4)
    back = sae_atoms.load_sae(tmp_path / "train", training=True)
    assert isinstance(back, TSAEAIPTrainingSAE) and back.metric_fitted
    assert "sae_atoms.load_sae" in json.loads((tmp_path / "train" / "cfg.json").read_text())["load_with"]


def test_metric_batches_do_not_count_as_training():
    from sae_lens.config import SAETrainerConfig

    from sae_atoms.training import MetricFirstTrainer

    x = _skewed(2048, 16)
    sae = TSAEAIPTrainingSAE(TSAEAIPTrainingSAEConfig(d_in=16, d_sae=48, n_batches_for_metric=5, l0_coefficient=0.0))
    tcfg = SAETrainerConfig(total_training_samples=10 * 64, train_batch_size_samples=64, lr=1e-3, lr_end=1e-3,
                            lr_warm_up_steps=0, lr_decay_steps=0, device="cpu", dead_feature_window=100,
                            feature_sampling_window=1000, n_checkpoints=0, checkpoint_path=None,
                            save_final_checkpoint=False, logger=LoggingConfig(log_to_wandb=False),
                            n_batches_for_norm_estimate=1)
    trainer = MetricFirstTrainer(cfg=tcfg, sae=sae, data_provider=iter(x.split(64)))
    trained = trainer.fit()
    assert trainer.n_training_steps == 10 and trainer.n_frac_active_samples == 10 * 64
    assert sae._n_metric_batches == 5
    with torch.no_grad():
        l0 = (trained.encode(x[-640:]) > 0).float().sum(-1).mean()
    assert abs(trained.cfg.metadata.l0 - float(l0)) < 0.35 * float(l0) + 1  # not diluted by 5 idle batches


@pytest.mark.parametrize("field,value", [("l0_coefficient", float("nan")), ("jumprelu_init_threshold", float("inf")),
                                         ("jumprelu_bandwidth", float("nan")), ("l0_coefficient", float("inf"))])
@pytest.mark.parametrize("cfg_cls", [TSAETrainingSAEConfig, TSAEAIPTrainingSAEConfig])
def test_non_finite_hyperparameters_rejected(cfg_cls, field, value):
    with pytest.raises(ValueError, match="not finite"):
        cfg_cls(d_in=8, d_sae=16, **{field: value})


def test_config_fields_honoured_or_rejected():
    with pytest.raises(ValueError, match="decoder_init_norm=0.5.*cannot be honoured"):
        TSAETrainingSAEConfig(d_in=8, d_sae=16, decoder_init_norm=0.5)
    with pytest.raises(ValueError, match="covariance_whitening"):
        TSAETrainingSAEConfig(d_in=8, d_sae=16, normalize_activations="covariance_whitening")
    TSAEAIPTrainingSAEConfig(d_in=8, d_sae=16, normalize_activations="expected_average_only_in")


@pytest.mark.parametrize("cfg_cls", [TSAETrainingSAEConfig, TSAEAIPTrainingSAEConfig])
def test_jumprelu_config_with_the_architecture_switched_constructs(cfg_cls):
    import dataclasses
    import warnings

    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAEConfig

    jr = JumpReLUTrainingSAEConfig(d_in=8, d_sae=16)
    own = {f.name for f in dataclasses.fields(cfg_cls)}
    fields = {f.name: getattr(jr, f.name) for f in dataclasses.fields(jr) if f.name in own}
    assert fields["decoder_init_norm"] not in (None, 1.0)  # SAELens's default, refused before
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = cfg_cls(**fields)
        cfg_cls.from_dict(cfg.to_dict())  # a copy (as train_on_activations makes) says nothing again
    said = [w for w in caught if "decoder_init_norm" in str(w.message)]
    assert len(said) == 1 and "moot" in str(said[0].message)
    assert cfg.decoder_init_norm == 1.0
    with pytest.raises(ValueError, match="decoder_init_norm=0.5"):
        cfg_cls(**{**fields, "decoder_init_norm": 0.5})


@pytest.mark.parametrize("cfg_cls", [TSAETrainingSAEConfig, TSAEAIPTrainingSAEConfig])
def test_encode_of_the_wrong_width_is_a_clear_error(cfg_cls, tmp_path):
    from sae_atoms.saes import load_sae
    from sae_atoms.training import train_on_activations

    training = train_on_activations(_skewed(256, 32), cfg_cls(d_in=32, d_sae=64), steps=2, progress=False,
                                    return_training_sae=True)
    to_inference(training).save_model(tmp_path / "sae")
    for sae in (load_sae(tmp_path / "sae"), training):
        for call in (sae.encode, sae):
            with pytest.raises(ValueError, match=r"input has width 16 .* d_in=32; pass activations of"):
                call(torch.randn(4, 16))


def test_tsae_aip_trains_with_expected_average_norm_and_folds_to_raw_space():
    from sae_atoms.training import train_on_activations

    x = _skewed(1024, 16) * 30.0
    cfg = TSAEAIPTrainingSAEConfig(d_in=16, d_sae=48, normalize_activations="expected_average_only_in",
                                   n_batches_for_metric=4)
    sae = train_on_activations(x, cfg, steps=30, batch_size=128, progress=False, return_training_sae=True)
    assert sae.cfg.normalize_activations == "none"
    raw_W = AIPMetric.fit(x, **sae.metric_options()).W.float()  # the folded metric is the raw activations' (estimated on 4 scaled batches)
    assert (sae.aip_W - raw_W).norm() < 0.2 * raw_W.norm()
    r2 = 1 - (sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert r2 > 0.0


def test_to_jumprelu_unit_norm_keeps_outputs_and_carries_saebench_fields():
    sae, x = _fitted_aip()
    jr = to_jumprelu(sae, unit_norm=True, hook_name="blocks.0.hook_resid_post", model_name="tiny", context_size=32,
                     prepend_bos=True)
    assert torch.allclose(jr.W_dec.norm(dim=1), torch.ones(48), atol=1e-5)
    ref = to_inference(sae)
    assert torch.allclose(jr(x[:50]), ref(x[:50]), atol=1e-3)
    n = ref.W_dec.norm(dim=1)
    assert torch.allclose(jr.encode(x[:50]), ref.encode(x[:50]) * n, atol=1e-3)
    for k, v in {"hook_name": "blocks.0.hook_resid_post", "model_name": "tiny", "context_size": 32,
                 "prepend_bos": True}.items():
        assert jr.cfg.metadata[k] == v


@pytest.mark.slow
def test_load_without_sae_atoms_names_load_sae(tmp_path):
    import subprocess
    import sys

    sae, _ = _fitted_aip()
    to_inference(sae).save_model(tmp_path / "inf")
    code = f"from sae_lens import SAE; SAE.load_from_disk({str(tmp_path / 'inf')!r})"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode != 0
    assert "sae_atoms.load_sae" in (tmp_path / "inf" / "cfg.json").read_text()
    assert isinstance(sae_atoms.load_sae(tmp_path / "inf"), TSAEAIPSAE)


def test_docs_of_the_saved_folder_and_the_module_match_behaviour():
    from sae_atoms.saes import tsae_aip
    from sae_atoms.saes.tsae import LOAD_HINT

    # sae_atoms is not on PyPI: the hint written into every cfg.json says how it is installed
    assert "pip install sae_atoms" not in LOAD_HINT and "repository" in LOAD_HINT
    # the module docstring names the config's default metric kind as the default
    default = TSAEAIPTrainingSAEConfig.__dataclass_fields__["aip_kind"].default
    said = tsae_aip.__doc__.split("by default", 1)[1].split(")", 1)[0]
    assert f'aip_kind="{default}"' in said, said


def test_topk_training_keeps_k_codes_a_sample_and_leaves_one_threshold_to_match(tmp_path):
    """``topk_training``: each sample keeps its ``target_l0`` largest positive pre-activations, no
    JumpReLU L0 term is added, every threshold becomes the smallest code kept; the saved inference
    SAE (threshold rule) is matched to the target by ``match_l0``."""
    from sae_atoms.training import match_l0

    sae, x = _fitted_aip()
    sae.cfg.topk_training, sae.cfg.target_l0 = True, 4.0
    step = TrainStepInput(sae_in=x[:128], coefficients={"l0": 1.0}, dead_neuron_mask=None, n_training_steps=0,
                          is_logging_step=False)
    out = sae.training_forward_pass(step)
    assert ((out.feature_acts > 0).sum(-1) == 4).all() and "l0_loss" not in out.losses
    kept = out.feature_acts.detach()[out.feature_acts > 0]
    assert torch.equal(sae.threshold, torch.full_like(sae.threshold, float(kept.min())))
    out.loss.backward()
    assert sae.W_enc.grad.abs().sum() > 0
    sae.save_inference_model(tmp_path / "inf")
    inf = SAE.load_from_disk(tmp_path / "inf")
    match_l0(inf, x, 4.0)
    assert float((inf.encode(x) > 0).sum(-1).float().mean()) == pytest.approx(4.0, rel=0.05)
    for bad in ({"target_l0": None}, {"target_l0": 0.4}):
        with pytest.raises(ValueError, match="topk_training keeps round"):
            TSAEAIPTrainingSAEConfig(d_in=16, d_sae=48, topk_training=True, **bad)


def test_topk_mode_batch_keeps_k_codes_a_sample_on_average_and_gives_a_massive_sample_more():
    """``topk_mode="batch"`` (BatchTopK): the batch keeps ``target_l0 x batch`` codes, the largest of
    the whole batch, so a sample scaled up 100x (a massive token) takes more than ``target_l0``."""
    sae, x = _fitted_aip()
    sae.cfg.topk_training, sae.cfg.target_l0, sae.cfg.topk_mode = True, 4.0, "batch"
    xb = x[:128].clone()
    xb[0] *= 100.0
    step = TrainStepInput(sae_in=xb, coefficients={"l0": 1.0}, dead_neuron_mask=None, n_training_steps=0,
                          is_logging_step=False)
    out = sae.training_forward_pass(step)
    per_sample = (out.feature_acts > 0).sum(-1)
    assert int(per_sample.sum()) == 4 * 128 and int(per_sample[0]) > 4
    pre = out.hidden_pre.detach().relu().flatten()
    assert float(out.feature_acts.detach()[out.feature_acts > 0].min()) == float(pre.topk(4 * 128).values.min())
    with pytest.raises(ValueError, match="topk_mode='tokens'"):
        TSAEAIPTrainingSAEConfig(d_in=16, d_sae=48, topk_training=True, target_l0=4.0, topk_mode="tokens")
