"""The steering experiment: do atoms steer a model better than features or the difference of means?

Atom Theory (arXiv 2509.20784) shows that atoms reconstruct activations and separate
concepts; whether they are *causal* is its first open question. ``run_steering`` (``sae-atoms
steer``) compares atoms (``tsae_aip``), features of a ``jumprelu`` SAE selected the same way
(``sae_atoms.steering.select_atoms``), and the difference of means (``mean(x | y = v) -
mean(x)``, the strong baseline of activation-steering work, e.g. Marks & Tegmark 2023, Rimsky
et al. 2024) at matched side effect (KL divergence of the next-token distribution on unrelated
prompts), with the strength chosen on a validation split; and an ablation check (ablating the
selected atoms vs random ones). The interventions themselves are ``sae_atoms.steering``.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sae_atoms.activations import ActivationSet, extract, subject_token_positions
from sae_atoms.data import reasoning_prompts, split_of
from sae_atoms.io import atomic_dir, check_output_dir, output_lock, save_figure, write_json
from sae_atoms.models import check_hook_name, first_token_ids, pad_batch, pad_id, resolve_device
from sae_atoms.steering import (
    AddDirection,
    EditAtoms,
    Intervention,
    TransferAtoms,
    atom_amplitudes,
    atom_values,
    concept_pool,
    concept_subspace,
    diff_of_means,
    encode_batched,
    next_token_logprobs,
    output_gradient,
    prompt_token_ids,
    select_atoms,
    select_atoms_by_effect,
    swap_atoms,
)
from sae_atoms.training import train_on_activations, training_config


# =========================================================================== settings
@dataclass
class SteerConfig:
    """Settings of ``run_steering`` (defaults sized for 2 CPU cores, see ``sae-atoms steer``).

    Two strength units: ``alphas`` multiply a vector scaled to the norm of the target's
    difference of means (``diff_of_means``, ``random_direction``); ``strengths`` multiply each
    SAE unit's typical on-support amplitude (the SAE methods, capped at the ``ceiling_q``
    quantile of the unit's non-zero training codes). Either way the strength of every method is
    chosen on validation prompts under the same ``kl_budget``.
    """

    relation: str = "city_country"
    label: str = "country"
    n_targets: int = 8
    min_subjects: int = 8          # train subjects with the target value (for selection / means)
    k: int = 16                    # atoms / features per target
    selection: str = "activation"  # headline selection of SAE units: "activation" or "effect" (atoms: the other too)
    alphas: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    strengths: tuple[float, ...] = (4.0, 8.0, 12.0, 16.0)
    scale: str = "target"          # SAE-unit strength 1 = "typical" on-support amplitude, or the "target" subjects' mean code
    ceiling_q: float = 0.99        # in-distribution cap of a clamped unit: this quantile of its non-zero codes
    span: str = "at"               # intervene at the subject's last token ("at") or from it on ("from")
    transfer_error: str = "subspace"  # the transfer's error term: "subspace" (concept part removed), "keep", "drop"
    kl_budget: float = 1.0         # nats: the matched side effect (validation KL on unrelated prompts)
    n_eval: int = 8                # held-out prompts per split (val, test) per target
    n_unrelated: int = 16          # unrelated prompts per split (half other relations, half reasoning)
    n_select: int = 16             # training prompts per target for selection by effect
    grid_growth: float = 1.25      # past the grid, strengths grow by this factor ...
    grid_extend: int = 12          # ... at most this many times, while within kl_budget and success has not peaked
    n_bisect: int = 2              # bisections between the best in-budget strength and the next over-budget one
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # transfer methods: the fraction of the transfer applied
    transfer_strength: float = 16.0  # transfer methods: the target's units at this strength (capped) when fully applied
    n_seeds: int = 2               # seeds seed, seed+1, ...: the split, prompts, selection prompts, random direction
    methods: tuple[str, ...] = ()  # run only these methods (names as in the results); empty: all
    n_ablation: int = 24           # held-out prompts for the ablation check
    n_random: int = 2              # random atom draws in the ablation check
    batch_size: int = 32
    seed: int = 0


QUICK = {"n_targets": 3, "n_eval": 4, "n_unrelated": 4, "n_select": 6, "n_seeds": 1, "n_ablation": 8, "n_random": 1,
         "alphas": (2.0, 4.0), "strengths": (8.0, 16.0), "fractions": (0.5, 1.0)}


# =========================================================================== measuring
def _kl(lp_clean: Tensor, lp: Tensor) -> Tensor:
    """``KL(p_clean || p) = sum_v p_clean(v) (log p_clean(v) - log p(v))`` per row (nats)."""
    return (lp_clean.exp() * (lp_clean - lp)).sum(-1).clamp(min=0)


def _target_stats(lp: Tensor, lp_clean: Tensor, tok: int) -> dict[str, float]:
    t = lp[:, tok]
    rank = (lp > t.unsqueeze(1)).sum(-1) + 1  # 1 = top
    return {"success_rate": float((rank == 1).float().mean()), "mean_rank": float(rank.float().mean()),
            "median_rank": float(rank.float().median()), "logprob_gain": float((t - lp_clean[:, tok]).mean())}


def _resid_layer(model, hook: str | None) -> int | None:
    """``L`` when ``hook`` is ``blocks.L.hook_resid_post`` of ``model`` (the fast path), else None."""
    parts = (hook or "").split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[2] == "hook_resid_post" and parts[1].isdigit():
        return int(parts[1]) if int(parts[1]) < model.cfg.n_layers else None
    return None


class _Prompts:
    """Prompt rows with their token ids, subject positions and clean log-probabilities.

    At a ``blocks.L.hook_resid_post`` hook the residual stream at ``L`` is computed once and
    every steered run starts there (``start_at_layer``-style: blocks ``L+1..`` only), with the
    interventions applied to the cached stream; elsewhere (or for interventions at other hooks)
    the full forward pass with hooks. Right padding: causal attention keeps padding out of real
    tokens, so both paths give the same log-probabilities.
    """

    def __init__(self, model, rows: list[dict], batch_size: int, hook: str | None = None):
        self.rows, self.hook = rows, hook
        self.sources: list[str] = []
        prompts = [r["prompt"] for r in rows]
        self.ids = prompt_token_ids(model, prompts)
        self.pos = subject_token_positions(model, prompts, [r["subject_start"] for r in rows], [r["subject_end"] for r in rows])
        self.layer = _resid_layer(model, hook)
        self.cached: list[tuple[list[int], Tensor]] = []
        if self.layer is not None and rows:
            order = sorted(range(len(rows)), key=lambda i: len(self.ids[i]))
            with torch.no_grad():
                for k in range(0, len(order), batch_size):
                    b = order[k:k + batch_size]
                    toks, mask = pad_batch([self.ids[i] for i in b], pad_id(model))
                    dev = next(model.parameters()).device
                    self.cached.append((b, model(toks.to(dev), attention_mask=mask.to(dev), stop_at_layer=self.layer + 1)))
        self.clean = self.run(model, None, batch_size) if rows else torch.zeros(0)

    def __len__(self) -> int:
        return len(self.rows)

    def run(self, model, make: Callable[[list[int], list[int]], Sequence[Intervention]] | None, batch_size: int) -> Tensor:
        if not self.cached or (make is not None and any(iv.hook_name != self.hook for iv in make([0], [0]))):
            return next_token_logprobs(model, self.ids, self.pos, make, batch_size)
        out = torch.empty(len(self.rows), model.cfg.d_vocab)
        with torch.no_grad():
            for b, x in self.cached:
                for iv in (make([self.pos[i] for i in b], b) if make is not None else []):
                    x = iv.hook_fn(x)
                for block in model.blocks[self.layer + 1:]:
                    x = block(x)
                last = torch.tensor([len(self.ids[i]) - 1 for i in b], device=x.device)
                x = model.ln_final(x[torch.arange(len(b), device=x.device), last].unsqueeze(1))
                out[b] = model.unembed(x)[:, 0].float().log_softmax(-1).cpu()
        return out


def _split_rows(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Validation / test halves, by subject (a subject's prompts stay together)."""
    val = [r for r in rows if split_of(r["subject"], 0.5, seed + 101) == "train"]
    test = [r for r in rows if split_of(r["subject"], 0.5, seed + 101) == "heldout"]
    return val, test


def _sample(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    return rows if len(rows) <= n else rng.sample(rows, n)


def _choose_alpha(sweep: list[dict], budget: float) -> dict:
    """The validation point with the highest success rate among those with KL <= budget
    (ties: lower KL); if none is within budget, the weakest strength."""
    ok = [p for p in sweep if p["kl_unrelated"] <= budget]
    if not ok:
        return min(sweep, key=lambda p: p["alpha"])
    return max(ok, key=lambda p: (p["success_rate"], p["logprob_gain"], -p["kl_unrelated"]))


# =========================================================================== the experiment
def run_steering(model, saes: dict[str, Any], dataset, acts, relation: str = "city_country",
                 label: str = "country", unrelated=None, cfg: SteerConfig | None = None,
                 out_dir: str | Path | None = None, progress: bool = True, quick: bool = False,
                 **overrides: Any) -> dict:
    """Do atoms steer a model better than features or the difference of means?

    For ``n_targets`` values (e.g. countries) with at least ``min_subjects`` training subjects,
    the model's best-known facts and a unique first answer token, each method edits ``acts``'
    hook on held-out prompts about subjects with another value, at the subject's last token
    (``span="at"``) or from it on (``"from"``):

    * ``diff_of_means``: ``x += alpha * (mean(x | y = target) - mean(x))`` (training subjects);
    * ``random_direction``: a Gaussian direction of the same norm (control);
    * per SAE in ``saes`` (``atoms`` = ``tsae_aip``, ``features_jumprelu``, ``features_topk``):
      the ``k`` units chosen by ``selection`` (``"effect"``: ``output_gradient`` +
      ``select_atoms_by_effect`` on training prompts, Arad et al. arXiv 2505.20063; ``"activation"``:
      ``select_atoms``) clamped through the SAE (error term kept) to ``min(s * a_j, ceiling_j)``,
      ``a_j`` the unit's mean training code on the target's subjects (``scale="target"``) or its
      typical on-support amplitude (``"typical"``), ``ceiling_j`` the ``ceiling_q`` quantile of its
      non-zero training codes (in distribution); for atoms the other selection as ``atoms_by_<selection>``;
    * ``atoms_swap`` (knowledge editing): ablate the ``k`` activation atoms of each prompt's
      source value (the subject's own; on unrelated prompts the targets in turn), then the clamp.

    Per seed (``n_seeds``: the validation / test split of held-out subjects, the prompts, the
    selection prompts, the random direction), each method's strength is chosen on validation
    prompts under the same ``kl_budget`` (``_sweep``) and the test prompts are used once, at
    that strength; results are pooled over seeds. Success: the target's first token is the
    top-1 next token; also its rank (1 = top) and log-probability gain. Side effect:
    ``KL(p_clean || p_steered)`` of the next token on unrelated prompts (other relations,
    reasoning prompts) under the same intervention (AxBench, arXiv 2501.17148, compares
    SAE steering with the difference of means the same way).

    Ablation check: on held-out prompts, ablating (through the SAE, error term kept) the ``k``
    atoms selected for the subject's true value vs ``k`` random atoms (uniform, and among the
    atoms active at that token), the drop in log-probability of the correct first token.

    The steps: ``_resolve_config``, ``_check_inputs``, ``_training_data``, ``_choose_targets``,
    then per seed ``_run_seed`` (``_eval_rows``, ``_prompt_sets``, ``_select_units``,
    ``_methods``, ``_sweep``), ``_aggregate``, ``_ablation_check``, ``_finish``.

    Args:
        model: a ``HookedTransformer`` with a tokenizer.
        saes: name -> SAELens SAE at the hook of ``acts`` (``cfg.metadata.hook_name``).
        dataset: fact prompts (``sae_atoms.data.fact_prompts``), both splits.
        acts: ``ActivationSet`` of subject-last-token activations over (at least) the training
            rows of ``relation`` (labels in column ``label``).
        unrelated: prompt rows for the side effect (default: the dataset's other relations and
            ``reasoning_prompts``, held-out split).
        out_dir: if given, ``results.json`` and ``steering.png`` are written there (atomically).
        quick: smaller sizes (``QUICK``: 2 targets, fewer prompts and strengths) for smoke runs.
        overrides: fields of ``SteerConfig`` (e.g. ``seed=1``, ``span="at"``, ``k=4``).

    Returns: the results dict (also in ``results.json``).
    """
    cfg = _resolve_config(cfg, relation, label, quick, overrides)
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("the experiment needs a model with a tokenizer (prompts are text)")
    t_start = time.perf_counter()
    hook = _check_inputs(model, saes, acts, label)
    data = _training_data(acts, saes, relation, label, hook)
    all_rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    rng = random.Random(cfg.seed)
    tg = _choose_targets(model, all_rows, data, cfg, rng)
    amps = {name: atom_amplitudes(data.codes[name], cfg.ceiling_q) for name in saes}
    seeds = [cfg.seed + i for i in range(cfg.n_seeds)]
    per_seed = {sd: _run_seed(model, saes, data, amps, tg, all_rows, unrelated, cfg, sd, hook, progress) for sd in seeds}
    held = [r for r in _relation_rows(all_rows, cfg) if r["split"] == "heldout"]
    results: dict[str, Any] = {"methods": _aggregate(per_seed, tg.targets)}
    results["per_target"] = {m: r["per_target"] for m, r in results["methods"].items()}
    results["ablation"] = {name: _ablation_check(model, sae, name, hook, held, data.x, data.y, data.codes[name],
                                                 tg.n_subj, tg.first_tok, tg.tok_count, cfg, rng)
                           for name, sae in saes.items()}
    results.update({
        "config": asdict(cfg), "hook": hook, "model": getattr(model.cfg, "model_name", None), "seeds": seeds,
        "targets": [{"value": v, "first_token": model.tokenizer.decode([tg.first_tok[v]]),
                     "n_train_subjects": tg.n_subj[v], "clean_train_accuracy": tg.acc[v]} for v in tg.targets],
        "baseline_no_intervention": {sd: r["baseline_no_intervention"] for sd, r in per_seed.items()},
        "selected_units": {sd: r["selected_units"] for sd, r in per_seed.items()},
        "amplitudes": {name: {"typical_median": float(t.median()), "ceiling_median": float(c.median())}
                       for name, (t, c) in amps.items()},
        "n_val_unrelated": per_seed[seeds[0]]["n_unrelated"]["val"], "n_test_unrelated": per_seed[seeds[0]]["n_unrelated"]["test"],
        "seconds": time.perf_counter() - t_start,
    })
    return _finish(results, out_dir)


def _run_seed(model, saes: dict[str, Any], data: _TrainData, amps: dict, tg: _Targets, all_rows: list[dict], unrelated,
              cfg: SteerConfig, seed: int, hook: str, progress: bool) -> dict:
    """One seed: its validation / test split and prompts, its selection prompts, every method's sweep."""
    scfg = SteerConfig(**{**asdict(cfg), "seed": seed})
    rng = random.Random(seed)
    _held, val_rows, test_rows, u_val, u_test = _eval_rows(all_rows, unrelated, scfg, rng)
    ev, unrel_p = _prompt_sets(model, tg.targets, val_rows, test_rows, u_val, u_test, scfg, rng, hook)
    selected = _select_units(model, saes, data, amps, tg, all_rows, scfg, hook, rng)
    run = _Run(model, scfg, tg.targets, tg.first_tok, ev, unrel_p)
    methods = [m for m in _methods(saes, data, amps, selected, tg, scfg, hook, seed) if not cfg.methods or m.name in cfg.methods]
    if not methods:
        raise ValueError(f"methods={cfg.methods} names none of the methods of these SAEs; e.g. 'diff_of_means', 'atoms', 'atoms_swap'")
    return {"methods": _sweep(run, methods, progress), "selected_units": selected, "baseline_no_intervention": _baseline(run),
            "n_unrelated": {k: len(v) for k, v in unrel_p.items()}}


def _aggregate(per_seed: dict[int, dict], targets: list[str]) -> dict[str, dict]:
    """Per method, the test results pooled over seeds (prompt-weighted success, rank and gain; KL
    averaged over seeds), the per-target table and each seed's chosen strength and sweep."""
    seeds = list(per_seed)
    out = {}
    for m in per_seed[seeds[0]]["methods"]:
        rs = [per_seed[sd]["methods"][m] for sd in seeds]
        tests = [r["test"] for r in rs]
        n = sum(t["n_prompts"] for t in tests)
        pooled = {k: sum(t[k] * t["n_prompts"] for t in tests) / n for k in ("success_rate", "mean_rank", "logprob_gain")}
        per_target = {}
        for v in targets:
            pts = [t["per_target"][v] for t in tests if v in t["per_target"]]
            nv = sum(p["n"] for p in pts)
            if nv:
                per_target[v] = {k: sum(p[k] * p["n"] for p in pts) / nv for k in ("success_rate", "logprob_gain")} | {"n": nv}
        out[m] = {**pooled, "kl_unrelated": sum(t["kl_unrelated"] for t in tests) / len(tests),
                  "alpha": rs[0]["alpha"], "alpha_per_seed": [r["alpha"] for r in rs],
                  "n_targets": len(per_target), "n_prompts": n, "seeds": seeds,
                  "within_budget": all(r["within_budget"] for r in rs),
                  **({"selection_per_seed": [r["selection"] for r in rs]} if "val_success_by_choice" in rs[0] else {}),
                  **{k: rs[0][k] for k in ("strength_unit", "sae", "selection", "k", "intervention", "vector", "n_ablated", "pool_size", "ref_mass",
                                          "error_term", "subspace_rank") if k in rs[0]},
                  "per_target": per_target, "per_seed": {sd: r for sd, r in zip(seeds, rs)}}
    return out


def _resolve_config(cfg: SteerConfig | None, relation: str, label: str, quick: bool,
                    overrides: dict[str, Any]) -> SteerConfig:
    """``cfg`` (default ``SteerConfig()``) with ``QUICK`` (if ``quick``) and ``overrides`` applied, checked."""
    cfg = cfg or SteerConfig()
    unknown = set(overrides) - set(SteerConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown steering setting(s) {sorted(unknown)}; SteerConfig has {sorted(SteerConfig.__dataclass_fields__)}")
    cfg = SteerConfig(**{**asdict(cfg), **(QUICK if quick else {}), **overrides, "relation": relation, "label": label})
    cfg.alphas, cfg.strengths = tuple(float(a) for a in cfg.alphas), tuple(float(a) for a in cfg.strengths)
    cfg.fractions = tuple(float(a) for a in cfg.fractions)
    for name in ("alphas", "strengths", "fractions"):
        grid = getattr(cfg, name)
        if not grid or any(not (a > 0 and math.isfinite(a)) for a in grid):
            raise ValueError(f"{name} must be finite positive strengths, got {grid}")
    if cfg.span not in ("at", "from"):
        raise ValueError(f"span must be 'at' or 'from', got {cfg.span!r}")
    if cfg.scale not in _SCALES:
        raise ValueError(f"scale must be one of {sorted(_SCALES)}, got {cfg.scale!r}")
    if cfg.selection not in ("effect", "activation"):
        raise ValueError(f"selection must be 'effect' or 'activation', got {cfg.selection!r}")
    if cfg.transfer_error not in ("subspace", "keep", "drop"):
        raise ValueError(f"transfer_error must be 'subspace', 'keep' or 'drop', got {cfg.transfer_error!r}")
    small = {k: getattr(cfg, k) for k in ("n_targets", "min_subjects", "k", "n_eval", "n_unrelated", "n_ablation", "n_select",
                                          "n_seeds", "batch_size") if getattr(cfg, k) < 1}
    if small:
        raise ValueError(f"these steering sizes must be >= 1: {small}")
    if not (cfg.kl_budget > 0 and math.isfinite(cfg.kl_budget)):
        raise ValueError(f"kl_budget={cfg.kl_budget} must be finite and > 0")
    if cfg.n_bisect < 0:
        raise ValueError(f"n_bisect={cfg.n_bisect} must be >= 0")
    if not (cfg.transfer_strength > 0 and math.isfinite(cfg.transfer_strength)):
        raise ValueError(f"transfer_strength={cfg.transfer_strength} must be finite and > 0")
    if not (cfg.grid_growth > 1 and math.isfinite(cfg.grid_growth)) or cfg.grid_extend < 0:
        raise ValueError(f"grid_growth={cfg.grid_growth} must be finite and > 1, grid_extend={cfg.grid_extend} >= 0")
    if not 0 < cfg.ceiling_q <= 1:
        raise ValueError(f"ceiling_q={cfg.ceiling_q} must be in (0, 1]")
    return cfg


def _check_inputs(model, saes: dict[str, Any], acts, label: str) -> str:
    """The one hook the activations and every SAE sit at (checked against the model); the
    activation set must be at the subject's last token with the columns the experiment reads."""
    hook = acts.hook_names[0] if len(acts.hook_names) == 1 else None
    for name, sae in saes.items():
        sh = sae.cfg.metadata.hook_name
        if hook is None:
            hook = sh
        if sh != hook:
            raise ValueError(f"SAE {name!r} sits at {sh!r} but the activations are at {hook!r}; use one hook for all")
        if int(sae.cfg.d_in) != int(model.cfg.d_model) and hook.endswith(("resid_post", "resid_pre", "resid_mid")):
            raise ValueError(f"SAE {name!r} has d_in={sae.cfg.d_in} but the model's d_model is {model.cfg.d_model}")
    if hook is None:
        raise ValueError("cannot tell the hook: give an ActivationSet with one hook, or SAEs")
    check_hook_name(model, hook)
    for col in ("relation", "split", label, "subject"):
        if col not in acts.rows.column_names:
            raise ValueError(f"the activation set lacks column {col!r}; extract it from sae_atoms.data prompts")
    if acts.meta.get("position", "subject_last") != "subject_last":
        raise ValueError(f"the activations must be at the subject's last token, not {acts.meta.get('position')!r}")
    return hook


@dataclass
class _TrainData:
    """The relation's training activations (selection, difference of means) and each SAE's codes."""

    x: Tensor
    y: list
    subjects: list
    codes: dict[str, Tensor]


def _training_data(acts, saes: dict[str, Any], relation: str, label: str, hook: str) -> _TrainData:
    rel_idx = [i for i, (r, s, y) in enumerate(zip(acts.labels("relation"), acts.labels("split"), acts.labels(label)))
               if r == relation and s == "train" and y]
    if not rel_idx:
        raise ValueError(f"no training activations for relation {relation!r} with a {label!r} label")
    train = acts.select(indices=rel_idx)
    x_train, y_train = train.x(hook).float(), train.labels(label)
    codes = {name: encode_batched(sae, x_train) for name, sae in saes.items()}
    return _TrainData(x_train, y_train, train.labels("subject"), codes)


@dataclass
class _Targets:
    """The target values and what was measured to choose them."""

    targets: list[str]
    first_tok: dict[str, int]     # value -> first token of " value"
    tok_count: dict[int, int]     # first token -> how many values start with it
    n_subj: dict[str, int]        # value -> training subjects with it
    acc: dict[str, float]         # candidate value -> clean accuracy on its training prompts


def _choose_targets(model, all_rows: list[dict], data: _TrainData, cfg: SteerConfig, rng: random.Random) -> _Targets:
    """Values with >= ``min_subjects`` training subjects and a unique first token; of those, the
    ``n_targets`` the model knows best (clean accuracy on up to 12 training prompts each)."""
    label = cfg.label
    values = sorted({r[label] for r in all_rows if r.get(label)})
    first_tok = dict(zip(values, first_token_ids(model, values)))
    tok_count: dict[int, int] = {}
    for v in values:
        tok_count[first_tok[v]] = tok_count.get(first_tok[v], 0) + 1
    n_subj: dict[str, int] = {}
    for _s, y in set(zip(data.subjects, data.y)):
        n_subj[y] = n_subj.get(y, 0) + 1
    cands = [v for v in sorted(n_subj, key=lambda v: (-n_subj[v], v)) if n_subj[v] >= cfg.min_subjects and v in first_tok and tok_count[first_tok[v]] == 1]
    if not cands:
        raise ValueError(f"no {label} value has >= {cfg.min_subjects} training subjects and a unique first token; "
                         "use more prompts (e.g. more cities) or lower min_subjects")
    cands = cands[:max(2 * cfg.n_targets, cfg.n_targets)]
    rel_rows = _relation_rows(all_rows, cfg)
    # known facts: clean accuracy on (up to 12) training prompts per candidate
    probe = []
    for v in cands:
        probe += _sample([r for r in rel_rows if r["split"] == "train" and r[label] == v], 12, rng)
    P = _Prompts(model, probe, cfg.batch_size)
    acc = {v: 0.0 for v in cands}
    for v in cands:
        m = torch.tensor([r[label] == v for r in probe])
        acc[v] = float((P.clean[m].argmax(-1) == first_tok[v]).float().mean()) if m.any() else 0.0
    targets = sorted(cands, key=lambda v: (-acc[v], -n_subj[v]))[:cfg.n_targets]
    return _Targets(targets, first_tok, tok_count, n_subj, acc)


def _relation_rows(all_rows: list[dict], cfg: SteerConfig) -> list[dict]:
    return [r for r in all_rows if r["relation"] == cfg.relation and r.get(cfg.label)]


def _eval_rows(all_rows: list[dict], unrelated, cfg: SteerConfig, rng: random.Random) -> tuple[list[dict], ...]:
    """``(held, val_rows, test_rows, u_val, u_test)``: the relation's held-out rows, their
    validation / test halves, and the unrelated prompts of each half (sampled)."""
    relation = cfg.relation
    held = [r for r in _relation_rows(all_rows, cfg) if r["split"] == "heldout"]
    if not held:
        raise ValueError(f"the dataset has no held-out prompts for {relation!r}")
    val_rows, test_rows = _split_rows(held, cfg.seed)
    if unrelated is None:
        unrel = [r for r in all_rows if r["relation"] != relation and r["split"] == "heldout"]
        reason = [r for r in reasoning_prompts(400, seed=cfg.seed).to_list() if r["split"] == "heldout"]
        u_val, u_test = _split_rows(unrel, cfg.seed)
        r_val, r_test = _split_rows(reason, cfg.seed)
        h = cfg.n_unrelated // 2
        u_val, u_test = _sample(u_val, cfg.n_unrelated - h, rng) + _sample(r_val, h, rng), _sample(u_test, cfg.n_unrelated - h, rng) + _sample(r_test, h, rng)
    else:
        urows = unrelated.to_list() if hasattr(unrelated, "to_list") else list(unrelated)
        u_val, u_test = _split_rows(urows, cfg.seed)
        u_val, u_test = _sample(u_val, cfg.n_unrelated, rng), _sample(u_test, cfg.n_unrelated, rng)
    if not u_val or not u_test:
        raise ValueError("not enough unrelated prompts for both validation and test; give more")
    return held, val_rows, test_rows, u_val, u_test


def _select_units(model, saes: dict[str, Any], data: _TrainData, amps: dict[str, tuple[Tensor, Tensor]], tg: _Targets,
                  all_rows: list[dict], cfg: SteerConfig, hook: str, rng: random.Random) -> dict[str, dict[str, dict]]:
    """Per SAE and target, the ``k`` units chosen by activation (``select_atoms``) and by effect
    (``output_gradient`` on ``n_select`` training prompts whose answer is another value, then
    ``select_atoms_by_effect``). Training prompts only: held-out entities never enter selection."""
    train_rows = [r for r in _relation_rows(all_rows, cfg) if r["split"] == "train" and r[cfg.label] in tg.first_tok]
    out: dict[str, dict[str, dict]] = {name: {} for name in saes}
    for v in tg.targets:
        rows = _sample([r for r in train_rows if r[cfg.label] != v], cfg.n_select, rng)
        ids = prompt_token_ids(model, [r["prompt"] for r in rows])
        pos = subject_token_positions(model, [r["prompt"] for r in rows], [r["subject_start"] for r in rows],
                                      [r["subject_end"] for r in rows])
        grad = output_gradient(model, hook, ids, pos, tg.first_tok[v], [tg.first_tok[r[cfg.label]] for r in rows],
                               span=cfg.span, batch_size=cfg.batch_size)
        dom = diff_of_means(data.x, data.y, v)
        for name, sae in saes.items():
            by_act = select_atoms(sae, data.x, data.y, v, k=cfg.k, codes=data.codes[name])
            by_eff = select_atoms_by_effect(sae, grad, amps[name][0], k=cfg.k)
            W = sae.W_dec.detach().float().cpu()
            out[name][v] = {how: [asdict(u) | {"cos_with_diff_of_means": float(torch.nn.functional.cosine_similarity(
                W[u.atom], dom, dim=0))} for u in units] for how, units in (("activation", by_act), ("effect", by_eff))}
    return out


@dataclass
class _Method:
    """One steering method: ``make(target, strength, prompts)`` gives the interventions of a batch
    (``prompts.sources``: each row's source value, which a swap ablates)."""

    name: str
    unit: str                      # what a strength of 1 means
    grid: tuple[float, ...]
    make: Callable[[str, float, "_Prompts"], Callable[[list[int], list[int]], list[Intervention]]]
    info: dict
    choices: dict[str, Callable] | None = None  # alternative ``make``s (selections), chosen on validation


def _methods(saes: dict[str, Any], data: _TrainData, amps: dict[str, tuple[Tensor, Tensor]], selected: dict,
             tg: _Targets, cfg: SteerConfig, hook: str, seed: int) -> list[_Method]:
    """The compared methods (see ``run_steering``)."""
    dom = {v: diff_of_means(data.x, data.y, v) for v in tg.targets}
    g = torch.Generator().manual_seed(seed + 7)
    rnd = {v: (lambda r: r * (dom[v].norm() / r.norm()))(torch.randn(dom[v].shape[0], generator=g)) for v in tg.targets}

    def add(vecs: dict[str, Tensor]):
        return lambda v, s, P: (lambda pos, rows: [AddDirection(hook, vecs[v], s, positions=pos, span=cfg.span)])

    unit = "norm of the target's difference of means"
    out = [_Method("diff_of_means", unit, cfg.alphas, add(dom), {"vector": "mean(x | y = target) - mean(x)"}),
           _Method("random_direction", unit, cfg.alphas, add(rnd), {"vector": "Gaussian, rescaled to the difference of means"})]
    other = {"effect": "activation", "activation": "effect"}[cfg.selection]
    for name, sae in saes.items():
        ceil = amps[name][1]
        typ = _unit_scales(data, amps[name][0], name, tg.targets, cfg.scale)
        for how in (cfg.selection, other) if name == "atoms" else (cfg.selection,):
            atoms = {v: [u["atom"] for u in selected[name][v][how]] for v in tg.targets}

            def clamp(v: str, s: float, P: _Prompts, sae=sae, atoms=atoms, typ=typ, ceil=ceil):
                vals = atom_values(typ[v], atoms[v], s, ceil)
                return lambda pos, rows: [EditAtoms(sae, atoms[v], vals, positions=pos, span=cfg.span, hook_name=hook)]

            label = name if how == cfg.selection else f"{name}_by_{how}"
            out.append(_Method(label, _SCALES[cfg.scale] + f", capped at the q{cfg.ceiling_q:g} quantile of its non-zero "
                               "training codes", cfg.strengths, clamp,
                               {"sae": name, "selection": how, "k": cfg.k, "intervention": "clamp through the SAE (error term kept)"}))
        if name == "atoms":
            out.append(_swap_method(sae, data, typ, ceil, selected, tg, cfg, hook, out[-2].unit))
        out.append(_transfer_method(name, sae, data, typ, ceil, selected, tg, cfg, hook, out[-1].unit))
    return out


def _transfer_method(name: str, sae, data: _TrainData, typ: dict[str, Tensor], ceil: Tensor, selected: dict,
                     tg: _Targets, cfg: SteerConfig, hook: str, unit: str) -> _Method:
    """``<name>_transfer``: per prompt, the amplitude of whichever country atoms are active moves onto
    the target's ``k`` units (``TransferAtoms``; no source label needed). The pool is every
    country's ``k`` activation units (``concept_pool``); the target's units are selected by
    activation or by effect, whichever gives the better validation success.

    ``cfg.transfer_error`` says what becomes of the SAE's error term at the edited position:
    ``"subspace"`` removes its part in the span of the countries' mean pool reconstructions
    (``concept_subspace``), the part of the source country the SAE did not encode (held-out
    R^2 is about 0.5 at L0 16, so the kept error term still says "Japan"); ``"keep"`` leaves it
    (SAELens's splice); ``"drop"`` replaces the activation by the edited reconstruction."""
    pool, ref = concept_pool(sae, data.x, data.y, k=cfg.k, codes=data.codes[name])
    error = (concept_subspace(sae, data.x, data.y, pool, codes=data.codes[name])
             if cfg.transfer_error == "subspace" else cfg.transfer_error)

    def make_for(how: str):
        atoms = {v: [u["atom"] for u in selected[name][v][how]] for v in tg.targets}

        vals = {v: cfg.transfer_strength * typ[v][atoms[v]] for v in tg.targets}

        def make(v: str, lam: float, P: _Prompts):
            return lambda pos, rows: [TransferAtoms(sae, pool, atoms[v], vals[v], ref, ceil, positions=pos, span=cfg.span,
                                                    hook_name=hook, error=error, fraction=lam)]
        return make

    choices = {how: make_for(how) for how in ("effect", "activation")}
    err = {"keep": "error term kept", "drop": "error term dropped (the edited reconstruction replaces the activation)",
           "subspace": "error term without its part in the countries' subspace"}[cfg.transfer_error]
    unit = (f"the fraction of the transfer applied (x <- x + lam (x_transferred - x)); the target's units at "
            f"{cfg.transfer_strength:g} x {unit}")
    return _Method(f"{name}_transfer", unit, cfg.fractions, choices["effect"],
                   {"sae": name, "k": cfg.k, "pool_size": len(pool), "ref_mass": ref, "error_term": cfg.transfer_error,
                    "subspace_rank": int(error.shape[1]) if isinstance(error, Tensor) else None,
                    "transfer_strength": cfg.transfer_strength,
                    "intervention": "ablate the active units of the country pool, set the target's units to "
                                    "transfer_strength x (pool amplitude here / typical pool amplitude) x the unit scale, "
                                    f"capped; {err}; a fraction lam of this edit applied (the swept strength)"},
                   choices)


def _swap_method(sae, data: _TrainData, typ: dict[str, Tensor], ceil: Tensor, selected: dict, tg: _Targets,
                 cfg: SteerConfig, hook: str, unit: str) -> _Method:
    """``atoms_swap``: per prompt, ablate the ``k`` activation atoms of its source value (the
    subject's own; on unrelated prompts a value cycled from those with enough subjects), then
    clamp the target's atoms on (``swap_atoms`` as two edits, so a prompt's own atom list may vary)."""
    atoms = {v: [u["atom"] for u in selected["atoms"][v][cfg.selection]] for v in tg.targets}
    present = set(data.y)
    src_atoms = {y: [a.atom for a in select_atoms(sae, data.x, data.y, y, k=cfg.k, codes=data.codes["atoms"])]
                 for y in sorted(present) if present != {y}}

    def swap(v: str, s: float, P: _Prompts):
        vals = atom_values(typ[v], atoms[v], s, ceil)
        pad = (atoms[v] * cfg.k)[:cfg.k]  # a source with no atoms: ablate the target's, then clamp them anyway
        table = torch.tensor([src_atoms.get(y, pad)[:cfg.k] + pad[:cfg.k - len(src_atoms.get(y, pad)[:cfg.k])]
                              for y in P.sources], dtype=torch.long)
        return lambda pos, rows: [EditAtoms(sae, table[rows], 0.0, positions=pos, span=cfg.span, hook_name=hook),
                                  EditAtoms(sae, atoms[v], vals, positions=pos, span=cfg.span, hook_name=hook)]

    return _Method("atoms_swap", unit, cfg.strengths, swap,
                   {"sae": "atoms", "selection": cfg.selection, "k": cfg.k,
                    "intervention": f"ablate the k activation atoms of the prompt's source {cfg.label} (the subject's own; "
                                    "on unrelated prompts one cycled over the values), then clamp the target's atoms on"})


_SCALES = {"typical": "the unit's typical on-support amplitude (median non-zero training code)",
           "target": "the unit's mean training code on the target's subjects"}


def _unit_scales(data: _TrainData, typical: Tensor, name: str, targets: list[str], scale: str) -> dict[str, Tensor]:
    """Per target, the amplitude a strength of 1 sets each unit to (``SteerConfig.scale``)."""
    if scale == "typical":
        return {v: typical for v in targets}
    codes = data.codes[name]
    return {v: codes[torch.tensor([y == v for y in data.y])].mean(0).clamp(min=0) for v in targets}


def _prompt_sets(model, targets: list[str], val_rows: list[dict], test_rows: list[dict], u_val: list[dict],
                 u_test: list[dict], cfg: SteerConfig, rng: random.Random, hook: str) -> tuple[dict, dict]:
    """Evaluation sets per split and target (subjects with another value) and the unrelated sets."""
    ev: dict[str, dict[str, _Prompts]] = {"val": {}, "test": {}}
    for split, pool in (("val", val_rows), ("test", test_rows)):
        for v in targets:
            ev[split][v] = _Prompts(model, _sample([r for r in pool if r[cfg.label] != v], cfg.n_eval, rng), cfg.batch_size, hook)
            ev[split][v].sources = [r[cfg.label] for r in ev[split][v].rows]
    unrel_p = {"val": _Prompts(model, u_val, cfg.batch_size, hook), "test": _Prompts(model, u_test, cfg.batch_size, hook)}
    for U in unrel_p.values():  # a source to ablate on each unrelated prompt: the targets in turn
        U.sources = [targets[i % len(targets)] for i in range(len(U))]
    return ev, unrel_p


@dataclass
class _Run:
    """What evaluating one method at one strength needs."""

    model: Any
    cfg: SteerConfig
    targets: list[str]
    first_tok: dict[str, int]
    ev: dict[str, dict[str, _Prompts]]
    unrel_p: dict[str, _Prompts]


def _kl_at(run: _Run, m: _Method, s: float, split: str) -> Tensor:
    """KL on the split's unrelated prompts, every target's intervention in turn (concatenated)."""
    U = run.unrel_p[split]
    return torch.cat([_kl(U.clean, U.run(run.model, m.make(v, s, U), run.cfg.batch_size)) for v in run.targets])


def _success_at(run: _Run, m: _Method, s: float, split: str) -> dict:
    """Success, rank and log-prob gain on the split's evaluation prompts, per target and pooled."""
    per_target = {}
    for v in run.targets:
        E = run.ev[split][v]
        if len(E):
            per_target[v] = _target_stats(E.run(run.model, m.make(v, s, E), run.cfg.batch_size), E.clean, run.first_tok[v]) | {"n": len(E)}
    n = sum(p["n"] for p in per_target.values())
    agg = {k: sum(p[k] * p["n"] for p in per_target.values()) / n for k in ("success_rate", "mean_rank", "logprob_gain")}
    return {**agg, "n_prompts": n, "per_target": per_target}


def _baseline(run: _Run) -> dict:
    """Success and rank with no intervention, per split."""
    ev, first_tok = run.ev, run.first_tok
    baseline = {}
    for split in ("val", "test"):
        st_ = [_target_stats(ev[split][v].clean, ev[split][v].clean, first_tok[v]) | {"n": len(ev[split][v])} for v in run.targets]
        n = sum(p["n"] for p in st_)
        baseline[split] = {k: sum(p[k] * p["n"] for p in st_) / n for k in ("success_rate", "mean_rank")} | {"kl_unrelated": 0.0}
    return baseline


def _val_sweep(run: _Run, m: _Method) -> list[dict]:
    """Validation KL at every strength of ``m.grid`` and validation success at each one within the
    KL budget; then strengths ``grid_growth`` times the last, at most ``grid_extend`` more, while
    the last is within budget and no more than one step past the best success so far. So the
    search stops where the budget binds or where success has peaked (a clamp capped in
    distribution saturates; a vector pushed far out of distribution breaks the model), never at
    the end of a fixed grid. Where the budget binds while success is still rising (the best
    in-budget strength ``lo`` is next to an over-budget ``hi``), ``n_bisect`` geometric
    bisections ``sqrt(lo hi)`` find the strongest strength within it, so no method is held to a
    coarse grid below the budget that the others may use."""
    cfg = run.cfg
    sweep: list[dict] = []

    def measure(s: float, **tag: bool) -> dict:
        p = {"alpha": s, "kl_unrelated": float(_kl_at(run, m, s, "val").mean())} | tag
        if p["kl_unrelated"] <= cfg.kl_budget:
            p.update({k: v for k, v in _success_at(run, m, s, "val").items() if k != "per_target"})
        sweep.append(p)
        return p

    for s in m.grid:
        measure(s)
    for _ in range(cfg.grid_extend):
        last = max(sweep, key=lambda p: p["alpha"])
        ok = [p for p in sweep if "success_rate" in p]
        if "success_rate" not in last:
            break
        best = max(ok, key=lambda p: (p["success_rate"], -p["alpha"]))
        if sum(p["alpha"] > best["alpha"] for p in ok) >= 2:
            break
        measure(last["alpha"] * cfg.grid_growth, extended=True)
    for _ in range(cfg.n_bisect):
        ok = [p for p in sweep if "success_rate" in p]
        over = [p["alpha"] for p in sweep if "success_rate" not in p]
        if not ok or not over:
            break
        best = max(ok, key=lambda p: (p["success_rate"], p["alpha"]))
        hi = min((a for a in over if a > best["alpha"]), default=None)
        if hi is None or any(best["alpha"] < p["alpha"] < hi for p in ok):
            break  # the budget does not bind next to the best strength
        measure(math.sqrt(best["alpha"] * hi), bisected=True)
    return sweep


def _sweep(run: _Run, methods: list[_Method], progress: bool) -> dict[str, dict]:
    """Per method: the validation sweep (``_val_sweep``); the strength with the best validation
    success within the KL budget (the weakest if none is within it); the test result at it (test
    prompts used once)."""
    cfg = run.cfg
    out: dict[str, dict] = {}
    bar = tqdm(total=len(methods), desc="steer sweep", disable=not progress)
    for m in methods:
        chosen = {}
        if m.choices:  # e.g. the selection: each alternative swept on validation, the best kept
            sweeps = {how: _val_sweep(run, replace(m, make=make, choices=None)) for how, make in m.choices.items()}
            best_of = {how: max([p["success_rate"] for p in sw if "success_rate" in p] or [-1.0]) for how, sw in sweeps.items()}
            how = max(sweeps, key=lambda h: best_of[h])
            m = replace(m, make=m.choices[how], choices=None)
            sweep = sweeps[how]
            chosen = {"selection": how, "val_success_by_choice": best_of,
                      "other_sweeps": {h: sw for h, sw in sweeps.items() if h != how}}
        else:
            sweep = _val_sweep(run, m)
        cand = [p for p in sweep if "success_rate" in p]
        if not cand:
            weakest = min(sweep, key=lambda p: p["alpha"])
            weakest.update({k: v for k, v in _success_at(run, m, weakest["alpha"], "val").items() if k != "per_target"})
            cand = [weakest]
        best = _choose_alpha(cand, cfg.kl_budget)
        kl = _kl_at(run, m, best["alpha"], "test")
        test = _success_at(run, m, best["alpha"], "test") | {"kl_unrelated": float(kl.mean()), "kl_unrelated_median": float(kl.median())}
        out[m.name] = {"alpha": best["alpha"], "strength_unit": m.unit, **m.info, **chosen, "test": test,
                       "within_budget": best["kl_unrelated"] <= cfg.kl_budget,
                       "val_at_alpha": {k: best[k] for k in ("success_rate", "mean_rank", "logprob_gain", "kl_unrelated")},
                       "sweep": sweep}
        bar.update(1)
    bar.close()
    return out


def _finish(results: dict, out_dir: str | Path | None) -> dict:
    """Add the summary; write ``results.json`` and ``steering.png`` to ``out_dir`` if given."""
    results["summary"] = _summary(results)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(results, out / "results.json", default=float)
        _plot(results, out / "steering.png")
    return results


# =========================================================================== ablation, summary, plot
def _ablation_check(model, sae, name: str, hook: str, held: list[dict], x_train: Tensor, y_train: list,
                    codes: Tensor, n_subj: dict, first_tok: dict, tok_count: dict, cfg: SteerConfig,
                    rng: random.Random) -> dict:
    """Drop in log p(correct first token) when ablating the ``k`` atoms selected for each prompt's
    true value vs ``k`` random atoms: uniform over the SAE, and among the atoms active at that
    prompt's subject token (the stronger control). Through the SAE with the error term kept."""
    label = cfg.label
    ok_vals = {v for v, n in n_subj.items() if n >= cfg.min_subjects and tok_count.get(first_tok.get(v, -1), 0) == 1}
    rows = _sample([r for r in held if r[label] in ok_vals], cfg.n_ablation, rng)
    if not rows:
        return {"error": f"no held-out prompts whose {label} has >= {cfg.min_subjects} training subjects"}
    P = _Prompts(model, rows, cfg.batch_size, hook)
    d_sae, k = int(sae.cfg.d_sae), int(cfg.k)
    sel_by_val = {v: [a.atom for a in select_atoms(sae, x_train, y_train, v, k=k, codes=codes)]
                  for v in sorted({r[label] for r in rows})}
    sel = torch.tensor([sel_by_val[r[label]] for r in rows], dtype=torch.long)  # [n, k]
    x_subj = extract(model, rows, hook, position="subject_last", batch_size=cfg.batch_size, progress=False).x(hook)
    active = encode_batched(sae, x_subj) != 0  # [n, d_sae]
    n_active_other = []
    draws: dict[str, list[Tensor]] = {"selected": [sel], "random": [], "random_active": []}
    for _ in range(cfg.n_random):
        rnd, rnd_act = [], []
        for i in range(len(rows)):
            chosen = set(sel[i].tolist())
            rnd.append(rng.sample([j for j in range(d_sae) if j not in chosen], k))
            pool = [j for j in torch.nonzero(active[i]).flatten().tolist() if j not in chosen]
            n_active_other.append(len(pool))
            pick = rng.sample(pool, min(k, len(pool)))
            # fewer than k active: pad with inactive atoms (ablating an inactive atom changes nothing)
            idle = [j for j in range(d_sae) if not active[i, j] and j not in chosen]
            rnd_act.append(pick + rng.sample(idle, k - len(pick)))
        draws["random"].append(torch.tensor(rnd, dtype=torch.long))
        draws["random_active"].append(torch.tensor(rnd_act, dtype=torch.long))
    tok = torch.tensor([first_tok[r[label]] for r in rows])
    ar = torch.arange(len(rows))
    clean_lp = P.clean[ar, tok]
    clean_ok = P.clean.argmax(-1) == tok
    drops: dict[str, list[float]] = {}
    flips: dict[str, list[float]] = {}
    for kind, tables in draws.items():
        d_all, f_all = [], []
        for table in tables:
            def make(pos: list[int], brows: list[int], table=table) -> list[Intervention]:
                return [EditAtoms(sae, table[brows], 0.0, positions=pos, span=cfg.span, hook_name=hook)]

            lp = P.run(model, make, cfg.batch_size)
            d_all += (clean_lp - lp[ar, tok]).tolist()
            f_all += (clean_ok & (lp.argmax(-1) != tok)).float().tolist()
        drops[kind], flips[kind] = d_all, f_all

    def mean(x: list[float]) -> float | None:
        return sum(x) / len(x) if x else None

    d = {kk: mean(v) for kk, v in drops.items()}
    return {"n_prompts": len(rows), "k": k, "n_random_draws": cfg.n_random, "span": cfg.span,
            "clean_accuracy": float(clean_ok.float().mean()),
            "mean_active_atoms_outside_selection": mean([float(x) for x in n_active_other]),
            "logprob_drop": d, "correct_to_wrong_rate": {kk: mean(v) for kk, v in flips.items()},
            "selected_beats_random": bool(d["selected"] > d["random"]),
            "selected_beats_random_active": bool(d["selected"] > d["random_active"])}


def _summary(res: dict) -> str:
    cfg = res["config"]
    lines = [f"steering {cfg['relation']} at {res['hook']} (span={cfg['span']}), targets "
             f"{[t['value'] for t in res['targets']]}; strength chosen on validation with KL budget {cfg['kl_budget']} nats"]
    b = res["baseline_no_intervention"][next(iter(res["baseline_no_intervention"]))]["test"]
    lines.append(f"  no intervention (seed {res['seeds'][0]}): success {b['success_rate']:.1%}, mean rank {b['mean_rank']:.1f}")
    for m, r in res["methods"].items():
        lines.append(f"  {m:<32} strength {'/'.join(f'{a:g}' for a in r['alpha_per_seed']):<9} success {r['success_rate']:.1%}  "
                     f"log-prob gain {r['logprob_gain']:+.2f}  KL unrelated {r['kl_unrelated']:.3f}  "
                     f"({r['n_targets']} targets, {r['n_prompts']} held-out prompts, seeds {r['seeds']})"
                     + ("" if r["within_budget"] else "  (no strength within budget)"))
    best = max(res["methods"], key=lambda m: (res["methods"][m]["success_rate"], -res["methods"][m]["kl_unrelated"]))
    sae_best = max((m for m in res["methods"] if m not in ("diff_of_means", "random_direction")),
                   key=lambda m: res["methods"][m]["success_rate"], default=None)
    lines.append(f"  best at the matched KL budget: {best}" + (f"; best SAE method: {sae_best}" if sae_best else ""))
    for name, a in res["ablation"].items():
        if "error" in a:
            lines.append(f"  ablation {name}: {a['error']}")
            continue
        d = a["logprob_drop"]
        fmt = lambda x: "n/a" if x is None else f"{x:+.3f}"  # noqa: E731
        lines.append(f"  ablation {name} (k={a['k']}, {a['n_prompts']} prompts): logprob drop selected {fmt(d['selected'])}, "
                     f"random {fmt(d['random'])}, random active {fmt(d['random_active'])}")
    return "\n".join(lines)


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    for m, r in res["methods"].items():
        pts = [p for sd in r["per_seed"].values() for p in sd["sweep"] if "success_rate" in p]
        line, = ax.plot([p["kl_unrelated"] for p in pts], [p["success_rate"] for p in pts], "o", ms=3, alpha=0.6)
        ax.plot([r["kl_unrelated"]], [r["success_rate"]], "*", ms=12, color=line.get_color(), label=f"{m} (test)")
    ax.axvline(res["config"]["kl_budget"], color="grey", ls="--", lw=1, label="KL budget")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(left=0)  # KL >= 0: no empty negative decade
    ax.set_xlabel("KL(clean || steered) on unrelated prompts (nats)")
    ax.set_ylabel("success rate (target is top-1)")
    ax.set_title(f"steering {res['config']['relation']} at {res['hook']}: validation (dots), test (stars)", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)  # outside: it never covers data
    fig.tight_layout()
    save_figure(fig, path)


# =========================================================================== CLI
# relation -> the label column whose values are its answers
RELATION_LABEL = {"city_country": "country", "country_continent": "continent", "country_language": "language",
                  "country_currency": "currency"}
SAE_ARCHS = {"atoms": "tsae_aip", "features_jumprelu": "jumprelu"}


def _training_config(arch: str, d_in: int, d_sae: int, hook: str):
    """SAELens's default training config for ``arch``, with the SAE's hook in its metadata."""
    from sae_lens.saes.sae import SAEMetadata

    return training_config(arch, d_in, d_sae, metadata=SAEMetadata(hook_name=hook))


def load_or_train_saes(x_train: Tensor, hook: str, sae_dir: Path | None, out_dir: Path | None, expansion: int = 4,
                       steps: int = 1500, seed: int = 0, device: Any = None, progress: bool = True) -> dict[str, Any]:
    """``{"atoms": tsae_aip, "features_jumprelu": jumprelu}``: loaded from ``sae_dir/<name>`` (SAELens
    folders) where present, else trained on ``x_train`` with ``train_on_activations`` and saved
    under ``out_dir/saes/<name>`` (written to a temporary folder, then renamed)."""
    from sae_atoms.saes import load_sae

    saes = {}
    for name, arch in SAE_ARCHS.items():
        folder = sae_dir / name if sae_dir is not None else None
        if folder is not None and (folder / "cfg.json").exists():
            sae = load_sae(folder, device=str(resolve_device(device)))  # a damaged folder is one clear error
            if sae.cfg.metadata.hook_name not in (None, hook):
                raise ValueError(f"{folder} is an SAE at {sae.cfg.metadata.hook_name!r}, not {hook!r}; pass --hook to match")
            if sae.cfg.metadata.hook_name is None:
                sae.cfg.metadata.hook_name = hook
        elif sae_dir is not None and folder is not None and folder.exists():
            raise FileNotFoundError(f"{folder} exists but holds no SAELens SAE (cfg.json); remove it or point --sae-dir elsewhere")
        else:
            if progress:
                print(f"training {name} ({arch}, {expansion}x{x_train.shape[1]}, {steps} steps) on {x_train.shape[0]} "
                      "activations ...", file=sys.stderr, flush=True)
            cfg = _training_config(arch, x_train.shape[1], expansion * x_train.shape[1], hook)
            sae = train_on_activations(x_train, cfg, steps=steps, seed=seed, progress=progress, device=device)
            if out_dir is not None:
                with atomic_dir(out_dir / "saes" / name) as tmp:
                    sae.save_model(str(tmp))
        saes[name] = sae.eval() if hasattr(sae, "eval") else sae
    extra = sae_dir / "features_topk" if sae_dir is not None else None
    if extra is not None and (extra / "cfg.json").exists():  # optional: compared when given, never trained here
        saes["features_topk"] = load_sae(extra, device=str(resolve_device(device))).eval()
    return saes


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local HF folder or TransformerLens name")
    p.add_argument("--relation", default="city_country", choices=sorted(RELATION_LABEL),
                   help="the fact relation to steer (its answers are the targets)")
    p.add_argument("--out", type=Path, required=True, help="output folder: results.json, steering.png, saes/")
    p.add_argument("--hook", default="blocks.12.hook_resid_post", help="where to intervene (and where the SAEs sit)")
    p.add_argument("--sae-dir", type=Path, default=None,
                   help="folder with SAELens SAEs in atoms/ (tsae_aip) and features_jumprelu/ (jumprelu), optionally "
                        "features_topk/; missing atoms / jumprelu ones are trained and saved under OUT/saes/")
    p.add_argument("--acts", type=Path, default=None, help="a saved ActivationSet (sae-atoms extract) at --hook, subject_last")
    p.add_argument("--n-cities", type=int, default=600, help="most populous cities in the fact prompts")
    p.add_argument("--expansion", type=int, default=4, help="SAE width as a multiple of d_model (when training)")
    p.add_argument("--steps", type=int, default=1500, help="training steps per SAE (when training)")
    p.add_argument("--targets", type=int, default=None, help=f"number of target values ({SteerConfig.n_targets})")
    p.add_argument("--min-subjects", type=int, default=SteerConfig.min_subjects)
    p.add_argument("--k", type=int, default=SteerConfig.k, help="atoms / features per target")
    p.add_argument("--alphas", type=float, nargs="+", default=None,
                   help=f"strengths (multiples of the target's difference-of-means norm; {list(SteerConfig.alphas)})")
    p.add_argument("--strengths", type=float, nargs="+", default=None,
                   help=f"SAE-unit strengths (multiples of each unit's typical on-support amplitude; {list(SteerConfig.strengths)})")
    p.add_argument("--fractions", type=float, nargs="+", default=None,
                   help=f"transfer methods: fractions of the transfer applied ({list(SteerConfig.fractions)})")
    p.add_argument("--transfer-error", choices=("subspace", "keep", "drop"), default=SteerConfig.transfer_error,
                   help="transfer methods: the SAE error term at the edited position: its part in the concept's subspace "
                        "removed, kept, or dropped")
    p.add_argument("--selection", choices=("effect", "activation"), default=SteerConfig.selection,
                   help="headline selection of SAE units (the other is reported as NAME_by_<selection>)")
    p.add_argument("--scale", choices=("target", "typical"), default=SteerConfig.scale,
                   help="SAE-unit strength 1 = the target subjects' mean code of the unit, or its typical on-support amplitude")
    p.add_argument("--seeds", type=int, default=None, help=f"number of seeds ({SteerConfig.n_seeds})")
    p.add_argument("--span", choices=("at", "from"), default=SteerConfig.span,
                   help="intervene at the subject's last token, or from it to the end")
    p.add_argument("--kl-budget", type=float, default=SteerConfig.kl_budget, help="matched side effect, nats")
    p.add_argument("--n-eval", type=int, default=None, help=f"prompts per target per split ({SteerConfig.n_eval})")
    p.add_argument("--n-unrelated", type=int, default=None, help=f"({SteerConfig.n_unrelated})")
    p.add_argument("--n-ablation", type=int, default=None, help=f"({SteerConfig.n_ablation})")
    p.add_argument("--batch-size", type=int, default=SteerConfig.batch_size)
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (flags given explicitly win over them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def steer_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``SteerConfig`` settings the command line gives: explicit flags win over ``--quick``."""
    given = {"n_targets": args.targets, "n_eval": args.n_eval, "n_unrelated": args.n_unrelated,
             "n_ablation": args.n_ablation, "alphas": None if args.alphas is None else tuple(args.alphas),
             "strengths": None if args.strengths is None else tuple(args.strengths), "n_seeds": args.seeds,
             "fractions": None if args.fractions is None else tuple(args.fractions)}
    return {**{k: v for k, v in given.items() if v is not None}, "min_subjects": args.min_subjects, "k": args.k,
            "span": args.span, "kl_budget": args.kl_budget, "selection": args.selection, "scale": args.scale, "batch_size": args.batch_size, "seed": args.seed,
            "transfer_error": args.transfer_error}


def run_cli(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    label = RELATION_LABEL[args.relation]
    overrides = steer_overrides(args)
    _resolve_config(None, args.relation, label, args.quick, overrides)  # bad values fail before any compute
    check_output_dir(args.out, lambda p: True)  # steer adds files to --out; it never deletes it
    with output_lock(args.out):
        return _steer_cli(args, label, overrides, t0)


def _steer_cli(args: argparse.Namespace, label: str, overrides: dict[str, Any], t0: float) -> int:
    from sae_atoms.data import fact_prompts
    from sae_atoms.models import load_model

    model = load_model(args.model, device=args.device)
    check_hook_name(model, args.hook)
    n_cities = min(args.n_cities, 300) if args.quick else args.n_cities
    facts = fact_prompts(n_cities=n_cities, seed=args.seed)
    if args.acts is not None:
        acts = ActivationSet.load(args.acts)
        if args.hook not in acts.hook_names:
            raise SystemExit(f"--acts {args.acts} holds {acts.hook_names}, not {args.hook}; extract at --hook")
        acts = ActivationSet({args.hook: acts.x(args.hook)}, acts.rows, acts.meta)
    else:
        acts = extract(model, facts, args.hook, position="subject_last", batch_size=64)
    args.out.mkdir(parents=True, exist_ok=True)
    saes = load_or_train_saes(acts.select(split="train").x(args.hook), args.hook, args.sae_dir, args.out,
                              args.expansion, min(args.steps, 300) if args.quick else args.steps, args.seed, args.device)
    res = run_steering(
        model, saes, facts, acts, relation=args.relation, label=label, out_dir=args.out, quick=args.quick, **overrides)
    res["seconds_total"] = time.perf_counter() - t0
    write_json(res, args.out / "results.json", default=float)
    print(res["summary"])
    print(f"wrote {args.out / 'results.json'} and {args.out / 'steering.png'} ({res['seconds_total']:.0f} s)")
    return 0
