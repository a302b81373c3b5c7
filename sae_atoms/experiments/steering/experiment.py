"""``run_steering``: do atoms steer a model better than features or the difference of means?"""

from __future__ import annotations

import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sae_atoms.experiments.steering.ablation import ablation_check
from sae_atoms.experiments.steering.config import SteerConfig, steer_config
from sae_atoms.experiments.steering.output import summary, write_results
from sae_atoms.experiments.steering.seeds import aggregate, run_seeds
from sae_atoms.experiments.steering.targets import Setup, check_inputs, choose_targets, training_data
from sae_atoms.steering import atom_amplitudes


def run_steering(model, saes: dict[str, Any], dataset, acts, cfg: SteerConfig | None = None, *, unrelated=None,
                 out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Do atoms steer a model better than features or the difference of means?

    For ``n_targets`` values (e.g. countries) with at least ``min_subjects`` training subjects,
    the model's best-known facts and a unique first answer token, each method edits ``acts``'
    hook on held-out prompts about subjects with another value, at the subject's last token
    (``span="at"``) or from it on (``"from"``):

    * ``diff_of_means``: ``x += strength * (mean(x | y = target) - mean(x))`` (training subjects);
    * ``random_direction``: a Gaussian direction of the same norm (control);
    * per SAE in ``saes`` (``atoms`` = ``tsae_aip``, ``features_jumprelu``, ``features_topk``):
      the ``k`` units chosen by ``selection`` (``"effect"``: ``output_gradient`` +
      ``select_atoms_by_effect`` on training prompts, Arad et al. arXiv 2505.20063; ``"activation"``:
      ``select_atoms``) clamped through the SAE (error term kept) to ``min(s * a_j, ceiling_j)``,
      ``a_j`` the unit's mean training code on the target's subjects (``scale="target"``) or its
      typical on-support amplitude (``"typical"``), ``ceiling_j`` the ``ceiling_q`` quantile of its
      non-zero training codes (in distribution); for atoms the other selection as ``atoms_by_<selection>``;
    * ``atoms_swap`` (knowledge editing): ablate the ``k`` activation atoms of each prompt's
      source value (the subject's own; on unrelated prompts the targets in turn), then the clamp;
    * ``<sae>_transfer``: the active country units' amplitude moved onto the target's units.

    Per seed, each method's strength is chosen on validation prompts under the same
    ``kl_budget`` (side effect: next-token KL on unrelated prompts, as AxBench, arXiv 2501.17148,
    compares SAE steering with the difference of means) and the test prompts are used once, at
    that strength (``search``); then the ablation check (``ablation``).

    Args:
        model: a ``HookedTransformer`` with a tokenizer.
        saes: name -> SAELens SAE at the hook of ``acts`` (``cfg.metadata.hook_name``).
        dataset: fact prompts (``sae_atoms.data.fact_prompts``), both splits.
        acts: ``ActivationSet`` at the subject's last token over (at least) ``cfg.relation``'s training rows.
        cfg: the settings (default ``SteerConfig()``; ``steer_config(quick=True, ...)`` for smoke runs).
        unrelated: prompt rows for the side effect (default: the dataset's other relations and
            ``reasoning_prompts``, held-out split).
        out_dir: if given, ``results.json`` and ``steering.png`` are written there (atomically).

    Returns: the results dict (also in ``results.json``).
    """
    cfg = steer_config(cfg)
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("the experiment needs a model with a tokenizer (prompts are text)")
    t_start = time.perf_counter()
    hook = check_inputs(model, saes, acts, cfg.label)
    data = training_data(acts, saes, cfg.relation, cfg.label, hook)
    all_rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    rng = random.Random(cfg.seed)
    tg = choose_targets(model, all_rows, data, cfg, rng)
    amps = {name: atom_amplitudes(data.codes[name], cfg.ceiling_q) for name in saes}
    setup = Setup(model, saes, hook, data, tg, amps, all_rows)
    per_seed = run_seeds(setup, unrelated, cfg, progress)
    results: dict[str, Any] = {"methods": aggregate(per_seed, tg.targets)}
    results["per_target"] = {m: r["per_target"] for m, r in results["methods"].items()}
    results["ablation"] = {name: ablation_check(setup, name, cfg, rng) for name in saes}
    results.update(_details(setup, cfg, per_seed))
    results["seconds"] = time.perf_counter() - t_start
    results["summary"] = summary(results)
    if out_dir is not None:
        write_results(results, out_dir)
    return results


def _details(setup: Setup, cfg: SteerConfig, per_seed: dict[int, dict]) -> dict[str, Any]:
    """The settings, targets, baselines, selected units and amplitudes behind the results."""
    seeds, tg = list(per_seed), setup.tg
    return {
        "config": asdict(cfg), "hook": setup.hook, "model": getattr(setup.model.cfg, "model_name", None), "seeds": seeds,
        "targets": [{"value": v, "first_token": setup.model.tokenizer.decode([tg.first_tok[v]]),
                     "n_train_subjects": tg.n_subj[v], "clean_train_accuracy": tg.acc[v]} for v in tg.targets],
        "baseline_no_intervention": {sd: r["baseline_no_intervention"] for sd, r in per_seed.items()},
        "generation_unsteered": {sd: r["generation_unsteered"] for sd, r in per_seed.items() if r["generation_unsteered"]},
        "seconds_per_seed": {sd: r["seconds"] for sd, r in per_seed.items()},
        "selected_units": {sd: r["selected_units"] for sd, r in per_seed.items()},
        "amplitudes": {name: {"typical_median": float(t.median()), "ceiling_median": float(c.median())}
                       for name, (t, c) in setup.amps.items()},
        "n_val_unrelated": per_seed[seeds[0]]["n_unrelated"]["val"], "n_test_unrelated": per_seed[seeds[0]]["n_unrelated"]["test"],
    }
