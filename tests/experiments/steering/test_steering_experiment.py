"""Tests of the steering experiment (sae_atoms.experiments.steering)."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

from sae_atoms import steering as st
from sae_atoms.experiments import steering as steer_exp
from sae_atoms.experiments.steering import generation, output, search
from sae_atoms.experiments.steering.methods import Method
from tests.conftest import REAL_HOOK
from tests.steering.test_steering import make_sae

def _steer_args(*argv: str):
    import argparse

    p = argparse.ArgumentParser()
    steer_exp.configure_parser(p)
    return p.parse_args(["--out", "x", *argv])


def test_steer_quick_keeps_explicit_flags_and_rejects_bad_values():
    args = _steer_args("--quick", "--alphas", "3", "5", "--targets", "3", "--n-eval", "5", "--n-unrelated", "6",
                       "--n-ablation", "7", "--fractions", "0.3", "0.9", "--transfer-error", "drop")
    cfg = steer_exp.steer_config(quick=True, **steer_exp.steer_overrides(args))
    assert (cfg.vector_strengths, cfg.n_targets, cfg.n_eval, cfg.n_unrelated, cfg.n_ablation) == ((3.0, 5.0), 3, 5, 6, 7)
    assert (cfg.fractions, cfg.transfer_error) == ((0.3, 0.9), "drop")
    quick = steer_exp.steer_config(quick=True, **steer_exp.steer_overrides(_steer_args("--quick")))
    assert quick.vector_strengths == steer_exp.QUICK["vector_strengths"] and quick.n_eval == steer_exp.QUICK["n_eval"]
    assert steer_exp.steer_overrides(_steer_args("--vector-strengths", "1.5"))["vector_strengths"] == (1.5,)  # --alphas' new name
    assert steer_exp.steer_overrides(_steer_args("--methods", "diff_of_means", "atoms_swap"))["methods"] == ("diff_of_means", "atoms_swap")
    assert steer_exp.steer_config(**steer_exp.steer_overrides(_steer_args())).methods == ()  # none named: all
    assert steer_exp.steer_config(**steer_exp.steer_overrides(_steer_args("--gen-scales", "1", "3"))).gen_scales == (1.0, 3.0)
    gen = steer_exp.steer_config(quick=True, **steer_exp.steer_overrides(_steer_args("--quick", "--gen-seeds", "2", "--gen-prompts", "3")))
    assert (gen.gen_seeds, gen.gen_prompts) == (2, 3) and quick.gen_prompts == steer_exp.QUICK["gen_prompts"]
    assert steer_exp.steer_config(**steer_exp.steer_overrides(_steer_args("--gate-q", "0.3", "0.7"))).gate_q == (0.3, 0.7)
    assert steer_exp.steer_config(**steer_exp.steer_overrides(_steer_args())).gate_q == steer_exp.SteerConfig().gate_q
    from sae_atoms.cli import main

    for bad in (["--alphas", "0", "-1"], ["--n-eval", "0"], ["--kl-budget", "nan"], ["--fractions", "-0.5"], ["--gen-scales", "0"],
                ["--gen-seeds", "-1"], ["--gen-prompts", "0"], ["--gate-q", "1.5"]):
        assert main(["steer", "--out", "/nonexistent/x", "--quick", *bad]) == 2


def test_chosen_methods_keep_the_built_order_and_name_the_choices_when_a_name_is_unknown():
    from sae_atoms.experiments.steering.seeds import chosen_methods

    built = [Method(name=n, unit="u", grid=(1.0,)) for n in ("diff_of_means", "atoms", "atoms_swap")]
    assert [m.name for m in chosen_methods(built, ("atoms_swap", "diff_of_means"))] == ["diff_of_means", "atoms_swap"]
    assert chosen_methods(built, ()) == built
    with pytest.raises(ValueError, match=r"\['atom_swap'\] are not methods.*'atoms_swap'"):
        chosen_methods(built, ("diff_of_means", "atom_swap"))  # a typo is an error, not a method silently left out


def test_generation_at_the_reference_perplexity_reads_each_curve_where_it_is_as_fluent():
    pt = lambda c, p, s=1.0: {"concept": c, "perplexity": p, "scale": s}  # noqa: E731
    curves = {"diff_of_means": [pt(0.0, 5.0, 0.5), pt(0.1, 30.0), pt(0.4, 80.0, 2.0)],  # scale 1: the reference point
              "fluent": [pt(0.0, 4.0), pt(0.2, 25.0), pt(0.5, 70.0)],    # above the reference at each of its points
              "costly": [pt(0.3, 40.0), pt(0.9, 200.0)],                  # never as fluent as the reference at scale 1
              "weak": [pt(0.05, 20.0), pt(0.1, 60.0)]}                    # as fluent, but names the target less
    e = generation.at_reference(curves, "diff_of_means")
    assert e["fluent"]["concept_equal_ppl"] == 0.2 and e["fluent"]["dominates_ref"]
    assert e["costly"]["concept_equal_ppl"] is None and not e["costly"]["dominates_ref"]
    assert e["weak"]["concept_equal_ppl"] == 0.05 and not e["weak"]["dominates_ref"]
    assert e["diff_of_means"]["concept_equal_ppl"] == 0.1 and e["diff_of_means"]["dominates_ref"]  # itself: equal
    assert all(v["ref_perplexity"] == 30.0 and v["ref_concept"] == 0.1 for v in e.values())
    assert generation.at_reference({"fluent": curves["fluent"]}, "diff_of_means") == {}


def fake_answers(monkeypatch, kl, success) -> None:
    """``search.answer`` from one function per kind of ask: ``kl(run, m, split)``, ``success(run, m, split)``."""
    monkeypatch.setattr(search, "answer", lambda run, asks: [(kl if a.what == "kl" else success)(run, a.m, a.split) for a in asks])


def test_validation_sweep_extends_past_the_grid_until_the_budget_binds_or_success_peaks(monkeypatch):
    cfg = steer_exp.steer_config(kl_budget=1.0, grid_growth=2.0)
    run = search.Run(None, cfg, ["A"], {"A": 0}, {}, {})
    peak = {"at": 16.0}

    def kl(run_, m, split):
        return torch.tensor([m.strength / 100.0])

    def success(run_, m, split):  # rises to the peak, then falls (a model pushed out of distribution)
        s = m.strength
        r = s / peak["at"] if s <= peak["at"] else max(0.0, 1 - (s - peak["at"]) / 64)
        return {"success_rate": r, "mean_rank": 1.0, "logprob_gain": r, "n_prompts": 1, "per_target": {}}

    fake_answers(monkeypatch, kl, success)
    m = Method(name="m", unit="u", grid=(1.0, 2.0))
    sw = search.val_sweep(run, m)
    assert [p["strength"] for p in sw] == [1, 2, 4, 8, 16, 32, 64]  # two steps past the peak at 16, then stop
    assert [bool(p.get("extended")) for p in sw] == [False, False] + [True] * 5
    assert search.choose_strength([p for p in sw if "success_rate" in p], 1.0)["strength"] == 16
    peak["at"] = 1000.0  # success never peaks: the budget (KL 1 at strength 100) stops the search
    sw = search.val_sweep(run, m)
    grown = [p for p in sw if not p.get("bisected")]
    assert grown[-1]["strength"] == 128 and "success_rate" not in grown[-1] and all("success_rate" in p for p in grown[:-1])
    assert [p["strength"] for p in sw if p.get("bisected")] == pytest.approx([math.sqrt(64 * 128), math.sqrt(math.sqrt(64 * 128) * 128)])
    run.cfg.n_bisect = 0
    run.cfg.grid_extend = 0  # no extension: the grid only
    assert [p["strength"] for p in search.val_sweep(run, m)] == [1, 2]


def test_validation_sweep_bisects_where_the_budget_binds_while_success_rises(monkeypatch):
    cfg = steer_exp.steer_config(kl_budget=1.0, n_bisect=2)
    run = search.Run(None, cfg, ["A"], {"A": 0}, {}, {})
    kl = lambda run_, m, split: torch.tensor([m.strength / 10.0])  # noqa: E731  (budget binds at 10)
    fake_answers(monkeypatch, kl, lambda run_, m, split: {
        "success_rate": m.strength / 100, "mean_rank": 1.0, "logprob_gain": m.strength, "n_prompts": 1, "per_target": {}})
    m = Method(name="m", unit="u", grid=(4.0, 8.0, 16.0))
    sw = search.val_sweep(run, m)
    a = [p["strength"] for p in sw]
    assert a[:3] == [4, 8, 16] and len(a) == 5  # grid (16 over budget: no extension), then 2 bisections
    assert a[3] == pytest.approx(math.sqrt(8 * 16)) and "success_rate" not in sw[3]  # 11.3: over the budget
    assert a[4] == pytest.approx(math.sqrt(8 * a[3])) and "success_rate" in sw[4]    # 9.5: within, and better
    assert all(p.get("bisected") for p in sw[3:])
    assert search.choose_strength([p for p in sw if "success_rate" in p], 1.0)["strength"] == pytest.approx(a[4])
    # success peaked below the budget: no bisection
    fake_answers(monkeypatch, kl, lambda run_, m, split: {
        "success_rate": 1 - abs(m.strength - 4) / 10, "mean_rank": 1.0, "logprob_gain": 0.0, "n_prompts": 1, "per_target": {}})
    assert [p["strength"] for p in search.val_sweep(run, m)] == [4, 8, 16]


@pytest.mark.real_model
def test_real_model_strength_zero_and_diff_of_means_steers(real_model, real_acts, fact_data):
    from sae_atoms.models import first_token_ids

    train = real_acts.select(split="train")
    rel = [i for i, r in enumerate(train.labels("relation")) if r == "city_country"]
    dom = st.diff_of_means(train.x(REAL_HOOK)[rel], [train.labels("country")[i] for i in rel], "China")
    rows = [r for r in fact_data.to_list() if r["relation"] == "city_country" and r["split"] == "heldout"
            and r["country"] not in ("China", "")][:8]
    P = steer_exp.Prompts(real_model, rows, 8)
    # strength 0: the same distribution, bit for bit
    same = P.run(lambda pos, rows: [st.AddDirection(REAL_HOOK, dom, 0.0, positions=pos, span="from")])
    assert torch.equal(same, P.clean)
    tok = first_token_ids(real_model, ["China"])[0]
    lp = P.run(lambda pos, rows: [st.AddDirection(REAL_HOOK, dom, 2.0, positions=pos, span="from")])
    assert (lp[:, tok] - P.clean[:, tok]).mean() > 1.0  # steering toward China raises its log-probability
    assert all(len(hp.fwd_hooks) == 0 for hp in real_model.hook_dict.values())


def planted_sae(x: torch.Tensor, labels: list, values: list, hook: str, n_random: int = 40, seed: int = 0):
    """An SAE whose first atoms are the unit difference-of-means directions of ``values``
    (known answer: selection must find them), the rest random; encoder = pseudo-inverse."""
    g = torch.Generator().manual_seed(seed)
    dirs = [st.diff_of_means(x, labels, v) for v in values]
    W = torch.cat([torch.stack(dirs), torch.randn(n_random, x.shape[1], generator=g) * x.std()])
    W = W / W.norm(dim=-1, keepdim=True)
    sae = make_sae(d_in=x.shape[1], d_sae=W.shape[0], hook=hook, W_dec=W)
    with torch.no_grad():
        sae.W_enc.copy_(torch.linalg.pinv(W))
        sae.b_dec.copy_(x.mean(0))
    return sae


@pytest.mark.slow
@pytest.mark.real_model
def test_steering_experiment_on_real_model(real_model, real_acts, fact_data, tmp_path):
    train = real_acts.select(split="train")
    rel = [i for i, r in enumerate(train.labels("relation")) if r == "city_country"]
    x, y = train.x(REAL_HOOK)[rel], [train.labels("country")[i] for i in rel]
    values = sorted({v for v in y if y.count(v) >= 12})
    atoms = planted_sae(x, y, values, REAL_HOOK)
    features = make_sae(d_in=x.shape[1], d_sae=256, hook=REAL_HOOK, seed=5)  # random directions
    cfg = steer_exp.steer_config(quick=True, relation="city_country", min_subjects=3, k=1, vector_strengths=(2.0,),
                                 strengths=(1.0, 4.0), n_eval=4, n_unrelated=4, n_ablation=6, n_random=1, n_seeds=2,
                                 n_targets=2, n_select=4, selection="activation", scale="typical", gen_scales=(1.0, 0.5))
    res = steer_exp.run_steering(real_model, {"atoms": atoms, "features_jumprelu": features}, fact_data, real_acts, cfg,
                                 out_dir=tmp_path, progress=False)
    assert set(res["methods"]) == {"diff_of_means", "random_direction", "atoms", "atoms_by_effect", "atoms_swap",
                                   "atoms_transfer", "features_jumprelu", "features_jumprelu_transfer", "atoms_gated",
                                   "atoms_transfer_gated", "features_jumprelu_gated", "features_jumprelu_transfer_gated"}
    # gated: country -> capital's subjects close the gate
    assert res["methods"]["atoms_by_effect"]["selection"] == "effect" and res["methods"]["atoms"]["selection"] == "activation"
    tr = res["methods"]["atoms_transfer"]
    assert set(tr["selection_per_seed"]) <= {"effect", "activation"} and 1 <= tr["pool_size"] <= atoms.cfg.d_sae
    assert tr["error_term"] == "subspace" and 1 <= tr["subspace_rank"] < x.shape[1]  # the countries' span, not all of it
    for m, r in res["methods"].items():
        grid = (res["config"]["fractions"] if m.endswith(("_transfer", "_transfer_gated")) else res["config"]["vector_strengths"]
                if m in ("diff_of_means", "random_direction") or m.endswith("_gated") else res["config"]["strengths"])
        assert r["seeds"] == [0, 1] and r["n_targets"] == 2
        assert 0 <= r["success_rate"] <= 1 and r["mean_rank"] >= 1 and r["kl_unrelated"] >= 0
        assert r["n_prompts"] == sum(p["n"] for p in r["per_target"].values())
        for sd in r["per_seed"].values():  # the grid, then strengths grown past it; the chosen one is among them
            a = [p["strength"] for p in sd["sweep"] if not p.get("bisected")]
            assert a[:len(grid)] == list(grid) and sd["strength"] in [p["strength"] for p in sd["sweep"]]
            assert all(y == pytest.approx(x * res["config"]["grid_growth"]) for x, y in zip(a[len(grid) - 1:], a[len(grid):]))
            ext = [p for p in sd["sweep"] if p.get("extended")]
            assert all(p["kl_unrelated"] <= res["config"]["kl_budget"] for p in ext[:-1])
    targets = [t["value"] for t in res["targets"]]
    assert len(targets) == 2
    for v in targets:  # the planted atom of each target is found by activation, and it is the difference of means
        if v in values:
            sel = res["selected_units"][0]["atoms"][v]["activation"][0]
            assert sel["atom"] == values.index(v) and sel["cos_with_diff_of_means"] > 0.99
    assert res["methods"]["diff_of_means"]["logprob_gain"] > 0.5
    assert res["methods"]["atoms"]["logprob_gain"] > 0.5
    # the fast path (cached residual stream, later blocks only) equals the full hooked forward pass
    rows = [r for r in fact_data.to_list() if r["relation"] == "city_country" and r["split"] == "heldout"][:5]
    fast, slow = steer_exp.Prompts(real_model, rows, 4, REAL_HOOK), steer_exp.Prompts(real_model, rows, 4)
    make = lambda pos, rows_: [st.EditAtoms(atoms, [0, 1], 3.0, positions=pos, span="from", hook_name=REAL_HOOK),  # noqa: E731
                               st.AddDirection(REAL_HOOK, x[0], 0.5, positions=pos)]
    torch.testing.assert_close(fast.run(make), slow.run(make), atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(fast.clean, slow.clean, atol=2e-3, rtol=1e-3)
    # every method at the difference of means' validation KL, on the same test prompts
    dom = res["methods"]["diff_of_means"]
    for sd in dom["per_seed"].values():  # the reference sits at its own chosen point: nothing to move
        assert sd["equal_kl"]["strength"] == sd["strength"] and sd["equal_kl"]["kl_ref"] == sd["val_at_strength"]["kl_unrelated"]
    assert dom["equal_kl"]["paired_diff_vs_dom"] == 0 and dom["equal_kl"]["paired_diff_vs_dom_se"] == 0
    for sd in dom["per_seed"].values():  # within its own KL the reference is read at its chosen point, on the same prompts
        assert sd["equal_kl"]["within"]["strength"] == sd["strength"] and sd["equal_kl"]["within"]["hits"] == sd["equal_kl"]["hits"]
    assert dom["equal_kl"]["paired_within_vs_dom"] == 0 and dom["equal_kl"]["success_within_kl_ref"] == dom["equal_kl"]["success_equal_kl"]
    for m, r in res["methods"].items():  # each method's within point: its best measured validation point at no more KL
        for sd in r["per_seed"].values():
            w, k_ref = sd["equal_kl"]["within"], sd["equal_kl"]["kl_ref"]
            ok = [p for p in sd["sweep"] if "success_rate" in p and p["kl_unrelated"] <= k_ref * 1.1]
            own = sd["equal_kl"]["val_kl"] <= k_ref * 1.1  # the equal-KL point is a candidate too
            assert (w["strength"] is None) == (not ok and not own) and len(w["hits"]) == len(sd["equal_kl"]["hits"])
            if w["strength"] == sd["equal_kl"]["strength"]:
                assert own and w["hits"] == sd["equal_kl"]["hits"]
            elif w["strength"] is not None:  # a sweep point: the best of those at no more KL
                assert max(p["success_rate"] for p in ok) == next(p["success_rate"] for p in ok if p["strength"] == w["strength"])
        assert 0 <= r["equal_kl"]["success_within_kl_ref"] <= 1
    g, tg = res["methods"]["atoms_gated"], res["methods"]["atoms_transfer_gated"]
    assert tg["pool_size"] == tr["pool_size"]  # the transfer, gated: its pool is the transfer's own
    qs = cfg.gate_q
    assert len(qs) == 2 and set(g["selection_per_seed"]) <= {f"gate_q {q:g}" for q in qs}  # each looseness an alternative
    assert set(tg["selection_per_seed"]) <= {f"{how}, gate_q {q:g}" for how in ("effect", "activation") for q in qs}
    for sd in g["per_seed"]:  # the same looseness is the same gate: its tau, whichever method chose it
        a, b = g["per_seed"][sd], tg["per_seed"][sd]
        assert a["gate_q"] in qs and a["tau"] > 0 and a["selection"] == f"gate_q {a['gate_q']:g}"
        assert b["selection"].endswith(f"gate_q {b['gate_q']:g}")
        if a["gate_q"] == b["gate_q"]:
            assert a["tau"] == b["tau"]
    for m, r in res["methods"].items():
        e = r["equal_kl"]
        assert e["n_prompts"] == dom["equal_kl"]["n_prompts"] == r["n_prompts"]
        assert all(0 <= e[k] <= 1 for k in ("success_equal_kl", "efficacy", "paraphrase", "neighbourhood", "counterfact_hmean"))
        three = (e["efficacy"], e["paraphrase"], e["neighbourhood"])
        assert min(three) - 1e-9 <= e["counterfact_hmean"] <= sum(three) / 3 + 1e-9
        assert 0 <= r["success_kl_area"] <= 1
    rnd = res["methods"]["random_direction"]["per_seed"]  # a vector's KL grows with its strength: it reaches the reference
    assert all(abs(sd["equal_kl"]["val_kl"] - sd["equal_kl"]["kl_ref"]) <= 0.1 * sd["equal_kl"]["kl_ref"] for sd in rnd.values())
    # steered generation on the first seed: every method and the unsteered model
    assert set(res["generation_unsteered"]) == {0} and res["generation_unsteered"][0]["n"] == 2 * cfg.gen_prompts
    for m, r in res["methods"].items():
        g = r["per_seed"][0]["generation"]
        assert 0 <= g["concept"] <= 1 and g["perplexity"] > 1 and "generation" not in r["per_seed"][1]
        assert g["strength"] == r["per_seed"][0]["equal_kl"]["strength"] and r["generation"]["n_seeds"] == 1
        half, one = g["curve"]  # the generation curve, scales ascending: x0.5 and x1 the equal-KL strength (the top level)
        assert (one["concept"], one["perplexity"], one["strength"]) == (g["concept"], g["perplexity"], g["strength"])
        assert half["scale"] == 0.5 and half["strength"] == pytest.approx(0.5 * g["strength"])
        assert [p["scale"] for p in r["generation"]["curve"]] == [0.5, 1.0]
        by_target = r["generation"]["curve"][0]["concept_by_target"]  # which targets carry the share, at each scale
        assert set(by_target) == {t["value"] for t in res["targets"]}
        assert sum(by_target.values()) / len(by_target) == pytest.approx(r["generation"]["curve"][0]["concept"])
    ref = res["methods"]["diff_of_means"]["generation"]
    for m, r in res["methods"].items():  # at the difference of means' perplexity: the best of the points at most as perplexing
        e, fluent = r["generation"]["equal_perplexity"], [p for p in r["generation"]["curve"] if p["perplexity"] <= ref["perplexity"]]
        assert e["ref_perplexity"] == ref["perplexity"] and e["concept_equal_ppl"] == max((p["concept"] for p in fluent), default=None)
    assert (tmp_path / "generation.png").stat().st_size > 1000
    # perplexity under the unsteered model: its own greedy text reads as more fluent than shuffled tokens of it
    own = generation.generate(real_model, {"none": None}, ["x"], generation.PROMPTS[:2], 12)["none"]["x"]
    g = torch.Generator().manual_seed(0)
    shuffled = [[c[i] for i in torch.randperm(len(c), generator=g).tolist()] for c in own]
    assert (generation.log_perplexity(real_model, generation.PROMPTS[:2], own)
            < generation.log_perplexity(real_model, generation.PROMPTS[:2], shuffled)).all()
    rel = steer_exp.relation_tables({"city_country": res})["city_country"]
    assert rel["no_intervention"]["gen_perplexity"] == pytest.approx(res["generation_unsteered"][0]["perplexity"])
    assert rel["atoms"]["gen_concept"] == res["methods"]["atoms"]["generation"]["concept"]
    assert rel["atoms"]["gen_concept_equal_ppl"] == res["methods"]["atoms"]["generation"]["equal_perplexity"]["concept_equal_ppl"]
    assert rel["atoms"]["success_equal_kl"] == res["methods"]["atoms"]["equal_kl"]["success_equal_kl"]
    abl = res["ablation"]["atoms"]["logprob_drop"]
    assert abl["selected"] > abl["random"]
    assert (tmp_path / "results.json").exists() and (tmp_path / "steering.png").stat().st_size > 1000
    import json

    assert json.loads((tmp_path / "results.json").read_text())["summary"] == res["summary"]


def test_steer_config_rejects_bad_settings_by_name():
    for bad, word in (({"selection": "gradient"}, "selection"), ({"scale": "huge"}, "scale"), ({"strengths": (0.0,)}, "strengths"),
                      ({"n_seeds": 0}, "n_seeds"), ({"ceiling_q": 1.5}, "ceiling_q"), ({"fractions": (0.5, -1.0)}, "fractions"),
                      ({"transfer_error": "zero"}, "transfer_error"), ({"transfer_strength": 0.0}, "transfer_strength"),
                      ({"gen_scales": (0.5, 2.0)}, "gen_scales"), ({"gate_q": (0.2, 1.0)}, "gate_q"),
                      ({"gate_q": (0.5, 0.5)}, "gate_q"), ({"gate_q": ()}, "gate_q"),
                      ({"n_bisect": -1}, "n_bisect")):
        with pytest.raises(ValueError, match=word):
            steer_exp.steer_config(**bad)
    with pytest.raises(TypeError, match="unknown steering setting"):
        steer_exp.steer_config(swap_family=2)
    cfg = steer_exp.steer_config(quick=True, n_eval=5)
    assert cfg.n_eval == 5 and cfg.n_seeds == steer_exp.QUICK["n_seeds"]  # explicit settings win over quick
    assert steer_exp.steer_config(gate_q=0.3).gate_q == (0.3,)  # one gate: a number will do


def test_steering_plot_legend_sits_outside_the_axes(tmp_path, monkeypatch):
    figs = []
    save = output.save_figure
    monkeypatch.setattr(output, "save_figure", lambda fig, path: figs.append(fig) or save(fig, path))
    sweep = [{"kl_unrelated": k, "success_rate": k / 2} for k in (0.1, 0.5, 0.9)]
    methods = {m: {"per_seed": {0: {"sweep": sweep}}, "kl_unrelated": 0.9, "success_rate": 0.45} for m in ("atoms", "diff_of_means")}
    output.plot({"methods": methods, "config": {"kl_budget": 1.0, "relation": "r"}, "hook": "h"}, tmp_path / "s.png")
    fig = figs[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= frame.x1  # right of the plotting area: it covers no data


def test_steering_plots_give_each_of_sixteen_methods_its_own_colour_in_both_plots(tmp_path, monkeypatch):
    figs = []
    save = output.save_figure
    monkeypatch.setattr(output, "save_figure", lambda fig, path: figs.append(fig) or save(fig, path))
    sweep = [{"kl_unrelated": k, "success_rate": k / 2} for k in (0.1, 0.5, 0.9)]
    curve = [{"scale": 1.0, "perplexity": 10.0, "concept": 0.1}]
    names = [f"method_{i}" for i in range(16)]  # as many as a study with two SAEs compares
    methods = {m: {"per_seed": {0: {"sweep": sweep}}, "kl_unrelated": 0.9, "success_rate": 0.45, "generation": {"curve": curve}}
               for m in names}
    res = {"methods": methods, "config": {"kl_budget": 1.0, "relation": "r"}, "hook": "h"}
    output.plot(res, tmp_path / "s.png")
    output.plot_generation(res, tmp_path / "g.png")
    stars, gen = ({ln.get_label().split(" (")[0]: matplotlib.colors.to_hex(ln.get_color()) for ln in f.axes[0].get_lines()
                   if not ln.get_label().startswith("_") and ln.get_label().startswith("method_")} for f in figs)
    assert set(stars) == set(gen) == set(names)
    assert len(set(stars.values())) == 16, "no two methods share a colour (matplotlib's default cycle repeats after 10)"
    assert stars == gen, "a method has the same colour in the success-KL and the generation plot"
    dots = [ln for ln in figs[0].axes[0].get_lines() if ln.get_marker() == "o"]
    assert [matplotlib.colors.to_hex(ln.get_color()) for ln in dots] == [stars[m] for m in names]  # sweeps too


@pytest.mark.real_model
def test_generation_of_many_methods_together_equals_each_alone(real_model, monkeypatch):
    from sae_atoms.experiments.steering.methods import AddVector

    g = torch.Generator().manual_seed(0)
    vec = lambda: {v: torch.randn(real_model.cfg.d_model, generator=g) * 8 for v in ("x", "y")}  # noqa: E731
    a, b = (AddVector(name=n, unit="u", grid=(), vectors=vec(), hook=REAL_HOOK, strength=1.0) for n in "ab")
    prompts = generation.PROMPTS[:2]
    together = generation.generate(real_model, {"none": None, "a": a, "b": b}, ["x", "y"], prompts, 4)
    assert together["a"] == generation.generate(real_model, {"a": a}, ["x", "y"], prompts, 4)["a"]
    assert together["none"]["x"] == together["none"]["y"] != together["a"]["x"]  # the edit changes the text
    assert all(len(c) == 4 for m in together.values() for cs in m.values() for c in cs)
    conts = [c for m in together.values() for c in m["x"]]
    whole = generation.log_perplexity(real_model, list(prompts) * 3, conts)
    monkeypatch.setattr(generation, "PPL_ROWS", 1)  # one row a pass: the same perplexities
    torch.testing.assert_close(generation.log_perplexity(real_model, list(prompts) * 3, conts), whole, atol=1e-4, rtol=1e-4)


@pytest.mark.real_model
def test_language_prompts_invite_a_language_where_place_prompts_do_not(real_model):
    """Each relation's generation prompts share one token length (one ``generate`` call), and the
    unsteered model continues the language set with a language, and the continent set with a
    continent, more often than the place set."""
    from sae_atoms.data import fact_prompts

    for label in ("country", "language", "currency", "continent"):
        prompts = generation.prompts_for(label)
        assert len({len(real_model.to_tokens(p)[0]) for p in prompts}) == 1, label
    assert generation.prompts_for("language") == generation.LANGUAGE_PROMPTS
    assert generation.prompts_for("continent") == generation.CONTINENT_PROMPTS and generation.prompts_for("country") == generation.PROMPTS
    facts = fact_prompts(relations=["country_language", "country_continent"])
    names = {r: set(facts.filter(lambda x: x["relation"] == f"country_{r}")[r]) for r in ("language", "continent")}

    def share(prompts: tuple[str, ...], kind: str) -> float:
        texts = [real_model.tokenizer.decode(c) for c in generation.generate(real_model, {"none": None}, ["x"], prompts, 8)["none"]["x"]]
        return sum(any(n in t for n in names[kind]) for t in texts) / len(texts)

    assert share(generation.LANGUAGE_PROMPTS, "language") > share(generation.PROMPTS, "language")
    assert share(generation.CONTINENT_PROMPTS, "continent") > share(generation.PROMPTS, "continent")
