"""One seed of the experiment and the seeds pooled.

Per seed (``run_seed``): its validation / test split and prompts, its selection prompts, every
method's strength search and test result (``search``), then every method at the difference of
means' validation KL (``equal_kl``). Pooled (``aggregate``): prompt-weighted test results, and
the equal-KL results with standard errors and the paired difference with the difference of means.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict
from typing import Any, Sequence

from tqdm.auto import tqdm

from sae_atoms.experiments.steering import equal_kl, generation
from sae_atoms.experiments.steering.config import SteerConfig
from sae_atoms.experiments.steering.methods import Method, build_methods
from sae_atoms.experiments.steering.prompts import eval_rows, prompt_sets
from sae_atoms.experiments.steering.search import STATS, Run, Steps, baseline, method_steps, run_steps, together
from sae_atoms.experiments.steering.targets import Setup, select_units


def _counted(steps: Steps, bar) -> Steps:
    result = yield from steps
    bar.update()
    return result


def chosen_methods(built: list[Method], names: Sequence[str]) -> list[Method]:
    """The methods ``names`` picks from ``built`` (all when empty); a name of none of them is an error
    that lists the names there are."""
    unknown = sorted(set(names) - {m.name for m in built})
    if unknown:
        raise ValueError(f"methods {unknown} are not methods of these SAEs; choose among {[m.name for m in built]} "
                         "(without diff_of_means there is no equal-KL comparison)")
    return [m for m in built if not names or m.name in names]


def run_seed(setup: Setup, unrelated, cfg: SteerConfig, progress: bool, first_seed: int | None = None) -> dict:
    """One seed (``cfg.seed``): every method's sweep and test result (the methods' steps side by
    side), then, when the difference of means is among the methods, every method at its KL; on the
    first ``cfg.gen_seeds`` seeds from ``first_seed`` (default this one), steered generation."""
    first_seed = cfg.seed if first_seed is None else first_seed
    clock = [time.perf_counter()]
    lap = lambda: clock.append(time.perf_counter()) or round(clock[-1] - clock[-2], 1)  # noqa: E731
    rng = random.Random(cfg.seed)
    ev, unrel_p = prompt_sets(setup.model, setup.tg.targets, eval_rows(setup.rows, unrelated, cfg, rng), cfg, rng, setup.hook)
    selected = select_units(setup, cfg, rng)
    run = Run(setup.model, cfg, setup.tg.targets, setup.tg.first_tok, ev, unrel_p)
    methods = chosen_methods(build_methods(setup, selected, cfg), cfg.methods)
    seconds = {"prompts_and_selection": lap()}
    with tqdm(total=len(methods), desc="steer sweep", disable=not progress) as bar:
        done = run_steps(run, together([_counted(method_steps(run, m), bar) for m in methods]))
    seconds["sweep"] = lap()
    results = {m.name: r for m, (_, r, _) in zip(methods, done)}
    base = baseline(run)
    for r in results.values():
        r["success_kl_area"] = equal_kl.success_kl_area(r["sweep"], base["val"]["success_rate"], cfg.kl_budget)
    ref = results.get(equal_kl.REFERENCE)
    if ref is not None:
        k_ref = ref["val_at_strength"]["kl_unrelated"]
        with tqdm(total=len(methods), desc="steer at equal KL", disable=not progress) as bar:
            eq = run_steps(run, together([_counted(equal_kl.equal_kl_steps(run, m, r["sweep"], k_ref, known=measured), bar)
                                          for m, r, measured in done]))
        for (_, r, _), e in zip(done, eq):
            r["equal_kl"] = e
    seconds["equal_kl"] = lap()
    gen = None
    if cfg.gen_tokens and cfg.seed - first_seed < cfg.gen_seeds:
        at = {m.name: m.at(r["equal_kl"]["strength"] if "equal_kl" in r else r["strength"]) for m, r, _ in done}
        gen = generation.steered_generation(setup.model, at, setup.tg.targets, cfg.gen_tokens, generation.prompts_for(cfg.label)[:cfg.gen_prompts],
                                            cfg.gen_scales, progress)
        for name, g in gen.items():
            if name in results:
                results[name]["generation"] = g
    seconds["generation"] = lap()
    return {"methods": results, "generation_unsteered": gen["none"] if gen else None, "seconds": seconds, "selected_units": selected, "baseline_no_intervention": base,
            "n_unrelated": {k: len(v) for k, v in unrel_p.items()}}


def run_seeds(setup: Setup, unrelated, cfg: SteerConfig, progress: bool) -> dict[int, dict]:
    """``run_seed`` at seeds ``cfg.seed``, ``cfg.seed + 1``, ... (``cfg.n_seeds`` of them)."""
    seeds = [cfg.seed + i for i in range(cfg.n_seeds)]
    return {sd: run_seed(setup, unrelated, SteerConfig(**{**asdict(cfg), "seed": sd}), progress, cfg.seed) for sd in seeds}


def aggregate(per_seed: dict[int, dict], targets: list[str]) -> dict[str, dict]:
    """Per method, the test results pooled over seeds (prompt-weighted success, rank, gain and
    efficacy; KL averaged over seeds), the per-target table, each seed's chosen strength and sweep,
    the mean ``success_kl_area`` and the equal-KL summary (``equal_kl.summarise``)."""
    seeds = list(per_seed)
    ref = [per_seed[sd]["methods"][equal_kl.REFERENCE].get("equal_kl") for sd in seeds
           if equal_kl.REFERENCE in per_seed[sd]["methods"]]
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
                  "success_kl_area": sum(r["success_kl_area"] for r in rs) / len(rs),
                  **({"selection_per_seed": [r["selection"] for r in rs]} if "val_success_by_choice" in rs[0] else {}),
                  **{k: rs[0][k] for k in ("strength_unit", "sae", "selection", "k", "intervention", "vector", "n_ablated", "pool_size",
                                          "ref_mass", "error_term", "subspace_rank") if k in rs[0]},
                  "per_target": per_target, "per_seed": {sd: r for sd, r in zip(seeds, rs)}}
        gens = [r["generation"] for r in rs if "generation" in r]
        if gens:
            curve = [pooled_generation(pts) | {"scale": pts[0]["scale"]} for pts in zip(*(g["curve"] for g in gens))]
            out[m]["generation"] = pooled_generation(gens) | {"n_seeds": len(gens), "curve": curve}
        if all("equal_kl" in r for r in rs):
            out[m]["equal_kl"] = equal_kl.summarise([r["equal_kl"] for r in rs],
                                                    ref if len(ref) == len(rs) and all(ref) else None)
    curves = {m: r["generation"]["curve"] for m, r in out.items() if "generation" in r}
    for m, e in generation.at_reference(curves, equal_kl.REFERENCE).items():
        out[m]["generation"]["equal_perplexity"] = e
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


def relation_table(res: dict[str, Any]) -> dict[str, dict]:
    """Per method, the ``steering_relations`` entry of ``run_steering``'s results: success at the
    difference of means' KL (with its standard error and the paired difference), the area under
    success-KL, the CounterFact-style scores (at equal KL and at the within point), and the
    best-within-budget success beside them."""
    keys = ("success_equal_kl", "success_equal_kl_se", "paired_diff_vs_dom", "paired_diff_vs_dom_se", "efficacy", "paraphrase",
            "neighbourhood", "counterfact_hmean", "test_kl", "reached_per_seed", "n_prompts", "success_within_kl_ref",
            "success_within_kl_ref_se", "paired_within_vs_dom", "paired_within_vs_dom_se", "test_kl_within", "efficacy_within",
            "paraphrase_within", "neighbourhood_within", "counterfact_hmean_within")
    return {m: {k: r.get("equal_kl", {}).get(k) for k in keys} | {
        "success_within_budget": r["success_rate"], "kl_within_budget": r["kl_unrelated"], "success_kl_area": r["success_kl_area"],
        "gen_concept": r.get("generation", {}).get("concept"), "gen_perplexity": r.get("generation", {}).get("perplexity"),
        **_equal_perplexity(r.get("generation", {}))}
        for m, r in res["methods"].items()} | _unsteered(res)


def _equal_perplexity(gen: dict[str, Any]) -> dict[str, Any]:
    """The ``gen_*`` columns of steered generation at the difference of means' perplexity (``generation.at_reference``)."""
    e = gen.get("equal_perplexity", {})
    return {"gen_concept_equal_ppl": e.get("concept_equal_ppl"), "gen_ref_perplexity": e.get("ref_perplexity"),
            "gen_dominates_dom": e.get("dominates_ref"), "gen_curve": gen.get("curve")}


def _unsteered(res: dict[str, Any]) -> dict[str, dict]:
    """``{"no_intervention": ...}`` with the unsteered model's generation scores (seeds averaged), if any."""
    gens = list((res.get("generation_unsteered") or {}).values())
    if not gens:
        return {}
    g = pooled_generation(gens)
    return {"no_intervention": {"gen_concept": g["concept"], "gen_perplexity": g["perplexity"]}}


def pooled_generation(gens: list[dict]) -> dict[str, Any]:
    """Seeds' generation scores pooled: the mean concept score (also per target), the geometric-mean perplexity."""
    by_target = [g["concept_by_target"] for g in gens if "concept_by_target" in g]
    return {"concept": sum(g["concept"] for g in gens) / len(gens),
            "perplexity": math.exp(sum(math.log(g["perplexity"]) for g in gens) / len(gens)),
            **({"concept_by_target": {v: sum(b[v] for b in by_target) / len(gens) for v in by_target[0]}}
               if len(by_target) == len(gens) else {})}
