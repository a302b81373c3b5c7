"""The sparsity frontier: neurons, features and atoms compared at matched L0, and the paper's regime.

For each target ``T`` in ``targets`` (default 4, 8, 16, 32, 64) every unit kind is trained on the
train entities' activations and held to mean L0 = T (``sae_atoms.training``: calibrated thresholds
and a post-hoc threshold scale for threshold units, ``k = T`` for top-k, an L1 controller for the
ReLU SAE), at one shared width (``expansion`` x d), each with its usual input normalisation:

    atoms               tsae_aip: robust centred metric (``sae_atoms.aip.ROBUST``), partial
                        whitening S^alpha (alpha = ``FrontierConfig.atoms_alpha``)
    tsae                the same TSAE in raw space (``expected_average_only_in``)
    features_standard   SAELens ``standard`` (ReLU + L1, ``expected_average_only_in``)
    features_jumprelu   SAELens ``jumprelu`` (quadratic L0 loss, ``expected_average_only_in``)
    features_topk       SAELens ``topk`` (k = T, ``expected_average_only_in``)
    features_batchtopk  SAELens ``batchtopk`` (k = T, ``expected_average_only_in``)
    neurons             the standard basis (L0 = d; the reference row)

L0 is matched out of sample. ``validation_split`` sets aside ``validation_frac`` of the train
*entities*; every unit is trained on the others and its final L0 is set to T on the validation
entities (``train_on_activations(match_on=...)``), for every unit kind alike. Atoms fire less on
entities they were not trained on than on those they were, so a match in-sample would compare
them with features at a lower held-out L0; matched out of sample both run at the target on
held-out entities (``l0`` vs ``l0_val`` in the rows).

Every unit is evaluated with one reference metric (``AIPMetric.robust`` at alpha = 1, fitted on
all train entities): R^2 raw and AIP, q* (a) and (b) in that AIP, dead fraction and
monosemanticity, in-sample (the entities trained on) and on held-out entities.

Why these defaults (``FrontierConfig``): partial whitening trades raw R^2 (best at alpha = 0) for
AIP R^2 (best at alpha = 1), and an intermediate alpha keeps atoms close to jumprelu on raw R^2
while ahead on AIP R^2; 1x width and the study's step count keep a run of every unit kind at
every target within a CPU budget. The measured frontier is in ``docs/FINDINGS.md`` (written by
``sae-atoms reproduce``), and each run reports what holds (``goal_check``).

The paper's regime (``paper_regime``): width >= n_train, atoms built by the TSAE theorem's
construction (``saes.construction.theorem_init``: ``W_dec`` = the training samples in the AIP,
unit AIP norm; ``W_enc = D^T S``; each threshold midway between the atom's own amplitude and its
largest off-support pre-activation), on the train rows the robust rule keeps; jumprelu features
at the same width and L0 beside them, trained.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch

from sae_atoms.activations import as_matrix
from sae_atoms.argtypes import named_fields
from sae_atoms.aip import AIPMetric
from sae_atoms.data import LABEL_COLUMNS
from sae_atoms.evals import stability
from sae_atoms.evals import as_units, dictionary_geometry, encode_all, evaluate_units, l0, neurons, table
from sae_atoms.evals.evaluate import BINDING_KEYS
from sae_atoms.experiments.plots import pareto_front, series
from sae_atoms.io import atomic_dir, save_figure, write_json
from sae_atoms.models import resolve_device
from sae_atoms.training import fit_sae, train_on_activations
from sae_atoms.saes.construction import theorem_init
from sae_atoms.saes.orthonormal import ica_atoms
from sae_atoms.units import ATOMS_ALPHA, ONB, atoms_variants, unit_config, unit_kind
from sae_atoms.workers import add_workers_argument, choose_workers, map_jobs

UNITS = ("atoms", "atoms_stable", "tsae", "features_standard", "features_jumprelu", "features_topk", "features_batchtopk")
MORE_UNITS = ("atoms_topk", ONB)  # by name only (--units)
DEFAULT_TARGETS = (4, 8, 16, 32, 64)
DEFAULT_EXPANSION = 1
VALIDATION_FRAC = 0.2
ROW_KEYS = ("unit", "target_l0", "l0", "l0_val", "l0_heldout", "r2", "r2_heldout", "r2_aip", "r2_aip_heldout", "q_star_a",
            "q_star_b", "q_star_b_heldout", "dead_frac", "monosemanticity")


def row_keys(rows: Sequence[dict]) -> tuple[str, ...]:
    """``ROW_KEYS``, and the stability columns when a row has them (``FrontierConfig.stability_targets``)."""
    return ROW_KEYS + stability.row_keys(rows)


@dataclass(frozen=True)
class FrontierConfig:
    """Settings of ``run_frontier`` and ``train_unit`` (the study's own training length: ``steps``
    of ``batch_size``, not the library's ``training.DEFAULT_STEPS``)."""

    targets: tuple[float, ...] = DEFAULT_TARGETS
    units: tuple[str, ...] = UNITS
    expansion: float = DEFAULT_EXPANSION   # width as a multiple of d, every unit kind alike
    steps: int = 800
    batch_size: int = 256
    seed: int = 0
    atoms_alpha: float = ATOMS_ALPHA       # partial whitening S^alpha of the atoms
    validation_frac: float | None = VALIDATION_FRAC  # None: train on all train entities, match L0 in-sample
    stability_targets: tuple[float, ...] = ()  # at these L0s also seed and width consistency (2 more SAEs each)
    atoms_variants: tuple = ()  # ((name, ((field, value), ...)), ...): atoms designs trained beside, as atoms_<name>
    workers: int | None = None  # processes training SAEs at once (None: one per free core, workers.choose_workers)
    autocast: bool = False  # SAELens's bfloat16 autocast in each training step (training.TrainOptions.autocast)


def frontier_config(unit: str, d_in: int, d_sae: int, target_l0: float, atoms_alpha: float = ATOMS_ALPHA,
                    hook: str | None = None, variant: dict[str, Any] | None = None) -> Any:
    """``units.unit_config``, with the atoms' partial whitening ``atoms_alpha``; ``variant``: the
    tsae_aip config fields of an atoms design (``unit`` then names it, ``FrontierConfig.atoms_variants``)."""
    if variant is not None:
        return unit_config("atoms", d_in, d_sae, target_l0, hook, **({"aip_alpha": atoms_alpha} | variant))
    return unit_config(unit, d_in, d_sae, target_l0, hook, **({"aip_alpha": atoms_alpha} if unit == "atoms" else {}))


def designs(c: FrontierConfig) -> dict[str, dict[str, Any]]:
    """Each atoms variant's unit name, ``atoms_<name>`` -> its tsae_aip config fields (``units.atoms_variants``)."""
    return atoms_variants(c.atoms_variants)


def _metric_alpha(unit: str, c: FrontierConfig, design: dict[str, dict[str, Any]]) -> float | None:
    """The partial whitening a ``tsae_aip`` unit trains in: the atoms' ``c.atoms_alpha`` (or an atoms
    design's own), else its kind's; None for the other architectures (no metric of their own)."""
    if unit == "atoms" or unit in design:
        return float(design.get(unit, {}).get("aip_alpha", c.atoms_alpha))
    kind = unit_kind(unit)
    return kind.overrides(1.0, 1)["aip_alpha"] if kind.architecture == "tsae_aip" else None


def _labels(acts: Any) -> dict[str, list] | None:
    if not hasattr(acts, "labels"):
        return None
    return {c: acts.labels(c) for c in LABEL_COLUMNS if c in acts.rows.column_names} or None


class Splits(NamedTuple):
    """The activations a frontier row is measured on, at ``hook``: the train entities (in-sample),
    the held-out entities, and the validation entities its L0 is matched on (optional)."""

    train: Any
    heldout: Any
    hook: str
    val: Any = None


def evaluate_row(unit: str, units: Any, target: float | None, splits: Splits, ref: AIPMetric,
                 device: Any = None) -> dict[str, Any]:
    """One frontier row: ``units`` evaluated in-sample and on held-out entities with the metric ``ref``
    (and the mean L0 on the validation entities, when given); the coherence is computed once."""
    train, heldout, hook, val = splits
    geo = dictionary_geometry(units, ref, device=device)
    ins = evaluate_units(units, train, ref, _labels(train), hook=hook, geometry=geo, device=device)
    held = evaluate_units(units, heldout, ref, _labels(heldout), hook=hook, geometry=geo, device=device)
    l0_val = None if val is None else float(l0(encode_all(as_units(units), as_matrix(val, hook).float())[0]).float().mean())
    return {"unit": unit, "target_l0": target, "l0": ins["l0_mean"], "l0_val": l0_val, "l0_heldout": held["l0_mean"],
            "r2": ins["r2"], "r2_heldout": held["r2"], "r2_aip": ins["r2_aip"], "r2_aip_heldout": held["r2_aip"],
            "q_star_a": ins["q_star_a"], "q_star_b": ins["q_star_b"], "q_star_b_heldout": held["q_star_b"],
            "dead_frac": ins["dead_frac"], "monosemanticity": ins.get("monosemanticity"),
            **{f"{k}_heldout": held.get(k) for k in BINDING_KEYS}}


def train_unit(unit: str, x: torch.Tensor, target_l0: float, cfg: FrontierConfig | None = None, *,
               device: Any = None, hook: str | None = None, metric: AIPMetric | None = None,
               match_on: torch.Tensor | None = None) -> Any:
    """Train one frontier unit kind on ``x`` held to ``target_l0`` (the inference SAE) with ``cfg``'s
    width, steps, batch size, seed and atoms' alpha; with ``match_on`` the final L0 is set on those
    rows (``train_on_activations``). ``atoms_onb`` is built in ``metric`` (``ica_atoms``), not trained."""
    c = cfg or FrontierConfig()
    if unit == ONB:  # one basis per unit of width, top-k at the target (run_frontier passes the reference AIP)
        return ica_atoms(x, int(round(target_l0)), metric, n_bases=max(1, round(c.expansion)), seed=c.seed, hook=hook).to(resolve_device(device))
    sae_cfg = frontier_config(unit, x.shape[1], int(round(c.expansion * x.shape[1])), target_l0, c.atoms_alpha, hook,
                              designs(c).get(unit))
    return train_on_activations(x, sae_cfg, steps=c.steps, seed=c.seed, target_l0=target_l0, match_on=match_on,
                                batch_size=c.batch_size, device=device, metric=metric, progress=False, autocast=c.autocast)


def stability_columns(sae: Any, train: Callable[[FrontierConfig], Any], c: FrontierConfig, x: torch.Tensor,
                      ref: AIPMetric) -> dict[str, float]:
    """Seed consistency (the same config at seed ``c.seed + 1``) and width consistency (twice the
    width, seed ``c.seed + 2``: another seed, so no initial row is shared) of ``sae``: the live rows
    matched one to one on |cos| in the reference AIP (``evals.stability``)."""
    return stability.stability_columns(sae, train(replace(c, seed=c.seed + 1)),
                                       train(replace(c, seed=c.seed + 2, expansion=2 * c.expansion)), x, ref)


def validation_split(train: Any, frac: float = VALIDATION_FRAC, seed: int = 0) -> tuple[Any, Any]:
    """``(fit, val)``: ``frac`` of the train *entities* (the ``subject`` column of an ``ActivationSet``;
    rows of a plain tensor) set aside, chosen by a seeded shuffle; every row of an entity on one side."""
    if not 0.0 < frac < 1.0:
        raise ValueError(f"validation_frac={frac} must lie in (0, 1).")
    g = torch.Generator().manual_seed(seed)
    if hasattr(train, "rows") and "subject" in train.rows.column_names:
        subjects = train.labels("subject")
        names = sorted(set(subjects))
        chosen = {names[i] for i in torch.randperm(len(names), generator=g)[:max(1, int(frac * len(names)))].tolist()}
        is_val = torch.tensor([sub in chosen for sub in subjects])
    else:
        n = len(train)
        is_val = torch.zeros(n, dtype=torch.bool)
        is_val[torch.randperm(n, generator=g)[:max(1, int(frac * n))]] = True
    if is_val.all() or not is_val.any():
        raise ValueError(f"validation_split: need at least two entities to split, got {int(is_val.numel())} rows.")
    pick = (lambda m: train[m]) if isinstance(train, torch.Tensor) else (
        lambda m: train.select(indices=torch.nonzero(m).squeeze(1)))
    return pick(~is_val), pick(is_val)


def sae_name(unit: str, target: float) -> str:
    """The folder of ``unit``'s SAE at L0 ``target``: ``atoms_l0_16``, ``atoms_l0_4.6``."""
    return f"{unit}_l0_{float(target):g}"


def check_targets(targets: Sequence[float]) -> None:
    """L0 targets must be finite, positive and name distinct SAE folders (``sae_name``)."""
    bad = [t for t in targets if not (math.isfinite(float(t)) and float(t) > 0)]
    if bad or not len(targets):
        raise ValueError(f"--targets must be finite L0 targets > 0; got {list(targets)}.")
    names: dict[str, float] = {}
    for t in targets:
        if sae_name("u", t) in names:
            raise ValueError(f"--targets {names[sae_name('u', t)]:g} and {t:g} would share the SAE folder "
                             f"{sae_name('<unit>', t)}; give distinct targets.")
        names[sae_name("u", t)] = t


def is_frontier_output(path: str | Path) -> bool:
    """True if ``path`` holds a frontier run (its results.json): a folder ``sae-atoms frontier`` replaces."""
    try:
        res = json.loads((Path(path) / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(res, dict) and {"rows", "metric", "settings"} <= set(res)


def reference_metric(train: Any, hook: str) -> AIPMetric:
    """The metric every unit is measured in: the robust AIP (alpha = 1) of the train entities."""
    return AIPMetric.robust(as_matrix(train, hook).float())


def run_frontier(train: Any, heldout: Any, hook: str, cfg: FrontierConfig | None = None, *, device: Any = None,
                 save_dir: Path | None = None, progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Train and evaluate every ``cfg.units`` kind at every ``cfg.targets`` L0; returns
    ``{"rows", "metric", "settings"}``. ``overrides`` replace fields of ``cfg`` (default ``FrontierConfig()``).

    Units are trained on the train entities less a ``validation_frac`` share (``validation_split``)
    and their L0 is matched on that share (None: trained on all train entities, matched in-sample).
    With ``save_dir`` each SAE is saved (SAELens format) to ``save_dir/<unit>_l0_<T>`` (``sae_name``).
    """
    from tqdm.auto import tqdm

    c = replace(cfg or FrontierConfig(), **overrides)
    check_targets(c.targets)
    bad = sorted(set(c.units) - set(UNITS + MORE_UNITS))
    if bad:
        raise ValueError(f"unknown frontier units {bad}; choose from {UNITS + MORE_UNITS}.")
    ref = reference_metric(train, hook)
    fit, val = validation_split(train, c.validation_frac, c.seed) if c.validation_frac else (train, None)
    x, x_val = as_matrix(fit, hook).float(), (None if val is None else as_matrix(val, hook).float())
    splits = Splits(fit, heldout, hook, val)
    rows = [evaluate_row("neurons", neurons(x.shape[1]), None, splits, ref, device)]
    design = designs(c)
    units = tuple(c.units) + tuple(design)
    alphas = {u: _metric_alpha(u, c, design) for u in units if u != ONB}
    atoms_metric = {u: AIPMetric.robust(x, alpha=a) for u, a in alphas.items() if a is not None}  # each one's partial whitening
    jobs = [(t, u) for t in c.targets for u in units]
    shared = FrontierJobs(c, x, x_val, splits, ref, atoms_metric, device, None if save_dir is None else Path(save_dir))
    with tqdm(total=len(jobs), desc="frontier", unit="SAE", disable=not progress) as bar:
        rows += map_jobs(frontier_row, jobs, shared, workers=choose_workers(c.workers, len(jobs), device),
                         progress=bar.update, cost=partial(job_cost, c))
    return {"rows": rows, "metric": {"reference": ref.provenance(), **{u: m.provenance() for u, m in atoms_metric.items()}},
            "settings": _settings(c, hook, x, x_val, as_matrix(heldout, hook))}


class FrontierJobs(NamedTuple):
    """What every frontier job reads (``frontier_row``): sent once to each worker process."""

    cfg: FrontierConfig
    x: torch.Tensor
    x_val: torch.Tensor | None
    splits: Splits
    ref: AIPMetric
    atoms_metric: dict[str, AIPMetric]
    device: Any
    save_dir: Path | None


def job_cost(c: FrontierConfig, job: tuple[float, str]) -> float:
    """A frontier job's relative cost, so that workers start the costliest first: one SAE, and at
    ``stability_targets`` its seed twin and its twin of twice the width (``stability_columns``)."""
    return 4.0 if job[0] in c.stability_targets else 1.0


def frontier_row(s: FrontierJobs, job: tuple[float, str]) -> dict[str, Any]:
    """One frontier job: unit kind ``u`` trained at target ``t``, evaluated (and its stability twins,
    at ``stability_targets``), saved to ``save_dir/sae_name(u, t)`` when given; returns its row."""
    t, u = job
    t0 = time.time()
    train = partial(train_unit, u, s.x, t, device=s.device, hook=s.splits.hook, match_on=s.x_val,
                    metric=s.ref if u == ONB else s.atoms_metric.get(u))  # atoms_onb: orthogonal where q* is read
    sae = train(s.cfg)
    row = evaluate_row(u, sae, t, s.splits, s.ref, s.device)
    if t in s.cfg.stability_targets:
        row |= stability_columns(sae, train, s.cfg, s.x, s.ref)
    if s.save_dir is not None:
        with atomic_dir(s.save_dir / sae_name(u, t)) as tmp:
            sae.save_model(str(tmp))
    return row | {"seconds": round(time.time() - t0, 1)}


def _settings(c: FrontierConfig, hook: str, x: torch.Tensor, x_val: torch.Tensor | None,
              heldout: torch.Tensor) -> dict[str, Any]:
    """The ``settings`` block of a frontier result: the config and the row counts."""
    return {"targets": list(c.targets), "units": list(c.units), "expansion": c.expansion,
            "d_sae": int(round(c.expansion * x.shape[1])), "steps": c.steps, "batch_size": c.batch_size,
            "seed": c.seed, "atoms_alpha": c.atoms_alpha, "n_train": int(x.shape[0]),
            "n_val": 0 if x_val is None else int(x_val.shape[0]), "validation_frac": c.validation_frac,
            "l0_matched_on": "validation entities" if x_val is not None else "training rows",
            "n_heldout": int(heldout.float().shape[0]), "hook": hook, "stability_targets": list(c.stability_targets),
            "atoms_variants": designs(c), "autocast": c.autocast}


# --------------------------------------------------------------------------- the paper's regime
def paper_regime(train: Any, heldout: Any, hook: str, *, steps: int = 0, seed: int = 0, device: Any = None,
                 ref: AIPMetric | None = None, outlier_factor: float = 10.0) -> dict[str, Any]:
    """Atoms (the theorem's construction; then ``steps`` gradient steps, none by default) and jumprelu
    features at width n_train, on the train rows the robust rule keeps (norm <= ``outlier_factor`` x
    the median: a row far longer than the rest would otherwise fire a large share of the atoms in the
    AIP and wreck the in-sample R^2)."""
    x = as_matrix(train, hook).float()
    norms = x.norm(dim=1)
    keep = torch.nonzero(norms <= outlier_factor * norms.median()).squeeze(1)
    if len(keep) < len(x) and hasattr(train, "select"):
        train, x = train.select(indices=keep), x[keep]
    ref = ref if ref is not None else reference_metric(train, hook)
    n = x.shape[0]
    cfg = frontier_config("atoms", x.shape[1], n, 1.0, atoms_alpha=1.0, hook=hook)
    from sae_lens.registry import get_sae_training_class

    from sae_atoms.saes import to_inference

    torch.manual_seed(seed)
    sae = get_sae_training_class("tsae_aip")[0](cfg).set_metric(ref)
    untied = theorem_init(sae, x)
    atoms = to_inference(fit_sae(sae, x, steps=steps, lr=1e-4, seed=seed, progress=False) if steps else sae)
    out = {"atoms": evaluate_row("atoms", atoms, 1.0, Splits(train, heldout, hook), ref, device)}
    atoms_l0 = out["atoms"]["l0"]
    jr = train_unit("features_jumprelu", x, max(atoms_l0, 1.0),
                    FrontierConfig(expansion=n / x.shape[1], steps=max(steps, 200), seed=seed), device=device, hook=hook)
    out["features_jumprelu"] = evaluate_row("features_jumprelu", jr, max(atoms_l0, 1.0), Splits(train, heldout, hook), ref,
                                            device)
    for r in out.values():
        r.update({"n_train": int(n), "d_sae": int(n)})
    out["atoms"]["untied_encoders"] = untied
    return out


# --------------------------------------------------------------------------- tables, plot, CLI
def matched_l0(row: dict) -> float:
    """The L0 a row was matched on: on the validation entities when it has one, else in-sample."""
    return row["l0_val"] if row.get("l0_val") is not None else row["l0"]


def matched_rows(rows: Sequence[dict], tolerance: float = 0.15) -> list[dict]:
    """The rows whose matched L0 lies within ``tolerance`` of their target (neurons always)."""
    return [r for r in rows if r["target_l0"] is None or abs(matched_l0(r) - r["target_l0"]) <= tolerance * r["target_l0"]]


def format_table(rows: Sequence[dict]) -> str:
    """The frontier's rows as a Markdown table (``row_keys``)."""
    return table.format_table([(r["unit"], r) for r in rows], row_keys(rows)[1:], label="unit", digits=3, missing="–",
                              markdown=True)


def goal_check(rows: Sequence[dict], max_l0: float = 32.0, raw_ratio: float = 0.9) -> list[dict]:
    """The frontier's goal at each target <= ``max_l0``: atoms' held-out AIP R^2 >= jumprelu's, and atoms'
    held-out raw R^2 >= ``raw_ratio`` x jumprelu's (both matched L0s, and both held-out L0s, within 15%
    of the target)."""
    by = {(r["unit"], r["target_l0"]): r for r in rows}
    out = []
    for t in sorted({r["target_l0"] for r in rows if r["target_l0"] is not None and r["target_l0"] <= max_l0}):
        a, j = by.get(("atoms", t)), by.get(("features_jumprelu", t))
        if a is None or j is None:
            continue
        matched = all(abs(v - t) <= 0.15 * t for r in (a, j) for v in (matched_l0(r), r["l0_heldout"]))
        aip_ok = a["r2_aip_heldout"] >= j["r2_aip_heldout"]
        raw_ok = a["r2_heldout"] >= raw_ratio * j["r2_heldout"] if j["r2_heldout"] > 0 else a["r2_heldout"] >= j["r2_heldout"]
        out.append({"target_l0": t, "matched": matched, "aip_ok": aip_ok, "raw_ok": raw_ok,
                    "atoms": (a["r2_heldout"], a["r2_aip_heldout"]), "jumprelu": (j["r2_heldout"], j["r2_aip_heldout"])})
    return out


def reading(rows: Sequence[dict], paper: dict | None = None) -> list[str]:
    """Plain-words findings computed from the frontier rows and the paper-regime rows."""
    out = []
    checks = goal_check(rows)
    if checks:
        parts = [f"L0 {c['target_l0']:g}: atoms {c['atoms'][0]:.3f} raw / {c['atoms'][1]:.3f} AIP vs jumprelu "
                 f"{c['jumprelu'][0]:.3f} / {c['jumprelu'][1]:.3f} ({'both parts met' if c['aip_ok'] and c['raw_ok'] else 'AIP part ' + ('met' if c['aip_ok'] else 'missed') + ', raw part ' + ('met' if c['raw_ok'] else 'missed')}{'' if c['matched'] else ', L0 not matched'})"
                 for c in checks]
        n_ok = sum(c["aip_ok"] and c["raw_ok"] and c["matched"] for c in checks)
        out.append(f"Matched-L0 frontier, held-out entities (goal: atoms' AIP R² ≥ jumprelu's and raw R² ≥ 0.9 × "
                   f"jumprelu's): met at {n_ok}/{len(checks)} targets ≤ 32. " + "; ".join(parts) + ".")
    if paper and "atoms" in paper:
        a = paper["atoms"]
        at_paper = a["r2"] >= 0.999 and a["q_star_b"] >= 0.99 and a["l0"] <= 2
        out.append(f"The paper's regime (width = n_train = {a['d_sae']}, atoms = the training samples in the AIP): "
                   f"in-sample R² {a['r2']:.4f}, q* (b) {a['q_star_b']:.3f}, L0 {a['l0']:.2f} — "
                   + ("the paper's numbers appear here" if at_paper else "the paper's numbers do not fully appear")
                   + f"; on held-out entities R² {a['r2_heldout']:.3f} at L0 {a['l0_heldout']:.2f}: "
                   + ("memorisation, not atoms that generalise." if a["r2_heldout"] < 0.5 else "it carries over."))
    return out


def plot_frontier(rows: Sequence[dict], path: Path) -> Path:
    """Held-out raw R^2, held-out AIP R^2 and q* (b) against L0, one line per unit kind; and held-out
    q* (b) against held-out raw R^2 (one point per unit and L0, the Pareto front dotted)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    units = [u for u in dict.fromkeys(r["unit"] for r in rows) if u != "neurons"]
    panels = (("r2_heldout", "held-out R² (raw)", "R² on held-out entities (raw)"),
              ("r2_aip_heldout", "held-out R² (AIP)", "R² on held-out entities (AIP)"),
              ("q_star_b", "q* (b), in-sample", "stability q* (reading b)"))
    for ax, (key, title, ylabel) in zip(axes, panels):
        for i, u in enumerate(units):
            pts = sorted((matched_l0(r), r[key]) for r in rows if r["unit"] == u and r.get(key) is not None)
            series(ax, i, u, pts)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="L0 (matched, validation entities)", ylabel=ylabel, title=title)
    ax = axes[3]
    every = []
    for i, u in enumerate(units):
        pts = [(r["r2_heldout"], r["q_star_b_heldout"]) for r in sorted(rows, key=matched_l0)
               if r["unit"] == u and r.get("q_star_b_heldout") is not None]
        series(ax, i, u, pts)
        every += pts
    front = pareto_front(every)
    ax.plot([p[0] for p in front], [p[1] for p in front], "k:", lw=1, label="_Pareto front")
    ax.set(xlabel="held-out R² (raw)", ylabel="held-out q* (b)", title="Stability vs faithfulness, held-out (dotted: Pareto front)")
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(units), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(fig, path)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--activations", required=True, help="an activation set (sae-atoms extract) with train/heldout splits")
    p.add_argument("--hook", default=None, help="hook name in the set (default: its only hook)")
    p.add_argument("--targets", type=float, nargs="+", default=list(DEFAULT_TARGETS), help="L0 targets")
    p.add_argument("--units", nargs="+", default=list(UNITS), choices=UNITS + MORE_UNITS)
    p.add_argument("--stability-targets", type=float, nargs="*", default=[],
                   help="L0 targets at which to add seed and width consistency (2 more SAEs per unit kind and target)")
    p.add_argument("--expansion", type=float, default=DEFAULT_EXPANSION, help="width as a multiple of d (all units)")
    p.add_argument("--steps", type=int, default=FrontierConfig.steps)
    p.add_argument("--batch-size", type=int, default=FrontierConfig.batch_size)
    p.add_argument("--atoms-alpha", type=float, default=ATOMS_ALPHA, help="partial whitening of the atoms (1 = AIP)")
    p.add_argument("--paper-regime", action="store_true", help="also run the paper's regime (width = n_train)")
    p.add_argument("--atoms-variant", type=named_fields, action="append", default=[], metavar="NAME=FIELD:VALUE,...",
                   help="also train atoms with these tsae_aip config fields, as unit atoms_NAME (repeatable; a sweep "
                        "of a design), e.g. c1e6=stability_coefficient:1e6,aip_alpha:1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--autocast", action="store_true", help="train under SAELens's bfloat16 autocast (matrix products in "
                                                           "bfloat16: faster where the CPU has bfloat16 instructions)")
    p.add_argument("--device", default=None)
    add_workers_argument(p)
    p.add_argument("--out", required=True, help="output folder (results.json, frontier.png, saes/); a run replaces "
                                                "a frontier run's folder whole, at its end")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if it is a non-empty folder that is "
                                                            "not a frontier run")


def run_cli(args: argparse.Namespace) -> int:
    """Writes the whole run into a temporary folder that replaces ``--out`` at the end: a killed run
    leaves the previous run's results.json and SAEs together, never a mix of two runs."""
    from sae_atoms.activations import ActivationSet
    from sae_atoms.io import check_output_dir, remove_stale

    check_targets(args.targets)
    if args.steps < 1 or args.expansion <= 0:
        raise SystemExit("--steps and --expansion must be positive.")
    choose_workers(args.workers, 1)  # a bad --workers is refused before any work
    out = Path(args.out)
    check_output_dir(out, is_frontier_output, args.overwrite)
    acts = ActivationSet.load(args.activations)
    hook = args.hook or acts.hook_names[0]
    train, held = acts.select(split="train"), acts.select(split="heldout")
    if len(train) == 0 or len(held) == 0:
        raise SystemExit(f"{args.activations} needs both train and heldout rows (a split column); extract it with sae-atoms extract.")
    remove_stale(out)
    with atomic_dir(out) as tmp:
        cfg = FrontierConfig(targets=tuple(args.targets), units=tuple(args.units), expansion=args.expansion,
                             steps=args.steps, batch_size=args.batch_size, seed=args.seed, atoms_alpha=args.atoms_alpha,
                             stability_targets=tuple(args.stability_targets), workers=args.workers,
                             atoms_variants=tuple(args.atoms_variant), autocast=args.autocast)
        res = run_frontier(train, held, hook, cfg, device=args.device, save_dir=tmp / "saes")
        if args.paper_regime:
            res["paper_regime"] = paper_regime(train, held, hook, seed=args.seed, device=args.device)
        write_json(res, tmp / "results.json")
        plot_frontier(res["rows"], tmp / "frontier.png")
    print(format_table(res["rows"]))
    return 0
