"""``sae_atoms.evals.downstream``: run_evals's figures for many SAEs in shared passes equal run_evals's own."""

from __future__ import annotations

import copy
import math

import pytest
import torch


def _saes(d: int, hook: str) -> dict:
    """Two SAEs at ``hook`` with random weights that fire: jumprelu (low thresholds) and topk (k 8)."""
    from sae_lens.registry import get_sae_training_class

    from sae_atoms.training import training_config

    out = {}
    for i, arch in enumerate(("jumprelu", "topk")):
        torch.manual_seed(i)
        sae = get_sae_training_class(arch)[0](training_config(arch, d, 2 * d, hook_name=hook, **({"k": 8} if arch == "topk" else {})))
        if hasattr(sae, "threshold"):
            sae.threshold.data.fill_(0.05)
        sae.cfg.metadata.prepend_bos, sae.cfg.metadata.context_size = True, 32
        out[arch] = sae
    return out


@pytest.mark.real_model
def test_shared_passes_equal_run_evals_on_the_real_model(real_model):
    """CE-loss score, KL score, L0 and explained variance from ``downstream_scores`` and
    ``sparsity_and_variance`` equal ``run_evals``'s on the same rows (BOS excluded by both)."""
    import datasets
    from sae_lens import ActivationsStore
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    from sae_atoms.corpus import hook_activations, load_corpus, model_tokenizer, packed_rows
    from sae_atoms.evals.downstream import downstream_scores, sparsity_and_variance
    from tests.conftest import REAL_HOOK

    tokenize, bos = model_tokenizer(real_model)
    docs = load_corpus("human-en:heldout").documents()
    rows = [r for _, r in zip(range(4), packed_rows(docs, tokenize, 32, bos))]
    saes = _saes(real_model.cfg.d_model, REAL_HOOK)
    twin = copy.deepcopy(saes["jumprelu"])  # the same SAE twice: a paired difference of exactly 0
    shared = downstream_scores(saes | {"twin": twin}, real_model, rows, REAL_HOOK, batch_prompts=3,
                               reference={"topk": "jumprelu", "twin": "jumprelu"})
    assert shared["twin"]["ce_loss_score_vs_ref"] == 0.0 and shared["twin"]["ce_loss_score_vs_ref_se"] == 0.0
    assert shared["twin"]["ce_loss_score_se"] > 0  # the unpaired SE is not
    assert shared["topk"]["ce_loss_score_vs_ref"] == shared["topk"]["ce_loss_score"] - shared["jumprelu"]["ce_loss_score"]
    assert shared["topk"]["ce_loss_score_vs_ref_se"] > 0 and "ce_loss_score_vs_ref" not in shared["jumprelu"]
    x = hook_activations(real_model, rows, REAL_HOOK)
    for name, sae in saes.items():
        store = ActivationsStore.from_sae(real_model, sae, datasets.Dataset.from_dict({"tokens": rows}), context_size=32,
                                          streaming=False, store_batch_size_prompts=2)
        cfg = EvalConfig(batch_size_prompts=2, n_eval_reconstruction_batches=2, compute_kl=True, compute_ce_loss=True,
                         n_eval_sparsity_variance_batches=2, compute_sparsity_metrics=True, compute_variance_metrics=True)
        got, _ = run_evals(sae, store, real_model, ActivationScaler(), cfg)
        flat = {k: v for g in got.values() for k, v in g.items()}
        mine = shared[name] | sparsity_and_variance(sae, x)
        for key in ("ce_loss_score", "kl_div_score", "ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation",
                    "kl_div_with_sae", "l0", "explained_variance"):
            assert mine[key] == pytest.approx(flat[key], rel=1e-4, abs=1e-5), key
        assert 0.0 < flat["l0"] < 2 * real_model.cfg.d_model


def test_clustered_se_is_the_usual_se_for_singletons_and_sees_shared_cluster_noise():
    from sae_atoms.evals.downstream import clustered_se

    g = torch.Generator().manual_seed(0)
    v = torch.randn(500, generator=g, dtype=torch.float64)
    assert clustered_se(v, torch.arange(500)) == pytest.approx(float(v.std() / 500 ** 0.5), rel=1e-9)
    # 400 clusters of 50 values sharing an offset: the mean's true SE is sqrt(1/400 + 1/20000) ~ 0.0505,
    # while values treated as independent give sqrt(2/20000) ~ 0.0100
    c = torch.arange(400).repeat_interleave(50)
    v = torch.randn(400, generator=g, dtype=torch.float64)[c] + torch.randn(20_000, generator=g, dtype=torch.float64)
    assert clustered_se(v, c) == pytest.approx((1 / 400 + 1 / 20_000) ** 0.5, rel=0.15)
    assert float(v.std() / len(v) ** 0.5) < 0.3 * clustered_se(v, c)
    assert math.isnan(clustered_se(v, torch.zeros(len(v), dtype=torch.long)))  # one cluster: no estimate
