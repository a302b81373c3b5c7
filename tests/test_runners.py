"""SAELens's runners through ``sae_atoms.runners.build_runner`` (single and multi), the hook name of
SAEs trained on activation sets, and the model kwargs a saved SAE records."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig, LoggingConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from sae_atoms import runners as R
from sae_atoms import training as T
from sae_atoms.activations import ActivationSet
from sae_atoms.saes import TSAEAIPSAE, TSAEAIPTrainingSAEConfig

HOOK = "blocks.1.hook_resid_post"


def _acts(hook: str = HOOK, n: int = 64, d: int = 8) -> ActivationSet:
    import datasets

    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    return ActivationSet({hook: x}, datasets.Dataset.from_dict({"i": list(range(n))}))


def test_training_config_sets_the_hook_name():
    assert T.training_config("jumprelu", 8, 16, hook_name=HOOK).metadata.hook_name == HOOK
    assert T.training_config("jumprelu", 8, 16).metadata.hook_name is None


def test_train_on_activations_records_the_activation_sets_hook():
    sae = T.train_on_activations(_acts(), T.training_config("tsae_aip", 8, 16), steps=2, batch_size=16, progress=False)
    assert sae.cfg.metadata.hook_name == HOOK
    with pytest.raises(ValueError, match="hook_name='blocks.0.hook_resid_post'.*blocks.1.hook_resid_post"):
        T.train_on_activations(_acts(), T.training_config("jumprelu", 8, 16, hook_name="blocks.0.hook_resid_post"),
                               steps=2, batch_size=16, progress=False)


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the runner config was checked")


def test_build_runner_refuses_a_buffer_smaller_than_the_batch_before_loading_the_model(monkeypatch, tmp_path):
    monkeypatch.setattr(R, "load_model", _no_model)
    cfg = LanguageModelSAERunnerConfig(sae=TSAEAIPTrainingSAEConfig(d_in=8, d_sae=16), model_name="smollm2-135m",
                                       hook_name=HOOK, context_size=32, n_batches_in_buffer=4,
                                       train_batch_size_tokens=512, logger=LoggingConfig(log_to_wandb=False),
                                       checkpoint_path=None, output_path=None, verbose=False)
    with pytest.raises(ValueError, match=r"n_batches_in_buffer \* context_size = 4 \* 32 = 128 .* train_batch_size_tokens=512"):
        R.build_runner(cfg)


@pytest.fixture
def token_folder(tmp_path):
    import datasets

    g = torch.Generator().manual_seed(0)
    path = tmp_path / "tokens"
    datasets.Dataset.from_dict({"tokens": torch.randint(1, 50, (64, 16), generator=g).tolist()}).save_to_disk(str(path))
    return path


def _tiny_loader(tiny_model, asked: list):
    def load(name, device=None, **kwargs):
        asked.append(name)
        tiny_model.from_pretrained_kwargs = {"fold_ln": False, "center_writing_weights": True}
        return tiny_model
    return load


def test_set_learning_rate_gives_the_schedule_of_a_trainer_built_with_that_lr():
    """Warm-up, constant part and decay of SAELens's schedule, step by step, as if the config had said it."""
    from dataclasses import replace

    from sae_lens.config import SAETrainerConfig

    base = SAETrainerConfig(n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False, total_training_samples=40 * 8,
                            device="cpu", autocast=False, lr=1e-3, lr_end=1e-4, lr_scheduler_name="constant",
                            lr_warm_up_steps=5, adam_beta1=0.9, adam_beta2=0.999, lr_decay_steps=10, n_restart_cycles=1,
                            train_batch_size_samples=8, dead_feature_window=1000, feature_sampling_window=1000,
                            logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=1)
    moved = SAETrainer(cfg=base, sae=JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=4, d_sae=8)), data_provider=iter(()))
    R.set_learning_rate(moved, 3e-3)
    built = SAETrainer(cfg=replace(base, lr=3e-3, lr_end=3e-4), sae=JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=4, d_sae=8)),
                       data_provider=iter(()))
    lrs = []
    for _ in range(40):
        lrs.append((moved.optimizer.param_groups[0]["lr"], built.optimizer.param_groups[0]["lr"]))
        moved.lr_scheduler.step()
        built.lr_scheduler.step()
    assert [a for a, _ in lrs] == pytest.approx([b for _, b in lrs], rel=1e-12)
    assert max(a for a, _ in lrs) == pytest.approx(3e-3) and lrs[0][0] < 1e-3  # warm-up from below, then 3e-3
    assert moved.cfg.lr == 3e-3 and moved.cfg.lr_end == pytest.approx(3e-4)


@pytest.mark.slow
def test_build_runner_multi_trains_tsae_aip_and_jumprelu_and_they_reload(monkeypatch, tmp_path, tiny_model, token_folder):
    """The multi runner gets the same overrides as the single one: our model loader for ``model_name``,
    the local ``dataset_path`` read with ``datasets``; the tsae_aip metric is fitted before training."""
    from sae_lens import MultiSAETrainingRunnerConfig

    asked: list[str] = []
    monkeypatch.setattr(R, "load_model", _tiny_loader(tiny_model, asked))
    out = tmp_path / "out"
    cfg = MultiSAETrainingRunnerConfig(
        saes={"atoms": TSAEAIPTrainingSAEConfig(d_in=32, d_sae=64, n_batches_for_metric=3),
              "features": JumpReLUTrainingSAEConfig(d_in=32, d_sae=64)},
        hook_names=HOOK, model_name="my-model", dataset_path=str(token_folder), streaming=False, context_size=16,
        training_tokens=16 * 24, train_batch_size_tokens=32, store_batch_size_prompts=4, n_batches_in_buffer=4,
        prepend_bos=False, device="cpu", checkpoint_path=None, output_path=str(out), n_eval_batches=1,
        logger=LoggingConfig(log_to_wandb=False))
    seen: dict[str, list[float]] = {}  # each SAE's learning rate at every step
    step = SAETrainer.step
    monkeypatch.setattr(SAETrainer, "step", lambda t, b: seen.setdefault(t.sae.cfg.architecture(), []).append(
        t.optimizer.param_groups[0]["lr"]) or step(t, b))
    with pytest.raises(ValueError, match=r"lrs names \['nope'\]"):
        R.build_runner(cfg, lrs={"nope": 1e-3})
    runner = R.build_runner(cfg, lrs={"features": 4 * cfg.lr})
    assert asked == ["my-model"] and runner.saes["atoms"].metric_fitted
    saes = runner.run()
    assert set(saes) == {"atoms", "features"}
    assert len(seen["jumprelu"]) == len(seen["tsae_aip"]) == 12
    # what it read (metric batches, training, buffers) is within tokens_read, and more than it trained on
    assert cfg.training_tokens < runner.activations_store.n_dataset_processed * 16 <= R.tokens_read(cfg) < 64 * 16
    assert seen["jumprelu"] == pytest.approx([4 * lr for lr in seen["tsae_aip"]], rel=1e-9)  # the whole schedule, x4
    atoms, features = SAE.load_from_disk(out / "atoms"), SAE.load_from_disk(out / "features")
    assert isinstance(atoms, TSAEAIPSAE) and not torch.equal(atoms.aip_W, torch.eye(32))
    assert features.cfg.architecture() == "jumprelu" and features.cfg.metadata.hook_name == HOOK
    saved = json.loads((out / "atoms" / "cfg.json").read_text())
    assert saved["metadata"]["model_from_pretrained_kwargs"] == tiny_model.from_pretrained_kwargs


@pytest.mark.slow
def test_build_runner_init_seed_makes_an_saes_training_independent_of_the_others(monkeypatch, tmp_path, tiny_model,
                                                                                 token_folder):
    """With ``init_seed`` an SAE starts from a seed of its own name and trains on the same batches
    whatever shares the runner: here a tsae with the ``all`` stability objective (random draws every
    step) built before it. Without it, SAELens draws every start from one stream, in order."""
    from sae_lens import MultiSAETrainingRunnerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    from sae_atoms.saes import TSAETrainingSAEConfig

    monkeypatch.setattr(R, "load_model", _tiny_loader(tiny_model, []))
    stable = TSAETrainingSAEConfig(d_in=32, d_sae=64, stability_coefficient=1.0, stability_design="all", stability_rows=16)

    def trained(saes: dict, init_seed: int | None, run: bool = True) -> tuple[dict, dict | None]:
        cfg = MultiSAETrainingRunnerConfig(
            saes=saes, hook_names=HOOK, model_name="my-model", dataset_path=str(token_folder), streaming=False,
            context_size=16, training_tokens=16 * 24, train_batch_size_tokens=32, store_batch_size_prompts=4,
            n_batches_in_buffer=4, prepend_bos=False, device="cpu", checkpoint_path=None,
            output_path=str(tmp_path / f"out{len(list(tmp_path.iterdir()))}"), n_eval_batches=1, logger=LoggingConfig(log_to_wandb=False))
        torch.manual_seed(0)
        runner = R.build_runner(cfg, init_seed=init_seed)
        start = {n: s.W_dec.detach().clone() for n, s in runner.saes.items()}
        return start, ({n: s.W_dec.detach().clone() for n, s in runner.run().items()} if run else None)

    topk = TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4)
    alone_start, alone = trained({"features": topk}, init_seed=0)
    beside_start, beside = trained({"stable": stable, "features": topk}, init_seed=0)
    assert torch.equal(alone_start["features"], beside_start["features"])
    assert torch.equal(alone["features"], beside["features"])  # same batches: the tsae's draws left the shuffles alone
    assert not torch.equal(alone["features"], alone_start["features"])
    assert not torch.equal(trained({"twin": topk}, init_seed=0, run=False)[0]["twin"], alone_start["features"])
    assert not torch.equal(trained({"stable": stable, "features": topk}, None, run=False)[0]["features"],
                           trained({"features": topk}, None, run=False)[0]["features"])  # SAELens's order


@pytest.mark.slow
def test_build_runner_single_records_the_models_kwargs(monkeypatch, tmp_path, tiny_model, token_folder):
    asked: list[str] = []
    monkeypatch.setattr(R, "load_model", _tiny_loader(tiny_model, asked))
    cfg = LanguageModelSAERunnerConfig(sae=JumpReLUTrainingSAEConfig(d_in=32, d_sae=64), model_name="my-model",
                                       hook_name=HOOK, dataset_path=str(token_folder), streaming=False,
                                       context_size=16, training_tokens=16 * 8, train_batch_size_tokens=32,
                                       store_batch_size_prompts=4, n_batches_in_buffer=4, prepend_bos=False,
                                       device="cpu", checkpoint_path=None, output_path=str(tmp_path / "out"),
                                       n_eval_batches=1, logger=LoggingConfig(log_to_wandb=False), verbose=False)
    assert cfg.model_from_pretrained_kwargs == {"center_writing_weights": False}  # SAELens's default, not our load
    R.build_runner(cfg).run()
    saved = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert asked == ["my-model"] and saved["metadata"]["model_from_pretrained_kwargs"] == tiny_model.from_pretrained_kwargs


@pytest.mark.real_model
def test_load_model_records_the_processing_it_applied(monkeypatch):
    """``model.from_pretrained_kwargs`` (what build_runner writes to cfg.json) is what load_model passed to
    TransformerLens's weight processing (for SmolLM2's RMSNorm TransformerLens then skips the centring,
    as its ``from_pretrained`` would with the same kwargs)."""
    from sae_lens import HookedSAETransformer

    from sae_atoms.models import load_model

    seen: list[dict] = []
    process = HookedSAETransformer.load_and_process_state_dict

    def spy(self, state, **kwargs):
        seen.append(kwargs)
        return process(self, state, **kwargs)

    monkeypatch.setattr(HookedSAETransformer, "load_and_process_state_dict", spy)
    import torch

    from sae_atoms.models import _load_local, embedded_model_path

    processed = _load_local(embedded_model_path(), torch.device("cpu"), torch.float32)  # what the cached weights are
    assert len(seen) == 1 and processed.from_pretrained_kwargs == seen[0]
    assert load_model("smollm2-135m", device="cpu").from_pretrained_kwargs == seen[0]
    assert seen[0]["center_writing_weights"] is True  # SAELens's default record said False


@pytest.mark.slow
@pytest.mark.real_model
def test_multi_runner_trains_tsae_aip_beside_jumprelu_and_topk_on_the_real_model(real_model, tmp_path):
    """One ``MultiSAETrainingRunner`` pass over human-written text trains ``tsae_aip`` (its metric from
    the runner's own first batches) beside SAELens's ``jumprelu`` and ``topk``; each saves, reloads
    with ``SAE.load_from_disk`` and gives the trained SAE's outputs on the model's activations."""
    import itertools

    import datasets
    from sae_lens import MultiSAETrainingRunnerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    from sae_atoms.corpus import load_corpus
    from sae_atoms.saes.tsae_aip import to_inference
    from tests.conftest import REAL_HOOK

    docs = list(itertools.islice(load_corpus("human-en:train").documents(), 40))
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "text"))
    d, width, out = real_model.cfg.d_model, 2 * real_model.cfg.d_model, tmp_path / "out"
    cfg = MultiSAETrainingRunnerConfig(
        saes={"atoms": TSAEAIPTrainingSAEConfig(d_in=d, d_sae=width, n_batches_for_metric=2),
              "jumprelu": JumpReLUTrainingSAEConfig(d_in=d, d_sae=width),
              "topk": TopKTrainingSAEConfig(d_in=d, d_sae=width, k=32)},
        hook_names=REAL_HOOK, model_name="smollm2-135m", dataset_path=str(tmp_path / "text"), streaming=False,
        context_size=64, training_tokens=256 * 6, train_batch_size_tokens=256, store_batch_size_prompts=4,
        n_batches_in_buffer=4, device="cpu", checkpoint_path=None, output_path=str(out), n_eval_batches=1,
        logger=LoggingConfig(log_to_wandb=False))
    runner = R.build_runner(cfg, model=real_model)
    assert runner.saes["atoms"].metric_fitted  # before the first step, from the store's batches
    trained = runner.run()
    _, cache = real_model.run_with_cache("The King James Bible was printed in 1611.", names_filter=REAL_HOOK)
    x = cache[REAL_HOOK][0]
    for name, arch in (("atoms", "tsae_aip"), ("jumprelu", "jumprelu"), ("topk", "topk")):
        loaded = SAE.load_from_disk(out / name)
        assert loaded.cfg.architecture() == arch and loaded.cfg.metadata.hook_name == REAL_HOOK
        torch.testing.assert_close(loaded(x), to_inference(trained[name])(x), atol=1e-4, rtol=1e-4)
    atoms = SAE.load_from_disk(out / "atoms")
    assert isinstance(atoms, TSAEAIPSAE) and not torch.allclose(atoms.aip_W, torch.eye(d))


def test_build_runner_warns_when_the_dataset_is_shorter_than_what_the_runner_reads(monkeypatch, tmp_path, tiny_model,
                                                                                   token_folder):
    """64 rows of 16 tokens: enough to train on 640 tokens, not once the metric's batches and the buffers are
    read too (tokens_read); the warning says how many rows it needs, and SAELens's rows-vs-tokens one is gone."""
    import warnings

    from sae_lens import MultiSAETrainingRunnerConfig

    monkeypatch.setattr(R, "load_model", _tiny_loader(tiny_model, []))

    def config(tokens: int):
        return MultiSAETrainingRunnerConfig(
            saes={"atoms": TSAEAIPTrainingSAEConfig(d_in=32, d_sae=64, n_batches_for_metric=8)}, hook_names=HOOK,
            model_name="my-model", dataset_path=str(token_folder), streaming=False, context_size=16, training_tokens=tokens,
            train_batch_size_tokens=32, store_batch_size_prompts=4, n_batches_in_buffer=4, prepend_bos=False, device="cpu",
            checkpoint_path=None, output_path=str(tmp_path / "out"), logger=LoggingConfig(log_to_wandb=False))

    assert R.tokens_read(config(640)) == 640 + 8 * 32 + 2 * (4 * 16 + 4 * 16)  # training, metric, two loaders' buffers
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        R.build_runner(config(640))
    said = [str(w.message) for w in got]
    assert any("holds 64 rows of 16 tokens (1024)" in m and f"at least {-(-R.tokens_read(config(640)) // 16)} rows" in m for m in said), said
    assert not any("fewer samples" in m for m in said)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        R.build_runner(config(256))  # 256 + 256 + 256 = 768 tokens: it fits
    assert not any("rows of 16 tokens" in str(w.message) for w in got)


@pytest.mark.slow
@pytest.mark.real_model
def test_build_runner_with_massive_ratio_leaves_the_massive_tokens_out_of_the_stores_batches(real_model):
    """Rows starting mid-sentence give SmolLM2 a massive token right after BOS (an attention sink):
    the store's batches carry them unless ``massive_ratio`` is set, and then carry every other token."""
    import datasets
    from sae_lens import MultiSAETrainingRunnerConfig

    from sae_atoms.corpus import split_documents, token_rows
    from sae_atoms.evals.downstream import special_ids
    from sae_atoms.massive import typical
    from tests.conftest import REAL_HOOK

    rows = token_rows(split_documents("human-en", "train")[:400], real_model, 128, 128 * 64, "documents")[:64]
    with torch.no_grad():
        _, cache = real_model.run_with_cache(torch.tensor(rows), names_filter=REAL_HOOK)
    kept = ~torch.isin(torch.tensor(rows), torch.tensor(special_ids(real_model)))  # the store drops special tokens
    n_massive = int((~typical(cache[REAL_HOOK][kept])).sum())
    assert n_massive >= 1  # the data has some: a row's first token after BOS, mid-sentence
    d = real_model.cfg.d_model
    seen = {}
    for ratio in (None, 10.0):
        cfg = MultiSAETrainingRunnerConfig(
            saes={"atoms": TSAEAIPTrainingSAEConfig(d_in=d, d_sae=2 * d, n_batches_for_metric=1)}, hook_names=REAL_HOOK,
            model_name="smollm2-135m", dataset_path="", streaming=False, context_size=128, training_tokens=128 * 64,
            train_batch_size_tokens=128 * 8, store_batch_size_prompts=64, n_batches_in_buffer=8, device="cpu",
            checkpoint_path=None, output_path=None, n_eval_batches=0, exclude_special_tokens=True,
            logger=LoggingConfig(log_to_wandb=False))
        runner = R.build_runner(cfg, model=real_model, dataset=datasets.Dataset.from_dict({"tokens": rows}),
                                massive_ratio=ratio)
        runner.activations_store.dataset = datasets.Dataset.from_dict({"tokens": rows})  # read the 64 rows again
        runner.activations_store.iterable_sequences = runner.activations_store._iterate_tokenized_sequences()
        seen[ratio] = runner.activations_store._get_filtered_multi_hook_llm_batch()[REAL_HOOK]
    assert len(seen[None]) - len(seen[10.0]) == n_massive
    assert int((~typical(seen[None])).sum()) == n_massive and typical(seen[10.0]).all()
