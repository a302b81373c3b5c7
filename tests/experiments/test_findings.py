"""FINDINGS.md is generated from a results dict: every number comes from the results, a changed result changes the file."""

import copy

from sae_atoms.experiments.findings import write_findings
from tests.experiments.test_report import _frontier_rows, _method, _results


def _full() -> dict:
    res = _results({"atoms": _method(0.625, 16), "diff_of_means": _method(0.4375, 16)})
    res["frontier"] = _frontier_rows()
    res["frontier_settings"] = {"d_sae": 8, "expansion": 1, "steps": 3, "batch_size": 16, "atoms_alpha": 0.35,
                                "l0_matched_on": "validation entities"}
    res["capacity"] = [{"expansion": 1.0, "d_sae": 8, "n_train": 100, "r2": 0.71, "r2_heldout": 0.64, "l0_train": 3.0,
                        "architecture": "tsae_aip", "steps": 75}]
    return res


def test_findings_are_written_from_the_results(tmp_path):
    res = _full()
    text = write_findings(res, tmp_path / "docs" / "FINDINGS.md").read_text()
    assert text.startswith("# Findings") and "do not edit by hand" in text
    for heading in ("Units", "Sparsity frontier", "Geometry", "Capacity", "Steering", "Reading"):
        assert f"## {heading}" in text, heading
    assert "0.625" in text and "0.438" in text and "0.640" in text  # steering success, capacity R² held-out
    assert "matched L0 = 16" in text and "`--quick` run" in text

    changed = copy.deepcopy(res)
    changed["units"]["atoms"]["r2_heldout"] = 0.123
    other = write_findings(changed, tmp_path / "other.md").read_text()
    assert other != text and "0.123" in other and "0.123" not in text


def test_findings_show_seed_and_width_consistency_for_the_rows_that_have_them(tmp_path):
    res = _full()
    assert "## Stability across seeds" not in write_findings(res, tmp_path / "F0.md").read_text()
    res["frontier"][0] |= {"seed_consistency": 0.125, "seed_mean_cos": 0.25, "width_consistency": 0.375, "width_mean_cos": 0.5}
    text = write_findings(res, tmp_path / "F.md").read_text().split("## Stability across seeds", 1)[1].split("\n## ", 1)[0]
    assert "| 0.125 | 0.250 | 0.375 | 0.500 |" in text and text.count("\n| ") == 2  # header and the one row that has them


def test_findings_of_a_run_without_optional_stages(tmp_path):
    res = _results({})
    text = write_findings(res, tmp_path / "F.md").read_text()
    assert "## Units" in text and "## Steering" not in text and "## Capacity" not in text


def test_relations_reading_states_the_three_checks_per_relation():
    from sae_atoms.experiments.reading import relations_reading

    row = lambda s, d, se, h, c, p, ce=None, dom=False: {  # noqa: E731
        "success_equal_kl": s, "paired_diff_vs_dom": d, "paired_diff_vs_dom_se": se, "counterfact_hmean": h, "gen_concept": c,
        "gen_perplexity": p, "gen_concept_equal_ppl": ce, "gen_dominates_dom": dom, "gen_curve": [{"scale": 1.0}, {"scale": 2.0}]}
    t = {"diff_of_means": row(0.5, 0.0, 0.0, 0.6, 0.4, 20.0, 0.4, True), "atoms": row(0.7, 0.2, 0.05, 0.7, 0.5, 15.0, 0.5, True),
         "atoms_swap": row(0.6, 0.1, 0.05, 0.8, 0.1, 9.0, 0.1), "features_jumprelu": row(0.1, -0.4, 0.05, 0.75, 0.0, 5.0, 0.0),
         "no_intervention": {"gen_concept": 0.125, "gen_perplexity": 4.0}}
    text, = relations_reading({"country_language": t})
    assert "names the target in 0.40 of continuations at perplexity 20.0 (unsteered 0.12); at no more" in text
    assert "country -> language" in text and "atoms 0.700 vs 0.500" in text and "+0.200 ± 0.050" in text
    assert "significant at" in text and "not significant" not in text and "best of 2 atoms methods" in text
    assert "atoms_swap 0.800" in text and "atoms lead it" in text  # the best atoms hmean beats DoM's and the features'
    assert "at no more perplexity atoms names it in 0.50 (best over its scales x1/x2; atoms reach it, and reach" in text
    t["features_jumprelu"]["counterfact_hmean"] = 0.9
    t["atoms"]["gen_concept_equal_ppl"] = None  # no scale of atoms as fluent as the difference of means: atoms_swap's 0.1 is read
    text, = relations_reading({"country_language": t})
    assert "atoms_swap names it in 0.10" in text
    assert "atoms do not lead it" in text and "atoms do not reach it" in text
    assert "Within that KL" not in text  # results from before the within reading: no sentence
    for m, w, d in (("diff_of_means", 0.5, 0.0), ("atoms", 0.55, 0.05), ("atoms_swap", 0.6, 0.1), ("features_jumprelu", 0.2, -0.3)):
        t[m] |= {"success_within_kl_ref": w, "paired_within_vs_dom": d, "paired_within_vs_dom_se": 0.04}
    text, = relations_reading({"country_language": t})
    assert "Within that KL (each method at its best point with no more): atoms_swap 0.600 vs 0.500, paired difference " \
           "+0.100 ± 0.040 (SE; significant at" in text
    assert "harmonic mean within" not in text  # no CounterFact-style scores at the within points: no sentence
    for m, h in (("diff_of_means", 0.6), ("atoms", 0.82), ("atoms_swap", 0.7), ("features_jumprelu", 0.8)):
        t[m]["counterfact_hmean_within"] = h
    text, = relations_reading({"country_language": t})
    assert "harmonic mean within the difference of means' KL: atoms 0.820, diff_of_means 0.600, features_jumprelu 0.800; " \
           "atoms lead it." in text and "atoms do not lead it" in text  # at equal KL they still do not


def test_binding_reading_names_the_bound_the_coherence_and_the_k_it_allows():
    from sae_atoms.experiments.reading import binding_reading

    row = {"unit": "atoms", "target_l0": 8.0, "l0_p50_heldout": 8.0, "mu_sample_p50_heldout": 0.2, "q_star_b_heldout": 0.1,
           "bound_ratio_p50_heldout": 3.0, "k_allowed_p50_heldout": 2.0, "amplitude_gap_sample_pos_frac_heldout": 0.25}
    (text,) = binding_reading([row, row | {"unit": "features_jumprelu"}, row | {"target_l0": 1.0, "l0_p50_heldout": 1.0}])
    assert "atoms: " in text and "L0 8: q* (b) 0.100, median K 8, bound 0.067, median co-active μ 0.200 (ratio 3.0; " \
                                "that μ allows K ≤ 2)" in text
    assert "amplitude gap > 0 on 25% of samples" in text and text.count("L0 ") == 1  # atoms only, K >= 2 only
    both = binding_reading([row, row | {"unit": "atoms_stable", "q_star_b_heldout": 0.7}])
    assert len(both) == 2 and "atoms_stable: " in both[1] and "q* (b) 0.700" in both[1]
    assert binding_reading([{"unit": "atoms", "target_l0": 8.0}]) == []  # rows from before the columns
    (split,) = binding_reading([row | {"q_star_b_k_upto_p50_heldout": 0.2, "q_star_b_k_above_p50_heldout": 0.0}])
    assert "q* (b) 0.200 on samples with K ≤ 8 and 0.000 above" in split  # the K tail
    assert "samples with K" not in text  # rows from before the split


def test_consistency_reading_puts_each_kind_of_atoms_against_the_best_other_unit_kind():
    from sae_atoms.experiments.reading import consistency_reading

    row = lambda u, s, w, t=8.0: {"unit": u, "target_l0": t, "seed_consistency": s, "width_consistency": w}  # noqa: E731
    rows = [row("atoms", 0.5, 0.25), row("atoms_stable", 0.75, 0.5), row("features_topk", 0.625, 0.125),
            row("features_standard", 0.0, 1.0), {"unit": "atoms", "target_l0": 16.0}]
    (text,) = consistency_reading(rows)  # L0 16 has no consistency columns: no sentence
    assert "at L0 8 " in text and "atoms 0.500 / 0.250, atoms_stable 0.750 / 0.500" in text
    assert "best other unit kind features_topk 0.625 / 0.125; atoms do not lead it" in text  # atoms 0.5 < 0.625
    rows[0]["seed_consistency"] = 0.875
    assert "atoms lead it" in consistency_reading(rows)[0]
    assert consistency_reading([{"unit": "atoms", "target_l0": 8.0}]) == []


def test_report_and_findings_name_autocast_exactly_when_the_frontier_used_it(tmp_path):
    from sae_atoms.experiments.report import write_report

    for autocast in (True, False):
        res = _full()
        res["frontier_settings"] |= {"autocast": autocast}
        findings = write_findings(res, tmp_path / f"F{autocast}.md").read_text()
        report = write_report(res, tmp_path / f"r{autocast}")[0].read_text()
        for text in (findings, report):
            frontier = text.split("## Sparsity frontier", 1)[1].split("\n## ", 1)[0]
            assert ("16 under bfloat16 autocast" in frontier) == autocast


def test_report_and_findings_name_the_alpha_of_a_unit_that_trains_at_another_than_the_atoms(tmp_path):
    from sae_atoms.experiments.report import write_report

    for alphas, note in (({"atoms": 0.35, "atoms_stable": 0.2}, "alpha = 0.35 (atoms_stable 0.2)"),
                         ({"atoms": 0.35, "atoms_stable": 0.35}, "alpha = 0.35")):
        res = _full()
        res["metric"] = {"reference": {"alpha": 1.0}} | {u: {"alpha": a} for u, a in alphas.items()}
        for text in (write_findings(res, tmp_path / "F.md").read_text(), write_report(res, tmp_path / "r")[0].read_text()):
            frontier = text.split("## Sparsity frontier", 1)[1].split("\n## ", 1)[0]
            assert note in frontier and ("atoms_stable 0.2" in frontier) == (alphas["atoms_stable"] == 0.2)
