"""The frontier's out-of-sample L0 matching (issue 11): validation entities, ``match_on``, the goal check."""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from sae_atoms.activations import ActivationSet
from sae_atoms.experiments import frontier, plots
from sae_atoms.saes import construction
from sae_atoms.synthetic import planted
from sae_atoms.training import train_on_activations
from sae_atoms.units import STABLE_ALPHA


def _entity_set(n_entities: int = 50, per: int = 4, d: int = 8) -> ActivationSet:
    subjects = [f"e{i}" for i in range(n_entities) for _ in range(per)]
    rows = datasets.Dataset.from_dict({"subject": subjects, "split": ["train"] * len(subjects)})
    return ActivationSet({"h": torch.randn(len(subjects), d)}, rows)


def test_validation_split_keeps_every_entity_on_one_side():
    acts = _entity_set()
    fit, val = frontier.validation_split(acts, 0.2, seed=0)
    f, v = set(fit.rows["subject"]), set(val.rows["subject"])
    assert not f & v and len(v) == 10 and len(f) == 40 and len(fit) + len(val) == len(acts)
    again = frontier.validation_split(acts, 0.2, seed=0)[1]
    assert set(again.rows["subject"]) == v  # seeded
    assert set(frontier.validation_split(acts, 0.2, seed=1)[1].rows["subject"]) != v
    x_fit, x_val = frontier.validation_split(torch.randn(100, 4), 0.25)  # plain rows
    assert (len(x_fit), len(x_val)) == (75, 25)
    with pytest.raises(ValueError, match="validation_frac"):
        frontier.validation_split(acts, 1.0)


@pytest.mark.slow
def test_match_on_sets_l0_on_the_given_rows_not_the_training_rows():
    data = planted(d=16, n_atoms=48, k=4, coherence=0.4, n_samples=4000, seed=0).activations
    x, other = data[:3000], data[3000:] * 0.5  # the other rows are weaker: fewer units fire on them
    cfg = frontier.frontier_config("features_jumprelu", 16, 64, 6.0)
    sae = train_on_activations(x, cfg, steps=150, batch_size=256, seed=0, progress=False, target_l0=6.0, match_on=other)
    l0 = lambda rows: float((sae.encode(rows) != 0).sum(1).float().mean())
    assert l0(other) == pytest.approx(6.0, rel=0.02)
    assert l0(x) > 6.0 * 1.05  # matched on the weaker rows, so in-sample it fires more (match tolerance 1%)


def _row(unit, t, l0, l0_val, l0_held, r2h, aiph):
    return {"unit": unit, "target_l0": t, "l0": l0, "l0_val": l0_val, "l0_heldout": l0_held, "r2_heldout": r2h,
            "r2_aip_heldout": aiph}


def test_goal_check_reads_the_validation_l0_and_the_heldout_l0():
    rows = [_row("atoms", 16.0, 19.5, 16.0, 15.5, 0.48, 0.07), _row("features_jumprelu", 16.0, 16.1, 16.0, 15.9, 0.50, 0.02)]
    (c,) = frontier.goal_check(rows)
    assert c["matched"] and c["aip_ok"] and c["raw_ok"]  # in-sample 19.5 is not what was matched
    rows[0]["l0_heldout"] = 10.0  # atoms firing far less on held-out entities: not a matched comparison
    assert not frontier.goal_check(rows)[0]["matched"]
    rows[0]["l0_heldout"], rows[0]["r2_heldout"] = 15.5, 0.40
    assert not frontier.goal_check(rows)[0]["raw_ok"]  # 0.40 < 0.9 x 0.50
    assert [r["unit"] for r in frontier.matched_rows(rows)] == ["atoms", "features_jumprelu"]


def test_theorem_construction_codes_every_sample_by_its_own_atom_even_when_near_parallel():
    from sae_lens.registry import get_sae_training_class

    from sae_atoms.aip import AIPMetric
    from sae_atoms.saes import to_inference

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 64, generator=g)  # in general position: a tied encoder separates these
    x[1] = 1.3 * x[0] + 0.4 * torch.randn(64, generator=g)  # longer and near-parallel: <y_1, e_0> > ||y_0||
    cfg = frontier.frontier_config("atoms", 64, 200, 1.0, atoms_alpha=1.0)
    sae = get_sae_training_class("tsae_aip")[0](cfg).set_metric(AIPMetric.fit(x, kind="centered"))
    untied = construction.theorem_init(sae, x)
    assert untied >= 1  # the tied encoder cannot separate sample 0 from sample 1
    inf = to_inference(sae)
    codes = inf.encode(x)
    assert torch.equal((codes != 0).sum(1), torch.ones(200, dtype=torch.long))
    assert torch.equal(codes.abs().argmax(1), torch.arange(200))  # each sample by its own atom
    assert torch.allclose(inf.decode(codes), x, atol=1e-3)
    tied = get_sae_training_class("tsae_aip")[0](cfg).set_metric(AIPMetric.fit(x, kind="centered"))
    construction.theorem_init(tied, x, margin=-1e9)  # no repair (every threshold kept): sample 0 is lost
    assert int((to_inference(tied).encode(x[:1]) != 0).sum()) != 1


def test_frontier_plot_labels_every_axis_and_keeps_coinciding_series_visible(tmp_path, monkeypatch):
    figs = []
    save = frontier.save_figure
    monkeypatch.setattr(frontier, "save_figure", lambda fig, path: figs.append(fig) or save(fig, path))
    # tsae and jumprelu at identical values: both must stay distinguishable
    rows = [{"unit": u, "target_l0": t, "l0": t, "l0_val": t, "r2_heldout": 0.1 * t, "r2_aip_heldout": 0.01 * t,
             "q_star_b": 0.0, "q_star_b_heldout": 0.5 / t} for u in ("atoms", "tsae", "features_jumprelu") for t in (4.0, 8.0)]
    assert frontier.plot_frontier(rows, tmp_path / "f.png").exists()
    assert len(figs[0].axes) == 4  # R² raw, R² AIP, q* (b) against L0; held-out q* (b) against held-out R²
    for ax in figs[0].axes:
        assert ax.get_ylabel(), ax.get_title()
        styles = {(ln.get_marker(), str(ln.get_linestyle()), ln.get_markersize()) for ln in ax.get_lines()
                  if not ln.get_label().startswith("_")}
        assert len(styles) == 3, styles  # one distinct marker / line style / size per unit kind
    front = [ln for ln in figs[0].axes[3].get_lines() if ln.get_label() == "_Pareto front"]
    assert len(front) == 1 and list(front[0].get_xdata()) == [0.4, 0.8]  # (0.4, 0.125) and (0.8, 0.0625)


def test_pareto_front_keeps_the_points_nothing_beats_on_both():
    pts = [(0.5, 0.1), (0.4, 0.6), (0.3, 0.5), (0.6, 0.05), (0.4, 0.6), (0.2, 0.9), (0.6, 0.01)]
    assert plots.pareto_front(pts) == [(0.2, 0.9), (0.4, 0.6), (0.5, 0.1), (0.6, 0.05)]
    assert plots.pareto_front([]) == []


def _acts_on_disk(path) -> str:
    subjects = [f"e{i}" for i in range(30) for _ in range(3)]
    split = ["heldout" if i >= 24 else "train" for i in range(30) for _ in range(3)]
    rows = datasets.Dataset.from_dict({"subject": subjects, "split": split})
    torch.manual_seed(0)
    ActivationSet({"h": torch.randn(len(subjects), 8)}, rows).save(path)
    return str(path)


def _frontier(acts: str, out, *extra: str) -> int:
    from sae_atoms.cli import main

    return main(["frontier", "--activations", acts, "--out", str(out), "--units", "features_jumprelu", "--steps", "3",
                 "--batch-size", "16", *extra])


@pytest.mark.slow
def test_targets_that_round_alike_get_their_own_sae_folders(tmp_path, capsys):
    acts = _acts_on_disk(tmp_path / "acts")
    assert _frontier(acts, tmp_path / "o", "--targets", "4", "4.6") == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["target_l0"] for r in res["rows"][1:]] == [4.0, 4.6]
    assert sorted(p.name for p in (tmp_path / "o" / "saes").iterdir()) == ["features_jumprelu_l0_4",
                                                                             "features_jumprelu_l0_4.6"]
    for bad, needle in ((["nan"], "finite"), (["4", "-1"], "finite"), (["inf"], "finite"), (["4", "4.0000001"], "share")):
        capsys.readouterr()
        assert _frontier(acts, tmp_path / "p", "--targets", *bad) == 2
        err = capsys.readouterr().err
        assert "--targets" in err and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_frontier_refuses_a_folder_it_did_not_write_and_replaces_its_own_whole(tmp_path, capsys, monkeypatch):
    acts = _acts_on_disk(tmp_path / "acts")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text('{"my": "notes"}')
    assert _frontier(acts, mine, "--targets", "2") == 2
    assert "--overwrite" in capsys.readouterr().err and (mine / "results.json").read_text() == '{"my": "notes"}'

    out = tmp_path / "o"
    assert _frontier(acts, out, "--targets", "2", "4") == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def killed_after_one(*args, **kwargs):  # a rerun with another seed, killed at its second target's SAE
        if args[2] == 4.0:
            raise KeyboardInterrupt
        return real_train_unit(*args, **kwargs)

    real_train_unit = frontier.train_unit
    monkeypatch.setattr(frontier, "train_unit", killed_after_one)
    for w in ("1", "2"):  # in process, and in two worker processes (the worker's interrupt is raised here)
        assert _frontier(acts, out, "--targets", "2", "4", "--seed", "1", "--workers", w) == 130  # Ctrl-C: exit 130
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # seed 0's results.json and SAEs, together
    monkeypatch.setattr(frontier, "train_unit", real_train_unit)
    assert _frontier(acts, out, "--targets", "2", "--seed", "1") == 0  # its own folder: replaced whole
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["seed"] == 1 and [p.name for p in (out / "saes").iterdir()] == ["features_jumprelu_l0_2"]
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]  # nothing stale left


@pytest.mark.slow
def test_autocast_reaches_every_sae_of_the_frontier_and_its_settings(tmp_path, monkeypatch):
    seen = []

    def recording(*args, **kw):
        seen.append(kw["autocast"])
        return real(*args, **kw)

    real = frontier.train_on_activations
    monkeypatch.setattr(frontier, "train_on_activations", recording)
    acts = _acts_on_disk(tmp_path / "acts")
    assert _frontier(acts, tmp_path / "o", "--targets", "2", "3", "--workers", "1", "--autocast") == 0
    assert seen == [True, True]
    assert json.loads((tmp_path / "o" / "results.json").read_text())["settings"]["autocast"] is True


def test_jobs_with_stability_twins_cost_as_their_three_saes_and_start_first():
    c = frontier.FrontierConfig(targets=(2.0, 3.0), stability_targets=(3.0,))
    jobs = [(t, u) for t in c.targets for u in ("atoms", "tsae")]
    assert frontier.job_cost(c, (3.0, "atoms")) == 4 * frontier.job_cost(c, (2.0, "atoms"))  # itself, a seed twin, a 2x twin
    assert sorted(jobs, key=lambda j: -frontier.job_cost(c, j))[:2] == [(3.0, "atoms"), (3.0, "tsae")]


@pytest.mark.slow
def test_stability_targets_add_seed_and_width_consistency_and_atoms_stable_trains(tmp_path, capsys):
    acts = _acts_on_disk(tmp_path / "acts")
    assert _frontier(acts, tmp_path / "o", "--units", "atoms_stable", "features_jumprelu", "--targets", "2", "3",
                     "--stability-targets", "3") == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    rows = {(r["unit"], r["target_l0"]): r for r in res["rows"][1:]}
    assert set(rows) == {("atoms_stable", 2.0), ("atoms_stable", 3.0), ("features_jumprelu", 2.0), ("features_jumprelu", 3.0)}
    for u in ("atoms_stable", "features_jumprelu"):
        assert "seed_consistency" not in rows[(u, 2.0)]
        r = rows[(u, 3.0)]
        assert 0 <= r["seed_consistency"] <= 1 and 0 <= r["width_consistency"] <= 1
        assert 0 < r["seed_mean_cos"] <= 1 and 0 < r["width_mean_cos"] <= 1
    assert res["settings"]["stability_targets"] == [3.0]
    alphas = {u: m["alpha"] for u, m in res["metric"].items() if u != "reference"}
    assert alphas == {"atoms_stable": STABLE_ALPHA} != {"atoms_stable": frontier.ATOMS_ALPHA}  # fitted at its own alpha
    assert "seed_consistency" in capsys.readouterr().out  # the printed table has the columns


@pytest.mark.slow
def test_atoms_variants_train_beside_the_units_with_their_own_fields_and_metric(tmp_path, capsys, monkeypatch):
    from sae_lens import SAE

    seen = {}

    def recording(x, cfg, **kw):  # the training configs, by the unit's own metric alpha
        seen[(cfg.stability_coefficient, cfg.aip_alpha)] = cfg
        return real(x, cfg, **kw)

    real = frontier.train_on_activations
    monkeypatch.setattr(frontier, "train_on_activations", recording)
    acts = _acts_on_disk(tmp_path / "acts")
    assert _frontier(acts, tmp_path / "o", "--units", "atoms", "--targets", "2", "--workers", "1", "--atoms-variant",
                     "s1e6=stability_coefficient:1e6,aip_alpha:1", "--atoms-variant", "plain=aip_alpha:0.5") == 0
    assert set(seen) == {(0.0, frontier.ATOMS_ALPHA), (1e6, 1.0), (0.0, 0.5)}
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["unit"] for r in res["rows"][1:]] == ["atoms", "atoms_s1e6", "atoms_plain"]
    assert res["settings"]["atoms_variants"] == {"atoms_s1e6": {"stability_coefficient": 1e6, "aip_alpha": 1.0},
                                                 "atoms_plain": {"aip_alpha": 0.5}}
    assert set(res["metric"]) == {"reference", "atoms", "atoms_s1e6", "atoms_plain"}  # each fits its own partial metric
    assert {u: res["metric"][u]["alpha"] for u in ("atoms", "atoms_s1e6", "atoms_plain")} == {
        "atoms": frontier.ATOMS_ALPHA, "atoms_s1e6": 1.0, "atoms_plain": 0.5}
    alphas = [SAE.load_from_disk(str(tmp_path / "o" / "saes" / n)).cfg.aip_alpha
              for n in ("atoms_l0_2", "atoms_s1e6_l0_2", "atoms_plain_l0_2")]
    assert alphas == [frontier.ATOMS_ALPHA, 1.0, 0.5]
    for r in res["rows"][1:]:  # which side of q* (b)'s bound binds, on held-out entities
        assert r["bound_ratio_p50_heldout"] > 0 and r["k_allowed_p50_heldout"] >= 1
        assert 0 <= r["amplitude_gap_sample_pos_frac_heldout"] <= 1
        assert 0 <= r["q_star_b_k_upto_p50_heldout"] <= 1  # q* (b) of the samples at K up to the median
    for bad, needle in (("x=no_such_field:1", "no_such_field"), ("x=aip_alpha:2", "aip_alpha")):
        capsys.readouterr()
        assert _frontier(acts, tmp_path / "p", "--targets", "2", "--atoms-variant", bad) == 2
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_consistency_of_one_dictionary_with_itself_is_full_and_differs_from_another_seed():
    x = planted(d=8, n_atoms=8, k=2, coherence=0.0, n_samples=400, seed=0).activations
    a = train_on_activations(x, frontier.frontier_config("features_jumprelu", 8, 8, 2.0), steps=5, seed=0, target_l0=2,
                             batch_size=32, progress=False)
    b = train_on_activations(x, frontier.frontier_config("features_jumprelu", 8, 8, 2.0), steps=5, seed=1, target_l0=2,
                             batch_size=32, progress=False)
    from sae_atoms.evals import dictionary_consistency

    assert dictionary_consistency(a, a, x)["frac_matched"] == 1.0
    assert dictionary_consistency(a, b, x)["mean_matched_cos"] < 1.0


@pytest.mark.slow
def test_atoms_onb_is_built_in_the_reference_metric_and_meets_the_bound_on_every_sample(tmp_path):
    acts = _acts_on_disk(tmp_path / "acts")
    assert _frontier(acts, tmp_path / "o", "--units", "atoms_onb", "--targets", "2", "3", "--stability-targets", "3") == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    rows = {r["target_l0"]: r for r in res["rows"][1:]}
    assert set(rows) == {2.0, 3.0} and {r["unit"] for r in rows.values()} == {"atoms_onb"}
    for t, r in rows.items():
        assert r["l0"] == r["l0_heldout"] == t  # top-k at the target, in and out of sample
        assert r["q_star_b"] == r["q_star_b_heldout"] == 1.0  # co-active atoms orthogonal where q* is read
    assert 0 <= rows[3.0]["seed_consistency"] <= 1 and 0 <= rows[3.0]["width_consistency"] <= 1
    assert set(res["metric"]) == {"reference"}  # built in the reference AIP, no metric of its own
    with pytest.raises(ValueError, match="metric"):
        frontier.train_unit("atoms_onb", torch.randn(40, 8), 2.0)
