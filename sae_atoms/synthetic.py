"""Planted dictionaries: activations with known atoms, codes, coherence and a covariance distortion.

Built on SAELens's ``sae_lens.synthetic`` (``FeatureDictionary`` for the dictionary,
``ActivationGenerator`` for the sparse codes, ``eval_sae_on_synthetic_data`` for MCC, feature
uniqueness and classification metrics); this module adds what it lacks:

* controlled coherence: intrinsic atoms ``d_j`` (unit rows) with ``mu = max_{i!=j} |<d_i, d_j>|``
  at most ``coherence``. Random unit vectors are first spread by SAELens's
  ``orthogonalize_embeddings``, then pairs above the target are pushed apart by gradient steps
  on ``sum_{i!=j} relu(|G_ij| - coherence)^2`` (``G = D D^T``) with renormalisation. A target
  below what is reachable (the Welch bound ``sqrt((N - d) / (d (N - 1)))`` for ``N > d``) is a
  clear error;
* a known covariance distortion mimicking the representation shift: the observed activation is
  ``m = A x`` with ``x = sum_j delta_j d_j`` and ``A = Q diag(s) Q^T`` (``Q`` a random rotation,
  ``s`` log-spaced from ``distortion^-1/2`` to ``distortion^1/2``, so ``cond(A) = distortion``).
  The observed atoms ``A d_j`` are far from orthogonal in Euclid; the AIP undoes ``A``;
* a union of orthonormal bases (``n_bases`` random rotations of R^d, ``n_atoms = n_bases * d``):
  the classic coherent dictionary of compressed sensing (Donoho & Huo 2001; Elad & Bruckstein
  2002), mutual coherence ~ sqrt(2 log d / d) between bases, exactly 0 within one;
* codes with ``k`` active atoms on average (Bernoulli firing, probability ``k / N``, as in
  ``ActivationGenerator``) and magnitudes uniform in ``MAGNITUDE`` (bounded away from zero, so
  supports are identifiable);
* ``evaluate(sae, data)``: the fraction of atoms recovered (best-match ``|cos| > 0.99``) and of
  samples whose support is recovered exactly, beside SAELens's synthetic metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from sae_lens.synthetic import (
    ActivationGenerator,
    FeatureDictionary,
    eval_sae_on_synthetic_data,
    orthogonalize_embeddings,
)

__all__ = ["PlantedData", "planted", "evaluate", "welch_bound"]


MAGNITUDE = (0.5, 1.5)  # active coefficients are uniform in [lo, hi]: bounded away from zero


def welch_bound(d: int, n_atoms: int) -> float:
    """Lowest possible coherence of ``n_atoms`` unit vectors in R^d (0 when ``n_atoms <= d``)."""
    if n_atoms <= d:
        return 0.0
    return math.sqrt((n_atoms - d) / (d * (n_atoms - 1)))


def _coherence(v: torch.Tensor) -> float:
    g = v @ v.T
    g.fill_diagonal_(0.0)
    return float(g.abs().max()) if v.shape[0] > 1 else 0.0


def _spread(v: torch.Tensor, target: float, steps: int = 2000, lr: float = 0.05) -> torch.Tensor:
    """Push apart pairs with ``|cos| > target``: gradient steps on the clipped Gram excess."""
    v = v / v.norm(dim=1, keepdim=True)
    for _ in range(steps):
        g = v @ v.T
        g.fill_diagonal_(0.0)
        excess = g.sign() * (g.abs() - target * 0.999).clamp_min(0.0)
        if not bool((g.abs() > target).any()):
            break
        v = v - lr * (excess @ v)
        v = v / v.norm(dim=1, keepdim=True)
    return v


def _coherent_initializer(coherence: float, seed: int):
    def init(fd: FeatureDictionary) -> None:
        n, d = fd.feature_vectors.shape
        v = fd.feature_vectors.data.double()
        if _coherence(v) > coherence:
            v = orthogonalize_embeddings(v.float(), num_steps=100, lr=0.01).double()
            v = _spread(v, coherence)
        mu = _coherence(v)
        if mu > coherence + 1e-9:
            raise ValueError(
                f"could not place {n} unit atoms in d={d} with coherence <= {coherence} (reached {mu:.4f}; the Welch "
                f"bound is {welch_bound(d, n):.4f}). Ask for a larger coherence, fewer atoms or a larger d."
            )
        fd.feature_vectors.data = v.to(fd.feature_vectors.dtype)

    return init


def _distortion_matrix(d: int, distortion: float, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    s = torch.logspace(-0.5 * math.log10(distortion), 0.5 * math.log10(distortion), d, dtype=torch.float64)
    return (q * s) @ q.T


@dataclass
class PlantedData:
    """Activations from a known dictionary (rows are vectors throughout).

    Attributes:
        activations: ``[n_samples, d]`` observed activations ``m = codes @ (intrinsic_atoms @ A^T)``.
        codes: ``[n_samples, n_atoms]`` the true sparse codes (>= 0).
        atoms: ``[n_atoms, d]`` the true atoms in the observed space, ``A d_j`` normalised.
        intrinsic_atoms: ``[n_atoms, d]`` unit atoms before the distortion.
        distortion: ``A`` (``[d, d]``, symmetric, ``cond(A) = distortion_condition``).
        coherence: achieved ``max |cos|`` of the intrinsic atoms; ``coherence_observed`` in Euclid
            after the distortion.
        feature_dict / generator: the SAELens objects that generate more samples of the same
            distribution (observed space), for ``eval_sae_on_synthetic_data``.
    """

    activations: torch.Tensor
    codes: torch.Tensor
    atoms: torch.Tensor
    intrinsic_atoms: torch.Tensor
    distortion: torch.Tensor
    coherence: float
    coherence_observed: float
    distortion_condition: float
    k: float
    seed: int
    feature_dict: FeatureDictionary = field(repr=False)
    generator: ActivationGenerator = field(repr=False)

    @property
    def support(self) -> torch.Tensor:
        """``[n_samples, n_atoms]`` boolean: which atoms are active in each sample."""
        return self.codes > 0

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` fresh ``(activations, codes)`` from the same distribution."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            codes = self.generator.sample(n)
        return self.feature_dict(codes).detach(), codes


def _bases_initializer(n_bases: int, seed: int):
    def init(fd: FeatureDictionary) -> None:
        g = torch.Generator().manual_seed(seed)
        d = fd.feature_vectors.shape[1]
        qs = [torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0].T for _ in range(n_bases)]
        fd.feature_vectors.data = torch.cat(qs).to(fd.feature_vectors.dtype)

    return init


def planted(d: int, n_atoms: int, k: float, coherence: float, n_samples: int, seed: int = 0,
            distortion: float = 10.0, n_bases: int | None = None) -> PlantedData:
    """Activations from ``n_atoms`` planted atoms in R^d (see the module docstring).

    Args:
        d: activation width.
        n_atoms: dictionary size (``> d`` is overcomplete).
        k: mean number of active atoms per sample (firing probability ``k / n_atoms``).
        coherence: the largest allowed ``|cos|`` between two intrinsic atoms.
        n_samples: number of activations.
        seed: everything (atoms, distortion, codes) is a function of the seed.
        distortion: condition number of the linear distortion ``A`` (1 = none).
        n_bases: when given, the intrinsic atoms are ``n_bases`` random orthonormal bases of R^d
            (``n_atoms`` must equal ``n_bases * d``; ``coherence`` is then not a target, the
            achieved value is reported).
    """
    if d < 1 or n_atoms < 1 or n_samples < 1:
        raise ValueError(f"d={d}, n_atoms={n_atoms} and n_samples={n_samples} must all be >= 1.")
    if not 0 < k <= n_atoms:
        raise ValueError(f"k={k} must be in (0, n_atoms={n_atoms}]: it is the mean number of active atoms per sample.")
    if not 0 <= coherence < 1:
        raise ValueError(f"coherence={coherence} must be in [0, 1).")
    if distortion < 1:
        raise ValueError(f"distortion={distortion} is a condition number; use a value >= 1 (1 = no distortion).")
    lo, hi = MAGNITUDE
    if n_bases is not None and n_atoms != n_bases * d:
        raise ValueError(f"n_bases={n_bases} orthonormal bases of R^{d} give {n_bases * d} atoms, not n_atoms={n_atoms}.")
    gen = torch.Generator().manual_seed(seed)
    init = _bases_initializer(n_bases, seed) if n_bases is not None else _coherent_initializer(coherence, seed)
    intrinsic = FeatureDictionary(n_atoms, d, initializer=init, seed=seed)
    a = _distortion_matrix(d, distortion, gen)
    observed = (intrinsic.feature_vectors.data.double() @ a.T).float()
    fd = FeatureDictionary(n_atoms, d, initializer=None, seed=seed)
    fd.feature_vectors.data = observed
    fd.feature_vectors.requires_grad_(False)

    def uniform_magnitudes(acts: torch.Tensor) -> torch.Tensor:
        on = acts > 0
        return torch.where(on, lo + (hi - lo) * torch.rand_like(acts), acts)

    generator = ActivationGenerator(n_atoms, firing_probabilities=k / n_atoms, modify_activations=uniform_magnitudes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        codes = generator.sample(n_samples)
    acts = fd(codes).detach()
    atoms = observed / observed.norm(dim=1, keepdim=True)
    return PlantedData(
        activations=acts, codes=codes, atoms=atoms, intrinsic_atoms=intrinsic.feature_vectors.data.clone(),
        distortion=a.float(), coherence=_coherence(intrinsic.feature_vectors.data.double()),
        coherence_observed=_coherence(atoms.double()), distortion_condition=float(distortion), k=float(k),
        seed=seed, feature_dict=fd, generator=generator,
    )


@torch.no_grad()
def evaluate(sae: Any, data: PlantedData, cos_threshold: float = 0.99, n_eval_samples: int = 20_000,
             sae_lens_metrics: bool = True) -> dict[str, Any]:
    """Recovery of the planted atoms and supports by ``sae`` (any SAELens SAE; raw-space input).

    Returns:
        atoms_recovered: fraction of true atoms whose best-matching decoder row (raw space) has
            ``|cos| > cos_threshold``;
        support_recovered: fraction of samples whose set of active latents equals the set of
            latents matched to the sample's true atoms (no misses, no extras);
        r2: ``1 - sum ||m - m^||^2 / sum ||m - mean||^2``; l0: mean active latents; true_l0;
        mcc, uniqueness, classification (SAELens's ``eval_sae_on_synthetic_data`` on fresh samples).
    """
    from sae_atoms.saes.tsae_aip import to_inference

    inf = to_inference(sae)
    inf.eval()
    dec = inf.W_dec.detach().float()
    dec = dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (data.atoms @ dec.T).abs()  # [n_atoms, d_sae]
    best, match = cos.max(dim=1)
    x = data.activations.to(inf.device, inf.dtype)
    acts = inf.encode(x).float().cpu()
    recon = inf.decode(inf.encode(x)).float().cpu()
    active = acts > 0
    mapped = active[:, match]
    unmatched = torch.ones(dec.shape[0], dtype=torch.bool)
    unmatched[match] = False
    correct = (mapped == data.support).all(dim=1) & ~active[:, unmatched].any(dim=1)
    m = data.activations
    r2 = 1 - float((m - recon).pow(2).sum()) / float((m - m.mean(0)).pow(2).sum())
    out: dict[str, Any] = {
        "atoms_recovered": float((best > cos_threshold).float().mean()),
        "support_recovered": float(correct.float().mean()),
        "r2": r2,
        "l0": float(active.float().sum(1).mean()),
        "true_l0": float(data.support.float().sum(1).mean()),
        "best_cos_median": float(best.median()),
        "best_cos_min": float(best.min()),
    }
    if sae_lens_metrics:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(data.seed + 2)
            res = eval_sae_on_synthetic_data(inf, data.feature_dict, data.generator, num_samples=n_eval_samples)
        out.update(mcc=res.mcc, uniqueness=res.uniqueness, classification=res.to_dict()["classification"],
                   sae_lens_explained_variance=res.explained_variance)
    return out
