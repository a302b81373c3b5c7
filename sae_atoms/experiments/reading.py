"""The report's reading: what the main job's numbers support, in plain words, with their uncertainty.

Every sentence is computed from ``results.json`` (``sae_atoms.experiments.reproduce``). A
comparison of two success rates states its standard error and says "not significant" when the
difference lies within ``Z`` standard errors. The standard errors come from the counts: a success
rate ``p`` measured on ``n`` prompts has the binomial SE ``sqrt(p (1 - p) / n)``; the difference of
two has ``sqrt(SE_a^2 + SE_b^2)`` (unpaired). The steering methods are measured on the same
prompts, whose outcomes are positively correlated, so the unpaired SE over-states the noise of
the difference: a difference it calls significant is one, and one it calls "not significant" may
still be real but is not shown by these counts.
"""

from __future__ import annotations

import math
from typing import Any

Z = 1.96  # two-sided 95 % under the normal approximation
AT_90 = 1.0  # degrees: an angular centroid "at 90°" lies within 90 ± AT_90


def success_se(rate: float, n: int) -> float:
    """Binomial standard error ``sqrt(p (1 - p) / n)`` of a success rate measured on ``n`` prompts."""
    if n <= 0:
        raise ValueError(f"a success rate needs n >= 1 prompts, got n={n}")
    return math.sqrt(max(rate * (1 - rate), 0.0) / n)


def compare_rates(a: dict, b: dict) -> dict[str, Any]:
    """``a`` minus ``b`` (dicts with ``success_rate`` and ``n_prompts``): the difference, its SE, z
    and whether ``|z| > Z``. With both rates 0 or 1 (SE 0) a difference of 0 is not significant."""
    diff = a["success_rate"] - b["success_rate"]
    se = math.hypot(success_se(a["success_rate"], a["n_prompts"]), success_se(b["success_rate"], b["n_prompts"]))
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    return {"diff": diff, "se": se, "z": z, "significant": abs(z) > Z}


def rate_text(m: dict) -> str:
    """``0.667 ± 0.136 (8/12)``: a success rate, its SE and its counts."""
    n = m["n_prompts"]
    return f"{m['success_rate']:.3f} ± {success_se(m['success_rate'], n):.3f} ({round(m['success_rate'] * n)}/{n})"


def difference_text(c: dict) -> str:
    """``difference +0.083 ± 0.196: not significant`` (at ``Z`` SE)."""
    return (f"difference {c['diff']:+.3f} ± {c['se']:.3f} (SE), "
            + ("significant" if c["significant"] else "not significant") + f" at {Z:g} SE")


def relations_reading(tables: dict[str, dict]) -> list[str]:
    """Per relation, the issue's three checks: atoms' best method vs the difference of means at its KL
    (paired difference ± SE), the CounterFact-style harmonic mean against the difference of means and
    every features method, and steered generation's concept share at no more perplexity."""
    out = []
    for rel, t in tables.items():
        atoms = [m for m in t if m.startswith("atoms") and t[m].get("success_equal_kl") is not None]
        d = t.get("diff_of_means")
        if not atoms or not d:
            continue
        a = max(atoms, key=lambda m: t[m]["success_equal_kl"])
        diff, se = t[a]["paired_diff_vs_dom"], t[a]["paired_diff_vs_dom_se"]
        sig = "significant" if se and abs(diff) > Z * se else "not significant"
        text = (f"Steering {rel.replace('_', ' -> ')} at the difference of means' KL: {a} {t[a]['success_equal_kl']:.3f} vs "
                f"{d['success_equal_kl']:.3f}, paired difference {diff:+.3f} ± {se:.3f} (SE; {sig} at {Z:g} SE; {a} is the best "
                f"of {len(atoms)} atoms methods on these prompts).")
        text += _within_reading(t, atoms)
        text += _counterfact_reading(t, "counterfact_hmean", "")
        text += _counterfact_reading(t, "counterfact_hmean_within", " within the difference of means' KL")
        text += _generation_reading(t)
        out.append(text)
    return out


def _counterfact_reading(t: dict[str, dict], key: str, where: str) -> str:
    """The best atoms method's CounterFact-style harmonic mean (``key``) against the difference of means and
    every features method."""
    h = {m: v[key] for m, v in t.items() if v.get(key) is not None}
    ha = max((m for m in h if m.startswith("atoms")), key=h.get, default=None)
    rivals = [m for m in h if m == "diff_of_means" or m.startswith("features")]
    if ha is None:
        return "" if where else " No CounterFact-style harmonic mean (no paraphrase prompts: the subjects have one template here)."
    return (f" CounterFact-style harmonic mean{where}: {ha} {h[ha]:.3f}, " + ", ".join(f"{m} {h[m]:.3f}" for m in rivals)
            + ("; atoms lead it." if all(h[ha] >= h[m] for m in rivals) else "; atoms do not lead it."))


def _within_reading(t: dict[str, dict], atoms: list[str]) -> str:
    """The same check at each method's best point with no more validation KL than the difference of means."""
    atoms = [m for m in atoms if t[m].get("paired_within_vs_dom") is not None]
    if not atoms:
        return ""
    a = max(atoms, key=lambda m: t[m]["success_within_kl_ref"])
    diff, se = t[a]["paired_within_vs_dom"], t[a]["paired_within_vs_dom_se"]
    return (f" Within that KL (each method at its best point with no more): {a} {t[a]['success_within_kl_ref']:.3f} vs "
            f"{t['diff_of_means']['success_within_kl_ref']:.3f}, paired difference {diff:+.3f} ± {se:.3f} (SE; "
            + ("significant" if se and abs(diff) > Z * se else "not significant") + f" at {Z:g} SE).")


def _generation_reading(t: dict[str, dict]) -> str:
    """Steered generation: the atoms method with the highest concept share at no more perplexity than
    the difference of means (over its generation strength scales) against the difference of means, and
    the unsteered model's share (the floor: a prompt that invites a continent may draw the target)."""
    d = t.get("diff_of_means", {})
    atoms = [m for m, v in t.items() if m.startswith("atoms") and v.get("gen_concept") is not None]
    if d.get("gen_concept") is None or not atoms:
        return ""
    reached = lambda m: -1.0 if t[m].get("gen_concept_equal_ppl") is None else t[m]["gen_concept_equal_ppl"]  # noqa: E731
    a = max(atoms, key=lambda m: (reached(m), t[m]["gen_concept"]))
    c = t[a].get("gen_concept_equal_ppl")
    ok = c is not None and c >= d["gen_concept"]
    scales = "/".join(f"x{p['scale']:g}" for p in t[a].get("gen_curve") or [])
    floor = t.get("no_intervention", {}).get("gen_concept")  # the prompts may draw a target unsteered
    return (f" Steered generation: the difference of means names the target in {d['gen_concept']:.2f} of continuations at "
            f"perplexity {d['gen_perplexity']:.1f}" + ("" if floor is None else f" (unsteered {floor:.2f})")
            + f"; at no more perplexity {a} names it in "
            + ("none (no strength scale is as fluent)" if c is None else f"{c:.2f}") + f" (best over its scales {scales}; "
            + ("atoms reach it" if ok else "atoms do not reach it") + ", and "
            + ("reach" if t[a].get("gen_dominates_dom") else "do not reach")
            + " the difference of means' share at each of its scales' perplexity).")


def steering_reading(st: dict) -> list[str]:
    """Best atoms method vs the difference of means, vs the best features method, and the overall best."""
    atoms = [m for m in st if m.startswith("atoms")]
    if not atoms or "diff_of_means" not in st:
        return []
    best_atoms = max(atoms, key=lambda m: st[m]["success_rate"])
    a, d = st[best_atoms], st["diff_of_means"]
    c = compare_rates(a, d)
    if not c["significant"]:
        verdict = "these counts do not tell atoms and the difference of means apart"
    else:
        verdict = "atoms steer more often than" if c["diff"] > 0 else "atoms steer less often than"
        verdict += " the difference-of-means baseline"
    picked = (f" (the best of {len(atoms)} atoms methods on these test prompts, which favours atoms)"
              if len(atoms) > 1 else "")
    out = [f"Steering (matched side effect): success {rate_text(a)} for {best_atoms}{picked} vs {rate_text(d)} for the "
           f"difference of means (KL on unrelated prompts {a['kl_unrelated']:.3f} vs {d['kl_unrelated']:.3f}); "
           f"{difference_text(c)}: {verdict}."]
    feats = [m for m in st if m.startswith("features")]
    if feats:
        f = max(feats, key=lambda m: st[m]["success_rate"])
        out.append(f"Against SAE features: {best_atoms} {rate_text(a)} vs the best features method {f} {rate_text(st[f])} "
                   f"(KL {st[f]['kl_unrelated']:.3f}); {difference_text(compare_rates(a, st[f]))}.")
    best = max(st, key=lambda m: st[m]["success_rate"])
    tied = [m for m in st if m != best and not compare_rates(st[best], st[m])["significant"]]
    out.append(f"Highest steering success at the matched KL budget: {best} ({rate_text(st[best])}, "
               f"{st[best].get('n_targets')} targets, seeds {', '.join(str(x) for x in st[best].get('seeds', []))}); "
               + (f"within noise of it: {', '.join(tied)}." if tied else "every other method is significantly below it."))
    return out


def geometry_reading(layers: dict) -> list[str]:
    """The representation shift across layers: Euclid, and the AIP in-sample, held-out and on another family."""
    if not layers:
        return []

    def at_90(view: str) -> tuple[int, int, list[float]]:
        means = [v[view]["mean"] for v in layers.values() if view in v]
        return sum(abs(m - 90) <= AT_90 for m in means), len(means), means

    eu = [v["euclid"]["mean"] for v in layers.values()]
    (ki, ni, _), (kh, nh, _), (ko, no, other) = at_90("aip"), at_90("aip_heldout"), at_90("aip_other_family")
    same_family = ki == ni and kh == nh
    text = (f"Representation shift: Euclidean centroids lie at {min(eu):.1f}–{max(eu):.1f}° across {len(layers)} "
            f"layers; under the AIP fitted on the train entities the centroid is within 90 ± {AT_90:g}° at {ki}/{ni} "
            f"layers in-sample and {kh}/{nh} on held-out entities")
    if no:
        text += (f", and at {ko}/{no} on another prompt family (reasoning prompts, {min(other):.1f}–{max(other):.1f}°)")
    if same_family and (not no or ko == no):
        return [text + ": reproduced."]
    if same_family:
        return [text + ": reproduced for the entities of the family the metric was fitted on, not for another family "
                       "(the metric is specific to the prompts it was fitted on)."]
    return [text + ": not reproduced at every layer (see the table)."]


def negative_r2_reading(results: dict) -> list[str]:
    """Name every R² below 0 (the units and the frontier) and say what it means."""
    cols = ("r2", "r2_heldout", "r2_aip", "r2_aip_heldout")
    found = [f"{unit} {k} {v:.2f}" for unit, r in (results.get("units") or {}).items() for k in cols
             if isinstance(v := r.get(k), (int, float)) and v < 0]
    n_front = sum(isinstance(v := r.get(k), (int, float)) and v < 0 for r in results.get("frontier") or [] for k in cols)
    if not found and not n_front:
        return []
    where = "; ".join(found) + (f"{'; and ' if found else ''}{n_front} cells of the frontier table" if n_front else "")
    return [f"Negative R² ({where}): R² = 1 − ‖x − x̂‖² / ‖x − mean x‖², so below 0 the reconstruction is "
            "further from the activations than their mean is; such a unit set does not reconstruct those activations "
            "(too few training steps, or features fitted to the train entities that do not carry over)."]


def reading(results: dict) -> list[str]:
    """A short reading of what reproduced and what did not, computed from the numbers."""
    out = geometry_reading(results["geometry"].get("by_layer", {}))
    u = results["units"]
    if all(k in u for k in ("neurons", "features_jumprelu", "atoms")):
        qa = {k: u[k]["q_star_a"] for k in u}
        qb = {k: u[k]["q_star_b"] for k in u}
        feat = max(qb.get("features_standard", 0), qb["features_jumprelu"])
        order_b = qb["neurons"] < feat < qb["atoms"]
        out.append(f"Stability ordering neurons < features < atoms (q* reading b: {qb['neurons']:.3f} / {feat:.3f} / "
                   f"{qb['atoms']:.3f}): {'reproduced' if order_b else 'not reproduced'}. Reading (a): "
                   f"{qa['neurons']:.3f} / {max(qa.get('features_standard', 0), qa['features_jumprelu']):.3f} / {qa['atoms']:.3f}.")
        a = u["atoms"]
        if a["r2"] < 0.99:
            verdict = ("Not near-perfect here: the paper's figures come from data sets where the width is close to "
                       "the number of activations; see the capacity sweep.")
        elif a["r2_heldout"] < 0.9:
            verdict = ("Near-perfect in-sample, as the paper reports, but not on held-out entities: the code fits the "
                       "training activations rather than generalising (width vs data size; see the capacity sweep).")
        else:
            verdict = "Near-perfect, in-sample and held-out."
        out.append(f"Atoms' faithfulness: R² {a['r2']:.3f} in-sample and {a['r2_heldout']:.3f} on held-out entities "
                   f"(paper: 0.999 in-sample). {verdict}")
    out += negative_r2_reading(results)
    if results.get("frontier"):
        from sae_atoms.experiments import frontier

        out.extend(frontier.reading(results["frontier"], results.get("paper_regime")))
        out += binding_reading(results["frontier"]) + consistency_reading(results["frontier"])
    cap = results.get("capacity") or []
    if cap:
        best = max(cap, key=lambda r: r["r2_heldout"])
        out.append(f"Capacity: held-out R² ranges {min(r['r2_heldout'] for r in cap):.3f}–{best['r2_heldout']:.3f} over "
                   f"widths {sorted({r['expansion'] for r in cap})}x (best at {best['expansion']}x).")
    out += steering_reading(results.get("steering") or {})
    out += relations_reading(results.get("steering_relations") or {})
    if results.get("quick"):
        out.append("This is a `--quick` run (small sizes, one seed): a check that the job runs; its numbers are noisy.")
    return out


def binding_reading(rows: list[dict], units: tuple[str, ...] = ("atoms", "atoms_stable")) -> list[str]:
    """Which side of q* (b)'s bound binds on held-out entities, per frontier target, for each of
    ``units`` present (the rows' ``evals.evaluate.BINDING_KEYS``, held-out): one sentence a unit."""
    from sae_atoms.evals.geometry import uniqueness_bound

    out = []
    for unit in units:
        parts = []
        for r in rows:
            k, mu = r.get("l0_p50_heldout"), r.get("mu_sample_p50_heldout")
            if r["unit"] != unit or k is None or mu is None or not math.isfinite(mu) or k < 2:
                continue
            gap = r.get("amplitude_gap_sample_pos_frac_heldout")
            lo, hi = r.get("q_star_b_k_upto_p50_heldout"), r.get("q_star_b_k_above_p50_heldout")
            parts.append(f"L0 {r['target_l0']:g}: q* (b) {r['q_star_b_heldout']:.3f}, median K {k:g}, bound "
                         f"{uniqueness_bound(k):.3f}, median co-active μ {mu:.3f} (ratio {r['bound_ratio_p50_heldout']:.1f}; "
                         f"that μ allows K ≤ {r['k_allowed_p50_heldout']:g})"
                         + ("" if lo is None or hi is None or not math.isfinite(hi)
                            else f", q* (b) {lo:.3f} on samples with K ≤ {k:g} and {hi:.3f} above")
                         + ("" if gap is None else f", amplitude gap > 0 on {gap:.0%} of samples"))
        if parts:
            out.append(f"Stability q* (b), held-out entities, {unit}: which side of μ < 1/(2K−1) binds (ratio = μ (2K−1) "
                       "of the median sample; above 1 it fails): " + "; ".join(parts) + ".")
    return out


def consistency_reading(rows: list[dict]) -> list[str]:
    """Seed and width consistency per frontier target that has them (``evals.stability``): each kind
    of atoms against the best unit kind that is not atoms (issue 22: atoms ahead of every other kind)."""
    from sae_atoms.evals.stability import MATCH_THRESHOLD

    out = []
    for t in sorted({r["target_l0"] for r in rows if r.get("seed_consistency") is not None}):
        at = {r["unit"]: r for r in rows if r["target_l0"] == t and r.get("seed_consistency") is not None}
        others = [u for u in at if not u.startswith("atoms")]
        pair = lambda u: f"{u} {at[u]['seed_consistency']:.3f} / {at[u]['width_consistency']:.3f}"  # noqa: E731
        best = max(others, key=lambda u: at[u]["seed_consistency"]) if others else None
        atoms = [u for u in at if u.startswith("atoms")]
        lead = best is not None and atoms and all(at[u]["seed_consistency"] > at[best]["seed_consistency"] for u in atoms)
        out.append(f"Stability across runs at L0 {t:g} (share of units matched at |cos| ≥ {MATCH_THRESHOLD:g}, seed / width): "
                   + ", ".join(pair(u) for u in atoms) + ("" if best is None else f"; best other unit kind {pair(best)}")
                   + (f"; atoms {'lead' if lead else 'do not lead'} it on seeds." if best is not None and atoms else "."))
    return out
