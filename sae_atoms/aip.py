"""The atomic inner product (AIP): metric, whitening, and a TransformerLens hook.

Atom Theory (arXiv 2509.20784) measures activations ``m`` in R^d with the metric tensor

    S = (D D^T)^-1  ~  (E[m m^T])^-1                          (uncentred, the paper's default)

(the least-squares metric making the atoms ``D`` closest to orthonormal; the data estimate holds
when atom coefficients are uncorrelated with equal second moments). The optional ``centered``
kind uses the covariance ``E[(m - mu)(m - mu)^T]`` instead (``mu = E[m]``). Then

    <u, v>_S = u^T S v,   ||u||_S = sqrt(u^T S u),   cos_S(u, v) = <u, v>_S / (||u||_S ||v||_S).

Equivalently whiten with ``W`` where ``W^T W = S`` and take plain cosines. We use the symmetric
square root ``W = S^{1/2}`` (ZCA whitening, Bell & Sejnowski 1997; Kessy, Lewin & Strimmer
2018), so whitened coordinates stay aligned with the original basis.

Estimation (``AIPMoments``): streaming float64 partial sums ``n``, ``sum x``, ``sum x x^T``
that merge by addition (shards, processes, devices). The moment ``M`` is eigendecomposed,
``M = V diag(lam) V^T``; then ``S = V diag(1/(lam + r)) V^T``, ``W = V diag((lam + r)^-1/2) V^T``
and ``W^-1 = V diag((lam + r)^1/2) V^T`` with the ridge ``r`` below.

Conditioning: a singular or ill-conditioned moment (fewer samples than dimensions, dead or
duplicated dimensions) would make ``S`` infinite or noise-dominated. With ``shrinkage="auto"``
(default) no ridge is added when ``cond(M) = lam_max / lam_min <= max_condition`` (1e6), which is
the paper's plain inverse; otherwise the smallest ridge ``r`` giving
``(lam_max + r) / (lam_min + r) = max_condition`` is added (Tikhonov / ridge regularisation,
equivalent to linear shrinkage towards a multiple of the identity, cf. Ledoit & Wolf 2004) and
one ``AIPConditioningWarning`` reports the numbers. A float ``shrinkage = s`` adds
``r = s * tr(M) / d`` (a fraction of the mean eigenvalue); ``shrinkage=0`` forces the plain
inverse (and raises on a singular moment). ``AIPMetric.shrinkage`` is the relative ridge
``r / (tr(M) / d)`` actually applied, so ``fit(..., shrinkage=metric.shrinkage)`` reproduces it.
Nothing returned is NaN.

Robust estimation (``AIPMetric.robust``, the ``tsae_aip`` default; ``AIPMetric.fit`` keeps the
paper's plain uncentred metric). On SmolLM2-135M ``blocks.12.hook_resid_post`` subject tokens
(5,364 train / 1,309 held-out entities) three things go wrong with the plain estimate:

- *Outlier rows.* One row ("Christmas Island", norm 8,640 against a median of 160) supplies ~59%
  of the top eigenvalue. ``outlier_factor=c`` drops rows whose norm exceeds ``c`` x the median
  norm of their batch (default c = 10; ``n_excluded`` counts them).
- *A massive-activation offset.* The top direction of the uncentred moment is a near-constant
  offset; with the uncentred metric the atoms, not the decoder bias, must carry it, and held-out
  codes lose it (62-71% of held-out raw error on that one direction). ``kind="centered"`` gives
  the offset to the mean.
- *Small-eigenvalue overfitting.* With n/d ~ 9 the smallest sample eigenvalues are biased low,
  so held-out whitened norms grow by 1.35x. The held-out Gaussian log-likelihood picks the ridge:
  NLL 675 (plain) / 657 (shrinkage 0.01) / 659 (0.03) / 704 (0.1); default 0.01.

Partial whitening: ``alpha`` in [0, 1] uses ``S^alpha`` (eigenvalues ``lam^alpha``, rescaled so that
``E||W m||^2 = d`` is kept): alpha = 0 is Euclid (up to scale), alpha = 1 the AIP. Sparse atoms
trained at alpha = 0.35 (the frontier's default) keep held-out raw faithfulness that alpha = 1
loses, while their held-out AIP R^2 stays above Euclidean features' (numbers:
``sae_atoms.experiments.frontier``'s docstring, README, ``sae-atoms frontier``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import torch
from torch import Tensor

from sae_atoms.activations import as_matrix
from sae_atoms.io import atomic_write, write_json

Kind = Literal["uncentered", "centered"]
KINDS: tuple[str, ...] = ("uncentered", "centered")
MAX_CONDITION = 1e6
PAPER = {"kind": "uncentered", "shrinkage": "auto", "outlier_factor": None, "alpha": 1.0}  # Atom Theory's estimate
ROBUST = {"kind": "centered", "shrinkage": 0.01, "outlier_factor": 10.0, "alpha": 1.0}  # chosen on held-out data
_CHUNK_ROWS = 32768  # rows converted to float64 at a time (bounds the extra memory)
_FILE_TENSORS = "aip_metric.safetensors"
_FILE_JSON = "aip_metric.json"
_FORMAT_VERSION = 1


class AIPConditioningWarning(UserWarning):
    """The second moment was singular or ill-conditioned and a ridge was applied."""


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not an AIP kind; use one of {KINDS} ('uncentered' is the paper's default).")
    return kind


def _check_alpha(alpha: float) -> float:
    a = float(alpha)
    if not (math.isfinite(a) and 0.0 <= a <= 1.0):
        raise ValueError(f"alpha={alpha!r} must be in [0, 1]: 0 is Euclid, 1 the AIP, between a partial whitening S^alpha.")
    return a


def _as_2d(x: Any, d: int | None = None, what: str = "x") -> Tensor:
    """``as_matrix(x)``, checked to have the metric's width ``d``."""
    x = as_matrix(x, what=what)
    if d is not None and x.shape[-1] != d:
        raise ValueError(f"{what} has last dimension {x.shape[-1]} but the metric is for d={d}; "
                         "use activations from the hook the metric was fitted on.")
    return x


# --------------------------------------------------------------------------- partial sums
class AIPMoments:
    """Mergeable streaming partial sums in float64: ``n``, ``s1 = sum x``, ``s2 = sum x x^T``.

    (For d >= 128 the lower-left block of ``s2`` is left at zero and filled from the upper-right
    by ``moment()``; sums merge block by block all the same.)

    ``update(x)`` adds a batch ``[..., d]`` (converted to float64 in chunks on the sums' device,
    which is the first batch's device unless ``device`` is given). ``a + b`` / ``a.merge(b)``
    combines shards: the result equals one pass over the union of the data (up to float64
    rounding). ``mean = s1 / n``; uncentred moment ``s2 / n``; covariance ``s2 / n - mean mean^T``
    (maximum-likelihood, divisor n).
    """

    def __init__(self, d: int | None = None, device: str | torch.device | None = None):
        self.d = d
        self.n = 0
        self.n_excluded = 0  # rows dropped by ``outlier_factor``
        self.device = torch.device(device) if device is not None else None
        self.s1: Tensor | None = None
        self.s2: Tensor | None = None
        if d is not None:
            self._init(d, self.device or torch.device("cpu"))

    def _init(self, d: int, device: torch.device) -> None:
        self.d, self.device = d, device
        self.s1 = torch.zeros(d, dtype=torch.float64, device=device)
        self.s2 = torch.zeros(d, d, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, x: Any, outlier_factor: float | None = None) -> "AIPMoments":
        """Add a batch of activations ``[..., d]``; returns self.

        ``outlier_factor=c`` first drops the rows whose norm exceeds ``c`` x the batch's median row
        norm (counted in ``n_excluded``); pass the whole set as one batch for a global median.

        Only the upper triangle of ``s2`` is accumulated (two GEMMs over column blocks, ~3/4 of the
        flops of a full ``x^T x``); ``moment()`` mirrors it. Rows are converted to float64 through
        one reused buffer of ``_CHUNK_ROWS`` rows.
        """
        x = _as_2d(x, self.d)
        if x.shape[-1] == 0:
            raise ValueError("activations have d=0 dimensions; nothing to fit.")
        if outlier_factor is not None:
            x = self._drop_outliers(x, float(outlier_factor))
        if self.s1 is None:
            self._init(x.shape[-1], self.device or x.device)
        d = self.d
        h = d // 2 if d >= 128 else d  # column split for the upper-triangle blocks
        buf = torch.empty(min(_CHUNK_ROWS, x.shape[0]), d, dtype=torch.float64, device=self.device)
        for i in range(0, x.shape[0], _CHUNK_ROWS):
            xc = x[i:i + _CHUNK_ROWS]
            c = buf[:xc.shape[0]]
            c.copy_(xc)
            part = c.sum(0)
            if not bool(torch.isfinite(part).all()):
                raise ValueError(f"activation rows {i}..{i + xc.shape[0] - 1} contain NaN or inf (or overflow float64); "
                                 "remove them before fitting the AIP.")
            self.s1 += part
            self.s2[:h].addmm_(c[:, :h].T, c)
            if h < d:
                self.s2[h:, h:].addmm_(c[:, h:].T, c[:, h:])
        self.n += x.shape[0]
        return self

    def _drop_outliers(self, x: Tensor, c: float) -> Tensor:
        if not (math.isfinite(c) and c > 1.0):
            raise ValueError(f"outlier_factor={c} must be a finite number > 1 (rows above c x the median norm are dropped).")
        norms = x.double().norm(dim=-1)
        keep = norms <= c * norms.median()
        self.n_excluded += int((~keep).sum())
        return x if bool(keep.all()) else x[keep]

    def merge(self, other: "AIPMoments") -> "AIPMoments":
        """A new ``AIPMoments`` holding the sums of both (devices: self's)."""
        if not isinstance(other, AIPMoments):
            raise TypeError(f"can only merge AIPMoments with AIPMoments, not {type(other).__name__}.")
        if self.s1 is None:
            return other.copy()
        if other.s1 is None:
            return self.copy()
        if self.d != other.d:
            raise ValueError(f"cannot merge moments of d={self.d} and d={other.d}: they come from different hooks or models.")
        out = AIPMoments(self.d, self.device)
        out.n = self.n + other.n
        out.n_excluded = self.n_excluded + other.n_excluded
        out.s1 = self.s1 + other.s1.to(self.device)
        out.s2 = self.s2 + other.s2.to(self.device)
        return out

    __add__ = merge

    def copy(self) -> "AIPMoments":
        out = AIPMoments(None, self.device)
        out.d, out.n, out.n_excluded = self.d, self.n, self.n_excluded
        out.s1 = None if self.s1 is None else self.s1.clone()
        out.s2 = None if self.s2 is None else self.s2.clone()
        return out

    def moment(self, kind: str = "uncentered") -> tuple[Tensor, Tensor]:
        """``(M, mean)``: the second moment (uncentred) or covariance (centred), and the mean."""
        _check_kind(kind)
        if self.n == 0 or self.s1 is None:
            raise ValueError("no activations were added to these moments; call update(x) with at least one batch.")
        mean = self.s1 / self.n
        h = self.d // 2 if self.d >= 128 else self.d
        s2 = self.s2.clone()
        if h < self.d:
            s2[h:, :h] = s2[:h, h:].T  # the block update leaves the lower-left block empty
        m = s2 / self.n
        if kind == "centered":
            m = m - torch.outer(mean, mean)
        m = 0.5 * (m + m.T)
        return m, mean

    def state_dict(self) -> dict[str, Tensor]:
        return {"n": torch.tensor(self.n, dtype=torch.int64), "n_excluded": torch.tensor(self.n_excluded, dtype=torch.int64),
                "s1": self.s1, "s2": self.s2}

    def __repr__(self) -> str:
        return f"AIPMoments(d={self.d}, n={self.n}, device={self.device})"

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], device: str | torch.device | None = None) -> "AIPMoments":
        """The inverse of ``state_dict`` (e.g. a checkpoint): the same sums, on ``device`` (default: theirs)."""
        out = cls(None, device)
        out.n, out.n_excluded = int(state["n"]), int(state["n_excluded"])
        if state.get("s1") is not None:
            dev = torch.device(device) if device is not None else state["s1"].device
            out.d, out.device = int(state["s1"].shape[0]), dev
            out.s1 = state["s1"].to(dev, torch.float64).clone()
            out.s2 = state["s2"].to(dev, torch.float64).clone()
        return out

    @torch.no_grad()
    def all_reduce(self, group: Any = None, device: str | torch.device | None = None) -> "AIPMoments":
        """Sum ``n``, ``n_excluded``, ``s1``, ``s2`` over the ranks of a ``torch.distributed`` group, in place.

        Every rank must have called ``update`` at least once (``d`` known) or have been built with
        ``d``. ``device``: where the reduction runs (``cuda`` for nccl; default: the sums' device).
        """
        import torch.distributed as dist

        if self.s1 is None:
            raise ValueError("all_reduce needs moments with a known d: build AIPMoments(d) on ranks that saw no data.")
        dev = torch.device(device) if device is not None else self.s1.device
        counts = torch.tensor([self.n, self.n_excluded], dtype=torch.float64, device=dev)
        for t in (counts, self.s1, self.s2):
            buf = t.to(dev)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
            if t is not counts:
                t.copy_(buf.to(t.device))
            else:
                counts = buf
        self.n, self.n_excluded = int(round(float(counts[0]))), int(round(float(counts[1])))
        return self


# --------------------------------------------------------------------------- the metric
class AIPMetric:
    """The atomic inner product ``S`` with its ZCA whitening ``W = S^{1/2}`` (``W^T W = S``).

    Build with ``AIPMetric.fit(x_or_batches)`` or ``AIPMetric.from_moments(moments)``.
    Master copies (``W``, ``W_inv``, ``S``, ``mean``, ``eigvals``) are float64; ``whiten`` and
    friends compute in the input's dtype and device with cached casts.
    """

    def __init__(self, kind: str, eigvals: Tensor, eigvecs: Tensor, mean: Tensor, ridge: float,
                 n_samples: int, shrinkage: float, alpha: float = 1.0, n_excluded: int = 0,
                 outlier_factor: float | None = None):
        self.kind = _check_kind(kind)
        self.eigvals = eigvals.to(torch.float64)  # of the estimated moment, before the ridge
        self.eigvecs = eigvecs.to(torch.float64)
        self.d = int(eigvals.shape[0])
        self.n_samples = int(n_samples)
        self.ridge = float(ridge)
        self.shrinkage = float(shrinkage)
        self.alpha = _check_alpha(alpha)
        self.n_excluded = int(n_excluded)
        self.outlier_factor = None if outlier_factor is None else float(outlier_factor)
        lam = self.eigvals.clamp_min(0.0) + self.ridge
        if not bool((lam > 0).all()):
            raise ValueError("the AIP moment has zero eigenvalues and no ridge; fit with shrinkage='auto' or a float > 0.")
        if self.alpha != 1.0:  # S^alpha: lam^alpha, rescaled so that E||W m||^2 = sum(lam / lam') = d
            lam_a = lam.pow(self.alpha)
            lam = lam_a * ((lam / lam_a).sum() / self.d)
        v = self.eigvecs
        self.W = (v * lam.rsqrt()) @ v.T
        self.W_inv = (v * lam.sqrt()) @ v.T
        self.S = (v * lam.reciprocal()) @ v.T
        self.mean = mean.to(torch.float64) if kind == "centered" else torch.zeros_like(mean, dtype=torch.float64)
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    # ---- construction
    @classmethod
    def fit(cls, x_or_batches: Any, kind: str = "uncentered", shrinkage: str | float = "auto",
            device: str | torch.device | None = None, progress: bool = False,
            max_condition: float = MAX_CONDITION, outlier_factor: float | None = None,
            alpha: float = 1.0) -> "AIPMetric":
        """Fit from a tensor ``[..., d]`` or an iterable of batches (streamed, float64 sums).

        Args:
            x_or_batches: a tensor / array of activations, an object with ``.x()`` (an
                ``ActivationSet`` with one hook), or any iterable of ``[..., d]`` batches.
            kind: ``"uncentered"`` (E[m m^T], the paper) or ``"centered"`` (covariance).
            shrinkage: ``"auto"`` (ridge only when cond > ``max_condition``), a float fraction of
                the mean eigenvalue, or 0 for the plain inverse.
            device: where the sums live (default: the first batch's device, e.g. the GPU).
            progress: show a tqdm bar over batches.
            outlier_factor: drop rows with norm > ``outlier_factor`` x the median norm (per batch;
                a tensor is one batch). None keeps every row (the paper).
            alpha: partial whitening ``S^alpha`` (1 = the AIP; module docstring).

        The defaults are the paper's estimate (``PAPER``); ``AIPMetric.robust`` uses ``ROBUST``.
        """
        _check_kind(kind)
        _check_alpha(alpha)
        mom = AIPMoments(device=device)
        if hasattr(x_or_batches, "x") and callable(x_or_batches.x) and not isinstance(x_or_batches, Tensor):
            x_or_batches = x_or_batches.x()
        if isinstance(x_or_batches, Tensor) or hasattr(x_or_batches, "__array__"):
            mom.update(x_or_batches, outlier_factor)
        else:
            try:
                it = iter(x_or_batches)
            except TypeError as e:
                raise TypeError(f"fit() needs a tensor of activations or an iterable of batches; got {type(x_or_batches).__name__}.") from e
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(it, desc=f"AIP fit ({kind})", unit="batch")
            for b in it:
                mom.update(b, outlier_factor)
        return cls.from_moments(mom, kind=kind, shrinkage=shrinkage, max_condition=max_condition, alpha=alpha,
                                outlier_factor=outlier_factor)

    @classmethod
    def robust(cls, x_or_batches: Any, **overrides: Any) -> "AIPMetric":
        """``fit`` with the held-out-chosen defaults ``ROBUST`` (centred, outliers > 10 x median norm
        dropped, shrinkage 0.01; module docstring for the numbers); ``overrides`` replace any of them."""
        return cls.fit(x_or_batches, **(ROBUST | overrides))

    @classmethod
    @torch.no_grad()
    def from_moments(cls, moments: AIPMoments, kind: str = "uncentered", shrinkage: str | float = "auto",
                     max_condition: float = MAX_CONDITION, alpha: float = 1.0,
                     outlier_factor: float | None = None) -> "AIPMetric":
        """Build the metric from partial sums (see the module docstring for the ridge rule)."""
        m, mean = moments.moment(kind)
        lam, vec = torch.linalg.eigh(m)
        lam_max = float(lam[-1])
        if not math.isfinite(lam_max) or lam_max <= 0.0:
            raise ValueError(f"the {kind} second moment of {moments.n} activations is zero (all activations "
                             f"{'equal' if kind == 'centered' else 'zero'}); the AIP is undefined. Check the hook and the data.")
        scale = float(m.diagonal().sum()) / m.shape[0]  # mean eigenvalue
        lam_min = max(float(lam[0]), 0.0)
        cond = lam_max / lam_min if lam_min > 0 else math.inf
        if isinstance(shrinkage, str):
            if shrinkage != "auto":
                raise ValueError(f"shrinkage={shrinkage!r}: use 'auto', a float >= 0 (fraction of the mean eigenvalue) or 0.")
            if max_condition <= 1:
                raise ValueError(f"max_condition={max_condition} must be > 1.")
            ridge = 0.0
            # Relative eigenvalue floor: below ~1e-12 of the top the eigenvalue is float64 noise.
            if cond > max_condition or lam_min <= lam_max * 1e-12:
                ridge = max((lam_max - max_condition * lam_min) / (max_condition - 1.0), 0.0)
                n_small = int((lam <= lam_max / max_condition).sum())
                warnings.warn(
                    f"AIP ({kind}): the second moment of {moments.n} activations in d={m.shape[0]} is "
                    f"{'singular' if math.isinf(cond) else 'ill-conditioned'} (condition number {cond:.3g}, "
                    f"eigenvalues {lam_min:.3g}..{lam_max:.3g}, {n_small} below lam_max/{max_condition:.0e}"
                    f"{'; fewer samples than dimensions' if moments.n < m.shape[0] else ''}). "
                    f"Applied ridge r={ridge:.3g} ({ridge / scale:.3g} x mean eigenvalue) so the condition number is "
                    f"{max_condition:.0e}. Fit on more activations, drop dead dimensions, or pass shrinkage=0 for the plain inverse.",
                    AIPConditioningWarning, stacklevel=3,
                )
        else:
            s = float(shrinkage)
            if not math.isfinite(s) or s < 0:
                raise ValueError(f"shrinkage={shrinkage!r} must be 'auto' or a finite float >= 0.")
            ridge = s * scale
            if ridge == 0.0 and lam_min <= lam_max * 1e-12:
                raise ValueError(f"shrinkage=0 asks for the plain inverse but the {kind} moment is singular "
                                 f"(smallest eigenvalue {float(lam[0]):.3g}, {moments.n} samples in d={m.shape[0]}); "
                                 "use shrinkage='auto' or a float > 0.")
        return cls(kind, lam, vec, mean, ridge, moments.n, ridge / scale, alpha=alpha, n_excluded=moments.n_excluded,
                   outlier_factor=outlier_factor)

    # ---- diagnostics
    @property
    def condition_number(self) -> float:
        """``lam_max / lam_min`` of the estimated moment before the ridge (inf when singular)."""
        lo = float(self.eigvals[0])
        return float(self.eigvals[-1]) / lo if lo > 0 else math.inf

    def provenance(self) -> dict[str, Any]:
        """What this metric is, for results files: kind, ridge, alpha, conditioning, rows excluded."""
        cond = self.condition_number
        return {"kind": self.kind, "shrinkage": self.shrinkage, "alpha": self.alpha, "n_samples": self.n_samples,
                "n_excluded": self.n_excluded, "outlier_factor": self.outlier_factor,
                "condition_number": cond if math.isfinite(cond) else None,
                "condition_number_used": self.condition_number_used, "effective_rank": self.effective_rank}

    @property
    def condition_number_used(self) -> float:
        """Condition number of the moment actually inverted (after the ridge); also that of S."""
        lam = self.eigvals.clamp_min(0.0) + self.ridge
        return float(lam[-1] / lam[0]) ** self.alpha

    @property
    def effective_rank(self) -> float:
        """``exp(H(p))`` with ``p_i = lam_i / sum lam`` of the moment (Roy & Vetterli 2007)."""
        lam = self.eigvals.clamp_min(0.0)
        p = lam / lam.sum()
        p = p[p > 0]
        return float(torch.exp(-(p * p.log()).sum()))

    # ---- device / dtype
    def to(self, device: str | torch.device) -> "AIPMetric":
        """Move the float64 master copies to ``device`` (in place; returns self)."""
        dev = torch.device(device)
        for name in ("eigvals", "eigvecs", "W", "W_inv", "S", "mean"):
            setattr(self, name, getattr(self, name).to(dev))
        self._cache.clear()
        return self

    @property
    def device(self) -> torch.device:
        return self.W.device

    def _mats(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(W^T, W_inv^T, mean, S)`` cast to ``like``'s device and dtype (cached)."""
        dtype = like.dtype if like.is_floating_point() else torch.float32
        key = (like.device, dtype)
        if key not in self._cache:
            cast = lambda t: t.to(device=like.device, dtype=dtype)  # noqa: E731
            self._cache[key] = (cast(self.W.T.contiguous()), cast(self.W_inv.T.contiguous()), cast(self.mean), cast(self.S))
        return self._cache[key]

    def _check(self, x: Tensor, what: str) -> Tensor:
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x)
        if x.dim() == 0 or x.shape[-1] != self.d:
            raise ValueError(f"{what} has shape {tuple(x.shape)}; the AIP metric is for vectors of d={self.d} "
                             "(last dimension). Use activations from the hook the metric was fitted on.")
        return x if x.is_floating_point() else x.float()

    # ---- the geometry
    def whiten(self, x: Tensor) -> Tensor:
        """``(x - mean) @ W^T`` (mean = 0 for uncentred); same shape, dtype and device as ``x``."""
        x = self._check(x, "x")
        wt, _, mean, _ = self._mats(x)
        return (x - mean) @ wt if self.kind == "centered" else x @ wt

    def unwhiten(self, y: Tensor) -> Tensor:
        """The exact inverse of ``whiten``: ``y @ W^-T + mean``."""
        y = self._check(y, "y")
        _, wit, mean, _ = self._mats(y)
        return y @ wit + mean if self.kind == "centered" else y @ wit

    def inner(self, u: Tensor, v: Tensor) -> Tensor:
        """``u^T S v`` over the last dimension (broadcast). Vectors, not centred: for centred
        activations pass ``x - metric.mean`` (``angles`` does that itself)."""
        u, v = self._check(u, "u"), self._check(v, "v")
        s = self._mats(u)[3]
        return ((u @ s) * v.to(u.dtype)).sum(-1)

    def norm(self, u: Tensor) -> Tensor:
        """``||u||_S = sqrt(u^T S u)`` over the last dimension."""
        return self.inner(u, u).clamp_min(0.0).sqrt()

    def cos(self, u: Tensor, v: Tensor) -> Tensor:
        """``cos_S(u, v) = u^T S v / (||u||_S ||v||_S)`` (elementwise over leading dims; 0 for a zero vector)."""
        den = (self.norm(u) * self.norm(v)).clamp_min(torch.finfo(torch.float64).tiny)
        return (self.inner(u, v) / den).clamp(-1.0, 1.0)

    @torch.no_grad()
    def angles(self, a: Tensor, b: Tensor | None = None, center: bool | None = None,
               block: int = 4096) -> Tensor:
        """Pairwise AIP angles in degrees, ``[n, m]`` (``b=None``: ``a`` against itself).

        ``angle_ij = degrees(arccos(cos_S(a_i - c, b_j - c)))`` with ``c = mean`` when ``center``
        (default: True for the centred kind, where angles are between centred activations), computed
        as plain cosines of whitened rows in float64, ``block`` rows of ``a`` at a time.
        A zero vector gets 90 degrees against everything.
        """
        a = self._check(a, "a").reshape(-1, self.d)
        b = a if b is None else self._check(b, "b").reshape(-1, self.d)
        center = (self.kind == "centered") if center is None else center
        w = self.W.to(a.device)
        mean = self.mean.to(a.device) if center else torch.zeros(self.d, dtype=torch.float64, device=a.device)

        def unit(x: Tensor) -> Tensor:
            y = (x.to(torch.float64) - mean) @ w.T
            return y / y.norm(dim=-1, keepdim=True).clamp_min(1e-300)

        ub = unit(b)
        out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float64, device=a.device)
        for i in range(0, a.shape[0], block):
            out[i:i + block] = torch.rad2deg(torch.arccos((unit(a[i:i + block]) @ ub.T).clamp(-1.0, 1.0)))
        return out

    # ---- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/aip_metric.safetensors`` + ``path/aip_metric.json`` (each via temp file + rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: getattr(self, k).detach().to("cpu", torch.float64).contiguous()
                   for k in ("eigvals", "eigvecs", "mean", "W", "W_inv", "S")}
        meta = {"format": "sae_atoms.aip", "version": _FORMAT_VERSION, "d": self.d, "ridge": self.ridge,
                **self.provenance()}
        atomic_write(path / _FILE_TENSORS, lambda p: save_file(tensors, str(p)))
        write_json(meta, path / _FILE_JSON)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, d: int | None = None, kind: str | None = None,
             device: str | torch.device | None = None) -> "AIPMetric":
        """Load a metric saved by ``save``; ``d`` / ``kind`` (when given) must match the file."""
        from safetensors.torch import load_file

        from sae_atoms.io import read_json, readable

        path = Path(path)
        jf, tf = path / _FILE_JSON, path / _FILE_TENSORS
        if not jf.exists() or not tf.exists():
            raise FileNotFoundError(f"{path} is not a saved AIP metric (expected {_FILE_JSON} and {_FILE_TENSORS} in it); "
                                    "write one with AIPMetric.save(path).")
        fix = "save the metric again (AIPMetric.save) or fit a new one."
        meta = read_json(jf, fix)
        if not isinstance(meta, dict) or meta.get("format") != "sae_atoms.aip":
            raise ValueError(f"{jf} is not an sae_atoms AIP metric file (format={meta.get('format') if isinstance(meta, dict) else None!r}).")
        if d is not None and int(meta["d"]) != int(d):
            raise ValueError(f"the AIP metric in {path} is for d={meta['d']} but d={d} was expected: it was fitted on "
                             "another hook or model. Fit a new metric for this hook.")
        if kind is not None and meta["kind"] != _check_kind(kind):
            raise ValueError(f"the AIP metric in {path} is {meta['kind']!r} but {kind!r} was expected; "
                             f"fit a {kind} metric or load without kind=.")
        with readable(tf, fix):
            t = load_file(str(tf))
        if t["W"].shape != (meta["d"], meta["d"]):
            raise ValueError(f"{tf} holds W of shape {tuple(t['W'].shape)} but its json says d={meta['d']}: the files "
                             "do not belong together; save the metric again.")
        m = cls.__new__(cls)
        m.kind, m.d, m.n_samples = meta["kind"], int(meta["d"]), int(meta["n_samples"])
        m.shrinkage, m.ridge = float(meta["shrinkage"]), float(meta["ridge"])
        m.alpha, m.n_excluded = float(meta.get("alpha", 1.0)), int(meta.get("n_excluded", 0))
        m.outlier_factor = meta.get("outlier_factor")
        for k in ("eigvals", "eigvecs", "mean", "W", "W_inv", "S"):
            setattr(m, k, t[k])
        m._cache = {}
        if device is not None:
            m.to(device)
        return m

    def __repr__(self) -> str:
        return (f"AIPMetric(kind={self.kind!r}, d={self.d}, n_samples={self.n_samples}, shrinkage={self.shrinkage:.3g}, "
                f"alpha={self.alpha:g}, n_excluded={self.n_excluded}, "
                f"condition_number={self.condition_number:.3g}, effective_rank={self.effective_rank:.1f})")

    def save_with_metadata(self, path: str | os.PathLike, **metadata: Any) -> Path:
        """``save`` plus ``metadata`` (json-serialisable: corpus, token counts, ...) under ``"metadata"`` in the json."""
        path = self.save(path)
        jf = path / _FILE_JSON
        meta = json.loads(jf.read_text())
        meta["metadata"] = metadata
        write_json(meta, jf)
        return path

    @staticmethod
    def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
        """The json of a saved metric (its provenance, and ``"metadata"`` when saved with it)."""
        jf = Path(path) / _FILE_JSON
        if not jf.exists():
            raise FileNotFoundError(f"{path} is not a saved AIP metric (no {_FILE_JSON}).")
        return json.loads(jf.read_text())


# --------------------------------------------------------------------------- TransformerLens hook
class AIPHook:
    """A removable AIP view of one hook point: ``f"{hook_name}.hook_aip"`` carries ``metric.whiten(x)``.

    The new ``HookPoint`` is a child module of the hook point (so ``model.setup()`` keeps it in
    ``hook_dict`` and ``run_with_cache`` can cache it); a permanent forward hook on the hook point
    feeds it the whitened activation and returns nothing, so the model's output is unchanged.
    The whitening runs only when something hooks ``hook_aip`` (e.g. a cache), so an idle
    attachment costs nothing. It sees the activation as it arrives at the hook point (before
    hooks added later, e.g. steering edits, which run after it).
    """

    def __init__(self, model, hook_name: str, metric: AIPMetric, name: str = "hook_aip"):
        from transformer_lens.hook_points import HookPoint

        from sae_atoms.models import check_hook_name

        check_hook_name(model, hook_name)
        hp = model.mod_dict[hook_name]
        if not isinstance(hp, HookPoint):
            raise TypeError(
                f"{hook_name!r} is a {type(hp).__name__} (an SAE attached there?), not a HookPoint. Attach the AIP "
                f"before adding the SAE, or to the SAE's input hook f'{hook_name}.hook_sae_input'.")
        if name in dict(hp.named_children()):
            raise ValueError(f"{hook_name!r} already has an AIP hook {name!r}; remove it first (handle.remove()).")
        self.model, self.hook_name, self.metric = model, hook_name, metric
        self.name = f"{hook_name}.{name}"
        self._child_name = name
        self.point = HookPoint()
        self._parent = hp
        hp.add_module(name, self.point)
        model.setup()
        point = self.point

        def aip_feed(x: Tensor, hook) -> None:
            if point._forward_hooks:  # only when someone listens
                if x.shape[-1] != metric.d:
                    raise ValueError(f"the AIP metric is for d={metric.d} but {hook_name} has d={x.shape[-1]}; "
                                     "fit the metric on this hook's activations.")
                point(metric.whiten(x))
            return None

        self._fn = aip_feed
        hp.add_hook(aip_feed, dir="fwd", is_permanent=True)
        self.removed = False

    def remove(self) -> None:
        """Detach: drop the permanent hook and the ``hook_aip`` point (idempotent)."""
        if self.removed:
            return
        hp = self._parent
        keep = []
        for h in hp.fwd_hooks:
            if getattr(h, "user_hook", None) is self._fn:
                h.hook.remove()
            else:
                keep.append(h)
        hp.fwd_hooks = keep
        if self._child_name in hp._modules:
            del hp._modules[self._child_name]
        self.model.setup()
        self.removed = True

    def __enter__(self) -> "AIPHook":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def attach(model, hook_name: str, metric: AIPMetric, name: str = "hook_aip") -> AIPHook:
    """Add ``f"{hook_name}.{name}"`` to ``model`` carrying AIP-whitened activations.

    ``model.run_with_cache(tokens, names_filter=[f"{hook_name}.hook_aip"])`` then caches
    ``metric.whiten(activation)``; logits are unchanged. Works on ``HookedTransformer`` and
    ``HookedSAETransformer`` (at a hook with no SAE on it; with an SAE there, attach to
    ``f"{hook_name}.hook_sae_input"``). Returns an ``AIPHook``: ``.remove()``, or use it in ``with``.
    """
    return AIPHook(model, hook_name, metric, name)


@contextmanager
def aip_hook(model, hook_name: str, metric: AIPMetric, name: str = "hook_aip") -> Iterator[AIPHook]:
    """``with aip_hook(model, hook, metric): model.run_with_cache(...)`` (removed on exit)."""
    h = attach(model, hook_name, metric, name)
    try:
        yield h
    finally:
        h.remove()
