"""Causal steering with atoms: add, clamp and ablate units of an SAE inside TransformerLens runs.

Atom Theory (arXiv 2509.20784) shows that atoms reconstruct activations and separate
concepts; whether they are *causal* is its first open question. This module provides the
interventions and the selection of atoms by meaning.

Interventions (on a ``HookedTransformer`` or ``HookedSAETransformer``, at one hook, for
chosen token positions; each is a small dataclass and an ``Intervention``: a ``hook_name`` and a
``hook_fn``):

* ``AddDirection(hook, v, alpha)``: ``x <- x + alpha * v`` (``add_atoms`` builds ``v`` from
  decoder rows, ``v = sum_j c_j W_dec[j]``, the atoms' directions in raw space);
* ``EditAtoms(sae, atoms, values)``: clamp atom activations through the SAE, keeping its
  error term, so the edit changes only those atoms' contribution::

      x <- x + decode(delta') - decode(delta),   delta = encode(x),  delta'_j = value_j (j in atoms)

  ``ablate_atoms`` is the same with ``value = 0``. This is SAELens's error-term splice
  (``HookedSAETransformer.add_sae(sae, use_error_term=True)`` with an edit of
  ``hook_sae_acts_post``) written as a single hook that any ``HookedTransformer`` accepts;
* ``TransferAtoms(sae, pool, target, values, ref_mass)``: ablate whichever atoms of a concept
  pool (``concept_pool``: e.g. every country's atoms) are active and put their amplitude on the
  target's atoms; no source label needed. ``fraction`` applies part of the edit.

* ``GatedEdit(edit, sae, gate, tau)``: any intervention's change spent where the SAE's ``gate``
  units are silent, ``x <- x + clamp(1 - sum_{j in gate} delta_j ||W_dec[j]|| / tau, 0, 1) (edit(x) - x)``
  (``gate_atoms``: the units of activations the edit should leave alone, e.g. other relations'
  subjects): the code says where an edit is spent. ``GatedDirection(hook, v, sae, gate, tau, alpha)``
  is ``AddDirection`` gated so.

Every code edit takes ``error=`` (``splice_codes``): ``"keep"`` the error term ``x - decode(delta)``
(the default, as above), ``"drop"`` it, or a basis ``U`` whose span is removed from it
(``concept_subspace``: where the concept's values differ in the SAE's reconstruction). What an
SAE does not reconstruct stays in its error term, and with it part of the source concept, which
a code edit alone cannot move.

Each intervention gives ``fwd_hooks(model)`` (for ``model.run_with_hooks``) and ``on(model)``
(a context manager); ``steering(model, *interventions)`` composes several. All hooks go
through TransformerLens's ``model.hooks`` context, so they are removed on exit, also after an
exception.

Positions: ``None``/``"all"`` (every position), an ``int`` (same position in every row,
negative counts from the end), or one index per row (a sequence or 1-D tensor, e.g. the
subject's last token). ``span="from"`` extends each position to the end of the sequence.

Selection by meaning (``select_atoms``): from labelled activations, the atoms most associated
with a label value, scored by their mean contribution to it in raw space::

    score_j = (mean_{i: y_i = v} delta_ij - mean_{i: y_i != v} delta_ij) * ||W_dec[j]||_2

Selection by effect (``output_gradient`` + ``select_atoms_by_effect``): score each atom by
the first-order change it makes to the target's log-probability when added at its typical
on-support amplitude ``a_j`` (attribution through the rest of the model to the unembedding;
attribution patching, Nanda 2023 / Syed, Rager & Conmy arXiv 2310.10348; the output-centric
selection of Arad, Mueller & Belinkov arXiv 2505.20063)::

    g = mean_i sum_{p in P_i} d [log p_i(target) - log p_i(answer_i)] / d x_{i,p}
    effect_j = a_j * <W_dec[j], g>

Strengths in the atoms' own units (``atom_amplitudes``, ``atom_values``): atom ``j`` is set to
``s * a_j`` (``a_j`` the median of its non-zero training codes), capped at its in-distribution
ceiling (a high quantile of those codes); ``swap_atoms`` ablates a source concept's atoms and
clamps the target's on (knowledge editing: "Tokyo is in the country of" -> France).

Baselines: ``diff_of_means`` (``mean(x | y = v) - mean(x)``, the strong baseline of
activation-steering work, e.g. Marks & Tegmark 2023, Rimsky et al. 2024) and
``concept_direction`` (the same restricted to selected atoms). ``next_token_logprobs``
measures a model's next token under interventions.

The experiment that compares atoms, features and the difference of means at matched side
effect is ``sae_atoms.experiments.steering`` (``sae-atoms steer``).

Modules: ``interventions`` (the edits and how they are applied), ``selection`` (which atoms,
at what strength), ``outputs`` (next-token log-probabilities and output gradients).
"""

from sae_atoms.steering.interventions import (
    AddDirection,
    EditAtoms,
    ErrorTerm,
    GatedDirection,
    GatedEdit,
    HookFn,
    Intervention,
    Positions,
    TransferAtoms,
    ablate_atoms,
    add_atoms,
    clamp_atoms,
    fwd_hooks,
    position_mask,
    splice_codes,
    steering,
    swap_atoms,
)
from sae_atoms.steering.outputs import next_token_logprobs, output_gradient, prompt_token_ids
from sae_atoms.steering.selection import (
    Association,
    EffectScore,
    atom_amplitudes,
    atom_values,
    concept_direction,
    concept_pool,
    concept_subspace,
    diff_of_means,
    encode_batched,
    gate_atoms,
    select_atoms,
    select_atoms_by_effect,
)

__all__ = [
    "AddDirection", "Association", "EditAtoms", "EffectScore", "ErrorTerm", "GatedDirection", "GatedEdit", "HookFn", "Intervention", "Positions",
    "TransferAtoms", "ablate_atoms", "add_atoms", "atom_amplitudes", "atom_values", "clamp_atoms",
    "concept_direction", "concept_pool", "concept_subspace", "diff_of_means", "encode_batched", "fwd_hooks",
    "gate_atoms", "next_token_logprobs", "output_gradient", "position_mask", "prompt_token_ids", "select_atoms",
    "select_atoms_by_effect", "splice_codes", "steering", "swap_atoms",
]
