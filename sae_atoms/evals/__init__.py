"""Evaluators for any set of units: neurons, SAE features, atoms (Atom Theory, arXiv 2509.20784).

Every number here is defined for a *unit set*: unit directions ``D`` (rows, ``[N, d]``), a
code ``delta = encode(m)`` (``[n, N]``) and a reconstruction ``m^ = decode(delta)``.

* neurons: the identity basis of the hook space (``D = I``, code = the activation itself);
  at ``blocks.L.mlp.hook_post`` these are the MLP neurons.
* any SAELens SAE (standard, jumprelu, topk, ... and ``tsae`` / ``tsae_aip`` once
  registered): ``D = sae.W_dec``, ``encode = sae.encode``, ``decode = sae.decode``.

Geometry. "AIP" numbers use the atomic inner product ``<u, v>_S = u^T S v`` with
``S = W^T W`` (``sae_atoms.aip.AIPMetric``); they equal the Euclidean numbers of whitened
vectors ``u W^T`` (Atom Theory, section "atomic inner product"). "raw" numbers are Euclidean.

The rooms (definitions and sources in each):

* ``units``: :class:`Units`, :func:`as_units`, :func:`find_metric` (the ``AIPMetric`` an SAE
  carries), :func:`encode_all`, the whitening;
* ``reconstruction``: faithfulness ``R^2``, MSE, cosine, sparsity ``K_i = ||delta_i||_0``,
  firing, the noise floor / amplitude gap of a threshold SAE;
* ``geometry``: coherence ``mu``, the uniqueness bound ``mu < 1 / (2K - 1)``, the stability
  ``q*`` (readings (a) and (b)), and :func:`dictionary_geometry`, what the decoder alone fixes;
* ``stability``: seed and width consistency, two dictionaries matched one to one on ``|cos|``;
* ``monosemantic``: label purity and mutual information of each live unit's top samples;
* ``evaluate``: :func:`evaluate_units`, :func:`model_evals`, :func:`jsonable`;
* ``table``: :func:`format_table`.

The entry point is :func:`evaluate_units`; a held-out evaluation is the same call on the
held-out activations, with the :func:`dictionary_geometry` of the first call passed on.
``sae-atoms evaluate SAE_DIR --activations DIR`` (``sae_atoms.cli``) is the CLI.
"""

from sae_atoms.evals.evaluate import EvalOptions, evaluate_units, jsonable, model_evals
from sae_atoms.evals.geometry import (COHERENCE_MEMORY, HIST_BINS, HIST_FLUSH, HIST_PAIRS_CPU, Q_GRID, Coherence,
                                       Geometry, coherence, coherence_block_size, coherence_memory_bytes,
                                       dictionary_geometry, max_unique_k, per_sample_coherence, q_star_a, q_star_b,
                                       uniqueness_bound)
from sae_atoms.evals.monosemantic import monosemanticity, top_activating
from sae_atoms.evals.reconstruction import (QUANTILES, cosine, firing_stats, l0, mse, noise_floor_gap, quantile_stats,
                                            r2)
from sae_atoms.evals.stability import MATCH_THRESHOLD, consistency, dictionary_consistency, matched_cosines
from sae_atoms.evals.table import TABLE_KEYS, format_table
from sae_atoms.evals.units import (MAX_DENSE_CODES, Units, as_units, basis, encode_all, find_metric,
                                   metric_from_whitening, neurons, unit_directions, whiten_vectors, whitening_matrix)

__all__ = ["COHERENCE_MEMORY", "HIST_BINS", "HIST_FLUSH", "HIST_PAIRS_CPU", "MATCH_THRESHOLD", "MAX_DENSE_CODES", "QUANTILES",
           "Q_GRID", "TABLE_KEYS", "Coherence", "EvalOptions", "Geometry", "Units", "as_units", "basis", "coherence",
           "coherence_block_size", "coherence_memory_bytes", "consistency", "cosine", "dictionary_consistency",
           "dictionary_geometry", "encode_all", "matched_cosines",
           "evaluate_units", "find_metric", "firing_stats", "format_table", "jsonable", "l0", "max_unique_k",
           "metric_from_whitening", "model_evals", "monosemanticity", "mse", "neurons", "noise_floor_gap",
           "per_sample_coherence", "q_star_a", "q_star_b", "quantile_stats", "r2", "top_activating",
           "uniqueness_bound", "unit_directions", "whiten_vectors", "whitening_matrix"]
