"""Settings of the steering experiment: ``SteerConfig``, the quick sizes, and their checks."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class SteerConfig:
    """Settings of ``run_steering`` (defaults sized for 2 CPU cores, see ``sae-atoms steer``).

    Two strength units: ``vector_strengths`` multiply a vector scaled to the norm of the target's
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
    vector_strengths: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
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
    gated: bool = True             # the gated methods (<sae>_gated) among the methods
    gate_k: int = 64               # gated methods: the units of other relations' subjects that close the gate ...
    gate_q: tuple[float, ...] = (0.2, 0.5)  # ... fully shut on 1 - q of those subjects (``gate_atoms``); each q an
    # alternative of every gated method, the one with the best validation success kept (a looser gate lets an
    # edit spend more of the budget on the relation's own subjects, a tighter one keeps it off more of the others')
    n_seeds: int = 4               # seeds seed, seed+1, ...: the split, prompts, selection prompts, random direction
    methods: tuple[str, ...] = ()  # run only these methods (names as in the results); empty: all
    gen_tokens: int = 24           # steered generation: tokens per continuation (0: no generation)
    gen_seeds: int = 1             # ... on the first this many seeds (each seed: every method, every target)
    gen_prompts: int = 8           # ... from this many of the relation's prompts (``generation.prompts_for``)
    gen_scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)  # ... at these multiples of each method's equal-KL strength (1 among them)
    n_ablation: int = 24           # held-out prompts for the ablation check
    n_random: int = 2              # random atom draws in the ablation check
    batch_size: int = 32
    seed: int = 0


QUICK = {"n_targets": 3, "n_eval": 4, "n_unrelated": 4, "n_select": 6, "n_seeds": 2, "n_ablation": 4, "n_random": 1, "gen_tokens": 12, "gen_prompts": 4, "gen_scales": (1.0,),
         "vector_strengths": (2.0, 4.0), "strengths": (8.0, 16.0), "fractions": (0.5, 1.0),
         "grid_growth": 1.5, "n_bisect": 1}  # a coarser search past the short grid: fewer rounds of passes

# relation -> the label column whose values are its answers
RELATION_LABEL = {"city_country": "country", "country_continent": "continent", "country_language": "language",
                  "country_currency": "currency"}

# what an SAE unit's strength of 1 is (SteerConfig.scale)
SCALES = {"typical": "the unit's typical on-support amplitude (median non-zero training code)",
          "target": "the unit's mean training code on the target's subjects"}
GRIDS = ("vector_strengths", "strengths", "fractions", "gen_scales")


def steer_config(base: SteerConfig | None = None, quick: bool = False, **settings: Any) -> SteerConfig:
    """``base`` (default ``SteerConfig()``) with ``QUICK`` (if ``quick``) and ``settings`` applied, checked."""
    unknown = set(settings) - set(SteerConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown steering setting(s) {sorted(unknown)}; SteerConfig has {sorted(SteerConfig.__dataclass_fields__)}")
    cfg = SteerConfig(**{**asdict(base or SteerConfig()), **(QUICK if quick else {}), **settings})
    for name in GRIDS:
        setattr(cfg, name, tuple(float(a) for a in getattr(cfg, name)))
    q = cfg.gate_q
    cfg.gate_q = tuple(float(a) for a in (q if isinstance(q, (tuple, list)) else (q,)))
    check_config(cfg)
    return cfg


def check_config(cfg: SteerConfig) -> None:
    """Raise ``ValueError`` naming the first setting of ``cfg`` out of its range."""
    for name in GRIDS:
        grid = getattr(cfg, name)
        if not grid or any(not (a > 0 and math.isfinite(a)) for a in grid):
            raise ValueError(f"{name} must be finite positive strengths, got {grid}")
    choices = {"span": ("at", "from"), "scale": tuple(SCALES), "selection": ("effect", "activation"),
               "transfer_error": ("subspace", "keep", "drop")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(cfg, name)!r}")
    small = {k: getattr(cfg, k) for k in ("n_targets", "min_subjects", "k", "n_eval", "n_unrelated", "n_ablation", "n_select",
                                          "n_seeds", "batch_size", "gate_k") if getattr(cfg, k) < 1}
    if small:
        raise ValueError(f"these steering sizes must be >= 1: {small}")
    if not (cfg.kl_budget > 0 and math.isfinite(cfg.kl_budget)):
        raise ValueError(f"kl_budget={cfg.kl_budget} must be finite and > 0")
    check_gen_scales(cfg.gen_scales)
    if cfg.n_bisect < 0 or cfg.gen_tokens < 0 or cfg.gen_seeds < 0 or cfg.gen_prompts < 1:
        raise ValueError(f"n_bisect={cfg.n_bisect}, gen_tokens={cfg.gen_tokens} and gen_seeds={cfg.gen_seeds} must be >= 0, "
                         f"gen_prompts={cfg.gen_prompts} >= 1")
    if not (cfg.transfer_strength > 0 and math.isfinite(cfg.transfer_strength)):
        raise ValueError(f"transfer_strength={cfg.transfer_strength} must be finite and > 0")
    if not (cfg.grid_growth > 1 and math.isfinite(cfg.grid_growth)) or cfg.grid_extend < 0:
        raise ValueError(f"grid_growth={cfg.grid_growth} must be finite and > 1, grid_extend={cfg.grid_extend} >= 0")
    if not cfg.gate_q or not all(0 < q < 1 for q in cfg.gate_q) or len(set(cfg.gate_q)) < len(cfg.gate_q):
        raise ValueError(f"gate_q={cfg.gate_q} must be distinct values in (0, 1)")
    if not 0 < cfg.ceiling_q <= 1:
        raise ValueError(f"ceiling_q={cfg.ceiling_q} must be in (0, 1]")


def check_gen_scales(scales: tuple[float, ...]) -> None:
    """Steered generation's scales must include 1: each method's own equal-KL strength, the point
    its generation scores are reported at and the difference of means is compared at."""
    if 1.0 not in scales:
        raise ValueError(f"gen_scales={tuple(scales)} must include 1 (each method's own equal-KL strength)")
