"""Orthonormal atoms in the AIP: a dictionary that meets the uniqueness bound by construction.

Atom Theory's stability (arXiv 2509.20784) asks that the atoms active on a sample be incoherent in
the AIP, ``mu_S < 1/(2K - 1)``. At large K that margin is far below the |cos| of random directions,
so trained dictionaries miss it on nearly every sample. Atoms taken from one orthonormal basis of
the whitened space have ``mu_S = 0`` on every sample, whatever K. ``orthonormal_atoms`` learns such
bases from activations, after Lesage et al., "Learning unions of orthonormal bases with thresholded
singular value decomposition" (ICASSP 2005)::

    y = whiten(x)
    repeat:  Z = the K largest |y Q_b^T| of each row, in the basis b whose K keep the most energy
             Q_b = U V^T   where  U S V^T = svd(Z_b^T Y_b)        (orthogonal Procrustes)

One basis is exactly a SAELens ``TopKSAE`` over the atoms and their negatives (``2 d`` latents; a
signed coefficient is the positive one of its pair), with ``whiten(x) = (x - mean) W^T``::

    W_enc = [W^T Q^T, -W^T Q^T],  b_enc = 0,  W_dec = [Q W^-T; -Q W^-T],  b_dec = mean

so it saves, loads and hooks like any SAELens SAE. With ``n_bases > 1`` each sample is coded in one
basis while learning, and the returned ``TopKSAE`` keeps the K largest over every basis's atoms:
co-active atoms of two bases are not orthogonal, so the bound holds by construction for one basis.

What it costs: the code is the best K-term approximation in the AIP, so its error is spread evenly
over whitened directions, and raw R^2 and CE pay for it. It is a construction (no gradient steps),
so it does not train inside SAELens's runners.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from torch import Tensor
from tqdm.auto import tqdm

from sae_atoms.aip import AIPMetric

ROWS = 65_536  # rows coded at once (each basis's coefficients of a block are the block's memory)


@torch.no_grad()
def orthonormal_atoms(x: Tensor, k: int, metric: AIPMetric, *, n_bases: int = 1, iters: int = 100, seed: int = 0,
                      hook: str | None = None, progress: bool = False) -> TopKSAE:
    """``n_bases`` orthonormal bases of ``metric``'s whitened space learned on ``x`` ``[n, d]`` for
    ``k``-sparse codes (``iters`` Procrustes steps from random bases drawn with ``seed``), as a
    SAELens ``TopKSAE`` with ``2 * n_bases * d`` latents (module docstring), on the CPU."""
    if not isinstance(metric, AIPMetric):
        raise ValueError(f"metric must be an AIPMetric (the geometry the atoms are orthonormal in), not {type(metric).__name__}")
    x = _check(x, k, n_bases, iters).cpu()
    d = x.shape[1]
    y = metric.whiten(x)
    g = torch.Generator().manual_seed(seed)
    bases = [torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0].float() for _ in range(n_bases)]
    for _ in tqdm(range(iters), desc="orthonormal atoms", disable=not progress):
        which, z = sparse_code(y, bases, k)
        for b in range(n_bases):
            rows = which == b
            if bool(rows.any()):
                u, _, vh = torch.linalg.svd((z[rows].T @ y[rows]).double())
                bases[b] = (u @ vh).float()
    return _as_topk(torch.cat(bases), metric, k, hook)


def sparse_code(y: Tensor, bases: list[Tensor], k: int) -> tuple[Tensor, Tensor]:
    """Each row's basis (the one whose ``k`` largest |coefficients| keep the most energy) and its
    ``k``-sparse coefficients in it ``[n, d]``."""
    which = torch.zeros(len(y), dtype=torch.long)
    z = torch.zeros_like(y)
    for i in range(0, len(y), ROWS):
        best = torch.full((min(ROWS, len(y) - i),), -1.0)
        for b, q in enumerate(bases):
            c = y[i:i + ROWS] @ q.T
            top = c.abs().topk(k, dim=1).indices
            kept = torch.zeros_like(c).scatter_(1, top, c.gather(1, top))
            energy = kept.pow(2).sum(1)
            better = energy > best
            best = torch.where(better, energy, best)
            which[i:i + ROWS][better] = b
            z[i:i + ROWS][better] = kept[better]
    return which, z


def _as_topk(Q: Tensor, metric: AIPMetric, k: int, hook: str | None) -> TopKSAE:
    """The ``TopKSAE`` over the atoms ``Q`` (whitened rows) and their negatives."""
    Q = Q.double().cpu()
    enc, dec = metric.W.T.double().cpu() @ Q.T, Q @ metric.W_inv.T.double().cpu()
    cfg = TopKSAEConfig(d_in=Q.shape[1], d_sae=2 * Q.shape[0], k=k, apply_b_dec_to_input=True)
    cfg.metadata.hook_name = hook
    sae = TopKSAE(cfg)
    sae.W_enc.copy_(torch.cat([enc, -enc], 1))
    sae.b_enc.zero_()
    sae.W_dec.copy_(torch.cat([dec, -dec], 0))
    sae.b_dec.copy_(metric.mean.double().cpu().reshape(-1))  # zero for an uncentred metric
    return sae


def _check(x: Any, k: int, n_bases: int, iters: int) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 2:
        raise ValueError(f"x must be a [n, d] tensor of activations, got {getattr(x, 'shape', type(x).__name__)}")
    n, d = x.shape
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= d:
        raise ValueError(f"k={k} must be a whole number between 1 and d={d} (the atoms active on a sample, all in one basis)")
    if n_bases < 1 or iters < 1:
        raise ValueError(f"n_bases={n_bases} and iters={iters} must both be at least 1")
    if n < d:
        raise ValueError(f"{n} rows cannot fix a basis of R^{d}; give at least {d} activations")
    return x.float()
