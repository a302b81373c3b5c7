"""Evaluators for any set of units: neurons, SAE features, atoms (Atom Theory, arXiv 2509.20784).

Every number here is defined for a *unit set*: unit directions ``D`` (rows, ``[N, d]``), a
code ``delta = encode(m)`` (``[n, N]``) and a reconstruction ``m^ = decode(delta)``.

* neurons: the identity basis of the hook space (``D = I``, code = the activation itself);
  at ``blocks.L.mlp.hook_post`` these are the MLP neurons.
* any SAELens SAE (standard, jumprelu, topk, ... and ``tsae`` / ``tsae_aip`` once
  registered): ``D = sae.W_dec``, ``encode = sae.encode``, ``decode = sae.decode``.

Geometry. "AIP" numbers use the atomic inner product ``<u, v>_S = u^T S v`` with
``S = W^T W`` (``sae_atoms.aip.AIPMetric``); they equal the Euclidean numbers of whitened
vectors ``u W^T`` (Atom Theory, section "atomic inner product"). "raw" numbers are Euclidean.

Definitions (Atom Theory, arXiv 2509.20784; sources per function):

* faithfulness ``R^2 = 1 - sum_i ||m_i - m^_i||^2 / sum_i ||m_i - mean(m)||^2`` (pooled over
  dimensions; ``||.||_S`` for the AIP version);
* sparsity ``K_i = ||delta_i||_0``;
* coherence ``mu = max_{i != j} |cos(d_i, d_j)|`` (Donoho & Elad 2003), computed blocked;
* uniqueness bound ``mu < 1 / (2K - 1)`` (Donoho & Elad 2003; Gribonval & Nielsen 2003;
  Tropp 2004): every K-sparse code is then the unique sparsest one;
* stability ``q*``, two readings (both always reported, named ``q_star_a`` / ``q_star_b``):
  (a) ``q* = sup{q : mu_q < 1/(2 K_q - 1)}`` with ``mu_q`` the q-quantile of pairwise
  ``|cos|`` over unit pairs and ``K_q`` the q-quantile of per-sample L0;
  (b) the fraction of samples ``i`` whose active units satisfy ``mu_i < 1/(2 K_i - 1)``,
  ``mu_i`` = max pairwise ``|cos|`` among the units active on sample ``i``;
* noise floor / amplitude gap of a threshold SAE (the TSAE support-recovery theorem);
* monosemanticity from ground-truth labels: label purity and mutual information of each
  live unit's top-activating samples, per attribute.

The entry point is :func:`evaluate_units`; a held-out evaluation is the same call on the
held-out activations. ``sae-atoms evaluate SAE_DIR --activations DIR`` (``sae_atoms.cli``) is the CLI.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from sae_atoms.activations import as_matrix
from sae_atoms.models import resolve_device

QUANTILES = (0.5, 0.9, 0.99)
HIST_BINS = 1 << 16  # resolution of the pairwise-|cos| histogram: 1.5e-5
HIST_FLUSH = 1 << 20  # |cos| values buffered before one torch.histc call
HIST_PAIRS_CPU = 1 << 23  # on the CPU the |cos| histogram samples every s-th row so it sees ~8.4M pairs
Q_GRID = 10_001  # q* (a) is searched on q = 0, 1e-4, ..., 1
COHERENCE_MEMORY = 1 << 30  # default extra-memory budget of `coherence` (bytes)
MAX_DENSE_CODES = 2 << 30  # codes [n, N] kept in memory; beyond this evaluate_units refuses


# --------------------------------------------------------------------------- units
@dataclass
class Units:
    """A unit set: directions ``[N, d]`` (raw space), an encoder and a decoder.

    ``pre_activations`` (optional) returns the encoder's pre-activations ``[n, N]``
    (threshold SAEs: for the noise floor / amplitude gap). ``metric`` is the AIP metric a
    unit set carries (a ``tsae_aip`` SAE), if any.
    """

    name: str
    directions: Tensor
    encode: Callable[[Tensor], Tensor]
    decode: Callable[[Tensor], Tensor]
    pre_activations: Callable[[Tensor], Tensor] | None = None
    metric: Any = None
    kind: str = "sae"
    info: dict = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        return int(self.directions.shape[0])

    @property
    def d(self) -> int:
        return int(self.directions.shape[1])


def neurons(d: int, name: str = "neurons") -> Units:
    """The identity basis of a ``d``-dimensional hook space: ``D = I``, code = activation."""
    if d <= 0:
        raise ValueError(f"neurons need a positive dimension, got d={d}")
    ident = lambda x: x  # noqa: E731
    return Units(name, torch.eye(d), ident, ident, None, None, "neurons")


def basis(directions: Tensor, name: str = "basis") -> Units:
    """A square, invertible basis ``D`` (rows): code = ``m D^-1``, reconstruction = ``delta D``."""
    D = torch.as_tensor(directions).float()
    if D.dim() != 2 or D.shape[0] != D.shape[1]:
        raise ValueError(f"a basis must be a square [d, d] matrix of row directions; got shape {tuple(D.shape)}. "
                         "For an overcomplete dictionary pass an SAE (it has an encoder).")
    inv = torch.linalg.inv(D.double())
    return Units(name, D, lambda x: (x.double() @ inv).to(x.dtype), lambda c: c @ D.to(c.dtype), None, None, "basis")


def find_metric(sae: Any) -> Any:
    """The AIP metric an SAE carries (``tsae_aip``), or None.

    Looks for the ``tsae_aip`` buffer ``aip_W`` (the whitening ``W``; None while it is still
    the identity placeholder or ``aip_fitted`` is False), an attribute ``metric`` /
    ``aip_metric`` / ``aip`` with a whitening matrix ``W``, then a ``get_metric()`` method.
    """
    W = getattr(sae, "aip_W", None)
    if isinstance(W, Tensor) and W.dim() == 2:
        fitted = getattr(sae, "aip_fitted", None)
        unfitted = (isinstance(fitted, Tensor) and not bool(fitted)) or torch.equal(W, torch.eye(W.shape[0], dtype=W.dtype, device=W.device))
        return None if unfitted else W.detach()
    for name in ("metric", "aip_metric", "aip"):
        m = getattr(sae, name, None)
        if m is not None and hasattr(m, "W"):
            return m
    getter = getattr(sae, "get_metric", None)
    if callable(getter):
        return getter()
    return None


def _sae_pre_activation_fn(sae: Any) -> Callable[[Tensor], Tensor] | None:
    """Pre-activations through SAELens's ``hook_sae_acts_pre`` (every SAELens SAE has it)."""
    hp = getattr(sae, "hook_sae_acts_pre", None)
    if hp is None:
        return None

    def pre(x: Tensor) -> Tensor:
        box: list[Tensor] = []
        h = hp.register_forward_hook(lambda _m, _i, out: box.append(out.detach()))
        try:
            sae.encode(x)
        finally:
            h.remove()
        if not box:
            raise RuntimeError(f"{type(sae).__name__}.encode did not call hook_sae_acts_pre; no pre-activations")
        return box[-1]

    return pre


def as_units(units: Any, d: int | None = None) -> Units:
    """Normalise ``units`` to :class:`Units`.

    Accepts ``"neurons"`` (needs ``d``), a :class:`Units`, a square basis tensor, or any
    SAELens ``SAE`` (anything with ``encode``, ``decode`` and ``W_dec``).
    """
    if isinstance(units, Units):
        return units
    if isinstance(units, str):
        if units.lower() in ("neurons", "neuron", "identity"):
            if d is None:
                raise ValueError("'neurons' needs the hook dimension d (pass activations)")
            return neurons(d)
        raise ValueError(f"unknown unit set {units!r}: pass 'neurons', a SAELens SAE, a square basis tensor or a Units")
    if isinstance(units, Tensor):
        return basis(units)
    if all(hasattr(units, a) for a in ("encode", "decode", "W_dec")):
        sae = units
        sae.eval()
        dev = next(iter(sae.parameters())).device
        dt = sae.W_dec.dtype

        def enc(x: Tensor) -> Tensor:
            return sae.encode(x.to(dev, dt)).float()

        def dec(c: Tensor) -> Tensor:
            return sae.decode(c.to(dev, dt)).float()

        pre = _sae_pre_activation_fn(sae)
        arch = sae.cfg.architecture() if hasattr(getattr(sae, "cfg", None), "architecture") else type(sae).__name__
        info = {"architecture": arch, "d_sae": int(sae.W_dec.shape[0])}
        hook = getattr(getattr(getattr(sae, "cfg", None), "metadata", None), "hook_name", None)
        if hook:
            info["hook_name"] = hook
        norm = getattr(getattr(sae, "cfg", None), "normalize_activations", "none")
        if norm == "expected_average_only_in":
            warnings.warn("this SAE expects inputs scaled by an activation norm factor (normalize_activations="
                          "'expected_average_only_in'); fold it first (sae.fold_activation_norm_scaling_factor) or the "
                          "evaluation is on the wrong scale.", stacklevel=2)
        return Units(str(arch), sae.W_dec.detach(), enc, dec, (lambda x: pre(x.to(dev, dt)).float()) if pre else None,
                     find_metric(sae), "sae", info)
    raise TypeError(f"cannot evaluate units of type {type(units).__name__}: pass 'neurons', a SAELens SAE "
                    "(encode/decode/W_dec), a square basis tensor or a sae_atoms.evals.Units")


# --------------------------------------------------------------------------- geometry helpers
def whitening_matrix(metric: Any) -> Tensor | None:
    """``W`` (``[d, d]``, ``W^T W = S``) of an ``AIPMetric`` (or a tensor taken as ``W``); None for None."""
    if metric is None:
        return None
    if isinstance(metric, Tensor):
        W = metric
    elif hasattr(metric, "W"):
        W = metric.W
    else:
        raise TypeError(f"metric must be an AIPMetric (with .W) or a [d, d] whitening tensor, not {type(metric).__name__}")
    if W.dim() != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"the whitening matrix must be square [d, d]; got {tuple(W.shape)}")
    return W


def _whiten_vectors(v: Tensor, W: Tensor | None) -> Tensor:
    """``v W^T`` (vectors, no mean: differences and directions); ``v`` when ``W`` is None."""
    if W is None:
        return v
    if v.shape[-1] != W.shape[0]:
        raise ValueError(f"vectors of dimension {v.shape[-1]} do not match the AIP metric's d={W.shape[0]}; "
                         "use the metric fitted at the same hook")
    return v @ W.T.to(v.device, v.dtype)


def unit_directions(directions: Tensor, metric: Any = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Unit-normalised directions in the chosen geometry: ``d_j W^T / ||d_j W^T||`` (zero rows stay 0)."""
    D = _whiten_vectors(directions.to(dtype), whitening_matrix(metric))
    return D / D.norm(dim=1, keepdim=True).clamp_min(1e-30)


# --------------------------------------------------------------------------- faithfulness / sparsity
def _check_pair(x: Tensor, x_hat: Tensor) -> None:
    if x.shape != x_hat.shape or x.dim() != 2:
        raise ValueError(f"x and x_hat must both be [n, d] with equal shapes; got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"R^2 needs at least 2 samples, got {x.shape[0]}")


def r2(x: Tensor, x_hat: Tensor, metric: Any = None) -> float:
    """Pooled fraction of variance explained (Atom Theory's faithfulness).

    ``R^2 = 1 - sum_i ||m_i - m^_i||^2 / sum_i ||m_i - mean(m)||^2``, pooled over dimensions,
    in float64. With ``metric`` the norms are AIP norms ``||v||_S^2 = ||v W^T||^2``.
    """
    _check_pair(x, x_hat)
    W = whitening_matrix(metric)
    xd = x.double()
    err = _whiten_vectors(xd - x_hat.double(), None if W is None else W.double())
    cen = _whiten_vectors(xd - xd.mean(0, keepdim=True), None if W is None else W.double())
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


def quantile_stats(values: Tensor, prefix: str, quantiles: Sequence[float] = QUANTILES) -> dict[str, float]:
    """``{prefix_mean, prefix_p50, ..., prefix_max}`` of a 1-d tensor."""
    v = values.double().flatten()
    out = {f"{prefix}_mean": float(v.mean())}
    for q in quantiles:
        out[f"{prefix}_p{_qname(q)}"] = float(torch.quantile(v, q))
    out[f"{prefix}_max"] = float(v.max())
    return out


def _qname(q: float) -> str:
    return f"{q * 100:g}".replace(".", "_")


def firing_stats(codes: Tensor, dense_frac: float = 0.5) -> dict[str, Any]:
    """Per-unit firing frequency ``f_j = mean_i 1[delta_ij != 0]``; dead (``f_j = 0``) and
    dense (``f_j > dense_frac``) fractions of units (SAELens's feature-density convention)."""
    freq = (codes != 0).double().mean(0)
    return {"freq": freq, "dead_frac": float((freq == 0).double().mean()),
            "dense_frac": float((freq > dense_frac).double().mean()), "n_live": int((freq > 0).sum())}


# --------------------------------------------------------------------------- coherence
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
            out[f"{prefix}_p{_qname(q)}"] = v
        return out


@torch.no_grad()
def coherence(directions: Tensor, metric: Any = None, *, block: int | None = None, device: Any = None,
              max_bytes: int = COHERENCE_MEMORY, bins: int = HIST_BINS, hist_pairs: int | str | None = "auto",
              progress: bool = False) -> Coherence:
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
    B = block or coherence_block_size(N, d, max_bytes)
    B = max(1, min(B, N))
    # normalised copy, staged block by block (the whitening of all N rows at once would need 2 N d)
    Dn = torch.empty(N, d, dtype=torch.float32, device=dev)
    Wd = None if W is None else W.to(dev, torch.float32)
    for s in range(0, N, B):
        blk = directions[s:s + B].to(dev, torch.float32)
        blk = _whiten_vectors(blk, Wd)
        Dn[s:s + B] = blk / blk.norm(dim=1, keepdim=True).clamp_min(1e-30)
    n_pairs = N * (N - 1) // 2
    if hist_pairs == "auto":
        hist_pairs = None if dev.type == "cuda" else HIST_PAIRS_CPU
    stride = 1 if hist_pairs is None else max(1, math.ceil(n_pairs / int(hist_pairs)))
    hist = torch.zeros(bins, dtype=torch.float64, device=dev)
    buf: list[Tensor] = []
    buffered = 0
    best, best_pair = -1.0, None
    starts = list(range(0, N, B))
    it = [(i, j) for i in starts for j in starts if j >= i]
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"coherence ({geometry}, N={N})", unit="block")
    for i0, j0 in it:
        G = Dn[i0:i0 + B] @ Dn[j0:j0 + B].T
        diag = i0 == j0
        if diag:  # pairs i < j only: drop the diagonal (the block is symmetric)
            G.fill_diagonal_(0.0)
        lo, hi = torch.aminmax(G)  # one pass; max |cos| = max(hi, -lo), no |G| materialised
        lo, hi = float(lo), float(hi)
        mv = max(hi, -lo)
        if mv > best:  # locate the pair (rare after the first blocks)
            best = mv
            row_ext = G.amax(1) if hi >= -lo else -G.amin(1)
            r = int(row_ext.argmax())
            best_pair = (i0 + r, j0 + int(G[r].abs().argmax()))
        # |cos| of every stride-th row of the block (all rows when stride == 1), pairs i < j only;
        # buffered so that small blocks do not pay histc's fixed cost each
        rows = G[::stride]
        if diag:
            r_idx = torch.arange(0, G.shape[0], stride, device=dev)
            rows = rows[torch.arange(G.shape[1], device=dev)[None, :] > r_idx[:, None]]
        rows = rows.abs().clamp_(max=1.0).reshape(-1)
        if rows.numel() >= HIST_FLUSH:  # big blocks: straight in
            hist += torch.histc(rows, bins=bins, min=0.0, max=1.0).double()
            continue
        buf.append(rows)
        buffered += rows.numel()
        if buffered >= HIST_FLUSH:
            hist += torch.histc(torch.cat(buf), bins=bins, min=0.0, max=1.0).double()
            buf, buffered = [], 0
    if buf:
        hist += torch.histc(torch.cat(buf), bins=bins, min=0.0, max=1.0).double()
    if best <= 0.0:  # all pairs orthogonal
        return Coherence(0.0, None, hist.cpu(), n_pairs, geometry, stride)
    a, b = best_pair
    u = _whiten_vectors(directions[[a, b]].double().to(dev), None if W is None else W.to(dev, torch.float64))
    mu = float((u[0] @ u[1]).abs() / (u[0].norm() * u[1].norm()).clamp_min(1e-300))
    return Coherence(min(mu, 1.0), (min(a, b), max(a, b)), hist.cpu(), n_pairs, geometry, stride)


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
def per_sample_coherence(codes: Tensor, directions_unit: Tensor, device: Any = None) -> Tensor:
    """``mu_i = max_{j != k in A_i} |cos(d_j, d_k)|`` over the active set ``A_i = {j : delta_ij != 0}``.

    ``directions_unit`` are unit-norm rows in the chosen geometry (:func:`unit_directions`).
    Samples sharing an active set are computed once (neurons: all samples). ``0`` when
    ``|A_i| < 2``.
    """
    dev = resolve_device(device)
    mask = codes != 0
    uniq, inverse = torch.unique(mask, dim=0, return_inverse=True)
    Dn = directions_unit.to(dev)
    vals = torch.zeros(uniq.shape[0], dtype=torch.float64)
    for r in range(uniq.shape[0]):
        idx = uniq[r].nonzero().flatten()
        if idx.numel() < 2:
            continue
        sub = Dn[idx.to(dev)]
        G = (sub @ sub.T).abs_()
        G.fill_diagonal_(0)
        vals[r] = float(G.max())
    return vals[inverse]


def q_star_b(codes: Tensor, directions_unit: Tensor, device: Any = None) -> tuple[float, Tensor]:
    """q* reading (b): the fraction of samples with ``mu_i < 1/(2 K_i - 1)``.

    ``mu_i`` from :func:`per_sample_coherence`, ``K_i = ||delta_i||_0``. Returns
    ``(q*, mu_i)``. Source: the stability q* of Atom Theory (arXiv 2509.20784), read per sample (reading (b)).
    """
    mu_i = per_sample_coherence(codes, directions_unit, device)
    k = l0(codes)
    ok = mu_i < uniqueness_bound(k)
    return float(ok.double().mean()), mu_i


# --------------------------------------------------------------------------- threshold SAEs
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


# --------------------------------------------------------------------------- monosemanticity
def _encode_labels(labels: Sequence[Any]) -> tuple[Tensor, list[Any]]:
    """Integer ids for labels; unknown (``""`` / None) -> -1."""
    vocab: dict[Any, int] = {}
    ids = []
    for lab in labels:
        if lab is None or lab == "":
            ids.append(-1)
        else:
            ids.append(vocab.setdefault(lab, len(vocab)))
    return torch.tensor(ids, dtype=torch.long), list(vocab)


def _pool_groups(codes: Tensor, groups: Sequence[Any] | None) -> tuple[Tensor, Tensor | None]:
    """Max-pool codes per group (``[G, N]``) and the group id of each row; identity without groups."""
    c = codes.float()
    if groups is None:
        return c, None
    if len(groups) != c.shape[0]:
        raise ValueError(f"groups has {len(groups)} entries for {c.shape[0]} samples")
    gidx, _ = _encode_labels([str(g) for g in groups])
    pooled = torch.full((int(gidx.max()) + 1, c.shape[1]), -math.inf)
    pooled.scatter_reduce_(0, gidx[:, None].expand_as(c), c, reduce="amax", include_self=True)
    return pooled, gidx


@torch.no_grad()
def top_activating(codes: Tensor, k: int, groups: Sequence[Any] | None = None) -> tuple[Tensor, Tensor]:
    """Each unit's top-``k`` samples by code value among those where it is positive.

    With ``groups`` (e.g. the subject of each prompt) the code is first max-pooled per group, so
    a unit's top set is ``k`` distinct groups (the same subject in several templates counts once).
    Returns ``(index [N, k], valid [N, k] bool)``; indices point to rows (to groups with ``groups``).
    """
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    c, _ = _pool_groups(codes, groups)
    vals, idx = torch.topk(c.T, min(k, c.shape[0]), dim=1)
    return idx, vals > 0


def _mi_bits(top_counts: Tensor, k_eff: Tensor, base_counts: Tensor, n: int) -> Tensor:
    """Mutual information (bits) between the label Y and the top-set indicator T, per unit.

    ``I(T; Y) = sum_{t, y} p(t, y) log2 p(t, y) / (p(t) p(y))`` over the ``n`` labelled samples,
    ``p(T=1, y) = c_y / n``, ``p(T=0, y) = (n_y - c_y) / n``.
    """
    n_y = base_counts.double()[None, :]
    c1 = top_counts.double()
    c0 = (n_y - c1).clamp_min(0)
    p_y = n_y / n
    p1 = (k_eff.double() / n)[:, None]
    p0 = 1 - p1

    def term(c: Tensor, pt: Tensor) -> Tensor:
        pj = c / n
        return torch.where(pj > 0, pj * torch.log2(pj / (pt * p_y).clamp_min(1e-300)), torch.zeros_like(pj))

    return (term(c1, p1) + term(c0, p0)).sum(1)


@torch.no_grad()
def monosemanticity(codes: Tensor, labels: Mapping[str, Sequence[Any]], *, top_k: int = 20,
                    groups: Sequence[Any] | None = None, min_top: int = 2,
                    judge: Callable[[int, list[int]], float] | None = None) -> dict[str, Any]:
    """Ground-truth monosemanticity of live units, per attribute and averaged.

    For each unit ``j`` and attribute ``a`` (e.g. country, continent): take ``T_j``, its
    top-``top_k`` activating samples among those whose ``a`` label is known (distinct groups,
    max-pooled, when ``groups`` is given) where its code is positive, and report

    * purity ``max_y |{i in T_j : y_i = y}| / |T_j|`` (1 = all top samples share one label;
      a unit firing at random scores about the majority label's base rate), and
    * mutual information ``I(1[i in T_j]; y_i)`` in bits over all labelled samples.

    Averaged over live units with at least ``min_top`` labelled top samples. Also reports the
    base rate (majority-label share) per attribute as the chance level. Atom Theory used an
    LLM judge; ``judge(unit, top_sample_indices) -> score in [0, 1]`` plugs one in (off by
    default; averaged into ``judge_mean``).
    """
    if not labels:
        raise ValueError("monosemanticity needs at least one label column")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    n = codes.shape[0]
    pooled, gidx = _pool_groups(codes, groups)
    out: dict[str, Any] = {}
    purities = []
    for attr, labs in labels.items():
        if len(labs) != n:
            raise ValueError(f"label column {attr!r} has {len(labs)} entries for {n} samples")
        lab_ids, vocab = _encode_labels(labs)
        if gidx is not None:  # one label per group: the first row's label
            glab = torch.full((pooled.shape[0],), -1, dtype=torch.long)
            order = torch.arange(n - 1, -1, -1)
            glab[gidx[order]] = lab_ids[order]
            lab_ids = glab
        known = lab_ids >= 0
        out[f"mono_{attr}_purity"] = None
        out[f"mono_{attr}_mi_bits"] = None
        if not bool(known.any()):
            continue
        lab_k = lab_ids[known]
        V, n_known = len(vocab), int(known.sum())
        vals, idx = torch.topk(pooled[known].T, min(top_k, n_known), dim=1)  # top among labelled samples
        use = vals > 0
        top_lab = lab_k[idx]  # [N, k]
        k_eff = use.sum(1)
        counts = torch.zeros(idx.shape[0], V, dtype=torch.long)
        counts.scatter_add_(1, top_lab, use.long())
        base = torch.bincount(lab_k, minlength=V)
        live = k_eff >= min_top
        purity = counts.max(1).values.double() / k_eff.clamp_min(1).double()
        mi = _mi_bits(counts, k_eff, base, n_known)
        if bool(live.any()):
            out[f"mono_{attr}_purity"] = float(purity[live].mean())
            out[f"mono_{attr}_mi_bits"] = float(mi[live].mean())
            purities.append(out[f"mono_{attr}_purity"])
        out[f"mono_{attr}_base_rate"] = float(base.max()) / n_known
        out[f"mono_{attr}_n_units"] = int(live.sum())
    out["monosemanticity"] = float(sum(purities) / len(purities)) if purities else None
    if judge is not None:
        idx, valid = top_activating(codes, top_k, groups)
        scores = []
        for j in range(idx.shape[0]):
            rows = idx[j][valid[j]].tolist()
            if len(rows) >= min_top:
                scores.append(float(judge(j, rows)))
        out["judge_mean"] = float(sum(scores) / len(scores)) if scores else None
        out["judge_n_units"] = len(scores)
    return out


# --------------------------------------------------------------------------- model-level evals
@torch.no_grad()
def model_evals(sae: Any, model: Any, prompts: Sequence[str], hook_name: str | None = None,
                batch_size: int = 16) -> dict[str, float]:
    """SAELens's downstream figures for the SAE spliced into ``model`` at its hook.

    Uses ``sae_lens.evals.get_recons_loss`` (the function ``run_evals`` calls) on the given
    prompts (BOS/pad/special tokens excluded), and its formulas:
    ``ce_loss_score = (CE_ablation - CE_sae) / (CE_ablation - CE_clean)`` (CE loss recovered)
    and ``kl_div_score = (KL_ablation - KL_sae) / KL_ablation``.
    """
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    from sae_atoms.models import check_hook_name

    hook_name = hook_name or sae.cfg.metadata.hook_name
    if not hook_name:
        raise ValueError("the SAE has no cfg.metadata.hook_name; pass hook_name=")
    check_hook_name(model, hook_name)
    if not prompts:
        raise ValueError("model_evals needs at least one prompt")
    tok = model.tokenizer
    special = set(getattr(tok, "all_special_ids", []) or [])
    sums: dict[str, list[Tensor]] = {}
    for s in range(0, len(prompts), batch_size):
        tokens = model.to_tokens(list(prompts[s:s + batch_size]), prepend_bos=True, padding_side="right")
        m = get_recons_loss(sae, model, ActivationScaler(), tokens, compute_kl=True, compute_ce_loss=True,
                            hook_name=hook_name)
        keep = ~torch.isin(tokens, torch.tensor(sorted(special), device=tokens.device)) if special else torch.ones_like(tokens, dtype=torch.bool)
        for name, v in m.items():
            mk = keep if v.shape[1] == keep.shape[1] else keep[:, 1:]  # CE is per next token
            sums.setdefault(name, []).append(v[mk.to(v.device)].double().cpu())
    r = {k: float(torch.cat(v).mean()) for k, v in sums.items()}
    r["ce_loss_score"] = (r["ce_loss_with_ablation"] - r["ce_loss_with_sae"]) / (r["ce_loss_with_ablation"] - r["ce_loss_without_sae"])
    r["kl_div_score"] = (r["kl_div_with_ablation"] - r["kl_div_with_sae"]) / r["kl_div_with_ablation"]
    return r


# --------------------------------------------------------------------------- entry point
def _activation_tensor(activations: Any, hook: str | None) -> tuple[Tensor, Any]:
    x = as_matrix(activations, hook, min_rows=2)
    rows = None if isinstance(activations, Tensor) else getattr(activations, "rows", None)
    if not torch.isfinite(x).all():
        raise ValueError("the activations contain NaN or inf; check the extraction")
    return x.float(), rows


def jsonable(v: Any) -> Any:
    """``v`` with tensors as lists and non-finite floats as None (nested dicts / lists / tuples)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Tensor):
        return jsonable(v.tolist())
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


@torch.no_grad()
def encode_all(units: Units, x: Tensor, batch_size: int = 1024, want_pre: bool = False,
               progress: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(codes [n, N], reconstruction [n, d], pre-activations or None)`` in batches, on the CPU."""
    n = x.shape[0]
    if n * units.n_units * 4 * (2 if want_pre else 1) > MAX_DENSE_CODES:
        raise MemoryError(f"{n} samples x {units.n_units} units of dense codes exceed "
                          f"{MAX_DENSE_CODES / 2**30:.0f} GiB; evaluate a subsample of the activations")
    codes, recon, pres = [], [], []
    it = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"encode {units.name}", unit="batch")
    for s in it:
        xb = x[s:s + batch_size]
        c = units.encode(xb)
        codes.append(c.float().cpu())
        recon.append(units.decode(c).float().cpu())
        if want_pre and units.pre_activations is not None:
            pres.append(units.pre_activations(xb).float().cpu())
    return torch.cat(codes), torch.cat(recon), (torch.cat(pres) if pres else None)


def evaluate_units(units: Any, activations: Any, metric: Any = None, labels: Mapping[str, Sequence[Any]] | None = None,
                   *, hook: str | None = None, groups: Sequence[Any] | str | None = "subject", top_k: int = 20,
                   judge: Callable[[int, list[int]], float] | None = None, dense_frac: float = 0.5,
                   device: Any = None, batch_size: int = 1024, quantiles: Sequence[float] = QUANTILES,
                   model: Any = None, prompts: Sequence[str] | None = None, progress: bool = False) -> dict[str, Any]:
    """Evaluate any unit set on activations; returns a flat JSON-able dict.

    Args:
        units: ``"neurons"``, a SAELens SAE (standard / jumprelu / topk / tsae / tsae_aip), a
            square basis tensor or a :class:`Units`.
        activations: ``[n, d]`` tensor or an ``ActivationSet`` (then its rows supply labels,
            groups and prompts).
        metric: an ``AIPMetric`` for the AIP numbers (default: the one the SAE carries, if any).
        labels: ``{attribute: per-sample labels}``; default from an ``ActivationSet``'s
            ``LABEL_COLUMNS`` present in its rows.
        groups: per-sample group ids for monosemanticity, or a row column name (default
            ``"subject"`` when present), or None.
        model, prompts: when given (and units is an SAE), SAELens's CE-loss-recovered and KL
            figures for the spliced SAE are merged in (prefixed ``model_``).

    Keys: ``r2``, ``r2_aip``, ``mse``, ``cos``, ``l0_mean`` + ``l0_p50/p90/p99/max``,
    ``mu`` (AIP coherence when a metric is known, else raw) + quantiles, ``mu_raw``,
    ``mu_aip``, ``q_star_a`` / ``q_star_b`` (in the geometry of ``mu``) and ``*_raw``,
    ``k_unique`` (largest K with ``mu < 1/(2K-1)``), ``dead_frac``, ``dense_frac``,
    ``mono_<attr>_purity`` / ``_mi_bits``, ``monosemanticity``, noise floor / amplitude gap
    for SAEs, and ``geometry``.
    """
    x, rows = _activation_tensor(activations, hook)
    u = as_units(units, x.shape[1])
    if u.d != x.shape[1]:
        raise ValueError(f"the units live in d={u.d} but the activations have d={x.shape[1]}; "
                         "evaluate on activations from the hook the units were trained on")
    metric = metric if metric is not None else u.metric
    W = whitening_matrix(metric)
    if W is not None and W.shape[0] != x.shape[1]:
        raise ValueError(f"the AIP metric has d={W.shape[0]} but the activations have d={x.shape[1]}")
    dev = resolve_device(device)
    codes, recon, pre = encode_all(u, x, batch_size, want_pre=u.kind == "sae", progress=progress)
    k = l0(codes)
    res: dict[str, Any] = {"units": u.name, "kind": u.kind, "n_units": u.n_units, "d": u.d, "n_samples": int(x.shape[0]),
                           "geometry": "aip" if W is not None else "raw"}
    res.update(u.info)
    res["r2"] = r2(x, recon)
    res["r2_aip"] = r2(x, recon, W) if W is not None else None
    res["mse"] = mse(x, recon)
    res["cos"] = cosine(x, recon)
    res.update(quantile_stats(k, "l0", quantiles))
    fs = firing_stats(codes, dense_frac)
    res.update({k_: v for k_, v in fs.items() if k_ != "freq"})
    coh_raw = coherence(u.directions, None, device=dev, progress=progress)
    res.update(coh_raw.stats("mu_raw", quantiles))
    res["q_star_a_raw"] = q_star_a(coh_raw, k)
    res["q_star_b_raw"], _ = q_star_b(codes, unit_directions(u.directions), dev)
    if W is not None:
        coh = coherence(u.directions, W, device=dev, progress=progress)
        res.update(coh.stats("mu_aip", quantiles))
        res["q_star_a_aip"] = q_star_a(coh, k)
        res["q_star_b_aip"], _ = q_star_b(codes, unit_directions(u.directions, W), dev)
        sel = "aip"
    else:
        coh, sel = coh_raw, "raw"
    res.update(coh.stats("mu", quantiles))
    res["q_star_a"] = res[f"q_star_a_{sel}"]
    res["q_star_b"] = res[f"q_star_b_{sel}"]
    res["k_unique"] = max_unique_k(res["mu"])
    res["bound_holds_at_l0_max"] = bool(res["mu"] < uniqueness_bound(float(k.max())))
    if pre is not None:
        res.update(noise_floor_gap(pre, codes))
    # monosemanticity
    if labels is None and rows is not None:
        from sae_atoms.data import LABEL_COLUMNS

        labels = {c: list(rows[c]) for c in LABEL_COLUMNS if c in rows.column_names}
    if isinstance(groups, str):
        groups = list(rows[groups]) if rows is not None and groups in rows.column_names else None
    if labels:
        res.update(monosemanticity(codes, labels, top_k=top_k, groups=groups, judge=judge))
        res["mono_top_k"] = top_k
        res["mono_grouped"] = groups is not None
    if model is not None and u.kind == "sae" and not isinstance(units, Units):
        if prompts is None and rows is not None and "prompt" in rows.column_names:
            prompts = sorted(set(rows["prompt"]))
        if prompts:
            res.update({f"model_{k_}": v for k_, v in model_evals(units, model, list(prompts)).items()})
    return jsonable(res)


# --------------------------------------------------------------------------- tables
TABLE_KEYS = ("r2", "r2_aip", "l0_mean", "mu", "mu_raw", "q_star_a", "q_star_b", "monosemanticity", "dead_frac")


def format_table(results: Mapping[str, Mapping[str, Any]], keys: Sequence[str] = TABLE_KEYS) -> str:
    """A plain-text table: one row per result (``{label: result_dict}``), one column per key."""
    head = ["units"] + list(keys)
    lines = [head]
    for name, r in results.items():
        row = [name]
        for k in keys:
            v = r.get(k)
            row.append("-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)))
        lines.append(row)
    widths = [max(len(str(l[c])) for l in lines) for c in range(len(head))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(l, widths)) for l in lines)
