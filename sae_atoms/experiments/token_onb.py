"""Orthonormal atoms (``atoms_onb``) in the token benchmark: built from the training stream, not trained.

``saes.orthonormal.ica_atoms`` learns one orthonormal basis of the benchmark's reference AIP by ICA
on the activations the reference AIP is fitted on (the head of the training stream, ``ref_tokens``;
massive tokens left out, ``sae_atoms.massive.typical``, as their norm would own the update). Why in
the reference AIP: it is the geometry q* is read in, so every token's active atoms are orthonormal
there and meet the uniqueness bound whatever K; the unit asks what that costs in CE-loss score
beside trained units. The metric's estimate matters as much as the rows: whitening with a second
moment fitted on too few tokens per dimension inflates its smallest directions, and the K-term code
in the whitened space spends its atoms on them. One basis serves every target (K only sets the TopK
encoder); ``onb_refine`` Procrustes steps (``refine_atoms``) then fit it to each target's K-term code.
Each token keeps the K atoms of largest raw contribution (``raw_selecting``, SAELens's
``rescale_acts_by_decoder_norm``), not the K largest whitened coefficients: CE loss follows the raw
error, and the atoms stay orthonormal in the AIP whichever K of them a token keeps.
The atoms and their negatives are a SAELens ``TopKSAE`` of ``2 d`` latents (half the other units'
width at the default 4x). Stability twins, as the subject frontier builds them: ICA from the next
seed, and a mixture of two bases (twice the width, ``n_bases=2``, coded at each target's K) from the
seed after, each refined alike. ``onb_contrast`` picks FastICA's contrast for all of them.
"""

from __future__ import annotations

import warnings
from typing import Any

from sae_lens.saes.topk_sae import TopKSAE
from torch import Tensor

from sae_atoms.aip import AIPMetric
from sae_atoms.massive import typical
from sae_atoms.saes.orthonormal import CONTRASTS, ica_atoms, raw_selecting, refine_atoms
from sae_atoms.units import ONB


def build_onb(x_ref: Tensor, c: Any, ref: AIPMetric, names: dict[float, str], device: str = "cpu") -> dict[str, TopKSAE]:
    """``atoms_onb`` at each target of ``names`` (target -> SAE name), and with ``c.stability`` its
    ``_init2`` and ``_wide`` twins, learned on ``x_ref`` (the activations ``ref`` is fitted on) on the
    CPU, returned on ``device``. Warns when ``x_ref`` holds more tokens than the trained units see."""
    if c.ref_tokens > c.tokens and set(c.units) - {ONB}:
        warnings.warn(f"{ONB} learns on ref_tokens={c.ref_tokens} tokens, more than the tokens={c.tokens} the trained units "
                      "train on: its CE-loss score is then compared on more data than theirs; raise --tokens with "
                      "--ref-tokens for a comparison on equal data", stacklevel=2)
    x = x_ref.cpu()
    x = x[typical(ref.whiten(x))]
    ica = lambda k, **kw: ica_atoms(x, k, ref, hook=c.hook, contrast=c.onb_contrast, **kw)  # noqa: E731
    bases = {"": ica(1, seed=c.seed)} | ({"_init2": ica(1, seed=c.seed + 1)} if c.stability else {})
    out = {names[t] + s: raw_selecting(sae, int(round(t))) for t in names for s, sae in bases.items()}
    if c.stability:
        out |= {names[t] + "_wide": raw_selecting(ica(int(round(t)), n_bases=2, seed=c.seed + 2), int(round(t))) for t in names}
    refine = (lambda sae: refine_atoms(sae, x, ref, iters=c.onb_refine)) if c.onb_refine else (lambda sae: sae)
    return {n: refine(sae).to(device) for n, sae in out.items()}


def check_onb(c: Any) -> None:
    """A clear error for ``atoms_onb``'s settings in a token-frontier config ``c``."""
    if c.onb_refine < 0:
        raise ValueError(f"onb_refine={c.onb_refine} must be >= 0 (Procrustes steps; 0: the ICA basis as it is).")
    if c.onb_contrast not in CONTRASTS:
        raise ValueError(f"onb_contrast={c.onb_contrast!r}: choose from {sorted(CONTRASTS)} (FastICA's contrast).")


def is_built(unit: str) -> bool:
    """Whether the token benchmark builds ``unit`` (``build_onb``) rather than training it in the runner."""
    return unit == ONB
