"""Training SAEs: on a fixed activation set (``train_on_activations``) and through SAELens's runner.

``train_on_activations(activations, cfg)`` trains any registered SAELens architecture (``standard``,
``jumprelu``, ``tsae``, ``tsae_aip``, ...) with SAELens's own ``SAETrainer`` (Adam, gradient clipping
at 1, coefficient warm-ups, lr schedules) from a data provider that reshuffles the fixed set every
epoch: the paper's setting (subject-token activations). For ``tsae_aip`` the metric is fitted on the
whole set up front (no training step is spent on it) unless one is given.

Defaults: ``DEFAULT_STEPS`` steps of ``batch_size=512`` at ``lr=1e-3`` (5% linear warm-up, linear decay
to ``lr/10`` over the last 20%); the rarer settings are ``TrainOptions``. Each study names its own
length in its config (``FrontierConfig.steps``, ``CapacityConfig.steps``, the main job's ``Settings``).

SAELens's runners (``build_runner``) are ``sae_atoms.runners``.

``training_config(architecture, d_in, d_sae, hook_name=...)``: the training config of any registered
architecture with its defaults (``train_on_activations`` takes a one-hook set's hook when it has none).

Sparsity control (``train_on_activations(..., target_l0=T)``), the same for every unit kind so
that units are compared at matched L0:

- threshold units (``jumprelu``, ``tsae``, ``tsae_aip``, with SAELens's ``quadratic`` L0 loss
  ``2/T (L0 - T)^2`` and ``jumprelu_ste_to_input=True`` so the loss reaches the pre-activations):
  each unit's threshold starts at the ``1 - T / d_sae`` quantile of its initial pre-activations
  (``calibrate_thresholds``: L0 = T from the first step), and after training one common factor on
  all thresholds sets the mean L0 to T (``match_l0``, bisection) on the training rows or on the
  rows given as ``match_on`` (the frontier matches on entities left out of training). Both are
  needed: thresholds move by about ``lr`` per step while the encoder outruns them, so a long run
  without them ends far above T;
- ``standard`` (ReLU + L1): the L1 coefficient is scaled every step by ``(L0 / T)^rate``
  (``_control_l1``), then one common encoder-bias shift sets the L0 to T (``match_l0``;
  the controller alone stays above T because L1 shrinks amplitudes before it silences units);
- ``topk`` / ``batchtopk``: ``k = T`` in the config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, Iterator

import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import SAE, TrainingSAE, TrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from sae_atoms.activations import as_matrix
from sae_atoms.models import resolve_device
from sae_atoms.saes.checks import check_batch, check_number, check_training_config, check_width
from sae_atoms.saes.tsae_aip import TSAEAIPTrainingSAE, to_inference

__all__ = ["train_on_activations", "fit_sae", "TrainOptions", "training_config", "calibrate_thresholds", "match_l0",
           "l0_counter", "input_scale", "MetricFirstTrainer", "DEFAULT_STEPS", "calibrate_at_first_step"]
DEFAULT_STEPS = 1500  # the library default; studies set their own (FrontierConfig.steps, ...)
DEFAULT_BATCH_SIZE = 512
DEFAULT_LR = 1e-3


@contextlib.contextmanager
def _tqdm_disabled(disable: bool) -> Iterator[None]:
    """SAETrainer always opens a tqdm bar: swap its module's ``tqdm`` for a disabled one meanwhile."""
    from sae_lens.training import sae_trainer

    if not disable:
        yield
        return
    old = sae_trainer.tqdm
    sae_trainer.tqdm = functools.partial(old, disable=True)
    try:
        yield
    finally:
        sae_trainer.tqdm = old


def _shuffled_batches(x: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless minibatches of ``x``, reshuffled every epoch (drops the last partial batch when n >= batch)."""
    gen, n = torch.Generator(device="cpu").manual_seed(seed), x.shape[0]
    full = n if n < batch_size else n - n % batch_size
    while True:
        perm = torch.randperm(n, generator=gen).to(x.device)
        for i in range(0, full, batch_size):
            yield x[perm[i:i + batch_size]]


class MetricFirstTrainer(SAETrainer):
    """SAELens's ``SAETrainer``; a ``tsae_aip`` SAE without a metric gets it from the first batches
    before the first step, and those batches count as nothing (no step, no sample, no L0). Its Adam
    runs torch's multi-tensor (``foreach``) path, the default on GPUs only: the same arithmetic bit
    for bit in a few large kernels, not ~10 small ones per parameter (a CPU's step at small shapes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for group in self.optimizer.param_groups:
            group["foreach"] = True

    def step(self, batch: torch.Tensor):
        sae = self.sae
        if isinstance(sae, TSAEAIPTrainingSAE):
            while not sae.metric_fitted:
                sae.observe_metric_batch(self.activation_scaler(batch.to(sae.device)))
                batch = next(self.data_provider)
        return super().step(batch)


def _hook_of(activations: Any, hook_name: str | None) -> str | None:
    """The hook an SAE trained on ``activations`` reads: that of a one-hook ``ActivationSet`` (which must
    agree with a ``hook_name`` already in the config), else ``hook_name``."""
    hooks = getattr(activations, "hook_names", None)
    if not isinstance(hooks, list) or len(hooks) != 1:
        return hook_name
    if hook_name is not None and hook_name != hooks[0]:
        raise ValueError(f"the config says hook_name={hook_name!r} but the activations come from {hooks[0]!r}; "
                         f"set training_config(..., hook_name={hooks[0]!r}) or leave it unset.")
    return hooks[0]


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """The rarer settings of ``train_on_activations`` / ``fit_sae`` (every field keeps its default
    unless given: ``train_on_activations(x, cfg, steps=..., batch_size=256)`` sets them by keyword).

    epochs: training length in passes over the rows instead of ``steps`` (at most one of the two).
    batch_size, lr: Adam minibatch and peak learning rate (linear warm-up over ``lr_warm_up_frac``
        of the steps, linear decay to ``lr/10`` over the last ``lr_decay_frac``).
    progress: tqdm bar (SAELens's). device: where to train (default: cuda if available).
    metric: an ``AIPMetric`` for ``tsae_aip`` (default: fitted on the activations).
    return_training_sae: return the training SAE instead of the inference one.
    autocast: SAELens's ``autocast``: each step's forward pass under ``torch.autocast`` in bfloat16
        (matrix products in bfloat16, weights and optimiser state in float32).
    """

    epochs: float | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    progress: bool = True
    device: str | torch.device | None = None
    metric: Any = None
    lr_warm_up_frac: float = 0.05
    lr_decay_frac: float = 0.2
    return_training_sae: bool = False
    autocast: bool = False


def _options(options: TrainOptions | None, fields: dict[str, Any]) -> TrainOptions:
    """``options`` (default ``TrainOptions()``) with ``fields`` replaced; an unknown field is a TypeError."""
    return dataclasses.replace(options or TrainOptions(), **fields)


def train_on_activations(activations: Any, cfg: TrainingSAEConfig, *, steps: int | None = None, seed: int = 0,
                         target_l0: float | None = None, match_on: Any = None, options: TrainOptions | None = None,
                         **fields: Any) -> SAE[Any]:
    """Train an SAE of any registered architecture on a fixed activation set with ``SAETrainer``.

    Args:
        activations: ``[n, d_in]`` tensor, or an ``ActivationSet`` (``.x()``) with one hook (it becomes
            ``cfg.metadata.hook_name`` of the SAE when the config names none).
        cfg: any SAELens ``TrainingSAEConfig`` (``StandardTrainingSAEConfig``,
            ``JumpReLUTrainingSAEConfig``, ``TSAETrainingSAEConfig``, ``TSAEAIPTrainingSAEConfig``).
        steps: training length (default ``DEFAULT_STEPS``; or ``epochs`` in the options).
        seed: initialisation and batch order.
        target_l0: the mean number of active units wanted (module docstring: how each kind is held
            to it); None trains with the config's own sparsity settings.
        match_on: rows (tensor or ``ActivationSet``) on which the final ``match_l0`` sets the mean
            L0 to ``target_l0`` (default: the training rows). Rows of entities not trained on
            match L0 out of sample (``sae_atoms.experiments.frontier``).
        options, fields: the rarer settings (``TrainOptions``), as an object and/or by field name.

    Returns:
        The trained inference SAE (``SAE.load_from_disk`` would give the same; for ``tsae_aip``
        its weights are folded into raw space, ``W_dec`` rows are the atoms).
    """
    opt = _options(options, fields)
    x = as_matrix(activations, min_rows=2)
    steps = _check_training_args(cfg, x, steps, opt, target_l0)
    match_rows = _match_rows(match_on, cfg, target_l0)
    dev = resolve_device(opt.device)
    cfg = TrainingSAEConfig.from_dict({**cfg.to_dict(), "device": str(dev)})
    cfg.metadata.hook_name = _hook_of(activations, cfg.metadata.hook_name)
    torch.manual_seed(seed)
    sae = get_sae_training_class(cfg.architecture())[0](cfg).to(dev)
    x = x.to(dev, sae.dtype)
    if isinstance(sae, TSAEAIPTrainingSAE):
        if opt.metric is not None:
            sae.set_metric(opt.metric)
        elif not sae.metric_fitted and cfg.normalize_activations == "none":
            sae.fit_metric(x)  # else the trainer estimates it from its first (scaled) batches
    if target_l0 is not None:
        _hold_to_l0(sae, x, float(target_l0))
    trained = fit_sae(sae, x, steps=steps, seed=seed, options=opt)
    if opt.return_training_sae:
        return trained
    inference = to_inference(trained)
    if target_l0 is not None and (hasattr(inference, "threshold") or cfg.architecture() == "standard"):
        rows = x if match_rows is None else match_rows.to(dev, x.dtype)
        match_l0(inference, rows, float(target_l0))
    return inference


def _match_rows(match_on: Any, cfg: Any, target_l0: float | None) -> torch.Tensor | None:
    """The ``match_on`` rows as a checked ``[m, d_in]`` matrix (None when not given)."""
    if match_on is None:
        return None
    rows = as_matrix(match_on, what="match_on")
    if target_l0 is None:
        raise ValueError("match_on sets the rows on which L0 is matched to target_l0; give target_l0 too.")
    check_width(rows, cfg.d_in, "match_on set", "give rows of the hook the activations come from.")
    check_batch(rows, cfg.d_in, None, what="match_on set")
    return rows


def _check_training_args(cfg: Any, x: torch.Tensor, steps: int | None, opt: TrainOptions,
                         target_l0: float | None) -> int:
    """Check ``train_on_activations``'s arguments before anything trains; returns the number of steps."""
    if not isinstance(cfg, TrainingSAEConfig):
        raise TypeError(f"cfg must be an SAELens TrainingSAEConfig (e.g. TSAEAIPTrainingSAEConfig); got {type(cfg).__name__}.")
    check_training_config(cfg)
    check_batch(x, cfg.d_in, None, what="activation set")
    if steps is not None and opt.epochs is not None:
        raise ValueError("give steps or epochs, not both.")
    check_number("batch_size", opt.batch_size, 1, integer=True)
    check_number("lr", opt.lr, 0, open_low=True)
    check_number("lr_warm_up_frac", opt.lr_warm_up_frac, 0, 1)
    check_number("lr_decay_frac", opt.lr_decay_frac, 0, 1)
    if target_l0 is not None:
        check_number("target_l0", target_l0, 0, cfg.d_sae, open_low=True)
    if opt.epochs is not None:
        check_number("epochs", opt.epochs, 0, open_low=True)
        return max(1, math.ceil(opt.epochs * x.shape[0] / min(opt.batch_size, x.shape[0])))
    if steps is None:
        return DEFAULT_STEPS
    check_number("steps", steps, 1, integer=True)
    return int(steps)


def fit_sae(sae: TrainingSAE, x: torch.Tensor, *, steps: int, seed: int = 0, options: TrainOptions | None = None,
            **fields: Any) -> TrainingSAE:
    """Train an already built (and possibly hand-initialised) training SAE on ``x`` ``[n, d_in]`` with
    SAELens's ``SAETrainer``; returns the trained training SAE (schedule and ``options`` / ``fields``:
    ``TrainOptions``; ``device``, ``metric`` and ``epochs`` are not used here)."""
    opt = _options(options, fields)
    bs = min(opt.batch_size, x.shape[0])
    dev = sae.W_dec.device
    tcfg = SAETrainerConfig(
        total_training_samples=steps * bs, train_batch_size_samples=bs, lr=opt.lr, lr_end=opt.lr / 10,
        lr_warm_up_steps=int(opt.lr_warm_up_frac * steps), lr_decay_steps=int(opt.lr_decay_frac * steps),
        device=str(dev), dead_feature_window=max(1, min(1000, steps // 4)),
        feature_sampling_window=max(1, min(2000, steps)), n_checkpoints=0, checkpoint_path=None,
        save_final_checkpoint=False, logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=max(1, min(100, x.shape[0] // bs)), autocast=opt.autocast,
    )
    trainer = MetricFirstTrainer(cfg=tcfg, sae=sae, data_provider=_shuffled_batches(x.to(dev, sae.dtype), bs, seed))
    with _tqdm_disabled(not opt.progress):
        return trainer.fit()


def input_scale(cfg: Any, x: torch.Tensor) -> float:
    """The factor SAELens's trainer multiplies inputs by: ``sqrt(d_in) / E||x||`` for
    ``normalize_activations="expected_average_only_in"``, else 1."""
    if getattr(cfg, "normalize_activations", "none") != "expected_average_only_in":
        return 1.0
    return math.sqrt(x.shape[1]) / float(x.float().norm(dim=1).mean())


@torch.no_grad()
def calibrate_thresholds(sae: Any, x: torch.Tensor, target_l0: float, max_rows: int = 8192) -> None:
    """Set each unit's threshold to the ``1 - target_l0 / d_sae`` quantile of its pre-activations on
    ``x`` (as the SAE sees it), so that every unit fires at rate ``target_l0 / d_sae`` and L0 = target."""
    _, pre = sae.encode_with_hidden_pre(x[:max_rows])
    q = 1.0 - float(target_l0) / sae.cfg.d_sae
    thr = torch.quantile(pre.float(), q, dim=0).clamp_min(1e-4)
    sae.threshold.data.copy_(thr.to(sae.threshold.dtype))


@torch.no_grad()
def match_l0(sae: Any, x: torch.Tensor, target_l0: float, rel_tol: float = 0.01, iters: int = 60,
             batch_size: int = 4096, max_cached: int = 2 ** 26) -> float:
    """Set the mean L0 of an inference SAE on ``x`` to ``target_l0`` by bisection on one number:
    threshold SAEs (JumpReLU-type) scale every threshold by a common factor ``f`` (returned); ReLU
    SAEs (``standard``) shift every encoder bias by a common ``-delta`` (returned), a soft threshold.
    Decoder and encoder weights are untouched. Each step counts with ``l0_counter`` (``max_cached``:
    its memory bound, in pre-activations kept; 0 encodes ``x`` at every step)."""
    if hasattr(sae, "threshold"):
        param, base = sae.threshold, sae.threshold.data.clone().clamp_min(1e-6)
        level, lo, hi = (lambda v: base * math.exp(v)), -12.0, 12.0
    else:
        param, base = sae.b_enc, sae.b_enc.data.clone()
        scale = float(base.abs().max()) + float((x.float().norm(dim=1).mean()))
        level, lo, hi = (lambda v: base - v), -scale, scale
    count = l0_counter(sae, x, batch_size, max_cached)

    def l0_at(v: float) -> float:
        param.data.copy_(level(v))
        return count()

    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        l0 = l0_at(mid)
        if abs(l0 - target_l0) <= rel_tol * target_l0:
            break
        lo, hi = (mid, hi) if l0 > target_l0 else (lo, mid)
    l0_at(mid)
    return math.exp(mid) if hasattr(sae, "threshold") else mid


def l0_counter(sae: Any, x: torch.Tensor, batch_size: int = 4096,
               max_cached: int = 2 ** 26) -> Callable[[], float]:
    """A function giving the mean L0 of ``sae.encode`` on ``x`` for the SAE's current threshold or
    encoder bias (what ``match_l0`` moves). SAELens's ``jumprelu`` (and ``tsae``) and ``standard`` SAEs
    compute ``hidden_pre = process_sae_in(x) @ W_enc + b_enc``; the matrix product depends on neither
    number, so it is done once here (and ``hidden_pre`` kept while ``b_enc`` is unchanged) and each call
    only compares. With ReLU as the activation, ``encode``'s non-zeros are where ``relu(hidden_pre) *
    (hidden_pre > threshold)`` is non-zero: ``hidden_pre > max(threshold, 0)``, and NaN; for ``standard``
    where ``relu(hidden_pre)`` is. The same count as ``encode``, exactly. Other classes, an SAE with hooks
    attached, and sets of over ``max_cached`` pre-activations are encoded on every call."""
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE
    from sae_lens.saes.standard_sae import StandardSAE

    n, chunks = x.shape[0], range(0, x.shape[0], batch_size)
    hooked = any(h.fwd_hooks for h in getattr(sae, "hook_dict", {}).values())
    ours = type(sae).encode in (JumpReLUSAE.encode, StandardSAE.encode) and isinstance(sae.activation_fn, torch.nn.ReLU)

    @torch.no_grad()
    def encoded() -> float:
        return sum(float((sae.encode(x[i:i + batch_size].to(sae.dtype)) != 0).sum()) for i in chunks) / n

    if not ours or hooked or n * sae.cfg.d_sae > max_cached:
        return encoded

    @torch.no_grad()
    def product(i: int) -> torch.Tensor:  # encode's matrix product on one chunk
        return sae.process_sae_in(x[i:i + batch_size].to(sae.dtype)) @ sae.W_enc

    kept: dict[str, Any] = {}

    @torch.no_grad()
    def count() -> float:
        if not hasattr(sae, "threshold"):  # standard: the bias moves; relu's non-zeros (NaN among them)
            if "products" not in kept:
                kept["products"] = [product(i) for i in chunks]
            return sum(int(torch.count_nonzero(torch.relu(p + sae.b_enc))) for p in kept["products"]) / n
        if "b_enc" not in kept or not torch.equal(kept["b_enc"], sae.b_enc):  # jumprelu: hidden_pre kept
            kept.update(b_enc=sae.b_enc.detach().clone(), pre=[product(i) + sae.b_enc for i in chunks])
            kept["nan"] = sum(int(pre.isnan().sum()) for pre in kept["pre"])
        level = sae.threshold.clamp_min(0)
        return (sum(int(torch.count_nonzero(pre > level)) for pre in kept["pre"]) + kept["nan"]) / n

    return count


def calibrate_at_first_step(sae: Any, target_l0: float) -> None:
    """``calibrate_thresholds`` on the input of the SAE's first training step, as its trainer normalised
    it (scaled or whitened): for runners, whose trainers estimate the normalisation inside ``fit``.
    Later steps run the SAE's own ``training_forward_pass`` untouched."""
    forward = sae.training_forward_pass

    def first(step_input: Any) -> Any:
        del sae.training_forward_pass  # the class's method again from the next step on
        calibrate_thresholds(sae, step_input.sae_in.detach(), target_l0)
        return forward(step_input)

    sae.training_forward_pass = first


def _hold_to_l0(sae: Any, x: torch.Tensor, target_l0: float) -> None:
    """Before training: calibrated thresholds (threshold units) or the L1 controller (``standard``)."""
    if hasattr(sae, "threshold") and getattr(sae, "metric_fitted", True):  # (an unfitted tsae_aip: not yet)
        calibrate_thresholds(sae, x * input_scale(sae.cfg, x), target_l0)
    elif sae.cfg.architecture() == "standard":
        _control_l1(sae, target_l0)


def _control_l1(sae: Any, target_l0: float, rate: float = 0.02) -> None:
    """Scale the L1 coefficient each step by ``(L0 / target)^rate`` (a multiplicative integral controller)."""
    forward = sae.training_forward_pass
    state = {"mult": 1.0}

    def controlled(step_input: Any) -> Any:
        coefficients = {k: v * state["mult"] for k, v in step_input.coefficients.items()}
        out = forward(dataclasses.replace(step_input, coefficients=coefficients))
        l0 = float((out.feature_acts != 0).sum(-1).float().mean())
        state["mult"] = min(max(state["mult"] * (max(l0, 0.1) / target_l0) ** rate, 1e-4), 1e4)
        return out

    sae.training_forward_pass = controlled


def training_config(architecture: str, d_in: int, d_sae: int, *, hook_name: str | None = None,
                    **overrides: Any) -> TrainingSAEConfig:
    """A SAELens training config of a registered ``architecture`` (``tsae`` / ``tsae_aip`` once
    ``sae_atoms`` is imported); ``overrides`` that are None keep the config's defaults. ``hook_name``
    goes to ``cfg.metadata.hook_name`` (where SAELens's runner puts it: steering and ``model.add_sae``
    read it there). Every architecture gets the finiteness and range checks of ``tsae``
    (``check_training_config``)."""
    try:
        cfg_cls = get_sae_training_class(architecture)[1]
    except (KeyError, ValueError) as e:
        from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

        raise ValueError(f"unknown SAE architecture {architecture!r}; registered: {sorted(SAE_TRAINING_CLASS_REGISTRY)}") from e
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, **{k: v for k, v in overrides.items() if v is not None})
    check_training_config(cfg)
    if hook_name is not None:
        cfg.metadata.hook_name = hook_name
    return cfg


def __getattr__(name: str) -> Any:
    """``build_runner`` and ``check_runner_buffer`` moved to ``sae_atoms.runners``; old imports still work."""
    if name in ("build_runner", "check_runner_buffer"):
        from sae_atoms import runners

        return getattr(runners, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
