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

``ica_atoms`` learns the bases by independent component analysis instead: whitening followed by
the rotation that makes the coefficients most non-Gaussian is ICA's classical pipeline, and the AIP
is the whitening. Symmetric FastICA (Hyvarinen, "Fast and robust fixed-point algorithms for ICA",
IEEE TNN 1999), with ``s = y Q^T`` and a contrast's nonlinearity ``g``::

    Q <- E[g(s)^T y] - diag(E[g'(s)]) Q,   then  Q <- U V^T  (the nearest orthonormal Q)

``contrast="logcosh"`` (``g = tanh``) reads any non-Gaussianity and is robust to outliers;
``contrast="skew"`` (``g(s) = s^2``, the third cumulant) reads only asymmetry. Why offer it: a
feature that fires adds a one-sided coefficient along its direction, so sparse, non-negative
sources are skewed as well as heavy-tailed; the skew contrast reads that asymmetry and leaves
symmetric directions unidentified, the nearly Gaussian ones where logcosh's steps converge slowly.

ICA's basis is identifiable up to sign and order when the coefficients are independent and
non-Gaussian (Comon 1994), which is the stability Atom Theory asks of atoms; the Procrustes
objective, the best K-term code, has many local optima that a seed picks among. Identifiable is
not the same as well estimated: from a few rows per dimension the basis still moves with the rows
it sees (a subset's basis differs from the whole set's), and a mixture's bases each see only
their share of the rows. One ICA basis does not depend on K (K only sets the TopK encoder). With
``n_bases > 1`` each basis takes one FastICA step on the rows coded in it (a mixture of ICAs, after
Lee & Lewicki 2000).

What it costs: the code is the best K-term approximation in its basis of the AIP, so its error is
spread over whitened directions, not weighted by their raw variance, and raw R^2 and CE pay for
it. It is a construction (no gradient steps), so it does not train inside SAELens's runners. Rows
are used as given: leave massive activations out first (``sae_atoms.massive.typical``), as their
norm would own both updates.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any, Callable

import torch
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from torch import Tensor
from tqdm.auto import tqdm

from sae_atoms.aip import AIPMetric

ROWS = 65_536  # rows coded at once (each basis's coefficients of a block are the block's memory)
LONG_FIT = 10_000_000  # rows x steps from which an ICA fit shows a progress bar (a fit of seconds, not a test's)


def _logcosh(s: Tensor) -> tuple[Tensor, Tensor]:
    g = torch.tanh(s)
    return g, 1 - g.pow(2)


CONTRASTS: dict[str, Callable[[Tensor], tuple[Tensor, Tensor]]] = {  # s -> FastICA's g(s), g'(s)
    "logcosh": _logcosh,
    "skew": lambda s: (s.pow(2), 2 * s),
}


@torch.no_grad()
def orthonormal_atoms(x: Tensor, k: int, metric: AIPMetric, *, n_bases: int = 1, iters: int = 100, seed: int = 0,
                      hook: str | None = None, progress: bool = False) -> TopKSAE:
    """``n_bases`` orthonormal bases of ``metric``'s whitened space learned on ``x`` ``[n, d]`` for
    ``k``-sparse codes (``iters`` Procrustes steps from random bases drawn with ``seed``), as a
    SAELens ``TopKSAE`` with ``2 * n_bases * d`` latents (module docstring), on the CPU."""
    bases = _learn(_whitened(x, k, n_bases, iters, metric), k, n_bases, iters, seed, _procrustes, progress)
    return _as_topk(torch.cat(bases), metric, k, hook)


@torch.no_grad()
def ica_atoms(x: Tensor, k: int, metric: AIPMetric, *, n_bases: int = 1, iters: int = 200, seed: int = 0,
              hook: str | None = None, contrast: str = "logcosh") -> TopKSAE:
    """As ``orthonormal_atoms``, with the bases learned by ``iters`` symmetric FastICA steps of
    ``contrast`` (a ``CONTRASTS`` key; module docstring): seeds agree more often, as ICA's optimum is
    identifiable. A tqdm bar shows the steps of a fit on more than ``LONG_FIT`` row-steps."""
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast={contrast!r} is not one of {sorted(CONTRASTS)}")
    update = partial(_fastica, contrast=contrast)
    bases = _learn(_whitened(x, k, n_bases, iters, metric), k, n_bases, iters, seed, update, len(x) * iters > LONG_FIT)
    return _as_topk(torch.cat(bases), metric, k, hook)


@torch.no_grad()
def refine_atoms(sae: TopKSAE, x: Tensor, metric: AIPMetric, *, iters: int = 10, progress: bool = False) -> TopKSAE:
    """``iters`` Procrustes steps (``orthonormal_atoms``'s update) for ``sae``'s own k-sparse codes,
    from its bases: ``sae`` is an ``orthonormal_atoms`` or ``ica_atoms`` result in ``metric``. Why:
    ICA's basis does not depend on K and Procrustes's depends on its start; a few steps from ICA fit
    the basis to the K-term code the TopK encoder keeps, at the cost of some of ICA's seed agreement.
    The steps fit the whitened K-term code; a ``raw_selecting`` SAE stays one (fitting the codes of
    the raw selection instead lowered the token benchmark's CE-loss score)."""
    k, d = sae.cfg.k, sae.cfg.d_in
    start = metric.whiten(sae.W_dec[:sae.cfg.d_sae // 2].detach().cpu() + sae.b_dec.detach().cpu()).split(d)  # _as_topk's Q
    bases = _learn(_whitened(x, k, len(start), iters, metric), k, len(start), iters, 0, _procrustes, progress, list(start))
    out = _as_topk(torch.cat(bases), metric, k, sae.cfg.metadata.hook_name)
    return raw_selecting(out) if sae.cfg.rescale_acts_by_decoder_norm else out


def raw_selecting(sae: TopKSAE, k: int | None = None) -> TopKSAE:
    """The same atoms (keeping ``k`` if given, else the same K) with SAELens's
    ``rescale_acts_by_decoder_norm`` on: each sample keeps the K atoms whose contributions
    ``|c_i| ||d_i||`` to the raw activation are largest, not the K largest whitened coefficients
    ``|c_i|``; a kept support reconstructs as before. Why: the whitened choice minimises the error in
    the AIP, where every whitened direction weighs alike, while CE loss follows the raw error;
    SAELens's own TopK SAEs train with this selection. The atoms are unchanged (one
    orthonormal basis per sample: mu_S = 0 still), only which K of them a sample keeps."""
    out = TopKSAE(replace(sae.cfg, k=k or sae.cfg.k, rescale_acts_by_decoder_norm=True))
    out.load_state_dict(sae.state_dict())
    return out


Update = Callable[[Tensor, Tensor, Tensor], Tensor]  # (rows y, their k-sparse codes z, basis Q) -> new Q


def _learn(y: Tensor, k: int, n_bases: int, iters: int, seed: int, update: Update, progress: bool,
           start: list[Tensor] | None = None) -> list[Tensor]:
    """Alternate from ``start`` (random bases drawn with ``seed`` if None): code each row in its best
    basis, then ``update`` each basis on its rows."""
    g = torch.Generator().manual_seed(seed)
    bases = start or [torch.linalg.qr(torch.randn(y.shape[1], y.shape[1], generator=g, dtype=torch.float64))[0].float()
                      for _ in range(n_bases)]
    ica = getattr(update, "func", update) is _fastica
    whole = n_bases == 1 and ica  # one ICA basis needs no codes: every row is its own
    for _ in tqdm(range(iters), desc=f"{'ICA' if ica else 'orthonormal'} atoms", disable=not progress):
        if whole:
            bases[0] = update(y, y, bases[0])
            continue
        which, z = sparse_code(y, bases, k)
        for b in range(n_bases):
            rows = which == b
            if bool(rows.any()):
                bases[b] = update(y[rows], z[rows], bases[b])
    return bases


def _procrustes(y: Tensor, z: Tensor, q: Tensor) -> Tensor:
    """The orthonormal ``Q`` nearest to reproducing ``y`` from the codes ``z`` (orthogonal Procrustes)."""
    return _nearest_orthonormal(z.T @ y)


def _fastica(y: Tensor, z: Tensor, q: Tensor, contrast: str = "logcosh") -> Tensor:
    """One symmetric FastICA step of ``contrast`` (module docstring), in blocks of ``ROWS`` rows."""
    w, slope = torch.zeros_like(q), torch.zeros(len(q))
    for i in range(0, len(y), ROWS):
        g, dg = CONTRASTS[contrast](y[i:i + ROWS] @ q.T)
        w += g.T @ y[i:i + ROWS]
        slope += dg.sum(0)
    return _nearest_orthonormal(w - slope[:, None] * q)  # the 1/n of both expectations cancels in the polar factor


def _nearest_orthonormal(m: Tensor) -> Tensor:
    u, _, vh = torch.linalg.svd(m.double())
    return (u @ vh).float()


def _whitened(x: Any, k: int, n_bases: int, iters: int, metric: Any) -> Tensor:
    if not isinstance(metric, AIPMetric):
        raise ValueError(f"metric must be an AIPMetric (the geometry the atoms are orthonormal in), not {type(metric).__name__}")
    return metric.whiten(_check(x, k, n_bases, iters).cpu())


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
