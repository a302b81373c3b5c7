"""``FINDINGS.md``: the numbers the main job measured, each under the regime it was measured in.

The library's docstrings say how and why (formulas, sources, reasons); the measured numbers live
here, generated from a finished ``sae-atoms reproduce`` run's ``results.json``, so that they never
go stale in a docstring. ``sae-atoms reproduce`` writes ``OUT/FINDINGS.md`` on every run and, with
``--findings docs/FINDINGS.md``, the repository's copy too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_atoms.evals.stability import MATCH_THRESHOLD
from sae_atoms.experiments.reading import reading, success_se
from sae_atoms.experiments.report import Report, alpha_note, fmt, precision_note
from sae_atoms.io import write_text
from sae_atoms.units import label

UNIT_KEYS = ("r2", "r2_heldout", "r2_aip", "r2_aip_heldout", "l0", "l0_heldout", "mu", "q_star_a", "q_star_b",
             "q_star_b_heldout")
FRONTIER_KEYS = ("target_l0", "l0_val", "l0_heldout", "r2_heldout", "r2_aip_heldout", "q_star_b")
STABILITY_KEYS = ("seed_consistency", "seed_mean_cos", "width_consistency", "width_mean_cos", "q_star_b_heldout",
                  "r2_heldout")
PAPER_REGIME_KEYS = ("r2", "r2_heldout", "l0", "l0_heldout", "q_star_b", "untied_encoders")


def _run_line(results: dict) -> str:
    cmd = "sae-atoms reproduce" + (" --quick" if results.get("quick") else "")
    return (f"Measured by `{cmd}` (seed and settings in its results.json) on `{results['model']}` at "
            f"`{results['hook_name']}` (subject's last token): {results['n_train']} train / {results['n_heldout']} "
            "held-out subject activations, held-out = entities never trained on."
            + (" A `--quick` run: small sizes, noisy numbers." if results.get("quick") else ""))


def _units(r: Report, results: dict) -> None:
    units = results.get("units") or {}
    if not units:
        return
    l0 = results.get("units_l0")
    r.h("Units: neurons, features, atoms" + (f" at matched L0 = {l0:g}" if l0 is not None else ""))
    r.p("Regime: the frontier's SAEs at the headline L0, trained on the train entities less a validation share "
        "(L0 matched there), measured in the robust AIP of the train entities; `_heldout` = held-out entities; "
        "μ = the largest |cos| between unit directions in the AIP; q* (a) / (b) the two readings of the "
        "uniqueness bound μ < 1/(2K−1).")
    r.table(["unit", *UNIT_KEYS], [[label(u), *[v.get(k) for k in UNIT_KEYS]] for u, v in units.items()])


def _frontier(r: Report, results: dict) -> None:
    rows = results.get("frontier") or []
    if rows:
        st = results.get("frontier_settings") or {}
        r.h("Sparsity frontier (matched L0)")
        r.p(f"Regime: width {st.get('d_sae')} ({st.get('expansion')}x d), {st.get('steps')} steps of "
            f"{st.get('batch_size')}{precision_note(st)}, atoms' partial whitening alpha = {alpha_note(results)}, L0 matched on "
            f"{st.get('l0_matched_on')}; R² on held-out entities, raw and in the reference AIP.")
        r.table(["unit", *FRONTIER_KEYS], [[x["unit"], *[x.get(k) for k in FRONTIER_KEYS]] for x in rows])
        _stability(r, [x for x in rows if x.get("seed_consistency") is not None])
    paper = results.get("paper_regime") or {}
    if paper:
        r.h("The paper's regime (width = n_train)")
        r.p("Regime: atoms built by the TSAE theorem's construction on the training samples (width = the number of "
            "training rows), jumprelu features at the same width and L0 beside them.")
        r.table(["unit", "n_train", *PAPER_REGIME_KEYS],
                [[u, x.get("n_train"), *[x.get(k) for k in PAPER_REGIME_KEYS]] for u, x in paper.items()])


def _stability(r: Report, rows: list[dict]) -> None:
    if rows:
        r.h("Stability across seeds and widths (frontier)")
        r.p("Regime: at each L0 listed, a second seed of the same config and a twin at twice the width, trained on the "
            "same rows; the live unit rows matched one to one (Hungarian) on |cos| in the reference AIP; consistency = "
            f"the share of units matched at |cos| ≥ {MATCH_THRESHOLD:g}, `_mean_cos` the mean matched |cos|; q* (b) and R² on held-out "
            "entities.")
        r.table(["unit", "target_l0", *STABILITY_KEYS], [[x["unit"], x["target_l0"], *[x.get(k) for k in STABILITY_KEYS]]
                                                         for x in rows])


def _geometry_and_capacity(r: Report, results: dict) -> None:
    layers = (results.get("geometry") or {}).get("by_layer") or {}
    if layers:
        r.h("Geometry: angular centroid by layer (degrees)")
        r.p("Regime: the AIP fitted on the train entities' activations at each layer; held-out entities and another "
            "prompt family (reasoning prompts) test it out of sample.")
        r.table(["layer", "Euclid", "AIP", "AIP held-out", "AIP other family"],
                [[int(k), v["euclid"]["mean"], v["aip"]["mean"], v.get("aip_heldout", {}).get("mean"),
                  v.get("aip_other_family", {}).get("mean")] for k, v in sorted(layers.items(), key=lambda kv: int(kv[0]))])
    cap = results.get("capacity") or []
    if cap:
        r.h("Capacity")
        r.p(f"Regime: one {cap[0].get('architecture', 'SAE')} per width, {cap[0].get('steps')} steps, on "
            f"{cap[0].get('n_train')} train rows.")
        r.table(["expansion", "d_sae", "R² train", "R² held-out", "L0 train"],
                [[c["expansion"], c.get("d_sae"), c["r2"], c["r2_heldout"], c.get("l0_train")] for c in cap])


def _steering(r: Report, results: dict) -> None:
    st = results.get("steering") or {}
    if not st:
        return
    budget = (results.get("steering_details") or {}).get("config", {}).get("kl_budget")
    r.h("Steering")
    r.p(f"Regime: held-out cities steered to a target country; each method's strength chosen on validation prompts "
        f"within a KL budget of {fmt(budget, 1)} nats on unrelated prompts; success = the target is the top-1 next "
        "token on test prompts; ± = binomial standard error.")
    r.table(["method", "success", "± SE", "KL unrelated", "prompts"],
            [[m, v["success_rate"], success_se(v["success_rate"], v["n_prompts"]), v["kl_unrelated"], v.get("n_prompts")]
             for m, v in sorted(st.items(), key=lambda kv: -kv[1]["success_rate"])])


def _relations(r: Report, results: dict) -> None:
    for rel, t in (results.get("steering_relations") or {}).items():
        r.p(f"{rel.replace('_', ' -> ')}: every method at the difference of means' validation KL (test prompts, seeds pooled; "
            "± SE over prompts); CounterFact-style harmonic mean of efficacy, paraphrase and neighbourhood; steered generation.")
        r.table(["method", "success at equal KL", "± SE", "paired diff vs DoM", "± SE", "within DoM's KL", "paired", "± SE",
                 "CounterFact hmean", "CounterFact hmean within DoM's KL", "gen concept",
                 "gen perplexity", "gen concept at DoM's perplexity"],
                [[m, v.get("success_equal_kl"), v.get("success_equal_kl_se"), v.get("paired_diff_vs_dom"),
                  v.get("paired_diff_vs_dom_se"), v.get("success_within_kl_ref"), v.get("paired_within_vs_dom"),
                  v.get("paired_within_vs_dom_se"), v.get("counterfact_hmean"), v.get("counterfact_hmean_within"),
                  v.get("gen_concept"), v.get("gen_perplexity"),
                  v.get("gen_concept_equal_ppl")]
                 for m, v in t.items()])


def findings(results: dict[str, Any]) -> Report:
    """The findings of a main-job ``results`` dict as a ``Report`` (every number read from ``results``)."""
    r = Report("Findings")
    cmd = "sae-atoms reproduce" + (" --quick" if results.get("quick") else "")
    r.p(f"<!-- written by `{cmd} --findings docs/FINDINGS.md` from its results.json; do not edit by hand -->")
    r.p(_run_line(results))
    r.h("Reading")
    r.bullets(reading(results))
    _units(r, results)
    _frontier(r, results)
    _geometry_and_capacity(r, results)
    _steering(r, results)
    _relations(r, results)
    return r


def write_findings(results: dict[str, Any], path: str | Path) -> Path:
    """Write ``findings(results)`` as Markdown to ``path`` (atomically); returns the path."""
    return write_text(path, findings(results).markdown() + "\n")
