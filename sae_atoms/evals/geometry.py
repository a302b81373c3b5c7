"""The geometry of a dictionary: coherence, the uniqueness bound and the stability q* (Atom Theory, arXiv 2509.20784).

* coherence ``mu = max_{i != j} |cos(d_i, d_j)|`` (Donoho & Elad 2003), computed blocked;
* uniqueness bound ``mu < 1 / (2K - 1)`` (Donoho & Elad 2003; Gribonval & Nielsen 2003;
  Tropp 2004): every K-sparse code is then the unique sparsest one;
* stability ``q*``, two readings (both always reported, named ``q_star_a`` / ``q_star_b``):
  (a) ``q* = sup{q : mu_q < 1/(2 K_q - 1)}`` with ``mu_q`` the q-quantile of pairwise
  ``|cos|`` over unit pairs and ``K_q`` the q-quantile of per-sample L0;
  (b) the fraction of samples ``i`` whose active units satisfy ``mu_i < 1/(2 K_i - 1)``,
  ``mu_i`` = max pairwise ``|cos|`` among the units active on sample ``i``.

The coherence depends on the decoder only: :func:`dictionary_geometry` computes it once per
dictionary (raw and, with a metric, in the AIP) and the data metrics reuse it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from sae_atoms.aip import AIPMetric
from sae_atoms.evals.reconstruction import QUANTILES, l0, qname
from sae_atoms.evals.units import as_units, unit_directions, whiten_vectors, whitening_matrix
from sae_atoms.models import resolve_device

HIST_BINS = 1 << 16  # resolution of the pairwise-|cos| histogram: 1.5e-5
HIST_FLUSH = 1 << 20  # |cos| values buffered before one torch.histc call
HIST_PAIRS_CPU = 1 << 23  # on the CPU the |cos| histogram samples every s-th row so it sees ~8.4M pairs
Q_GRID = 10_001  # q* (a) is searched on q = 0, 1e-4, ..., 1
COHERENCE_MEMORY = 1 << 30  # default extra-memory budget of `coherence` (bytes)


def coherence_memory_bytes(n_units: int, d: int, block: int, elem_bytes: int = 4, bins: int = HIST_BINS) -> int:
    """Upper bound of the extra memory of :func:`coherence`: the normalised copy of the
    directions (``N d``), the whitened staging block, at most three ``block x block``
    tensors (the Gram block, ``|.|`` of its sampled rows, the triangle mask of a diagonal
    block), the row maxima, the buffered values and the float64 histograms."""
    return elem_bytes * (n_units * d + block * d + 3 * block * block + 2 * block + 2 * HIST_FLUSH) + 8 * bins * 2


def coherence_block_size(n_units: int, d: int, max_bytes: int = COHERENCE_MEMORY, elem_bytes: int = 4) -> int:
    """The largest block (a power of two, 256 .. 8192, at most ``N``) whose
    :func:`coherence_memory_bytes` fits ``max_bytes``; raises if even 256 does not."""
    if n_units < 1 or d < 1:
        raise ValueError(f"need at least one unit of positive dimension; got N={n_units}, d={d}")
    best = None
    b = 256
    while b <= 8192:
        if coherence_memory_bytes(n_units, d, b, elem_bytes) <= max_bytes:
            best = b
        b *= 2
    if best is None:
        need = coherence_memory_bytes(n_units, d, 256, elem_bytes)
        raise MemoryError(f"coherence of N={n_units} directions in d={d} needs at least {need / 2**20:.0f} MiB "
                          f"of extra memory (normalised copy + blocks) but max_bytes={max_bytes / 2**20:.0f} MiB; raise it")
    return min(best, max(n_units, 1))


@dataclass
class Coherence:
    """Pairwise ``|cos|`` statistics over the ``N (N - 1) / 2`` unit pairs.

    ``mu`` is the exact maximum over all pairs (the maximising ``pair`` recomputed in float64).
    ``hist`` counts pairs in ``HIST_BINS`` equal bins of ``[0, 1]``: all pairs when
    ``hist_stride == 1``, else a systematic sample (every ``hist_stride``-th row of each block,
    >= ``HIST_PAIRS_CPU`` pairs). Quantiles are read from it (to 1 / bins, never above ``mu``).
    """

    mu: float
    pair: tuple[int, int] | None
    hist: Tensor
    n_pairs: int
    geometry: str
    hist_stride: int = 1

    def quantile(self, q: float | Tensor) -> Tensor:
        """``mu_q``: the upper edge of the histogram bin holding the q-quantile, capped at ``mu``."""
        qs = torch.as_tensor(q, dtype=torch.float64).reshape(-1)
        if self.n_pairs == 0:
            return torch.zeros_like(qs)
        cdf = self.hist.cumsum(0) / self.hist.sum().clamp_min(1e-300)
        idx = torch.searchsorted(cdf, qs.clamp(0, 1) - 1e-12).clamp(max=len(cdf) - 1)
        return ((idx + 1).double() / len(cdf)).clamp(max=self.mu)

    def fraction_below(self, t: float) -> float:
        """Fraction of pairs with ``|cos| < t`` (to histogram resolution)."""
        if self.n_pairs == 0:
            return 1.0
        k = int(min(max(t, 0.0), 1.0) * len(self.hist))
        return float(self.hist[:k].sum() / self.hist.sum().clamp_min(1e-300))

    def stats(self, prefix: str = "mu", quantiles: Sequence[float] = QUANTILES) -> dict[str, float]:
        out = {prefix: self.mu}
        qv = self.quantile(torch.tensor(quantiles))
        for q, v in zip(quantiles, qv.tolist()):
            out[f"{prefix}_p{qname(q)}"] = v
        return out


class _PairHistogram:
    """``|cos|`` counts in ``bins`` equal bins of ``[0, 1]``, small blocks buffered so that they
    do not pay ``torch.histc``'s fixed cost each."""

    def __init__(self, bins: int, device: torch.device):
        self.bins = bins
        self.hist = torch.zeros(bins, dtype=torch.float64, device=device)
        self.buf: list[Tensor] = []
        self.buffered = 0

    def add(self, values: Tensor) -> None:
        if values.numel() >= HIST_FLUSH:  # big blocks: straight in
            self.hist += torch.histc(values, bins=self.bins, min=0.0, max=1.0).double()
            return
        self.buf.append(values)
        self.buffered += values.numel()
        if self.buffered >= HIST_FLUSH:
            self.flush()

    def flush(self) -> Tensor:
        if self.buf:
            self.hist += torch.histc(torch.cat(self.buf), bins=self.bins, min=0.0, max=1.0).double()
            self.buf, self.buffered = [], 0
        return self.hist


def _normalised(directions: Tensor, W: Tensor | None, dev: torch.device, block: int) -> Tensor:
    """Unit rows of ``directions W^T`` (float32 on ``dev``), staged ``block`` rows at a time (the
    whitening of all N rows at once would need ``2 N d``)."""
    N, d = directions.shape
    Dn = torch.empty(N, d, dtype=torch.float32, device=dev)
    Wd = None if W is None else W.to(dev, torch.float32)
    for s in range(0, N, block):
        blk = whiten_vectors(directions[s:s + block].to(dev, torch.float32), Wd)
        Dn[s:s + block] = blk / blk.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return Dn


def _block_pairs(N: int, block: int, progress: bool, desc: str) -> Iterator[tuple[int, int]]:
    """The upper-triangle blocks ``(I, J)``, ``J >= I``, of an ``N x N`` matrix."""
    starts = list(range(0, N, block))
    it = [(i, j) for i in starts for j in starts if j >= i]
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, unit="block")
    return iter(it)


def _sampled_abs(G: Tensor, diag: bool, stride: int) -> Tensor:
    """``|cos|`` of every ``stride``-th row of the block (all rows when ``stride == 1``), pairs
    ``i < j`` only on a diagonal block, flattened."""
    rows = G[::stride]
    if diag:
        r_idx = torch.arange(0, G.shape[0], stride, device=G.device)
        rows = rows[torch.arange(G.shape[1], device=G.device)[None, :] > r_idx[:, None]]
    return rows.abs().clamp_(max=1.0).reshape(-1)


def _exact_mu(directions: Tensor, a: int, b: int, W: Tensor | None, dev: torch.device) -> float:
    """``|cos|`` of the pair ``(a, b)`` recomputed in float64 (in the geometry of ``W``)."""
    u = whiten_vectors(directions[[a, b]].double().to(dev), None if W is None else W.to(dev, torch.float64))
    return float((u[0] @ u[1]).abs() / (u[0].norm() * u[1].norm()).clamp_min(1e-300))


@torch.no_grad()
def coherence(directions: Tensor, metric: AIPMetric | Tensor | None = None, *, block: int | None = None,
              device: Any = None, max_bytes: int = COHERENCE_MEMORY, bins: int = HIST_BINS,
              hist_pairs: int | str | None = "auto", progress: bool = False) -> Coherence:
    """Coherence ``mu = max_{i != j} |cos(d_i, d_j)|`` and the histogram of all pairwise ``|cos|``.

    Source: mutual coherence (Donoho & Elad 2003, PNAS 100:2197); in the AIP geometry
    ``cos_S(d_i, d_j) = d_i^T S d_j / (||d_i||_S ||d_j||_S)`` (Atom Theory), computed as plain
    cosines of the whitened directions ``d W^T``.

    Blocked: the upper-triangle blocks ``Dn[I] Dn[J]^T`` (``J >= I``) of the normalised
    directions, ``block`` rows at a time, so the ``N x N`` matrix never exists. The maximum is
    exact (every pair is visited); the quantile histogram covers every pair on CUDA and, on the
    CPU where ``torch.histc`` costs as much as the products, a systematic sample of about
    ``hist_pairs`` pairs (pass ``hist_pairs=None`` for all pairs). Extra memory is
    bounded by :func:`coherence_memory_bytes` (<= ``max_bytes``, 1 GiB by default: N = 65,536,
    d = 2,304 fits with block 4096). Runs on ``device`` (default: CUDA when available).
    """
    if directions.dim() != 2:
        raise ValueError(f"directions must be [N, d]; got {tuple(directions.shape)}")
    dev = resolve_device(device)
    N, d = directions.shape
    W = whitening_matrix(metric)
    geometry = "aip" if W is not None else "raw"
    if N < 2:
        return Coherence(0.0, None, torch.zeros(bins, dtype=torch.float64), 0, geometry, 1)
    B = max(1, min(block or coherence_block_size(N, d, max_bytes), N))
    Dn = _normalised(directions, W, dev, B)
    n_pairs = N * (N - 1) // 2
    if hist_pairs == "auto":
        hist_pairs = None if dev.type == "cuda" else HIST_PAIRS_CPU
    stride = 1 if hist_pairs is None else max(1, math.ceil(n_pairs / int(hist_pairs)))
    hist = _PairHistogram(bins, dev)
    best, best_pair = -1.0, None
    for i0, j0 in _block_pairs(N, B, progress, f"coherence ({geometry}, N={N})"):
        G = Dn[i0:i0 + B] @ Dn[j0:j0 + B].T
        diag = i0 == j0
        if diag:  # pairs i < j only: drop the diagonal (the block is symmetric)
            G.fill_diagonal_(0.0)
        lo, hi = torch.aminmax(G)  # one pass; max |cos| = max(hi, -lo), no |G| materialised
        lo, hi = float(lo), float(hi)
        if max(hi, -lo) > best:  # locate the pair (rare after the first blocks)
            best = max(hi, -lo)
            r = int((G.amax(1) if hi >= -lo else -G.amin(1)).argmax())
            best_pair = (i0 + r, j0 + int(G[r].abs().argmax()))
        hist.add(_sampled_abs(G, diag, stride))
    counts = hist.flush().cpu()
    if best <= 0.0:  # all pairs orthogonal
        return Coherence(0.0, None, counts, n_pairs, geometry, stride)
    a, b = best_pair
    mu = _exact_mu(directions, a, b, W, dev)
    return Coherence(min(mu, 1.0), (min(a, b), max(a, b)), counts, n_pairs, geometry, stride)


# --------------------------------------------------------------------------- uniqueness bound, q*
def uniqueness_bound(k: float | Tensor) -> float | Tensor:
    """``1 / (2K - 1)``: with coherence below it every K-sparse code is unique (Donoho & Elad
    2003; Gribonval & Nielsen 2003; Tropp 2004, "Greed is good"). ``inf`` for ``K <= 0``
    (the empty code is trivially unique)."""
    if isinstance(k, Tensor):
        k = k.double()
        return torch.where(k > 0, 1.0 / (2.0 * k - 1.0).clamp_min(1.0), torch.full_like(k, math.inf))
    return math.inf if k <= 0 else 1.0 / (2.0 * k - 1.0)


def max_unique_k(mu: float) -> float:
    """The largest K with ``mu < 1/(2K - 1)``: ``ceil((1/mu + 1)/2) - 1`` (``inf`` for ``mu = 0``)."""
    if mu <= 0:
        return math.inf
    return float(math.ceil((1.0 / mu + 1.0) / 2.0 - 1e-12) - 1)


def _inverse_cdf(sorted_vals: Tensor, q: Tensor) -> Tensor:
    """Empirical quantile ``inf{x : F(x) >= q}`` of sorted values at each q."""
    n = sorted_vals.numel()
    idx = (torch.ceil(q * n) - 1).long().clamp(0, n - 1)
    return sorted_vals[idx]


def q_star_a(coh: Coherence, l0_per_sample: Tensor, grid: int = Q_GRID) -> float:
    """q* reading (a): ``sup{q : mu_q < 1/(2 K_q - 1)}``.

    ``mu_q`` = q-quantile of pairwise ``|cos|`` over unit pairs (from ``coh``), ``K_q`` =
    q-quantile of per-sample L0. Both grow with q, so the condition holds on ``[0, q*]``;
    searched on ``q = 0, 1/(grid-1), ..., 1`` (resolution 1e-4). Source: the stability q* of Atom Theory (arXiv 2509.20784), read as quantiles (reading (a)).
    """
    if l0_per_sample.numel() == 0:
        raise ValueError("q* needs at least one sample")
    q = torch.linspace(0, 1, grid, dtype=torch.float64)
    mu_q = coh.quantile(q)
    k_q = _inverse_cdf(torch.sort(l0_per_sample.double()).values, q)
    ok = mu_q < uniqueness_bound(k_q)
    if not bool(ok[0]):
        return 0.0
    bad = (~ok).nonzero()
    return 1.0 if bad.numel() == 0 else float(q[int(bad[0]) - 1])


@torch.no_grad()
def per_sample_coherence(codes: Tensor, directions_unit: Tensor, device: Any = None,
                         max_elements: int = 1 << 24) -> Tensor:
    """``mu_i = max_{j != k in A_i} |cos(d_j, d_k)|`` over the active set ``A_i = {j : delta_ij != 0}``.

    ``directions_unit`` are unit-norm rows in the chosen geometry (:func:`unit_directions`).
    Samples sharing an active set are computed once (neurons: all samples). ``0`` when
    ``|A_i| < 2``. The distinct active sets go in batches of similar size (sorted by ``|A|``,
    padded to the batch's largest, at most ``max_elements`` floats per batched Gram): one
    batched product per batch rather than one small product (and one device sync) per set,
    which on a GPU left a large evaluation bound by launches and syncs.
    """
    dev = resolve_device(device)
    uniq, inverse = torch.unique(codes != 0, dim=0, return_inverse=True)
    Dn = directions_unit.to(dev)
    sizes = uniq.sum(1)
    vals = torch.zeros(uniq.shape[0], dtype=torch.float64)
    gram = (Dn @ Dn.T).abs_() if Dn.shape[0] ** 2 <= 4 * max_elements else None  # read, not recomputed, per pair
    width = 1 if gram is not None else Dn.shape[1]  # floats per pair of a batched Gram: read, or a d-long product
    order = torch.argsort(sizes, stable=True)
    order = order[sizes[order] >= 2]  # fewer than two active units: no pair, mu_i = 0
    start = 0
    while start < order.numel():
        k = int(sizes[order[start]])
        n = max(1, max_elements // (k * max(k, width)))
        while True:  # halve the batch until its largest set keeps the padded Gram within max_elements
            k = int(sizes[order[min(start + n, order.numel()) - 1]])
            if n == 1 or n * k * max(k, width) <= max_elements:
                break
            n = max(1, n // 2)
        batch = order[start:start + n]
        vals[batch] = _max_offdiagonal_abs_cos(uniq[batch], sizes[batch], Dn, gram)
        start += n
    return vals[inverse]


def _max_offdiagonal_abs_cos(active: Tensor, sizes: Tensor, Dn: Tensor, gram: Tensor | None) -> Tensor:
    """Per row of the boolean ``active`` [b, m]: the largest ``|<d_j, d_k>|``, ``j != k`` both active;
    read from ``gram`` (``|Dn Dn^T|``) when given, else from a batched product of the active rows."""
    b, k = active.shape[0], int(sizes.max())
    row, col = active.nonzero(as_tuple=True)  # row-major: each row's active units in order
    slot = torch.arange(row.numel()) - (torch.cumsum(sizes, 0) - sizes)[row]
    idx = torch.zeros(b, k, dtype=torch.long)
    idx[row, slot] = col
    idx = idx.to(Dn.device)  # padded with unit 0, masked below
    if gram is not None:
        G = gram[idx[:, :, None], idx[:, None, :]]
    else:
        sub = Dn[idx]
        G = torch.bmm(sub, sub.transpose(1, 2)).abs_()
    valid = (torch.arange(k) < sizes[:, None]).to(Dn.device)
    pair = valid[:, :, None] & valid[:, None, :] & ~torch.eye(k, dtype=torch.bool, device=Dn.device)
    return G.masked_fill_(~pair, 0).flatten(1).amax(1).double().cpu()


def q_star_b(codes: Tensor, directions_unit: Tensor, device: Any = None) -> tuple[float, Tensor]:
    """q* reading (b): the fraction of samples with ``mu_i < 1/(2 K_i - 1)``.

    ``mu_i`` from :func:`per_sample_coherence`, ``K_i = ||delta_i||_0``. Returns
    ``(q*, mu_i)``. Source: the stability q* of Atom Theory (arXiv 2509.20784), read per sample (reading (b)).
    """
    mu_i = per_sample_coherence(codes, directions_unit, device)
    return float(unique_samples(mu_i, l0(codes)).double().mean()), mu_i


def unique_samples(mu_i: Tensor, k: Tensor) -> Tensor:
    """Reading (b)'s test per sample: ``mu_i < 1/(2 K_i - 1)`` (bool), its code unique."""
    return mu_i < uniqueness_bound(k)


def bound_ratio(mu_i: Tensor, k: Tensor) -> Tensor:
    """``mu_i (2 K_i - 1)`` per sample with at least two active units: its co-active coherence over
    its uniqueness bound ``1/(2 K_i - 1)``; below 1 the sample's code is unique (q* reading (b)).
    How far above 1 it sits says what a sample would need: ``K <= max_unique_k(mu_i)`` at its own
    coherence, or ``mu_i < 1/(2 K_i - 1)`` at its own L0."""
    on = k >= 2
    return mu_i[on].double() * (2.0 * k[on].double() - 1.0)


# --------------------------------------------------------------------------- the dictionary's geometry
@dataclass(frozen=True)
class Geometry:
    """What a dictionary's decoder fixes, whatever the data: the coherence of its directions and
    their unit rows (which q* reading (b) reads), raw and, with a whitening ``W``, in the AIP.

    Computed once per dictionary by :func:`dictionary_geometry`; ``evaluate_units(...,
    geometry=)`` reuses it on every split.
    """

    raw: Coherence
    unit_raw: Tensor
    whitening: Tensor | None = None
    aip: Coherence | None = None
    unit_aip: Tensor | None = None

    @property
    def name(self) -> str:
        """``"aip"`` when a metric is known, else ``"raw"``: the geometry of ``mu`` and ``q*``."""
        return "raw" if self.aip is None else "aip"

    @property
    def selected(self) -> Coherence:
        """The coherence in the geometry :attr:`name` names."""
        return self.raw if self.aip is None else self.aip

    @property
    def n_units(self) -> int:
        return int(self.unit_raw.shape[0])

    def readings(self) -> list[tuple[str, Coherence, Tensor]]:
        """``(name, coherence, unit rows)`` per geometry: raw, then the AIP when known."""
        out = [("raw", self.raw, self.unit_raw)]
        if self.aip is not None:
            out.append(("aip", self.aip, self.unit_aip))
        return out


def dictionary_geometry(units: Any, metric: AIPMetric | Tensor | None = None, *, d: int | None = None,
                        device: Any = None, progress: bool = False) -> Geometry:
    """The :class:`Geometry` of a unit set (anything :func:`~sae_atoms.evals.as_units` takes;
    ``"neurons"`` needs ``d``) under ``metric`` (default: the one the units carry, if any)."""
    u = as_units(units, d)
    W = whitening_matrix(metric if metric is not None else u.metric)
    dev = resolve_device(device)
    raw = coherence(u.directions, None, device=dev, progress=progress)
    if W is None:
        return Geometry(raw, unit_directions(u.directions))
    return Geometry(raw, unit_directions(u.directions), W, coherence(u.directions, W, device=dev, progress=progress),
                    unit_directions(u.directions, W))
