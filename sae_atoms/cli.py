"""The ``sae-atoms`` command line.

``SUBCOMMANDS`` maps each subcommand to where it lives: ``"module"`` (the module defines
``configure_parser(parser)`` and ``run_cli(args) -> int``) or ``"module:NAME"`` (an object
with those two, and optionally ``ACCEPTS_EXTRA_ARGS``). The library's commands (``extract``,
``train``, ``evaluate``) are defined here, beside the dispatcher; each experiment's command
lives in its module under ``sae_atoms.experiments``; ``cards`` in ``sae_atoms.cards.command``;
``bench`` in ``sae_atoms.bench``. The targets are imported lazily, so ``sae-atoms --help`` stays
fast and one broken capability does not take the others down.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

from sae_atoms.argtypes import int_at_least, positive_int  # noqa: F401  (re-exported: sae_atoms.cli.int_at_least)

# subcommand -> (where it lives, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "reproduce": ("sae_atoms.experiments.reproduce", "run Atom Theory end to end on a real model and write a report"),
    "extract": ("sae_atoms.cli:EXTRACT", "collect activations at a hook and token position over the fact prompts"),
    "geometry": ("sae_atoms.experiments.geometry", "the representation-shift experiment: angle statistics, Euclid vs AIP, by layer"),
    "train": ("sae_atoms.cli:TRAIN", "train an SAE with SAELens's runner (tsae / tsae_aip registered); SAELens's arguments"),
    "evaluate": ("sae_atoms.cli:EVALUATE", "evaluate an SAE (or neurons) on an activation set: R^2, L0, mu, q*, monosemanticity"),
    "cards": ("sae_atoms.cards.command",
              "atom cards: a static HTML site with one card per unit of an SAE (contexts, logits, neighbours, steering)"),
    "capacity": ("sae_atoms.experiments.capacity", "capacity sweep: width x data size, find the R^2 cliff"),
    "frontier": ("sae_atoms.experiments.frontier", "units at matched L0 (4..64): held-out R^2 raw and AIP, q*; --paper-regime for width = n_train"),
    "steer": ("sae_atoms.experiments.steering", "causal steering experiment: atoms vs features vs difference of means"),
    "token-frontier": ("sae_atoms.experiments.token_frontier", "units trained on a token stream by SAELens's multi-SAE runner, run_evals on held-out documents at matched L0"),
    "fit-metric": ("sae_atoms.experiments.fit_metric", "fit the AIP metric on every token of a generic text corpus (torchrun: many processes)"),
    "bench": ("sae_atoms.bench", "speed benchmarks, as ratios to a baseline run in the same process"),
}


@dataclass(frozen=True)
class Command:
    """A subcommand defined in this module: its parser setup and its runner."""

    configure_parser: Callable[[argparse.ArgumentParser], None]
    run_cli: Callable[[argparse.Namespace], int]
    ACCEPTS_EXTRA_ARGS: bool = False


def _load(target: str) -> Any:
    """The module (or ``module:NAME`` object) a ``SUBCOMMANDS`` entry points at; None if its module is absent."""
    modname, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name != modname:
            raise
        return None
    return getattr(mod, attr) if attr else mod


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``sae-atoms CMD: error: ...``, exit 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = _Parser(
        prog="sae-atoms",
        description="Atoms of language models (Atom Theory, arXiv 2509.20784) with SAELens and TransformerLens.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--threads", type=_threads_arg, default=None, dest="global_threads",
                        help="torch CPU threads (default: $SAE_ATOMS_THREADS, else the free cores of this "
                             "process's CPU affinity; 1 when the machine is loaded)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, object] = {}
    argv = sys.argv[1:]
    wanted = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (target, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if wanted is None or wanted == name:  # import only what is needed
            mod = _load(target)
            if mod is None:
                continue
            mod.configure_parser(p)
            modules[name] = mod
    return parser, modules


def _threads_arg(value: str) -> int:
    from sae_atoms.threads import parse_threads

    try:
        return parse_threads(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# what a user's mistake raises: one line and exit status 2, no traceback (SAE_ATOMS_DEBUG=1 shows it)
_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError, TypeError)


def _user_error_types() -> tuple[type[BaseException], ...]:
    from sae_atoms.models import ModelLoadError

    return (*_USER_ERRORS, ModelLoadError)


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser, modules = build_parser()
    try:
        args, extra = parser.parse_known_args()
    except SystemExit as e:  # --help (0) or a bad argument (2, its line printed): return the status like any error
        return e.code if isinstance(e.code, int) else 0
    try:
        return _dispatch(parser, modules, args, extra)
    except SystemExit as e:
        if isinstance(e.code, str):  # a command's own `raise SystemExit(message)`
            print(f"sae-atoms {args.command}: error: {e.code}", file=sys.stderr)
            return 2
        raise
    except _user_error_types() as e:
        if os.environ.get("SAE_ATOMS_DEBUG"):
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        return _fail(args.command, msg or type(e).__name__)
    except KeyboardInterrupt:
        if os.environ.get("SAE_ATOMS_DEBUG"):
            raise
        print(f"sae-atoms {args.command}: interrupted; finished results are kept, nothing half-written", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("SAE_ATOMS_DEBUG") or not _disk_full(e):
            raise
        return _fail(args.command, f"no space left on the device ({' '.join(str(e).split())}); the results written "
                                   "before are kept and nothing is half-written: free some space and run again")


def _fail(command: str, msg: str) -> int:
    """Print one line ``sae-atoms COMMAND: error: MSG`` on stderr; exit status 2."""
    print(f"sae-atoms {command}: error: {' '.join(msg.split())}", file=sys.stderr)
    return 2


def _disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT, raised as ``OSError`` or as safetensors' error (which only says it in words)."""
    import errno

    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return type(e).__name__ == "SafetensorError" and ("No space left" in str(e) or "quota exceeded" in str(e).lower())


def _dispatch(parser: argparse.ArgumentParser, modules: dict[str, object], args: argparse.Namespace,
              extra: list[str]) -> int:
    if args.version:
        from sae_atoms import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    if args.command not in modules:
        parser.error(f"the subcommand {args.command!r} is not available in this installation")
    if extra and not getattr(modules[args.command], "ACCEPTS_EXTRA_ARGS", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra_args = extra
    from sae_atoms.threads import set_threads

    own = getattr(args, "threads", None)  # a subcommand's own --threads
    set_threads(own if own else args.global_threads)
    if hasattr(args, "threads") and not own:
        args.threads = torch_threads()
    out = getattr(args, "out", None)
    if out is None:
        return int(modules[args.command].run_cli(args) or 0)
    from sae_atoms.io import check_output_dir, output_lock

    check_output_dir(out, lambda p: True)  # writable, before any compute (replacing is the command's own check)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 holds the lock for the whole group
        return int(modules[args.command].run_cli(args) or 0)
    with output_lock(out):  # a second writer of the same --out fails at once, naming this process
        return int(modules[args.command].run_cli(args) or 0)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# --------------------------------------------------------------------------- sae-atoms extract
def _configure_extract(p: argparse.ArgumentParser) -> None:
    from sae_atoms.activations import POSITIONS

    p.add_argument("--model", default="smollm2-135m", help="embedded name, local HF folder or TransformerLens name")
    p.add_argument("--hook", action="append", required=True, help="hook name (repeatable), e.g. blocks.12.hook_resid_post")
    p.add_argument("--out", type=Path, required=True, help="output folder of the activation set")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it is a non-empty folder that is not an activation set")
    p.add_argument("--position", choices=POSITIONS, default="subject_last")
    p.add_argument("--data", choices=("facts", "reasoning"), default="facts")
    p.add_argument("--n-cities", type=positive_int, default=None, help="most populous cities to use (default all: >20k prompts)")
    p.add_argument("--relations", nargs="*", default=None, help="fact relations (default all)")
    p.add_argument("--n", type=positive_int, default=2000, help="number of reasoning prompts")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)


def _run_extract(args: argparse.Namespace) -> int:
    from sae_atoms.activations import extract, is_activation_set
    from sae_atoms.data import fact_prompts, reasoning_prompts
    from sae_atoms.io import check_output_dir, output_lock
    from sae_atoms.models import load_model

    check_output_dir(args.out, is_activation_set, args.overwrite)  # before any compute
    with output_lock(args.out):
        model = load_model(args.model, device=args.device)
        ds = (fact_prompts(n_cities=args.n_cities, relations=args.relations, seed=args.seed) if args.data == "facts"
              else reasoning_prompts(args.n, seed=args.seed))
        acts = extract(model, ds, args.hook, position=args.position, batch_size=args.batch_size)
        acts.save(args.out, overwrite=args.overwrite)
    splits = {s: acts.labels("split").count(s) for s in sorted(set(acts.labels("split")))}
    print(f"wrote {len(acts)} activations ({', '.join(f'{k}: {v}' for k, v in splits.items())}) "
          f"at {acts.hook_names} to {args.out}")
    return 0


# --------------------------------------------------------------------------- sae-atoms train
def _configure_train(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Train an SAE with SAELens's LanguageModelSAETrainingRunner; tsae / tsae_aip are registered. All other "
        "arguments are SAELens's runner arguments (python -m sae_lens.llm_sae_training_runner --help), e.g. "
        "--architecture tsae_aip --d_in 576 --d_sae 2304 --model_name smollm2-135m --hook_name blocks.12.hook_resid_post "
        "--dataset_path ./text.jsonl --is_dataset_tokenized False --training_tokens 20000 --context_size 64. "
        "The model is loaded by sae_atoms (the embedded smollm2-135m works offline); a local --dataset_path is read "
        "with `datasets`; wandb is off."
    )
    p.add_argument("--config", type=Path, default=None,
                   help="a JSON runner config (LanguageModelSAERunnerConfig.to_dict() form, sae.architecture set); "
                        "runner arguments on the command line are not allowed with it")
    p.add_argument("--device", default=None, help="device for the model and the SAE (default: the config's)")


def _run_train(args: argparse.Namespace) -> int:
    from sae_lens.config import LanguageModelSAERunnerConfig
    from sae_lens.llm_sae_training_runner import _parse_cfg_args

    from sae_atoms.runners import build_runner  # importing sae_atoms registered tsae / tsae_aip already

    extra = list(getattr(args, "extra_args", []) or [])
    if args.config is not None:
        if extra:
            raise SystemExit(f"sae-atoms train: --config was given, so runner arguments {extra} are not allowed; put them in the config.")
        try:
            cfg = LanguageModelSAERunnerConfig.from_dict(json.loads(Path(args.config).read_text()))
        except (KeyError, ValueError, TypeError) as e:
            raise SystemExit(f"sae-atoms train: cannot read the runner config {args.config}: {e}") from e
    else:
        if not extra:
            raise SystemExit("sae-atoms train needs SAELens runner arguments (e.g. --architecture tsae_aip --d_in 576 "
                             "--d_sae 2304 --model_name smollm2-135m --hook_name blocks.12.hook_resid_post --dataset_path "
                             "FILE) or --config FILE; see `sae-atoms train --help`.")
        try:
            cfg = _parse_cfg_args(extra)
        except SystemExit:
            raise
        except Exception as e:  # simple_parsing reports bad values as exceptions with exit_on_error=False
            raise SystemExit(f"sae-atoms train: bad runner arguments: {e}") from e
    if args.device:
        cfg.device = cfg.llm_device = cfg.act_store_device = args.device
    runner = build_runner(cfg)
    sae = runner.run()
    l0 = sae.cfg.metadata.get("l0")
    print(f"sae-atoms train: trained {cfg.sae.architecture()} d_sae={cfg.sae.d_sae} on {cfg.hook_name}; "
          f"final-window L0 {l0 if l0 is None else round(float(l0), 2)}; saved to {cfg.output_path}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- sae-atoms evaluate
def _configure_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("sae_dir", help="an SAE folder (cfg.json + sae_weights.safetensors) or 'neurons'")
    p.add_argument("--activations", required=True, type=Path, help="an activation set folder (sae-atoms extract --out)")
    p.add_argument("--hook", default=None, help="hook in the activation set (default: the SAE's, or the only one)")
    p.add_argument("--metric", type=Path, default=None,
                   help="an AIP metric folder (AIPMetric.save); default: the SAE's own, else fitted on the train split")
    p.add_argument("--splits", nargs="*", default=None, help="splits to evaluate (default: every split present)")
    p.add_argument("--top-k", type=int, default=20, help="top-activating samples per unit for monosemanticity")
    p.add_argument("--model", default=None,
                   help="also run SAELens's CE-loss-recovered / KL evals with this model (e.g. smollm2-135m)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--out", type=Path, default=None, help="folder for results.json (default: SAE_DIR, or ./evaluate-neurons)")


def _run_evaluate(args: argparse.Namespace) -> int:
    from sae_atoms.activations import ActivationSet
    from sae_atoms.aip import AIPMetric
    from sae_atoms.evals import evaluate_units, find_metric, format_table, jsonable
    from sae_atoms.io import check_output_file, write_json
    from sae_atoms.models import resolve_device
    from sae_atoms.saes import load_sae

    neurons = args.sae_dir.lower() == "neurons"
    acts = ActivationSet.load(args.activations)
    units: Any = "neurons"
    if not neurons:
        units = load_sae(args.sae_dir, device=str(resolve_device(args.device)))
    out = check_output_file((args.out or (Path(args.sae_dir) if not neurons else Path("evaluate-neurons"))) / "results.json",
                            "the results file", "pass --out to write it elsewhere")  # before any compute
    hook = args.hook
    if hook is None:
        if units != "neurons" and getattr(units.cfg.metadata, "hook_name", None) in acts.hook_names:
            hook = units.cfg.metadata.hook_name
        elif len(acts.hook_names) == 1:
            hook = acts.hook_names[0]
        else:
            raise SystemExit(f"the activation set has hooks {acts.hook_names}; choose one with --hook")
    splits_present = sorted(set(acts.labels("split"))) if "split" in acts.rows.column_names else [None]
    splits = args.splits or splits_present
    # the metric: --metric, else the one the SAE carries, else the robust AIP of the train split
    metric = AIPMetric.load(args.metric) if args.metric is not None else (None if neurons else find_metric(units))
    if metric is None:
        fit_on = acts.select(split="train") if "train" in splits_present else acts
        print(f"sae-atoms evaluate: fitting the robust AIP metric (AIPMetric.robust) on {len(fit_on)} "
              f"{'train-split ' if 'train' in splits_present else ''}activations", file=sys.stderr)
        metric = AIPMetric.robust(fit_on.x(hook))
    model = None
    if args.model:
        from sae_atoms.models import load_model

        model = load_model(args.model, device=args.device)
    results = {}
    for sp in splits:
        sub = acts.select(split=sp) if sp is not None else acts
        one = ActivationSet({hook: sub.x(hook)}, sub.rows, sub.meta)
        results[sp or "all"] = evaluate_units(units, one, metric, top_k=args.top_k, device=args.device,
                                              model=model if units != "neurons" else None, progress=True)
    print(format_table(results))
    path = write_json(jsonable({"units": args.sae_dir, "activations": str(args.activations), "hook": hook,
                                "splits": results}), out)
    print(f"wrote {path}")
    return 0


EXTRACT = Command(_configure_extract, _run_extract)
TRAIN = Command(_configure_train, _run_train, ACCEPTS_EXTRA_ARGS=True)
EVALUATE = Command(_configure_evaluate, _run_evaluate)


if __name__ == "__main__":
    sys.exit(main())
