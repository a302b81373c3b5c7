"""SAELens's runners with sae_atoms's model loading and checks.

``build_runner(cfg)`` is SAELens's ``LanguageModelSAETrainingRunner`` (or, for a
``MultiSAETrainingRunnerConfig``, its ``MultiSAETrainingRunner``: several SAEs from one forward
pass) with the ``tsae`` / ``tsae_aip`` architectures registered, the model loaded by
``sae_atoms.models`` (the embedded SmolLM2-135M works offline) as ``override_model``, a local
``dataset_path`` (a ``datasets`` folder or a json / jsonl / parquet / txt file) as
``override_dataset``, wandb off, and ``model_from_pretrained_kwargs`` set to the processing the
model was loaded with (SAELens's default ``center_writing_weights=False`` would misdescribe it);
``sae-atoms train [SAELens runner arguments]`` (``sae_atoms.cli``) runs it.

In a multi runner each SAE has its own Adam and schedule but SAELens gives them one ``lr``;
``build_runner(..., lrs={name: lr})`` sets some SAEs' own (``set_learning_rate``), since
architectures train best at different rates (SAEBench tunes it per architecture).
"""

from __future__ import annotations

import dataclasses
import warnings
import zlib
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import TrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from sae_atoms.forward import hook_layer
from sae_atoms.models import check_hook_name, load_model
from sae_atoms.saes.checks import check_training_config
from sae_atoms.saes.tsae_aip import TSAEAIPTrainingSAE, TSAEAIPTrainingSAEConfig


def _load_local_dataset(path: str):
    import datasets

    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "state.json").exists():
            return datasets.load_from_disk(str(p))
        files = sorted(f for f in p.iterdir() if f.suffix in (".json", ".jsonl", ".parquet", ".txt", ".arrow"))
        if not files:
            raise ValueError(f"{p} holds no dataset (no saved `datasets` folder, no json/jsonl/parquet/txt/arrow files).")
        p = files[0]
        data_files = [str(f) for f in files if f.suffix == p.suffix]
    else:
        data_files = [str(p)]
    kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text", ".arrow": "arrow"}.get(p.suffix)
    if kind is None:
        raise ValueError(f"cannot read {p}: use a `datasets` folder (save_to_disk) or a .json/.jsonl/.parquet/.txt/.arrow file.")
    return datasets.load_dataset(kind, data_files=data_files, split="train")


def _hook_width(model, hook_name: str) -> int:
    check_hook_name(model, hook_name)
    layer = hook_layer(hook_name)
    toks = torch.zeros(1, 2, dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=[hook_name],
                                        stop_at_layer=None if layer is None else layer + 1)
    return int(cache[hook_name].shape[-1])


def set_learning_rate(trainer: SAETrainer, lr: float) -> None:
    """Give one SAELens ``SAETrainer`` (e.g. one SAE's in a ``MultiSAETrainer``) its own learning rate
    before its first step: its Adam and its whole schedule (SAELens's ``get_lr_scheduler``: warm-up,
    decay) as if its config had said ``lr``, ``lr_end`` keeping its ratio to ``lr``."""
    from sae_lens.training.optim import get_lr_scheduler

    c = trainer.cfg
    trainer.cfg = dataclasses.replace(c, lr=lr, lr_end=c.lr_end * lr / c.lr)
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
        group.pop("initial_lr", None)  # set again by the new schedule from lr
    trainer.lr_scheduler = get_lr_scheduler(c.lr_scheduler_name, lr=lr, optimizer=trainer.optimizer,
                                            warm_up_steps=c.lr_warm_up_steps, decay_steps=c.lr_decay_steps,
                                            training_steps=c.total_training_steps, lr_end=trainer.cfg.lr_end,
                                            num_cycles=c.n_restart_cycles)


def _runner_class(base: type, lrs: dict[str, float] | None = None) -> type:
    """SAELens's runner ``base`` (single or multi) whose saved weights follow the umask (safetensors
    writes 0600 files, so every ``.safetensors`` under the output and checkpoint folders gets the
    modes a plain ``open`` would, when ``run`` ends) and, in a multi runner, whose SAEs named in ``lrs``
    train at their own learning rate (a resumed run takes it from its checkpoint)."""
    from sae_atoms.io import follow_umask

    class Runner(base):  # type: ignore[misc, valid-type]
        def _run_with_interruption_handling(self, trainer: Any) -> Any:
            if self.cfg.resume_from_checkpoint is None:
                for name, lr in (lrs or {}).items():
                    set_learning_rate(trainer.trainers[name], lr)
            return super()._run_with_interruption_handling(trainer)

        def run(self) -> Any:
            try:
                return super().run()
            finally:
                for root in (self.cfg.output_path, getattr(self.cfg, "checkpoint_path", None)):
                    for f in (Path(root).rglob("*.safetensors") if root and Path(root).is_dir() else ()):
                        follow_umask(f)

    Runner.__name__ = Runner.__qualname__ = base.__name__
    return Runner


def _runner_saes(cfg: Any) -> tuple[dict[str, TrainingSAEConfig], dict[str, str]]:
    """``(sae configs, hook names)`` by name: one (name "") for a single runner config, all for a multi one."""
    if hasattr(cfg, "saes"):
        return dict(cfg.saes), dict(cfg.hook_names_per_sae)
    return {"": cfg.sae}, {"": cfg.hook_name}


def check_runner_buffer(cfg: Any) -> None:
    """SAELens's mixing buffer holds ``n_batches_in_buffer * context_size`` tokens (positions kept by
    ``seqpos_slice``) and must hold one training batch; say so before a model is loaded."""
    if getattr(cfg, "use_cached_activations", False):
        return
    ctx = len(range(cfg.context_size)[slice(*cfg.seqpos_slice)])
    if cfg.n_batches_in_buffer * ctx < cfg.train_batch_size_tokens:
        raise ValueError(
            f"the runner's buffer n_batches_in_buffer * context_size = {cfg.n_batches_in_buffer} * {ctx} = "
            f"{cfg.n_batches_in_buffer * ctx} tokens is smaller than one batch, train_batch_size_tokens="
            f"{cfg.train_batch_size_tokens}; raise n_batches_in_buffer or context_size, or lower train_batch_size_tokens.")


def tokens_read(cfg: Any) -> int:
    """How many tokens (special tokens, which the store drops, not counted) a runner for ``cfg`` reads
    from its dataset, at most: the ``training_tokens``; before the first step, the batches of the
    norm or whitening estimate (``n_batches_for_norm_estimate``) and of a ``tsae_aip`` metric
    (``n_batches_for_metric``, through a loader of its own); and what each of those two loaders
    leaves in its mixing buffer at the end (the buffer and one store batch). A dataset with fewer
    tokens is read again from its first row (SAELens: "beginning new epoch")."""
    saes = _runner_saes(cfg)[0].values()
    batch, ctx = cfg.train_batch_size_tokens, len(range(cfg.context_size)[slice(*cfg.seqpos_slice)])
    leftover = cfg.n_batches_in_buffer * ctx + cfg.store_batch_size_prompts * ctx
    scaled = any(s.normalize_activations in ("expected_average_only_in", "covariance_whitening") for s in saes)
    metric = max((s.n_batches_for_metric for s in saes if isinstance(s, TSAEAIPTrainingSAEConfig)), default=0)
    return (cfg.training_tokens + scaled * cfg.n_batches_for_norm_estimate * batch + leftover
            + (metric * batch + leftover if metric else 0))


def _check_dataset_size(cfg: Any, dataset: Any) -> None:
    """Warn when a pretokenized dataset (rows of ``context_size`` ids) holds fewer tokens than the
    runner reads (``tokens_read``): it would train on its first rows twice. SAELens's own warning
    compares the dataset's rows with the training tokens and so fires for every such dataset."""
    pretokenized = {"tokens", "input_ids"} & set(getattr(dataset, "column_names", None) or ())
    if not pretokenized or cfg.resume_from_checkpoint is not None:
        return
    have, need = len(dataset) * cfg.context_size, tokens_read(cfg)
    if have < need:
        warnings.warn(f"the dataset holds {len(dataset)} rows of {cfg.context_size} tokens ({have}), but this runner "
                      f"reads up to {need} tokens (training_tokens, the norm / metric estimates, its buffers): it will "
                      f"read its first rows again; give it at least {-(-need // cfg.context_size)} rows.", stacklevel=3)


def _runner_overrides(cfg: Any, model: Any, dataset: Any) -> tuple[Any, Any]:
    """The ``override_model`` / ``override_dataset`` of a runner for ``cfg``: ``cfg.model_name`` loaded
    by ``sae_atoms.models.load_model`` (unless ``model`` is given), every SAE's hook checked against its
    ``d_in``, a local ``cfg.dataset_path`` read with ``datasets``. ``cfg.model_from_pretrained_kwargs``
    becomes what the model was loaded with (SAELens records it in each SAE's cfg.json)."""
    check_runner_buffer(cfg)
    saes, hooks = _runner_saes(cfg)
    for sae_cfg in saes.values():
        check_training_config(sae_cfg)
    cfg.logger.log_to_wandb = False
    if model is None:
        model = load_model(cfg.model_name, device=cfg.llm_device or cfg.device)
    if getattr(model, "from_pretrained_kwargs", None) is not None:
        cfg.model_from_pretrained_kwargs = dict(model.from_pretrained_kwargs)
    for name, sae_cfg in saes.items():
        width = _hook_width(model, hooks[name])
        if width != sae_cfg.d_in:
            which = f"the SAE config {name!r}" if name else "the SAE config"
            raise ValueError(f"{which} has d_in={sae_cfg.d_in} but {hooks[name]!r} of {cfg.model_name!r} has width "
                             f"{width}; set --d_in {width}.")
    if dataset is None and cfg.dataset_path and Path(cfg.dataset_path).expanduser().exists():
        dataset = _load_local_dataset(cfg.dataset_path)
    return model, dataset


def _fit_metrics_first(runner: Any, cfg: Any) -> None:
    """Fit the metric of every ``tsae_aip`` SAE without one from the store's first batches (its hook's)."""
    saes = runner.saes if hasattr(runner, "saes") else {"": runner.sae}
    hooks = _runner_saes(cfg)[1]
    todo = {n: s for n, s in saes.items() if isinstance(s, TSAEAIPTrainingSAE) and not s.metric_fitted}
    if not todo or cfg.resume_from_checkpoint is not None:
        return
    store = runner.activations_store
    batches = store.get_multi_hook_data_loader() if hasattr(runner, "saes") else iter(lambda: {hooks[""]: next(store)}, None)
    for _ in range(max(s.cfg.n_batches_for_metric for s in todo.values())):
        batch = next(batches)
        for name, sae in todo.items():
            if not sae.metric_fitted:
                sae.observe_metric_batch(batch[hooks[name]].to(sae.device))


def own_seed(seed: int, name: str) -> int:
    """The seed of the SAE ``name`` in a run seeded ``seed``: a function of both alone."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def seeded_saes(cfg: Any, seed: int) -> dict[str, Any]:
    """The training SAEs of the multi runner config ``cfg``, each initialised from its own seed
    (``own_seed(seed, name)``) in a forked RNG, so its start depends on its name and config, not on
    which SAEs are built before it (SAELens's runner draws them all from the global RNG, in order).
    A ``tsae`` / ``tsae_aip`` SAE's stability objective draws from a generator of that seed too:
    from the global RNG its draws would also move the activation store's shuffles."""
    from sae_lens.registry import get_sae_training_class

    saes = {}
    for name, sae_cfg in cfg.saes.items():
        s = own_seed(seed, name)
        with torch.random.fork_rng():
            torch.manual_seed(s)
            saes[name] = get_sae_training_class(sae_cfg.architecture())[0](sae_cfg)
        if hasattr(saes[name], "stability_generator"):
            saes[name].stability_generator = torch.Generator().manual_seed(s)
    return saes


def build_runner(cfg: Any, model: Any = None, dataset: Any = None, lrs: dict[str, float] | None = None,
                 massive_ratio: float | None = None, init_seed: int | None = None) -> Any:
    """SAELens's runner for ``cfg`` with sae_atoms's model loading and checks: a
    ``LanguageModelSAETrainingRunner`` for a ``LanguageModelSAERunnerConfig``, a
    ``MultiSAETrainingRunner`` for a ``MultiSAETrainingRunnerConfig`` (several SAEs, one forward pass).

    The model (``cfg.model_name`` through ``sae_atoms.models.load_model`` unless given) must have
    each SAE's hook with width ``d_in``; a local ``cfg.dataset_path`` is loaded with ``datasets``;
    the buffer must hold a batch (``check_runner_buffer``). Wandb is forced off. A ``tsae_aip`` SAE's
    metric is fitted from the first ``n_batches_for_metric`` batches of the runner's activation store
    before training. ``lrs`` (multi runner): SAE name -> its own learning rate (``set_learning_rate``);
    the others train at ``cfg.lr``. ``massive_ratio``: leave out of every batch the tokens whose norm
    exceeds that many times the median (``sae_atoms.massive.drop_massive_tokens``), metric fit included.
    ``init_seed`` (multi runner): each SAE from its own seed (``seeded_saes``); None: SAELens's order.
    """
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner

    names = set(cfg.saes) if hasattr(cfg, "saes") else set()  # a single runner's SAE has its cfg.lr
    unknown = sorted(set(lrs or {}) - names)
    if unknown:
        raise ValueError(f"lrs names {unknown}, not SAEs of this multi runner config; name some of {sorted(names)}.")
    model, dataset = _runner_overrides(cfg, model, dataset)
    _check_dataset_size(cfg, dataset)
    with warnings.catch_warnings():  # SAELens's rows-vs-tokens warning (_check_dataset_size says it right)
        warnings.filterwarnings("ignore", message="The training dataset contains fewer samples", category=UserWarning)
        if hasattr(cfg, "saes"):
            from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner

            saes = None if init_seed is None else seeded_saes(cfg, init_seed)
            runner = _runner_class(MultiSAETrainingRunner, lrs)(cfg, override_dataset=dataset, override_model=model,
                                                                override_saes=saes)
        else:
            runner = _runner_class(LanguageModelSAETrainingRunner)(cfg, override_dataset=dataset, override_model=model)
    if massive_ratio is not None:
        from sae_atoms.massive import drop_massive_tokens

        drop_massive_tokens(runner.activations_store, massive_ratio)
    _fit_metrics_first(runner, cfg)
    return runner
