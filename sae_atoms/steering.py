"""Causal steering with atoms: add, clamp and ablate units of an SAE inside TransformerLens runs.

Atom Theory (arXiv 2509.20784) shows that atoms reconstruct activations and separate
concepts; whether they are *causal* is its first open question. This module provides the
interventions and the selection of atoms by meaning.

Interventions (on a ``HookedTransformer`` or ``HookedSAETransformer``, at one hook, for
chosen token positions; each is a small dataclass):

* ``AddDirection(hook, v, alpha)``: ``x <- x + alpha * v`` (``add_atoms`` builds ``v`` from
  decoder rows, ``v = sum_j c_j W_dec[j]``, the atoms' directions in raw space);
* ``EditAtoms(sae, atoms, values)``: clamp atom activations through the SAE, keeping its
  error term, so the edit changes only those atoms' contribution::

      x <- x + decode(delta') - decode(delta),   delta = encode(x),  delta'_j = value_j (j in atoms)

  ``ablate_atoms`` is the same with ``value = 0``. This is SAELens's error-term splice
  (``HookedSAETransformer.add_sae(sae, use_error_term=True)`` with an edit of
  ``hook_sae_acts_post``) written as a single hook that any ``HookedTransformer`` accepts;
* ``TransferAtoms(sae, pool, target, values, ref_mass)``: ablate whichever atoms of a concept
  pool (``concept_pool``: e.g. every country's atoms) are active and put their amplitude on the
  target's atoms; no source label needed. ``fraction`` applies part of the edit.

Every code edit takes ``error=`` (``splice_codes``): ``"keep"`` the error term ``x - decode(delta)``
(the default, as above), ``"drop"`` it, or a basis ``U`` whose span is removed from it
(``concept_subspace``: where the concept's values differ in the SAE's reconstruction). An SAE
with held-out R^2 ~ 0.5 leaves half the activation in its error term, and with it much of the
source concept, which a code edit alone cannot move.

Each intervention gives ``fwd_hooks(model)`` (for ``model.run_with_hooks``) and ``on(model)``
(a context manager); ``steering(model, *interventions)`` composes several. All hooks go
through TransformerLens's ``model.hooks`` context, so they are removed on exit, also after an
exception.

Positions: ``None``/``"all"`` (every position), an ``int`` (same position in every row,
negative counts from the end), or one index per row (a sequence or 1-D tensor, e.g. the
subject's last token). ``span="from"`` extends each position to the end of the sequence.

Selection by meaning (``select_atoms``): from labelled activations, the atoms most associated
with a label value, scored by their mean contribution to it in raw space::

    score_j = (mean_{i: y_i = v} delta_ij - mean_{i: y_i != v} delta_ij) * ||W_dec[j]||_2

Selection by effect (``output_gradient`` + ``select_atoms_by_effect``): score each atom by
the first-order change it makes to the target's log-probability when added at its typical
on-support amplitude ``a_j`` (attribution through the rest of the model to the unembedding;
attribution patching, Nanda 2023 / Syed, Rager & Conmy arXiv 2310.10348; the output-centric
selection of Arad, Mueller & Belinkov arXiv 2505.20063)::

    g = mean_i sum_{p in P_i} d [log p_i(target) - log p_i(answer_i)] / d x_{i,p}
    effect_j = a_j * <W_dec[j], g>

Strengths in the atoms' own units (``atom_amplitudes``, ``atom_values``): atom ``j`` is set to
``s * a_j`` (``a_j`` the median of its non-zero training codes), capped at its in-distribution
ceiling (a high quantile of those codes); ``swap_atoms`` ablates a source concept's atoms and
clamps the target's on (knowledge editing: "Tokyo is in the country of" -> France).

Baselines: ``diff_of_means`` (``mean(x | y = v) - mean(x)``, the strong baseline of
activation-steering work, e.g. Marks & Tegmark 2023, Rimsky et al. 2024) and
``concept_direction`` (the same restricted to selected atoms). ``next_token_logprobs``
measures a model's next token under interventions.

The experiment that compares atoms, features and the difference of means at matched side
effect is ``sae_atoms.experiments.steering`` (``sae-atoms steer``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, Union

import torch
from torch import Tensor

from sae_atoms.activations import as_matrix
from sae_atoms.models import check_hook_name, next_token_logits, pad_batch, pad_id, tokenize_prompts

Positions = Union[None, str, int, Sequence[int], Tensor]
HookFn = Callable[[Tensor, Any], Tensor]

_RUNTIME_NORMS = ("layer_norm", "constant_norm_rescale")


# =========================================================================== positions
def position_mask(batch: int, seq: int, positions: Positions = None, span: str = "at",
                  device: torch.device | str | None = None) -> Tensor:
    """Boolean mask ``[batch, seq]`` of the positions an intervention edits.

    Args:
        positions: ``None``/``"all"``: every position; an ``int``: that position in every row
            (negative counts from the end); a sequence / 1-D tensor of ``batch`` ints: one
            position per row.
        span: ``"at"``: only those positions; ``"from"``: those and every later position.
    """
    if span not in ("at", "from"):
        raise ValueError(f"span must be 'at' or 'from', got {span!r}")
    if positions is None or (isinstance(positions, str) and positions == "all"):
        return torch.ones(batch, seq, dtype=torch.bool, device=device)
    if isinstance(positions, str):
        raise ValueError(f"positions {positions!r} is not understood: use None/'all', an int, or one index per row")
    if isinstance(positions, int):
        pos = torch.full((batch,), positions, dtype=torch.long, device=device)
    else:
        pos = torch.as_tensor(positions, dtype=torch.long, device=device).reshape(-1)
        if pos.numel() != batch:
            raise ValueError(f"positions has {pos.numel()} entries but the batch has {batch} rows; "
                             "give one position per row (or an int / None for all rows)")
    pos = torch.where(pos < 0, pos + seq, pos)
    if bool(((pos < 0) | (pos >= seq)).any()):
        raise IndexError(f"positions {pos.tolist()} out of range for sequences of length {seq}")
    ar = torch.arange(seq, device=device).unsqueeze(0)
    return (ar >= pos.unsqueeze(1)) if span == "from" else (ar == pos.unsqueeze(1))


def _resolve_hook(model, hook_name: str) -> str:
    """The hook to edit: ``hook_name``, or ``hook_name.hook_sae_output`` where a
    ``HookedSAETransformer`` has an SAE attached there (its output is what flows on)."""
    if hook_name in model.hook_dict:
        return hook_name
    spliced = f"{hook_name}.hook_sae_output"
    if spliced in model.hook_dict:
        return spliced
    check_hook_name(model, hook_name)  # raises with close names
    return hook_name


def _check_resid(act: Tensor, hook_name: str) -> None:
    if act.dim() != 3:
        raise ValueError(f"steering edits activations shaped [batch, pos, d]; {hook_name} gives {tuple(act.shape)}. "
                         "Use a residual / MLP hook (e.g. blocks.L.hook_resid_post), not a per-head hook.")


# =========================================================================== interventions
@dataclass
class AddDirection:
    """``x <- x + alpha * direction`` at ``hook_name``, at the chosen positions.

    ``direction`` lives in the hook's raw activation space (``[d]``), e.g. an atom's decoder
    row, a sum of them (``add_atoms``) or a difference of means (``diff_of_means``).
    """

    hook_name: str
    direction: Tensor
    alpha: float = 1.0
    positions: Positions = None
    span: str = "at"

    def __post_init__(self) -> None:
        self.direction = torch.as_tensor(self.direction).detach()
        if self.direction.dim() != 1:
            raise ValueError(f"direction must be a vector [d], got shape {tuple(self.direction.shape)}")
        if not torch.isfinite(self.direction).all() or not math.isfinite(float(self.alpha)):
            raise ValueError("direction and alpha must be finite")
        if self.span not in ("at", "from"):
            raise ValueError(f"span must be 'at' or 'from', got {self.span!r}")

    def hook_fn(self, act: Tensor, hook: Any = None) -> Tensor:
        _check_resid(act, self.hook_name)
        if act.shape[-1] != self.direction.shape[0]:
            raise ValueError(f"direction has size {self.direction.shape[0]} but {self.hook_name} has d={act.shape[-1]}")
        if self.alpha == 0:
            return act
        mask = position_mask(act.shape[0], act.shape[1], self.positions, self.span, act.device)
        v = self.direction.to(act.device, act.dtype) * self.alpha
        return act + mask.unsqueeze(-1).to(act.dtype) * v

    def fwd_hooks(self, model) -> list[tuple[str, HookFn]]:
        return [(_resolve_hook(model, self.hook_name), self.hook_fn)]

    def on(self, model):
        """Context manager: the model with this intervention; removed on exit (also on error)."""
        return steering(model, self)


ErrorTerm = Union[str, Tensor]


def _check_error(error: ErrorTerm, d_in: int) -> ErrorTerm:
    """``error`` of a code edit: ``"keep"``, ``"drop"`` or an orthonormal basis ``[d_in, r]``."""
    if isinstance(error, str):
        if error not in ("keep", "drop"):
            raise ValueError(f"error must be 'keep', 'drop' or a basis tensor [d_in, r], got {error!r}")
        return error
    U = torch.as_tensor(error).detach().float()
    if U.dim() != 2 or U.shape[0] != d_in:
        raise ValueError(f"an error basis must be shaped [d_in={d_in}, r], got {tuple(U.shape)} (see concept_subspace)")
    if not bool(torch.isfinite(U).all()):
        raise ValueError("the error basis has NaN/Inf entries")
    return U


def splice_codes(sae, act: Tensor, edit: Callable[[Tensor, Tensor], Tensor], positions: Positions = None,
                 span: str = "at", hook_name: str = "the hook", error: ErrorTerm = "keep") -> Tensor:
    """``x <- decode(edit(delta)) + e'``, ``delta = sae.encode(x)``, ``e = x - decode(delta)``, at the chosen positions.

    What becomes of the reconstruction error ``e`` (``error``):

    * ``"keep"``: ``e' = e``, so ``x <- x + decode(delta') - decode(delta)``: only what ``edit``
      changes in the code changes in the activation (SAELens's error-term splice as one function);
    * ``"drop"``: ``e' = 0``: the SAE's reconstruction of the edited code replaces the activation;
    * a basis ``U`` ``[d, r]`` with orthonormal columns: ``e' = e - U U^T e``, the error term
      without its part in ``span(U)`` (e.g. ``concept_subspace``: the part of the concept that
      the SAE did not encode, which a code edit would otherwise leave in place).

    ``edit(codes [m, d_sae], rows [m])`` gets the codes of the edited positions and each one's batch row.
    """
    _check_resid(act, hook_name)
    if act.shape[-1] != int(sae.cfg.d_in):
        raise ValueError(f"the SAE has d_in={sae.cfg.d_in} but {hook_name} has d={act.shape[-1]}")
    error = _check_error(error, int(sae.cfg.d_in))
    mask = position_mask(act.shape[0], act.shape[1], positions, span, act.device)
    if not bool(mask.any()):
        return act
    with torch.no_grad():
        x = act[mask].to(sae.dtype)
        codes = sae.encode(x)  # [m, d_sae] only the edited positions
        recon = sae.decode(codes)
        delta = sae.decode(edit(codes, mask.nonzero()[:, 0])) - recon
        if isinstance(error, Tensor):  # e' = e - U U^T e
            e = x - recon
            U = error.to(e.device, e.dtype)
            delta = delta - (e @ U) @ U.T
        elif error == "drop":  # e' = 0
            delta = delta - (x - recon)
    out = act.clone()
    out[mask] = act[mask] + delta.to(act.dtype)
    return out


class _CodeEdit:
    """What the code edits (``EditAtoms``, ``TransferAtoms``) share: the hook (the SAE's own by
    default), the splice through ``splice_codes`` with the chosen ``error`` term, and the
    ``fwd_hooks`` / ``on`` of every intervention. A subclass defines ``edit(codes, rows)``."""

    sae: Any
    positions: Positions
    span: str
    hook_name: str | None
    error: ErrorTerm

    def _check_common(self) -> None:
        meta = getattr(getattr(self.sae, "cfg", None), "metadata", None)
        if self.hook_name is None:
            self.hook_name = getattr(meta, "hook_name", None)
            if not self.hook_name:
                raise ValueError("the SAE has no cfg.metadata.hook_name; pass hook_name= explicitly")
        norm = getattr(self.sae.cfg, "normalize_activations", "none")
        if norm in _RUNTIME_NORMS:
            raise ValueError(f"SAEs with run-time normalize_activations={norm!r} cannot be edited through decode twice; "
                             "fold the normalisation into the weights first or use AddDirection.")
        if self.span not in ("at", "from"):
            raise ValueError(f"span must be 'at' or 'from', got {self.span!r}")
        self.error = _check_error(self.error, int(self.sae.cfg.d_in))

    def edit(self, codes: Tensor, rows: Tensor) -> Tensor:
        raise NotImplementedError

    def hook_fn(self, act: Tensor, hook: Any = None) -> Tensor:
        return splice_codes(self.sae, act, self.edit, self.positions, self.span, str(self.hook_name), self.error)

    def fwd_hooks(self, model) -> list[tuple[str, HookFn]]:
        return [(_resolve_hook(model, str(self.hook_name)), self.hook_fn)]

    def on(self, model):
        """Context manager: the model with this intervention; removed on exit (also on error)."""
        return steering(model, self)


@dataclass
class EditAtoms(_CodeEdit):
    """Clamp atoms of ``sae`` to ``values`` through the SAE, keeping the error term.

    ``x <- x + decode(delta') - decode(delta)`` with ``delta = sae.encode(x)`` and
    ``delta'`` equal to ``delta`` except ``delta'_j = values_j`` for ``j`` in ``atoms``. The
    reconstruction error ``x - decode(delta)`` is left untouched, so only the edited atoms'
    contribution changes, and clamping an atom to its current value is a no-op.
    ``values=0`` ablates. ``values`` is a scalar or one value per atom. ``atoms`` is a list of
    indices, or a ``[batch, k]`` table giving each prompt of the batch its own atoms.
    ``error``: what becomes of the error term (``splice_codes``; default ``"keep"``).
    """

    sae: Any
    atoms: Sequence[int] | Tensor
    values: float | Sequence[float] | Tensor = 0.0
    positions: Positions = None
    span: str = "at"
    hook_name: str | None = None
    error: ErrorTerm = "keep"

    def __post_init__(self) -> None:
        self._check_common()
        a = torch.as_tensor(self.atoms, dtype=torch.long)
        if a.dim() > 2:
            raise ValueError(f"atoms must be a list of indices or a [batch, k] table (one row per prompt), got shape {tuple(a.shape)}")
        self.atoms = a.reshape(-1) if a.dim() < 2 else a
        d_sae = int(self.sae.cfg.d_sae)
        if self.atoms.numel() == 0:
            raise ValueError("atoms is empty: name at least one atom index")
        if bool(((self.atoms < 0) | (self.atoms >= d_sae)).any()):
            raise IndexError(f"atom indices {self.atoms.tolist()} out of range for an SAE with d_sae={d_sae}")
        k = self.atoms.shape[-1]
        v = torch.as_tensor(self.values, dtype=torch.float32).reshape(-1)
        if v.numel() not in (1, k):
            raise ValueError(f"values must be a scalar or one per atom ({k}), got {v.numel()}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"values must be finite, got {v.tolist()}")
        self.values = v.expand(k).clone()

    def edit(self, codes: Tensor, rows: Tensor) -> Tensor:
        """The edited codes: the atoms set to their values (``rows``: each code's batch row)."""
        edited = codes.clone()
        if self.atoms.dim() == 1:
            edited[:, self.atoms.to(codes.device)] = self.values.to(codes.device, codes.dtype)
        else:  # one atom list per prompt: the rows of the edited positions pick theirs
            if self.atoms.shape[0] <= int(rows.max()):
                raise ValueError(f"atoms has {self.atoms.shape[0]} rows (one per prompt) but the batch has more")
            idx = self.atoms.to(codes.device)[rows]
            edited.scatter_(1, idx, self.values.to(codes.device, codes.dtype).expand(idx.shape).contiguous())
        return edited

    def hook_fn(self, act: Tensor, hook: Any = None) -> Tensor:
        if self.atoms.dim() == 2 and self.atoms.shape[0] != act.shape[0]:
            raise ValueError(f"atoms has {self.atoms.shape[0]} rows (one per prompt) but the batch has {act.shape[0]}")
        return super().hook_fn(act, hook)


@dataclass
class TransferAtoms(_CodeEdit):
    """Move a concept's amplitude from whichever source atoms are active onto the target's atoms.

    At each edited position, with ``delta = sae.encode(x)``, the source pool ``C`` (e.g. the
    atoms of every country) less the target's atoms ``T``::

        g = sum_{j in C - T} delta_j ||W_dec[j]|| / ref_mass      (the concept's amplitude here)
        delta'_j = 0  (j in C - T),   delta'_j = max(delta_j, min(g * values_j, ceiling_j))  (j in T)

    spliced into the activation (``splice_codes``, ``error`` below). ``ref_mass`` is the source amplitude of a
    typical training subject, so ``g ~ 1`` where the concept is present as usual and ``g ~ 0``
    where it is absent: the edit is as large as the concept it replaces, and it leaves positions
    without the concept alone. The source needs no label: the code says which atoms are active.

    ``error`` (``splice_codes``): ``"keep"`` leaves the error term, which still carries what the
    SAE did not encode of the source concept; ``concept_subspace(...)`` removes that part;
    ``"drop"`` replaces the activation by the edited reconstruction.

    ``fraction`` ``lam`` moves the activation part of the way: ``x <- x + lam (x_transferred - x)``
    (``lam = 1`` the full transfer; ``0`` nothing; ``> 1`` past it). In code terms the pool keeps
    ``1 - lam`` of its amplitude and the target's atoms go ``lam`` of the way to their new values,
    so ``lam`` trades the edit's effect against its side effects at a fixed target amplitude.
    """

    sae: Any
    pool: Sequence[int] | Tensor
    target: Sequence[int] | Tensor
    values: Sequence[float] | Tensor
    ref_mass: float
    ceiling: Tensor | None = None
    positions: Positions = None
    span: str = "at"
    hook_name: str | None = None
    error: ErrorTerm = "keep"
    fraction: float = 1.0

    def __post_init__(self) -> None:
        self._check_common()
        if not (math.isfinite(float(self.fraction)) and self.fraction >= 0):
            raise ValueError(f"fraction must be finite and >= 0 (1 = the full transfer), got {self.fraction}")
        d_sae = int(self.sae.cfg.d_sae)
        self.target = torch.as_tensor(list(self.target), dtype=torch.long).reshape(-1)
        tgt = set(self.target.tolist())
        self.pool = torch.as_tensor([int(a) for a in self.pool if int(a) not in tgt], dtype=torch.long)
        for name, idx in (("target", self.target), ("pool", self.pool)):
            if bool(((idx < 0) | (idx >= d_sae)).any()):
                raise IndexError(f"{name} atom indices out of range for an SAE with d_sae={d_sae}")
        if self.target.numel() == 0:
            raise ValueError("target is empty: name at least one atom index")
        self.values = torch.as_tensor(self.values, dtype=torch.float32).reshape(-1).expand(self.target.numel()).clone()
        if not (math.isfinite(float(self.ref_mass)) and self.ref_mass > 0):
            raise ValueError(f"ref_mass must be finite and > 0, got {self.ref_mass}")
        self.norms = self.sae.W_dec.detach().float().norm(dim=-1)[self.pool.to(self.sae.W_dec.device)].cpu()

    def edit(self, codes: Tensor, rows: Tensor) -> Tensor:
        dev, dt = codes.device, codes.dtype
        pool, tgt = self.pool.to(dev), self.target.to(dev)
        g = (codes[:, pool].float() * self.norms.to(dev)).sum(1, keepdim=True) / float(self.ref_mass)
        v = g * self.values.to(dev)
        if self.ceiling is not None:
            v = torch.minimum(v, self.ceiling.to(dev).float()[self.target.to(dev)])
        out = codes.clone()
        out[:, pool] = 0
        out[:, tgt] = torch.maximum(codes[:, tgt], v.to(dt))
        return out

    def hook_fn(self, act: Tensor, hook: Any = None) -> Tensor:
        out = super().hook_fn(act, hook)
        return out if self.fraction == 1 else act + float(self.fraction) * (out - act)


def add_atoms(sae, atoms: Sequence[int] | int, alpha: float = 1.0, coeffs: Sequence[float] | Tensor | None = None,
              positions: Positions = None, span: str = "at", hook_name: str | None = None) -> AddDirection:
    """``x <- x + alpha * sum_j c_j W_dec[j]``: add atoms' decoder directions (raw space).

    ``coeffs`` default to 1 per atom (``alpha * atom`` for a single atom).
    """
    idx = torch.as_tensor([atoms] if isinstance(atoms, int) else list(atoms), dtype=torch.long)
    d_sae = int(sae.cfg.d_sae)
    if idx.numel() == 0 or bool(((idx < 0) | (idx >= d_sae)).any()):
        raise IndexError(f"atom indices {idx.tolist()} empty or out of range for d_sae={d_sae}")
    c = torch.ones(idx.numel()) if coeffs is None else torch.as_tensor(coeffs, dtype=torch.float32).reshape(-1)
    if c.numel() != idx.numel():
        raise ValueError(f"coeffs has {c.numel()} entries for {idx.numel()} atoms")
    with torch.no_grad():
        v = (c.to(sae.W_dec.device, sae.W_dec.dtype) @ sae.W_dec[idx.to(sae.W_dec.device)]).float().cpu()
    hook = hook_name or sae.cfg.metadata.hook_name
    if not hook:
        raise ValueError("the SAE has no cfg.metadata.hook_name; pass hook_name= explicitly")
    return AddDirection(hook, v, alpha, positions, span)


def clamp_atoms(sae, atoms: Sequence[int] | int, values: float | Sequence[float] | Tensor,
                positions: Positions = None, span: str = "at", hook_name: str | None = None) -> EditAtoms:
    """Clamp atoms to ``values`` through the SAE with its error term (see ``EditAtoms``)."""
    return EditAtoms(sae, [atoms] if isinstance(atoms, int) else atoms, values, positions, span, hook_name)


def ablate_atoms(sae, atoms: Sequence[int] | int, positions: Positions = None, span: str = "at",
                 hook_name: str | None = None) -> EditAtoms:
    """Set atoms' activations to 0 through the SAE with its error term (see ``EditAtoms``)."""
    return EditAtoms(sae, [atoms] if isinstance(atoms, int) else atoms, 0.0, positions, span, hook_name)


Intervention = Union[AddDirection, EditAtoms, TransferAtoms]


def fwd_hooks(model, *interventions: Intervention) -> list[tuple[str, HookFn]]:
    """``fwd_hooks`` for ``model.run_with_hooks`` applying the interventions in order."""
    hooks: list[tuple[str, HookFn]] = []
    for iv in interventions:
        if not hasattr(iv, "fwd_hooks"):
            raise TypeError(f"{type(iv).__name__} is not an intervention (AddDirection / EditAtoms)")
        hooks.extend(iv.fwd_hooks(model))
    return hooks


@contextmanager
def steering(model, *interventions: Intervention) -> Iterator[Any]:
    """Context manager applying the interventions (composable, nestable).

    Built on TransformerLens's ``model.hooks``: the hooks added here are removed on exit,
    also when the body raises.
    """
    hooks = fwd_hooks(model, *interventions)
    with model.hooks(fwd_hooks=hooks) as m:
        yield m


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


def _pad_rows(model, ids: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    pad = 0 if getattr(model, "tokenizer", None) is None else pad_id(model)
    return pad_batch([list(x) for x in ids], pad)


def output_gradient(model, hook_name: str, ids: Sequence[Sequence[int]], positions: Sequence[int],
                    target: int, answers: Sequence[int] | None = None, span: str = "from",
                    batch_size: int = 16) -> Tensor:
    """``g = mean_i sum_{p in P_i} d [log p_i(target) - log p_i(answer_i)] / d x_{i,p}`` at ``hook_name``.

    ``P_i``: the row's position ``positions[i]`` (``span="at"``) or it and every later one
    (``"from"``); ``answers`` (one token per row, optional) make it the gradient of the margin
    over each prompt's own answer, the quantity top-1 steering must flip. Right-padded batches;
    only the last real position of each row is read. Returns ``[d]`` (float32, CPU).
    """
    if len(ids) == 0 or len(ids) != len(positions) or (answers is not None and len(answers) != len(ids)):
        raise ValueError(f"need one position (and answer) per prompt: {len(ids)} prompts, {len(positions)} positions")
    hook = _resolve_hook(model, hook_name)
    g = None
    for k in range(0, len(ids), batch_size):
        rows = list(range(k, min(k + batch_size, len(ids))))
        toks, mask = _pad_rows(model, [ids[i] for i in rows])
        dev = next(model.parameters()).device
        store: dict[str, Tensor] = {}

        def grab(act: Tensor, hook: Any = None) -> Tensor:
            store["x"] = act.detach().requires_grad_(True)
            return store["x"]

        with torch.enable_grad():
            logits = model.run_with_hooks(toks.to(dev), attention_mask=mask.to(dev), fwd_hooks=[(hook, grab)])
            ar, last = torch.arange(len(rows)), torch.tensor([len(ids[i]) - 1 for i in rows])
            lp = logits[ar, last].float().log_softmax(-1)
            obj = lp[:, int(target)].sum()
            if answers is not None:
                obj = obj - lp[ar, torch.tensor([int(answers[i]) for i in rows])].sum()
            grad, = torch.autograd.grad(obj, store["x"])
        pm = position_mask(len(rows), grad.shape[1], [int(positions[i]) for i in rows], span, grad.device)
        part = (grad * pm.unsqueeze(-1).to(grad.dtype)).sum((0, 1)).float().cpu()
        g = part if g is None else g + part
    return g / len(ids)


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


def swap_atoms(sae, source: Sequence[int], target: Sequence[int], values: float | Sequence[float] | Tensor,
               positions: Positions = None, span: str = "at", hook_name: str | None = None) -> EditAtoms:
    """Knowledge editing through the SAE: ablate the ``source`` concept's atoms and clamp the
    ``target``'s atoms to ``values`` (error term kept; see ``EditAtoms``). Atoms in both lists are
    clamped, not ablated."""
    tgt = [int(a) for a in target]
    src = [int(a) for a in source if int(a) not in set(tgt)]
    v = torch.as_tensor(values, dtype=torch.float32).reshape(-1).expand(len(tgt)) if tgt else torch.zeros(0)
    return EditAtoms(sae, tgt + src, torch.cat([v, torch.zeros(len(src))]), positions, span, hook_name)


# =========================================================================== next-token log-probabilities
def prompt_token_ids(model, prompts: Sequence[str]) -> list[list[int]]:
    """The model's token ids of each prompt (BOS prepended when the model does)."""
    return tokenize_prompts(model, list(prompts))[0]


@torch.no_grad()
def next_token_logprobs(model, ids: Sequence[Sequence[int]], positions: Sequence[int],
                        make_interventions: Callable[[list[int], list[int]], Sequence[Intervention]] | None = None,
                        batch_size: int = 32) -> Tensor:
    """Log-probabilities ``[n, vocab]`` of the next token after each prompt, under interventions.

    ``make_interventions(batch_positions, batch_rows)`` builds the interventions of one batch:
    ``batch_positions`` are the rows' ``positions`` (e.g. the subject's last token) and
    ``batch_rows`` their indices into ``ids``, in batch row order; ``None`` is the clean run.
    Right-padded batches (causal attention: padding never reaches real tokens); only the last
    real position is unembedded.
    """
    def make_hooks(rows: list[int]) -> list:
        return fwd_hooks(model, *make_interventions([int(positions[i]) for i in rows], rows))

    return next_token_logits(model, [list(x) for x in ids], make_hooks if make_interventions else None,
                             batch_size).log_softmax(-1)
