"""sae_atoms: the atoms of language models (Atom Theory, arXiv 2509.20784) for SAELens + TransformerLens.

Importing the package registers the ``tsae`` and ``tsae_aip`` architectures with SAELens.

Three layers (imports run downwards only; ``docs/ARCHITECTURE.md``):

    saes/         the SAELens architectures ``tsae`` and ``tsae_aip`` and their registration
    (library)     aip, evals, steering, training, activations, models, data, synthetic, io
    experiments/  the paper's studies: geometry, capacity, steering, reproduce, report
    cli, bench    the ``sae-atoms`` command and the speed benchmarks, on top of all three

The names below are what a notebook needs; everything else is in its module.
"""

__version__ = "0.1.0"

import os as _os
import sys as _sys

# how torch's OpenMP threads wait for each other (sae_atoms.threads): a short spin, then sleep. libgomp
# reads it once, when torch loads it, so it is set only before torch is imported; a value the user set wins.
if "torch" not in _sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & _os.environ.keys():
    _os.environ["GOMP_SPINCOUNT"] = "3000"

from sae_atoms.aip import AIPMetric  # noqa: E402
from sae_atoms.models import load_model  # noqa: E402
from sae_atoms.saes import (  # noqa: E402  (importing saes registers tsae / tsae_aip with SAELens)
    TSAEAIPSAE,
    TSAEAIPSAEConfig,
    TSAEAIPTrainingSAE,
    TSAEAIPTrainingSAEConfig,
    TSAESAE,
    TSAESAEConfig,
    TSAETrainingSAE,
    TSAETrainingSAEConfig,
    load_sae,
    register,
    to_jumprelu,
)
from sae_atoms.training import train_on_activations  # noqa: E402

__all__ = [
    "AIPMetric",
    "TSAEAIPSAE",
    "TSAEAIPSAEConfig",
    "TSAEAIPTrainingSAE",
    "TSAEAIPTrainingSAEConfig",
    "TSAESAE",
    "TSAESAEConfig",
    "TSAETrainingSAE",
    "TSAETrainingSAEConfig",
    "load_model",
    "load_sae",
    "register",
    "to_jumprelu",
    "train_on_activations",
    "__version__",
]
