"""The TSAE's stability objective: keep the atoms that fire together incoherent.

Atom Theory's uniqueness bound (arXiv 2509.20784; Donoho-Elad, Tropp): a K-sparse code is
unique when the atoms active together have ``mu < 1/(2K - 1)``. Reading (b) of q* checks it per
sample, over the atoms active on that sample. The penalty pushes exactly those pairs apart, in
the geometry the SAE works in (for ``tsae_aip`` the AIP: its decoder rows are unit AIP vectors):

    coactive:  P = mean over samples n, pairs i < j active on n of  relu(|cos(e_i, e_j)| - m)^2
    all:       P = mean over pairs i < j of a random subset of atoms of relu(|cos(e_i, e_j)| - m)^2

``coactive`` is weighted by how often a pair fires together (each sample counts its own pairs);
``all`` is the global decoder-coherence penalty of the literature (OrtSAE, arXiv 2509.22033,
which also works on random chunks of the dictionary), the baseline design. The margin ``m``
defaults to half the bound at the batch's mean L0, ``0.5 / (2 K - 1)``, so the hinge is active
until co-active pairs sit well inside the bound. Gradients reach the decoder rows only (which
atoms fire is taken as given).

Cost: ``coactive`` uses ``rows`` samples a step, each with its ``k_max`` strongest active atoms
(``[rows, k, k]`` Gram blocks); ``all`` a ``[rows, rows]`` Gram of ``rows`` random atoms; both
small against the step's ``[batch, d] x [d, d_sae]`` products.
"""

from __future__ import annotations

import torch
from torch import Tensor

DESIGNS = ("coactive", "all")


def default_margin(codes: Tensor) -> float:
    """Half the uniqueness bound at the batch's mean L0: ``0.5 / (2 K - 1)``."""
    k = float((codes != 0).float().sum(-1).mean().clamp_min(1.0))
    return 0.5 / (2 * k - 1) if k > 1 else 0.5


def _hinge(cos: Tensor, margin: float) -> Tensor:
    return torch.relu(cos.abs() - margin).pow(2)


def coactive_penalty(codes: Tensor, rows_unit: Tensor, margin: float, rows: int, k_max: int,
                     generator: torch.Generator | None = None) -> Tensor:
    """The ``coactive`` design on ``rows`` random samples of ``codes`` ``[batch, N]`` with unit
    decoder rows ``rows_unit`` ``[N, d]``: each sample's ``k_max`` strongest active units."""
    pick = torch.randperm(codes.shape[0], generator=generator, device="cpu")[:rows].to(codes.device)
    c = codes.detach()[pick]
    k = int(min(k_max, c.shape[1], int((c != 0).sum(-1).max())))
    if k < 2:
        return rows_unit.sum() * 0.0
    val, idx = c.abs().topk(k, dim=-1)
    on = (val > 0).to(rows_unit.dtype)                                  # [r, k]
    E = rows_unit[idx]                                                  # [r, k, d]
    G = E @ E.transpose(1, 2)                                           # [r, k, k] cosines
    pair = on.unsqueeze(2) * on.unsqueeze(1) * torch.triu(torch.ones(k, k, device=E.device), 1)
    return (_hinge(G, margin) * pair).sum() / pair.sum().clamp_min(1.0)


def global_penalty(rows_unit: Tensor, margin: float, rows: int, generator: torch.Generator | None = None) -> Tensor:
    """The ``all`` design on ``rows`` random atoms of ``rows_unit`` ``[N, d]``."""
    pick = torch.randperm(rows_unit.shape[0], generator=generator, device="cpu")[:rows].to(rows_unit.device)
    E = rows_unit[pick]
    G = E @ E.T
    return _hinge(torch.triu(G, 1), margin).sum() / max(len(pick) * (len(pick) - 1) / 2, 1.0)


def stability_penalty(design: str, codes: Tensor, rows_unit: Tensor, margin: float | None, rows: int,
                      k_max: int) -> Tensor:
    """``P`` of ``design`` (module docstring); ``margin`` None: ``default_margin(codes)``."""
    m = default_margin(codes) if margin is None else margin
    if design == "coactive":
        return coactive_penalty(codes, rows_unit, m, rows, k_max)
    if design == "all":
        return global_penalty(rows_unit, m, rows)
    raise ValueError(f"stability_design={design!r}: use one of {DESIGNS}.")
