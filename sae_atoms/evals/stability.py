"""Stability across runs: do two dictionaries hold the same directions?

Atom Theory's stability claim (arXiv 2509.20784): a code whose co-active atoms meet the
uniqueness bound ``mu < 1/(2K - 1)`` is unique, so the same atoms come back whatever the seed or
the width. Measured here as in the SAE-stability literature (Paulo & Belrose, arXiv 2501.16615;
Song et al., arXiv 2505.20254): the two dictionaries' unit rows are matched one to one by the
Hungarian algorithm on ``|cos|`` (``matched_cosines``), in one geometry for both (raw, or the
AIP of a reference metric, so the comparison does not depend on which metric each SAE carries).

* seed consistency: the same config, two seeds; the mean matched ``|cos|`` and the fraction of
  units with a match ``>= threshold`` (0.9 by default);
* width consistency: the fraction of a narrow dictionary's units with a ``>= threshold`` match in
  a wider one (atoms should neither split nor merge).

Dead units (never firing on the data given) are left out of the side they belong to: a dead
unit keeps its random initial direction, which no run reproduces, and it codes nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from sae_atoms.aip import AIPMetric
from sae_atoms.evals.units import as_units, encode_all, unit_directions

MATCH_THRESHOLD = 0.9
ROW_KEYS = ("seed_consistency", "seed_mean_cos", "width_consistency", "width_mean_cos")  # in a study's rows


def row_keys(rows: Any) -> tuple[str, ...]:
    """``ROW_KEYS`` when a study's row carries them, else none (a table's optional columns)."""
    return ROW_KEYS if any("seed_consistency" in r for r in rows) else ()


def matched_cosines(a: Tensor, b: Tensor) -> Tensor:
    """For each row of ``a`` (unit rows ``[n, d]``), the ``|cos|`` of its partner in ``b``
    (``[m, d]``) under the one-to-one matching that maximises the total ``|cos|`` (Hungarian);
    0 for rows left without a partner (``n > m``)."""
    sim = (a.double() @ b.double().T).abs()
    rows, cols = linear_sum_assignment(sim.numpy(), maximize=True)
    out = torch.zeros(a.shape[0], dtype=torch.float64)
    out[torch.as_tensor(rows)] = sim[torch.as_tensor(rows), torch.as_tensor(cols)]
    return out


def live_directions(units: Any, x: Tensor | None, metric: AIPMetric | Tensor | None) -> Tensor:
    """The unit rows of ``units`` in the geometry of ``metric`` (None: raw), without the units
    that never fire on ``x`` (all units when ``x`` is None)."""
    u = as_units(units)
    rows = unit_directions(u.directions.float(), metric)
    if x is None:
        return rows
    codes = encode_all(u, x.float())[0]
    return rows[(codes != 0).any(0)]


def consistency(a: Tensor, b: Tensor, threshold: float = MATCH_THRESHOLD) -> dict[str, float]:
    """``mean_matched_cos`` and ``frac_matched`` (the share of ``a``'s rows matched at
    ``>= threshold``) of the one-to-one matching of ``a``'s unit rows into ``b``'s."""
    m = matched_cosines(a, b)
    return {"mean_matched_cos": float(m.mean()), "frac_matched": float((m >= threshold).double().mean()),
            "n_units": int(a.shape[0]), "n_partners": int(b.shape[0])}


def stability_columns(units: Any, seed_twin: Any, wide_twin: Any, x: Tensor | None = None,
                      metric: AIPMetric | Tensor | None = None) -> dict[str, float]:
    """A study row's ``ROW_KEYS``: ``units`` against ``seed_twin`` (the same config, another
    initialisation) and against ``wide_twin`` (twice the width), by ``dictionary_consistency``."""
    seed = dictionary_consistency(units, seed_twin, x, metric)
    wide = dictionary_consistency(units, wide_twin, x, metric)
    return {"seed_consistency": seed["frac_matched"], "seed_mean_cos": seed["mean_matched_cos"],
            "width_consistency": wide["frac_matched"], "width_mean_cos": wide["mean_matched_cos"]}


def dictionary_consistency(units_a: Any, units_b: Any, x: Tensor | None = None,
                           metric: AIPMetric | Tensor | None = None, threshold: float = MATCH_THRESHOLD) -> dict[str, float]:
    """``consistency`` of two unit sets' live rows (``live_directions`` on ``x``) in the geometry
    of ``metric``: seed consistency for two seeds of one config, width consistency for a narrow
    ``units_a`` against a wide ``units_b``."""
    return consistency(live_directions(units_a, x, metric), live_directions(units_b, x, metric), threshold)
