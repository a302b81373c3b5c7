"""The entry point: :func:`evaluate_units` (any unit set on activations, one flat JSON-able dict),
SAELens's downstream figures (:func:`model_evals`) and :func:`jsonable`.

A held-out evaluation is the same call on the held-out activations; the dictionary's geometry
(:func:`~sae_atoms.evals.dictionary_geometry`) is computed once and passed to both calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from sae_atoms.activations import as_matrix
from sae_atoms.aip import AIPMetric
from sae_atoms.data import column_list
from sae_atoms.evals.geometry import (Geometry, bound_ratio, dictionary_geometry, max_unique_k, q_star_a, q_star_b,
                                      unique_samples, uniqueness_bound)
from sae_atoms.evals.monosemantic import monosemanticity
from sae_atoms.evals.reconstruction import QUANTILES, cosine, firing_stats, l0, mse, noise_floor_gap, quantile_stats, r2
from sae_atoms.evals.units import Units, as_units, encode_all, whitening_matrix
from sae_atoms.models import resolve_device


@torch.no_grad()
def model_evals(sae: Any, model: Any, prompts: Sequence[str], hook_name: str | None = None,
                batch_size: int = 16) -> dict[str, float]:
    """SAELens's downstream figures for the SAE spliced into ``model`` at its hook.

    Uses ``sae_lens.evals.get_recons_loss`` (the function ``run_evals`` calls) on the given
    prompts (BOS/pad/special tokens excluded), and its formulas:
    ``ce_loss_score = (CE_ablation - CE_sae) / (CE_ablation - CE_clean)`` (CE loss recovered)
    and ``kl_div_score = (KL_ablation - KL_sae) / KL_ablation``.
    """
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    from sae_atoms.models import check_hook_name

    hook_name = hook_name or sae.cfg.metadata.hook_name
    if not hook_name:
        raise ValueError("the SAE has no cfg.metadata.hook_name; pass hook_name=")
    check_hook_name(model, hook_name)
    if not prompts:
        raise ValueError("model_evals needs at least one prompt")
    tok = model.tokenizer
    special = set(getattr(tok, "all_special_ids", []) or [])
    sums: dict[str, list[Tensor]] = {}
    for s in range(0, len(prompts), batch_size):
        tokens = model.to_tokens(list(prompts[s:s + batch_size]), prepend_bos=True, padding_side="right")
        m = get_recons_loss(sae, model, ActivationScaler(), tokens, compute_kl=True, compute_ce_loss=True,
                            hook_name=hook_name)
        keep = ~torch.isin(tokens, torch.tensor(sorted(special), device=tokens.device)) if special else torch.ones_like(tokens, dtype=torch.bool)
        for name, v in m.items():
            mk = keep if v.shape[1] == keep.shape[1] else keep[:, 1:]  # CE is per next token
            sums.setdefault(name, []).append(v[mk.to(v.device)].double().cpu())
    r = {k: float(torch.cat(v).mean()) for k, v in sums.items()}
    r["ce_loss_score"] = (r["ce_loss_with_ablation"] - r["ce_loss_with_sae"]) / (r["ce_loss_with_ablation"] - r["ce_loss_without_sae"])
    r["kl_div_score"] = (r["kl_div_with_ablation"] - r["kl_div_with_sae"]) / r["kl_div_with_ablation"]
    return r


# --------------------------------------------------------------------------- entry point
def _activation_tensor(activations: Any, hook: str | None) -> tuple[Tensor, Any]:
    x = as_matrix(activations, hook, min_rows=2)
    rows = None if isinstance(activations, Tensor) else getattr(activations, "rows", None)
    if not torch.isfinite(x).all():
        raise ValueError("the activations contain NaN or inf; check the extraction")
    return x.float(), rows


def jsonable(v: Any) -> Any:
    """``v`` with tensors as lists and non-finite floats as None (nested dicts / lists / tuples)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Tensor):
        return jsonable(v.tolist())
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


@dataclass
class EvalOptions:
    """The settings of :func:`evaluate_units` beyond its data (passed to it as keywords).

    ``groups``: per-sample group ids for monosemanticity, or a row column name (default
    ``"subject"`` when present), or None. ``top_k`` / ``judge``: as in
    :func:`~sae_atoms.evals.monosemantic`. ``dense_frac``: a unit firing on more than this
    fraction of samples is dense. ``model``, ``prompts``: when given (and the units are an SAE),
    SAELens's CE-loss-recovered and KL figures for the spliced SAE (:func:`model_evals`).
    """

    groups: Sequence[Any] | str | None = "subject"
    top_k: int = 20
    judge: Callable[[int, list[int]], float] | None = None
    dense_frac: float = 0.5
    device: Any = None
    batch_size: int = 1024
    quantiles: Sequence[float] = QUANTILES
    model: Any = None
    prompts: Sequence[str] | None = None
    progress: bool = False


def _check_geometry(geometry: Geometry, u: Units, W: Tensor | None) -> None:
    if geometry.n_units != u.n_units or geometry.unit_raw.shape[1] != u.d:
        raise ValueError(f"the geometry is of {geometry.n_units} units in d={geometry.unit_raw.shape[1]} but the units "
                         f"are {u.n_units} in d={u.d}; compute it with dictionary_geometry(units, metric)")
    same = (W is None) == (geometry.whitening is None) and (W is None or torch.equal(W, geometry.whitening.to(W)))
    if not same:
        raise ValueError("the geometry was computed with another AIP metric than the evaluation's; "
                         "compute it with dictionary_geometry(units, metric) for the same metric")


def _stability(geo: Geometry, codes: Tensor, k: Tensor, opts: EvalOptions) -> dict[str, Any]:
    """Coherence statistics, q* (both readings) per geometry, the selected ones, and the bound."""
    dev = resolve_device(opts.device)
    res: dict[str, Any] = {}
    for sel, coh, unit_rows in geo.readings():
        res.update(coh.stats(f"mu_{sel}", opts.quantiles))
        res[f"q_star_a_{sel}"] = q_star_a(coh, k)
        res[f"q_star_b_{sel}"], mu_i = q_star_b(codes, unit_rows, dev)
        if sel == geo.name:
            res.update(_binding(mu_i, k))
    sel = geo.name
    res.update(geo.selected.stats("mu", opts.quantiles))
    res["q_star_a"] = res[f"q_star_a_{sel}"]
    res["q_star_b"] = res[f"q_star_b_{sel}"]
    res["k_unique"] = max_unique_k(res["mu"])
    res["bound_holds_at_l0_max"] = bool(res["mu"] < uniqueness_bound(float(k.max())))
    return res


# which side of q* (b)'s bound binds (``_binding``), beside the median L0 and the share of samples whose
# amplitude gap is positive (the threshold condition): a study's row keys (frontier, token frontier)
BINDING_KEYS = ("l0_p50", "mu_sample_p50", "bound_ratio_p50", "k_allowed_p50", "amplitude_gap_sample_pos_frac",
                "q_star_b_k_upto_p50", "q_star_b_k_above_p50")


def _binding(mu_i: Tensor, k: Tensor) -> dict[str, float]:
    """Which side of reading (b)'s bound binds, over samples with two or more active units: the
    median co-active coherence ``mu_sample_p50``, the median ``bound_ratio`` (< 1: inside the bound)
    and the largest K that median coherence allows (``max_unique_k``); and q* (b) over all samples
    split at the median K (``q_star_b_k_upto_p50`` / ``q_star_b_k_above_p50``): co-active coherence
    grows with K while the bound shrinks, so a spread of K around the mean L0 can fail the upper
    half alone. NaN where a group is empty."""
    nan = float("nan")
    above = k.double() > k.double().median()
    ok = unique_samples(mu_i, k).double()
    split = {"q_star_b_k_upto_p50": float(ok[~above].mean()) if bool((~above).any()) else nan,
             "q_star_b_k_above_p50": float(ok[above].mean()) if bool(above.any()) else nan}
    on = k >= 2
    if not bool(on.any()):
        return {"mu_sample_p50": nan, "bound_ratio_p50": nan, "k_allowed_p50": nan} | split
    mu50 = float(mu_i[on].double().median())
    return {"mu_sample_p50": mu50, "bound_ratio_p50": float(bound_ratio(mu_i, k).median()),
            "k_allowed_p50": max_unique_k(mu50)} | split


def _data_metrics(u: Units, x: Tensor, geo: Geometry, opts: EvalOptions) -> tuple[dict[str, Any], Tensor]:
    """Faithfulness, sparsity, firing, stability and (SAEs) the noise floor; also the codes."""
    codes, recon, pre = encode_all(u, x, opts.batch_size, want_pre=u.kind == "sae", progress=opts.progress)
    k = l0(codes)
    W = geo.whitening
    res: dict[str, Any] = {"units": u.name, "kind": u.kind, "n_units": u.n_units, "d": u.d, "n_samples": int(x.shape[0]),
                           "geometry": geo.name}
    res.update(u.info)
    res["r2"] = r2(x, recon)
    res["r2_aip"] = r2(x, recon, W) if W is not None else None
    res["mse"] = mse(x, recon)
    res["cos"] = cosine(x, recon)
    res.update(quantile_stats(k, "l0", opts.quantiles))
    res.update({k_: v for k_, v in firing_stats(codes, opts.dense_frac).items() if k_ != "freq"})
    res.update(_stability(geo, codes, k, opts))
    if pre is not None:
        res.update(noise_floor_gap(pre, codes))
    return res, codes


def _labelled_metrics(codes: Tensor, rows: Any, labels: Mapping[str, Sequence[Any]] | None,
                      opts: EvalOptions) -> dict[str, Any]:
    """Monosemanticity against ``labels`` (default: the rows' ``LABEL_COLUMNS``), grouped by ``opts.groups``."""
    if labels is None and rows is not None:
        from sae_atoms.data import LABEL_COLUMNS

        labels = {c: column_list(rows, c) for c in LABEL_COLUMNS if c in rows.column_names}
    groups = opts.groups
    if isinstance(groups, str):
        groups = column_list(rows, groups) if rows is not None and groups in rows.column_names else None
    if not labels:
        return {}
    res = monosemanticity(codes, labels, top_k=opts.top_k, groups=groups, judge=opts.judge)
    res["mono_top_k"] = opts.top_k
    res["mono_grouped"] = groups is not None
    return res


def _spliced_metrics(units: Any, u: Units, rows: Any, opts: EvalOptions) -> dict[str, Any]:
    """:func:`model_evals` of an SAE (prefixed ``model_``) when ``opts.model`` is given."""
    if opts.model is None or u.kind != "sae" or isinstance(units, Units):
        return {}
    prompts = opts.prompts
    if prompts is None and rows is not None and "prompt" in rows.column_names:
        prompts = sorted(set(column_list(rows, "prompt")))
    if not prompts:
        return {}
    return {f"model_{k}": v for k, v in model_evals(units, opts.model, list(prompts)).items()}


def evaluate_units(units: Any, activations: Any, metric: AIPMetric | Tensor | None = None,
                   labels: Mapping[str, Sequence[Any]] | None = None, *, hook: str | None = None,
                   geometry: Geometry | None = None, **options: Any) -> dict[str, Any]:
    """Evaluate any unit set on activations; returns a flat JSON-able dict.

    Args:
        units: ``"neurons"``, a SAELens SAE (standard / jumprelu / topk / tsae / tsae_aip), a
            square basis tensor or a :class:`Units`.
        activations: ``[n, d]`` tensor or an ``ActivationSet`` (then its rows supply labels,
            groups and prompts).
        metric: an ``AIPMetric`` for the AIP numbers (default: the one the SAE carries, if any).
        labels: ``{attribute: per-sample labels}``; default from an ``ActivationSet``'s
            ``LABEL_COLUMNS`` present in its rows.
        geometry: the units' :func:`dictionary_geometry` under the same metric, when already
            computed (e.g. for another split); computed here otherwise.
        options: the fields of :class:`EvalOptions` (``top_k``, ``device``, ``model``, ``progress``, ...).

    Keys: ``r2``, ``r2_aip``, ``mse``, ``cos``, ``l0_mean`` + ``l0_p50/p90/p99/max``,
    ``mu`` (AIP coherence when a metric is known, else raw) + quantiles, ``mu_raw``,
    ``mu_aip``, ``q_star_a`` / ``q_star_b`` (in the geometry of ``mu``) and ``*_raw``,
    ``k_unique`` (largest K with ``mu < 1/(2K-1)``), ``mu_sample_p50`` / ``bound_ratio_p50`` /
    ``k_allowed_p50`` (which side of reading (b)'s bound binds), ``dead_frac``, ``dense_frac``,
    ``mono_<attr>_purity`` / ``_mi_bits``, ``monosemanticity``, noise floor / amplitude gap
    for SAEs, and ``geometry``.
    """
    opts = EvalOptions(**options)
    x, rows = _activation_tensor(activations, hook)
    u = as_units(units, x.shape[1])
    if u.d != x.shape[1]:
        raise ValueError(f"the units live in d={u.d} but the activations have d={x.shape[1]}; "
                         "evaluate on activations from the hook the units were trained on")
    W = whitening_matrix(metric if metric is not None else u.metric)
    if W is not None and W.shape[0] != x.shape[1]:
        raise ValueError(f"the AIP metric has d={W.shape[0]} but the activations have d={x.shape[1]}")
    if geometry is None:
        geometry = dictionary_geometry(u, W, device=opts.device, progress=opts.progress)
    _check_geometry(geometry, u, W)
    res, codes = _data_metrics(u, x, geometry, opts)
    res.update(_labelled_metrics(codes, rows, labels, opts))
    res.update(_spliced_metrics(units, u, rows, opts))
    return jsonable(res)
