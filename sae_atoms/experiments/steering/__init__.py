"""The steering experiment: do atoms steer a model better than features or the difference of means?

Atom Theory (arXiv 2509.20784) shows that atoms reconstruct activations and separate
concepts; whether they are *causal* is its first open question. ``run_steering`` (``sae-atoms
steer``) compares atoms (``tsae_aip``), features of a ``jumprelu`` SAE selected the same way
(``sae_atoms.steering.select_atoms``), and the difference of means (``mean(x | y = v) -
mean(x)``, the strong baseline of activation-steering work, e.g. Marks & Tegmark 2023, Rimsky
et al. 2024) at matched side effect (KL divergence of the next-token distribution on unrelated
prompts), with the strength chosen on a validation split; and an ablation check (ablating the
selected atoms vs random ones). The interventions themselves are ``sae_atoms.steering``.

The rooms: ``config`` (settings), ``prompts`` (prompt sets and their log-probabilities, the
fast path), ``targets`` (training data, targets, unit selection), ``methods`` (the methods and
their registry), ``search`` (strength per method at the KL budget), ``ablation``,
``equal_kl`` (every method at the difference of means' KL, CounterFact-style scores), ``seeds`` (one
seed, the seeds pooled), ``output`` (summary, plot, files), ``experiment`` (``run_steering``),
``relations`` (several relations, one table each), ``cli`` (``sae-atoms steer``).
"""

from sae_atoms.experiments.steering.cli import (
    TRAINED_UNITS,
    configure_parser,
    load_or_train_saes,
    run_cli,
    steer_overrides,
)
from sae_atoms.experiments.steering.config import QUICK, RELATION_LABEL, SteerConfig, steer_config
from sae_atoms.experiments.steering.experiment import run_steering
from sae_atoms.experiments.steering.methods import Method, build_methods, register
from sae_atoms.experiments.steering.prompts import Prompts
from sae_atoms.experiments.steering.relations import DEFAULT_RELATIONS, headline_with_relations, run_relations
from sae_atoms.experiments.steering.relations import tables as relation_tables

__all__ = ["QUICK", "RELATION_LABEL", "SteerConfig", "steer_config", "run_steering", "load_or_train_saes",
           "configure_parser", "steer_overrides", "run_cli", "TRAINED_UNITS", "Method", "build_methods", "register",
           "Prompts", "DEFAULT_RELATIONS", "run_relations", "relation_tables",
           "headline_with_relations"]
