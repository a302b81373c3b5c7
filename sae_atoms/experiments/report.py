"""A small report builder: one list of blocks rendered to Markdown and to standalone HTML.

Blocks are headings, paragraphs, tables and images; the main job
(``sae_atoms.experiments.reproduce``) fills one from ``results.json`` so every number in the
report comes from the code.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sae_atoms.experiments.reading import reading, success_se
from sae_atoms.units import label


# the paper's numbers (Atom Theory, arXiv 2509.20784), shown beside ours
PAPER_NUMBERS = {"neurons": {"r2": 1.000, "q_star": 0.005}, "features": {"r2": 0.488, "q_star": 0.682},
                 "atoms": {"r2": 0.999, "q_star": 0.998}}

def precision_note(settings: dict) -> str:
    """How the frontier's SAEs were trained, for its regime sentence: " under bfloat16 autocast" or nothing."""
    return " under bfloat16 autocast" if settings.get("autocast") else ""


def alpha_note(results: dict) -> str:
    """The atoms' partial whitening for the frontier's regime sentence, and each other ``tsae_aip`` unit's
    that differs, read off the metric each one was fitted with (``results["metric"]``): "0.35 (atoms_stable 0.2)"."""
    a = (results.get("frontier_settings") or {}).get("atoms_alpha")
    fitted = {u: m["alpha"] for u, m in (results.get("metric") or {}).items() if u not in ("reference", "atoms")}
    other = [f"{u} {v:g}" for u, v in fitted.items() if v != a]
    return f"{a}" + (f" ({', '.join(other)})" if other else "")


def fmt(v: Any, digits: int = 3) -> str:
    """Numbers to short strings (None -> "–")."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


@dataclass
class Report:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, text: str, level: int = 2) -> "Report":
        self.blocks.append(("h", (level, text)))
        return self

    def p(self, text: str) -> "Report":
        self.blocks.append(("p", text))
        return self

    def bullets(self, items: Sequence[str]) -> "Report":
        self.blocks.append(("ul", list(items)))
        return self

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> "Report":
        self.blocks.append(("table", ([str(h) for h in header], [[fmt(c) for c in r] for r in rows])))
        return self

    def links(self, links: dict[str, str]) -> "Report":
        """A list of links ``{text: relative path}``."""
        self.blocks.append(("links", dict(links)))
        return self

    def img(self, path: str, alt: str) -> "Report":
        self.blocks.append(("img", (path, alt)))
        return self

    # ---------------------------------------------------------------- rendering
    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, b in self.blocks:
            if kind == "h":
                out += ["#" * b[0] + " " + b[1], ""]
            elif kind == "p":
                out += [b, ""]
            elif kind == "ul":
                out += [f"- {x}" for x in b] + [""]
            elif kind == "table":
                header, rows = b
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                out += ["| " + " | ".join(r) + " |" for r in rows]
                out.append("")
            elif kind == "img":
                out += [f"![{b[1]}]({b[0]})", ""]
            elif kind == "links":
                out += [f"- [{t}]({h})" for t, h in b.items()] + [""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for kind, b in self.blocks:
            if kind == "h":
                body.append(f"<h{b[0]}>{e(b[1])}</h{b[0]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(b)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b) + "</ul>")
            elif kind == "table":
                header, rows = b
                body.append("<table><thead><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header) + "</tr></thead><tbody>"
                            + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                            + "</tbody></table>")
            elif kind == "links":
                body.append("<ul>" + "".join(f'<li><a href="{e(h)}">{e(t)}</a></li>' for t, h in b.items()) + "</ul>")
            elif kind == "img":
                body.append(f'<figure><img src="{e(b[0])}" alt="{e(b[1])}"><figcaption>{e(b[1])}</figcaption></figure>')
        style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;line-height:1.45}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}"
                 "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
                 "code{background:#f5f5f5;padding:0 3px}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(self.title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>")

    def write(self, folder: str | Path, stem: str = "report") -> tuple[Path, Path]:
        """Write ``stem.md`` and ``stem.html`` atomically into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        from sae_atoms.io import write_text

        return write_text(folder / f"{stem}.md", self.markdown()), write_text(folder / f"{stem}.html", self.html())


def _inline(text: str) -> str:
    """Escape, then render `code` spans (the only inline markup the report uses)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


# --------------------------------------------------------------------------- the main job's report
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
PAPER_ROW = {"neurons": "neurons", "features_standard": "features", "features_jumprelu": "features", "atoms": "atoms"}


def units_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """The units side by side, beside the paper's R^2 and q*: ``(header, rows)`` of formatted cells."""
    header = ["units", "R²", "R² held-out", "L0", "μ (AIP)", "q* (a)", "q* (b)", "monosemanticity", "paper R²", "paper q*"]
    rows = []
    for unit, r in results["units"].items():
        paper = results.get("paper", {}).get(PAPER_ROW.get(unit, unit), {})
        rows.append([label(unit), fmt(r["r2"]), fmt(r["r2_heldout"]), fmt(r["l0"], 1), fmt(r["mu"]),
                     fmt(r["q_star_a"]), fmt(r["q_star_b"]), fmt(r["monosemanticity"]), fmt(paper.get("r2")),
                     fmt(paper.get("q_star"))])
    return header, rows


def units_note(results: dict) -> str:
    """What the SAE rows of ``units_table`` are ("" without a matched L0)."""
    if results.get("units_l0") is None:
        return ""
    targets = [r["target_l0"] for r in results.get("frontier") or [] if r.get("target_l0") is not None]
    span = f" (L0 {min(targets):g}–{max(targets):g})" if targets else ""
    return (f"SAE units at matched L0 = {results['units_l0']:g} (the frontier's SAEs, L0 matched on validation "
            "entities left out of training; the L0 column is in-sample), measured in the robust AIP of the "
            f"train entities. Full frontier{span} and the paper's regime: report.md.")


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *["| " + " | ".join(r) + " |" for r in rows]]


def headline_table(results: dict) -> str:
    """The units side by side (Markdown), beside the paper's R^2 and q*, then the steering table."""
    rows = _markdown_table(*units_table(results))
    g = results["geometry"]
    if units_note(results):
        rows += ["", units_note(results)]
    rows += steering_table(results)
    rows.append("")
    rows.append(f"Model `{results['model']}`, hook `{results['hook_name']}`, {results['n_train']} train / "
                f"{results['n_heldout']} held-out subject activations. Angular centroid: Euclid "
                f"{fmt(g['euclid_centroid_deg'], 1)}°, AIP {fmt(g['aip_centroid_deg'], 1)}°, AIP held-out "
                f"{fmt(g['aip_heldout_centroid_deg'], 1)}°.")
    return "\n".join(rows)


def steering_table(results: dict) -> list[str]:
    """The steering methods, best success first (Markdown lines; none without a steering stage)."""
    st = results.get("steering") or {}
    if not st:
        return []
    budget = (results.get("steering_details") or {}).get("config", {}).get("kl_budget")
    rows = ["", f"Steering held-out cities to a target country (success = the target is the top-1 next token; each "
                f"method's strength chosen on validation prompts within a KL budget of {fmt(budget, 1)} nats on unrelated "
                "prompts; test KL below; ± the binomial standard error from the prompt count: two rates closer than "
                "about twice their combined SE are not told apart by these prompts):", ""]
    cells = [[m, f"{fmt(v['success_rate'])} ± {fmt(success_se(v['success_rate'], v['n_prompts']))}", fmt(v["kl_unrelated"]),
              fmt(v.get("logprob_gain"), 2), str(v.get("n_targets")), str(v.get("n_prompts")),
              ", ".join(str(sd) for sd in v.get("seeds", []))] for m, v in sorted(st.items(), key=lambda kv: -kv[1]["success_rate"])]
    return rows + _markdown_table(["method", "success ± SE", "KL unrelated", "log-prob gain", "targets", "prompts", "seeds"], cells)


def _relations_section(r: Report, results: dict, out: Path) -> None:
    """Per relation: every method at the difference of means' KL, the CounterFact-style scores,
    steered generation, and the success-KL and generation plots."""
    for rel, table in (results.get("steering_relations") or {}).items():
        r.h(f"Steering {rel.replace('_', ' -> ')}", level=3)
        r.p("Each method moved to the validation KL the difference of means spends at its chosen strength (test KL "
            "beside it), success on the same held-out prompts with the paired difference against the difference of "
            "means (± standard errors over prompts, seeds pooled); CounterFact-style scores there: efficacy = p(target) > "
            "p(true answer), paraphrase = the same on the subjects' other templates, neighbourhood = unrelated prompts "
            "keep their top-1 answer, and their harmonic mean; the area under best success within KL up to the budget, "
            "divided by it; and the best success within the budget (its own KL) as in the table above. \"Within DoM's KL\": "
            "each method at its best validation point with no more KL than the difference of means (a method whose success "
            "peaks at less KL is not read past its peak), paired with it on the same prompts, with its test KL and "
            "CounterFact-style harmonic mean there. Steered "
            "generation at each method's equal-KL strength: the share of continuations naming the target and their "
            "perplexity under the unsteered model; and the best share over the generation strength scales at no more "
            "perplexity than the difference of means at its equal-KL strength.")
        g = lambda v, k: fmt(v.get(k))  # noqa: E731  (the no-intervention row has the generation scores only)
        r.table(["method", "success at equal KL ± SE", "paired diff vs DoM ± SE", "within DoM's KL ± SE", "paired ± SE",
                 "within: test KL", "within: harmonic mean", "test KL", "efficacy", "paraphrase", "neighbourhood", "harmonic mean",
                 "success-KL area", "best within budget (KL)", "generation: concept",
                 "perplexity", "concept at DoM's perplexity"],
                [[m, f"{g(v, 'success_equal_kl')} ± {g(v, 'success_equal_kl_se')}",
                  f"{g(v, 'paired_diff_vs_dom')} ± {g(v, 'paired_diff_vs_dom_se')}",
                  f"{g(v, 'success_within_kl_ref')} ± {g(v, 'success_within_kl_ref_se')}",
                  f"{g(v, 'paired_within_vs_dom')} ± {g(v, 'paired_within_vs_dom_se')}", *[g(v, k) for k in (
                      "test_kl_within", "counterfact_hmean_within", "test_kl", "efficacy", "paraphrase", "neighbourhood", "counterfact_hmean", "success_kl_area")],
                  f"{g(v, 'success_within_budget')} ({g(v, 'kl_within_budget')})", g(v, "gen_concept"), g(v, "gen_perplexity"),
                  g(v, "gen_concept_equal_ppl")]
                 for m, v in sorted(table.items(), key=lambda kv: -(kv[1].get("success_equal_kl") or 0))])
        for name, what in (("steering.png", "success vs KL on unrelated prompts"),
                           ("generation.png", "steered generation, concept score vs perplexity")):
            png = out / "steering" / rel / name
            if png.exists():
                r.img(str(png.relative_to(out)), f"steering {rel}: {what}")


def update_readme(readme: str | Path, results: dict) -> None:
    """Replace the block between the results markers of ``readme`` with the headline table."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block to fill")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    cmd = "sae-atoms reproduce" + (" --quick" if results.get("quick") else "")
    block = (f"{README_START}\n<!-- written by `{cmd} --readme README.md`; do not edit by hand -->\n"
             f"{headline_table(results)}\n{README_END}")
    from sae_atoms.io import write_text

    write_text(readme, head + block + tail)


def _plot_q_star(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = list(results["units"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    w = 0.38
    for i, (key, name) in enumerate((("q_star_a", "q* (a): quantile reading"), ("q_star_b", "q* (b): per-sample reading"))):
        ax.bar([j + (i - 0.5) * w for j in range(len(units))], [results["units"][u][key] or 0 for u in units], w, label=name)
    for j, u in enumerate(units):
        paper = results.get("paper", {}).get(PAPER_ROW.get(u, u), {}).get("q_star")
        if paper is not None:
            ax.plot([j - 0.45, j + 0.45], [paper, paper], "k--", lw=1)
    ax.set_xticks(range(len(units)), [label(u) for u in units], fontsize=8)
    ax.set_ylabel("stability q*")
    ax.set_ylim(0, 1.05)
    ax.set_title("Stability by unit kind (dashed: the paper's q*)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from sae_atoms.io import save_figure

    return save_figure(fig, path)


def _settings_text(d: dict) -> str:
    """`` (kind centered, shrinkage 0.01)`` from a settings dict ("" when empty)."""
    parts = [f"{k.replace('_', ' ')} {fmt(v)}" for k, v in d.items()]
    return f" ({', '.join(parts)})" if parts else ""


def _frontier_sections(r: "Report", results: dict, plots: Path, out: Path) -> None:
    """The matched-L0 frontier (table, plot, reading) and the paper's regime."""
    from sae_atoms.experiments import frontier

    rows = results.get("frontier") or []
    if not rows:
        return
    r.h("Sparsity frontier (matched L0)")
    st = results.get("frontier_settings", {})
    r.p(f"Every unit kind at each L0 target, width {st.get('d_sae')} ({st.get('expansion')}x d), {st.get('steps')} steps "
        f"of {st.get('batch_size')}{precision_note(st)}; atoms = tsae_aip with partial whitening alpha = {alpha_note(results)}. Units are "
        f"trained on {st.get('n_train')} rows of train entities; L0 is matched on {st.get('l0_matched_on', 'training rows')}"
        f" ({st.get('n_val', 0)} rows, `l0_val`), `l0` is in-sample, `_heldout` = entities never trained on. All numbers "
        f"in one reference metric: the robust AIP fitted on all train entities"
        + _settings_text(results.get("metric", {}).get("reference", {})) + ".")
    keys = list(frontier.row_keys(rows)[1:])
    r.table(["unit", *keys], [[x["unit"], *[x.get(k) for k in keys]] for x in rows])
    p = frontier.plot_frontier(rows, plots / "frontier.png")
    r.img(str(p.relative_to(out)), "frontier")
    paper = results.get("paper_regime") or {}  # its reading is in the report's "Reading" section
    if paper:
        r.h("The paper's regime (width = n_train; memorisation)")
        r.table(["unit", *keys, "n_train", "d_sae"], [[x["unit"], *[x.get(k) for k in keys], x["n_train"], x["d_sae"]]
                                                      for x in paper.values()])


def _token_frontier_section(r: "Report", results: dict, plots: Path, out: Path) -> None:
    """The token benchmark (small in the main job): table, plot, reading."""
    from sae_atoms.experiments import token_frontier, token_reading

    tf = results.get("token_frontier") or {}
    if not tf.get("rows"):
        return
    st = tf["settings"]
    r.h("Token stream: SAELens's multi-SAE runner, run_evals's figures")
    r.p(f"One `MultiSAETrainingRunner` pass at `{st['hook']}`, width {st['width']} ({st['expansion']:g}x d), "
        f"{st['tokens']} training tokens of `{st['corpus']}` (training documents; batches of {st['batch_tokens']}, "
        f"{st['steps']} steps, special tokens excluded; every unit at lr {st.get('lr', 'n/a')}, atoms and tsae trained "
        f"{token_frontier.ATOMS_TRAINING_TEXT[st.get('atoms_training', 'threshold')]}; atoms in partial whitening alpha = "
        f"{st.get('atoms_alpha', 'n/a')}). L0 matched on {st['val_activations']} tokens of validation "
        f"documents; every figure on {st['eval_activations']} tokens of other held-out documents: CE-loss score (zero "
        f"ablation), KL score, explained variance, L0 as `run_evals` defines them; R² AIP, μ (AIP and raw), q* in one "
        f"reference AIP fitted on {st['ref_tokens']} training tokens. Activation norms of the evaluation tokens: median "
        f"{fmt(st['eval_norms']['p50'])}, p99 {fmt(st['eval_norms']['p99'])}, max {fmt(st['eval_norms']['max'])}"
        + _massive_text(st) + ". A small version of `sae-atoms token-frontier`: a CPU budget, few steps; not converged SAEs.")
    keys = list(token_reading.row_keys(tf["rows"])[1:])
    r.table(["unit", *keys], [[x["unit"], *[x.get(k) for k in keys]] for x in tf["rows"]])
    r.bullets(token_reading.reading(tf["rows"]))
    p = token_reading.plot_token_frontier(tf["rows"], plots / "token_frontier.png")
    r.img(str(p.relative_to(out)), "token frontier")


def _massive_text(st: dict) -> str:
    """How much of the evaluation set's squared norm its massive tokens hold, and whether training left them out."""
    from sae_atoms.massive import MASSIVE_RATIO

    n = st["eval_norms"]
    if "massive_frac" not in n:
        return ""
    return (f"; massive tokens (norm > {MASSIVE_RATIO:g}x the median: `explained_variance_typical` leaves them out) are "
            f"{fmt(100 * n['massive_frac'])}% of the tokens and hold {fmt(100 * n['massive_sq_norm_share'])}% of the "
            f"squared norm; training {'left them out' if st.get('drop_massive') else 'kept them (as SAELens does)'}")


def _intro_sections(r: Report, results: dict) -> None:
    """The run in one paragraph, the model's fact accuracy and the reading."""
    r.p(f"Model `{results['model']}`, hook `{results['hook_name']}` (subject's last token), {results['n_train']} "
        f"train and {results['n_heldout']} held-out activations (held-out entities never seen in training)."
        + (" Quick run (`--quick`): small sizes." if results.get("quick") else ""))
    acc = results.get("fact_accuracy") or {}
    if acc:
        r.p("The model's top-1 first-token accuracy on the city→country prompts: "
            + ", ".join(f"{k} {v['accuracy']:.3f} (n={v['n']})" for k, v in acc.items()) + ".")
    r.h("Reading")
    r.bullets(reading(results))


def _geometry_section(r: Report, results: dict, plots: Path, out: Path) -> None:
    """The angles by layer (table and plots)."""
    r.h("Geometry: the representation shift")
    geo = results["geometry"]
    rows = []
    for layer, v in sorted(geo.get("by_layer", {}).items(), key=lambda kv: int(kv[0])):
        rows.append([int(layer), v["euclid"]["mean"], v["aip"]["mean"], v.get("aip_heldout", {}).get("mean"),
                     v.get("aip_other_family", {}).get("mean"), v["aip"]["median"], v["aip"]["mode"]])
    r.table(["layer", "Euclid centroid (°)", "AIP (°)", "AIP held-out (°)", "AIP other family (°)",
             "AIP median (°)", "AIP mode (°)"], rows)
    r.p("The paper: far from 90° in Euclid, ~90° under the AIP, all layers. The metric is fitted on train "
        "entities; held-out and other-family (reasoning prompts) angles test it out of sample.")
    try:
        from sae_atoms.experiments.geometry import plot_geometry

        for p in plot_geometry({"layers": geo.get("by_layer", {}), "meta": geo.get("meta", {})}, plots):
            r.img(str(p.relative_to(out)), p.stem.replace("_", " "))
    except Exception as e:  # a plot must not lose the report
        r.p(f"(geometry plots failed: {e})")


def _units_and_capacity_sections(r: Report, results: dict, plots: Path, out: Path) -> None:
    """Neurons vs features vs atoms (table, q* plot) and the capacity sweep."""
    r.h("Neurons vs features vs atoms")
    r.table(*units_table(results))
    if units_note(results):
        r.p(units_note(results))
    r.p("R² is pooled over dimensions, in-sample (train entities) and held-out (1 − residual / total variance: "
        "below 0 the reconstruction is further from the activations than their mean); L0 is the mean number of active "
        "units; μ the maximum |cos| between unit directions in the AIP; q* (a) the quantile reading and q* (b) "
        "the per-sample reading of the uniqueness bound μ < 1/(2K−1) (Atom Theory, arXiv 2509.20784); "
        "monosemanticity the mean label purity of live units' top-activating samples over the ground-truth attributes.")
    r.img(str(_plot_q_star(results, plots / "q_star.png").relative_to(out)), "q* by unit kind")

    cap = results.get("capacity") or []
    if cap:
        r.h("Capacity")
        r.table(["expansion", "d_sae", "n_train", "R² train", "R² held-out", "L0"],
                [[c["expansion"], c.get("d_sae"), c.get("n_train"), c["r2"], c["r2_heldout"], c.get("l0_train")] for c in cap])
        try:
            from sae_atoms.experiments.capacity import plot_capacity

            p = plot_capacity(cap, plots / "capacity.png")
            r.img(str(Path(p).relative_to(out)), "capacity curve")
        except Exception as e:
            r.p(f"(capacity plot failed: {e})")


def write_report(results: dict, out: str | Path) -> tuple[Path, Path]:
    """``report.md`` / ``report.html`` and plots under ``out/plots`` from the main job's results."""
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    r = Report(f"Atom Theory on {results['model']}: reproduction report")
    _intro_sections(r, results)
    _geometry_section(r, results, plots, out)
    _frontier_sections(r, results, plots, out)
    _units_and_capacity_sections(r, results, plots, out)
    _token_frontier_section(r, results, plots, out)
    if results.get("cards"):
        r.h("Atom cards")
        r.p("One static HTML page per frequently firing unit of the headline SAEs (top contexts among the fact "
            "prompts' subject tokens, histogram, promoted / suppressed tokens, label purity, neighbours, co-firing "
            "against the uniqueness bound, steering preview); each index lists every unit, sortable:")
        r.links({label(u): href for u, href in results["cards"].items()})
    st = results.get("steering") or {}
    if st:
        r.h("Causal steering")
        det = results.get("steering_details", {})
        r.p("Held-out entities (subjects never used for selection or means), strength per method chosen on validation "
            f"prompts under the same KL budget ({det.get('config', {}).get('kl_budget')} nats on unrelated prompts); "
            "SAEs are the headline SAEs at the matched L0; success = the target is the top-1 next token; ± = the "
            "binomial standard error from the prompt count (the Reading compares methods with it).")
        r.table(["method", "selection", "strength (per seed)", "success rate ± SE", "log-prob gain", "KL unrelated",
                 "val KL within budget", "targets", "prompts", "seeds"],
                [[m, "/".join(v["selection_per_seed"]) if "selection_per_seed" in v else v.get("selection", "-"), "/".join(f"{a:g}" for a in v.get("strength_per_seed", [v.get("strength", 0)])),
                  f"{fmt(v['success_rate'])} ± {fmt(success_se(v['success_rate'], v['n_prompts']))}", v.get("logprob_gain"), v["kl_unrelated"], v.get("within_budget"), v.get("n_targets"),
                  v.get("n_prompts"), v.get("seeds")] for m, v in st.items()])
        errs = {m: v["error_term"] for m, v in st.items() if v.get("error_term")}
        if errs:
            r.p("Error term of the transfer methods at the edited position: " + ", ".join(
                f"{m}: {e}" + (f" (rank {st[m]['subspace_rank']})" if st[m].get("subspace_rank") else "") for m, e in errs.items())
                + " (subspace: its part in the span of the countries' mean pool reconstructions is removed).")
        table = det.get("per_target") or {}
        if table:
            names = list(table)
            values = sorted({t for m in names for t in table[m]})
            r.p("Success rate per target (test, pooled over seeds):")
            r.table(["target", *names], [[t, *[table[m].get(t, {}).get("success_rate") for m in names]] for t in values])
        abl = det.get("ablation", {})
        if abl:
            r.p("Ablation check: ablating the k units selected for the subject's true value vs k random units "
                "(uniform, and among those active at the token), through the SAE with its error term.")
            r.table(["SAE", "k", "prompts", "log-prob drop: selected", "random", "random active", "selected beats random"],
                    [[k, v.get("k"), v.get("n_prompts"), v.get("logprob_drop", {}).get("selected"),
                      v.get("logprob_drop", {}).get("random"), v.get("logprob_drop", {}).get("random_active"),
                      v.get("selected_beats_random")] for k, v in abl.items()])
        _relations_section(r, results, out)
    t = results.get("timing_s", {})
    if t:
        r.h("Timing")
        rss, wrss = results.get("peak_rss_mb", {}), results.get("child_peak_rss_mb", {})
        r.table(["stage", "seconds", "peak RSS so far (MB)", "largest child process's peak RSS so far (MB)"],
                [[k, v, rss.get(k), wrss.get(k)] for k, v in t.items()])
        r.p("Child processes: the embedded model's first-use processing and the workers that train the frontier's and "
            "the capacity sweep's SAEs (`sae_atoms.workers`). Workers are forked: their resident pages include those "
            "they share with the main process, so the two columns do not add up.")
    return r.write(out)
