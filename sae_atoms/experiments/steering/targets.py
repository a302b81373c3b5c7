"""What the methods are built from: the inputs' hook, the training activations and codes, the
target values, and each SAE's units per target (selected on training prompts only)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from sae_atoms.activations import subject_token_positions
from sae_atoms.experiments.steering.config import SteerConfig
from sae_atoms.experiments.steering.prompts import Prompts, relation_rows, sample
from sae_atoms.models import check_hook_name, first_token_ids
from sae_atoms.steering import (
    diff_of_means,
    encode_batched,
    output_gradient,
    prompt_token_ids,
    select_atoms,
    select_atoms_by_effect,
)


def check_inputs(model, saes: dict[str, Any], acts, label: str) -> str:
    """The one hook the activations and every SAE sit at (checked against the model); the
    activation set must be at the subject's last token with the columns the experiment reads."""
    hook = acts.hook_names[0] if len(acts.hook_names) == 1 else None
    for name, sae in saes.items():
        sh = sae.cfg.metadata.hook_name
        if hook is None:
            hook = sh
        if sh != hook:
            raise ValueError(f"SAE {name!r} sits at {sh!r} but the activations are at {hook!r}; use one hook for all")
        if int(sae.cfg.d_in) != int(model.cfg.d_model) and hook.endswith(("resid_post", "resid_pre", "resid_mid")):
            raise ValueError(f"SAE {name!r} has d_in={sae.cfg.d_in} but the model's d_model is {model.cfg.d_model}")
    if hook is None:
        raise ValueError("cannot tell the hook: give an ActivationSet with one hook, or SAEs")
    check_hook_name(model, hook)
    for col in ("relation", "split", label, "subject"):
        if col not in acts.rows.column_names:
            raise ValueError(f"the activation set lacks column {col!r}; extract it from sae_atoms.data prompts")
    if acts.meta.get("position", "subject_last") != "subject_last":
        raise ValueError(f"the activations must be at the subject's last token, not {acts.meta.get('position')!r}")
    return hook


@dataclass
class TrainData:
    """The relation's training activations (selection, difference of means) and each SAE's codes;
    ``x_other``: the other relations' training subjects (the gated methods' gates; encoded only there)."""

    x: Tensor
    y: list
    subjects: list
    codes: dict[str, Tensor]
    x_other: Tensor


def training_data(acts, saes: dict[str, Any], relation: str, label: str, hook: str) -> TrainData:
    rel, split, lab = acts.labels("relation"), acts.labels("split"), acts.labels(label)
    rel_idx = [i for i, (r, s, y) in enumerate(zip(rel, split, lab)) if r == relation and s == "train" and y]
    if not rel_idx:
        raise ValueError(f"no training activations for relation {relation!r} with a {label!r} label")
    train = acts.select(indices=rel_idx)
    x_train, y_train = train.x(hook).float(), train.labels(label)
    x_other = acts.x(hook)[[i for i, (r, s) in enumerate(zip(rel, split)) if r != relation and s == "train"]].float()
    codes = {name: encode_batched(sae, x_train) for name, sae in saes.items()}
    return TrainData(x_train, y_train, train.labels("subject"), codes, x_other)


@dataclass
class Targets:
    """The target values and what was measured to choose them."""

    targets: list[str]
    first_tok: dict[str, int]     # value -> first token of " value"
    tok_count: dict[int, int]     # first token -> how many values start with it
    n_subj: dict[str, int]        # value -> training subjects with it
    acc: dict[str, float]         # candidate value -> clean accuracy on its training prompts

    def steerable(self, min_subjects: int) -> set[str]:
        """Values with >= ``min_subjects`` training subjects and a first token of their own."""
        return {v for v, n in self.n_subj.items()
                if n >= min_subjects and self.tok_count.get(self.first_tok.get(v, -1), 0) == 1}


def choose_targets(model, all_rows: list[dict], data: TrainData, cfg: SteerConfig, rng: random.Random) -> Targets:
    """Values with >= ``min_subjects`` training subjects and a unique first token; of those, the
    ``n_targets`` the model knows best (clean accuracy on up to 12 training prompts each)."""
    label = cfg.label
    values = sorted({r[label] for r in all_rows if r.get(label)})
    first_tok = dict(zip(values, first_token_ids(model, values)))
    tok_count: dict[int, int] = {}
    for v in values:
        tok_count[first_tok[v]] = tok_count.get(first_tok[v], 0) + 1
    n_subj: dict[str, int] = {}
    for _s, y in set(zip(data.subjects, data.y)):
        n_subj[y] = n_subj.get(y, 0) + 1
    cands = [v for v in sorted(n_subj, key=lambda v: (-n_subj[v], v))
             if n_subj[v] >= cfg.min_subjects and v in first_tok and tok_count[first_tok[v]] == 1]
    if not cands:
        raise ValueError(f"no {label} value has >= {cfg.min_subjects} training subjects and a unique first token; "
                         "use more prompts (e.g. more cities) or lower min_subjects")
    cands = cands[:max(2 * cfg.n_targets, cfg.n_targets)]
    rel_rows = relation_rows(all_rows, cfg.relation, label)
    probe = []  # known facts: clean accuracy on (up to 12) training prompts per candidate
    for v in cands:
        probe += sample([r for r in rel_rows if r["split"] == "train" and r[label] == v], 12, rng)
    P = Prompts(model, probe, cfg.batch_size)
    acc = {v: 0.0 for v in cands}
    for v in cands:
        m = torch.tensor([r[label] == v for r in probe])
        acc[v] = float((P.clean[m].argmax(-1) == first_tok[v]).float().mean()) if m.any() else 0.0
    targets = sorted(cands, key=lambda v: (-acc[v], -n_subj[v]))[:cfg.n_targets]
    return Targets(targets, first_tok, tok_count, n_subj, acc)


@dataclass
class Setup:
    """What every seed shares: the model, the SAEs and their hook, the relation's training data,
    the targets, each SAE's unit amplitudes (``atom_amplitudes``: typical, ceiling) and the rows."""

    model: Any
    saes: dict[str, Any]
    hook: str
    data: TrainData
    tg: Targets
    amps: dict[str, tuple[Tensor, Tensor]]
    rows: list[dict]


def select_units(setup: Setup, cfg: SteerConfig, rng: random.Random) -> dict[str, dict[str, dict]]:
    """Per SAE and target, the ``k`` units chosen by activation (``select_atoms``) and by effect
    (``output_gradient`` on ``n_select`` training prompts whose answer is another value, then
    ``select_atoms_by_effect``). Training prompts only: held-out entities never enter selection."""
    model, data, tg = setup.model, setup.data, setup.tg
    train_rows = [r for r in relation_rows(setup.rows, cfg.relation, cfg.label)
                  if r["split"] == "train" and r[cfg.label] in tg.first_tok]
    out: dict[str, dict[str, dict]] = {name: {} for name in setup.saes}
    for v in tg.targets:
        rows = sample([r for r in train_rows if r[cfg.label] != v], cfg.n_select, rng)
        prompts = [r["prompt"] for r in rows]
        pos = subject_token_positions(model, prompts, [r["subject_start"] for r in rows], [r["subject_end"] for r in rows])
        grad = output_gradient(model, setup.hook, prompt_token_ids(model, prompts), pos, tg.first_tok[v],
                               [tg.first_tok[r[cfg.label]] for r in rows], span=cfg.span, batch_size=cfg.batch_size)
        dom = diff_of_means(data.x, data.y, v)
        for name, sae in setup.saes.items():
            by_act = select_atoms(sae, data.x, data.y, v, k=cfg.k, codes=data.codes[name])
            by_eff = select_atoms_by_effect(sae, grad, setup.amps[name][0], k=cfg.k)
            W = sae.W_dec.detach().float().cpu()
            out[name][v] = {how: [asdict(u) | {"cos_with_diff_of_means": float(torch.nn.functional.cosine_similarity(
                W[u.atom], dom, dim=0))} for u in units] for how, units in (("activation", by_act), ("effect", by_eff))}
    return out
