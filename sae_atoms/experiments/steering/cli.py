"""``sae-atoms steer``: the experiment on a model's fact prompts, with SAEs loaded or trained.

``cli._dispatch`` sets the torch threads and holds the lock on ``--out``; ``run_cli`` checks the
settings before any compute and writes ``results.json`` and ``steering.png`` once, at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from torch import Tensor

from sae_atoms.experiments.steering.config import GRIDS, RELATION_LABEL, SteerConfig, steer_config
from sae_atoms.experiments.steering.experiment import run_steering
from sae_atoms.experiments.steering.output import write_results
from sae_atoms.experiments.steering.relations import DEFAULT_RELATIONS, check_relations, run_relations, tables
from sae_atoms.io import atomic_dir, write_json
from sae_atoms.models import check_hook_name, resolve_device
from sae_atoms.training import DEFAULT_STEPS, train_on_activations, training_config
from sae_atoms.units import UNIT_KINDS

TRAINED_UNITS = ("atoms", "features_jumprelu")  # trained here when --sae-dir lacks them; features_topk only when given


def load_or_train_saes(x_train: Tensor, hook: str, sae_dir: Path | None, out_dir: Path | None, expansion: int = 4,
                       steps: int = DEFAULT_STEPS, seed: int = 0, device: Any = None) -> dict[str, Any]:
    """``{"atoms": tsae_aip, "features_jumprelu": jumprelu}`` (architectures from ``UNIT_KINDS``):
    loaded from ``sae_dir/<name>`` (SAELens folders) where present, else trained on ``x_train``
    with SAELens's default config of the architecture (``train_on_activations``) and saved under
    ``out_dir/saes/<name>`` (written to a temporary folder, then renamed); ``features_topk``
    too when ``sae_dir`` holds one."""
    from sae_atoms.saes import load_sae

    saes = {}
    for name in TRAINED_UNITS:
        folder = sae_dir / name if sae_dir is not None else None
        if folder is not None and (folder / "cfg.json").exists():
            sae = load_sae(folder, device=str(resolve_device(device)))  # a damaged folder is one clear error
            if sae.cfg.metadata.hook_name not in (None, hook):
                raise ValueError(f"{folder} is an SAE at {sae.cfg.metadata.hook_name!r}, not {hook!r}; pass --hook to match")
            if sae.cfg.metadata.hook_name is None:
                sae.cfg.metadata.hook_name = hook
        elif folder is not None and folder.exists():
            raise FileNotFoundError(f"{folder} exists but holds no SAELens SAE (cfg.json); remove it or point --sae-dir elsewhere")
        else:
            arch = UNIT_KINDS[name].architecture
            print(f"training {name} ({arch}, {expansion}x{x_train.shape[1]}, {steps} steps) on {x_train.shape[0]} "
                  "activations ...", file=sys.stderr, flush=True)
            cfg = training_config(arch, x_train.shape[1], expansion * x_train.shape[1], hook_name=hook)
            sae = train_on_activations(x_train, cfg, steps=steps, seed=seed, progress=True, device=device)
            if out_dir is not None:
                with atomic_dir(out_dir / "saes" / name) as tmp:
                    sae.save_model(str(tmp))
        saes[name] = sae.eval() if hasattr(sae, "eval") else sae
    extra = sae_dir / "features_topk" if sae_dir is not None else None
    if extra is not None and (extra / "cfg.json").exists():  # optional: compared when given, never trained here
        saes["features_topk"] = load_sae(extra, device=str(resolve_device(device))).eval()
    return saes


def configure_parser(p: argparse.ArgumentParser) -> None:
    d = SteerConfig()
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local HF folder or TransformerLens name")
    p.add_argument("--relation", "--relations", nargs="+", default=["city_country"], choices=sorted(RELATION_LABEL),
                   dest="relation", help="the fact relation(s) to steer (their answers are the targets); several: one "
                   "results folder each under --out, e.g. --relations " + " ".join(DEFAULT_RELATIONS))
    p.add_argument("--out", type=Path, required=True, help="output folder: results.json, steering.png, saes/")
    p.add_argument("--hook", default="blocks.12.hook_resid_post", help="where to intervene (and where the SAEs sit)")
    p.add_argument("--sae-dir", type=Path, default=None,
                   help="folder with SAELens SAEs in atoms/ (tsae_aip) and features_jumprelu/ (jumprelu), optionally "
                        "features_topk/; missing atoms / jumprelu ones are trained and saved under OUT/saes/")
    p.add_argument("--acts", type=Path, default=None, help="a saved ActivationSet (sae-atoms extract) at --hook, subject_last")
    p.add_argument("--n-cities", type=int, default=600, help="most populous cities in the fact prompts")
    p.add_argument("--expansion", type=int, default=4, help="SAE width as a multiple of d_model (when training)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps per SAE (when training)")
    p.add_argument("--targets", type=int, default=None, help=f"number of target values ({d.n_targets})")
    p.add_argument("--min-subjects", type=int, default=d.min_subjects)
    p.add_argument("--k", type=int, default=d.k, help="atoms / features per target")
    p.add_argument("--vector-strengths", "--alphas", type=float, nargs="+", default=None, dest="vector_strengths",
                   help=f"strengths of the vector methods (multiples of the target's difference-of-means norm; "
                        f"{list(d.vector_strengths)})")
    p.add_argument("--strengths", type=float, nargs="+", default=None,
                   help=f"SAE-unit strengths (multiples of each unit's typical on-support amplitude; {list(d.strengths)})")
    p.add_argument("--fractions", type=float, nargs="+", default=None,
                   help=f"transfer methods: fractions of the transfer applied ({list(d.fractions)})")
    p.add_argument("--transfer-error", choices=("subspace", "keep", "drop"), default=d.transfer_error,
                   help="transfer methods: the SAE error term at the edited position: its part in the concept's subspace "
                        "removed, kept, or dropped")
    p.add_argument("--selection", choices=("effect", "activation"), default=d.selection,
                   help="headline selection of SAE units (the other is reported as NAME_by_<selection>)")
    p.add_argument("--scale", choices=("target", "typical"), default=d.scale,
                   help="SAE-unit strength 1 = the target subjects' mean code of the unit, or its typical on-support amplitude")
    p.add_argument("--seeds", type=int, default=None, help=f"number of seeds ({d.n_seeds})")
    p.add_argument("--span", choices=("at", "from"), default=d.span,
                   help="intervene at the subject's last token, or from it to the end")
    p.add_argument("--kl-budget", type=float, default=d.kl_budget, help="matched side effect, nats")
    p.add_argument("--n-eval", type=int, default=None, help=f"prompts per target per split ({d.n_eval})")
    p.add_argument("--n-unrelated", type=int, default=None, help=f"({d.n_unrelated})")
    p.add_argument("--n-ablation", type=int, default=None, help=f"({d.n_ablation})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--gen-scales", type=float, nargs="+", default=None,
                   help=f"steered generation at these multiples of each method's equal-KL strength ({' '.join(f'{a:g}' for a in d.gen_scales)})")
    p.add_argument("--gen-seeds", type=int, default=None,
                   help=f"steered generation on the first this many seeds ({d.gen_seeds}; 0: none)")
    p.add_argument("--gen-prompts", type=int, default=None, help=f"generation prompts per target ({d.gen_prompts})")
    p.add_argument("--gate-q", type=float, nargs="+", default=None, metavar="Q",
                   help=f"gated methods: each looseness of the gate, fully shut on 1 - Q of the other relations' subjects, "
                        f"tried on validation ({' '.join(f'{a:g}' for a in d.gate_q)})")
    p.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                   help="run only these methods, by their names in results.json (e.g. diff_of_means atoms_swap "
                        "features_topk); keep diff_of_means for the equal-KL comparison (default: all)")
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (flags given explicitly win over them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def steer_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``SteerConfig`` settings the command line gives: explicit flags win over ``--quick``."""
    grids = {k: None if getattr(args, k) is None else tuple(getattr(args, k)) for k in GRIDS}
    given = {"n_targets": args.targets, "n_eval": args.n_eval, "n_unrelated": args.n_unrelated,
             "n_ablation": args.n_ablation, "n_seeds": args.seeds, "gen_seeds": args.gen_seeds,
             "gen_prompts": args.gen_prompts, "methods": None if args.methods is None else tuple(args.methods),
             "gate_q": None if args.gate_q is None else tuple(args.gate_q), **grids}
    rel = args.relation[0] if isinstance(args.relation, list) else args.relation
    return {**{k: v for k, v in given.items() if v is not None}, "relation": rel,
            "label": RELATION_LABEL[rel], "min_subjects": args.min_subjects, "k": args.k, "span": args.span,
            "kl_budget": args.kl_budget, "selection": args.selection, "scale": args.scale, "batch_size": args.batch_size,
            "seed": args.seed, "transfer_error": args.transfer_error}


def run_cli(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    cfg = steer_config(quick=args.quick, **steer_overrides(args))  # bad values fail before any compute
    check_relations(args.relation)
    from sae_atoms.activations import ActivationSet, extract
    from sae_atoms.data import fact_prompts
    from sae_atoms.models import load_model

    model = load_model(args.model, device=args.device)
    check_hook_name(model, args.hook)
    facts = fact_prompts(n_cities=min(args.n_cities, 300) if args.quick else args.n_cities, seed=args.seed)
    if args.acts is not None:
        acts = ActivationSet.load(args.acts)
        if args.hook not in acts.hook_names:
            raise SystemExit(f"--acts {args.acts} holds {acts.hook_names}, not {args.hook}; extract at --hook")
        acts = ActivationSet({args.hook: acts.x(args.hook)}, acts.rows, acts.meta)
    else:
        acts = extract(model, facts, args.hook, position="subject_last", batch_size=64)
    args.out.mkdir(parents=True, exist_ok=True)
    saes = load_or_train_saes(acts.select(split="train").x(args.hook), args.hook, args.sae_dir, args.out,
                              args.expansion, min(args.steps, 300) if args.quick else args.steps, args.seed, args.device)
    if len(args.relation) > 1:
        done = run_relations(model, saes, facts, acts, args.relation, cfg, out_dir=args.out)
        write_json({"relations": tables(done), "seconds_total": time.perf_counter() - t0}, args.out / "relations.json")
        for rel, res in done.items():
            print(res["summary"])
        print(f"wrote {args.out}/<relation>/results.json, steering.png and {args.out / 'relations.json'} "
              f"({time.perf_counter() - t0:.0f} s)")
        return 0
    res = run_steering(model, saes, facts, acts, cfg)
    res["seconds_total"] = time.perf_counter() - t0
    write_results(res, args.out)
    print(res["summary"])
    print(f"wrote {args.out / 'results.json'} and {args.out / 'steering.png'} ({res['seconds_total']:.0f} s)")
    return 0
