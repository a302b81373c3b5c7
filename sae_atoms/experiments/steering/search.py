"""Choosing each method's strength at the matched side effect, and measuring it once on test.

Per seed and method: a validation sweep of strengths (``val_sweep``), the strength with the best
validation success within the KL budget (``choose_strength``), the test prompts used once at it
(``sweep_methods``); the seeds pooled (``aggregate``). Success: the target's first token is the
top-1 next token; also its rank (1 = top) and log-probability gain. Side effect:
``KL(p_clean || p_steered)`` of the next token on unrelated prompts under the same intervention.

The search runs as steps: each method's sweep is a generator that yields what it needs measured
next (``Ask``: KL or success, a method at a strength, a split) and gets the answers back; the
methods' steps run side by side (``together``), and each round's asks, every target's prompts
of every strength and method, are measured in stacked passes (``answer`` -> ``prompts.run_jobs``).
The decisions (extend, bisect, choose) are the same as one measurement at a time; only the
passes are shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Generator, Sequence

import torch
from torch import Tensor

from sae_atoms.experiments.steering.config import SteerConfig
from sae_atoms.experiments.steering.methods import Method
from sae_atoms.experiments.steering.prompts import RESUME_ROWS, Job, Prompts, run_jobs

STATS = ("success_rate", "mean_rank", "logprob_gain", "efficacy")


def kl(lp_clean: Tensor, lp: Tensor) -> Tensor:
    """``KL(p_clean || p) = sum_v p_clean(v) (log p_clean(v) - log p(v))`` per row (nats)."""
    return (lp_clean.exp() * (lp_clean - lp)).sum(-1).clamp(min=0)


def side_rows(lp_clean: Tensor, lp: Tensor) -> Tensor:
    """Per unrelated row ``[n, 2]``: ``kl`` and whether the clean top-1 token is still top-1 (the
    CounterFact-style neighbourhood score: the edit leaves other facts' answers alone)."""
    return torch.stack([kl(lp_clean, lp), (lp.argmax(-1) == lp_clean.argmax(-1)).float()], 1)


def target_rows(lp: Tensor, lp_clean: Tensor, tok: int, true_tok: Tensor | None = None) -> Tensor:
    """Per row ``[n, 3]``: the target token's rank (1 = top), its log-probability gain over clean,
    and whether it beats the row's true answer ``true_tok`` (CounterFact's efficacy: ``p(target) >
    p(true)``; without ``true_tok``, success)."""
    t = lp[:, tok]
    rank = ((lp > t.unsqueeze(1)).sum(-1) + 1).float()
    beats = (rank == 1).float() if true_tok is None else (t > lp.gather(1, true_tok.view(-1, 1))[:, 0]).float()
    return torch.stack([rank, t - lp_clean[:, tok], beats], 1)


def target_stats(lp: Tensor, lp_clean: Tensor, tok: int, true_tok: Tensor | None = None) -> dict[str, float]:
    """Success (the target token ``tok`` is top-1), its rank (1 = top), log-probability gain and efficacy."""
    return stats_of(target_rows(lp, lp_clean, tok, true_tok))


def stats_of(per_row: Tensor) -> dict[str, Any]:
    """``target_stats`` from ``target_rows``; ``hits``: each row's success (0 / 1), for paired comparisons."""
    rank, gain = per_row[:, 0], per_row[:, 1]
    return {"success_rate": float((rank == 1).float().mean()), "mean_rank": float(rank.mean()),
            "median_rank": float(rank.median()), "logprob_gain": float(gain.mean()), "efficacy": float(per_row[:, 2].mean()),
            "hits": (rank == 1).int().tolist()}


@dataclass
class Run:
    """What evaluating one method at one strength needs (``max_rows``: rows of one stacked pass)."""

    model: Any
    cfg: SteerConfig
    targets: list[str]
    first_tok: dict[str, int]
    ev: dict[str, dict[str, Prompts]]
    unrel_p: dict[str, Prompts]
    max_rows: int = RESUME_ROWS


@dataclass(frozen=True)
class Ask:
    """A measurement a sweep needs: ``what`` (``"kl"``: KL per unrelated prompt, every target's
    intervention in turn, concatenated; ``"side"``: the same rows' ``side_rows``; ``"success"``:
    success, rank, log-prob gain and efficacy per target and pooled) of ``m`` on ``split``."""

    what: str
    m: Method
    split: str


Steps = Generator[list[Ask], list, Any]


def answer(run: Run, asks: Sequence[Ask]) -> list:
    """Each ask's answer, every target's prompts of every ask measured in shared passes."""
    jobs, spans = [], []
    for a in asks:
        start = len(jobs)
        if a.what in ("kl", "side"):
            U = run.unrel_p[a.split]
            jobs += [Job(U, a.m.batches(v, U), lambda lp, rows, U=U: side_rows(U.clean[rows], lp)) for v in run.targets]
            spans.append((start, len(jobs), a.what))
        else:
            sets = [v for v in run.targets if len(run.ev[a.split][v])]
            jobs += [Job(E, a.m.batches(v, E), lambda lp, rows, E=E, t=run.first_tok[v]: target_rows(lp, E.clean[rows], t,
                                                                                                       true_tokens(run, E, rows)))
                     for v, E in ((v, run.ev[a.split][v]) for v in sets)]
            spans.append((start, len(jobs), sets))
    got = run_jobs(jobs, run.max_rows)
    out = []
    for i, j, sets in spans:
        if sets == "kl":
            out.append(torch.cat(got[i:j])[:, 0])
        elif sets == "side":
            out.append(torch.cat(got[i:j]))
        else:
            out.append(_pooled({v: stats_of(r) | {"n": len(r)} for v, r in zip(sets, got[i:j])}))
    return out


def true_tokens(run: Run, prompts: Prompts, rows: list[int]) -> Tensor | None:
    """The first token of each row's true answer (its source value; None when the rows have none)."""
    if not prompts.sources:
        return None
    return torch.tensor([run.first_tok[prompts.sources[i]] for i in rows], dtype=torch.long)


def _pooled(per_target: dict[str, dict]) -> dict:
    n = sum(p["n"] for p in per_target.values())
    agg = {k: sum(p[k] * p["n"] for p in per_target.values()) / n for k in STATS}
    return {**agg, "n_prompts": n, "per_target": per_target}


def together(steps: Sequence[Steps]) -> Steps:
    """Several step generators as one: each round yields all their asks at once and hands each
    its own answers back; returns their results in order."""
    out: list = [None] * len(steps)
    asks: dict[int, list[Ask]] = {}

    def advance(i: int, answers: list | None) -> None:
        try:
            asks[i] = steps[i].send(answers)
        except StopIteration as stop:
            out[i] = stop.value
            asks.pop(i, None)

    for i in range(len(steps)):
        advance(i, None)
    while asks:
        round_ = list(asks.items())
        answers = yield [a for _, mine in round_ for a in mine]
        k = 0
        for i, mine in round_:
            advance(i, answers[k:k + len(mine)])
            k += len(mine)
    return out


def run_steps(run: Run, steps: Steps) -> Any:
    """Drive ``steps`` to its result, answering each round's asks with ``answer``."""
    try:
        asks = next(steps)
        while True:
            asks = steps.send(answer(run, asks))
    except StopIteration as stop:
        return stop.value


def baseline(run: Run) -> dict:
    """Success and rank with no intervention, per split."""
    out = {}
    for split in ("val", "test"):
        ev = run.ev[split]
        st_ = [target_stats(ev[v].clean, ev[v].clean, run.first_tok[v], true_tokens(run, ev[v], list(range(len(ev[v])))))
               | {"n": len(ev[v])} for v in run.targets]
        n = sum(p["n"] for p in st_)
        out[split] = {k: sum(p[k] * p["n"] for p in st_) / n for k in ("success_rate", "mean_rank", "efficacy")} | {"kl_unrelated": 0.0}
    return out


def sweep_steps(run: Run, m: Method) -> Steps:
    """Validation KL at every strength of ``m.grid`` and validation success at each one within the
    KL budget; then strengths ``grid_growth`` times the last, at most ``grid_extend`` more, while
    the last is within budget and no more than one step past the best success so far. So the
    search stops where the budget binds or where success has peaked (a clamp capped in
    distribution saturates; a vector pushed far out of distribution breaks the model), never at
    the end of a fixed grid. Where the budget binds while success is still rising (the best
    in-budget strength ``lo`` is next to an over-budget ``hi``), ``n_bisect`` geometric
    bisections ``sqrt(lo hi)`` find the strongest strength within it, so no method is held to a
    coarse grid below the budget that the others may use. Steps (``Ask`` rounds): the grid's KL
    in one round, its in-budget successes in the next; then each grown or bisected strength's.
    Returns the sweep."""
    cfg = run.cfg
    sweep: list[dict] = []

    def measure(strengths: Sequence[float], **tag: bool) -> Steps:
        kls = yield [Ask("kl", m.at(s), "val") for s in strengths]
        points = [{"strength": s, "kl_unrelated": float(k.mean())} | tag for s, k in zip(strengths, kls)]
        ok = [p for p in points if p["kl_unrelated"] <= cfg.kl_budget]
        if ok:
            for p, r in zip(ok, (yield [Ask("success", m.at(p["strength"]), "val") for p in ok])):
                p.update({k: v for k, v in r.items() if k != "per_target"})
        sweep.extend(points)

    yield from measure(m.grid)
    for _ in range(cfg.grid_extend):
        last = max(sweep, key=lambda p: p["strength"])
        ok = [p for p in sweep if "success_rate" in p]
        if "success_rate" not in last:
            break
        best = max(ok, key=lambda p: (p["success_rate"], -p["strength"]))
        if sum(p["strength"] > best["strength"] for p in ok) >= 2:
            break
        yield from measure([last["strength"] * cfg.grid_growth], extended=True)
    for _ in range(cfg.n_bisect):
        ok = [p for p in sweep if "success_rate" in p]
        over = [p["strength"] for p in sweep if "success_rate" not in p]
        if not ok or not over:
            break
        best = max(ok, key=lambda p: (p["success_rate"], p["strength"]))
        hi = min((a for a in over if a > best["strength"]), default=None)
        if hi is None or any(best["strength"] < p["strength"] < hi for p in ok):
            break  # the budget does not bind next to the best strength
        yield from measure([math.sqrt(best["strength"] * hi)], bisected=True)
    return sweep


def val_sweep(run: Run, m: Method) -> list[dict]:
    """``sweep_steps`` of ``m`` alone, to its sweep."""
    return run_steps(run, sweep_steps(run, m))


def choose_strength(sweep: list[dict], budget: float) -> dict:
    """The validation point with the highest success rate among those with KL <= budget
    (ties: higher log-prob gain, then lower KL); if none is within budget, the weakest strength."""
    ok = [p for p in sweep if p["kl_unrelated"] <= budget]
    if not ok:
        return min(sweep, key=lambda p: p["strength"])
    return max(ok, key=point_rank)


def point_rank(p: dict) -> tuple[float, float, float]:
    """How validation points are ordered: success, then log-prob gain, then less KL."""
    return p["success_rate"], p["logprob_gain"], -p["kl_unrelated"]


def _pick_alternative(run: Run, m: Method) -> Steps:
    """Each of ``m.alternatives`` swept on validation (side by side); the one with the best
    validation success, its sweep and what was chosen."""
    hows = list(m.alternatives)
    sweeps = dict(zip(hows, (yield from together([sweep_steps(run, m.alternatives[h]) for h in hows]))))
    best_of = {how: max([p["success_rate"] for p in sw if "success_rate" in p] or [-1.0]) for how, sw in sweeps.items()}
    how = max(sweeps, key=lambda h: best_of[h])
    chosen = {"selection": how, "val_success_by_choice": best_of,
              "other_sweeps": {h: sw for h, sw in sweeps.items() if h != how}}
    return replace(m.alternatives[how], alternatives={}), sweeps[how], chosen


def method_steps(run: Run, m: Method) -> Steps:
    """One method: the validation sweep, the strength with the best validation success within the
    KL budget (the weakest if none is within it), the test result at it (test prompts used once).
    Returns the method as chosen (its alternative, at that strength), its result, and the test
    answers made at that strength (``{strength: {"side", "test"}}``, for ``equal_kl_steps``)."""
    cfg, chosen = run.cfg, {}
    if m.alternatives:
        m, sweep, chosen = yield from _pick_alternative(run, m)
    else:
        sweep = yield from sweep_steps(run, m)
    cand = [p for p in sweep if "success_rate" in p]
    if not cand:
        weakest = min(sweep, key=lambda p: p["strength"])
        r, = yield [Ask("success", m.at(weakest["strength"]), "val")]
        weakest.update({k: v for k, v in r.items() if k != "per_target"})
        cand = [weakest]
    best = choose_strength(cand, cfg.kl_budget)
    m = m.at(best["strength"])
    side, test = yield [Ask("side", m, "test"), Ask("success", m, "test")]
    measured = {best["strength"]: {"side": side, "test": test}}  # for the equal-KL reading, not measured again
    kl_test = side[:, 0]
    return m, {"strength": best["strength"], "strength_unit": m.unit, **m.info, **chosen,
               "test": test | {"kl_unrelated": float(kl_test.mean()), "kl_unrelated_median": float(kl_test.median())},
               "within_budget": best["kl_unrelated"] <= cfg.kl_budget,
               "val_at_strength": {k: best[k] for k in (*STATS, "kl_unrelated")}, "sweep": sweep}, measured
