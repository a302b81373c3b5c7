"""The main job end to end on the embedded model (tiny sizes), its cache, its report and README block."""

import json

import pytest

from sae_atoms.experiments import frontier
from sae_atoms.experiments.report import README_END, README_START, Report, update_readme

ISSUE_KEYS = {"model", "hook_name", "n_train", "n_heldout", "geometry", "units", "capacity", "steering", "metric",
              "frontier", "paper_regime", "units_l0"}
FRONTIER_KEYS = {"unit", "target_l0", "l0", "l0_val", "l0_heldout", "r2", "r2_heldout", "r2_aip", "r2_aip_heldout", "q_star_a",
                 "q_star_b", "q_star_b_heldout", "dead_frac"}


def test_report_renders_markdown_and_html(tmp_path):
    r = Report("T").h("Section").p("value `x` < 1").table(["a", "b"], [[1, 0.12345], ["n", None]]).img("p.png", "plot")
    md, html = r.write(tmp_path)
    text = md.read_text()
    assert "| a | b |" in text and "| 1 | 0.123 |" in text and "| n | – |" in text and "![plot](p.png)" in text
    h = html.read_text()
    assert "<code>x</code> &lt; 1" in h and "<td>0.123</td>" in h and '<img src="p.png"' in h


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\noutro\n")
    results = {"model": "m", "hook_name": "h", "n_train": 3, "n_heldout": 1, "quick": True,
               "geometry": {"euclid_centroid_deg": 50.0, "aip_centroid_deg": 90.1, "aip_heldout_centroid_deg": 89.9},
               "units": {"atoms": {"r2": 0.9, "r2_heldout": 0.8, "l0": 5.0, "mu": 0.2, "q_star_a": 0.5,
                                   "q_star_b": 0.6, "monosemanticity": 0.7}}}
    update_readme(readme, results)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| atoms (tsae_aip) | 0.900 | 0.800 | 5.0 |" in text and "AIP 90.1°" in text and "Steering" not in text
    results["steering"] = {m: {"success_rate": s_, "kl_unrelated": 0.5, "logprob_gain": 5.0, "n_targets": 8, "n_prompts": 128,
                               "seeds": [0, 1]} for m, s_ in (("diff_of_means", 0.6), ("atoms_transfer", 0.7))}
    results["steering_details"] = {"config": {"kl_budget": 1.0}}
    update_readme(readme, results)
    text = readme.read_text()
    assert "KL budget of 1.0 nats" in text
    se = (0.7 * 0.3 / 128) ** 0.5  # the binomial standard error of 0.7 on 128 prompts
    assert text.index(f"| atoms_transfer | 0.700 ± {se:.3f} | 0.500 | 5.00 | 8 | 128 | 0, 1 |") < text.index("| diff_of_means | 0.600 ±")
    bad = tmp_path / "bad.md"
    bad.write_text("no markers here")
    with pytest.raises(ValueError, match="results"):
        update_readme(bad, results)


@pytest.mark.slow
@pytest.mark.real_model
def test_reproduce_end_to_end_tiny_then_cached(tmp_path, capsys):
    from sae_lens import SAE

    import sae_atoms  # noqa: F401
    from sae_atoms.experiments.reproduce import STAGES, TOKEN_FRONTIER_QUICK, Settings, run_reproduce

    s = Settings(out=tmp_path / "run", quick=True, n_cities=60, relations=("city_country", "country_capital"),
                 train_steps=40, capacity_expansions=(1, 2), geometry_layers=(2, 12), device="cpu")
    res = run_reproduce(s)
    assert ISSUE_KEYS <= set(res)
    assert set(res["units"]) == {"neurons", "features_standard", "features_jumprelu", "atoms"}
    for u in res["units"].values():
        assert {"r2", "r2_heldout", "l0", "mu", "q_star_a", "q_star_b", "monosemanticity"} <= set(u)
    assert res["units"]["neurons"]["r2"] == pytest.approx(1.0, abs=1e-5)
    # the headline units are the frontier's SAEs at one L0, matched on validation entities (to 1%)
    rows = res["frontier"]
    head = {r["unit"]: r for r in rows if r["target_l0"] == res["units_l0"]}
    for unit in ("atoms", "features_jumprelu"):
        assert head[unit]["l0_val"] == pytest.approx(res["units_l0"], rel=0.02)
        assert res["units"][unit]["l0"] == pytest.approx(head[unit]["l0"], rel=1e-4)  # same SAE, same fit rows
    assert {r["unit"] for r in rows} == {"neurons", "atoms", "atoms_stable", "tsae", "features_standard",
                                         "features_jumprelu", "features_topk", "features_batchtopk"}
    assert all(FRONTIER_KEYS <= set(r) for r in rows)
    assert {r["target_l0"] for r in rows if r["unit"] == "atoms"} == {8.0, 16.0}
    assert res["metric"]["reference"]["kind"] == "centered" and res["metric"]["atoms"]["alpha"] == frontier.ATOMS_ALPHA
    for unit in ("atoms", "features_jumprelu"):
        assert FRONTIER_KEYS | {"n_train", "d_sae"} <= set(res["paper_regime"][unit])
        pr = res["paper_regime"][unit]  # width = the train rows the robust rule keeps
        assert pr["d_sae"] == pr["n_train"] and 0.99 * res["n_train"] <= pr["n_train"] <= res["n_train"]
    assert (tmp_path / "run" / "plots" / "frontier.png").exists()
    assert "Sparsity frontier" in (tmp_path / "run" / "report.md").read_text()
    assert abs(res["geometry"]["aip_centroid_deg"] - 90) < 3 < 90 - res["geometry"]["euclid_centroid_deg"]
    assert [c["expansion"] for c in res["capacity"]] == [1, 2]
    assert {"atoms", "atoms_swap", "features_jumprelu", "diff_of_means"} <= set(res["steering"])
    assert all({"success_rate", "kl_unrelated", "n_targets", "n_prompts", "seeds", "per_target"} <= set(v) for v in res["steering"].values())
    rel = res["steering_relations"]  # --quick steers city -> country only: the same methods, at the difference of means' KL
    assert list(rel) == ["city_country"] and set(rel["city_country"]) == set(res["steering"]) | {"no_intervention"}
    keys = {"success_equal_kl", "success_equal_kl_se", "paired_diff_vs_dom", "efficacy", "paraphrase", "neighbourhood",
            "counterfact_hmean", "counterfact_hmean_within", "test_kl_within", "gen_concept", "gen_perplexity"}
    assert all(keys <= set(v) for m, v in rel["city_country"].items() if m != "no_intervention")
    assert rel["city_country"]["diff_of_means"]["paired_diff_vs_dom"] == 0
    assert (tmp_path / "run" / "steering" / "city_country" / "steering.png").exists()
    assert "Steering city -> country" in (tmp_path / "run" / "report.md").read_text()
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["n_train"] == res["n_train"]
    assert (tmp_path / "run" / "report.md").exists() and (tmp_path / "run" / "report.html").exists()
    rss = list(res["peak_rss_mb"].values())  # the high-water mark after each stage: never falls, at least the model's size
    assert list(res["peak_rss_mb"]) == STAGES[:-1] and rss == sorted(rss) and rss[0] > 300
    assert "Neurons vs features vs atoms" in (tmp_path / "run" / "report.md").read_text()
    tokens = res["token_frontier"]  # the small token benchmark: the runner's SAEs judged on held-out documents
    assert [(r["unit"], r["target_l0"]) for r in tokens["rows"]] == [(u, 32.0) for u in TOKEN_FRONTIER_QUICK["units"]]
    assert all(r["l0_val"] == pytest.approx(32.0, rel=0.02) for r in tokens["rows"])  # matched on validation documents
    # on the evaluation documents the L0 of a smoke SAE (a few steps) may drift from where it was matched; the default run's stay within 15%
    assert all(r["l0"] == pytest.approx(32.0, rel=0.3) for r in tokens["rows"])
    assert "Token stream" in (tmp_path / "run" / "report.md").read_text()
    assert "atoms and tsae trained batch top-k" in (tmp_path / "run" / "report.md").read_text()  # the recipe is named
    sae = SAE.load_from_disk(str(tmp_path / "run" / "saes" / "atoms"))
    assert sae.cfg.architecture() == "tsae_aip"
    assert res["cards"] == {u: f"cards/{u}/index.html" for u in ("atoms", "features_jumprelu")}
    assert all((tmp_path / "run" / href).is_file() for href in res["cards"].values())
    assert 'href="cards/atoms/index.html"' in (tmp_path / "run" / "report.html").read_text()
    # a second run reuses every stage (the report aside): each says so and no cached file is rewritten
    cache = tmp_path / "run" / "cache"
    written = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    capsys.readouterr()
    again = run_reproduce(s)
    log = capsys.readouterr().out
    assert [n for n in STAGES[:-1] if f"{n}: reused from cache" not in log] == []
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == written
    assert again["units"]["atoms"]["r2"] == on_disk["units"]["atoms"]["r2"]
    assert again["frontier"] == on_disk["frontier"]


# --------------------------------------------------------------------------- issue 14: damaged stage caches
def test_damaged_stage_is_recomputed_with_a_warning(tmp_path):
    from sae_atoms.experiments.stage_cache import stage as _stage

    calls = []

    def compute(folder):
        calls.append(1)
        (folder / "weights.bin").write_bytes(b"w" * 1000)

    def load(folder):
        data = (folder / "weights.bin").read_bytes()
        if len(data) != 1000:
            raise ValueError("truncated weights")
        return len(data)

    assert _stage(tmp_path, "sae", {"a": 1}, False, compute, load) == (1000, False)
    assert _stage(tmp_path, "sae", {"a": 1}, False, compute, load) == (1000, True) and len(calls) == 1
    w = tmp_path / "cache" / "sae" / "weights.bin"
    w.write_bytes(b"w" * 10)  # truncated
    with pytest.warns(UserWarning, match="damaged"):
        assert _stage(tmp_path, "sae", {"a": 1}, False, compute, load) == (1000, False)
    assert len(calls) == 2
    with open(w, "r+b") as fh:  # same size, different bytes: the manifest catches it
        fh.write(b"x")
    with pytest.warns(UserWarning, match="files changed"):
        assert _stage(tmp_path, "sae", {"a": 1}, False, compute, load)[1] is False
    assert len(calls) == 3


def test_reproduce_help_quotes_the_sizes_the_code_uses():
    import argparse

    from sae_atoms.experiments import reproduce

    p = argparse.ArgumentParser()
    reproduce.configure_parser(p)
    helps = {a.dest: " ".join(a.help.split()) for a in p._actions if a.help}
    s, q = reproduce.Settings(), reproduce.Settings(quick=True)
    assert f"default {s.train_steps}; quick {q.train_steps}" in helps["steps"]
    assert f"{s.capacity_steps} (quick {q.capacity_steps})" in helps["steps"]
    assert f"default {s.n_cities}; quick {q.n_cities}" in helps["n_cities"]
    assert f"{q.n_cities} cities" in helps["quick"] and "minutes" not in helps["quick"]


def test_the_autocast_flag_reaches_the_settings(monkeypatch, tmp_path):
    import argparse

    from sae_atoms.experiments import reproduce

    runs = []
    monkeypatch.setattr(reproduce, "run_reproduce", lambda s: runs.append(s) or {})
    monkeypatch.setattr(reproduce, "headline_table", lambda r: "")
    p = argparse.ArgumentParser()
    reproduce.configure_parser(p)
    for extra in (["--autocast"], []):
        assert reproduce.run_cli(p.parse_args(["--out", str(tmp_path), *extra])) == 0
    assert [s.autocast for s in runs] == [True, False]


def test_the_cache_key_of_an_sae_is_its_exact_bytes_whatever_the_thread_count():
    import torch
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig

    from sae_atoms.experiments.reproduce import _sae_key

    torch.manual_seed(0)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=576, d_sae=2304))
    sae.W_dec.data = torch.randn(2304, 576) * torch.logspace(-3, 3, 576)  # sums that depend on the reduction order
    threads = torch.get_num_threads()
    try:
        keys = []
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            keys.append(_sae_key(sae))
    finally:
        torch.set_num_threads(threads)
    assert len(set(keys)) == 1
    sae.W_dec.data[7, 3] = torch.nextafter(sae.W_dec.data[7, 3], torch.tensor(float("inf")))  # one ulp of one element
    assert _sae_key(sae) != keys[0]
