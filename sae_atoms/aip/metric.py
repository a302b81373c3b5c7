"""The AIP metric ``S``, its ZCA whitening ``W = S^{1/2}``, and the metric's files.

``AIPMetric`` is built from ``AIPMoments`` (``fit``, ``robust``, ``from_moments``), measures in
the metric (``whiten``, ``inner``, ``norm``, ``cos``, ``angles``) and reports how it was estimated
(``provenance``, ``condition_number``, ``effective_rank``). The package docstring
(``sae_atoms.aip``) gives the formulas and the reasons.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sae_atoms.aip.moments import MAX_CONDITION, ROBUST, AIPMoments, _check_alpha, _check_kind, choose_ridge
from sae_atoms.io import atomic_write, read_json, readable, write_json

_FILE_TENSORS = "aip_metric.safetensors"
_FILE_JSON = "aip_metric.json"
_FORMAT_VERSION = 1
_MATRICES = ("eigvals", "eigvecs", "mean", "W", "W_inv", "S")
_FIX = "save the metric again (AIPMetric.save) or fit a new one."


@dataclass(frozen=True)
class Estimate:
    """How a metric's moment was estimated: the rows used (``n_samples``) and dropped as outliers
    (``n_excluded``, by ``outlier_factor``), and the relative ridge ``shrinkage = r / (tr(M) / d)``
    actually applied (so ``fit(..., shrinkage=metric.shrinkage)`` reproduces it)."""

    n_samples: int
    shrinkage: float
    n_excluded: int = 0
    outlier_factor: float | None = None


class AIPMetric:
    """The atomic inner product ``S`` with its ZCA whitening ``W = S^{1/2}`` (``W^T W = S``).

    Build with ``AIPMetric.fit(x_or_batches)`` or ``AIPMetric.from_moments(moments)``.
    Master copies (``W``, ``W_inv``, ``S``, ``mean``, ``eigvals``) are float64; ``whiten`` and
    friends compute in the input's dtype and device with cached casts.
    """

    def __init__(self, kind: str, eigvals: Tensor, eigvecs: Tensor, mean: Tensor, ridge: float,
                 estimate: Estimate, alpha: float = 1.0, whitening: tuple[Tensor, Tensor, Tensor] | None = None):
        """The metric of the moment ``eigvecs diag(eigvals) eigvecs^T`` (``mean``: its data's mean)
        with ``ridge`` added to the eigenvalues and partial whitening ``alpha``.

        ``whitening``: ``(W, W_inv, S)`` as saved (``load``), used bit for bit; None computes them
        from the eigenpairs.
        """
        self.kind = _check_kind(kind)
        self.eigvals = eigvals.to(torch.float64)  # of the estimated moment, before the ridge
        self.eigvecs = eigvecs.to(torch.float64)
        self.d = int(eigvals.shape[0])
        self.n_samples = int(estimate.n_samples)
        self.ridge = float(ridge)
        self.shrinkage = float(estimate.shrinkage)
        self.alpha = _check_alpha(alpha)
        self.n_excluded = int(estimate.n_excluded)
        self.outlier_factor = None if estimate.outlier_factor is None else float(estimate.outlier_factor)
        lam = self.eigvals.clamp_min(0.0) + self.ridge
        if not bool((lam > 0).all()):
            raise ValueError("the AIP moment has zero eigenvalues and no ridge; fit with shrinkage='auto' or a float > 0.")
        if self.alpha != 1.0:  # S^alpha: lam^alpha, rescaled so that E||W m||^2 = sum(lam / lam') = d
            lam_a = lam.pow(self.alpha)
            lam = lam_a * ((lam / lam_a).sum() / self.d)
        v = self.eigvecs
        if whitening is None:
            whitening = ((v * lam.rsqrt()) @ v.T, (v * lam.sqrt()) @ v.T, (v * lam.reciprocal()) @ v.T)
        self.W, self.W_inv, self.S = (t.to(torch.float64) for t in whitening)
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
        dropped, shrinkage 0.01; the package docstring says why); ``overrides`` replace any of them."""
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
        r = choose_ridge(lam, scale, shrinkage, max_condition, kind, moments.n)
        return cls(kind, lam, vec, mean, r, Estimate(moments.n, r / scale, moments.n_excluded, outlier_factor), alpha)

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
        for name in _MATRICES:
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
        """Write ``path/aip_metric.safetensors`` + ``path/aip_metric.json`` (each atomically, ``sae_atoms.io``)."""
        return self._save(path, None)

    def save_with_metadata(self, path: str | os.PathLike, **metadata: Any) -> Path:
        """``save`` plus ``metadata`` (json-serialisable: corpus, token counts, ...) under ``"metadata"`` in the json."""
        return self._save(path, metadata)

    def _save(self, path: str | os.PathLike, metadata: dict[str, Any] | None) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {k: getattr(self, k).detach().to("cpu", torch.float64).contiguous() for k in _MATRICES}
        meta = {"format": "sae_atoms.aip", "version": _FORMAT_VERSION, "d": self.d, "ridge": self.ridge,
                **self.provenance()}
        if metadata is not None:
            meta["metadata"] = metadata
        atomic_write(path / _FILE_TENSORS, lambda p: save_file(tensors, str(p)))
        write_json(meta, path / _FILE_JSON)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, d: int | None = None, kind: str | None = None,
             device: str | torch.device | None = None) -> "AIPMetric":
        """Load a metric saved by ``save``; ``d`` / ``kind`` (when given) must match the file."""
        meta, t = _read_files(Path(path), d, kind)
        est = Estimate(int(meta["n_samples"]), float(meta["shrinkage"]), int(meta.get("n_excluded", 0)),
                       meta.get("outlier_factor"))
        m = cls(meta["kind"], t["eigvals"], t["eigvecs"], t["mean"], float(meta["ridge"]), est,
                float(meta.get("alpha", 1.0)), (t["W"], t["W_inv"], t["S"]))
        return m if device is None else m.to(device)

    def __repr__(self) -> str:
        return (f"AIPMetric(kind={self.kind!r}, d={self.d}, n_samples={self.n_samples}, shrinkage={self.shrinkage:.3g}, "
                f"alpha={self.alpha:g}, n_excluded={self.n_excluded}, "
                f"condition_number={self.condition_number:.3g}, effective_rank={self.effective_rank:.1f})")

    @staticmethod
    def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
        """The json of a saved metric (its provenance, and ``"metadata"`` when saved with it)."""
        jf = Path(path) / _FILE_JSON
        if not jf.exists():
            raise FileNotFoundError(f"{path} is not a saved AIP metric (no {_FILE_JSON}).")
        return read_json(jf, _FIX)


def _read_files(path: Path, d: int | None, kind: str | None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The json and the tensors of a saved metric, checked against each other and ``d`` / ``kind``."""
    from safetensors.torch import load_file

    jf, tf = path / _FILE_JSON, path / _FILE_TENSORS
    if not jf.exists() or not tf.exists():
        raise FileNotFoundError(f"{path} is not a saved AIP metric (expected {_FILE_JSON} and {_FILE_TENSORS} in it); "
                                "write one with AIPMetric.save(path).")
    meta = read_json(jf, _FIX)
    if not isinstance(meta, dict) or meta.get("format") != "sae_atoms.aip":
        raise ValueError(f"{jf} is not an sae_atoms AIP metric file (format={meta.get('format') if isinstance(meta, dict) else None!r}).")
    if d is not None and int(meta["d"]) != int(d):
        raise ValueError(f"the AIP metric in {path} is for d={meta['d']} but d={d} was expected: it was fitted on "
                         "another hook or model. Fit a new metric for this hook.")
    if kind is not None and meta["kind"] != _check_kind(kind):
        raise ValueError(f"the AIP metric in {path} is {meta['kind']!r} but {kind!r} was expected; "
                         f"fit a {kind} metric or load without kind=.")
    with readable(tf, _FIX):
        t = load_file(str(tf))
    if t["W"].shape != (meta["d"], meta["d"]) or t["eigvals"].shape != (meta["d"],):
        raise ValueError(f"{tf} holds W of shape {tuple(t['W'].shape)} and eigvals of shape {tuple(t['eigvals'].shape)} "
                         f"but its json says d={meta['d']}: the files "
                         "do not belong together; save the metric again.")
    return meta, t
