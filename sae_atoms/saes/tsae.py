"""Threshold-activated SAEs (TSAE) of Atom Theory, registered as SAELens architectures.

Atom Theory (arXiv 2509.20784) reads activations ``m`` as sparse codes over atoms ``D`` and
recovers them with a threshold-activated SAE (TSAE):

    z     = W_enc^T (m - b_dec) + b_enc                  (pre-activations, one per unit)
    delta = z * 1[z > tau]                               (JumpReLU, learned threshold tau >= 0)
    m^    = D delta + b_dec,   D = W_dec^T / ||W_dec rows||   (unit-norm atoms)

    loss  = ||m - m^||^2 + lambda * sum_j H(z_j - tau_j)

The L0 term uses the straight-through estimator with a rectangle kernel of width
``jumprelu_bandwidth`` (Rajamanoharan et al. 2024, "Jumping Ahead", arXiv 2407.14435), taken
from SAELens's ``JumpReLUTrainingSAE`` (so the sparsity modes ``step`` / ``tanh`` /
``quadratic``, the L0 warm-up and the float32 threshold come with it). What the TSAE adds to
SAELens's ``jumprelu``:

* atoms of unit norm, kept so during training: the decoder used in the forward pass is the row-
  normalised ``W_dec`` (gradients see the normalisation, so no norm can leak into the codes);
  inference saves hold the normalised rows and the inference SAE normalises a training save's
  (``save_model``, SAELens's checkpoints, which keep the parameter for an exact resume), so
  inference equals training exactly;
* tied initialisation ``W_enc = D^T`` (the encoder of the TSAE theorem, ``W_enc = D^T S`` with
  ``S = I`` here), unit-norm rows;
* checks that stop training with a clear message: activation width vs ``d_in`` and
  NaN/Inf in a batch (the step and the count), checkpoints of another architecture or width,
  the config's finiteness and ranges (``check_training_config``, which ``sae_atoms.training``
  also applies to SAELens's own architectures), the input width of ``encode``.

Two architectures are registered on ``import sae_atoms`` (idempotently, by
``sae_atoms.saes.register``):

* ``tsae``: the TSAE in raw activation space (this module), and
* ``tsae_aip``: the same trained in the AIP geometry (``sae_atoms.saes.tsae_aip``: encoder reads
  AIP-whitened input, atoms of unit AIP norm, reconstructs the raw activation).

Use them like any SAELens architecture: ``LanguageModelSAERunnerConfig(sae=TSAETrainingSAEConfig
(d_in=..., d_sae=...))``, ``architecture="tsae"`` in a dict / CLI config, ``SAE.load_from_disk``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from sae_lens.constants import SAE_CFG_FILENAME
from sae_lens.saes.jumprelu_sae import (JumpReLU, JumpReLUSAE, JumpReLUSAEConfig, JumpReLUTrainingSAE,
                                         JumpReLUTrainingSAEConfig)
from sae_lens.saes.sae import TrainingSAEConfig, TrainStepInput, TrainStepOutput

from sae_atoms.io import follow_umask
from sae_atoms.saes.checks import check_batch, check_checkpoint_config, check_state_dict_shapes, check_training_config, check_width
from sae_atoms.saes.stability import DESIGNS, Rows, stability_penalty

__all__ = ["TSAESAEConfig", "TSAESAE", "TSAETrainingSAEConfig", "TSAETrainingSAE", "LOAD_HINT"]

# written into every saved folder's cfg.json (SAELens ignores keys that are not config fields)
LOAD_HINT = ("this SAE is a sae_atoms architecture: install sae_atoms (it is not on PyPI; README, \"Install without a "
             "clone\"): `pip install \"sae-atoms @ git+https://<your-host>/<path>.git\"` from its repository, "
             "`pip install ./sae_atoms-<version>-py3-none-any.whl` from its wheel or `pip install -e .` in a checkout, "
             "then `import sae_atoms; sae_atoms.load_sae(path)` (or `import sae_atoms` before `SAE.load_from_disk(path)`)")

_RAW_NORMALIZATIONS = ("none", "expected_average_only_in")
TOPK_MODES = ("sample", "batch")  # TSAETrainingSAEConfig.topk_mode: top-k codes per sample or per batch
# the decoder_init_norm of SAELens's training configs (what a config made from a jumprelu one carries)
_SAELENS_DECODER_INIT_NORM = next(f.default for f in fields(TrainingSAEConfig) if f.name == "decoder_init_norm")


def add_load_hint(path: str | Path) -> None:
    """Add ``load_with`` (how to load this architecture) to the folder's ``cfg.json``."""
    from sae_atoms.io import write_json

    cfg_path = Path(path) / SAE_CFG_FILENAME
    cfg = json.loads(cfg_path.read_text())
    cfg["load_with"] = LOAD_HINT
    write_json(cfg, cfg_path, indent=None)


class LoadHintMixin:
    """``save_model`` / ``save_inference_model`` also write the ``load_with`` hint into cfg.json."""

    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        out = super().save_model(path)  # type: ignore[misc]
        add_load_hint(path)
        return follow_umask(out[0]), out[1]  # safetensors writes 0600 files

    def save_inference_model(self, path: str | Path) -> tuple[Path, Path]:
        out = super().save_inference_model(path)  # type: ignore[misc]
        add_load_hint(path)
        return follow_umask(out[0]), out[1]


class InputWidthMixin:
    """``encode`` / ``forward`` check the input's width first: a clear error instead of a matmul's."""

    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        check_width(sae_in, self.cfg.d_in, "input", _width_hint(self.cfg))  # type: ignore[attr-defined]
        return super().process_sae_in(sae_in)  # type: ignore[misc]


def _width_hint(cfg: Any) -> str:
    hook = getattr(getattr(cfg, "metadata", None), "hook_name", None)
    where = f"{hook!r}, the hook" if hook else "the hook"
    return f"pass activations of {where} this SAE was trained on (width {cfg.d_in})."


# --------------------------------------------------------------------------- configs
@dataclass
class TSAESAEConfig(JumpReLUSAEConfig):
    """Inference config of the raw-space TSAE (the forward pass is SAELens's ``jumprelu``)."""

    @classmethod
    def architecture(cls) -> str:
        return "tsae"


@dataclass
class TSAETrainingSAEConfig(JumpReLUTrainingSAEConfig):
    """Training config of the raw-space TSAE.

    Fields a user tunes (the rest are SAELens's ``JumpReLUTrainingSAEConfig``):
        d_sae: width (Atom Theory's default is 4 x d_in).
        jumprelu_init_threshold, jumprelu_bandwidth: threshold init and STE kernel width, in
            the units of the SAE's input (raw activations, or scaled ones with
            ``normalize_activations="expected_average_only_in"``).
        l0_coefficient, l0_warm_up_steps: the sparsity coefficient lambda and its linear warm-up.
        check_finite: stop with the step and the count when a batch holds NaN/Inf.
        stability_coefficient: weight of the stability objective (``sae_atoms.saes.stability``:
            co-active atoms kept inside the uniqueness bound); 0 (default) turns it off.
        stability_design: "coactive" (pairs that fire on the same sample), "coactive_own_k" (the
            same, each sample's margin from its own L0) or "all" (all pairs of random atoms, the
            global baseline).
        stability_margin: the hinge's margin on |cos|; None: half the bound at the batch's mean L0
            (for "coactive_own_k", the fraction of each sample's own bound; None: 0.5).
        stability_rows, stability_k_max: samples (or atoms, for "all") a step, and the strongest
            active atoms per sample, the penalty reads.
        stability_every: apply the objective every n-th step at n times its weight (the same pull on
            average, n-fold fewer reads of the rows: what ``tsae_aip``'s ``stability_geometry="aip"``
            costs a step, since it maps each row read to the full AIP); 1 (default): every step.
        topk_training: train with the ``round(target_l0)`` largest positive pre-activations of each
            sample instead of the threshold rule; the thresholds then follow the smallest code kept
            in the batch (one value for every atom), to be matched to the target L0 after training
            (``training.match_l0``): BatchTopK's recipe, in the SAE's geometry. Off by default.
        topk_mode: with ``topk_training``, "sample" keeps ``round(target_l0)`` codes in each sample;
            "batch" keeps the ``round(target_l0) x batch`` largest of the whole batch (BatchTopK,
            Bussmann et al. 2024), so a sample may take more or fewer: the massive tokens
            (``sae_atoms.massive``), which fire many atoms once thresholds replace top-k, get them
            in training too.
    """

    jumprelu_init_threshold: float = 0.1
    jumprelu_bandwidth: float = 0.05
    l0_coefficient: float = 0.05
    decoder_init_norm: float | None = 1.0
    check_finite: bool = True
    stability_coefficient: float = 0.0
    stability_design: str = "coactive"
    stability_margin: float | None = None
    stability_rows: int = 32
    stability_k_max: int = 32
    stability_every: int = 1
    topk_training: bool = False
    topk_mode: str = "sample"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validate()
        self._unit_decoder_init()

    def _validate(self) -> None:
        check_training_config(self)
        if self.normalize_activations not in _RAW_NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r} is not supported by {self.architecture()!r}: "
                f"use one of {_RAW_NORMALIZATIONS}. For a whitened geometry train 'tsae_aip' (aip_kind='centered' is "
                "covariance whitening kept in the model): SAELens's covariance_whitening folds a non-orthogonal map into "
                "the decoder, which breaks the TSAE's unit-norm atoms."
            )
        if self.reshape_activations != "none":
            raise ValueError(f"reshape_activations={self.reshape_activations!r} is not supported by the TSAE; use 'none'.")
        if self.stability_design not in DESIGNS:
            raise ValueError(f"stability_design={self.stability_design!r}: use one of {DESIGNS}.")
        if self.topk_mode not in TOPK_MODES:
            raise ValueError(f"topk_mode={self.topk_mode!r}: use one of {TOPK_MODES}.")
        if self.topk_training and not (self.target_l0 is not None and 1 <= round(self.target_l0) <= self.d_sae):
            raise ValueError(f"topk_training keeps round(target_l0) codes a sample: set target_l0 in [1, d_sae={self.d_sae}] "
                             f"(it is {self.target_l0}).")

    def _unit_decoder_init(self) -> None:
        """``decoder_init_norm``: the atoms are unit rows by construction (``initialize_weights`` and the
        forward pass normalise them), so 1.0 and None are what happens. SAELens's default (a config made
        from another architecture's fields) is moot: it becomes 1.0 with a warning. We cannot tell that
        default from the same value typed by hand, so both warn; any other value cannot be honoured."""
        if self.decoder_init_norm in (None, 1.0):
            return
        if self.decoder_init_norm == _SAELENS_DECODER_INIT_NORM:
            warnings.warn(f"decoder_init_norm={self.decoder_init_norm} (SAELens's default) is moot for "
                          f"{self.architecture()!r}: its atoms have unit norm by construction; using 1.0.", stacklevel=4)
            self.decoder_init_norm = 1.0
            return
        raise ValueError(f"decoder_init_norm={self.decoder_init_norm}: the {self.architecture()!r} atoms have unit norm by "
                         "construction (the forward pass normalises the decoder rows), so it cannot be honoured; "
                         "use 1.0 or None.")

    @classmethod
    def architecture(cls) -> str:
        return "tsae"


_NORM_FLOOR = 1e-12


class UnitRows(torch.autograd.Function):
    """``W / ||W rows||`` (norms floored at ``_NORM_FLOOR``) with its gradient in closed form.

    For ``u = w / |w|`` the gradient is ``(g - u <g, u>) / |w|`` (the part of ``g`` along the row
    removed, then scaled); a floored row passes ``g / floor`` (the floor has no gradient). Autograd
    through ``div`` and ``norm`` computes the same with about twice the passes over ``W``, which
    shows in a step at small batches.
    """

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:
        n = w.norm(dim=1, keepdim=True).clamp_min(_NORM_FLOOR)
        u = w / n
        ctx.save_for_backward(u, n)
        return u

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        u, n = ctx.saved_tensors
        along = (g * u).sum(dim=1, keepdim=True).masked_fill_(n <= _NORM_FLOOR, 0.0)
        return torch.addcmul(g, u, along, value=-1.0).div_(n)


# --------------------------------------------------------------------------- inference SAE
class TSAESAE(InputWidthMixin, LoadHintMixin, JumpReLUSAE):
    """Inference TSAE in raw space: ``JumpReLUSAE``'s forward with unit-norm decoder rows."""

    cfg: TSAESAEConfig  # type: ignore[assignment]

    def __init__(self, cfg: TSAESAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)

    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_loading(state_dict)
        check_state_dict_shapes(self, state_dict, self.cfg.architecture())
        w = state_dict.get("W_dec")
        if w is not None and ((w.norm(dim=1) - 1.0).abs() > 1e-6).any():  # a training save keeps the raw parameter
            state_dict["W_dec"] = UnitRows.apply(w)  # the atoms are its unit rows (an inference save already has them)

    def atoms(self) -> torch.Tensor:
        """The atoms as rows ``[d_sae, d_in]`` in raw activation space."""
        return self.W_dec.detach()


# --------------------------------------------------------------------------- training SAE
class RawOnRead(TrainStepOutput):
    """A ``TrainStepOutput`` whose raw reconstruction ``sae_out`` is computed on first read.

    A geometry SAE trained on its own loss does not need the raw reconstruction (one
    ``[batch, d] x [d, d]`` product a step); SAELens reads ``sae_out`` only to log (explained
    variance, ``mse_loss``), so it is made when read, once, without a gradient. Set ``sae_out``
    to give it up front.
    """

    def __init__(self, make_sae_out: Any, sae_in: torch.Tensor, feature_acts: torch.Tensor,
                 hidden_pre: torch.Tensor) -> None:
        self._make_sae_out, self._sae_out = make_sae_out, None
        super().__init__(sae_in=sae_in, sae_out=None, feature_acts=feature_acts, hidden_pre=hidden_pre,  # type: ignore[arg-type]
                         loss=None, losses={})  # type: ignore[arg-type]

    @property  # type: ignore[override]
    def sae_out(self) -> torch.Tensor:
        if self._sae_out is None:
            with torch.no_grad():
                self._sae_out = self._make_sae_out()
        return self._sae_out

    @sae_out.setter
    def sae_out(self, value: torch.Tensor | None) -> None:
        self._sae_out = value

    @property
    def raw_ready(self) -> bool:
        """Whether ``sae_out`` has been made."""
        return self._sae_out is not None


class TSAETrainingSAE(LoadHintMixin, JumpReLUTrainingSAE):
    """Training TSAE in raw space (see the module docstring for the forward pass and loss).

    Subclasses change the geometry by overriding ``_to_geometry`` / ``_from_geometry`` (the
    maps from raw activations to the space the SAE works in, and back); the loss is the squared
    error in that space.
    """

    cfg: TSAETrainingSAEConfig  # type: ignore[assignment]

    def __init__(self, cfg: TSAETrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self.stability_generator: torch.Generator | None = None  # the objective's draws; None: the global RNG

    def initialize_weights(self) -> None:
        super().initialize_weights()  # kaiming W_dec, W_enc = W_dec^T, b_enc = b_dec = 0
        with torch.no_grad():
            if self.W_dec.device.type != "meta":
                self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(_NORM_FLOOR)
                self.W_enc.data = self.W_dec.data.T.clone().contiguous()

    # ---- geometry (identity in raw space)
    def _to_geometry(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _from_geometry(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def unit_W_dec(self) -> torch.Tensor:
        """The decoder used in the forward pass: rows of ``W_dec`` scaled to unit norm."""
        return UnitRows.apply(self.W_dec)

    def stability_directions(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """The unit rows the stability objective reads (those of the atoms ``idx``, default all):
        the decoder's, in the SAE's geometry (a row's unit norm is its own: only the rows asked for are
        normalised)."""
        return UnitRows.apply(self.W_dec if idx is None else self.W_dec.index_select(0, idx))

    def stability_rows(self, unit: torch.Tensor) -> Rows:
        """``stability_directions`` off a step's unit rows ``unit`` (in its graph): those rows, not normalised anew."""
        return unit

    # ---- forward in the SAE's geometry
    def _pre_acts(self, y: torch.Tensor) -> torch.Tensor:
        """The encoder's pre-activations of ``y`` (SAE geometry), through ``hook_sae_acts_pre``: ``(y - b_dec)
        W_enc + b_enc`` as ``y W_enc + (b_enc - b_dec W_enc)``, so ``b_dec``'s gradient is a vector-matrix
        product, not a full product's ``[batch, d]`` input gradient (a training input has none of its own)."""
        bias = self.b_enc - self.b_dec @ self.W_enc if self.cfg.apply_b_dec_to_input else self.b_enc
        return self.hook_sae_acts_pre(y @ self.W_enc + bias)

    def _encode_geometry(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_pre = self._pre_acts(y)
        acts = JumpReLU.apply(hidden_pre, self.threshold.to(hidden_pre.dtype), self.bandwidth,
                              self.cfg.jumprelu_ste_to_input)
        return self.hook_sae_acts_post(acts), hidden_pre  # type: ignore[arg-type]

    def _decode_geometry(self, feature_acts: torch.Tensor, unit: torch.Tensor | None = None) -> torch.Tensor:
        return feature_acts @ (self.unit_W_dec() if unit is None else unit) + self.b_dec

    # ---- SAELens interface (raw activations in and out)
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_width(x, self.cfg.d_in, "input", _width_hint(self.cfg))
        x = self.reshape_fn_in(x.to(self.dtype))
        x = self.run_time_activation_norm_fn_in(self.hook_sae_input(x))
        return self._encode_geometry(self._to_geometry(x))

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        out = self.hook_sae_recons(self._from_geometry(self._decode_geometry(feature_acts)))
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)

    def _prepare_step(self, step_input: TrainStepInput) -> torch.Tensor | None:
        """Check the batch (None: no training on this batch); the raw input after ``hook_sae_input``."""
        x = step_input.sae_in
        if self.cfg.check_finite or x.shape[-1] != self.cfg.d_in:
            check_batch(x, self.cfg.d_in, step_input.n_training_steps)
        return self.hook_sae_input(x.to(self.dtype))

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """Squared error in the SAE's geometry + the JumpReLU sparsity loss.

        ``sae_in`` / ``sae_out`` of the output are raw activations, so what SAELens logs
        (explained variance, ``mse_loss``) is in raw space; a geometry's own figures come from
        ``_geometry_losses`` under their own names. Where the raw reconstruction is not part of the
        loss (``_raw_needed``), it is computed when first read (``RawOnRead``): SAELens reads it
        only on logging steps, and ``hook_sae_recons`` fires then.
        """
        with torch.no_grad():
            self.threshold.data.clamp_(min=0.0)
        x = self._prepare_step(step_input)
        if x is None:
            return self._idle_step(step_input)
        y = self._to_geometry(x)
        feature_acts, hidden_pre = self._encode_top_k(y) if self.cfg.topk_training else self._encode_geometry(y)
        unit = self.unit_W_dec()  # the step's decoder rows, which the stability objective reads too
        y_hat = self._decode_geometry(feature_acts, unit)
        out = RawOnRead(lambda: self._raw_out(y_hat.detach()), sae_in=x, feature_acts=feature_acts,
                        hidden_pre=hidden_pre)
        if self._raw_needed(step_input):
            out.sae_out = self._raw_out(y_hat)
        aux = self.calculate_aux_loss(step_input=step_input, feature_acts=feature_acts,
                                      hidden_pre=hidden_pre, sae_out=y_hat, unit=unit)
        optimised, logged = self._geometry_losses(out, y, y_hat)
        out.loss, out.losses = optimised + sum(aux.values()), {**logged, **aux}
        return out

    def _encode_top_k(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``topk_training``'s codes: each sample's ``round(target_l0)`` largest positive pre-activations
        (the batch's ``round(target_l0) x batch`` largest with ``topk_mode="batch"``; the gradient
        reaches those); the thresholds become the smallest code kept in the batch."""
        hidden_pre = self._pre_acts(y)
        k, flat = round(self.cfg.target_l0), self.cfg.topk_mode == "batch"
        pos = hidden_pre.relu().flatten() if flat else hidden_pre.relu()
        top = pos.topk(k * hidden_pre[..., 0].numel() if flat else k, dim=-1)
        acts = torch.zeros_like(pos).scatter(-1, top.indices, top.values).view_as(hidden_pre)
        with torch.no_grad():
            kept = top.values[top.values > 0]
            if kept.numel():
                self.threshold.data.fill_(float(kept.min()))
        return self.hook_sae_acts_post(acts), hidden_pre  # type: ignore[arg-type]

    def calculate_aux_loss(self, step_input: TrainStepInput, feature_acts: torch.Tensor, hidden_pre: torch.Tensor,
                           sae_out: torch.Tensor, unit: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """SAELens's JumpReLU terms (none with ``topk_training``: k holds the L0), plus ``stability_loss`` when
        ``stability_coefficient > 0``, off the step's unit rows ``unit`` if given (``stability_rows``)."""
        aux = {} if self.cfg.topk_training else super().calculate_aux_loss(
            step_input=step_input, feature_acts=feature_acts, hidden_pre=hidden_pre, sae_out=sae_out)
        c = self.cfg
        if c.stability_coefficient > 0 and step_input.n_training_steps % c.stability_every == 0:
            rows = self.stability_directions if unit is None else self.stability_rows(unit)
            aux["stability_loss"] = c.stability_every * c.stability_coefficient * stability_penalty(
                c.stability_design, feature_acts, rows, c.stability_margin, c.stability_rows, c.stability_k_max,
                self.stability_generator)
        return aux

    def _raw_out(self, y_hat: torch.Tensor) -> torch.Tensor:
        """The raw reconstruction of ``y_hat`` (through ``hook_sae_recons``)."""
        return self.hook_sae_recons(self._from_geometry(y_hat))

    def _raw_needed(self, step_input: TrainStepInput) -> bool:
        """Whether this step computes the raw reconstruction up front: always in raw space (it is free
        and optimised)."""
        return True

    def _geometry_losses(self, out: "RawOnRead", y: torch.Tensor,
                         y_hat: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """(the reconstruction loss optimised, the losses to log by name); raw space here."""
        mse = self._reconstruction_loss(out.sae_out, out.sae_in)
        return mse, {"mse_loss": mse}

    def _reconstruction_loss(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (y_hat - y).pow(2).sum(dim=-1).mean()

    def _idle_step(self, step_input: TrainStepInput) -> TrainStepOutput:
        """A step that changes nothing (zero loss with a graph, no unit fires)."""
        x = step_input.sae_in
        zero = sum((p * 0).sum() for p in self.parameters())
        acts = torch.zeros(x.shape[0], self.cfg.d_sae, dtype=x.dtype, device=x.device)
        return TrainStepOutput(sae_in=x, sae_out=x, feature_acts=acts, hidden_pre=acts, loss=zero,  # type: ignore[arg-type]
                               losses={"mse_loss": zero.detach(), "l0_loss": zero.detach()})

    # ---- saving / loading / folding
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        """An inference save holds the atoms (unit rows). A training save (``save_model``, SAELens's
        checkpoints) keeps ``W_dec`` as the parameter is, so a resumed run continues from it and its
        optimizer state; ``TSAESAE`` takes its unit rows when it loads one."""
        super().process_state_dict_for_saving_inference(state_dict)
        state_dict["W_dec"] = self.unit_W_dec().detach().clone()

    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_loading(state_dict)
        check_state_dict_shapes(self, state_dict, self.cfg.architecture())

    def load_weights_from_checkpoint(self, checkpoint_path: Path | str) -> None:
        check_checkpoint_config(checkpoint_path, self.cfg.architecture(), self.cfg.d_in, self.cfg.d_sae)
        super().load_weights_from_checkpoint(checkpoint_path)

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """The forward pass already uses unit-norm atoms: normalising the stored rows changes nothing."""
        self.W_dec.data.copy_(self.unit_W_dec())

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Fold an input scale ``s`` (trained on ``s x``) keeping unit-norm atoms.

        With ``z' = z / s`` the codes become ``delta / s`` and ``x^ = (delta W_dec + b_dec) / s``:
        ``b_dec, b_enc, tau <- b_dec / s, b_enc / s, tau / s``; ``W_enc``, ``W_dec`` unchanged.
        """
        s = float(scaling_factor)
        self.b_dec.data /= s
        self.b_enc.data /= s
        self.threshold.data /= s
        self.cfg.normalize_activations = "none"

    def fold_activation_whitening(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("the TSAE does not use covariance_whitening; train 'tsae_aip' for a whitened geometry.")

    def atoms(self) -> torch.Tensor:
        """The atoms as rows ``[d_sae, d_in]`` in raw activation space (unit norm)."""
        return self._from_geometry_linear(self.unit_W_dec()).detach()

    def _from_geometry_linear(self, v: torch.Tensor) -> torch.Tensor:
        return v
