"""Capacity sweeps: width x data size, the R^2 cliff, and an empirical width rule.

Atom Theory (arXiv 2509.20784) reports that below a critical width, relative to the number of
distinct activations, a TSAE's R^2 stalls around 0.6-0.8 and then jumps to ~1; the paper
gives no rule for choosing the width from the data size (its open question 2). This module
measures it:

* :func:`capacity_sweep` trains one SAE (``tsae_aip`` by default; any registered SAELens
  architecture) per (data size n, expansion e) with ``sae_atoms.training.train_on_activations``
  and records in-sample and held-out R^2 (Euclidean and AIP), L0 and dead units;
* :func:`find_cliff` locates, per data size, the smallest width at which held-out R^2 jumps
  (the largest rise between consecutive widths, if at least ``min_jump``);
* :func:`width_rule` states the rule the cliffs support (cliff width / n, cliff width / d,
  and the log-log slope of cliff width against n when several sizes have a cliff);
* :func:`compare_units` is the neurons / features / atoms comparison table at one width;
* :func:`plot_capacity` draws R^2 against width, one line per data size.

``sae-atoms capacity --model smollm2-135m --hook blocks.12.hook_resid_post --expansions 1 2 4 8``
extracts subject-token activations of the fact prompts (train / held-out entities), runs the
sweep and writes ``results.json`` and ``capacity.png``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor

from sae_atoms.activations import as_matrix
from sae_atoms.aip import AIPMetric
from sae_atoms.evals import as_units, dictionary_geometry, encode_all, evaluate_units, format_table, jsonable, neurons, r2
from sae_atoms.io import save_figure, write_json
from sae_atoms.training import train_on_activations, training_config
from sae_atoms.units import UNIT_KINDS
from sae_atoms.workers import add_workers_argument, choose_workers, map_jobs

DEFAULT_EXPANSIONS = (1, 2, 4, 8)
DEFAULT_ARCH = UNIT_KINDS["atoms"].architecture
# the units table: features (standard, jumprelu) and atoms, by their SAELens architectures
COMPARE_ARCHS = tuple(UNIT_KINDS[u].architecture for u in ("features_standard", "features_jumprelu", "atoms"))


@dataclass(frozen=True)
class CapacityConfig:
    """Settings of ``capacity_sweep`` and ``run_capacity`` (the study's own training length: ``steps``
    of ``batch_size`` per run, not the library's ``training.DEFAULT_STEPS``)."""

    expansions: tuple[float, ...] = DEFAULT_EXPANSIONS  # widths as multiples of d
    data_sizes: tuple[int, ...] | None = None  # training-set sizes (seeded subsets); None: all train rows
    architecture: str = DEFAULT_ARCH
    steps: int = 400
    batch_size: int = 256
    lr: float = 1e-3
    l0_coefficient: float | None = None   # None: the architecture's default
    seed: int = 0
    min_jump: float = 0.05                # smallest rise of held-out R^2 that counts as a cliff
    compare: bool = False                 # also the neurons / features / atoms table ...
    compare_expansion: float = 4.0        # ... at this width
    workers: int | None = None            # processes training SAEs at once (None: one per free core, workers.choose_workers)


def _quick_eval(sae: Any, x: Tensor, metric: AIPMetric | None) -> dict[str, float]:
    """R^2 (raw and AIP), mean L0 and dead fraction: what a sweep needs, without coherence."""
    u = as_units(sae)
    codes, recon, _ = encode_all(u, x)
    out = {"r2": r2(x, recon), "l0_mean": float((codes != 0).sum(1).double().mean()),
           "dead_frac": float(((codes != 0).sum(0) == 0).double().mean())}
    out["r2_aip"] = r2(x, recon, metric) if metric is not None else None
    return out


def _n_distinct(x: Tensor) -> int:
    return int(torch.unique(x, dim=0).shape[0])


def capacity_sweep(train_acts: Any, heldout_acts: Any, cfg: CapacityConfig | None = None, *, metric: Any = None,
                   device: Any = None, progress: bool = True, cfg_overrides: dict | None = None,
                   **overrides: Any) -> list[dict]:
    """Train one SAE per (data size, width) and measure in-sample and held-out faithfulness.

    Args:
        train_acts, heldout_acts: ``[n, d]`` tensors or ``ActivationSet``s (held-out =
            activations of entities never trained on).
        cfg: ``CapacityConfig`` (``overrides`` replace its fields): ``expansions`` (``d_sae = round(e * d)``),
            ``data_sizes`` (each a seeded random subset of ``train_acts``; default all of it),
            ``architecture`` (any registered training architecture), ``steps``, ``batch_size``, ``lr``,
            ``l0_coefficient``, ``seed``.
        metric: the ``AIPMetric`` for AIP R^2 and for ``tsae_aip`` training (default: the robust
            AIP of all of ``train_acts``; the held-out set never enters it).
        cfg_overrides: extra fields of every SAE's training config.

    Returns one dict per run: ``n_train``, ``n_distinct``, ``expansion``, ``d_sae``,
    ``r2_train``, ``r2_heldout``, ``r2_aip_train``, ``r2_aip_heldout``, ``l0_train``,
    ``l0_heldout``, ``dead_frac``, ``seconds``, ``architecture``, ``steps``.
    """
    from sae_atoms.aip import AIPMetric

    c = replace(cfg or CapacityConfig(), **overrides)
    xtr, xho, sizes = _sweep_inputs(train_acts, heldout_acts, c)
    if metric is None:
        metric = AIPMetric.robust(xtr)
    gen = torch.Generator().manual_seed(c.seed)
    perm = torch.randperm(xtr.shape[0], generator=gen)
    runs = [(n, e) for n in sorted(sizes) for e in sorted(c.expansions)]
    shared = SweepJobs(c, xtr, xho, perm, metric, device, cfg_overrides or {})
    from tqdm.auto import tqdm

    with tqdm(total=len(runs), desc=f"capacity sweep ({c.architecture})", unit="run", disable=not progress) as bar:
        return map_jobs(sweep_run, runs, shared, workers=choose_workers(c.workers, len(runs), device),
                        progress=bar.update, cost=lambda run: run[0] * run[1])  # rows x width


class SweepJobs(NamedTuple):
    """What every run of a sweep reads (``sweep_run``): sent once to each worker process."""

    cfg: CapacityConfig
    xtr: Tensor
    xho: Tensor
    perm: Tensor
    metric: AIPMetric
    device: Any
    cfg_overrides: dict


def sweep_run(s: SweepJobs, run: tuple[int, float]) -> dict:
    """One run of a sweep: an SAE of width ``e * d`` trained on the first ``n`` rows of the seeded
    permutation, measured in-sample and on the held-out rows."""
    n, e = run
    c, xs, d = s.cfg, s.xtr[s.perm[:n]], s.xtr.shape[1]
    d_sae = max(1, int(round(e * d)))
    sae_cfg = training_config(c.architecture, d, d_sae, l0_coefficient=c.l0_coefficient, **s.cfg_overrides)
    t0 = time.perf_counter()
    sae = train_on_activations(xs, sae_cfg, steps=c.steps, seed=c.seed, batch_size=c.batch_size, lr=c.lr,
                               progress=False, device=s.device, metric=s.metric if c.architecture == "tsae_aip" else None)
    secs = time.perf_counter() - t0
    ev_tr, ev_ho = _quick_eval(sae, xs, s.metric), _quick_eval(sae, s.xho, s.metric)
    return {
        "architecture": c.architecture, "n_train": n, "n_distinct": _n_distinct(xs), "n_heldout": int(s.xho.shape[0]),
        "d": d, "expansion": float(e), "d_sae": d_sae, "steps": c.steps,
        "r2_train": ev_tr["r2"], "r2_heldout": ev_ho["r2"], "r2_aip_train": ev_tr["r2_aip"],
        "r2_aip_heldout": ev_ho["r2_aip"], "l0_train": ev_tr["l0_mean"], "l0_heldout": ev_ho["l0_mean"],
        "dead_frac": ev_tr["dead_frac"], "seconds": secs,
    }


def _sweep_inputs(train_acts: Any, heldout_acts: Any, c: CapacityConfig) -> tuple[Tensor, Tensor, list[int]]:
    """``(train rows, held-out rows, data sizes)`` of a sweep, checked before anything trains."""
    xtr, xho = as_matrix(train_acts, min_rows=2).float(), as_matrix(heldout_acts, min_rows=2).float()
    d = xtr.shape[1]
    if xho.shape[1] != d:
        raise ValueError(f"train activations have d={d} but held-out ones d={xho.shape[1]}")
    if not c.expansions or any(e <= 0 for e in c.expansions):
        raise ValueError(f"expansions must be positive numbers; got {list(c.expansions)}")
    sizes = list(c.data_sizes) if c.data_sizes else [xtr.shape[0]]
    too_big = [n for n in sizes if n > xtr.shape[0] or n < 2]
    if too_big:
        raise ValueError(f"data sizes {too_big} are outside 2..{xtr.shape[0]} (the number of training activations); "
                         "extract more activations or choose smaller sizes")
    return xtr, xho, sizes


def find_cliff(results: Sequence[dict], key: str = "r2_heldout", min_jump: float = 0.05) -> list[dict]:
    """Per data size, the capacity cliff: the smallest width at which ``key`` jumps.

    Widths are sorted; the jump is the largest rise of ``key`` between consecutive widths.
    If it is at least ``min_jump`` the cliff is the width after it (``cliff_d_sae``); otherwise
    no cliff lies inside the grid and ``where`` says whether every width is already high
    (``"below_grid"``: the cliff, if any, is below the smallest width) or none is
    (``"above_grid"``), judged against the best value reached at that data size.
    """
    by_n: dict[int, list[dict]] = {}
    for r in results:
        if key not in r:
            raise KeyError(f"result rows have no {key!r}; keys: {sorted(r)}")
        by_n.setdefault(int(r["n_train"]), []).append(r)
    out = []
    for n, rows in sorted(by_n.items()):
        rows = sorted(rows, key=lambda r: r["d_sae"])
        vals = [float(r[key]) for r in rows]
        rises = [b - a for a, b in zip(vals, vals[1:])]
        info = {"n_train": n, "key": key, "d_sae": [r["d_sae"] for r in rows], "values": vals,
                "n_distinct": rows[0].get("n_distinct"), "d": rows[0].get("d")}
        if rises and max(rises) >= min_jump:
            i = max(range(len(rises)), key=lambda j: rises[j])
            info.update(cliff_d_sae=rows[i + 1]["d_sae"], cliff_expansion=rows[i + 1]["expansion"], jump=rises[i],
                        before=vals[i], after=vals[i + 1], where="inside_grid")
        else:
            info.update(cliff_d_sae=None, cliff_expansion=None, jump=max(rises) if rises else 0.0,
                        where="below_grid" if vals and min(vals) >= 0.9 * max(vals) and max(vals) > 0.9 else "above_grid")
        out.append(info)
    return out


def width_rule(cliffs: Sequence[dict]) -> dict[str, Any]:
    """An empirical width rule from the cliffs (Atom Theory's open question 2).

    Reports, for every data size with a cliff, ``N*/n`` (cliff width over distinct training
    activations) and ``N*/d``; with two or more such sizes, the least-squares slope ``b`` of
    ``log N*`` on ``log n`` (``N* ~ n^b``: ``b ~ 1`` means the width must grow with the data,
    ``b ~ 0`` a fixed multiple of ``d`` suffices). ``statement`` says it in words.
    """
    pts = [(c["n_distinct"] or c["n_train"], c["cliff_d_sae"], c.get("d")) for c in cliffs if c.get("cliff_d_sae")]
    rule: dict[str, Any] = {"n_with_cliff": len(pts), "ratios_width_over_n": [w / n for n, w, _ in pts],
                            "ratios_width_over_d": [w / d for _, w, d in pts if d]}
    if len(pts) >= 2 and len({n for n, _, _ in pts}) >= 2:
        ln = torch.tensor([math.log(n) for n, _, _ in pts], dtype=torch.float64)
        lw = torch.tensor([math.log(w) for _, w, _ in pts], dtype=torch.float64)
        b = float(((ln - ln.mean()) * (lw - lw.mean())).sum() / ((ln - ln.mean()) ** 2).sum())
        rule["loglog_slope"] = b
    else:
        rule["loglog_slope"] = None
    if not pts:
        where = sorted({c["where"] for c in cliffs})
        rule["statement"] = (f"no cliff inside the width grid at any data size (R^2 {', '.join(where)}); "
                             "widen the grid (smaller or larger expansions) to locate it.")
    else:
        r_n = rule["ratios_width_over_n"]
        r_d = rule["ratios_width_over_d"]
        s = (f"held-out R^2 jumps at width N* = {min(r_n):.3g}..{max(r_n):.3g} x the number of distinct training "
             f"activations (= {min(r_d):.3g}..{max(r_d):.3g} x d)")
        if rule["loglog_slope"] is not None:
            s += f"; N* grows as n^{rule['loglog_slope']:.2f} across data sizes"
        rule["statement"] = s + "."
    return rule


def plot_capacity(results: Sequence[dict], path: str | os.PathLike, cliffs: Sequence[dict] | None = None,
                  title: str | None = None) -> Path:
    """R^2 against width (log2 axis), held-out solid and in-sample dashed, one colour per data
    size, cliffs marked; written atomically as PNG (or any matplotlib format by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sizes = sorted({int(r["n_train"]) for r in results})
    for i, n in enumerate(sizes):
        rows = sorted((r for r in results if int(r["n_train"]) == n), key=lambda r: r["d_sae"])
        w = [r["d_sae"] for r in rows]
        col = f"C{i % 10}"
        ax.plot(w, [r["r2_heldout"] for r in rows], "-o", color=col, label=f"held-out, n={n}")
        ax.plot(w, [r["r2_train"] for r in rows], "--", color=col, alpha=0.6, label=f"in-sample, n={n}")
    for c in cliffs or []:
        if c.get("cliff_d_sae"):
            ax.axvline(c["cliff_d_sae"], color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width (SAE units)")
    ax.set_ylabel("R^2 (pooled, Euclidean)")
    ax.set_title(title or f"capacity: {results[0]['architecture'] if results else ''}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return path


def compare_units(train_acts: Any, heldout_acts: Any, expansion: float = 4, architectures: Sequence[str] = COMPARE_ARCHS,
                  *, metric: AIPMetric | None = None, top_k: int = 20, cfg_overrides: dict[str, dict] | None = None,
                  **train: Any) -> dict[str, dict]:
    """Neurons vs features vs atoms at one width, in-sample and held-out (Atom Theory's table).

    Trains each of ``architectures`` at ``d_sae = expansion * d`` on ``train_acts``
    (``train``: keywords of ``train_on_activations``; this study's defaults ``steps``,
    ``batch_size``, ``lr``, ``progress=True``; ``device`` also places the evaluation), then runs
    :func:`sae_atoms.evals.evaluate_units` for neurons and every SAE on both splits with one
    AIP metric (fitted on ``train_acts``), each unit's coherence computed once. Returns
    ``{name: train-split result plus ``r2_heldout``, ``r2_aip_heldout``, ``l0_heldout``,
    ``q_star_a_heldout``, ``q_star_b_heldout``, ``monosemanticity_heldout``}``.
    """
    train = {"steps": CapacityConfig.steps, "batch_size": CapacityConfig.batch_size, "lr": CapacityConfig.lr,
             "progress": True} | train
    device = train.get("device")
    xtr = as_matrix(train_acts, min_rows=2).float()
    d = xtr.shape[1]
    metric = metric if metric is not None else AIPMetric.robust(xtr)
    units: dict[str, Any] = {"neurons": neurons(d)}
    for arch in architectures:
        cfg = training_config(arch, d, int(round(expansion * d)), **((cfg_overrides or {}).get(arch, {})))
        units[arch] = train_on_activations(xtr, cfg, **train, metric=metric if arch == "tsae_aip" else None)
    table: dict[str, dict] = {}
    for name, u in units.items():
        geo = dictionary_geometry(u, metric, device=device)
        res = evaluate_units(u, train_acts, metric, geometry=geo, top_k=top_k, device=device)
        ho = evaluate_units(u, heldout_acts, metric, geometry=geo, top_k=top_k, device=device)
        for k in ("r2", "r2_aip", "l0_mean", "q_star_a", "q_star_b", "monosemanticity"):
            res[f"{k}_heldout"] = ho.get(k)
        res["heldout"] = ho
        table[name] = res
    return table


COMPARE_KEYS = ("r2", "r2_heldout", "r2_aip", "r2_aip_heldout", "l0_mean", "mu", "mu_raw", "q_star_a", "q_star_b",
                "q_star_b_heldout", "monosemanticity", "monosemanticity_heldout")


# --------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="model for the activations (default: the embedded SmolLM2)")
    p.add_argument("--hook", default="blocks.12.hook_resid_post", help="hook point")
    p.add_argument("--activations", type=Path, default=None,
                   help="a saved activation set (sae-atoms extract --out) instead of extracting with --model")
    p.add_argument("--n-cities", type=int, default=1000, help="fact prompts: the n most populous cities (+ countries)")
    p.add_argument("--expansions", type=float, nargs="+", default=list(DEFAULT_EXPANSIONS), help="widths as multiples of d")
    p.add_argument("--data-sizes", type=int, nargs="*", default=None, help="training-set sizes (default: all train rows)")
    p.add_argument("--architecture", default=DEFAULT_ARCH, help="SAE architecture to sweep (default tsae_aip)")
    p.add_argument("--steps", type=int, default=CapacityConfig.steps, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=CapacityConfig.batch_size)
    p.add_argument("--lr", type=float, default=CapacityConfig.lr)
    p.add_argument("--l0-coefficient", type=float, default=None, help="sparsity coefficient (default: the architecture's)")
    p.add_argument("--min-jump", type=float, default=CapacityConfig.min_jump, help="smallest rise of held-out R^2 that counts as a cliff")
    p.add_argument("--compare", action="store_true",
                   help="also build the neurons / standard / jumprelu / tsae_aip table at --compare-expansion")
    p.add_argument("--compare-expansion", type=float, default=CapacityConfig.compare_expansion)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    add_workers_argument(p)
    p.add_argument("--out", type=Path, default=Path("capacity-out"), help="output folder (results.json, capacity.png)")


def _load_acts(args: argparse.Namespace):
    from sae_atoms.activations import ActivationSet, extract

    if args.activations is not None:
        acts = ActivationSet.load(args.activations)
    else:
        from sae_atoms.data import fact_prompts
        from sae_atoms.models import check_hook_name, load_model

        model = load_model(args.model, device=args.device)
        check_hook_name(model, args.hook)
        acts = extract(model, fact_prompts(n_cities=args.n_cities, seed=args.seed), args.hook,
                       position="subject_last", device=args.device)
    hook = args.hook if args.hook in acts.hook_names else (acts.hook_names[0] if len(acts.hook_names) == 1 else None)
    if hook is None:
        raise SystemExit(f"hook {args.hook!r} is not in the activation set {acts.hook_names}; pass --hook")
    acts = ActivationSet({hook: acts.x(hook)}, acts.rows, acts.meta)
    return acts.select(split="train"), acts.select(split="heldout"), hook


def run_capacity(train: Any, heldout: Any, hook: str, out_dir: str | os.PathLike | None = None,
                 cfg: CapacityConfig | None = None, *, device: Any = None, source: str | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """The capacity experiment: the sweep, its cliffs and width rule, optionally the units table
    at ``compare_expansion``; printed, and written to ``out_dir`` (``results.json``,
    ``capacity.png``) when given. ``cfg`` (``overrides`` replace its fields) holds the settings;
    ``source`` names where the activations came from."""
    c = replace(cfg or CapacityConfig(), **overrides)
    results = capacity_sweep(train, heldout, c, device=device)
    cliffs = find_cliff(results, min_jump=c.min_jump)
    rule = width_rule(cliffs)
    out: dict[str, Any] = {"hook": hook, "model": source,
                           "architecture": c.architecture, "results": results, "cliffs": cliffs, "width_rule": rule}
    print(f"{'n_train':>8} {'d_sae':>6} {'R2 train':>9} {'R2 heldout':>10} {'L0':>7}")
    for r in results:
        print(f"{r['n_train']:>8} {r['d_sae']:>6} {r['r2_train']:>9.4f} {r['r2_heldout']:>10.4f} {r['l0_train']:>7.1f}")
    print("width rule:", rule["statement"])
    if c.compare:
        table = compare_units(train, heldout, c.compare_expansion, steps=c.steps, batch_size=c.batch_size,
                              lr=c.lr, seed=c.seed, device=device)
        print(format_table(table, COMPARE_KEYS))
        out["compare"] = {k: {kk: vv for kk, vv in v.items() if kk != "heldout"} | {"heldout": v["heldout"]}
                          for k, v in table.items()}
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_json(jsonable(out), out_dir / "results.json")
        plot_capacity(results, out_dir / "capacity.png", cliffs, title=f"capacity at {hook} ({c.architecture})")
        print(f"wrote {out_dir / 'results.json'} and {out_dir / 'capacity.png'}")
    return out


def run_cli(args: argparse.Namespace) -> int:
    choose_workers(args.workers, 1)  # a bad --workers is refused before any work
    tr, ho, hook = _load_acts(args)
    print(f"capacity: {len(tr)} train / {len(ho)} held-out activations at {hook}, d={tr.x().shape[1]}", file=sys.stderr)
    cfg = CapacityConfig(expansions=tuple(args.expansions), data_sizes=args.data_sizes and tuple(args.data_sizes),
                         architecture=args.architecture, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         l0_coefficient=args.l0_coefficient, seed=args.seed, min_jump=args.min_jump,
                         compare=args.compare, compare_expansion=args.compare_expansion, workers=args.workers)
    run_capacity(tr, ho, hook, args.out, cfg, device=args.device,
                 source=args.model if args.activations is None else str(args.activations))
    return 0
