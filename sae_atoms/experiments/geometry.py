"""The representation-shift experiment: angles between activations, Euclid vs AIP, by layer.

Atom Theory (arXiv 2509.20784) claims that Euclidean angles between a model's activations are
centred far from 90 degrees (a dominant shared direction, a "representation shift" from softmax
training), and that under the atomic inner product (``sae_atoms.aip``) they re-centre at 90.

For a set of activations ``x_1..x_n`` the pairwise angles are

    theta_ij = degrees(arccos(<x_i, x_j> / (||x_i|| ||x_j||)))          (Euclid)
    theta_ij = degrees(arccos(<x_i, x_j>_S / (||x_i||_S ||x_j||_S)))    (AIP, S = E[m m^T]^-1)

over all pairs i < j. The *angular centroid* is their mean; we also report the median and the
mode (centre of the fullest ``bin_width``-degree histogram bin) and the histogram itself.

A reviewer's caution: with ``S`` fitted on the same data a centroid near 90 is partly true by
construction, so every layer reports four AIP/Euclid views:

* ``euclid`` / ``aip``: in-sample (the metric is fitted on the train split; angles on a sample
  of the same train activations);
* ``aip_heldout`` (and ``euclid_heldout``): angles on held-out *entities* (split by subject);
* ``aip_other_family`` (and ``euclid_other_family``): angles on the reasoning prompts, with the
  metric still fitted on the fact prompts;
* ``aip_centered`` / ``aip_centered_heldout``: the same with the centred covariance (option).

Data (defaults, sized so ``sae-atoms geometry --layers all`` runs on a few CPU cores in
minutes): ``n_facts=1600`` fact prompts (all relations, cities + countries) after removing
prompts whose subject prefix repeats (the subject-last-token activation of a causal model
depends only on ``prompt[:subject_end]``, so e.g. "{s} is a city..." and "{s} is a town..."
give identical activations), about 80 % train / 20 % held-out by subject, and
``n_reasoning=300`` reasoning prompts. Activations: last token of the subject, at
``blocks.L.hook_resid_post`` for every requested layer, in one forward pass per batch. The metric
is fitted on all train activations of a layer; angles use up to ``n_angle_samples=400``
activations per set (79,800 pairs).
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from sae_atoms.io import save_figure, write_json
from sae_atoms.aip import AIPConditioningWarning, AIPMetric

HOOK_TEMPLATE = "blocks.{layer}.hook_resid_post"
SITES = {"resid": "blocks.{layer}.hook_resid_post", "mlp": "blocks.{layer}.mlp.hook_post"}  # generic-metric sites
VIEWS = ("euclid", "aip", "aip_heldout", "aip_other_family")


@dataclass
class GeometryConfig:
    """Settings of the geometry experiment (``run_geometry``; ``layer_geometry`` reads ``kind``,
    ``shrinkage``, ``n_angle_samples``, ``bin_width`` and ``seed``); the module docstring gives the
    defaults' reasons."""

    model: str = "smollm2-135m"
    layers: str | list[int] = "all"
    hook_template: str = HOOK_TEMPLATE
    n_facts: int = 1600
    n_reasoning: int = 300
    n_angle_samples: int = 400
    kind: str = "uncentered"
    shrinkage: str | float = "auto"
    bin_width: float = 1.0
    seed: int = 0
    batch_size: int = 32
    hist_layers: list[int] = field(default_factory=list)  # default: first, middle, last



# --------------------------------------------------------------------------- statistics
def upper_angles(ang: Tensor) -> Tensor:
    """The strict upper triangle (pairs i < j) of a square angle matrix, flattened."""
    n = ang.shape[0]
    iu = torch.triu_indices(n, n, 1, device=ang.device)
    return ang[iu[0], iu[1]]


def euclid_angles(a: Tensor, b: Tensor | None = None) -> Tensor:
    """Pairwise Euclidean angles in degrees, ``[n, m]`` (float64): ``arccos(cos(a_i, b_j))``."""
    ua = torch.nn.functional.normalize(a.to(torch.float64), dim=-1)
    ub = ua if b is None else torch.nn.functional.normalize(b.to(torch.float64), dim=-1)
    return torch.rad2deg(torch.arccos((ua @ ub.T).clamp(-1.0, 1.0)))


def angle_stats(angles: Tensor, bin_width: float = 1.0, n_samples: int | None = None) -> dict[str, Any]:
    """Mean (angular centroid), median, mode, std and histogram of a flat tensor of angles (degrees).

    The mode is the centre of the fullest bin of a histogram over [0, 180] with ``bin_width``
    degree bins (ties: the lowest); ``hist`` holds the counts, bin ``k`` covering
    ``[k * bin_width, (k + 1) * bin_width)``.
    """
    a = angles.detach().to(torch.float64).flatten().cpu()
    if a.numel() == 0:
        raise ValueError("no angles to summarise: a set needs at least two activations.")
    if not (0 < bin_width <= 180):
        raise ValueError(f"bin_width={bin_width} must be in (0, 180] degrees.")
    nb = int(math.ceil(180.0 / bin_width))
    hist = torch.histc(a, bins=nb, min=0.0, max=nb * bin_width)
    k = int(torch.argmax(hist))
    out = {"mean": float(a.mean()), "median": float(a.median()), "mode": (k + 0.5) * bin_width,
           "std": float(a.std()) if a.numel() > 1 else 0.0, "n": int(a.numel()),
           "bin_width": bin_width, "hist": [int(c) for c in hist.tolist()]}
    if n_samples is not None:
        out["n_samples"] = int(n_samples)
    return out


def _sample(x: Tensor, k: int, seed: int) -> Tensor:
    if x.shape[0] <= k:
        return x
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=g)[:k]]


def layer_geometry(train_x: Tensor, heldout_x: Tensor | None = None, other_x: Tensor | None = None,
                   cfg: GeometryConfig | None = None, *, centered_too: bool = True, metric: AIPMetric | None = None,
                   warn: bool = True, **overrides: Any) -> dict[str, Any]:
    """Angle statistics for one layer: Euclid vs AIP, in-sample, held-out and other family.

    Args:
        train_x: ``[n, d]`` activations the metric is fitted on (unless ``metric`` is given);
            in-sample angles use up to ``n_angle_samples`` of them.
        heldout_x: activations of held-out entities (same prompt family), or None.
        other_x: activations of another prompt family (e.g. reasoning), or None.
        cfg: ``GeometryConfig`` (``overrides`` replace its fields): ``kind`` and ``shrinkage`` go to
            ``AIPMetric.fit`` (the paper: uncentred, no shrinkage; ``"auto"`` adds a ridge only when the
            moment is ill-conditioned, with a warning); ``n_angle_samples``, ``bin_width``, ``seed``.
        centered_too: also report ``aip_centered`` (+ ``_heldout``) with a centred metric.
        warn: re-emit conditioning warnings (they are always recorded in ``metric.warnings``).

    Returns ``{view: angle_stats}`` for views ``euclid``, ``aip`` and, when the data is given,
    ``euclid_heldout``, ``aip_heldout``, ``euclid_other_family``, ``aip_other_family``,
    ``aip_centered``, ``aip_centered_heldout``; plus ``metric`` (its diagnostics).
    """
    if train_x.dim() != 2 or train_x.shape[0] < 2:
        raise ValueError(f"train_x must be [n >= 2, d] activations; got shape {tuple(train_x.shape)}.")
    c = replace(cfg or GeometryConfig(), **overrides)
    kind, shrinkage, n_angle_samples, bin_width, seed = c.kind, c.shrinkage, c.n_angle_samples, c.bin_width, c.seed
    caught: list[str] = []
    if metric is None:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always", AIPConditioningWarning)
            metric = AIPMetric.fit(train_x, kind=kind, shrinkage=shrinkage)
        caught += [str(w.message) for w in rec if issubclass(w.category, AIPConditioningWarning)]
    sets = {"": _sample(train_x, n_angle_samples, seed)}
    if heldout_x is not None and heldout_x.shape[0] >= 2:
        sets["_heldout"] = _sample(heldout_x, n_angle_samples, seed + 1)
    if other_x is not None and other_x.shape[0] >= 2:
        sets["_other_family"] = _sample(other_x, n_angle_samples, seed + 2)
    out: dict[str, Any] = {}
    for suffix, x in sets.items():
        out[f"euclid{suffix}"] = angle_stats(upper_angles(euclid_angles(x)), bin_width, x.shape[0])
        out[f"aip{suffix}"] = angle_stats(upper_angles(metric.angles(x)), bin_width, x.shape[0])
    if centered_too and metric.kind == "uncentered":
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always", AIPConditioningWarning)
            cmet = AIPMetric.fit(train_x, kind="centered", shrinkage=shrinkage)
        caught += [str(w.message) for w in rec if issubclass(w.category, AIPConditioningWarning)]
        for suffix in ("", "_heldout"):
            if suffix in sets:
                x = sets[suffix]
                out[f"aip_centered{suffix}"] = angle_stats(upper_angles(cmet.angles(x)), bin_width, x.shape[0])
    cn = metric.condition_number
    out["metric"] = {"kind": metric.kind, "n_samples": metric.n_samples, "d": metric.d,
                     "shrinkage": metric.shrinkage, "condition_number": cn if math.isfinite(cn) else None,
                     "condition_number_used": metric.condition_number_used, "effective_rank": metric.effective_rank,
                     "warnings": caught}
    if caught and warn:
        for msg in caught:
            warnings.warn(msg, AIPConditioningWarning, stacklevel=2)
    return out


# --------------------------------------------------------------------------- data
def dedupe_subject_prefix(ds):
    """Keep the first row per ``prompt[:subject_end]`` (identical subject-last-token activations)."""
    seen: set[str] = set()
    keep = []
    for i, (p, e) in enumerate(zip(ds["prompt"], ds["subject_end"])):
        key = p[:e]
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return ds.select(keep)


def prepare_prompts(n_facts: int = 1600, n_reasoning: int = 300, seed: int = 0):
    """``(facts, reasoning)`` Datasets: de-duplicated by subject prefix, randomly subsampled."""
    import random

    from sae_atoms.data import fact_prompts, reasoning_prompts

    if n_facts < 4:
        raise ValueError(f"n_facts={n_facts}: need at least a few fact prompts (the default is 1600).")
    facts = dedupe_subject_prefix(fact_prompts(n_cities=None, seed=seed))
    idx = list(range(len(facts)))
    random.Random(seed).shuffle(idx)
    facts = facts.select(sorted(idx[:n_facts]))
    reasoning = None
    if n_reasoning > 0:
        reasoning = dedupe_subject_prefix(reasoning_prompts(n=n_reasoning, seed=seed))
    return facts, reasoning


def resolve_layers(layers: str | Sequence[int] | int, n_layers: int) -> list[int]:
    """``"all"`` -> 0..n_layers-1; ``"0,5,12"`` / ``[0, 5]`` / ``12`` -> checked layer list."""
    if isinstance(layers, int):
        layers = [layers]
    if isinstance(layers, str):
        if layers.strip().lower() == "all":
            return list(range(n_layers))
        try:
            layers = [int(t) for t in layers.replace(" ", "").split(",") if t]
        except ValueError as e:
            raise ValueError(f"--layers {layers!r}: use 'all' or comma-separated layer numbers like '0,12,29'.") from e
    out = sorted(set(int(l) for l in layers))
    bad = [l for l in out if not 0 <= l < n_layers]
    if not out or bad:
        raise ValueError(f"layers {bad or out} are not in 0..{n_layers - 1} (the model has {n_layers} layers).")
    return out


# --------------------------------------------------------------------------- the experiment
def run_geometry(model, cfg: GeometryConfig | None = None, *, progress: bool = True,
                 metric_dir: str | os.PathLike | None = None, sites: Sequence[str] = ("resid", "mlp"),
                 **overrides: Any) -> dict[str, Any]:
    """Extract subject activations for all ``cfg.layers`` in one pass and run ``layer_geometry`` per layer.

    ``cfg`` (default ``GeometryConfig()``; ``overrides`` replace its fields) holds the settings
    (``cfg.model`` names the model for the command line; ``model`` is the loaded one).

    ``metric_dir``: a folder of metrics fitted on generic text (``sae-atoms fit-metric``); the angles
    under them at ``sites`` (``SITES``) go to ``results["generic_metric"]`` (``generic_metric_geometry``).
    Returns ``{"layers": {str(layer): layer_geometry(...)}, "meta": {...}}`` (+ ``"generic_metric"``).
    """
    from tqdm.auto import tqdm

    from sae_atoms.activations import extract

    t0 = time.perf_counter()
    c = replace(cfg or GeometryConfig(), **overrides)
    layer_list = resolve_layers(c.layers, model.cfg.n_layers)
    hooks = [c.hook_template.format(layer=l) for l in layer_list]
    if set(sites) - set(SITES):
        raise ValueError(f"sites {sorted(set(sites) - set(SITES))} are unknown; use {sorted(SITES)}.")
    extra = [SITES[s].format(layer=l) for l in layer_list for s in sites] if metric_dir is not None else []
    all_hooks = list(dict.fromkeys(hooks + extra))
    facts, reasoning = prepare_prompts(c.n_facts, c.n_reasoning, c.seed)
    fa = extract(model, facts, all_hooks, position="subject_last", batch_size=c.batch_size, progress=progress)
    ra = extract(model, reasoning, all_hooks, position="subject_last", batch_size=c.batch_size,
                 progress=progress) if reasoning is not None else None
    t_extract = time.perf_counter() - t0
    split = fa.labels("split")
    tr = torch.tensor([s == "train" for s in split])
    if int(tr.sum()) < 2 or int((~tr).sum()) < 2:
        raise ValueError(f"the fact prompts have {int(tr.sum())} train and {int((~tr).sum())} held-out rows; "
                         "raise n_facts so both splits have at least 2.")
    results: dict[str, Any] = {}
    for layer, hook in tqdm(list(zip(layer_list, hooks)), desc="geometry by layer", disable=not progress, unit="layer"):
        x = fa.x(hook)
        results[str(layer)] = layer_geometry(x[tr], x[~tr], None if ra is None else ra.x(hook), c, warn=False)
        results[str(layer)]["hook"] = hook
    ridged = [l for l, r in results.items() if r["metric"]["warnings"]]
    if ridged:
        warnings.warn(f"AIP: the moment was ill-conditioned and a ridge was applied at layers {ridged} "
                      f"({int(tr.sum())} train activations in d={model.cfg.d_model}); the numbers are in "
                      "results['layers'][L]['metric'] (shrinkage, condition_number, warnings).",
                      AIPConditioningWarning, stacklevel=2)
    meta = {"model": model.cfg.model_name, "d_model": model.cfg.d_model, "n_layers": model.cfg.n_layers,
            "hook_template": c.hook_template, "position": "subject_last", "kind": c.kind, "shrinkage": c.shrinkage,
            "n_fact_prompts": len(facts), "n_train": int(tr.sum()), "n_heldout": int((~tr).sum()),
            "n_reasoning_prompts": 0 if reasoning is None else len(reasoning), "n_angle_samples": c.n_angle_samples,
            "bin_width": c.bin_width, "seed": c.seed, "threads": torch.get_num_threads(),
            "seconds_extract": t_extract, "seconds_total": time.perf_counter() - t0}
    out = {"layers": results, "meta": meta}
    if metric_dir is not None:
        out["generic_metric"] = generic_metric_geometry(metric_dir, fa, ra, tr, layer_list, sites, c.n_angle_samples, c.seed)
    return out


def summary_table(results: dict[str, Any]) -> str:
    """A markdown table: layer, Euclid, AIP, AIP held-out, AIP other family (mean angles, degrees)."""
    lines = ["| layer | Euclid | AIP | AIP held-out | AIP other family | Euclid held-out | Euclid other family | AIP centred held-out |",
             "|---|---|---|---|---|---|---|---|"]
    for layer, r in results["layers"].items():
        def f(v: str) -> str:
            return f"{r[v]['mean']:.2f}" if v in r else "-"
        lines.append(f"| {layer} | {f('euclid')} | {f('aip')} | {f('aip_heldout')} | {f('aip_other_family')} | "
                     f"{f('euclid_heldout')} | {f('euclid_other_family')} | {f('aip_centered_heldout')} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- a generic metric
def generic_site_geometry(metric: AIPMetric, train_x: Tensor, heldout_x: Tensor, other_x: Tensor | None,
                          n_angle_samples: int = 400, seed: int = 0) -> dict[str, Any]:
    """Mean angles (degrees) under a metric fitted elsewhere (generic text): ``euclid_deg`` (train
    subjects, Euclid), ``facts_deg`` (train subjects), ``heldout_deg`` (held-out entities),
    ``reasoning_deg`` (the reasoning family; None without it), and Euclid on the last two."""
    sets = {"facts": _sample(train_x, n_angle_samples, seed), "heldout": _sample(heldout_x, n_angle_samples, seed + 1)}
    if other_x is not None and other_x.shape[0] >= 2:
        sets["reasoning"] = _sample(other_x, n_angle_samples, seed + 2)
    out: dict[str, Any] = {"euclid_deg": float(upper_angles(euclid_angles(sets["facts"])).mean()), "reasoning_deg": None}
    for name, x in sets.items():
        out[f"{name}_deg"] = float(upper_angles(metric.angles(x)).mean())
        if name != "facts":
            out[f"euclid_{name}_deg"] = float(upper_angles(euclid_angles(x)).mean())
    return out


def generic_metric_geometry(metric_dir: str | os.PathLike, fa: Any, ra: Any, train: Tensor, layers: Sequence[int],
                            sites: Sequence[str] = ("resid", "mlp"), n_angle_samples: int = 400,
                            seed: int = 0) -> dict[str, Any]:
    """The ``generic_metric`` block of ``results.json``: per layer and site, the angles under the metric
    saved in ``metric_dir/<hook>/`` (``sae-atoms fit-metric``); layers/sites without a metric are skipped."""
    metric_dir = Path(metric_dir)
    out: dict[str, Any] = {"provenance": {"dir": str(metric_dir)}, "layers": {}}
    for layer in layers:
        for site in sites:
            hook = SITES[site].format(layer=layer)
            if not (metric_dir / hook).exists() or hook not in fa.acts:
                continue
            metric = AIPMetric.load(metric_dir / hook)
            if "corpus" not in out["provenance"]:
                md = AIPMetric.read_metadata(metric_dir / hook).get("metadata", {})
                out["provenance"].update({k: md.get(k) for k in ("corpus", "model", "n_tokens_run", "n_rows",
                                                                  "context_size", "exclude_bos", "settings", "world_size")})
            x = fa.x(hook)
            r = generic_site_geometry(metric, x[train], x[~train], None if ra is None else ra.x(hook), n_angle_samples, seed)
            r["hook"], r["metric"] = hook, metric.provenance()
            out["layers"].setdefault(str(layer), {})[site] = r
    if not out["layers"]:
        raise FileNotFoundError(f"{metric_dir} holds no metric for the hooks {[SITES[s] for s in sites]} at layers "
                                f"{list(layers)}; fit one with `sae-atoms fit-metric --out {metric_dir}`.")
    return out


def generic_table(block: dict[str, Any]) -> str:
    """Markdown: layer, site, Euclid, generic-AIP facts, held-out, reasoning (mean angles, degrees)."""
    lines = ["| layer | site | Euclid | generic-AIP facts | held-out | reasoning |", "|---|---|---|---|---|---|"]
    for layer, sites in block["layers"].items():
        for site, r in sites.items():
            rs = "-" if r["reasoning_deg"] is None else f"{r['reasoning_deg']:.2f}"
            lines.append(f"| {layer} | {site} | {r['euclid_deg']:.2f} | {r['facts_deg']:.2f} | {r['heldout_deg']:.2f} | {rs} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- output
def write_results(results: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write ``out/results.json`` (temp file + rename)."""
    path = Path(out) / "results.json"
    write_json(results, path, indent=1)
    return path


def _label_and_save(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Axis labels, title and legend on ``ax``; ``fig`` saved to ``path`` (atomically) and closed."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_geometry(results: dict[str, Any], out: str | os.PathLike, hist_layers: Sequence[int] | None = None) -> list[Path]:
    """PNG plots: ``centroid_by_layer.png`` and ``hist_layer{L}.png`` for a few layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    layers = [int(l) for l in results["layers"]]
    written: list[Path] = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for view, style in (("euclid", "k-o"), ("euclid_heldout", "k:"), ("aip", "b-o"), ("aip_heldout", "g-s"),
                        ("aip_other_family", "r-^"), ("euclid_other_family", "r:")):
        ys = [results["layers"][str(l)][view]["mean"] if view in results["layers"][str(l)] else math.nan for l in layers]
        if not all(math.isnan(y) for y in ys):
            ax.plot(layers, ys, style, label=view, markersize=3)
    ax.axhline(90, color="grey", lw=0.8)
    written.append(_label_and_save(fig, ax, "layer", "angular centroid (mean angle, degrees)",
                                   f"{results['meta'].get('model', '')}: Euclid vs AIP ({results['meta'].get('kind', '')})",
                                   out / "centroid_by_layer.png"))
    if not hist_layers:
        hist_layers = sorted({layers[0], layers[len(layers) // 2], layers[-1]})
    for l in hist_layers:
        r = results["layers"].get(str(l))
        if r is None:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for view, color in (("euclid", "black"), ("aip", "blue"), ("aip_heldout", "green"), ("aip_other_family", "red")):
            if view not in r:
                continue
            h = torch.tensor(r[view]["hist"], dtype=torch.float64)
            bw = r[view]["bin_width"]
            centres = (torch.arange(len(h)) + 0.5) * bw
            ax.plot(centres.tolist(), (h / h.sum() / bw).tolist(), color=color, label=f"{view} (mean {r[view]['mean']:.1f})")
        ax.axvline(90, color="grey", lw=0.8)
        written.append(_label_and_save(fig, ax, "angle (degrees)", "density",
                                       f"layer {l}: pairwise angles of subject activations", out / f"hist_layer{l}.png"))
    return written


# --------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    d = GeometryConfig()
    p.add_argument("--model", default=d.model, help="embedded name, local HF folder or TransformerLens name")
    p.add_argument("--layers", default="all", help="'all' or comma-separated layers, e.g. '0,12,29'")
    p.add_argument("--out", type=Path, required=True, help="output folder (results.json, PNG plots)")
    p.add_argument("--n-facts", type=int, default=d.n_facts, help="fact prompts (after de-duplication; ~80%% train)")
    p.add_argument("--n-reasoning", type=int, default=d.n_reasoning, help="reasoning prompts (other family; 0 = skip)")
    p.add_argument("--n-angle-samples", type=int, default=d.n_angle_samples, help="activations per set for pairwise angles")
    p.add_argument("--kind", choices=("uncentered", "centered"), default=d.kind, help="AIP kind (paper: uncentered)")
    p.add_argument("--shrinkage", default="auto", help="'auto' (ridge only if ill-conditioned) or a float")
    p.add_argument("--bin-width", type=float, default=d.bin_width, help="histogram bin width in degrees (mode)")
    p.add_argument("--hist-layers", default="", help="layers for histogram plots (default: first, middle, last)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=None, help="cpu / cuda / auto")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--metric", type=Path, default=None,
                   help="folder of metrics fitted on generic text (sae-atoms fit-metric): adds results['generic_metric']")
    p.add_argument("--sites", default="resid,mlp", help="sites for --metric: resid, mlp (blocks.L.mlp.hook_post)")


def run_cli(args: argparse.Namespace) -> int:
    from sae_atoms.models import load_model

    t0 = time.perf_counter()
    shrinkage: str | float = args.shrinkage if args.shrinkage == "auto" else float(args.shrinkage)
    model = load_model(args.model, device=args.device)
    cfg = GeometryConfig(model=args.model, layers=args.layers, n_facts=args.n_facts, n_reasoning=args.n_reasoning,
                         n_angle_samples=args.n_angle_samples, kind=args.kind, shrinkage=shrinkage,
                         bin_width=args.bin_width, seed=args.seed, batch_size=args.batch_size)
    res = run_geometry(model, cfg, progress=not args.no_progress, metric_dir=args.metric,
                       sites=[s.strip() for s in args.sites.split(",") if s.strip()])
    res["meta"]["seconds_command"] = time.perf_counter() - t0
    res["meta"]["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                             if k not in ("func",) and not callable(v)}
    args.out.mkdir(parents=True, exist_ok=True)
    hist = [int(t) for t in args.hist_layers.split(",") if t.strip()] if args.hist_layers else None
    plots = plot_geometry(res, args.out, hist)
    path = write_results(res, args.out)
    print(summary_table(res))
    if "generic_metric" in res:
        print("\nwith the metric fitted on generic text (" + str(args.metric) + "):\n" + generic_table(res["generic_metric"]))
    print(f"\nwrote {path} and {len(plots)} plots to {args.out} ({res['meta']['seconds_command']:.0f} s)")
    return 0
