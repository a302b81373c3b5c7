"""Interventions at one hook of a TransformerLens model: add a direction, edit atoms through an SAE.

Every intervention is an ``Intervention``: it names the hook it edits (``hook_name``) and gives
the edit (``hook_fn(act) -> act``). ``fwd_hooks(model, *interventions)`` turns them into
``fwd_hooks`` for ``model.run_with_hooks``; ``steering(model, *interventions)`` applies them in
a ``with`` block. Formulas: the package docstring (``sae_atoms.steering``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence, Union, runtime_checkable

import torch
from torch import Tensor

from sae_atoms.models import check_hook_name

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


# =========================================================================== the protocol
@runtime_checkable
class Intervention(Protocol):
    """What every intervention has: the hook it edits and the edit, ``hook_fn(act) -> act``
    (``act`` shaped ``[batch, pos, d]``). ``fwd_hooks`` and ``steering`` need nothing else; the
    steering experiment also calls ``hook_fn`` directly on a cached activation."""

    hook_name: str

    def hook_fn(self, act: Tensor, hook: Any = None) -> Tensor: ...


class _Steers:
    """``fwd_hooks(model)`` and ``on(model)`` for an intervention (a mixin of the classes below)."""

    def fwd_hooks(self, model) -> list[tuple[str, HookFn]]:
        return fwd_hooks(model, self)

    def on(self, model):
        """Context manager: the model with this intervention; removed on exit (also on error)."""
        return steering(model, self)


# =========================================================================== interventions
@dataclass
class AddDirection(_Steers):
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


@dataclass
class GatedEdit(_Steers):
    """Any intervention's change, spent where the SAE's ``gate`` units are silent::

        x <- x + g(x) (edit(x) - x),   g(x) = clamp(1 - sum_{j in gate} delta_j ||W_dec[j]|| / tau, 0, 1),

    ``delta = sae.encode(x)`` of the activation before the edit, at each position the edit changes.
    ``gate`` are units that fire where the edit should stay off (e.g. ``gate_atoms``: the units of
    other relations' subjects) and ``tau`` their amplitude at which it is fully off; where they are
    silent the edit is ``edit``'s own. An edit made for one kind of input (a vector, a transfer of
    a concept's atoms) changes every position it is given; the gate spends it only where the code
    says the position is of that kind.
    """

    edit: Intervention
    sae: Any
    gate: Sequence[int] | Tensor
    tau: float

    def __post_init__(self) -> None:
        if not isinstance(self.edit, Intervention):
            raise TypeError(f"edit must be an intervention (hook_name and hook_fn), got {type(self.edit).__name__}")
        self.gate = torch.as_tensor(list(self.gate), dtype=torch.long).reshape(-1)
        d_sae = int(self.sae.cfg.d_sae)
        if self.gate.numel() == 0 or bool(((self.gate < 0) | (self.gate >= d_sae)).any()):
            raise IndexError(f"gate unit indices empty or out of range for an SAE with d_sae={d_sae}")
        if not (math.isfinite(float(self.tau)) and self.tau > 0):
            raise ValueError(f"tau must be finite and > 0, got {self.tau}")
        self.norms = self.sae.W_dec.detach().float().norm(dim=-1)[self.gate.to(self.sae.W_dec.device)].cpu()

    @property
    def hook_name(self) -> str:
        return str(self.edit.hook_name)

    def openness(self, x: Tensor) -> Tensor:
        """``g`` per row of ``x`` ``[m, d_in]``, shaped ``[m, 1]``."""
        with torch.no_grad():
            c = self.sae.encode(x.to(self.sae.dtype)).float()
        mass = (c[:, self.gate.to(c.device)] * self.norms.to(c.device)).sum(1, keepdim=True)
        return (1 - mass / float(self.tau)).clamp(0, 1)

    def hook_fn(self, act: Tensor, hook: Any = None) -> Tensor:
        out = self.edit.hook_fn(act, hook)
        moved = (out != act).any(-1)  # [batch, seq]: the positions the edit changed
        if not bool(moved.any()):
            return out
        res = act.clone()
        change = out[moved].float() - act[moved].float()
        res[moved] = (act[moved].float() + self.openness(act[moved]) * change).to(act.dtype)
        return res


class GatedDirection(GatedEdit):
    """``AddDirection`` spent where the SAE's ``gate`` units are silent (``GatedEdit``)::

        x <- x + alpha * clamp(1 - sum_{j in gate} delta_j ||W_dec[j]|| / tau, 0, 1) * direction
    """

    def __init__(self, hook_name: str, direction: Tensor, sae: Any, gate: Sequence[int] | Tensor, tau: float,
                 alpha: float = 1.0, positions: Positions = None, span: str = "at") -> None:
        super().__init__(AddDirection(hook_name, direction, alpha, positions, span), sae, gate, tau)


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


class _CodeEdit(_Steers):
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


def swap_atoms(sae, source: Sequence[int], target: Sequence[int], values: float | Sequence[float] | Tensor,
               positions: Positions = None, span: str = "at", hook_name: str | None = None) -> EditAtoms:
    """Knowledge editing through the SAE: ablate the ``source`` concept's atoms and clamp the
    ``target``'s atoms to ``values`` (error term kept; see ``EditAtoms``). Atoms in both lists are
    clamped, not ablated."""
    tgt = [int(a) for a in target]
    src = [int(a) for a in source if int(a) not in set(tgt)]
    v = torch.as_tensor(values, dtype=torch.float32).reshape(-1).expand(len(tgt)) if tgt else torch.zeros(0)
    return EditAtoms(sae, tgt + src, torch.cat([v, torch.zeros(len(src))]), positions, span, hook_name)


# =========================================================================== applying interventions

def fwd_hooks(model, *interventions: Intervention) -> list[tuple[str, HookFn]]:
    """``fwd_hooks`` for ``model.run_with_hooks`` applying the interventions in order."""
    hooks: list[tuple[str, HookFn]] = []
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise TypeError(f"{type(iv).__name__} is not an intervention (it needs hook_name and hook_fn, "
                            "like AddDirection / EditAtoms / TransferAtoms)")
        hooks.append((_resolve_hook(model, str(iv.hook_name)), iv.hook_fn))
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
