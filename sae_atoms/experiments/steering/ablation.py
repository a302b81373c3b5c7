"""The ablation check: do the units selected for a value carry it?

On held-out prompts, ablating (through the SAE, error term kept) the ``k`` units selected for the
subject's true value vs ``k`` random units: uniform over the SAE, and among the units active at
that prompt's subject token (the stronger control); the drop in log-probability of the correct
first token, and how often a correct answer turns wrong.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from sae_atoms.activations import extract
from sae_atoms.experiments.steering.config import SteerConfig
from sae_atoms.experiments.steering.prompts import Prompts, relation_rows, sample
from sae_atoms.experiments.steering.targets import Setup
from sae_atoms.steering import EditAtoms, Intervention, encode_batched, select_atoms


def ablation_check(setup: Setup, name: str, cfg: SteerConfig, rng: random.Random) -> dict:
    """The check for SAE ``name`` on up to ``n_ablation`` held-out prompts whose value is steerable
    (``Targets.steerable``), ``n_random`` random draws of each control."""
    label, sae, data = cfg.label, setup.saes[name], setup.data
    ok_vals = setup.tg.steerable(cfg.min_subjects)
    held = [r for r in relation_rows(setup.rows, cfg.relation, label) if r["split"] == "heldout"]
    rows = sample([r for r in held if r[label] in ok_vals], cfg.n_ablation, rng)
    if not rows:
        return {"error": f"no held-out prompts whose {label} has >= {cfg.min_subjects} training subjects"}
    P = Prompts(setup.model, rows, cfg.batch_size, setup.hook)
    sel_by_val = {v: [a.atom for a in select_atoms(sae, data.x, data.y, v, k=cfg.k, codes=data.codes[name])]
                  for v in sorted({r[label] for r in rows})}
    sel = torch.tensor([sel_by_val[r[label]] for r in rows], dtype=torch.long)  # [n, k]
    x_subj = P.subject_resid()  # the kept stream at the hook, else one extraction
    if x_subj is None:
        x_subj = extract(setup.model, rows, setup.hook, position="subject_last", batch_size=cfg.batch_size,
                         progress=False).x(setup.hook)
    active = encode_batched(sae, x_subj) != 0  # [n, d_sae]
    draws, n_active_other = _draws(sel, active, int(sae.cfg.d_sae), int(cfg.k), cfg.n_random, rng)
    tok = torch.tensor([setup.tg.first_tok[r[label]] for r in rows])
    drops, flips, clean_ok = _effects(P, sae, draws, tok, cfg)

    def mean(x: list[float]) -> float | None:
        return sum(x) / len(x) if x else None

    d = {kk: mean(v) for kk, v in drops.items()}
    return {"n_prompts": len(rows), "k": int(cfg.k), "n_random_draws": cfg.n_random, "span": cfg.span,
            "clean_accuracy": float(clean_ok.float().mean()),
            "mean_active_atoms_outside_selection": mean([float(x) for x in n_active_other]),
            "logprob_drop": d, "correct_to_wrong_rate": {kk: mean(v) for kk, v in flips.items()},
            "selected_beats_random": bool(d["selected"] > d["random"]),
            "selected_beats_random_active": bool(d["selected"] > d["random_active"])}


def _draws(sel: Tensor, active: Tensor, d_sae: int, k: int, n_random: int,
           rng: random.Random) -> tuple[dict[str, list[Tensor]], list[int]]:
    """The ablated unit tables ``[n, k]``: the selected ones, and ``n_random`` draws of random
    units (uniform; among the active ones, padded with inactive units where fewer than ``k``
    are active: ablating an inactive unit changes nothing). Also each row's count of active
    units outside the selection, per draw."""
    n = len(sel)
    n_active_other = []
    draws: dict[str, list[Tensor]] = {"selected": [sel], "random": [], "random_active": []}
    for _ in range(n_random):
        rnd, rnd_act = [], []
        for i in range(n):
            chosen = set(sel[i].tolist())
            rnd.append(rng.sample([j for j in range(d_sae) if j not in chosen], k))
            pool = [j for j in torch.nonzero(active[i]).flatten().tolist() if j not in chosen]
            n_active_other.append(len(pool))
            pick = rng.sample(pool, min(k, len(pool)))
            idle = [j for j in range(d_sae) if not active[i, j] and j not in chosen]
            rnd_act.append(pick + rng.sample(idle, k - len(pick)))
        draws["random"].append(torch.tensor(rnd, dtype=torch.long))
        draws["random_active"].append(torch.tensor(rnd_act, dtype=torch.long))
    return draws, n_active_other


def _effects(P: Prompts, sae, draws: dict[str, list[Tensor]], tok: Tensor,
             cfg: SteerConfig) -> tuple[dict[str, list[float]], dict[str, list[float]], Tensor]:
    """Per kind of draw, each prompt's drop in log p(correct first token) and whether a correct
    top-1 answer turned wrong; and the clean top-1 correctness."""
    ar = torch.arange(len(P))
    clean_lp = P.clean[ar, tok]
    clean_ok = P.clean.argmax(-1) == tok
    drops: dict[str, list[float]] = {}
    flips: dict[str, list[float]] = {}
    for kind, tables in draws.items():
        d_all, f_all = [], []
        for table in tables:
            def make(pos: list[int], brows: list[int], table=table) -> list[Intervention]:
                return [EditAtoms(sae, table[brows], 0.0, positions=pos, span=cfg.span, hook_name=P.hook)]

            lp = P.run(make)
            d_all += (clean_lp - lp[ar, tok]).tolist()
            f_all += (clean_ok & (lp.argmax(-1) != tok)).float().tolist()
        drops[kind], flips[kind] = d_all, f_all
    return drops, flips, clean_ok
