"""Faithfulness, sparsity and support recovery of a unit set on data (Atom Theory, arXiv 2509.20784).

* faithfulness ``R^2 = 1 - sum_i ||m_i - m^_i||^2 / sum_i ||m_i - mean(m)||^2`` (pooled over
  dimensions; ``||.||_S`` for the AIP version);
* sparsity ``K_i = ||delta_i||_0``, firing frequencies, dead and dense units;
* noise floor / amplitude gap of a threshold SAE (the TSAE support-recovery theorem).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from sae_atoms.aip import AIPMetric
from sae_atoms.evals.units import whiten_vectors, whitening_matrix

QUANTILES = (0.5, 0.9, 0.99)


def _check_pair(x: Tensor, x_hat: Tensor) -> None:
    if x.shape != x_hat.shape or x.dim() != 2:
        raise ValueError(f"x and x_hat must both be [n, d] with equal shapes; got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"R^2 needs at least 2 samples, got {x.shape[0]}")


def r2(x: Tensor, x_hat: Tensor, metric: AIPMetric | Tensor | None = None) -> float:
    """Pooled fraction of variance explained (Atom Theory's faithfulness).

    ``R^2 = 1 - sum_i ||m_i - m^_i||^2 / sum_i ||m_i - mean(m)||^2``, pooled over dimensions,
    in float64. With ``metric`` the norms are AIP norms ``||v||_S^2 = ||v W^T||^2``.
    """
    _check_pair(x, x_hat)
    W = whitening_matrix(metric)
    xd = x.double()
    err = whiten_vectors(xd - x_hat.double(), None if W is None else W.double())
    cen = whiten_vectors(xd - xd.mean(0, keepdim=True), None if W is None else W.double())
    tot = float((cen * cen).sum())
    if tot <= 0:
        raise ValueError("the activations have zero variance; R^2 is undefined")
    return 1.0 - float((err * err).sum()) / tot


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean squared error per element, ``mean_{i,k} (m_ik - m^_ik)^2``."""
    _check_pair(x, x_hat)
    return float(((x.double() - x_hat.double()) ** 2).mean())


def cosine(x: Tensor, x_hat: Tensor) -> float:
    """Mean per-sample cosine ``<m_i, m^_i> / (||m_i|| ||m^_i||)`` (as SAELens's ``cossim``)."""
    _check_pair(x, x_hat)
    return float(torch.nn.functional.cosine_similarity(x.double(), x_hat.double(), dim=1).mean())


def l0(codes: Tensor) -> Tensor:
    """Per-sample ``K_i = ||delta_i||_0`` (count of non-zero code entries), ``[n]`` long."""
    if codes.dim() != 2:
        raise ValueError(f"codes must be [n, N]; got {tuple(codes.shape)}")
    return (codes != 0).sum(1)


def qname(q: float) -> str:
    """The key suffix of quantile ``q``: ``0.5 -> "50"``, ``0.999 -> "99_9"``."""
    return f"{q * 100:g}".replace(".", "_")


def quantile_stats(values: Tensor, prefix: str, quantiles: Sequence[float] = QUANTILES) -> dict[str, float]:
    """``{prefix_mean, prefix_p50, ..., prefix_max}`` of a 1-d tensor."""
    v = values.double().flatten()
    out = {f"{prefix}_mean": float(v.mean())}
    for q in quantiles:
        out[f"{prefix}_p{qname(q)}"] = float(torch.quantile(v, q))
    out[f"{prefix}_max"] = float(v.max())
    return out


def firing_stats(codes: Tensor, dense_frac: float = 0.5) -> dict[str, Any]:
    """Per-unit firing frequency ``f_j = mean_i 1[delta_ij != 0]``; dead (``f_j = 0``) and
    dense (``f_j > dense_frac``) fractions of units (SAELens's feature-density convention)."""
    freq = (codes != 0).double().mean(0)
    return {"freq": freq, "dead_frac": float((freq == 0).double().mean()),
            "dense_frac": float((freq > dense_frac).double().mean()), "n_live": int((freq > 0).sum())}


@torch.no_grad()
def noise_floor_gap(pre: Tensor, codes: Tensor) -> dict[str, float]:
    """Noise floor and amplitude gap of a threshold SAE (TSAE support-recovery theorem).

    With support ``A_i = {j : delta_ij != 0}`` and pre-activations ``z_ij``:
    noise floor ``F = max_{i, j not in A_i} z_ij``, smallest on-support pre-activation
    ``P = min_{i, j in A_i} z_ij``, amplitude gap ``P - F`` (> 0 iff one common threshold in
    ``(F, P)`` recovers every support, the theorem's feasibility ``delta_min > eps (2K-1) delta_max``).
    Also per sample (``F_i``, ``P_i``, gap_i): median gap and the fraction of samples with gap_i > 0.
    """
    if pre.shape != codes.shape:
        raise ValueError(f"pre-activations {tuple(pre.shape)} and codes {tuple(codes.shape)} differ in shape")
    on = codes != 0
    z = pre.double()
    inf = torch.tensor(math.inf, dtype=torch.float64)
    off_max = torch.where(on, -inf, z).max(1).values
    on_min = torch.where(on, z, inf).min(1).values
    has_on, has_off = on.any(1), (~on).any(1)
    both = has_on & has_off
    floor = float(off_max[has_off].max()) if bool(has_off.any()) else float("nan")
    peak = float(on_min[has_on].min()) if bool(has_on.any()) else float("nan")
    gap_i = (on_min - off_max)[both]
    return {"noise_floor": floor, "on_support_min": peak, "amplitude_gap": peak - floor,
            "amplitude_gap_sample_p50": float(gap_i.median()) if gap_i.numel() else float("nan"),
            "amplitude_gap_sample_pos_frac": float((gap_i > 0).double().mean()) if gap_i.numel() else float("nan")}
