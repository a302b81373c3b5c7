"""Tests of the equal-KL comparison and the CounterFact-style scores (steering.equal_kl)."""

from __future__ import annotations

import math

import pytest
import torch

from sae_atoms.experiments import steering as steer_exp
from sae_atoms.experiments.steering import equal_kl, search
from sae_atoms.experiments.steering.methods import Method


def test_interpolate_finds_the_strength_of_a_known_kl_curve():
    pts = [(s, s / 10) for s in (1.0, 2.0, 4.0, 8.0)]  # KL linear in strength
    assert equal_kl.interpolate(pts, 0.4) == pytest.approx(4.0)
    assert equal_kl.interpolate(pts, 0.3) == pytest.approx(2 * 2 ** 0.5)  # log-linear between 2 and 4: 2.83 (true: 3)
    assert equal_kl.interpolate(pts, 0.05) == pytest.approx(0.5)  # from the origin: linear
    assert equal_kl.interpolate(pts, 5.0) is None  # no point above: the caller grows the strength


def test_equal_kl_steps_reach_the_reference_kl_on_a_known_curve(monkeypatch):
    cfg = steer_exp.steer_config(grid_growth=2.0)
    ev = {"paraphrase": {"A": [1, 2]}}
    run = search.Run(None, cfg, ["A"], {"A": 0}, ev, {})
    asked = []

    def answer(run_, asks):
        out = []
        for a in asks:
            asked.append((a.what, a.split, a.m.strength))
            kl = torch.full((4,), a.m.strength ** 2 / 100)  # KL quadratic in strength: k = 0.49 at 7
            if a.what == "side":
                out.append(torch.stack([kl, torch.tensor([1.0, 1.0, 0.0, 1.0])], 1))
            elif a.what == "kl":
                out.append(kl)
            else:
                hit = [1, 0] if a.split == "test" else [1, 1]
                out.append({"success_rate": 0.5, "efficacy": 0.75 if a.split == "test" else 1.0, "n_prompts": 2,
                            "per_target": {"A": {"hits": hit}}})
        return out

    monkeypatch.setattr(search, "answer", answer)
    sweep = [{"strength": s, "kl_unrelated": s ** 2 / 100} for s in (2.0, 4.0, 8.0)]
    r = search.run_steps(run, equal_kl.equal_kl_steps(run, Method(name="m", unit="u", grid=()), sweep, 0.49))
    assert abs(r["val_kl"] - 0.49) <= equal_kl.TOL * 0.49 and r["strength"] == pytest.approx(7.0, rel=0.06) and r["reached"]
    assert [w for w, *_ in asked if w == "kl"] and all(s == r["strength"] for w, sp, s in asked if sp != "val")
    assert (r["neighbourhood"], r["efficacy"], r["paraphrase"], r["hits"]) == (0.75, 0.75, 1.0, [1, 0])
    # the reference's own point: nothing to refine, the test read at its strength
    asked.clear()
    r = search.run_steps(run, equal_kl.equal_kl_steps(run, Method(name="m", unit="u", grid=()), sweep, 0.16))
    assert r["strength"] == 4.0 and not [a for a in asked if a[0] == "kl"]
    # past the strongest point: extrapolated as KL ~ strength^2 (here exact), so one round reaches it
    asked.clear()
    r = search.run_steps(run, equal_kl.equal_kl_steps(run, Method(name="m", unit="u", grid=()), sweep[:1], 0.36))
    assert [s for w, _, s in asked if w == "kl"] == [pytest.approx(6.0)] and r["reached"]
    # a method that never spends the reference KL grows and keeps its nearest point
    flat = [{"strength": s, "kl_unrelated": 0.01} for s in (1.0, 2.0)]
    flat_kls = []
    monkeypatch.setattr(search, "answer", lambda run_, asks: [
        flat_kls.append(a.m.strength) or torch.full((2,), 0.01) if a.what == "kl" else answer(run_, [a])[0] for a in asks])
    r = search.run_steps(run, equal_kl.equal_kl_steps(run, Method(name="m", unit="u", grid=()), flat, 0.5))
    assert r["strength"] == 1.0 and r["val_kl"] == 0.01 and not r["reached"]  # grew 4x a round: no closer, the first kept
    assert flat_kls == [8.0, 32.0, 128.0, 512.0]


def test_a_method_that_peaks_below_the_reference_kl_is_also_read_at_its_peak(monkeypatch):
    cfg = steer_exp.steer_config()
    run = search.Run(None, cfg, ["A"], {"A": 0}, {"paraphrase": {}}, {})
    asked = []

    def answer(run_, asks):  # KL = strength^2 / 100; on test, success only at strength 3 (the peak)
        asked.extend((a.what, a.split, a.m.strength) for a in asks)
        return [torch.full((2,), a.m.strength ** 2 / 100) if a.what == "kl"
                else torch.stack([torch.full((2,), a.m.strength ** 2 / 100), torch.ones(2)], 1) if a.what == "side"
                else {"success_rate": float(a.m.strength == 3.0), "logprob_gain": 0.0, "efficacy": 1.0, "n_prompts": 2,
                      "per_target": {"A": {"hits": [int(a.m.strength == 3.0)] * 2}}} for a in asks]

    monkeypatch.setattr(search, "answer", answer)
    sweep = [{"strength": s, "kl_unrelated": s ** 2 / 100, "success_rate": v, "logprob_gain": v}
             for s, v in ((1.0, 0.2), (3.0, 0.7), (5.0, 0.4))]  # success peaks at 3 (KL 0.09), falls by 5 (0.25)
    r = search.run_steps(run, equal_kl.equal_kl_steps(run, Method(name="m", unit="u", grid=()), sweep, 0.36))
    assert r["strength"] > 5.0 and r["reached"] and r["hits"] == [0, 0]  # at the reference's KL: past the peak
    assert r["within"]["strength"] == 3.0 and r["within"]["hits"] == [1, 1] and ("success", "test", 3.0) in asked
    assert ("side", "test", 3.0) in asked and r["within"]["test_kl"] == pytest.approx(0.09)  # its side effects read there
    assert r["within"]["efficacy"] == 1.0 and r["within"]["neighbourhood"] == 1.0 and r["test_kl"] > 0.25
    assert equal_kl.within(sweep, 0.05) == sweep[0] and equal_kl.within(sweep, 0.005) is None
    r = search.run_steps(run, equal_kl.equal_kl_steps(run, Method(name="m", unit="u", grid=()), sweep[2:], 0.25))
    assert r["within"]["strength"] == 5.0  # at most the reference's KL (within TOL): the point itself
    # a sweep that starts above the reference's KL: the equal-KL point, weaker than the grid, is the within point
    asked.clear()
    r = search.run_steps(run, equal_kl.equal_kl_steps(run, Method(name="m", unit="u", grid=()), sweep[2:], 0.09))
    assert r["reached"] and r["within"]["strength"] == r["strength"] < 5.0 and r["within"]["hits"] == r["hits"]
    assert ("success", "val", r["strength"]) in asked  # its validation success was read to compare it
    assert {s for w, sp, s in asked if w == "side"} == {r["strength"]} and r["within"]["test_kl"] == r["test_kl"]


def test_each_test_reading_is_made_once(monkeypatch):
    """The reference's own point is its equal-KL, within and chosen point: each test reading is made
    once there, none again when the chosen strength's are known, and the validation success is the sweep's."""
    cfg = steer_exp.steer_config()
    run = search.Run(None, cfg, ["A"], {"A": 0}, {"paraphrase": {"A": [1]}}, {})
    asked = []

    def answer(run_, asks):  # KL = strength^2 / 100; on test, a hit only at strength 2
        asked.extend((a.what, a.split, a.m.strength) for a in asks)
        return [torch.stack([torch.full((2,), a.m.strength ** 2 / 100), torch.ones(2)], 1) if a.what == "side"
                else {"success_rate": float(a.m.strength == 2.0), "logprob_gain": 0.0, "efficacy": float(a.m.strength == 2.0),
                      "n_prompts": 2, "per_target": {"A": {"hits": [int(a.m.strength == 2.0), 0]}}} for a in asks]

    monkeypatch.setattr(search, "answer", answer)
    m = Method(name="m", unit="u", grid=())
    sweep = [{"strength": s, "kl_unrelated": s ** 2 / 100, "success_rate": v, "logprob_gain": v}
             for s, v in ((1.0, 0.2), (2.0, 0.6), (3.0, 0.4))]
    fresh = search.run_steps(run, equal_kl.equal_kl_steps(run, m, sweep, 0.04))
    assert sorted(asked) == [("side", "test", 2.0), ("success", "paraphrase", 2.0), ("success", "test", 2.0)]
    assert fresh["strength"] == fresh["within"]["strength"] == 2.0 and fresh["hits"] == fresh["within"]["hits"] == [1, 0]
    known = {2.0: dict(zip(("side", "test"), answer(run, [search.Ask("side", m.at(2.0), "test"),
                                                          search.Ask("success", m.at(2.0), "test")])))}
    asked.clear()
    assert search.run_steps(run, equal_kl.equal_kl_steps(run, m, sweep, 0.04, known=known)) == fresh
    assert asked == [("success", "paraphrase", 2.0)]
    asked.clear()  # known at another strength: not used here
    wrong = {1.0: {"side": known[2.0]["side"] * 0, "test": known[2.0]["test"] | {"per_target": {"A": {"hits": [0, 0]}}}}}
    assert search.run_steps(run, equal_kl.equal_kl_steps(run, m, sweep, 0.04, known=wrong)) == fresh and len(asked) == 3


def test_success_kl_area_is_the_mean_best_success_over_budgets():
    sweep = [{"kl_unrelated": 0.5, "success_rate": 0.4}, {"kl_unrelated": 0.25, "success_rate": 0.2},
             {"kl_unrelated": 0.75, "success_rate": 0.1}, {"kl_unrelated": 2.0, "success_rate": 1.0}, {"kl_unrelated": 3.0}]
    # b(x) = 0 on [0, .25), 0.2 on [.25, .5), 0.4 on [.5, 1]: the point past the budget does not count
    assert equal_kl.success_kl_area(sweep, 0.0, 1.0) == pytest.approx(0.25 * 0.2 + 0.5 * 0.4)
    assert equal_kl.success_kl_area([], 0.3, 1.0) == pytest.approx(0.3)


def test_summarise_pairs_prompts_with_the_reference():
    run = lambda hits, e, w=None: {"hits": hits, "n_prompts": len(hits), "kl_ref": 0.5, "val_kl": 0.5, "test_kl": 0.4,  # noqa: E731
                                   "strength": 1.0, "efficacy": e, "paraphrase": 0.5, "neighbourhood": 1.0, "reached": True,
                                   "within": {"hits": hits if w is None else w, "efficacy": e + 0.25, "paraphrase": 0.6,
                                              "neighbourhood": 0.8 if w else 1.0, "test_kl": 0.2}}
    m = [run([1, 1, 0, 1], 0.75, [1, 1, 1, 1]), run([1, 0], 0.5, [1, 1])]
    ref = [run([1, 0, 0, 0], 0.25), run([0, 0], 0.0)]
    s = equal_kl.summarise(m, ref)
    # the CounterFact-style scores at the within point: pooled over prompts as at equal KL
    assert s["efficacy_within"] == pytest.approx((1.0 * 4 + 0.75 * 2) / 6) and s["test_kl_within"] == pytest.approx(0.2)
    assert s["counterfact_hmean_within"] == pytest.approx(3 / (1 / s["efficacy_within"] + 1 / 0.6 + 1 / 0.8))
    none = [r | {"within": {"hits": [0] * r["n_prompts"], "efficacy": None, "paraphrase": None, "neighbourhood": None,
                            "test_kl": None}} for r in m]  # no point within the reference's KL: no reading there
    assert equal_kl.summarise(none, ref)["counterfact_hmean_within"] is None
    d = [0, 1, 0, 1, 1, 0]
    # within the reference's KL the method is read at its own best point: all six hit, the reference one of six
    assert s["success_within_kl_ref"] == 1.0 and s["paired_within_vs_dom"] == pytest.approx(5 / 6)
    assert s["paired_diff_vs_dom"] == pytest.approx(0.5)
    assert s["paired_diff_vs_dom_se"] == pytest.approx(torch.tensor(d, dtype=torch.float64).std().item() / math.sqrt(6))
    assert s["success_equal_kl"] == pytest.approx(4 / 6) and s["efficacy"] == pytest.approx((0.75 * 4 + 0.5 * 2) / 6)
    assert s["counterfact_hmean"] == pytest.approx(3 / (1 / s["efficacy"] + 2 + 1))
    assert equal_kl.summarise(ref, ref)["paired_diff_vs_dom"] == 0.0
    assert equal_kl.hmean(0.0, 1.0, 1.0) == 0.0 and equal_kl.hmean(None, 1.0) is None


def test_generation_scores_count_the_target_in_continuations(monkeypatch):
    from sae_atoms.experiments.steering import generation

    class Tok:
        def decode(self, ids):
            return " ".join({1: "we saw India", 2: "nothing here", 3: "INDIAN food"}[i] for i in ids)

    model = type("M", (), {"tokenizer": Tok()})()
    monkeypatch.setattr(generation, "log_perplexity", lambda model_, prompts, conts: torch.tensor([math.log(4.0)] * len(conts)))
    s = generation.scores(model, ["India"], ["a", "b", "c"], {"India": [[1], [2], [3]]})
    assert s["concept"] == pytest.approx(2 / 3) and s["perplexity"] == pytest.approx(4.0) and s["n"] == 3
    assert s["examples"]["India"] == "awe saw India"
    two = generation.scores(model, ["India", "here"], ["a", "b", "c"], {"India": [[1], [2], [3]], "here": [[1], [1], [2]]})
    assert two["concept_by_target"] == pytest.approx({"India": 2 / 3, "here": 1 / 3}) and two["n"] == 6
    assert two["concept"] == pytest.approx(3 / 6)  # every continuation counted once


def test_pooled_generation_averages_each_target_over_seeds():
    from sae_atoms.experiments.steering.seeds import pooled_generation

    gens = [{"concept": 0.5, "perplexity": 2.0, "concept_by_target": {"a": 1.0, "b": 0.0}},
            {"concept": 0.25, "perplexity": 8.0, "concept_by_target": {"a": 0.5, "b": 0.0}}]
    p = pooled_generation(gens)
    assert p["concept"] == pytest.approx(0.375) and p["perplexity"] == pytest.approx(4.0)
    assert p["concept_by_target"] == pytest.approx({"a": 0.75, "b": 0.0})
    assert "concept_by_target" not in pooled_generation([gens[0], {"concept": 0.0, "perplexity": 1.0}])  # results of before
