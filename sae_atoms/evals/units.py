"""Unit sets (neurons, a basis, any SAELens SAE), the AIP metric they carry, and the whitening.

A unit set is directions ``D`` (rows, ``[N, d]``), a code ``delta = encode(m)`` (``[n, N]``) and
a reconstruction ``m^ = decode(delta)``. "AIP" numbers use the atomic inner product
``<u, v>_S = u^T S v`` with ``S = W^T W`` (``sae_atoms.aip.AIPMetric``): they are the Euclidean
numbers of the whitened vectors ``u W^T``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from sae_atoms.aip import AIPMetric, Estimate

MAX_DENSE_CODES = 2 << 30  # codes [n, N] kept in memory; beyond this evaluate_units refuses


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
    metric: AIPMetric | None = None
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


# --------------------------------------------------------------------------- the metric an SAE carries
@torch.no_grad()
def metric_from_whitening(W: Tensor, mean: Tensor | None = None, kind: str = "uncentered") -> AIPMetric:
    """The ``AIPMetric`` whose whitening is the symmetric positive-definite ``W`` (``S = W^T W``).

    ``W = V diag(w) V^T`` (``torch.linalg.eigh``) is the ZCA whitening of the moment with
    eigenvalues ``w^-2``: the metric is built from those, with no ridge and ``alpha = 1`` (a
    partial whitening is already in ``W``). Its ``W`` is the given one, bit for bit.
    """
    if W.dim() != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"the whitening matrix must be square [d, d]; got {tuple(W.shape)}")
    Wd = W.detach().double()
    w, vec = torch.linalg.eigh(0.5 * (Wd + Wd.T))
    if not bool((w > 0).all()):
        raise ValueError("the whitening matrix is not positive definite; it is not the whitening of an AIP metric")
    mean = torch.zeros(W.shape[0], dtype=torch.float64, device=W.device) if mean is None else mean.detach()
    whitening = (Wd, torch.linalg.inv(Wd), Wd.T @ Wd)  # the SAE's own W, not rebuilt from the eigenpairs
    return AIPMetric(kind, w.pow(-2), vec, mean.double(), 0.0, Estimate(n_samples=0, shrinkage=0.0), whitening=whitening)


def find_metric(sae: Any) -> AIPMetric | None:
    """The AIP metric an SAE carries (``tsae_aip``), or None.

    Looks for the ``tsae_aip`` buffer ``aip_W`` (the whitening ``W``, with ``aip_mean`` and the
    config's ``aip_kind``; None while it is still the identity placeholder or ``aip_fitted`` is
    False), then an ``AIPMetric`` in an attribute ``metric`` / ``aip_metric`` / ``aip``, then one
    returned by a ``get_metric()`` method.
    """
    W = getattr(sae, "aip_W", None)
    if isinstance(W, Tensor) and W.dim() == 2:
        fitted = getattr(sae, "aip_fitted", None)
        unfitted = (isinstance(fitted, Tensor) and not bool(fitted)) or torch.equal(W, torch.eye(W.shape[0], dtype=W.dtype, device=W.device))
        if unfitted:
            return None
        kind = getattr(getattr(sae, "cfg", None), "aip_kind", "uncentered")
        return metric_from_whitening(W, getattr(sae, "aip_mean", None), kind)
    for name in ("metric", "aip_metric", "aip"):
        m = getattr(sae, name, None)
        if isinstance(m, AIPMetric):
            return m
    getter = getattr(sae, "get_metric", None)
    m = getter() if callable(getter) else None
    return m if isinstance(m, AIPMetric) else None


# --------------------------------------------------------------------------- normalising units
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


def _sae_units(sae: Any) -> Units:
    """A SAELens SAE as :class:`Units`: ``D = W_dec``, its encoder and decoder (in float32 out)."""
    sae.eval()
    dev = next(iter(sae.parameters())).device
    dt = sae.W_dec.dtype

    def enc(x: Tensor) -> Tensor:
        return sae.encode(x.to(dev, dt)).float()

    def dec(c: Tensor) -> Tensor:
        return sae.decode(c.to(dev, dt)).float()

    pre = _sae_pre_activation_fn(sae)
    cfg = getattr(sae, "cfg", None)
    arch = cfg.architecture() if hasattr(cfg, "architecture") else type(sae).__name__
    info = {"architecture": arch, "d_sae": int(sae.W_dec.shape[0])}
    hook = getattr(getattr(cfg, "metadata", None), "hook_name", None)
    if hook:
        info["hook_name"] = hook
    if getattr(cfg, "normalize_activations", "none") == "expected_average_only_in":
        warnings.warn("this SAE expects inputs scaled by an activation norm factor (normalize_activations="
                      "'expected_average_only_in'); fold it first (sae.fold_activation_norm_scaling_factor) or the "
                      "evaluation is on the wrong scale.", stacklevel=3)
    return Units(str(arch), sae.W_dec.detach(), enc, dec, (lambda x: pre(x.to(dev, dt)).float()) if pre else None,
                 find_metric(sae), "sae", info)


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
        return _sae_units(units)
    raise TypeError(f"cannot evaluate units of type {type(units).__name__}: pass 'neurons', a SAELens SAE "
                    "(encode/decode/W_dec), a square basis tensor or a sae_atoms.evals.Units")


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


# --------------------------------------------------------------------------- the whitening
def whitening_matrix(metric: AIPMetric | Tensor | None) -> Tensor | None:
    """``W`` (``[d, d]``, ``W^T W = S``) of an ``AIPMetric`` (or a tensor taken as ``W``); None for None.

    The one place the evaluators read a metric: everything else takes its ``W``.
    """
    if metric is None:
        return None
    if isinstance(metric, AIPMetric):
        W = metric.W
    elif isinstance(metric, Tensor):
        W = metric
    else:
        raise TypeError(f"metric must be an AIPMetric or a [d, d] whitening tensor, not {type(metric).__name__}")
    if W.dim() != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"the whitening matrix must be square [d, d]; got {tuple(W.shape)}")
    return W


def whiten_vectors(v: Tensor, W: Tensor | None) -> Tensor:
    """``v W^T`` (vectors, no mean: differences and directions); ``v`` when ``W`` is None."""
    if W is None:
        return v
    if v.shape[-1] != W.shape[0]:
        raise ValueError(f"vectors of dimension {v.shape[-1]} do not match the AIP metric's d={W.shape[0]}; "
                         "use the metric fitted at the same hook")
    return v @ W.T.to(v.device, v.dtype)


def unit_directions(directions: Tensor, metric: AIPMetric | Tensor | None = None,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """Unit-normalised directions in the chosen geometry: ``d_j W^T / ||d_j W^T||`` (zero rows stay 0)."""
    D = whiten_vectors(directions.to(dtype), whitening_matrix(metric))
    return D / D.norm(dim=1, keepdim=True).clamp_min(1e-30)
