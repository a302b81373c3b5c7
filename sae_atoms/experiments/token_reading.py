"""The token benchmark's reading: its goal check in plain words, its table and its plot.

The goal (issue 21): at every matched L0, atoms' CE-loss score >= the best other unit's -
``CE_MARGIN`` on held-out documents, and atoms' q* (b) the highest of all units. It is read for each
kind of atoms in the rows (``atoms``, ``atoms_stable`` with the stability objective, the built
orthonormal ``atoms_onb``), against the units that are not atoms. The rows are
``sae_atoms.experiments.token_frontier.run_token_frontier``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from sae_atoms.io import save_figure
from sae_atoms.units import ONB, is_atoms_like

ROW_KEYS = ("unit", "target_l0", "l0", "ce_loss_score", "ce_loss_score_se", "kl_div_score", "explained_variance",
            "explained_variance_typical", "r2_aip", "mu", "mu_raw", "q_star_a", "q_star_b", "dead_frac")
CE_MARGIN = 0.005  # the goal: atoms' CE-loss score >= the best other unit's - CE_MARGIN at every matched L0


def row_keys(rows: Sequence[dict]) -> tuple[str, ...]:
    """``ROW_KEYS``, the paired CE-loss score difference with atoms when rows have it (every unit but
    atoms, when atoms were trained) and the stability columns when rows have them
    (``TokenFrontierConfig.stability``)."""
    from sae_atoms.evals.stability import row_keys as stability_keys

    paired = ("ce_minus_atoms", "ce_minus_atoms_se") if any("ce_minus_atoms" in r for r in rows) else ()
    return ROW_KEYS + paired + stability_keys(rows)


def goal_check(rows: Sequence[dict], tolerance: float = 0.15, atoms_unit: str = "atoms") -> list[dict]:
    """At each target: whether every row's L0 is within ``tolerance`` of it, the CE-loss score of
    ``atoms_unit`` >= the best other unit's - ``CE_MARGIN``, and its q* (b) the highest of all units
    (and above zero: a tie at zero is no unit being stable, not atoms leading). Rivals are the units
    that are not atoms (other kinds of atoms and designs of atoms are not)."""
    out = []
    for t in sorted({r["target_l0"] for r in rows}):
        at = [r for r in rows if r["target_l0"] == t]
        atoms = next((r for r in at if r["unit"] == atoms_unit), None)
        others = [r for r in at if not is_atoms_like(r["unit"]) and "design" not in r]
        if atoms is None or not others:
            continue
        best_ce = max(others, key=lambda r: r["ce_loss_score"])
        best_q = max(others, key=lambda r: r["q_star_b"])
        out.append({"target_l0": t, "matched": all(abs(r["l0"] - t) <= tolerance * t for r in at),
                    "ce_ok": atoms["ce_loss_score"] >= best_ce["ce_loss_score"] - CE_MARGIN,
                    "q_ok": atoms["q_star_b"] >= best_q["q_star_b"] and atoms["q_star_b"] > 0,
                    "atoms_ce": atoms["ce_loss_score"],
                    "best_ce": (best_ce["unit"], best_ce["ce_loss_score"]), "atoms_q": atoms["q_star_b"],
                    "best_q": (best_q["unit"], best_q["q_star_b"]),
                    # atoms minus the best other, paired over tokens (SE clustered by row); pairs are with atoms only
                    "ce_gap_se": best_ce.get("ce_minus_atoms_se") if atoms_unit == "atoms" else None})
    return out


def reading(rows: Sequence[dict]) -> list[str]:
    """The goal check in plain words for each kind of atoms in the rows, computed from the rows."""
    return [s for u in dict.fromkeys(r["unit"] for r in rows if is_atoms_like(r["unit"])) for s in _reading(rows, u)]


def _reading(rows: Sequence[dict], unit: str) -> list[str]:
    checks = goal_check(rows, atoms_unit=unit)
    if not checks:
        return []
    name = {"atoms": "atoms", ONB: f"orthonormal atoms by ICA ({ONB})"}.get(unit, f"atoms with the stability objective ({unit})")
    se = lambda g: f" ± {g['ce_gap_se']:.4f} paired SE" if g["ce_gap_se"] is not None else ""  # noqa: E731
    parts = [f"L0 {g['target_l0']:g}: CE-loss score {g['atoms_ce']:.4f} vs best other {g['best_ce'][1]:.4f} "
             f"({g['best_ce'][0]}; {unit} minus it {g['atoms_ce'] - g['best_ce'][1]:+.4f}{se(g)}), "
             f"q* (b) {g['atoms_q']:.3f} vs {g['best_q'][1]:.3f} ({g['best_q'][0]})"
             f"{'' if g['matched'] else ', L0 not matched within 15%'}" for g in checks]
    n_ce, n_q = sum(g["ce_ok"] for g in checks), sum(g["q_ok"] for g in checks)
    return [f"Token stream, held-out documents, {name} (goal: CE-loss score >= the best other unit's - {CE_MARGIN} and "
            f"q* (b) the highest): CE part met at {n_ce}/{len(checks)} targets, q* part at {n_q}/{len(checks)}. "
            + "; ".join(parts) + "."]


def format_table(rows: Sequence[dict]) -> str:
    from sae_atoms.evals import table

    return table.format_table([(r["unit"], r) for r in rows], row_keys(rows)[1:], label="unit", digits=4, missing="–",
                              markdown=True)


def plot_token_frontier(rows: Sequence[dict], path: Path) -> Path:
    """CE-loss score, explained variance and q* (b) against held-out L0, one line per unit (SAEBench style)."""
    import matplotlib.pyplot as plt

    from sae_atoms.experiments.plots import series

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    units = list(dict.fromkeys(r["unit"] for r in rows))
    for ax, (key, title) in zip(axes, (("ce_loss_score", "CE-loss score"), ("explained_variance", "explained variance"),
                                       ("q_star_b", "q* (b), AIP"))):
        for i, u in enumerate(units):
            series(ax, i, u, sorted((r["l0"], r[key]) for r in rows if r["unit"] == u and r.get(key) is not None))
        ax.set_xscale("log", base=2)
        ax.set(xlabel="L0 (held-out documents)", ylabel=title, title=title)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(units), 4), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return save_figure(fig, path)
