"""The TSAE theorem's construction: a ``tsae_aip`` dictionary that memorises its n training samples.

Atom Theory (arXiv 2509.20784) proves that at width >= n every sample can be coded by an atom of
its own: atom ``i`` is sample ``i`` in the AIP, the encoder tied to it, and a threshold that
sample ``i`` clears and no other sample does. ``theorem_init`` builds it on a training SAE (the
frontier's paper regime starts from it), untying an atom's encoder where no threshold on the tied
row separates its sample from a nearly parallel, longer one.
"""

from __future__ import annotations

import math
from typing import Any

import torch


@torch.no_grad()
def theorem_init(sae: Any, x: torch.Tensor, margin: float = 0.02) -> int:
    """The TSAE theorem's construction on a ``tsae_aip`` training SAE of width >= n: atom ``i`` is
    sample ``i`` in the AIP, ``e_i = y_i / ||y_i||`` (``y = W (x - mu)``), the encoder is tied
    (``W_enc = E^T``, i.e. ``D^T S`` in raw space), biases zero, and ``tau_i`` lies midway between the
    atom's own amplitude ``||y_i||`` and its largest off-support pre-activation ``max_j <y_j, e_i>``.
    Units beyond n copy atom ``i mod n`` with an unreachable threshold (never fire).

    Where no threshold separates (``max_j <y_j, e_i> >= (1 - margin) ||y_i||``: a longer sample
    nearly parallel to ``y_i``, so the tied construction leaves some samples with no atom and some
    with two), the encoder of atom ``i`` is untied (``_separate``): the least-norm ``w`` with
    ``<y_i, w> = ||y_i||`` and ``<y_j, w> = 0`` on its nearest samples, after which each such sample
    fires its own atom alone.
    The decoder is untouched. Returns the number of untied atoms."""
    n, width = x.shape[0], sae.cfg.d_sae
    y = sae._to_geometry(x.to(sae.dtype))
    norms = y.norm(dim=1).clamp_min(1e-12)
    e = y / norms[:, None]
    idx = torch.arange(width) % n
    sae.W_dec.data.copy_(e[idx])
    enc = e.clone()
    sae.b_enc.data.zero_()
    sae.b_dec.data.zero_()
    off = torch.full((n,), -math.inf, dtype=y.dtype)
    for i in range(0, n, 2048):  # max_j != i <y_j, e_i>, blocked over atoms
        g = y @ e[i:i + 2048].T
        g[torch.arange(i, min(i + 2048, n)), torch.arange(g.shape[1])] = -math.inf
        off[i:i + 2048] = g.max(0).values
    untied = 0
    for i in torch.nonzero(off >= (1.0 - margin) * norms).squeeze(1).tolist():
        sep = _separate(y, i, float(norms[i]), margin)
        if sep is not None:  # else the tied row stays (no linear encoder separates this sample)
            (enc[i], off[i]), untied = sep, untied + 1
    sae.W_enc.data.copy_(enc[idx].T)
    tau = 0.5 * (norms + off.clamp_min(0.0))
    thr = tau[idx].clone()
    thr[n:] = 1e3 * float(norms.max())  # copies beyond n never fire
    sae.threshold.data.copy_(thr.clamp_min(1e-4))
    return untied


def _separate(y: torch.Tensor, i: int, amplitude: float, margin: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An encoder row for sample ``i`` that its nearest samples do not excite: ``w`` in the span of
    ``y_i`` and its ``m`` largest projections onto it, ``<y_i, w> = amplitude``, ``<y_j, w> = 0`` for
    those ``j`` (least norm), ``m`` doubled until every other sample stays below ``(1 - margin)``
    x amplitude. Returns ``(w, max_{j != i} <y_j, w>)``, or None when even 32 neighbours do not
    separate it (``y_i`` too close to a multiple of another sample)."""
    n = y.shape[0]
    score = y @ (y[i] / amplitude)
    score[i] = -math.inf
    for m in (1, 2, 4, 8, 16, 32):
        nbrs = score.topk(min(m, n - 1)).indices
        Y = torch.cat([y[i:i + 1], y[nbrs]]).double()
        rhs = torch.zeros(Y.shape[0], dtype=torch.float64)
        rhs[0] = amplitude
        w = (Y.T @ torch.linalg.lstsq(Y @ Y.T, rhs).solution).to(y.dtype)
        pre = y @ w
        pre[i] = -math.inf
        if float(pre.max()) < (1.0 - margin) * amplitude:
            return w, pre.max()
    return None
