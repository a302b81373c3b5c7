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
import random
from dataclasses import asdict, dataclass, replace
from typing import Any, Generator, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sae_atoms.experiments.steering.config import SteerConfig
from sae_atoms.experiments.steering.methods import Method, build_methods
from sae_atoms.experiments.steering.prompts import RESUME_ROWS, Job, Prompts, eval_rows, prompt_sets, run_jobs
from sae_atoms.experiments.steering.targets import Setup, select_units

STATS = ("success_rate", "mean_rank", "logprob_gain")


def kl(lp_clean: Tensor, lp: Tensor) -> Tensor:
    """``KL(p_clean || p) = sum_v p_clean(v) (log p_clean(v) - log p(v))`` per row (nats)."""
    return (lp_clean.exp() * (lp_clean - lp)).sum(-1).clamp(min=0)


def target_rows(lp: Tensor, lp_clean: Tensor, tok: int) -> Tensor:
    """Per row ``[n, 2]``: the target token's rank (1 = top) and its log-probability gain over clean."""
    t = lp[:, tok]
    return torch.stack([((lp > t.unsqueeze(1)).sum(-1) + 1).float(), t - lp_clean[:, tok]], 1)


def target_stats(lp: Tensor, lp_clean: Tensor, tok: int) -> dict[str, float]:
    """Success (the target token ``tok`` is top-1), its rank (1 = top) and log-probability gain."""
    return stats_of(target_rows(lp, lp_clean, tok))


def stats_of(per_row: Tensor) -> dict[str, float]:
    """``target_stats`` from ``target_rows``."""
    rank, gain = per_row[:, 0], per_row[:, 1]
    return {"success_rate": float((rank == 1).float().mean()), "mean_rank": float(rank.mean()),
            "median_rank": float(rank.median()), "logprob_gain": float(gain.mean())}


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
    intervention in turn, concatenated; ``"success"``: success, rank and log-prob gain per target
    and pooled) of ``m`` on ``split``."""

    what: str
    m: Method
    split: str


Steps = Generator[list[Ask], list, Any]


def answer(run: Run, asks: Sequence[Ask]) -> list:
    """Each ask's answer, every target's prompts of every ask measured in shared passes."""
    jobs, spans = [], []
    for a in asks:
        start = len(jobs)
        if a.what == "kl":
            U = run.unrel_p[a.split]
            jobs += [Job(U, a.m.batches(v, U), lambda lp, rows, U=U: kl(U.clean[rows], lp)) for v in run.targets]
            spans.append((start, len(jobs), None))
        else:
            sets = [v for v in run.targets if len(run.ev[a.split][v])]
            jobs += [Job(E, a.m.batches(v, E), lambda lp, rows, E=E, t=run.first_tok[v]: target_rows(lp, E.clean[rows], t))
                     for v, E in ((v, run.ev[a.split][v]) for v in sets)]
            spans.append((start, len(jobs), sets))
    got = run_jobs(jobs, run.max_rows)
    return [torch.cat(got[i:j]) if sets is None else _pooled({v: stats_of(r) | {"n": len(r)} for v, r in zip(sets, got[i:j])})
            for i, j, sets in spans]


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
        st_ = [target_stats(ev[v].clean, ev[v].clean, run.first_tok[v]) | {"n": len(ev[v])} for v in run.targets]
        n = sum(p["n"] for p in st_)
        out[split] = {k: sum(p[k] * p["n"] for p in st_) / n for k in ("success_rate", "mean_rank")} | {"kl_unrelated": 0.0}
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
    return max(ok, key=lambda p: (p["success_rate"], p["logprob_gain"], -p["kl_unrelated"]))


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
    KL budget (the weakest if none is within it), the test result at it (test prompts used once)."""
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
    kl_test, test = yield [Ask("kl", m, "test"), Ask("success", m, "test")]
    test = test | {"kl_unrelated": float(kl_test.mean()), "kl_unrelated_median": float(kl_test.median())}
    return {"strength": best["strength"], "strength_unit": m.unit, **m.info, **chosen, "test": test,
            "within_budget": best["kl_unrelated"] <= cfg.kl_budget,
            "val_at_strength": {k: best[k] for k in (*STATS, "kl_unrelated")}, "sweep": sweep}


def _counted(steps: Steps, bar) -> Steps:
    result = yield from steps
    bar.update()
    return result


def run_seed(setup: Setup, unrelated, cfg: SteerConfig, progress: bool) -> dict:
    """One seed (``cfg.seed``): its validation / test split and prompts, its selection prompts,
    every method's sweep and test result (the methods' steps side by side)."""
    rng = random.Random(cfg.seed)
    ev, unrel_p = prompt_sets(setup.model, setup.tg.targets, eval_rows(setup.rows, unrelated, cfg, rng), cfg, rng, setup.hook)
    selected = select_units(setup, cfg, rng)
    run = Run(setup.model, cfg, setup.tg.targets, setup.tg.first_tok, ev, unrel_p)
    methods = [m for m in build_methods(setup, selected, cfg) if not cfg.methods or m.name in cfg.methods]
    if not methods:
        raise ValueError(f"methods={cfg.methods} names none of the methods of these SAEs; e.g. 'diff_of_means', 'atoms', 'atoms_swap'")
    with tqdm(total=len(methods), desc="steer sweep", disable=not progress) as bar:
        done = run_steps(run, together([_counted(method_steps(run, m), bar) for m in methods]))
    return {"methods": {m.name: r for m, r in zip(methods, done)}, "selected_units": selected,
            "baseline_no_intervention": baseline(run), "n_unrelated": {k: len(v) for k, v in unrel_p.items()}}


def run_seeds(setup: Setup, unrelated, cfg: SteerConfig, progress: bool) -> dict[int, dict]:
    """``run_seed`` at seeds ``cfg.seed``, ``cfg.seed + 1``, ... (``cfg.n_seeds`` of them)."""
    seeds = [cfg.seed + i for i in range(cfg.n_seeds)]
    return {sd: run_seed(setup, unrelated, SteerConfig(**{**asdict(cfg), "seed": sd}), progress) for sd in seeds}


def aggregate(per_seed: dict[int, dict], targets: list[str]) -> dict[str, dict]:
    """Per method, the test results pooled over seeds (prompt-weighted success, rank and gain; KL
    averaged over seeds), the per-target table and each seed's chosen strength and sweep."""
    seeds = list(per_seed)
    out = {}
    for m in per_seed[seeds[0]]["methods"]:
        rs = [per_seed[sd]["methods"][m] for sd in seeds]
        tests = [r["test"] for r in rs]
        n = sum(t["n_prompts"] for t in tests)
        pooled = {k: sum(t[k] * t["n_prompts"] for t in tests) / n for k in STATS}
        per_target = _per_target(tests, targets)
        out[m] = {**pooled, "kl_unrelated": sum(t["kl_unrelated"] for t in tests) / len(tests),
                  "strength": rs[0]["strength"], "strength_per_seed": [r["strength"] for r in rs],
                  "n_targets": len(per_target), "n_prompts": n, "seeds": seeds,
                  "within_budget": all(r["within_budget"] for r in rs),
                  **({"selection_per_seed": [r["selection"] for r in rs]} if "val_success_by_choice" in rs[0] else {}),
                  **{k: rs[0][k] for k in ("strength_unit", "sae", "selection", "k", "intervention", "vector", "n_ablated", "pool_size",
                                          "ref_mass", "error_term", "subspace_rank") if k in rs[0]},
                  "per_target": per_target, "per_seed": {sd: r for sd, r in zip(seeds, rs)}}
    return out


def _per_target(tests: list[dict], targets: list[str]) -> dict[str, dict]:
    """Per target, success and log-prob gain pooled over seeds (prompt-weighted)."""
    per_target = {}
    for v in targets:
        pts = [t["per_target"][v] for t in tests if v in t["per_target"]]
        nv = sum(p["n"] for p in pts)
        if nv:
            per_target[v] = {k: sum(p[k] * p["n"] for p in pts) / nv for k in ("success_rate", "logprob_gain")} | {"n": nv}
    return per_target
