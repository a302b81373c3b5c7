"""SAELens's downstream figures for many SAEs at one hook, in shared passes.

``run_evals`` (``sae_lens.evals.get_recons_loss``) runs three whole forward passes per SAE and
batch: clean, the SAE spliced in, the hook zero-ablated. For N SAEs at one hook the clean and
ablated passes are the same N times, and the spliced pass equals the clean one up to the hook's
block. ``downstream_scores`` runs the clean and ablated passes once per batch, keeps the residual
stream entering the hook's block, and runs each SAE's pass from that block on
(TransformerLens's ``start_at_layer``). The formulas and masks are ``get_recons_loss``'s:

    ce_loss_score = (CE_ablation - CE_sae) / (CE_ablation - CE_clean)    (CE per next token)
    kl_div_score  = (KL_ablation - KL_sae) / KL_ablation                  (KL(clean || spliced), per token)

with special tokens neither replaced by the SAE nor counted, means over every counted token of
every batch. ``tests/test_downstream.py`` checks them against ``run_evals`` on the real model.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from sae_atoms.forward import hook_layer

KEYS = ("ce_loss_with_sae", "kl_div_with_sae")
BASE_KEYS = ("ce_loss_without_sae", "ce_loss_with_ablation", "kl_div_with_ablation")


def _kl(clean_p: Tensor, logp: Tensor) -> Tensor:
    """KL(clean || new) per position from the clean probabilities and the new log-probabilities, as
    ``sae_lens.evals._kl`` computes it."""
    return torch.nn.functional.kl_div(logp, clean_p, reduction="none").sum(-1)


def _ce(logp: Tensor, tokens: Tensor) -> Tensor:
    """CE per next token ``[b, T-1]`` from log-probabilities (TransformerLens's ``lm_cross_entropy_loss``)."""
    return -logp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]


def special_ids(model: Any) -> list[int]:
    """The tokenizer's special token ids (``run_evals``'s ``exclude_special_tokens=True``)."""
    from sae_lens.evals import get_special_token_ids

    return sorted(get_special_token_ids(model.tokenizer)) if model.tokenizer is not None else []


@torch.no_grad()
def downstream_scores(saes: Mapping[str, Any], model: Any, rows: Iterable[Iterable[int]], hook: str,
                      batch_prompts: int = 8, progress: bool = False,
                      reference: Mapping[str, str] | None = None) -> dict[str, dict[str, float]]:
    """``{name: {ce_loss_score, kl_div_score, ce_loss_with_sae, ce_loss_without_sae,
    ce_loss_with_ablation, kl_div_with_sae, kl_div_with_ablation, ce_loss_score_se}}`` for every SAE
    at ``hook`` on ``rows`` (equal-length token rows, e.g. packed ``context_size`` rows).
    ``ce_loss_score_se``: the standard error of the mean CE with the SAE over the counted tokens,
    divided by ``CE_ablation - CE_clean`` (unpaired: two SAEs' scores on the same tokens differ with
    less noise than this). ``reference`` ``{name: other}`` adds, for ``name``, ``ce_loss_score_vs_ref``
    (its score minus ``other``'s) and ``ce_loss_score_vs_ref_se``: paired over the same tokens, the
    standard error of the mean of ``CE_other - CE_name`` over ``CE_ablation - CE_clean``. Both are
    clustered by row (``clustered_se``): the tokens of a row come from one or two documents and do
    not vary independently, so a per-token standard error understates the noise of a mean over them."""
    from tqdm.auto import tqdm

    layer = hook_layer(hook)
    if layer is None:
        raise ValueError(f"{hook!r} is not inside a block; downstream_scores resumes from the hook's block.")
    dev = next(model.parameters()).device
    rows = torch.as_tensor(list(map(list, rows)), dtype=torch.long)
    ignore = torch.tensor(special_ids(model), dtype=torch.long, device=dev)
    vals: dict[str, list[Tensor]] = {k: [] for k in BASE_KEYS} | {f"{n}/{k}": [] for n in saes for k in KEYS}
    row_of: list[Tensor] = []  # each counted CE token's row: the clusters of the standard errors
    entry = f"blocks.{layer}.hook_resid_pre"
    got: dict[str, Tensor] = {}  # the clean pass's activations at the block's entry and at the hook
    save = lambda act, hook: got.__setitem__(hook.name, act)  # noqa: E731
    for s in tqdm(range(0, len(rows), batch_prompts), desc=f"run_evals figures, {len(saes)} SAEs", unit="batch",
                  disable=not progress):
        t = rows[s:s + batch_prompts].to(dev)
        keep = ~torch.isin(t, ignore)
        logits, ce = model.run_with_hooks(t, return_type="both", loss_per_token=True,
                                          fwd_hooks=[(entry, save), (hook, save)])
        clean_p = logits.softmax(-1)  # once per batch: every SAE's KL is against it
        del logits
        abl, abl_ce = model.run_with_hooks(t, return_type="both", loss_per_token=True,
                                           fwd_hooks=[(hook, lambda act, hook: torch.zeros_like(act))])
        vals["ce_loss_without_sae"].append(ce[keep[:, :-1]].double().cpu())
        row_of.append(torch.arange(s, s + len(t))[:, None].expand(-1, t.shape[1] - 1)[keep[:, :-1].cpu()])
        vals["ce_loss_with_ablation"].append(abl_ce[keep[:, :-1]].double().cpu())
        vals["kl_div_with_ablation"].append(_kl(clean_p, abl.log_softmax(-1))[keep].double().cpu())
        del abl
        x = got[hook]
        for name, sae in saes.items():
            x_hat = sae.decode(sae.encode(x.to(sae.W_dec.device))).to(x.device, x.dtype)
            x_hat = torch.where(keep[..., None], x_hat, x)
            logp = model.run_with_hooks(got[entry], start_at_layer=layer, return_type="logits",
                                        fwd_hooks=[(hook, lambda act, hook, v=x_hat: v)]).log_softmax(-1)
            vals[f"{name}/ce_loss_with_sae"].append(_ce(logp, t)[keep[:, :-1]].double().cpu())  # CE and KL: one softmax
            vals[f"{name}/kl_div_with_sae"].append(_kl(clean_p, logp)[keep].double().cpu())
    return _scores(list(saes), {k: torch.cat(v) for k, v in vals.items()}, torch.cat(row_of), reference)


def _scores(names: list[str], cat: dict[str, Tensor], rows_of: Tensor, reference: Mapping[str, str] | None) -> dict[str, dict[str, float]]:
    """``downstream_scores``'s figures from the counted tokens' values (``cat``) and their rows."""
    mean = {k: float(v.mean()) for k, v in cat.items()}
    result = {}
    for name in names:
        r = {k: mean[k] for k in BASE_KEYS} | {k: mean[f"{name}/{k}"] for k in KEYS}
        r["ce_loss_score"] = (r["ce_loss_with_ablation"] - r["ce_loss_with_sae"]) / (r["ce_loss_with_ablation"] - r["ce_loss_without_sae"])
        r["kl_div_score"] = (r["kl_div_with_ablation"] - r["kl_div_with_sae"]) / r["kl_div_with_ablation"]
        ce = cat[f"{name}/ce_loss_with_sae"]  # the score's standard error from the spread of CE_sae
        r["ce_loss_score_se"] = clustered_se(ce, rows_of) / (r["ce_loss_with_ablation"] - r["ce_loss_without_sae"])
        result[name] = r
    for name, other in (reference or {}).items():
        result[name] |= _paired(result[name], result[other], cat[f"{name}/ce_loss_with_sae"], cat[f"{other}/ce_loss_with_sae"],
                                rows_of)
    return result


def _paired(r: dict[str, float], other: dict[str, float], ce: Tensor, other_ce: Tensor, rows: Tensor) -> dict[str, float]:
    """``r``'s CE-loss score minus ``other``'s, and its standard error paired over the same tokens."""
    den = r["ce_loss_with_ablation"] - r["ce_loss_without_sae"]
    return {"ce_loss_score_vs_ref": r["ce_loss_score"] - other["ce_loss_score"],
            "ce_loss_score_vs_ref_se": clustered_se(other_ce - ce, rows) / den}


def clustered_se(values: Tensor, clusters: Tensor) -> float:
    """Standard error of ``values.mean()`` when values of one cluster may be correlated:
    ``sqrt(G / (G - 1) * sum_g (sum_{i in g} (v_i - mean))^2) / n`` over the ``G`` clusters present
    (the cluster-robust CR1 estimator; Cameron & Miller 2015, "A Practitioner's Guide to
    Cluster-Robust Inference"). One value per cluster gives the usual ``std / sqrt(n)``; NaN for
    fewer than two clusters."""
    _, g = torch.unique(clusters, return_inverse=True)
    n_g = int(g.max()) + 1 if len(g) else 0
    if n_g < 2:
        return float("nan")
    sums = torch.zeros(n_g, dtype=torch.float64).index_add_(0, g, (values - values.mean()).double())
    return float((n_g / (n_g - 1) * sums.pow(2).sum()).sqrt() / len(values))


@torch.no_grad()
def sparsity_and_variance(sae: Any, x: Tensor, batch_size: int = 4096) -> dict[str, float]:
    """``run_evals``'s ``l0`` (mean number of nonzero codes) and ``explained_variance`` (SAELens's
    ``ExplainedVarianceCalculator``: 1 - E||x - x_hat||^2 / total variance) on activations ``x``
    ``[n, d]`` already stripped of special tokens, with no model pass; ``explained_variance_typical``:
    the same over the tokens that are not massive (``sae_atoms.massive.typical``: norm at most 10x the
    median of ``x``), whose few outliers can otherwise hold most of the denominator."""
    from sae_lens.evals import ExplainedVarianceCalculator

    from sae_atoms.massive import typical

    ev, ev_typical, l0 = ExplainedVarianceCalculator(), ExplainedVarianceCalculator(), 0.0
    keep = typical(x)
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size].to(sae.W_dec.device, sae.dtype)
        codes = sae.encode(xb)
        x_hat, k = sae.decode(codes).to(xb.dtype), keep[s:s + batch_size].to(xb.device)
        ev.add_batch(x_hat, xb)
        ev_typical.add_batch(x_hat[k], xb[k])
        l0 += float((codes != 0).sum())
    return {"l0": l0 / x.shape[0], "explained_variance": ev.compute(), "explained_variance_typical": ev_typical.compute()}
