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
paper's plain uncentred metric) answers three ways the plain estimate goes wrong on language-model
activations:

- *Outlier rows.* A single row with a norm far above the others can supply most of the top
  eigenvalue. ``outlier_factor=c`` drops rows whose norm exceeds ``c`` x the median norm of their
  batch (``n_excluded`` counts them).
- *A massive-activation offset.* The top direction of the uncentred moment is a near-constant
  offset; with the uncentred metric the atoms, not the decoder bias, must carry it, and held-out
  codes lose it. ``kind="centered"`` gives the offset to the mean.
- *Small-eigenvalue overfitting.* With few samples per dimension the smallest sample eigenvalues
  are biased low (the Marchenko-Pastur spread), so held-out whitened norms grow. A small ridge,
  chosen by the held-out Gaussian log-likelihood, undoes it.

``ROBUST`` holds the chosen settings.

Partial whitening: ``alpha`` in [0, 1] uses ``S^alpha`` (eigenvalues ``lam^alpha``, rescaled so that
``E||W m||^2 = d`` is kept): alpha = 0 is Euclid (up to scale), alpha = 1 the AIP. In between,
sparse atoms trade held-out raw faithfulness against held-out AIP R^2 (``sae-atoms frontier``
measures the trade).

Modules: ``moments`` (partial sums, the ridge rule), ``metric`` (``AIPMetric`` and its files),
``hook`` (the TransformerLens hook).
"""

from sae_atoms.aip.hook import AIPHook, aip_hook, attach
from sae_atoms.aip.metric import AIPMetric, Estimate
from sae_atoms.aip.moments import (
    KINDS,
    MAX_CONDITION,
    PAPER,
    ROBUST,
    AIPConditioningWarning,
    AIPMoments,
    Kind,
    choose_ridge,
)

__all__ = ["KINDS", "MAX_CONDITION", "PAPER", "ROBUST", "AIPConditioningWarning", "AIPHook", "AIPMetric",
           "AIPMoments", "Estimate", "Kind", "aip_hook", "attach", "choose_ridge"]
