"""train_on_activations (SAETrainer on a fixed set) and `sae-atoms train` (SAELens's runner via our CLI)."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.standard_sae import StandardSAE, StandardTrainingSAEConfig

from sae_atoms.synthetic import evaluate, planted
from sae_atoms.training import bench_tsae_aip_step, train_on_activations
from sae_atoms.tsae import TSAEAIPSAE, TSAEAIPTrainingSAEConfig


@pytest.fixture(scope="module")
def small_planted():
    return planted(d=16, n_atoms=24, k=2, coherence=0.3, n_samples=4000, seed=0)


def test_same_function_trains_standard_jumprelu_and_tsae_aip(small_planted):
    x = small_planted.activations
    out = {}
    for name, cfg, cls in [
        ("standard", StandardTrainingSAEConfig(d_in=16, d_sae=24, l1_coefficient=0.1), StandardSAE),
        ("jumprelu", JumpReLUTrainingSAEConfig(d_in=16, d_sae=24, l0_coefficient=0.1), JumpReLUSAE),
        ("tsae_aip", TSAEAIPTrainingSAEConfig(d_in=16, d_sae=24, l0_coefficient=2.0, jumprelu_init_threshold=1.0), TSAEAIPSAE),
    ]:
        sae = train_on_activations(x, cfg, steps=300, batch_size=256, lr=3e-3, progress=False)
        assert type(sae) is cls
        out[name] = evaluate(sae, small_planted, sae_lens_metrics=False)
        assert out[name]["r2"] > 0.5, (name, out[name])
    # the TSAE in AIP geometry is the sparsest at comparable faithfulness on planted atoms
    assert out["tsae_aip"]["l0"] < out["standard"]["l0"]
    assert out["tsae_aip"]["best_cos_median"] > 0.95


def test_train_on_activations_is_seeded_and_checks_input(small_planted):
    x = small_planted.activations[:1000]
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


def test_bench_case_quick_reports_ratio_and_metric_cost():
    res = bench_tsae_aip_step(quick=True)
    assert {"ratio", "target", "better", "metric_fit_s"} <= set(res)
    assert res["ratio"] > 0 and res["better"] == "lower"


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

    from sae_atoms.training import build_runner

    cfg = LanguageModelSAERunnerConfig(sae=TSAEAIPTrainingSAEConfig(d_in=512, d_sae=1024), model_name="smollm2-135m",
                                       hook_name="blocks.3.hook_resid_post", logger=LoggingConfig(log_to_wandb=False),
                                       verbose=False, checkpoint_path=None, output_path=None)
    with pytest.raises(ValueError, match="--d_in 576"):
        build_runner(cfg, model=real_model)
