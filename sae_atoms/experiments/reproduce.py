"""The main job: Atom Theory end to end on a real model, offline, with a report.

``sae-atoms reproduce`` chains the capabilities of the package on the embedded SmolLM2-135M
(or any model ``load_model`` accepts):

    fact prompts (train / held-out entities)      sae_atoms.data
      -> subject-token activations                 sae_atoms.activations
      -> AIP geometry (Euclid vs AIP angles)       sae_atoms.experiments.geometry
      -> every unit kind at matched L0 (+ stability)  sae_atoms.experiments.frontier
      -> evaluators, in-sample and held-out        sae_atoms.evals
      -> capacity sweep (1x, 2x, 4x, 8x)           sae_atoms.experiments.capacity
      -> the token benchmark, small (atoms vs jumprelu / topk / batchtopk on a token stream,
         SAELens's multi-SAE runner, run_evals's figures)  sae_atoms.experiments.token_frontier
      -> steering (atoms vs jumprelu features vs difference of means)
                                                   sae_atoms.experiments.steering
      -> atom cards of the headline atoms and jumprelu features   sae_atoms.cards
      -> results.json, report.md / report.html, FINDINGS.md, plots, SAEs in SAELens format

Every stage's result is cached under ``OUT/cache/<stage>`` with a key of its inputs, so a
second run reuses what did not change; ``--force`` starts afresh. A cached stage is checked on
load (the size and sha256 of each file, recorded when it was written; then it must load): a
damaged one is recomputed with a warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import datasets
from sae_lens import SAE

from sae_atoms import evals
from sae_atoms.activations import ActivationSet, extract
from sae_atoms.data import FACT_RELATIONS, LABEL_COLUMNS, fact_prompts
from sae_atoms.experiments import capacity, frontier, geometry, steering, token_frontier
from sae_atoms.experiments.geometry import GeometryConfig, dedupe_subject_prefix
from sae_atoms.experiments.findings import write_findings
from sae_atoms.experiments.stage_cache import Progress, json_stage, stage
from sae_atoms.experiments.report import PAPER_NUMBERS, headline_table, update_readme, write_report
from sae_atoms.io import follow_umask, sha256_tensors, write_json
from sae_atoms.models import fact_accuracy, load_model, resolve_device
from sae_atoms.units import UNIT_KINDS, unit_kind

# sizes of a full run and of ``--quick`` (Settings fills its None fields from these; the CLI help quotes
# them): train_steps per frontier SAE, capacity_steps per capacity-sweep SAE (capacity_expansions their widths),
# frontier_targets the L0s, n_accuracy the facts the model's accuracy is read on (full forward passes are its
# cost), n_geometry_facts / n_reasoning the geometry's prompts, n_cards the atom cards per headline unit,
# stability_targets the frontier L0s that also get seed and width consistency (a seed twin and a 2x twin per unit kind)
FULL = {"n_cities": 1500, "train_steps": frontier.FrontierConfig.steps, "capacity_steps": 200, "capacity_expansions": (1, 2, 4, 8),
        "frontier_targets": tuple(float(t) for t in frontier.DEFAULT_TARGETS), "n_accuracy": 1000, "n_geometry_facts": 1600,
        "n_reasoning": 300, "n_cards": 16, "stability_targets": (8.0,)}
QUICK = {"n_cities": 300, "train_steps": 80, "capacity_steps": 50, "capacity_expansions": (1, 2, 4), "frontier_targets": (8.0, 16.0),
         "n_accuracy": 100, "n_geometry_facts": 600, "n_reasoning": 100, "n_cards": 4, "stability_targets": ()}
# the main job's token benchmark: a small version of ``sae-atoms token-frontier`` (its full default
# trains 8 unit kinds x 4 L0s); ``--quick`` shrinks its tokens further and keeps two units
TOKEN_FRONTIER = {"units": ("atoms", "features_jumprelu", "features_topk", "features_batchtopk"), "targets": (32.0,),
                  "tokens": 40_960, "eval_tokens": 2048, "val_tokens": 4096, "ref_tokens": 8192, "n_checkpoints": 0}
# (token-frontier --stability is left out here: its twins take the main job's peak memory past its 4 GB budget)
TOKEN_FRONTIER_QUICK = TOKEN_FRONTIER | {"units": ("atoms", "features_topk"), "tokens": 2048, "eval_tokens": 256,
                                         "val_tokens": 512, "ref_tokens": 2048, "norm_batches": 2}
CARDS_UNITS = ("atoms", "features_jumprelu")  # the headline SAEs with atom cards
STEER = {"n_seeds": 1, "gen_tokens": 20, "gen_prompts": 4, "gen_scales": (1.0,), "gated": False}  # within the budget; the study (4 seeds, 3 relations, gated methods): sae-atoms steer
# the study's quick sizes, one seed as in a full run (sae-atoms steer --quick keeps its 2), fewer targets and generations
STEER_QUICK = {"n_seeds": 1, "n_targets": 2, "n_eval": 3, "gen_tokens": 6, "gen_prompts": 2, "gated": False}
UNITS = tuple(unit_kind(u).name for u in ("neurons", "features_standard", "features_jumprelu", "atoms"))  # headline
SAE_KINDS = {u: UNIT_KINDS[u].architecture for u in UNITS if UNIT_KINDS[u].architecture is not None}


@dataclass
class Settings:
    """What a run does; ``quick`` shrinks every size (the ``--quick`` job)."""

    model: str = "smollm2-135m"
    layer: int | None = None
    out: Path = Path("runs/reproduce")
    quick: bool = False
    device: str = "auto"
    force: bool = False
    seed: int = 0
    n_cities: int | None = None
    relations: tuple[str, ...] | None = None
    capacity_expansions: tuple[int, ...] | None = None
    train_steps: int | None = None
    capacity_steps: int | None = None
    geometry_layers: tuple[int, ...] | None = None
    steer: bool = True
    steer_relations: tuple[str, ...] = ("city_country",)  # the first is the headline ``steering``
    token_frontier: bool = True
    cards: bool = True
    frontier_targets: tuple[float, ...] | None = None
    stability_targets: tuple[float, ...] | None = None
    n_accuracy: int | None = None
    n_geometry_facts: int | None = None
    n_reasoning: int | None = None
    n_cards: int | None = None
    frontier_units: tuple[str, ...] = frontier.UNITS
    frontier_expansion: float = frontier.FrontierConfig.expansion
    autocast: bool = False  # the frontier's SAEs train under SAELens's bfloat16 autocast (--autocast)
    headline_l0: float = 16.0
    paper_regime: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        for k, v in (QUICK if self.quick else FULL).items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if self.relations is None:
            self.relations = ("city_country",) if self.quick else FACT_RELATIONS
        if self.headline_l0 not in self.frontier_targets or not set(self.stability_targets) <= set(self.frontier_targets):
            raise ValueError(f"headline_l0={self.headline_l0} and stability_targets={self.stability_targets} must be among "
                             f"the frontier targets {self.frontier_targets}")


def run_reproduce(settings: Settings) -> dict:
    """Run the main job: the stages below, in ``STAGES``' order, each cached under ``OUT/cache``;
    returns the results dict also written to ``OUT/results.json``."""
    datasets.disable_progress_bars()  # our stages show their own bars
    s = settings
    s.out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(s.device)
    prog = Progress(STAGES)
    t_start = time.time()
    job = _model_and_prompts(s, device, prog)
    _activations(job, prog)
    geo, front, paper = _geometry(job, prog), _frontier(job, prog), _paper_regime(job, prog)
    unit_res, cap, tokens = _evaluate_units(job, prog), _capacity(job, prog), _token_frontier(job, prog)
    steer, links = _steering(job, prog), _cards(job, prog)
    return _report(job, prog, geo, unit_res, cap, steer, t_start, front, paper, tokens, links)


STAGES = ["model and prompts", "activations", "geometry", "frontier", "paper regime", "evaluate units",
          "capacity sweep", "token frontier", "steering", "cards", "report"]


@dataclass
class _Job:
    """What the stages share: the settings, the model and hook, the prompts and what earlier stages made."""

    s: Settings
    device: Any
    model: Any
    hook: str
    layer: int
    facts: Any
    data_key: dict
    acc: dict
    fact_acts: Any = None
    train: Any = None
    heldout: Any = None
    saes: dict = field(default_factory=dict)

    @property
    def acts_key(self) -> dict:
        return self.data_key | {"hook": self.hook, "position": "subject_last"}


def _model_and_prompts(s: Settings, device: Any, prog: Progress) -> _Job:
    """1. The model, the hook, the fact prompts and the model's fact accuracy."""
    prog("model and prompts")
    out = s.out
    model = load_model(s.model, device=device)
    layer = s.layer if s.layer is not None else (model.cfg.n_layers * 2) // 5
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"--layer {layer} is outside 0..{model.cfg.n_layers - 1} for {s.model}")
    hook = f"blocks.{layer}.hook_resid_post"
    # one prompt per distinct subject prefix: templates that start with the subject give
    # identical subject-token activations, which would count as separate samples otherwise
    facts = dedupe_subject_prefix(fact_prompts(n_cities=s.n_cities, relations=s.relations, seed=s.seed))
    data_key = {"model": s.model, "n_cities": s.n_cities, "relations": s.relations, "seed": s.seed,
                "n_facts": len(facts), "version": 2}
    city = facts.filter(lambda r: r["relation"] == "city_country")
    n_acc = min(len(city), s.n_accuracy)  # a seeded sample
    city = city.shuffle(seed=s.seed).select(range(n_acc))
    acc, reused = json_stage(out, "accuracy", data_key | {"n_acc": n_acc}, s.force,
                              lambda: fact_accuracy(model, city, progress=True))
    prog.done(reused)
    return _Job(s, device, model, hook, layer, facts, data_key, acc)


def _activations(job: _Job, prog: Progress) -> None:
    """2. Subject-token activations of the fact prompts; the train / held-out split. (The other prompt
    family, reasoning prompts, is the geometry stage's own.)"""
    prog("activations")
    s, model, hook = job.s, job.model, job.hook

    def compute(folder: Path) -> None:
        extract(model, job.facts, hook, position="subject_last", batch_size=64).save(folder / "facts")

    fact_acts, reused = stage(s.out, "activations", job.acts_key, s.force, compute, lambda f: ActivationSet.load(f / "facts"))
    job.fact_acts = fact_acts
    job.train, job.heldout = fact_acts.select(split="train"), fact_acts.select(split="heldout")
    prog.done(reused)


def _geometry(job: _Job, prog: Progress) -> dict:
    """3. The representation shift: angles by layer, Euclid vs AIP."""
    prog("geometry")
    s, model = job.s, job.model
    geo_layers = s.geometry_layers or _default_geometry_layers(model.cfg.n_layers, job.layer, s.quick)
    geo, reused = json_stage(s.out, "geometry", job.data_key | {"layers": geo_layers, "n_facts": s.n_geometry_facts, "version": 1},
                              s.force, lambda: geometry.run_geometry(model, GeometryConfig(
                                  layers=geo_layers, n_facts=s.n_geometry_facts, n_reasoning=s.n_reasoning, seed=s.seed)))
    prog.done(reused)
    return geo


def _frontier(job: _Job, prog: Progress) -> dict:
    """4. Every unit kind at every L0 target (``experiments.frontier``); the SAEs at ``headline_l0``
    become the headline units (``SAE_KINDS``), exported under ``OUT/saes``."""
    prog("frontier")
    s, out, device, hook = job.s, job.s.out, job.device, job.hook
    key = job.acts_key | {"targets": s.frontier_targets, "units": s.frontier_units, "expansion": s.frontier_expansion,
                          "steps": s.train_steps, "seed": s.seed, "alpha": frontier.ATOMS_ALPHA,
                          "validation_frac": frontier.VALIDATION_FRAC, "version": 3, "stability": s.stability_targets,
                          "unit_fields": {u: unit_kind(u).overrides(1.0, 64) for u in s.frontier_units}}  # a redefined unit retrains
    key |= {"autocast": True} if s.autocast else {}  # (absent when off: caches of earlier runs stay valid)

    def compute(folder: Path) -> None:
        cfg = frontier.FrontierConfig(targets=s.frontier_targets, units=s.frontier_units, expansion=s.frontier_expansion,
                                      steps=s.train_steps, seed=s.seed, autocast=s.autocast,
                                      stability_targets=s.stability_targets)
        res = frontier.run_frontier(job.train, job.heldout, hook, cfg, device=device, save_dir=folder / "saes")
        write_json(res, folder / "result.json")

    def load(folder: Path) -> tuple[dict, dict]:
        res = json.loads((folder / "result.json").read_text())
        # the headline SAEs; a missing or truncated one fails here and the stage is recomputed
        saes = {unit: SAE.load_from_disk(str(folder / "saes" / frontier.sae_name(unit, s.headline_l0)), device=str(device))
                for unit in SAE_KINDS}
        return res, saes

    (res, job.saes), reused = stage(out, "frontier", key, s.force, compute, load)
    for unit in SAE_KINDS:  # the headline SAEs, in SAELens format beside the report
        src = out / "cache" / "frontier" / "saes" / frontier.sae_name(unit, s.headline_l0)
        follow_umask(shutil.copytree(src, out / "saes" / unit, dirs_exist_ok=True))
    prog.done(reused)
    return res


def _paper_regime(job: _Job, prog: Progress) -> dict:
    """5. The paper's regime: width = n_train, atoms by the theorem's construction (labelled as such)."""
    prog("paper regime")
    s = job.s
    if not s.paper_regime:
        prog.done(False)
        return {}
    key = job.acts_key | {"steps": 0, "seed": s.seed, "version": 3}
    res, reused = json_stage(s.out, "paper_regime", key, s.force, lambda: frontier.paper_regime(
        job.train, job.heldout, job.hook, steps=key["steps"], seed=s.seed, device=job.device))
    prog.done(reused)
    return res


def _evaluate_units(job: _Job, prog: Progress) -> dict:
    """5. Neurons, features and atoms through the evaluators, in-sample (the train entities the
    frontier fitted on, its validation entities left out) and held-out."""
    prog("evaluate units")
    saes, heldout, hook, device, labels = job.saes, job.heldout, job.hook, job.device, LABEL_COLUMNS

    def evaluate_all() -> dict:  # (only when the stage is not cached)
        metric = frontier.reference_metric(job.train, hook)  # one metric for every unit: the robust AIP
        train = frontier.validation_split(job.train, frontier.VALIDATION_FRAC, job.s.seed)[0]
        res = {}
        for unit in UNITS:
            u = evals.neurons(job.model.cfg.d_model) if unit == "neurons" else saes[unit]
            geo = evals.dictionary_geometry(u, metric, device=device)  # the decoder's coherence, once per unit
            ins = evals.evaluate_units(u, train, metric, {c: train.labels(c) for c in labels}, hook=hook, geometry=geo,
                                       device=device)
            held = evals.evaluate_units(u, heldout, metric, {c: heldout.labels(c) for c in labels}, hook=hook,
                                        geometry=geo, device=device)
            res[unit] = {"in_sample": ins, "heldout": held}
        return res

    unit_res, reused = json_stage(job.s.out, "units", job.acts_key | {"saes": [str(_sae_key(saes[u])) for u in SAE_KINDS],
                                                                      "version": 3}, job.s.force, evaluate_all)
    prog.done(reused)
    return unit_res


def _capacity(job: _Job, prog: Progress) -> list:
    """6. The capacity sweep over ``capacity_expansions``."""
    prog("capacity sweep")
    s, hook = job.s, job.hook
    cap_key = job.acts_key | {"expansions": s.capacity_expansions, "steps": s.capacity_steps, "seed": s.seed, "version": 1}
    cfg = capacity.CapacityConfig(expansions=s.capacity_expansions, steps=s.capacity_steps, seed=s.seed)
    cap, reused = json_stage(s.out, "capacity", cap_key, s.force, lambda: capacity.capacity_sweep(
        job.train.x(hook), job.heldout.x(hook), cfg, device=job.device))
    prog.done(reused)
    return cap


def _optional(job: _Job, prog: Progress, label: str, enabled: bool,
              plan: Callable[[], tuple[str, dict, Callable[[], Any]]]) -> dict:
    """A JSON stage that can be switched off ({} then): ``plan()`` gives its cache name, key and work."""
    prog(label)
    res, reused = {}, False
    if enabled:
        name, key, work = plan()
        res, reused = json_stage(job.s.out, name, key, job.s.force, work)
    prog.done(reused)
    return res


def _token_frontier(job: _Job, prog: Progress) -> dict:
    """7. The token benchmark, small (``TOKEN_FRONTIER``; skipped with ``token_frontier=False``)."""
    s = job.s

    def plan() -> tuple[str, dict, Callable[[], Any]]:
        cfg = token_frontier.TokenFrontierConfig(hook=job.hook, seed=s.seed,
                                                 **(TOKEN_FRONTIER_QUICK if s.quick else TOKEN_FRONTIER))
        return "token_frontier", {"model": s.model, "config": dataclasses.asdict(cfg), "version": 4}, \
            lambda: token_frontier.run_token_frontier(job.model, cfg, out=s.out / "token_frontier", device=str(job.device))

    return _optional(job, prog, "token frontier", s.token_frontier, plan)


def _steering(job: _Job, prog: Progress) -> dict:
    """8. Atoms vs jumprelu features vs the difference of means (skipped with ``steer=False``) on each of
    ``steer_relations`` the fact prompts have (``steering_relations``; results in ``OUT/steering/<relation>``),
    the first as the headline ``steering``; ``STEER``'s sizes (``--quick``: the study's quick ones, ``STEER_QUICK``)."""
    s = job.s

    def plan() -> tuple[str, dict, Callable[[], Any]]:
        use = {u: _steering_sae(job, u) for u in ("atoms", "features_jumprelu", "features_topk")}
        use = {u: sae for u, sae in use.items() if sae is not None}
        cfg = steering.steer_config(quick=s.quick, relation="city_country", seed=s.seed, **(STEER_QUICK if s.quick else STEER))
        rels = tuple(r for r in s.steer_relations if r in s.relations)
        key = job.acts_key | {"saes": [str(_sae_key(sae)) for sae in use.values()], "quick": s.quick, "relations": rels,
                              "version": 10}
        every = fact_prompts(n_cities=s.n_cities, relations=s.relations, seed=s.seed)  # not deduplicated: each template a prompt
        return "steering", key, partial(steering.headline_with_relations, job.model, use, every, job.fact_acts, rels, cfg,
                                        out_dir=s.out / "steering")

    return _optional(job, prog, "steering", s.steer, plan)


def _cards(job: _Job, prog: Progress) -> dict[str, str]:
    """9. Atom cards (``sae_atoms.cards``) of the headline atoms and jumprelu features, from the fact
    prompts' subject tokens, in the reference AIP, copied to ``OUT/cards/<unit>``; ``{unit: index path}``."""
    from sae_atoms import cards

    prog("cards")
    use = [u for u in CARDS_UNITS if u in job.saes and job.s.cards]
    cfg = cards.CardConfig(n_cards=job.s.n_cards, progress=False)

    def compute(folder: Path) -> None:
        metric = frontier.reference_metric(job.train, job.hook)  # as the units table: one AIP for every SAE
        for u in use:
            site = cards.site_for(job.model, job.saes[u], job.fact_acts, job.hook, cfg, name=u, metric=metric)
            cards.write_cards(site, folder / u)

    key = job.acts_key | {"saes": [str(_sae_key(job.saes[u])) for u in use], "cards": {"units": CARDS_UNITS, "n_cards": cfg.n_cards}, "version": 2}
    _, reused = stage(job.s.out, "cards", key, job.s.force, compute, lambda f: None) if use else (None, False)
    for u in use:  # replaced whole: no card of an earlier run's units stays behind
        shutil.rmtree(job.s.out / "cards" / u, ignore_errors=True)
        follow_umask(shutil.copytree(job.s.out / "cache" / "cards" / u, job.s.out / "cards" / u))
    prog.done(reused)
    return {u: f"cards/{u}/index.html" for u in use}


def _steering_sae(job: _Job, unit: str) -> Any:
    """The headline SAE of ``unit`` at ``headline_l0``: from ``job.saes``, else the frontier's saved one (topk)."""
    if unit in job.saes:
        return job.saes[unit]
    folder = job.s.out / "cache" / "frontier" / "saes" / frontier.sae_name(unit, job.s.headline_l0)
    return SAE.load_from_disk(str(folder), device=str(job.device)) if (folder / "cfg.json").exists() else None


def _report(job: _Job, prog: Progress, geo: dict, unit_res: dict, cap: list, steer: dict, t_start: float,
            front: dict, paper: dict, tokens: dict, cards: dict) -> dict:
    """``results.json``, the report and ``FINDINGS.md``."""
    prog("report")
    out = job.s.out
    results = collect_results(job, geo, unit_res, cap, steer)
    results |= {"metric": front["metric"], "frontier": front["rows"], "frontier_settings": front["settings"],
                "paper_regime": paper, "units_l0": job.s.headline_l0, "token_frontier": tokens, "cards": cards}
    results |= {"timing_s": prog.times | {"total": round(time.time() - t_start, 1)}, "peak_rss_mb": dict(prog.peak_rss_mb),
                "child_peak_rss_mb": dict(prog.child_peak_rss_mb)}
    write_json(results, out / "results.json")
    write_report(results, out)
    write_findings(results, out / "FINDINGS.md")
    prog.done(False)
    print(f"\nresults: {out / 'results.json'}\nreport:  {out / 'report.md'} (and report.html)")
    return results


def _default_geometry_layers(n_layers: int, layer: int, quick: bool) -> list[int]:
    """Every ``n_layers // 8``-th layer, the hook's and the last; ``quick``: three up to the hook's,
    so its forward passes stop there."""
    if quick:
        return sorted({0, layer // 2, layer})
    return sorted(set(range(0, n_layers, max(1, n_layers // 8))) | {layer, n_layers - 1})


def _sae_key(sae: Any) -> str:
    """The SAE's exact bytes: a float sum of the weights would depend on torch's thread count."""
    return sha256_tensors(sae.state_dict())[:16]


def collect_results(job: _Job, geo: dict, unit_res: dict, cap: list, steer: dict) -> dict:
    """The results dict of the stages' results: the headline keys first, everything measured beside them."""
    s, hook, train, heldout, acc = job.s, job.hook, job.train, job.heldout, job.acc
    main_geo = geo["layers"][str(int(hook.split(".")[1]))] if "layers" in geo else geo
    units = {}
    for unit, r in unit_res.items():
        ins, held = r["in_sample"], r["heldout"]
        units[unit] = {
            "r2": ins["r2"], "r2_heldout": held["r2"], "r2_aip": ins.get("r2_aip"), "r2_aip_heldout": held.get("r2_aip"),
            "l0": ins["l0_mean"], "l0_heldout": held["l0_mean"], "mu": ins["mu"], "mu_raw": ins.get("mu_raw"),
            "q_star_a": ins["q_star_a"], "q_star_b": ins["q_star_b"],
            "q_star_a_heldout": held["q_star_a"], "q_star_b_heldout": held["q_star_b"],
            "monosemanticity": ins["monosemanticity"], "monosemanticity_heldout": held["monosemanticity"],
            "n_units": ins.get("n_units"), "dead_frac": ins.get("dead_frac"),
            "details": {"in_sample": ins, "heldout": held},
        }
    steering_out = {m: {"success_rate": v["success_rate"], "kl_unrelated": v["kl_unrelated"], **{
        k: v[k] for k in v if k not in ("success_rate", "kl_unrelated")}} for m, v in steer.get("methods", {}).items()}
    return {
        "model": s.model, "hook_name": hook, "layer": int(hook.split(".")[1]),
        "n_train": len(train), "n_heldout": len(heldout), "quick": s.quick,
        "fact_accuracy": acc,
        "geometry": {
            "euclid_centroid_deg": main_geo["euclid"]["mean"],
            "aip_centroid_deg": main_geo["aip"]["mean"],
            "aip_heldout_centroid_deg": main_geo["aip_heldout"]["mean"],
            "aip_other_family_centroid_deg": main_geo.get("aip_other_family", {}).get("mean"),
            "by_layer": geo.get("layers", {}),
            "meta": geo.get("meta", {}),
        },
        "units": units,
        "capacity": [{"expansion": r["expansion"], "r2": r["r2_train"], "r2_heldout": r["r2_heldout"],
                      **{k: v for k, v in r.items() if k not in ("expansion",)}} for r in cap],
        "steering": steering_out,
        "steering_relations": steer.get("relations", {}),
        "steering_details": {k: v for k, v in steer.items() if k not in ("methods", "relations")},
        "paper": PAPER_NUMBERS,
    }


# --------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local HF folder or TransformerLens name")
    p.add_argument("--layer", type=int, default=None, help="layer of blocks.L.hook_resid_post (default: 2/5 of depth)")
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"), help="output folder (default runs/reproduce)")
    steer_quick = steering.QUICK | STEER_QUICK
    p.add_argument("--quick", action="store_true", help=(
        f"a smoke run, not results to quote: {QUICK['n_cities']} cities, one relation, L0 targets "
        f"{'/'.join(f'{t:g}' for t in QUICK['frontier_targets'])}, {QUICK['train_steps']} steps per SAE, geometry up to the "
        f"hook's layer, steering with {steer_quick['n_targets']} targets x {steer_quick['n_eval']} "
        f"prompts and {STEER_QUICK['n_seeds']} seed on city -> country"))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--force", action="store_true", help="recompute every stage (ignore the cache in --out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-cities", type=int, default=None,
                   help=f"cities for the fact prompts (default {FULL['n_cities']}; quick {QUICK['n_cities']})")
    p.add_argument("--steps", type=int, default=None, help=(
        f"training steps per frontier SAE (default {FULL['train_steps']}; quick {QUICK['train_steps']}); the capacity "
        f"sweep keeps its own {FULL['capacity_steps']} (quick {QUICK['capacity_steps']})"))
    p.add_argument("--no-steer", action="store_true", help="skip the steering stage")
    p.add_argument("--steer-relations", nargs="+", default=["city_country"], choices=sorted(steering.RELATION_LABEL), help=(
        "relations steered (the first is the headline; others add minutes each), e.g. " + " ".join(steering.DEFAULT_RELATIONS)))
    p.add_argument("--no-token-frontier", action="store_true", help=(
        f"skip the small token benchmark ({', '.join(TOKEN_FRONTIER['units'])} at L0 "
        f"{'/'.join(f'{t:g}' for t in TOKEN_FRONTIER['targets'])}, {TOKEN_FRONTIER['tokens']} tokens; quick "
        f"{TOKEN_FRONTIER_QUICK['tokens']})"))
    p.add_argument("--no-cards", action="store_true", help="skip the atom cards of the headline SAEs (OUT/cards)")
    p.add_argument("--autocast", action="store_true", help="train the frontier's SAEs under SAELens's bfloat16 autocast")
    p.add_argument("--stability-targets", type=float, nargs="*", default=None, help=(
        f"frontier L0s with seed and width consistency (default {' '.join(f'{t:g}' for t in FULL['stability_targets'])}; none: off)"))
    p.add_argument("--readme", type=Path, default=None,
                   help="also write the headline table into this README between the results markers")
    p.add_argument("--findings", type=Path, default=None,
                   help="also write the measured findings (OUT/FINDINGS.md) to this file, e.g. docs/FINDINGS.md")


def run_cli(args: argparse.Namespace) -> int:
    s = Settings(model=args.model, layer=args.layer, out=args.out, quick=args.quick, device=args.device,
                 force=args.force, seed=args.seed, n_cities=args.n_cities, train_steps=args.steps,
                 steer=not args.no_steer, token_frontier=not args.no_token_frontier, cards=not args.no_cards,
                 steer_relations=tuple(args.steer_relations), autocast=args.autocast,
                 stability_targets=None if args.stability_targets is None else tuple(args.stability_targets))
    gc.freeze()  # the imports' objects live to the end: each stage's gc.collect (release_freed_memory) need not walk them
    results = run_reproduce(s)
    print("\n" + headline_table(results))
    if args.readme:
        update_readme(args.readme, results)
        print(f"updated the results table in {args.readme}")
    if args.findings:
        print(f"wrote the findings to {write_findings(results, args.findings)}")
    return 0
