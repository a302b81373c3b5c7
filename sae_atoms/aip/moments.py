"""Estimation of the AIP's moment: mergeable float64 partial sums and the ridge rule.

``AIPMoments`` streams ``n``, ``sum x`` and ``sum x x^T`` (shards, processes and devices merge by
addition); ``ridge`` chooses the Tikhonov ridge that keeps the inverse well conditioned. The
package docstring (``sae_atoms.aip``) gives the formulas and the reasons.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
from torch import Tensor

from sae_atoms.activations import as_matrix

Kind = Literal["uncentered", "centered"]
KINDS: tuple[str, ...] = ("uncentered", "centered")
MAX_CONDITION = 1e6
PAPER = {"kind": "uncentered", "shrinkage": "auto", "outlier_factor": None, "alpha": 1.0}  # Atom Theory's estimate
ROBUST = {"kind": "centered", "shrinkage": 0.01, "outlier_factor": 10.0, "alpha": 1.0}  # chosen on held-out data
_CHUNK_ROWS = 32768  # rows converted to float64 at a time (bounds the extra memory)


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


# --------------------------------------------------------------------------- the ridge
def choose_ridge(lam: Tensor, scale: float, shrinkage: str | float, max_condition: float, kind: str, n: int) -> float:
    """The ridge ``r`` added to the eigenvalues ``lam`` (ascending) of the ``kind`` moment of ``n``
    activations, whose mean eigenvalue is ``scale``.

    ``shrinkage="auto"``: 0 when ``cond = lam_max / lam_min <= max_condition``, else the smallest
    ``r`` with ``(lam_max + r) / (lam_min + r) = max_condition`` (one ``AIPConditioningWarning``);
    a float ``s``: ``r = s * scale``; 0 the plain inverse (a singular moment raises).
    """
    d = lam.shape[0]
    lam_max = float(lam[-1])
    lam_min = max(float(lam[0]), 0.0)
    cond = lam_max / lam_min if lam_min > 0 else math.inf
    if not isinstance(shrinkage, str):
        s = float(shrinkage)
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"shrinkage={shrinkage!r} must be 'auto' or a finite float >= 0.")
        if s * scale == 0.0 and lam_min <= lam_max * 1e-12:
            raise ValueError(f"shrinkage=0 asks for the plain inverse but the {kind} moment is singular "
                             f"(smallest eigenvalue {float(lam[0]):.3g}, {n} samples in d={d}); "
                             "use shrinkage='auto' or a float > 0.")
        return s * scale
    if shrinkage != "auto":
        raise ValueError(f"shrinkage={shrinkage!r}: use 'auto', a float >= 0 (fraction of the mean eigenvalue) or 0.")
    if max_condition <= 1:
        raise ValueError(f"max_condition={max_condition} must be > 1.")
    # Relative eigenvalue floor: below ~1e-12 of the top the eigenvalue is float64 noise.
    if not (cond > max_condition or lam_min <= lam_max * 1e-12):
        return 0.0
    r = max((lam_max - max_condition * lam_min) / (max_condition - 1.0), 0.0)
    n_small = int((lam <= lam_max / max_condition).sum())
    warnings.warn(
        f"AIP ({kind}): the second moment of {n} activations in d={d} is "
        f"{'singular' if math.isinf(cond) else 'ill-conditioned'} (condition number {cond:.3g}, "
        f"eigenvalues {lam_min:.3g}..{lam_max:.3g}, {n_small} below lam_max/{max_condition:.0e}"
        f"{'; fewer samples than dimensions' if n < d else ''}). "
        f"Applied ridge r={r:.3g} ({r / scale:.3g} x mean eigenvalue) so the condition number is "
        f"{max_condition:.0e}. Fit on more activations, drop dead dimensions, or pass shrinkage=0 for the plain inverse.",
        AIPConditioningWarning, stacklevel=4,
    )
    return r
