"""The experiment on several relations: the same methods, the same selection on training subjects
only, one table per relation (``steering_relations`` in the main job's results).

Relations whose answers many subjects share can be steered toward: city -> country, country ->
language, country -> continent, country -> currency (``config.RELATION_LABEL``). Country ->
capital cannot: every capital has one country, so no target has the training subjects that
selection and the difference of means need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from sae_atoms.experiments.steering.config import RELATION_LABEL, SteerConfig, steer_config
from sae_atoms.experiments.steering.experiment import run_steering
from sae_atoms.experiments.steering.seeds import relation_table

DEFAULT_RELATIONS = ("city_country", "country_language", "country_continent")


def check_relations(relations: Sequence[str]) -> tuple[str, ...]:
    """``relations`` as a tuple, each one steerable (``RELATION_LABEL``), else a ``ValueError`` naming them."""
    bad = [r for r in relations if r not in RELATION_LABEL]
    if bad or not relations:
        raise ValueError(f"cannot steer relation(s) {bad or list(relations)}; choose from {sorted(RELATION_LABEL)} "
                         "(country_capital has one country per answer, so no target has training subjects)")
    return tuple(relations)


def run_relations(model, saes: dict[str, Any], dataset, acts, relations: Sequence[str], cfg: SteerConfig | None = None, *,
                  out_dir: str | Path | None = None, progress: bool = True) -> dict[str, dict]:
    """``run_steering`` on each relation (its label from ``RELATION_LABEL``; ``cfg``'s other settings
    kept), its results in ``out_dir/<relation>``. Returns relation -> results."""
    out = {}
    for rel in check_relations(relations):
        c = steer_config(cfg, relation=rel, label=RELATION_LABEL[rel])
        out[rel] = run_steering(model, saes, dataset, acts, c, out_dir=None if out_dir is None else Path(out_dir) / rel,
                                progress=progress)
    return out


def tables(results: dict[str, dict]) -> dict[str, dict]:
    """relation -> method -> the ``steering_relations`` entry (``seeds.relation_table``)."""
    return {rel: relation_table(res) for rel, res in results.items()}


def headline_with_relations(model, saes: dict[str, Any], dataset, acts, relations: Sequence[str], cfg: SteerConfig | None = None,
                            *, out_dir: str | Path | None = None) -> dict:
    """``run_relations``; the first relation's results with every relation's table under ``"relations"``."""
    done = run_relations(model, saes, dataset, acts, relations, cfg, out_dir=out_dir)
    return done[check_relations(relations)[0]] | {"relations": tables(done)}
