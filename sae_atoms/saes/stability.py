"""The TSAE's stability objective: keep the atoms that fire together incoherent.

Atom Theory's uniqueness bound (arXiv 2509.20784; Donoho-Elad, Tropp): a K-sparse code is
unique when the atoms active together have ``mu < 1/(2K - 1)``. Reading (b) of q* checks it per
sample, over the atoms active on that sample. The penalty pushes exactly those pairs apart, in
the geometry the SAE works in (for ``tsae_aip`` the AIP: its decoder rows are unit AIP vectors):

    coactive:  P = mean over samples n, pairs i < j active on n of  relu(|cos(e_i, e_j)| - m)^2
    coactive_own_k: the same with each sample's own margin  m_n = c / (2 K_n - 1)
    all:       P = mean over pairs i < j of a random subset of atoms of relu(|cos(e_i, e_j)| - m)^2

``coactive`` is weighted by how often a pair fires together (each sample counts its own pairs);
``all`` is the global decoder-coherence penalty of the literature (OrtSAE, arXiv 2509.22033,
which also works on random chunks of the dictionary), the baseline design. The margin ``m``
defaults to half the bound at the batch's mean L0, ``0.5 / (2 K - 1)``, so the hinge is active
until co-active pairs sit well inside the bound. q* (b) asks each sample for ``mu_n < 1/(2 K_n - 1)``
at its own K: a batch's margin is too loose for samples above the mean L0, which
``coactive_own_k`` gives the margin of their own K (``c`` = 0.5, or ``stability_margin`` read as
``c``). Gradients reach the decoder rows only (which atoms fire is taken as given).

Cost: ``coactive`` uses the batch's first ``rows`` samples, each with its ``k_max`` strongest
active atoms (``[rows, k, k]`` Gram blocks); ``all`` a ``[rows, rows]`` Gram of ``rows`` random atoms; both
small against the step's ``[batch, d] x [d, d_sae]`` products. The rows come from ``Rows``: a
training step hands over its own unit decoder rows (``TSAETrainingSAE.stability_rows``), so rows in
the SAE's geometry are gathered from them, not normalised anew; a function is asked only for the
atoms read (each once): a geometry that maps rows (``tsae_aip``'s full AIP, ``d^2`` per row) then
pays for those, not for the whole dictionary; at a few hundred rows that map is as large as one of
the step's products, which ``stability_every`` spreads over steps.

Why ``all`` can serve reading (b): held-out samples fire pairs of atoms that never fired together
in a training batch, so a penalty on the co-active pairs of the batch leaves them coherent; the
global penalty keeps every pair apart. It needs ``rows`` in the hundreds, not tens: with tens
of atoms a step it barely moved q* (b) in issue 22's sweeps, at the same expected gradient.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import torch
from torch import Tensor

DESIGNS = ("coactive", "all", "coactive_own_k")

# the unit rows in the objective's geometry: a ``[N, d]`` tensor, or a function from a 1-D tensor of
# atom indices to those atoms' rows (``TSAETrainingSAE.stability_directions`` / ``stability_rows``)
Rows = Union[Tensor, Callable[[Tensor], Tensor]]


def _select(rows: Rows, idx: Tensor) -> Tensor:
    """The rows of the atoms ``idx`` (1-D), each computed once (index_select: a fast backward)."""
    return rows(idx) if callable(rows) else rows.index_select(0, idx.to(rows.device))


def default_margin(codes: Tensor) -> float:
    """Half the uniqueness bound at the mean L0 of ``codes``: ``0.5 / (2 K - 1)``."""
    k = float((codes != 0).float().sum(-1).mean().clamp_min(1.0))
    return 0.5 / (2 * k - 1) if k > 1 else 0.5


class HingeGram(torch.autograd.Function):
    """``sum(relu(|G| - m)^2 * P)`` with ``G = E E^T`` for rows ``E`` ``[..., k, d]``, a 0/1 pair mask
    ``P`` ``[..., k, k]`` and a margin ``m`` (a float, or a tensor broadcast to ``P``), with its gradient
    in closed form: ``dE = (W + W^T) E``, ``W = 2 relu(|G| - m) sign(G) P``. One product backward where
    autograd through ``E @ E^T`` takes two (it does not know ``G`` is symmetric) and adds them."""

    @staticmethod
    def forward(ctx: Any, E: Tensor, pair: Tensor, margin: float | Tensor) -> Tensor:
        G = E @ E.transpose(-1, -2)
        sign = G.sign()
        over = G.abs_().sub_(margin).relu_().mul_(pair)          # relu(|G| - m) on the pairs, 0 elsewhere
        ctx.save_for_backward(E, over, sign)
        return torch.dot(over.view(-1), over.view(-1))

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        E, over, sign = ctx.saved_tensors
        w = over.mul(sign).mul_(2 * g)                           # W, scaled by the incoming gradient
        return (w + w.transpose(-1, -2)) @ E, None, None


def coactive_penalty(codes: Tensor, rows_unit: Rows, margin: float | None, rows: int, k_max: int,
                     own_k: bool = False) -> Tensor:
    """The ``coactive`` design on the first ``rows`` samples of ``codes`` ``[batch, N]`` (batches
    come shuffled) with unit decoder rows ``rows_unit`` (``Rows``): each sample's ``k_max``
    strongest active units; ``margin`` None: ``default_margin`` of those samples. ``own_k``: the
    ``coactive_own_k`` design, each sample's margin ``c / (2 K_n - 1)`` (``c`` = ``margin`` or 0.5)."""
    c = codes.detach()[:rows]
    k_n = (c != 0).sum(-1)
    k = min(k_max, int(k_n.max()))
    if k < 2:
        return _select(rows_unit, c.new_zeros(1, dtype=torch.long)).sum() * 0.0
    if own_k:
        m = ((0.5 if margin is None else margin) / (2 * k_n.clamp_min(1) - 1).to(c.dtype)).view(-1, 1, 1)
    else:
        m = default_margin(c) if margin is None else margin
    val, idx = c.abs().topk(k, dim=-1)
    if callable(rows_unit):                                                   # each atom's row made once
        read, where = idx.flatten().unique(return_inverse=True)
        E = rows_unit(read).index_select(0, where)
    else:                                                                     # rows at hand: one gather
        E = _select(rows_unit, idx.flatten())
    E = E.view(*idx.shape, -1)                                                # [r, k, d]
    on = (val > 0).to(E.dtype)                                                # [r, k]
    pair = (on.unsqueeze(2) * on.unsqueeze(1)).triu_(1)                       # co-active pairs i < j
    return HingeGram.apply(E, pair, m) / pair.sum().clamp_min(1.0)            # over [r, k, k] cosines


def global_penalty(codes: Tensor, rows_unit: Rows, margin: float | None, rows: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """The ``all`` design on ``rows`` random atoms of the ``N`` of ``codes`` ``[batch, N]`` with unit
    rows ``rows_unit`` (``Rows``); ``margin`` None: ``default_margin(codes)``. The atoms are drawn
    from ``generator`` (a CPU generator), or from the global RNG when it is None."""
    m = default_margin(codes) if margin is None else margin
    E = _select(rows_unit, torch.randperm(codes.shape[-1], generator=generator)[:rows].to(codes.device))
    pair = torch.ones(E.shape[0], E.shape[0], dtype=E.dtype, device=E.device).triu_(1)  # every pair i < j
    return HingeGram.apply(E, pair, m) / max(E.shape[0] * (E.shape[0] - 1) / 2, 1.0)


def stability_penalty(design: str, codes: Tensor, rows_unit: Rows, margin: float | None, rows: int,
                      k_max: int, generator: torch.Generator | None = None) -> Tensor:
    """``P`` of ``design`` (module docstring); ``generator``: the ``all`` design's draws (``global_penalty``)."""
    if design in ("coactive", "coactive_own_k"):
        return coactive_penalty(codes, rows_unit, margin, rows, k_max, own_k=design == "coactive_own_k")
    if design == "all":
        return global_penalty(codes, rows_unit, margin, rows, generator)
    raise ValueError(f"stability_design={design!r}: use one of {DESIGNS}.")
