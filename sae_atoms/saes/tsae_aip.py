"""``tsae_aip``: the TSAE trained in the AIP geometry, reconstructing raw activations.

The atomic inner product (``sae_atoms.aip``, Atom Theory arXiv 2509.20784) is a metric ``S``:
by default the robust centred one (the inverse covariance, shrunk, outlier rows left out:
``aip_kind="centered"``, ``sae_atoms.aip.ROBUST``), or the paper's uncentred
``S ~ (E[m m^T])^-1`` (``aip_kind="uncentered"``); with the ZCA whitening ``W = S^{1/2}``
(``W^T W = S``) and mean ``mu`` (zero when uncentred). The SAE keeps ``W``, ``W^-1`` and ``mu``
as buffers (``aip_W``, ``aip_W_inv``, ``aip_mean``) saved in its safetensors file.

Training SAE (``TSAEAIPTrainingSAE``), parameters live in whitened space (rows as vectors):

    y     = (m - mu) W^T                                  whitened input (no gradient)
    z     = (y - c) W_enc + b_enc                         c = b_dec, the whitened decoder bias
    delta = z * 1[z > tau]                                JumpReLU, tau >= 0
    y^    = delta E + c,  E = W_dec / ||W_dec rows||      unit rows: ||e_j|| = 1
    m^    = y^ W^-T + mu                                  the raw reconstruction
    loss  = ||y - y^||^2 + lambda * L0   (= ||m - m^||_S^2 + lambda L0;  aip_loss_space="aip")
          or ||m - m^||^2 + lambda * L0                   (aip_loss_space="raw")

The raw atoms are ``d_j = e_j W^-T``; ``||d_j||_S = ||d_j W^T|| = ||e_j|| = 1``: unit AIP norm,
kept so throughout training (the forward pass uses the normalised rows). With ``W_enc = E^T``
(the tied initialisation) the encoder is ``D^T S`` in raw space, the encoder of the TSAE
support-recovery theorem. ``TrainStepOutput.sae_in`` / ``sae_out`` are raw activations, so what
SAELens logs (explained variance, ``losses/mse_loss``) is in raw space; the AIP figure is logged
as ``losses/aip_mse_loss``. A training SAE saved with ``save_model`` (whitened weights, the
``aip_fitted`` flag) loads with ``SAE.load_from_disk``: the inference class folds it on load.

Inference SAE (``TSAEAIPSAE``) holds the same map folded into raw space (exact algebra, float
round-off only), so its forward is SAELens's ``jumprelu`` on raw activations and its ``W_dec``
rows are the raw atoms (unit AIP norm):

    W_enc' = W^T W_enc,  b_dec' = c W^-T + mu,  W_dec' = E W^-T,  b_enc' = b_enc,  tau' = tau
    z = (m - b_dec') W_enc' + b_enc,  delta = z * 1[z > tau],  m^ = delta W_dec' + b_dec'

(with ``apply_b_dec_to_input=False``: ``b_enc' = b_enc - mu W_enc'``). It splices into a model
unchanged. ``to_jumprelu(sae)`` returns a plain SAELens ``JumpReLUSAE`` with these weights.

The metric: ``set_metric(AIPMetric)``; ``aip_metric_path`` in the config (loaded at
construction); or estimated at the start of training from the first ``n_batches_for_metric``
batches the trainer feeds (those steps train nothing; ``fit_metric(batches)`` does it up front,
as ``sae-atoms train`` and ``train_on_activations`` do).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Literal

import torch
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAE, TrainStepInput
from sae_lens.util import str_to_dtype

from sae_atoms.aip import AIPMetric, AIPMoments
from sae_atoms.saes.checks import check_batch, check_state_dict_shapes
from sae_atoms.saes.stability import Rows
from sae_atoms.saes.tsae import TSAESAE, InputWidthMixin, LoadHintMixin, TSAETrainingSAE, TSAETrainingSAEConfig, UnitRows

_KINDS = ("uncentered", "centered")
_BUFFERS = ("aip_W", "aip_W_inv", "aip_mean")
_NORMALIZATIONS = ("none", "expected_average_only_in")


def _parse_shrinkage(s: str | float) -> str | float:
    if isinstance(s, (int, float)):
        return float(s)
    if s == "auto":
        return "auto"
    try:
        return float(s)
    except ValueError:
        raise ValueError(f"aip_shrinkage={s!r}: use 'auto' or a float >= 0 (a fraction of the mean eigenvalue).") from None


# --------------------------------------------------------------------------- configs
@dataclass
class TSAEAIPSAEConfig(JumpReLUSAEConfig):
    """Inference config of ``tsae_aip`` (forward = ``jumprelu`` on raw activations, metric kept)."""

    aip_kind: str = "centered"
    aip_shrinkage: str = "0.01"
    aip_alpha: float = 1.0

    @classmethod
    def architecture(cls) -> str:
        return "tsae_aip"


@dataclass
class TSAEAIPTrainingSAEConfig(TSAETrainingSAEConfig):
    """Training config of ``tsae_aip`` (module docstring: the forward formula).

    Besides the TSAE's fields (``d_sae``, ``jumprelu_init_threshold``, ``jumprelu_bandwidth``,
    ``l0_coefficient``, ``l0_warm_up_steps``; in whitened units, where ``E||y||^2 = d_in`` for
    the uncentred metric):
        aip_kind: "centered" (covariance; default) or "uncentered" (E[m m^T], the paper).
        aip_shrinkage: a float (fraction of the mean eigenvalue; default 0.01) or "auto" (ridge only
            when ill-conditioned, the paper); passed to ``AIPMetric.from_moments``. A string so CLIs can set it.
        aip_outlier_factor: rows with norm > this x the batch's median norm are left out of the
            metric (default 10; None keeps all, the paper).
        aip_alpha: partial whitening ``S^alpha`` (1 = the AIP, default; 0.5 keeps more raw
            faithfulness held-out). The defaults are ``sae_atoms.aip.ROBUST``, chosen on held-out
            data (``sae_atoms.aip`` docstring); the paper's estimate is ``aip_kind="uncentered",
            aip_shrinkage="auto", aip_outlier_factor=None``.
        n_batches_for_metric: batches used to estimate the metric at the start of training.
        aip_metric_path: a saved ``AIPMetric`` folder to use instead of estimating one.
        aip_loss_space: "aip" (squared error in whitened space, the paper) or "raw" (Euclidean).
        stability_geometry: where the stability objective reads cosines: "sae" (the SAE's own,
            ``S^aip_alpha``) or "aip" (the full AIP, where q* is read, while the loss stays at
            ``aip_alpha``); the two differ only when ``aip_alpha < 1``.
    """

    jumprelu_init_threshold: float = 0.5
    jumprelu_bandwidth: float = 0.1
    l0_coefficient: float = 0.05
    aip_kind: str = "centered"
    aip_shrinkage: str = "0.01"
    aip_outlier_factor: float | None = 10.0
    aip_alpha: float = 1.0
    n_batches_for_metric: int = 20
    aip_metric_path: str | None = None
    aip_loss_space: Literal["aip", "raw"] = "aip"
    stability_geometry: Literal["sae", "aip"] = "sae"

    def _validate(self) -> None:
        super()._validate()
        if self.aip_kind not in _KINDS:
            raise ValueError(f"aip_kind={self.aip_kind!r}: use one of {_KINDS}.")
        self.aip_shrinkage = str(self.aip_shrinkage) if not isinstance(self.aip_shrinkage, str) else self.aip_shrinkage
        _parse_shrinkage(self.aip_shrinkage)
        if not (math.isfinite(float(self.aip_alpha)) and 0.0 <= float(self.aip_alpha) <= 1.0):
            raise ValueError(f"aip_alpha={self.aip_alpha!r} must be in [0, 1] (1 = the AIP, 0 = Euclid).")
        if self.aip_outlier_factor is not None and not (math.isfinite(self.aip_outlier_factor)
                                                         and self.aip_outlier_factor > 1):
            raise ValueError(f"aip_outlier_factor={self.aip_outlier_factor!r} must be None or a finite number > 1.")
        if self.n_batches_for_metric < 1:
            raise ValueError(f"n_batches_for_metric={self.n_batches_for_metric} must be >= 1.")
        if self.aip_loss_space not in ("aip", "raw"):
            raise ValueError(f"aip_loss_space={self.aip_loss_space!r}: use 'aip' or 'raw'.")
        if self.stability_geometry not in ("sae", "aip"):
            raise ValueError(f"stability_geometry={self.stability_geometry!r}: use 'sae' or 'aip'.")
        if self.stability_geometry == "aip" and float(self.aip_alpha) == 0.0:
            raise ValueError("stability_geometry='aip' reads the full AIP off the partial one: it needs aip_alpha > 0.")
        if self.normalize_activations not in _NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r}: tsae_aip whitens with the AIP metric itself; "
                f"use one of {_NORMALIZATIONS} (aip_kind='centered' is the covariance whitening)."
            )

    @classmethod
    def architecture(cls) -> str:
        return "tsae_aip"


def _metric_buffers(d: int, dtype: torch.dtype, device: torch.device | str) -> dict[str, torch.Tensor]:
    eye = torch.eye(d, dtype=dtype, device=device)
    return {"aip_W": eye, "aip_W_inv": eye.clone(), "aip_mean": torch.zeros(d, dtype=dtype, device=device)}


def fold_to_raw(state: dict[str, torch.Tensor], apply_b_dec_to_input: bool, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The raw-space inference weights of a training state (module docstring: the fold).

    ``state`` holds ``W_enc, b_enc, W_dec`` (unit rows), ``b_dec, threshold`` in whitened space and
    the metric buffers; returns the folded weights plus the metric buffers.
    """
    dt = torch.promote_types(state["W_enc"].dtype, torch.float32)
    Wt, Wit = state["aip_W"].T.to(dt), state["aip_W_inv"].T.to(dt)
    mean = state["aip_mean"].to(dt)
    W_enc = Wt @ state["W_enc"].to(dt)
    b_enc = state["b_enc"].to(dt).clone()
    if not apply_b_dec_to_input:
        b_enc = b_enc - mean @ W_enc
    out = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": state["W_dec"].to(dt) @ Wit,
           "b_dec": state["b_dec"].to(dt) @ Wit + mean, "threshold": state["threshold"].detach().clone()}
    out = {k: v.to(dtype).contiguous() for k, v in out.items()}
    for k in _BUFFERS:
        out[k] = state[k].detach().clone()
    return out


def to_full_aip(W_alpha: torch.Tensor, alpha: float) -> torch.Tensor:
    """A multiple of ``W_1 W_alpha^-1``, the map from the partial geometry ``S^alpha`` to the full AIP,
    read off ``W_alpha`` alone: with ``W_alpha = V diag(w) V^T`` (``w ~ lam^(-alpha/2)``) it is
    ``V diag(w^((1 - alpha)/alpha)) V^T`` (up to the scale ``AIPMetric`` gives ``S^alpha``, which unit
    rows do not see). ``alpha`` in (0, 1]."""
    w, V = torch.linalg.eigh(W_alpha.double())
    return ((V * w.clamp_min(1e-30).pow((1.0 - alpha) / alpha)) @ V.T).to(W_alpha.dtype)


def _check_metric(metric: AIPMetric, d_in: int, kind: str) -> None:
    if not isinstance(metric, AIPMetric):
        raise TypeError(f"expected an sae_atoms.aip.AIPMetric, got {type(metric).__name__}.")
    if metric.d != d_in:
        raise ValueError(f"the AIP metric is for d={metric.d} but the SAE has d_in={d_in}: it was fitted on another "
                         "hook or model. Fit a metric on this hook's activations.")
    if metric.kind != kind:
        raise ValueError(f"the AIP metric is {metric.kind!r} but the SAE config says aip_kind={kind!r}; "
                         "fit a metric of that kind or change aip_kind.")


# --------------------------------------------------------------------------- inference SAE
class TSAEAIPSAE(InputWidthMixin, LoadHintMixin, JumpReLUSAE):
    """Inference ``tsae_aip``: raw-space ``jumprelu`` forward; rows of ``W_dec`` are atoms of unit AIP norm."""

    cfg: TSAEAIPSAEConfig  # type: ignore[assignment]
    aip_W: torch.Tensor
    aip_W_inv: torch.Tensor
    aip_mean: torch.Tensor

    def __init__(self, cfg: TSAEAIPSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)

    def initialize_weights(self) -> None:
        super().initialize_weights()
        for k, v in _metric_buffers(self.cfg.d_in, self.dtype, self.device).items():
            self.register_buffer(k, v)

    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_loading(state_dict)
        if "aip_fitted" in state_dict:  # a training SAE's folder (save_model): weights in whitened space
            if float(state_dict.pop("aip_fitted")) < 0.5:
                raise ValueError("this tsae_aip training SAE was saved before its AIP metric was estimated; it has no "
                                 "raw-space form. Load it with TrainingSAE.load_from_disk and fit the metric first.")
            state_dict["W_dec"] = UnitRows.apply(state_dict["W_dec"])
            folded = fold_to_raw(state_dict, self.cfg.apply_b_dec_to_input, self.dtype)
            state_dict.clear()
            state_dict.update(folded)
        check_state_dict_shapes(self, state_dict, "tsae_aip")

    def whiten(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mu) W^T``."""
        return (x.to(self.aip_W.dtype) - self.aip_mean) @ self.aip_W.T

    def unwhiten(self, y: torch.Tensor) -> torch.Tensor:
        """``y W^-T + mu``."""
        return y.to(self.aip_W.dtype) @ self.aip_W_inv.T + self.aip_mean

    def atoms(self) -> torch.Tensor:
        """The atoms as rows ``[d_sae, d_in]`` in raw space (unit AIP norm)."""
        return self.W_dec.detach()

    def aip_norm(self, v: torch.Tensor) -> torch.Tensor:
        """``||v||_S`` over the last dimension (for directions: no mean subtracted)."""
        return (v.to(self.aip_W.dtype) @ self.aip_W.T).norm(dim=-1)


# --------------------------------------------------------------------------- training SAE
class TSAEAIPTrainingSAE(TSAETrainingSAE):
    """Training ``tsae_aip`` (module docstring: formula). Parameters live in whitened space."""

    cfg: TSAEAIPTrainingSAEConfig  # type: ignore[assignment]
    aip_W: torch.Tensor
    aip_W_inv: torch.Tensor
    aip_mean: torch.Tensor
    aip_fitted: torch.Tensor

    def __init__(self, cfg: TSAEAIPTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._moments: AIPMoments | None = None
        self._n_metric_batches = 0
        self._to_full: torch.Tensor | None = None  # stability_directions' map to the full AIP, from aip_W
        if cfg.aip_metric_path is not None and self.device.type != "meta":
            self.set_metric(AIPMetric.load(cfg.aip_metric_path, d=cfg.d_in))

    def initialize_weights(self) -> None:
        super().initialize_weights()
        for k, v in _metric_buffers(self.cfg.d_in, self.dtype, self.device).items():
            self.register_buffer(k, v)
        # 1.0 once the metric is set; a float (not bool) buffer so SAELens's dtype moves and loaders handle it
        self.register_buffer("aip_fitted", torch.zeros((), dtype=torch.float32, device=self.device))

    # ---- the metric
    @property
    def metric_fitted(self) -> bool:
        return bool(self.aip_fitted > 0.5)

    @torch.no_grad()
    def set_metric(self, metric: AIPMetric) -> "TSAEAIPTrainingSAE":
        """Use ``metric`` (an ``AIPMetric`` of this ``d_in`` and ``aip_kind``) as the SAE's geometry."""
        _check_metric(metric, self.cfg.d_in, self.cfg.aip_kind)
        dev, dt = self.aip_W.device, self.aip_W.dtype
        self.aip_W.copy_(metric.W.to(dev, dt))
        self.aip_W_inv.copy_(metric.W_inv.to(dev, dt))
        mean = metric.mean if metric.mean is not None else torch.zeros(self.cfg.d_in)
        self.aip_mean.copy_(mean.to(dev, dt))
        self._to_full = None
        self.aip_fitted.fill_(1.0)
        self._moments = None
        return self

    def fit_metric(self, batches: Iterable[torch.Tensor] | torch.Tensor, progress: bool = False) -> AIPMetric:
        """Estimate the metric (``aip_kind``, ``aip_shrinkage``) from a tensor or batches and use it."""
        metric = AIPMetric.fit(batches, **self.metric_options(),
                               progress=progress)
        self.set_metric(metric)
        return metric

    def metric_options(self) -> dict[str, Any]:
        """The ``AIPMetric.fit`` arguments this config asks for (kind, shrinkage, alpha, outlier_factor)."""
        c = self.cfg
        return {"kind": c.aip_kind, "shrinkage": _parse_shrinkage(c.aip_shrinkage), "alpha": float(c.aip_alpha),
                "outlier_factor": c.aip_outlier_factor}

    def stability_directions(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Unit decoder rows (of the atoms ``idx``, default all) in ``stability_geometry`` (the full
        AIP: ``S^-(1-alpha)/2`` of each row, renormalised; only the rows asked for are mapped)."""
        return self._to_stability_geometry(super().stability_directions(idx))

    def stability_rows(self, unit: torch.Tensor) -> Rows:
        """``stability_directions`` read off a step's unit decoder rows ``unit``: those rows in the SAE's
        geometry, else a function that maps the rows asked for to the full AIP."""
        if not self._maps_to_full():
            return unit
        return lambda idx: self._to_stability_geometry(unit.index_select(0, idx))

    def _maps_to_full(self) -> bool:
        return self.cfg.stability_geometry == "aip" and self.cfg.aip_alpha != 1.0

    def _to_stability_geometry(self, rows: torch.Tensor) -> torch.Tensor:
        """Unit rows of the SAE's geometry in ``stability_geometry`` (unchanged unless it maps to the full AIP)."""
        if not self._maps_to_full():
            return rows
        if self._to_full is None or self._to_full.device != rows.device:
            self._to_full = to_full_aip(self.aip_W, float(self.cfg.aip_alpha))
        return torch.nn.functional.normalize(rows @ self._to_full.T, dim=-1)

    def _to_geometry(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.aip_mean) @ self.aip_W.T if self.cfg.aip_kind == "centered" else x @ self.aip_W.T

    def _from_geometry(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self.aip_W_inv.T + self.aip_mean if self.cfg.aip_kind == "centered" else y @ self.aip_W_inv.T

    def _from_geometry_linear(self, v: torch.Tensor) -> torch.Tensor:
        return v @ self.aip_W_inv.T

    def observe_metric_batch(self, x: torch.Tensor, step: int | None = None) -> bool:
        """Add a batch to the metric estimate; True once ``n_batches_for_metric`` batches set the metric."""
        check_batch(x, self.cfg.d_in, step)
        if self._moments is None:
            self._moments = AIPMoments(device=x.device)
        self._moments.update(x.detach(), self.cfg.aip_outlier_factor)
        self._n_metric_batches += 1
        if self._n_metric_batches >= self.cfg.n_batches_for_metric:
            opts = self.metric_options()
            outlier_factor = opts.pop("outlier_factor")
            self.set_metric(AIPMetric.from_moments(self._moments, **opts, outlier_factor=outlier_factor))
        return self.metric_fitted

    def _prepare_step(self, step_input: TrainStepInput) -> torch.Tensor | None:
        if not self.metric_fitted:
            if self._n_metric_batches == 0:
                warnings.warn("tsae_aip: this trainer feeds the metric-estimation batches as training steps, so its "
                              "step count and recorded L0 include them; fit the metric first (sae.fit_metric) or "
                              "train with sae_atoms.training.MetricFirstTrainer.", stacklevel=2)
            self.observe_metric_batch(step_input.sae_in, step_input.n_training_steps)
            return None
        return super()._prepare_step(step_input)

    def _raw_needed(self, step_input: TrainStepInput) -> bool:
        """The raw reconstruction up front only where it is optimised (``aip_loss_space="raw"``),
        logged (a logging step) or hooked (``hook_sae_recons``); else on first read."""
        return (self.cfg.aip_loss_space == "raw" or step_input.is_logging_step
                or bool(self.hook_sae_recons.fwd_hooks))

    def _geometry_losses(self, out: Any, y: torch.Tensor,
                         y_hat: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Raw ``mse_loss`` (what SAELens users read) and ``aip_mse_loss`` (``||m - m^||_S^2``);
        the raw one is a callable (SAELens unwraps it) until ``out.sae_out`` is made."""
        aip = (y_hat - y).pow(2).sum(dim=-1).mean()
        if self.cfg.aip_loss_space == "raw":
            raw = self._reconstruction_loss(out.sae_out, out.sae_in)
            return raw, {"mse_loss": raw, "aip_mse_loss": aip.detach()}
        raw_mse = lambda: self._reconstruction_loss(out.sae_out, out.sae_in).detach()  # noqa: E731
        return aip, {"mse_loss": raw_mse() if out.raw_ready else raw_mse, "aip_mse_loss": aip}

    def _require_metric(self, what: str) -> None:
        if not self.metric_fitted:
            raise RuntimeError(f"{what}: the AIP metric of this tsae_aip SAE was never estimated. Train it (the metric "
                               "is estimated from the first batches), or call sae.fit_metric(activations) / "
                               "sae.set_metric(AIPMetric) first.")

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._require_metric("encode")
        return super().encode_with_hidden_pre(x)

    # ---- folding into raw space
    @torch.no_grad()
    def folded_raw_weights(self) -> dict[str, torch.Tensor]:
        """The inference weights in raw space (module docstring: the fold), plus the metric buffers."""
        self._require_metric("fold")
        state = {k: getattr(self, k).detach() for k in ("W_enc", "b_enc", "b_dec", "threshold", *_BUFFERS)}
        return fold_to_raw({**state, "W_dec": self.unit_W_dec().detach()}, self.cfg.apply_b_dec_to_input, self.dtype)

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        folded = self.folded_raw_weights()
        state_dict.clear()
        state_dict.update(folded)

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Fold an input scale ``s`` (trained on ``s m``) into the metric: same outputs on raw ``m``.

        ``W <- s W``, ``W^-1 <- W^-1 / s``, ``mu <- mu / s``: the whitened input ``(m - mu/s) s W^T``
        equals the scaled run's, and the raw output is the scaled one divided by ``s``. With the
        metric estimated from the scaled batches (as the trainer does), the folded ``W`` is the
        metric of the raw activations.
        """
        s = float(scaling_factor)
        self.aip_W.mul_(s)
        self.aip_W_inv.div_(s)
        self.aip_mean.div_(s)
        self.cfg.normalize_activations = "none"

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """The forward pass already uses unit-norm (whitened) atoms: normalising the stored rows changes nothing."""
        self.W_dec.data.copy_(self.unit_W_dec())


# --------------------------------------------------------------------------- conversion
def to_inference(sae: SAE[Any]) -> SAE[Any]:
    """The inference SAE of a training SAE, as ``save_inference_model`` + ``load_from_disk`` would give."""
    from sae_lens.saes.sae import TrainingSAE

    if not isinstance(sae, TrainingSAE):
        return sae
    cfg_dict = sae.cfg.get_inference_sae_cfg_dict()
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    sae.process_state_dict_for_saving_inference(state)
    inf = SAE.from_dict(cfg_dict)
    inf.process_state_dict_for_loading(state)
    inf.load_state_dict(state)
    return inf.to(device=sae.device, dtype=str_to_dtype(sae.cfg.dtype))


_SAEBENCH_FIELDS = ("hook_name", "model_name", "context_size", "prepend_bos")


def to_jumprelu(sae: SAE[Any], unit_norm: bool = False, **metadata: Any) -> JumpReLUSAE:
    """Fold a ``tsae_aip`` (or ``tsae``) SAE into a plain SAELens ``jumprelu`` SAE with the same outputs.

    The metric is folded into the weights (``TSAEAIPSAE``'s formula); the result loads in
    vanilla SAELens (``SAE.load_from_disk`` without ``sae_atoms``) and matches the source's
    ``forward`` to float32 round-off (about 1e-5 relative; a unit whose pre-activation lies
    within round-off of its threshold could flip).

    ``unit_norm=True`` rescales every decoder row to unit Euclidean norm (what SAEBench's SCR /
    TPP / absorption assume): row ``j`` of norm ``n_j`` becomes ``W_dec_j / n_j`` and its code
    ``n_j delta_j`` (``W_enc``, ``b_enc``, ``threshold`` columns times ``n_j``), so ``forward`` is
    unchanged and ``encode`` is rescaled. ``metadata`` (``hook_name``, ``model_name``,
    ``context_size``, ``prepend_bos``, ...) is written into ``cfg.metadata``, over the source's.
    """
    inf = to_inference(sae)
    if not isinstance(inf, (TSAEAIPSAE, TSAESAE)):
        raise TypeError(f"to_jumprelu converts tsae / tsae_aip SAEs; got architecture {inf.cfg.architecture()!r}.")
    meta = copy.deepcopy(inf.cfg.metadata)
    for k, v in metadata.items():
        meta[k] = v
    cfg = JumpReLUSAEConfig(d_in=inf.cfg.d_in, d_sae=inf.cfg.d_sae, dtype=inf.cfg.dtype, device=inf.cfg.device,
                            apply_b_dec_to_input=inf.cfg.apply_b_dec_to_input, normalize_activations="none",
                            reshape_activations=inf.cfg.reshape_activations, metadata=meta)
    out = JumpReLUSAE(cfg)
    state = {k: v.detach().clone() for k, v in inf.state_dict().items() if k not in _BUFFERS}
    if unit_norm:
        n = state["W_dec"].norm(dim=1).clamp_min(1e-12)
        state["W_dec"] = state["W_dec"] / n[:, None]
        state["W_enc"], state["b_enc"] = state["W_enc"] * n, state["b_enc"] * n
        state["threshold"] = state["threshold"] * n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out.load_state_dict(state)
    return out
