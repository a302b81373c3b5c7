"""The report and its reading on synthetic results dicts: what the numbers support, each table with its text."""

import pytest

from sae_atoms.experiments.reading import compare_rates, reading, steering_reading, success_se
from sae_atoms.experiments.report import write_report


def _method(rate: float, n: int, kl: float = 0.5) -> dict:
    return {"success_rate": rate, "n_prompts": n, "kl_unrelated": kl, "logprob_gain": 1.0, "n_targets": 3,
            "seeds": [0], "strength_per_seed": [2.0], "within_budget": True}


def _layer(aip: float, heldout: float, other: float) -> dict:
    return {"euclid": {"mean": 50.0, "median": 50.0, "mode": 50.0}, "aip": {"mean": aip, "median": aip, "mode": aip},
            "aip_heldout": {"mean": heldout}, "aip_other_family": {"mean": other}}


def _unit(r2: float, r2_heldout: float) -> dict:
    return {"r2": r2, "r2_heldout": r2_heldout, "l0": 16.0, "mu": 0.3, "q_star_a": 0.2, "q_star_b": 0.1,
            "monosemanticity": 0.4}


def _results(steering: dict, other: float = 89.8) -> dict:
    return {"model": "m", "hook_name": "blocks.1.hook_resid_post", "n_train": 100, "n_heldout": 20, "quick": True,
            "geometry": {"euclid_centroid_deg": 50.0, "aip_centroid_deg": 90.0, "aip_heldout_centroid_deg": 90.2,
                         "by_layer": {"0": _layer(90.0, 90.2, other), "1": _layer(89.9, 90.3, other + 1)}},
            "units": {"neurons": _unit(1.0, 1.0), "features_standard": _unit(0.5, -1.17),
                      "features_jumprelu": _unit(0.6, 0.4), "atoms": _unit(0.7, 0.5)},
            "units_l0": 16.0, "paper": {"atoms": {"r2": 0.999, "q_star": 0.998}},
            "metric": {"reference": {"kind": "centered", "shrinkage": 0.01}},
            "steering": steering, "steering_details": {"config": {"kl_budget": 1.0}}}


def test_success_se_is_the_binomial_standard_error():
    assert success_se(0.5, 100) == pytest.approx(0.05)
    assert success_se(0.0, 12) == 0.0
    c = compare_rates(_method(0.5, 100), _method(0.5, 100))
    assert c["diff"] == 0 and not c["significant"]
    with pytest.raises(ValueError, match="n >= 1"):
        success_se(0.5, 0)


def test_a_steering_difference_within_noise_is_not_significant():
    # 8 vs 7 successes of 12 prompts (a --quick run): no direction may be claimed
    lines = steering_reading({"atoms_transfer": _method(8 / 12, 12), "diff_of_means": _method(7 / 12, 12)})
    text = " ".join(lines)
    assert "not significant" in lines[0] and "do not tell atoms and the difference of means apart" in lines[0]
    assert "steer better" not in text and "steer more often" not in text
    assert "8/12" in lines[0] and "7/12" in lines[0] and f"{success_se(8 / 12, 12):.3f}" in lines[0]


def test_a_significant_steering_difference_is_claimed_with_its_error():
    st = {"atoms_transfer": _method(100 / 128, 128), "atoms": _method(60 / 128, 128),
          "diff_of_means": _method(50 / 128, 128), "features_jumprelu": _method(95 / 128, 128)}
    lines = steering_reading(st)
    c = compare_rates(st["atoms_transfer"], st["diff_of_means"])
    assert c["significant"] and c["z"] > 1.96
    assert "atoms steer more often than the difference-of-means baseline" in lines[0] and "not significant" not in lines[0]
    assert "best of 2 atoms methods" in lines[0]  # the pick among atoms methods is named
    assert "not significant" in lines[1]  # vs features: 100 vs 95 of 128
    assert "within noise of it: features_jumprelu" in lines[2]
    worse = steering_reading({"atoms": _method(20 / 128, 128), "diff_of_means": _method(80 / 128, 128)})
    assert "atoms steer less often than" in worse[0]


def test_geometry_reading_does_not_call_an_other_family_miss_reproduced():
    far = " ".join(reading(_results({}, other=40.0)))
    assert "0/2 on another prompt family" in far and "40.0–41.0°" in far
    assert "reproduced for the entities of the family the metric was fitted on, not for another family" in far
    near = " ".join(reading(_results({}, other=89.8)))
    assert "2/2 on another prompt family" in near and "reproduced." in near and "not for another family" not in near


def test_negative_r2_is_named_and_explained():
    text = " ".join(reading(_results({})))
    assert "features_standard r2_heldout -1.17" in text and "further from the activations than their mean" in text
    res = _results({})
    res["units"]["features_standard"]["r2_heldout"] = 0.3
    assert "Negative R²" not in " ".join(reading(res))


def _frontier_rows() -> list[dict]:
    keys = ("l0", "l0_val", "l0_heldout", "r2", "r2_heldout", "r2_aip", "r2_aip_heldout", "q_star_a", "q_star_b",
            "q_star_b_heldout", "dead_frac", "monosemanticity")
    return [{"unit": u, "target_l0": t, **{k: (t if k.startswith("l0") else 0.1 * i) for k in keys}}
            for i, u in enumerate(("atoms", "tsae", "features_jumprelu")) for t in (8.0, 16.0)]


def test_report_keeps_each_table_with_its_heading_and_text(tmp_path):
    res = _results({"atoms_transfer": _method(8 / 12, 12), "diff_of_means": _method(7 / 12, 12)})
    res |= {"frontier": _frontier_rows(), "frontier_settings": {"d_sae": 64, "expansion": 1, "steps": 10}}
    md = write_report(res, tmp_path)[0].read_text()
    section = md.split("## Neurons vs features vs atoms", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4  # header + the four unit kinds, no steering rows appended
    assert "SAE units at matched L0 = 16" in section and "Full frontier (L0 8–16)" in section
    assert "R² is pooled over dimensions" in section and "atoms_transfer" not in section
    steer = md.split("## Causal steering", 1)[1]
    assert "| atoms_transfer |" in steer and f"{8 / 12:.3f} ± {success_se(8 / 12, 12):.3f}" in steer
    assert "ATOM_THEORY" not in md and "arXiv 2509.20784" in md
    assert "{'" not in md and "(kind centered, shrinkage 0.010)" in md  # settings in words, not a Python dict


def test_timing_table_gives_each_stage_its_seconds_and_both_peaks(tmp_path):
    res = _results({}) | {"timing_s": {"frontier": 330.5, "steering": 280.1},
                          "peak_rss_mb": {"frontier": 2255, "steering": 3319},
                          "child_peak_rss_mb": {"frontier": 2411, "steering": 2411}}
    timing = write_report(res, tmp_path)[0].read_text().split("## Timing", 1)[1]
    rows = [line for line in timing.splitlines() if line.startswith("| ")]
    assert "largest child process's peak RSS" in rows[0]
    assert [c.strip() for c in rows[1].strip("|").split("|")] == ["frontier", "330.500", "2255", "2411"]
    assert "do not add up" in timing
