"""The compared steering methods: each a small class with a ``strength`` knob whose
``interventions`` edit one batch of prompts, and a registry of the builders that make them.

Adding a method: a ``Method`` subclass and a builder decorated with ``@register()`` (built once)
or ``@register(per_sae=True)`` (built for each SAE, after that SAE's earlier methods); the
search, the results and the plot pick it up by its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import Tensor

from sae_atoms.experiments.steering.config import SCALES, SteerConfig
from sae_atoms.experiments.steering.prompts import MakeInterventions, Prompts
from sae_atoms.experiments.steering.targets import Setup, TrainData
from sae_atoms.steering import AddDirection, EditAtoms, GatedEdit, Intervention, TransferAtoms
from sae_atoms.steering import (atom_values, concept_pool, concept_subspace, diff_of_means, encode_batched, gate_atoms,
                                select_atoms)


@dataclass(kw_only=True)
class Method:
    """A steering method at ``strength``; ``grid`` is where the validation sweep starts, ``unit``
    says what a strength of 1 means, ``info`` goes to the results, ``alternatives`` (e.g. the
    same method with another unit selection) are each swept on validation and the best is kept."""

    name: str
    unit: str
    grid: tuple[float, ...]
    info: dict = field(default_factory=dict)
    hook: str = ""
    span: str = "at"
    strength: float = 0.0
    alternatives: dict[str, "Method"] = field(default_factory=dict)

    def at(self, strength: float) -> "Method":
        return replace(self, strength=strength)

    def interventions(self, target: str, prompts: Prompts, pos: list[int], rows: list[int]) -> list[Intervention]:
        """The interventions toward ``target`` on the batch ``rows`` of ``prompts`` (subject positions ``pos``)."""
        raise NotImplementedError

    def batches(self, target: str, prompts: Prompts) -> MakeInterventions:
        """``interventions`` for ``Prompts.run``."""
        return lambda pos, rows: self.interventions(target, prompts, pos, rows)


@dataclass(kw_only=True)
class AddVector(Method):
    """``x += strength * vectors[target]`` at the hook (``AddDirection``)."""

    vectors: dict[str, Tensor]

    def interventions(self, target, prompts, pos, rows):
        return [AddDirection(self.hook, self.vectors[target], self.strength, positions=pos, span=self.span)]


@dataclass(kw_only=True)
class Gated(Method):
    """``inner`` at this strength, each of its interventions spent where the SAE's ``gate`` units are
    silent (``GatedEdit``)."""

    inner: Method
    sae: Any
    gate: list[int]
    tau: float

    def interventions(self, target, prompts, pos, rows):
        return [GatedEdit(iv, self.sae, self.gate, self.tau)
                for iv in self.inner.at(self.strength).interventions(target, prompts, pos, rows)]


@dataclass(kw_only=True)
class Clamp(Method):
    """The target's units clamped through the SAE (error term kept) to ``min(strength * scale_j,
    ceiling_j)`` (``atom_values``, ``EditAtoms``)."""

    sae: Any
    units: dict[str, list[int]]
    scales: dict[str, Tensor]
    ceiling: Tensor

    def interventions(self, target, prompts, pos, rows):
        vals = atom_values(self.scales[target], self.units[target], self.strength, self.ceiling)
        return [EditAtoms(self.sae, self.units[target], vals, positions=pos, span=self.span, hook_name=self.hook)]


@dataclass(kw_only=True)
class Swap(Clamp):
    """Ablate the ``k`` units of each prompt's source value (``prompts.sources``), then ``Clamp``
    (``swap_atoms`` as two edits, so a prompt's own unit list may vary)."""

    source_units: dict[str, list[int]]
    k: int

    def interventions(self, target, prompts, pos, rows):
        pad = (self.units[target] * self.k)[:self.k]  # a source with no units: ablate the target's, then clamp them anyway
        own = [self.source_units.get(y, pad)[:self.k] for y in prompts.sources]
        table = torch.tensor([u + pad[:self.k - len(u)] for u in own], dtype=torch.long)
        ablate = EditAtoms(self.sae, table[rows], 0.0, positions=pos, span=self.span, hook_name=self.hook)
        return [ablate, *super().interventions(target, prompts, pos, rows)]


@dataclass(kw_only=True)
class Transfer(Method):
    """The amplitude of whichever pool units are active moves onto the target's units
    (``TransferAtoms``); ``strength`` is the fraction of the transfer applied."""

    sae: Any
    pool: list[int]
    units: dict[str, list[int]]
    values: dict[str, Tensor]
    ref: float
    ceiling: Tensor
    error: str | Tensor

    def interventions(self, target, prompts, pos, rows):
        return [TransferAtoms(self.sae, self.pool, self.units[target], self.values[target], self.ref, self.ceiling,
                              positions=pos, span=self.span, hook_name=self.hook, error=self.error, fraction=self.strength)]


# --------------------------------------------------------------------------- the registry
Builder = Callable[..., list[Method]]
_BUILDERS: dict[bool, list[Builder]] = {False: [], True: []}


def register(per_sae: bool = False) -> Callable[[Builder], Builder]:
    """Add a builder: ``builder(setup, selected, cfg)`` or, ``per_sae``, ``builder(setup, selected, cfg, name)``."""
    def add(builder: Builder) -> Builder:
        _BUILDERS[per_sae].append(builder)
        return builder
    return add


def build_methods(setup: Setup, selected: dict, cfg: SteerConfig) -> list[Method]:
    """Every registered method of these SAEs (``selected``: ``targets.select_units``), in order."""
    out = [m for b in _BUILDERS[False] for m in b(setup, selected, cfg)]
    for name in setup.saes:
        out += [m for b in _BUILDERS[True] for m in b(setup, selected, cfg, name)]
    return out


def unit_scales(data: TrainData, typical: Tensor, name: str, targets: list[str], scale: str) -> dict[str, Tensor]:
    """Per target, the amplitude a strength of 1 sets each unit to (``SteerConfig.scale``)."""
    if scale == "typical":
        return {v: typical for v in targets}
    codes = data.codes[name]
    return {v: codes[torch.tensor([y == v for y in data.y])].mean(0).clamp(min=0) for v in targets}


def _scales(setup: Setup, cfg: SteerConfig, name: str) -> dict[str, Tensor]:
    return unit_scales(setup.data, setup.amps[name][0], name, setup.tg.targets, cfg.scale)


def _clamp_unit(cfg: SteerConfig) -> str:
    return SCALES[cfg.scale] + f", capped at the q{cfg.ceiling_q:g} quantile of its non-zero training codes"


def _units(selected: dict, name: str, how: str, targets: list[str]) -> dict[str, list[int]]:
    return {v: [u["atom"] for u in selected[name][v][how]] for v in targets}


# --------------------------------------------------------------------------- the methods
@register()
def vector_methods(setup: Setup, selected: dict, cfg: SteerConfig) -> list[Method]:
    """``diff_of_means``: ``mean(x | y = target) - mean(x)`` on training subjects; ``random_direction``:
    a Gaussian direction of the same norm (control)."""
    data, targets = setup.data, setup.tg.targets
    dom = {v: diff_of_means(data.x, data.y, v) for v in targets}
    g = torch.Generator().manual_seed(cfg.seed + 7)
    rnd = {v: (lambda r: r * (dom[v].norm() / r.norm()))(torch.randn(dom[v].shape[0], generator=g)) for v in targets}
    unit, common = "norm of the target's difference of means", {"grid": cfg.vector_strengths, "hook": setup.hook, "span": cfg.span}
    return [AddVector(name="diff_of_means", unit=unit, vectors=dom, info={"vector": "mean(x | y = target) - mean(x)"}, **common),
            AddVector(name="random_direction", unit=unit, vectors=rnd,
                      info={"vector": "Gaussian, rescaled to the difference of means"}, **common)]


@register(per_sae=True)
def clamp_methods(setup: Setup, selected: dict, cfg: SteerConfig, name: str) -> list[Method]:
    """The SAE's ``k`` units per target by ``cfg.selection`` (for atoms also the other selection,
    as ``atoms_by_<selection>``), clamped."""
    other = {"effect": "activation", "activation": "effect"}[cfg.selection]
    scales = _scales(setup, cfg, name)
    return [Clamp(name=name if how == cfg.selection else f"{name}_by_{how}", unit=_clamp_unit(cfg), grid=cfg.strengths,
                  info={"sae": name, "selection": how, "k": cfg.k, "intervention": "clamp through the SAE (error term kept)"},
                  hook=setup.hook, span=cfg.span, sae=setup.saes[name], units=_units(selected, name, how, setup.tg.targets),
                  scales=scales, ceiling=setup.amps[name][1])
            for how in ((cfg.selection, other) if name == "atoms" else (cfg.selection,))]


@register(per_sae=True)
def swap_methods(setup: Setup, selected: dict, cfg: SteerConfig, name: str) -> list[Method]:
    """``atoms_swap`` (knowledge editing): the source value is the subject's own; on unrelated
    prompts a value cycled over the targets. Atoms only."""
    if name != "atoms":
        return []
    data, sae = setup.data, setup.saes[name]
    present = set(data.y)
    src = {y: [a.atom for a in select_atoms(sae, data.x, data.y, y, k=cfg.k, codes=data.codes[name])]
           for y in sorted(present) if present != {y}}
    info = {"sae": name, "selection": cfg.selection, "k": cfg.k,
            "intervention": f"ablate the k activation atoms of the prompt's source {cfg.label} (the subject's own; "
                            "on unrelated prompts one cycled over the values), then clamp the target's atoms on"}
    return [Swap(name=f"{name}_swap", unit=_clamp_unit(cfg), grid=cfg.strengths, info=info, hook=setup.hook, span=cfg.span,
                 sae=sae, units=_units(selected, name, cfg.selection, setup.tg.targets), scales=_scales(setup, cfg, name),
                 ceiling=setup.amps[name][1], source_units=src, k=cfg.k)]


_ERROR_TERMS = {"keep": "error term kept", "drop": "error term dropped (the edited reconstruction replaces the activation)",
                "subspace": "error term without its part in the countries' subspace"}


@register(per_sae=True)
def transfer_methods(setup: Setup, selected: dict, cfg: SteerConfig, name: str) -> list[Method]:
    """``<name>_transfer``: per prompt, the amplitude of whichever country units are active moves
    onto the target's ``k`` units (no source label needed). The pool is every country's ``k``
    activation units (``concept_pool``); the target's units are selected by activation or by
    effect, whichever gives the better validation success.

    ``cfg.transfer_error`` says what becomes of the SAE's error term at the edited position:
    ``"subspace"`` removes its part in the span of the countries' mean pool reconstructions
    (``concept_subspace``): the part of the source country the SAE did not encode, which a kept
    error term would still carry; ``"keep"`` leaves it (SAELens's splice); ``"drop"`` replaces
    the activation by the edited reconstruction."""
    data, sae, targets = setup.data, setup.saes[name], setup.tg.targets
    pool, ref = concept_pool(sae, data.x, data.y, k=cfg.k, codes=data.codes[name])
    error = (concept_subspace(sae, data.x, data.y, pool, codes=data.codes[name])
             if cfg.transfer_error == "subspace" else cfg.transfer_error)
    scales = _scales(setup, cfg, name)
    unit = (f"the fraction of the transfer applied (x <- x + lam (x_transferred - x)); the target's units at "
            f"{cfg.transfer_strength:g} x {_clamp_unit(cfg)}")
    info = {"sae": name, "k": cfg.k, "pool_size": len(pool), "ref_mass": ref, "error_term": cfg.transfer_error,
            "subspace_rank": int(error.shape[1]) if isinstance(error, Tensor) else None,
            "transfer_strength": cfg.transfer_strength,
            "intervention": "ablate the active units of the country pool, set the target's units to "
                            "transfer_strength x (pool amplitude here / typical pool amplitude) x the unit scale, "
                            f"capped; {_ERROR_TERMS[cfg.transfer_error]}; a fraction lam of this edit applied (the swept strength)"}

    def by(how: str) -> Transfer:
        units = _units(selected, name, how, targets)
        return Transfer(name=f"{name}_transfer", unit=unit, grid=cfg.fractions, info=info, hook=setup.hook, span=cfg.span,
                        sae=sae, pool=pool, units=units, values={v: cfg.transfer_strength * scales[v][units[v]] for v in targets},
                        ref=ref, ceiling=setup.amps[name][1], error=error)

    choices = {how: by(how) for how in ("effect", "activation")}
    return [replace(choices["effect"], alternatives=choices)]


@register(per_sae=True)
def gated_methods(setup: Setup, selected: dict, cfg: SteerConfig, name: str) -> list[Method]:
    """``<name>_gated`` and ``<name>_transfer_gated``: the difference of means and this SAE's transfer,
    spent where the SAE's units of the other relations' subjects are silent (``gate_atoms`` on training
    subjects, ``GatedEdit``); none without other relations or with ``cfg.gated`` off. On a city the
    edit is the method's own; on a country named in another relation's prompt (where a country edit
    changes its continent or language) it is off, and that is where most of the difference of means'
    side effect on unrelated prompts arises. Each of ``cfg.gate_q`` (how loose the gate is) is an
    alternative, times the method's own alternatives; validation keeps one."""
    data = setup.data
    if not cfg.gated or not data.x_other.shape[0]:
        return []
    sae = setup.saes[name]
    codes_out = encode_batched(sae, data.x_other)
    gates = {q: gate_atoms(sae, data.x, data.x_other, cfg.gate_k, q, data.codes[name], codes_out) for q in cfg.gate_q}
    info = {"sae": name, "gate_k": cfg.gate_k,
            "gate": "clamp(1 - (amplitude of the gate units) / tau, 0, 1); the gate units: those of the other relations' "
                    "training subjects more than of this relation's"}

    def one(alt: Method, new_name: str, q: float) -> Gated:
        gate, tau = gates[q]
        return Gated(name=new_name, unit=f"{alt.unit} (times the gate)", grid=alt.grid, hook=alt.hook, span=alt.span,
                     info=alt.info | info | {"gate_q": q, "tau": tau,
                                             "intervention": f"{alt.info.get('intervention', alt.unit)}, times the gate"},
                     inner=replace(alt, alternatives={}), sae=sae, gate=gate, tau=tau)

    def gated(inner: Method, new_name: str) -> Gated:
        """``inner`` gated: one alternative per (its own alternative, looseness), named by both."""
        alts = {", ".join(filter(None, (how, f"gate_q {q:g}" if len(gates) > 1 else ""))): one(alt, new_name, q)
                for how, alt in (inner.alternatives or {"": inner}).items() for q in gates}
        first = next(iter(alts.values()))
        return first if len(alts) == 1 else replace(first, alternatives=alts)

    dom = vector_methods(setup, selected, cfg)[0]
    [transfer] = transfer_methods(setup, selected, cfg, name)
    return [gated(dom, f"{name}_gated"), gated(transfer, f"{name}_transfer_gated")]
