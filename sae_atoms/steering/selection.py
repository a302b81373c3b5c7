"""Which atoms to steer: by meaning (association with a label), by effect (first-order change of
the target's log-probability), and the strengths in the atoms' own units. Formulas: the package
docstring (``sae_atoms.steering``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from sae_atoms.activations import as_matrix


# =========================================================================== selection by meaning
@dataclass
class Association:
    """How strongly a unit is tied to a label value (see ``select_atoms``)."""

    atom: int
    score: float
    mean_in: float
    mean_out: float
    freq_in: float
    freq_out: float


def encode_batched(sae, x: Tensor, batch_size: int = 4096) -> Tensor:
    """``sae.encode`` over the rows of ``x`` in batches (no grad), as float32 on the CPU."""
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            out.append(sae.encode(x[i:i + batch_size].to(sae.device, sae.dtype)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, int(sae.cfg.d_sae))


def _x_and_labels(acts, labels, hook: str | None) -> tuple[Tensor, list]:
    if isinstance(labels, str) and not hasattr(acts, "labels"):
        raise ValueError("with a plain tensor of activations, pass labels as a list (one per row)")
    if labels is None:
        raise ValueError("pass labels: a label column of the ActivationSet, or a list (one per row)")
    x = as_matrix(acts, hook)
    lab = acts.labels(labels) if isinstance(labels, str) else list(labels)
    if len(lab) != x.shape[0]:
        raise ValueError(f"{len(lab)} labels for {x.shape[0]} activations")
    return x.float(), lab


def select_atoms(sae, acts, labels: str | Sequence, value: Any, k: int = 8, hook: str | None = None,
                 codes: Tensor | None = None) -> list[Association]:
    """The ``k`` atoms most associated with ``label == value``, best first.

    ``score_j = (mean_{y=v} delta_j - mean_{y!=v} delta_j) * ||W_dec[j]||_2``: the atom's
    mean extra contribution (raw-space norm) to activations with the value. Also returned:
    mean activations and firing frequencies inside / outside the value.

    Args:
        acts: an ``ActivationSet`` (``labels`` a column name such as ``"country"``) or a tensor
            ``[n, d]`` (``labels`` a list).
        codes: precomputed ``sae.encode`` of the activations (saves the encoding).
    """
    x, lab = _x_and_labels(acts, labels, hook)
    inside = torch.tensor([y == value for y in lab])
    if not bool(inside.any()):
        seen = sorted({str(y) for y in lab})[:12]
        raise ValueError(f"no activation has label {value!r}; values present include {seen}")
    if bool(inside.all()):
        raise ValueError(f"every activation has label {value!r}; an association needs contrast")
    c = encode_batched(sae, x) if codes is None else codes.float().cpu()
    dn = sae.W_dec.detach().float().norm(dim=-1).cpu()
    m_in, m_out = c[inside].mean(0), c[~inside].mean(0)
    f_in, f_out = (c[inside] != 0).float().mean(0), (c[~inside] != 0).float().mean(0)
    score = (m_in - m_out) * dn
    k = min(int(k), score.numel())
    top = torch.topk(score, k).indices.tolist()
    return [Association(int(j), float(score[j]), float(m_in[j]), float(m_out[j]), float(f_in[j]), float(f_out[j]))
            for j in top]


def _value_rows(lab: Sequence, min_count: int) -> dict[Any, list[int]]:
    """The rows of each label value with at least ``min_count`` rows, values in ``str`` order."""
    rows: dict[Any, list[int]] = {}
    for i, y in enumerate(lab):
        rows.setdefault(y, []).append(i)
    return {v: rows[v] for v in sorted(rows, key=str) if len(rows[v]) >= min_count}


def concept_pool(sae, acts, labels: str | Sequence, k: int = 16, hook: str | None = None, codes: Tensor | None = None,
                 min_count: int = 2) -> tuple[list[int], float]:
    """The atoms of a whole concept (e.g. *country*) and its typical amplitude, for ``TransferAtoms``.

    ``pool = union_v select_atoms(..., v, k)`` over the label values ``v`` with at least
    ``min_count`` activations; ``ref_mass = mean_i sum_{j in pool} delta_ij ||W_dec[j]||_2``, the
    raw-space amplitude the pool carries on a typical labelled activation.
    """
    x, lab = _x_and_labels(acts, labels, hook)
    c = encode_batched(sae, x) if codes is None else codes.float().cpu()
    values = list(_value_rows(lab, min_count))
    if len(values) < 2:
        raise ValueError(f"a concept pool needs >= 2 label values with >= {min_count} activations each, got {values}")
    pool = sorted({a.atom for v in values for a in select_atoms(sae, x, lab, v, k=k, codes=c)})
    norms = sae.W_dec.detach().float().norm(dim=-1).cpu()
    ref = float((c[:, pool] * norms[pool]).sum(1).mean())
    if not ref > 0:
        raise ValueError("the concept's atoms are never active on these activations; nothing to transfer")
    return pool, ref


def gate_atoms(sae, x_in: Tensor, x_out: Tensor, m: int = 64, q: float = 0.2, codes_in: Tensor | None = None,
               codes_out: Tensor | None = None) -> tuple[list[int], float]:
    """The units that tell activations ``x_out`` (where an edit should stay off, e.g. other relations'
    subjects) from ``x_in`` (the edited kind), and the amplitude at which ``GatedDirection`` closes.

    ``gate = top_m (mean_out delta_j - mean_in delta_j) ||W_dec[j]||``; ``tau`` is the ``q`` quantile
    of ``sum_{j in gate} delta_j ||W_dec[j]||`` over ``x_out``, so the gate is fully shut on a
    ``1 - q`` share of them (and open where the units are silent).
    """
    if x_in.shape[0] == 0 or x_out.shape[0] == 0:
        raise ValueError("gate_atoms needs activations of both kinds (x_in and x_out non-empty)")
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    c_in = encode_batched(sae, x_in) if codes_in is None else codes_in.float().cpu()
    c_out = encode_batched(sae, x_out) if codes_out is None else codes_out.float().cpu()
    norms = sae.W_dec.detach().float().norm(dim=-1).cpu()
    gate = ((c_out.mean(0) - c_in.mean(0)) * norms).topk(min(int(m), norms.numel())).indices
    tau = float((c_out[:, gate] * norms[gate]).sum(1).quantile(q))
    if not tau > 0:
        raise ValueError(f"the gate's units are silent on {1 - q:.0%} or more of x_out; raise q or m")
    return gate.tolist(), tau


def concept_subspace(sae, acts, labels: str | Sequence, pool: Sequence[int], hook: str | None = None,
                     codes: Tensor | None = None, min_count: int = 2, rtol: float = 1e-3) -> Tensor:
    """An orthonormal basis ``U`` ``[d_in, r]`` of a concept as the SAE's ``pool`` atoms write it.

    ``R_i = decode(delta_i|pool) - decode(0)`` is activation ``i``'s reconstruction from the pool's
    atoms alone; ``m_v = mean_{y_i = v} R_i - mean_i R_i`` for every label value ``v`` with at
    least ``min_count`` activations; ``U`` holds the right singular vectors of ``[m_v]`` whose
    singular value exceeds ``rtol`` times the largest (so ``r <= #values - 1``).

    The span of these class means is where the values of the concept differ in the SAE's
    reconstruction. ``TransferAtoms(..., error=U)`` removes the error term's part in it: the
    part of the source value the SAE did not encode, which a code edit would otherwise keep.
    """
    x, lab = _x_and_labels(acts, labels, hook)
    idx = torch.as_tensor(list(pool), dtype=torch.long)
    if idx.numel() == 0:
        raise ValueError("the pool is empty: give the concept's atoms (e.g. from concept_pool)")
    c = encode_batched(sae, x) if codes is None else codes.float().cpu()
    keep = torch.zeros_like(c)
    keep[:, idx] = c[:, idx]
    with torch.no_grad():
        zero = sae.decode(torch.zeros(1, c.shape[1], device=sae.device, dtype=sae.dtype)).float().cpu()
        R = torch.cat([sae.decode(keep[i:i + 4096].to(sae.device, sae.dtype)).float().cpu() - zero
                       for i in range(0, keep.shape[0], 4096)])
    means = [R[torch.tensor(ix)].mean(0) for ix in _value_rows(lab, min_count).values()]
    if len(means) < 2:
        raise ValueError(f"a concept subspace needs >= 2 label values with >= {min_count} activations each")
    M = torch.stack(means) - R.mean(0)
    _u, sv, vh = torch.linalg.svd(M, full_matrices=False)
    r = int((sv > rtol * sv[0]).sum()) if float(sv[0]) > 0 else 0
    if r == 0:
        raise ValueError("the pool's reconstruction does not differ between label values; no concept subspace")
    return vh[:r].T.contiguous()


def concept_direction(sae, assoc: Sequence[Association]) -> Tensor:
    """``sum_j (mean_in_j - mean_out_j) W_dec[j]`` over the selected atoms: the SAE's version of
    the difference of means, restricted to those atoms (raw space, ``[d]``)."""
    idx = torch.tensor([a.atom for a in assoc], dtype=torch.long)
    c = torch.tensor([a.mean_in - a.mean_out for a in assoc], dtype=torch.float32)
    with torch.no_grad():
        return (c @ sae.W_dec.detach().float().cpu()[idx]).float()


def diff_of_means(acts, labels: str | Sequence, value: Any, hook: str | None = None) -> Tensor:
    """``mean(x | y = value) - mean(x)``: the difference-of-means steering vector."""
    x, lab = _x_and_labels(acts, labels, hook)
    inside = torch.tensor([y == value for y in lab])
    if not bool(inside.any()):
        raise ValueError(f"no activation has label {value!r}")
    return (x[inside].mean(0) - x.mean(0)).float()


# =========================================================================== selection by effect
def atom_amplitudes(codes: Tensor, ceiling_q: float = 0.99) -> tuple[Tensor, Tensor]:
    """Per atom, ``(typical, ceiling)``: the median and the ``ceiling_q`` quantile of its non-zero
    codes (``codes`` ``[n, d_sae]``, e.g. ``encode_batched`` of training activations). Atoms
    never active get the median over active atoms of both (a neutral unit, flagged by nothing)."""
    if codes.dim() != 2 or codes.shape[0] == 0:
        raise ValueError(f"codes must be a non-empty [n, d_sae] table, got shape {tuple(codes.shape)}")
    if not 0 < ceiling_q <= 1:
        raise ValueError(f"ceiling_q must be in (0, 1], got {ceiling_q}")
    c = codes.float().abs().masked_fill(codes == 0, float("nan"))
    typical, ceiling = c.nanmedian(0).values, c.nanquantile(ceiling_q, dim=0)
    dead = torch.isnan(typical)
    if bool(dead.all()):
        raise ValueError("no atom is ever active in codes; encode real activations")
    typical[dead], ceiling[dead] = typical[~dead].median(), ceiling[~dead].median()
    return typical, torch.maximum(ceiling, typical)


def atom_values(typical: Tensor, atoms: Sequence[int], strength: float, ceiling: Tensor | None = None) -> Tensor:
    """``min(strength * a_j, ceiling_j)`` for the atoms: clamp values in units of each atom's
    typical on-support amplitude ``a_j``, capped in distribution when ``ceiling`` is given."""
    if not math.isfinite(float(strength)) or strength < 0:
        raise ValueError(f"strength must be a finite number >= 0 (in units of the typical amplitude), got {strength}")
    idx = torch.as_tensor(list(atoms), dtype=torch.long)
    v = strength * typical[idx]
    return v if ceiling is None else torch.minimum(v, ceiling[idx])


@dataclass
class EffectScore:
    """An atom's first-order effect on the target (see ``select_atoms_by_effect``)."""

    atom: int
    score: float
    amplitude: float


def select_atoms_by_effect(sae, grad: Tensor, typical: Tensor, k: int = 8) -> list[EffectScore]:
    """The ``k`` atoms whose addition at their typical amplitude raises the target most, best first:
    ``effect_j = a_j * <W_dec[j], g>`` with ``g`` from ``output_gradient`` (training prompts only)."""
    W = sae.W_dec.detach().float().cpu()
    if grad.shape != (W.shape[1],) or typical.shape != (W.shape[0],):
        raise ValueError(f"grad must be [{W.shape[1]}] and typical [{W.shape[0]}], got {tuple(grad.shape)} / {tuple(typical.shape)}")
    score = typical.float() * (W @ grad.float())
    top = torch.topk(score, min(int(k), score.numel())).indices.tolist()
    return [EffectScore(int(j), float(score[j]), float(typical[j])) for j in top]

