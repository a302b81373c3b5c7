"""Checks shared by the SAE architectures and the training code: widths, batches, state dicts,
checkpoints, and the ranges of every training config's fields (SAELens's architectures and ours).

Each raises one ``ValueError`` that names what was wrong and what to do.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from sae_lens.constants import SAE_CFG_FILENAME
from torch import nn

def check_width(x: torch.Tensor, d_in: int, what: str = "input", hint: str = "") -> None:
    """Raise a clear error if the last dimension of ``x`` is not ``d_in`` (shapes only: cheap on every call)."""
    if x.shape[-1] != d_in:
        raise ValueError(f"the {what} has width {x.shape[-1]} (shape {tuple(x.shape)}) but the SAE has d_in={d_in}; "
                         + (hint or f"pass activations of the hook the SAE was trained on (width {d_in})."))


def check_batch(x: torch.Tensor, d_in: int, step: int | None, what: str = "activation batch") -> None:
    """Raise a clear error if ``x`` is not ``[..., d_in]`` or holds NaN/Inf (the step and the count)."""
    where = f"training step {step}: " if step is not None else ""
    check_width(x, d_in, f"{what} at training step {step}" if step is not None else what,
                f"set d_in to the width of the hook's activations ({x.shape[-1]}) or train on the hook the config "
                "was made for.")
    n_bad = int((~torch.isfinite(x)).sum())
    if n_bad:
        raise FloatingPointError(
            f"{where}the {what} of shape {tuple(x.shape)} contains {n_bad} non-finite values (NaN/Inf); "
            "training stopped. Check the model's dtype (float16 overflow), the hook, and the data; drop the bad "
            "rows or run the model in float32."
        )


def check_state_dict_shapes(sae: nn.Module, state_dict: dict[str, Any], arch: str) -> None:
    """Compare a state dict's tensors with the SAE's (names and shapes) and say what differs."""
    own = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [(k, tuple(state_dict[k].shape), own[k]) for k in own if k in state_dict and tuple(state_dict[k].shape) != own[k]]
    if missing or unexpected or wrong:
        cfg = sae.cfg  # type: ignore[attr-defined]
        parts = []
        if wrong:
            parts.append("shape mismatch: " + ", ".join(f"{k} is {a} in the file but {b} here" for k, a, b in wrong))
        if missing:
            parts.append(f"missing tensors {missing}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected}")
        raise ValueError(
            f"these weights do not belong to a {arch!r} SAE with d_in={cfg.d_in}, d_sae={cfg.d_sae}: "
            + "; ".join(parts)
            + ". They come from another architecture or width: load them with the config they were saved with "
            "(SAE.load_from_disk(path) reads it from cfg.json)."
        )


def check_checkpoint_config(path: str | Path, arch: str, d_in: int, d_sae: int) -> None:
    """Read ``cfg.json`` beside a checkpoint and require the same architecture and sizes."""
    cfg_path = Path(path) / SAE_CFG_FILENAME
    if not cfg_path.exists():
        return
    cfg = json.loads(cfg_path.read_text())
    got = (cfg.get("architecture"), cfg.get("d_in"), cfg.get("d_sae"))
    if got != (arch, d_in, d_sae):
        raise ValueError(
            f"the checkpoint at {path} is architecture={got[0]!r}, d_in={got[1]}, d_sae={got[2]} but this run is "
            f"architecture={arch!r}, d_in={d_in}, d_sae={d_sae}. Resume with the config the checkpoint was trained "
            "with, or start a new run."
        )


def check_finite_fields(cfg: Any) -> None:
    """Reject NaN / inf in a config's numeric fields (a non-finite hyperparameter trains an all-NaN SAE)."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{f.name}={v} is not finite; give a finite number.")


def check_number(name: str, value: Any, low: float, high: float = math.inf, *, open_low: bool = False,
                 integer: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` and the allowed range unless ``value`` is a finite number
    (an integer if ``integer``) in ``[low, high]`` (``(low, high]`` if ``open_low``)."""
    bound = f"> {low:g}" if open_low else f">= {low:g}"
    if high < math.inf:
        bound = f"in {'(' if open_low else '['}{low:g}, {high:g}]"
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r} is not a number; give {kind} {bound}.")
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not finite; give {kind} {bound}.")
    if (integer and not float(value).is_integer()) or not (value > low if open_low else value >= low) or value > high:
        raise ValueError(f"{name}={value!r} must be {kind} {bound}.")


# training-config field -> (lowest value, lowest excluded, integer, at most d_sae); a None value is the field's "off".
# The fields of every SAELens architecture (and ours) that a wrong sign or zero silently breaks (d_sae first:
# the caps read it).
_CONFIG_RANGES: dict[str, tuple[float, bool, bool, bool]] = {
    "d_in": (1, False, True, False), "d_sae": (1, False, True, False),
    "l1_coefficient": (0, False, False, False), "l0_coefficient": (0, False, False, False),
    "aux_loss_coefficient": (0, False, False, False), "pre_act_loss_coefficient": (0, False, False, False),
    "l1_warm_up_steps": (0, False, True, False), "l0_warm_up_steps": (0, False, True, False),
    "lp_norm": (0, True, False, False), "decoder_init_norm": (0, True, False, False),
    "jumprelu_init_threshold": (0, False, False, False), "jumprelu_bandwidth": (0, True, False, False),
    "jumprelu_tanh_scale": (0, True, False, False), "topk_threshold_lr": (0, False, False, False),
    "k": (0, True, False, True), "target_l0": (0, True, False, True),
    "residual_threshold": (0, False, False, False), "max_iterations": (1, False, True, False),
    "stability_coefficient": (0, False, False, False), "stability_margin": (0, True, False, False),
    "stability_rows": (2, False, True, False), "stability_k_max": (2, False, True, False),
    "stability_every": (1, False, True, False),
}


def check_training_config(cfg: Any) -> None:
    """The finiteness and range checks of every training config (SAELens's architectures and ours):
    no NaN / inf, positive sizes, non-negative coefficients and warm-ups, positive widths and norms,
    ``k`` / ``target_l0`` in ``(0, d_sae]``. One ``ValueError`` naming the field and its range."""
    names = {f.name for f in fields(cfg)}
    for name, (low, open_low, integer, capped) in _CONFIG_RANGES.items():
        value = getattr(cfg, name, None) if name in names else None
        if value is not None:
            check_number(name, value, low, cfg.d_sae if capped else math.inf, open_low=open_low, integer=integer)
    check_finite_fields(cfg)  # the fields without a range
