"""The SAE architectures of sae_atoms, registered with SAELens (one file per architecture).

* ``tsae``: the threshold-activated SAE of Atom Theory in raw activation space
  (``sae_atoms.saes.tsae``);
* ``tsae_aip``: the same trained in the AIP geometry, reconstructing raw activations
  (``sae_atoms.saes.tsae_aip``), and ``to_jumprelu`` to fold it into a vanilla SAELens SAE.

Importing this package (``import sae_atoms`` does) calls :func:`register`, the one place that
adds both architectures (inference and training classes) to SAELens's registries; it is
idempotent. This package depends on the library only through ``sae_atoms.aip``.
"""

from __future__ import annotations

from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)

from sae_atoms.saes.tsae import TSAESAE, TSAESAEConfig, TSAETrainingSAE, TSAETrainingSAEConfig
from sae_atoms.saes.tsae_aip import (
    TSAEAIPSAE,
    TSAEAIPSAEConfig,
    TSAEAIPTrainingSAE,
    TSAEAIPTrainingSAEConfig,
    to_inference,
    to_jumprelu,
)

__all__ = [
    "TSAESAEConfig",
    "TSAESAE",
    "TSAETrainingSAEConfig",
    "TSAETrainingSAE",
    "TSAEAIPSAEConfig",
    "TSAEAIPSAE",
    "TSAEAIPTrainingSAEConfig",
    "TSAEAIPTrainingSAE",
    "to_inference",
    "to_jumprelu",
    "register",
    "load_sae",
    "ARCHITECTURES",
]

# architecture name -> ((inference SAE, its config), (training SAE, its config))
ARCHITECTURES: dict[str, tuple[tuple[type, type], tuple[type, type]]] = {
    "tsae": ((TSAESAE, TSAESAEConfig), (TSAETrainingSAE, TSAETrainingSAEConfig)),
    "tsae_aip": ((TSAEAIPSAE, TSAEAIPSAEConfig), (TSAEAIPTrainingSAE, TSAEAIPTrainingSAEConfig)),
}


def _register_one(name: str, registry: dict, register_fn, pair: tuple[type, type]) -> None:
    existing = registry.get(name)
    if existing is None:
        register_fn(name, *pair)
        return
    if existing[0] is pair[0]:
        return
    same = all(f"{a.__module__}.{a.__qualname__}" == f"{b.__module__}.{b.__qualname__}" for a, b in zip(existing, pair))
    if not same:
        raise ValueError(
            f"the SAELens architecture {name!r} is already registered by {existing[0].__module__}."
            f"{existing[0].__qualname__}; sae_atoms cannot register its own under the same name. "
            "Remove the other registration or import sae_atoms first."
        )
    registry[name] = pair  # the module was reloaded: refresh to the new class objects


def register() -> None:
    """Register ``tsae`` and ``tsae_aip`` (inference + training) with SAELens; idempotent."""
    for name, (inf, train) in ARCHITECTURES.items():
        _register_one(name, SAE_CLASS_REGISTRY, register_sae_class, inf)
        _register_one(name, SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class, train)


def load_sae(path, device: str = "cpu", dtype: str | None = None, training: bool = False):
    """Load a saved SAE folder (any SAELens architecture, ``tsae`` / ``tsae_aip`` registered first).

    ``training=True`` gives the training SAE (to resume); otherwise the inference SAE (a
    ``tsae_aip`` training folder is folded into raw space on load).
    """
    from pathlib import Path

    from sae_lens.saes.sae import SAE, TrainingSAE

    register()
    if not (Path(path) / "cfg.json").exists():
        raise FileNotFoundError(f"{path} is not an SAE folder (no cfg.json); pass a folder written by save_model.")
    cls = TrainingSAE if training else SAE
    return cls.load_from_disk(str(path), device=device, dtype=dtype)


register()
