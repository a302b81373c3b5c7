"""The experiment's outputs: the text summary, the plot, and ``results.json`` + ``steering.png``."""

from __future__ import annotations

from pathlib import Path

from sae_atoms.experiments.plots import method_colors
from sae_atoms.io import save_figure, write_json

VECTOR_METHODS = ("diff_of_means", "random_direction")


def summary(res: dict) -> str:
    """A few lines: the setting, the no-intervention baseline, each method at its chosen strength, the ablation check."""
    cfg = res["config"]
    lines = [f"steering {cfg['relation']} at {res['hook']} (span={cfg['span']}), targets "
             f"{[t['value'] for t in res['targets']]}; strength chosen on validation with KL budget {cfg['kl_budget']} nats"]
    b = res["baseline_no_intervention"][next(iter(res["baseline_no_intervention"]))]["test"]
    lines.append(f"  no intervention (seed {res['seeds'][0]}): success {b['success_rate']:.1%}, mean rank {b['mean_rank']:.1f}")
    for m, r in res["methods"].items():
        lines.append(f"  {m:<32} strength {'/'.join(f'{a:g}' for a in r['strength_per_seed']):<9} success {r['success_rate']:.1%}  "
                     f"log-prob gain {r['logprob_gain']:+.2f}  KL unrelated {r['kl_unrelated']:.3f}  "
                     f"({r['n_targets']} targets, {r['n_prompts']} held-out prompts, seeds {r['seeds']})"
                     + ("" if r["within_budget"] else "  (no strength within budget)"))
    best = max(res["methods"], key=lambda m: (res["methods"][m]["success_rate"], -res["methods"][m]["kl_unrelated"]))
    sae_best = max((m for m in res["methods"] if m not in VECTOR_METHODS),
                   key=lambda m: res["methods"][m]["success_rate"], default=None)
    lines.append(f"  best at the matched KL budget: {best}" + (f"; best SAE method: {sae_best}" if sae_best else ""))
    eq = {m: r["equal_kl"] for m, r in res["methods"].items() if "equal_kl" in r}
    if eq:
        f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        lines.append(f"  at the difference of means' validation KL ({f(next(iter(eq.values()))['kl_ref'])} nats, mean over seeds): "
                     "success ± SE, paired difference with it ± SE, CounterFact-style efficacy / paraphrase / neighbourhood / "
                     "harmonic mean")
        for m, e in eq.items():
            lines.append(f"  {m:<32} {f(e['success_equal_kl'])} ± {f(e['success_equal_kl_se'])}  diff {f(e.get('paired_diff_vs_dom'))}"
                         f" ± {f(e.get('paired_diff_vs_dom_se'))}  test KL {f(e['test_kl'])}  {f(e['efficacy'])} / "
                         f"{f(e['paraphrase'])} / {f(e['neighbourhood'])} / {f(e['counterfact_hmean'])}  within its KL "
                         f"{f(e.get('success_within_kl_ref'))} (diff {f(e.get('paired_within_vs_dom'))} ± {f(e.get('paired_within_vs_dom_se'))}, "
                         f"test KL {f(e.get('test_kl_within'))}, harmonic mean {f(e.get('counterfact_hmean_within'))})")
    for name, a in res["ablation"].items():
        if "error" in a:
            lines.append(f"  ablation {name}: {a['error']}")
            continue
        d = a["logprob_drop"]
        fmt = lambda x: "n/a" if x is None else f"{x:+.3f}"  # noqa: E731
        lines.append(f"  ablation {name} (k={a['k']}, {a['n_prompts']} prompts): logprob drop selected {fmt(d['selected'])}, "
                     f"random {fmt(d['random'])}, random active {fmt(d['random_active'])}")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    """Validation sweeps (dots), test results at the chosen strength (stars) and at the difference of
    means' KL (crosses): success vs KL on unrelated prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    colors = method_colors(list(res["methods"]))
    for m, r in res["methods"].items():
        pts = [p for sd in r["per_seed"].values() for p in sd["sweep"] if "success_rate" in p]
        ax.plot([p["kl_unrelated"] for p in pts], [p["success_rate"] for p in pts], "o", ms=3, alpha=0.6, color=colors[m])
        ax.plot([r["kl_unrelated"]], [r["success_rate"]], "*", ms=12, color=colors[m], label=f"{m} (test)")
        if "equal_kl" in r:
            ax.plot([r["equal_kl"]["test_kl"]], [r["equal_kl"]["success_equal_kl"]], "x", ms=9, mew=2, color=colors[m])
    ax.axvline(res["config"]["kl_budget"], color="grey", ls="--", lw=1, label="KL budget")
    ref = [r["equal_kl"]["kl_ref"] for r in res["methods"].values() if "equal_kl" in r]
    if ref:
        ax.axvline(ref[0], color="black", ls=":", lw=1, label="difference of means' KL (x: test at it)")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(left=0)  # KL >= 0: no empty negative decade
    ax.set_xlabel("KL(clean || steered) on unrelated prompts (nats)")
    ax.set_ylabel("success rate (target is top-1)")
    ax.set_title(f"steering {res['config']['relation']} at {res['hook']}: validation (dots), test (stars; x: at equal KL)",
                 fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)  # outside: it never covers data
    fig.tight_layout()
    save_figure(fig, path)


def plot_generation(res: dict, path: Path) -> None:
    """Steered generation: each method's concept score against perplexity over its strength scales
    (seeds pooled), the unsteered model and the difference of means' perplexity at scale 1 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    colors = method_colors(list(res["methods"]))  # as in the success-KL plot: one method, one colour
    for m, r in res["methods"].items():
        c = r.get("generation", {}).get("curve") or []
        scales = "/".join(f"{p['scale']:g}" for p in c)
        ax.plot([p["perplexity"] for p in c], [p["concept"] for p in c], "o-", ms=4, lw=1, color=colors[m],
                label=f"{m} (x{scales})")
    ref = res["methods"].get("diff_of_means", {}).get("generation", {}).get("equal_perplexity")
    if ref:
        ax.axvline(ref["ref_perplexity"], color="black", ls=":", lw=1, label="difference of means' perplexity (scale 1)")
    none = [g["perplexity"] for g in (res.get("generation_unsteered") or {}).values()]
    if none:
        ax.axvline(sum(none) / len(none), color="grey", ls="--", lw=1, label="unsteered")
    ax.set_xscale("log")
    ax.set_xlabel("perplexity of the continuation under the unsteered model")
    ax.set_ylabel("concept score (share naming the target)")
    ax.set_title(f"steered generation {res['config']['relation']}: strength scales of each method's equal-KL strength", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.tight_layout()
    save_figure(fig, path)


def write_results(res: dict, out_dir: str | Path) -> None:
    """``results.json``, ``steering.png`` and (with generation) ``generation.png`` in ``out_dir`` (each written atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(res, out / "results.json", default=float)
    plot(res, out / "steering.png")
    if any("generation" in r for r in res["methods"].values()):
        plot_generation(res, out / "generation.png")
