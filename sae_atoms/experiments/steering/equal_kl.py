"""Every method at the side effect the difference of means spends, and CounterFact-style scores.

Best success within the KL budget lets a method spend more of the budget than the baseline it is
compared with. Here, per seed, ``k_ref`` is the difference of means' validation KL at its chosen
strength; each method is moved to the strength whose validation KL is ``k_ref`` (interpolated in
log strength between the points of its validation sweep, then refined by measuring: at most
``n_refine`` rounds, stopping within ``tol * k_ref``), and the test prompts are read there once:

* success (the target is the top-1 next token), kept per prompt, so that every method is compared
  with the difference of means on the same prompts (a paired difference with its standard error);
* CounterFact-style scores (Meng et al. 2022, arXiv 2202.05262): efficacy, ``p(target) > p(true
  answer)`` on the edited prompts; paraphrase, the same on the same subjects in other templates;
  neighbourhood, the share of unrelated prompts (other relations, arithmetic) under the same
  intervention whose top-1 answer is unchanged; their harmonic mean (CounterFact's "score").

Success at ``k_ref`` reads a method past its peak when its success falls before its KL reaches
``k_ref`` (a gated edit spends little KL; pushed until it does, it overshoots). So each method is
also read at its best validation point with KL <= ``k_ref`` (``within``: among its sweep's points
and its equal-KL point; at most the reference's side effect; the difference of means' own point
is its chosen one): ``success_within_kl_ref``, with the paired difference ``paired_within_vs_dom``,
and the CounterFact-style scores and test KL there (``efficacy_within`` ... ``test_kl_within``).

Also per method, from its validation sweep: the area under best-success-within-KL ``b(x) = max
{success of the points with KL <= x}`` over ``(0, budget]``, divided by the budget (the mean
success a user gets over budgets up to the one used).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from sae_atoms.experiments.steering.methods import Method
from sae_atoms.experiments.steering.search import Ask, Run, Steps, choose_strength, point_rank

REFERENCE = "diff_of_means"
TOL = 0.1  # relative: a validation KL within 10% of k_ref counts as equal
N_REFINE = 4


def interpolate(points: Sequence[tuple[float, float]], k: float) -> float | None:
    """The strength at which KL reaches ``k``, between the strongest point with KL <= ``k`` (or 0)
    and the weakest stronger point above it, linear in log strength (in strength from 0); None
    when no point is above ``k``. ``points``: ``(strength, kl)``."""
    lo = max([p for p in points if p[1] <= k], default=(0.0, 0.0))
    hi = min([p for p in points if p[0] > lo[0] and p[1] > k], default=None)
    if hi is None:
        return None
    t = (k - lo[1]) / (hi[1] - lo[1])
    return lo[0] + t * (hi[0] - lo[0]) if lo[0] <= 0 else lo[0] * (hi[0] / lo[0]) ** t


def equal_kl_steps(run: Run, m: Method, sweep: list[dict], k_ref: float, n_refine: int = N_REFINE,
                   tol: float = TOL, known: dict[float, dict[str, Any]] | None = None) -> Steps:
    """``m`` at validation KL ``k_ref`` (module docstring), its test result there. Past its strongest
    point a method is extrapolated as KL ~ strength^2 (a small edit's KL is quadratic in it), by a
    factor between ``grid_growth`` and 4; one that never reaches ``k_ref`` (a clamp capped in
    distribution saturates) keeps the point nearest it (``reached`` False).

    Each measurement is made once: ``known`` holds test answers already made (``{strength: {"side":
    .., "test": ..}}``, e.g. ``method_steps``' at the chosen strength), a strength that is both the
    equal-KL and the within point is read once, and a sweep point's validation success is taken
    from the sweep."""
    pts = [(p["strength"], p["kl_unrelated"]) for p in sweep]
    for _ in range(n_refine):
        if abs(min(pts, key=lambda p: abs(p[1] - k_ref))[1] - k_ref) <= tol * k_ref:
            break
        s = interpolate(pts, k_ref)
        if s is None:
            top, k_top = max(pts)
            s = top * min(4.0, max(run.cfg.grid_growth, math.sqrt(k_ref / k_top) if k_top > 0 else 4.0))
        k, = yield [Ask("kl", m.at(s), "val")]
        pts.append((s, float(k.mean())))
    s, k_val = min(pts, key=lambda p: abs(p[1] - k_ref))
    w = within(sweep, k_ref * (1 + tol))
    own = k_val <= k_ref * (1 + tol)  # the equal-KL point is itself a candidate for within: its validation success
    swept = next((p for p in sweep if p["strength"] == s and "success_rate" in p), None)
    para = any(len(P) for P in run.ev["paraphrase"].values())
    reads = {x: dict(r) for x, r in (known or {}).items()}  # strength -> {"side" / "test" / "para": answer}
    got = yield from _ask(_test_asks(m, s, ("side", "test", "para"), para, reads)
                          | (_test_asks(m, w["strength"], ("test",), para, reads) if w else {})
                          | ({"own": Ask("success", m.at(s), "val")} if own and swept is None else {}))
    at = _read(run, _store(reads, got)[s])
    at_own = own and (w is None or point_rank((got.get("own") or swept) | {"kl_unrelated": k_val}) > point_rank(w))
    if w and not at_own:  # the within point is a sweep point: its side effects and paraphrases too
        _store(reads, (yield from _ask(_test_asks(m, w["strength"], ("side", "para"), para, reads))))
    none = {"strength": None, "val_kl": None, "hits": [0] * len(at["hits"])} | dict.fromkeys(_CF + ("test_kl",))
    return {"strength": s, "kl_ref": k_ref, "val_kl": k_val, "reached": abs(k_val - k_ref) <= tol * k_ref, **at,
            "within": ({"strength": s, "val_kl": k_val, **at} if at_own else
                       {"strength": w["strength"], "val_kl": w["kl_unrelated"], **_read(run, reads[w["strength"]])} if w else none)}


_CF = ("efficacy", "paraphrase", "neighbourhood")
_KINDS = {"side": ("side", "test"), "test": ("success", "test"), "para": ("success", "paraphrase")}  # kind: (what, split)


def _ask(asks: dict) -> Steps:
    """One round of named asks (none: no round); their answers by name."""
    if not asks:
        return {}
    return dict(zip(asks, (yield list(asks.values()))))


def _test_asks(m: Method, x: float, kinds: Sequence[str], para: bool, reads: dict[float, dict]) -> dict[tuple, Ask]:
    """The asks of a test reading of ``m`` at strength ``x`` (``kinds`` of: ``side``, side effects;
    ``test``, success and efficacy; ``para``, paraphrase success, when there are paraphrases) not in ``reads``."""
    return {(x, k): Ask(_KINDS[k][0], m.at(x), _KINDS[k][1]) for k in kinds
            if (k != "para" or para) and k not in reads.get(x, {})}


def _store(reads: dict[float, dict], got: dict) -> dict[float, dict]:
    """``got``'s test answers (keyed ``(strength, kind)``) into ``reads``."""
    for key, answer in got.items():
        if isinstance(key, tuple):
            reads.setdefault(key[0], {})[key[1]] = answer
    return reads


def _read(run: Run, got: dict) -> dict[str, Any]:
    """The test reading of one strength's answers (``_test_asks``): KL, neighbourhood, success, efficacy, paraphrase, hits."""
    side, test = got["side"], got["test"]
    hits = [h for v in run.targets if v in test["per_target"] for h in test["per_target"][v]["hits"]]
    return {"test_kl": float(side[:, 0].mean()), "neighbourhood": float(side[:, 1].mean()),
            "success_rate": test["success_rate"], "efficacy": test["efficacy"], "n_prompts": test["n_prompts"],
            "paraphrase": got["para"]["efficacy"] if "para" in got else None, "hits": hits}


def within(sweep: list[dict], k: float) -> dict | None:
    """The sweep's validation point of best success with KL <= ``k`` (ties: higher log-prob gain, then
    lower KL; None when no measured point is that gentle). ``equal_kl_steps`` compares it with the
    equal-KL point itself (validation success read there), so a method whose success peaks below the
    reference's KL is read at its peak, and one whose sweep starts above it at the equal-KL point."""
    read = [p for p in sweep if "success_rate" in p]
    return choose_strength(read, k) if any(p["kl_unrelated"] <= k for p in read) else None


def success_kl_area(sweep: list[dict], base_success: float, budget: float) -> float:
    """``(1 / budget) * integral over (0, budget] of b(x) dx``, ``b(x)`` the best validation success
    among the sweep's points with KL <= x (the unsteered success at x = 0)."""
    pts = sorted((p["kl_unrelated"], p["success_rate"]) for p in sweep if "success_rate" in p and p["kl_unrelated"] <= budget)
    area, best, x0 = 0.0, base_success, 0.0
    for x, s in pts:
        area += best * (x - x0)
        best, x0 = max(best, s), x
    return (area + best * (budget - x0)) / budget


def _counterfact(runs: list[dict]) -> dict[str, float | None]:
    """Efficacy and paraphrase (pooled over prompts), neighbourhood and test KL (mean over seeds) and the
    harmonic mean of the three scores; None where a seed has no reading (no paraphrases, no point)."""
    n = [r["n_prompts"] for r in runs]
    pooled = lambda k, w: None if any(r[k] is None for r in runs) else sum(r[k] * x for r, x in zip(runs, w)) / sum(w)  # noqa: E731
    out = {"efficacy": pooled("efficacy", n), "paraphrase": pooled("paraphrase", n),
           "neighbourhood": pooled("neighbourhood", [1] * len(runs)), "test_kl": pooled("test_kl", [1] * len(runs))}
    return out | {"counterfact_hmean": hmean(*(out[k] for k in _CF))}


def hmean(*xs: float | None) -> float | None:
    """The harmonic mean (0 when one is 0; None when one is missing)."""
    if any(x is None for x in xs):
        return None
    return 0.0 if min(xs) <= 0 else len(xs) / sum(1 / x for x in xs)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt n; 0 for one value)."""
    t = torch.tensor(list(values), dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(len(t))) if len(t) > 1 else 0.0


def summarise(runs: list[dict], ref: list[dict] | None) -> dict[str, Any]:
    """One method's equal-KL results pooled over seeds (``runs``: per seed ``equal_kl_steps``'
    results; ``ref``: the difference of means' on the same prompts, for the paired difference)."""
    hits = [h for r in runs for h in r["hits"]]
    succ, se = mean_se(hits)
    out = {"success_equal_kl": succ, "success_equal_kl_se": se, "n_prompts": len(hits),
           "kl_ref": sum(r["kl_ref"] for r in runs) / len(runs), "val_kl": sum(r["val_kl"] for r in runs) / len(runs),
           "strength_per_seed": [r["strength"] for r in runs], "reached_per_seed": [r["reached"] for r in runs], **_counterfact(runs)}
    w_hits = [h for r in runs for h in r["within"]["hits"]]
    out["success_within_kl_ref"], out["success_within_kl_ref_se"] = mean_se(w_hits)
    out |= {f"{k}_within": v for k, v in _counterfact([r["within"] | {"n_prompts": r["n_prompts"]} for r in runs]).items()}
    if ref is not None:
        diff, diff_se = mean_se([a - b for r, q in zip(runs, ref) for a, b in zip(r["hits"], q["hits"])])
        w_diff, w_se = mean_se([a - b for r, q in zip(runs, ref) for a, b in zip(r["within"]["hits"], q["within"]["hits"])])
        out |= {"paired_diff_vs_dom": diff, "paired_diff_vs_dom_se": diff_se, "paired_within_vs_dom": w_diff,
                "paired_within_vs_dom_se": w_se}
    return out
