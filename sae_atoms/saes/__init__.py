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
    ``tsae_aip`` training folder is folded into raw space on load). A folder that cannot be
    loaded (garbled cfg.json, unknown architecture, truncated weights, tensors that do not fit
    the config) is a ``ValueError`` naming the file and what to do.
    """
    from pathlib import Path

    from sae_lens.saes.sae import SAE, TrainingSAE

    register()
    path = Path(path)
    if not (path / "cfg.json").exists():
        raise FileNotFoundError(f"{path} is not an SAE folder (no cfg.json); pass a folder written by save_model.")
    cls = TrainingSAE if training else SAE
    read: dict = {}
    try:
        return cls.load_from_disk(str(path), device=device, dtype=dtype,
                                  converter=lambda p, dev, cfg_overrides=None: _read_folder(p, dev, cfg_overrides, training, read))
    except RuntimeError as e:
        if "Error(s) in loading state_dict" not in str(e) or "state" not in read:
            raise
        why = _tensor_mismatch(cls, read["cfg"], read["state"]) or " ".join(str(e).split())
        raise ValueError(f"{path}/sae_weights.safetensors does not fit its cfg.json: {why} Or {_FIX}") from e


_FIX = "save the SAE again (sae.save_model(path)) or restore the folder from a copy."


def _read_folder(path, device: str, cfg_overrides: dict | None, training: bool, read: dict):
    """SAELens's disk loader, with a clear error for a garbled cfg.json, an unknown architecture or damaged weights."""
    from pathlib import Path

    from sae_lens.loading.pretrained_sae_loaders import sae_lens_disk_loader

    from sae_atoms.io import read_json, readable

    cfg = read_json(Path(path) / "cfg.json", _FIX)
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    registry = SAE_TRAINING_CLASS_REGISTRY if training else SAE_CLASS_REGISTRY
    if arch is not None and arch not in registry:
        raise ValueError(
            f"{path}/cfg.json names the architecture {arch!r}, which is not registered with SAELens "
            f"(known: {', '.join(sorted(registry))}). Import the plugin that defines it before loading "
            "(`import sae_atoms` registers tsae and tsae_aip), or fix the architecture in cfg.json."
        )
    with readable(Path(path) / "sae_weights.safetensors", _FIX):
        cfg_dict, state = sae_lens_disk_loader(path, device, cfg_overrides)
    read.update(cfg=cfg_dict, state=state)
    return cfg_dict, state


def _tensor_mismatch(cls, cfg_dict: dict, state: dict) -> str | None:
    """What does not fit the config, in ``check_state_dict_shapes``'s words (as tsae / tsae_aip say on load)."""
    from sae_lens.saes.sae import handle_config_defaulting

    from sae_atoms.saes.checks import check_state_dict_shapes

    cfg_dict = handle_config_defaulting(dict(cfg_dict))
    sae_cfg = cls.get_sae_config_class_for_architecture(cfg_dict["architecture"]).from_dict(cfg_dict)
    sae_cfg.device = "meta"
    try:
        check_state_dict_shapes(cls.get_sae_class_for_architecture(sae_cfg.architecture())(sae_cfg), state,
                                sae_cfg.architecture())
    except ValueError as e:
        return str(e)
    return None

register()
