"""The ``sae-atoms`` command line.

Each subcommand lives beside its concept: the module named in ``SUBCOMMANDS`` defines
``configure_parser(parser)`` (adds its arguments) and ``run_cli(args) -> int`` (runs it).
The modules are imported lazily, so ``sae-atoms --help`` is fast and one broken
capability does not take the others down.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "reproduce": ("sae_atoms.reproduce", "run Atom Theory end to end on a real model and write a report"),
    "extract": ("sae_atoms.activations", "collect activations at a hook and token position over the fact prompts"),
    "geometry": ("sae_atoms.geometry", "the representation-shift experiment: angle statistics, Euclid vs AIP, by layer"),
    "train": ("sae_atoms.training", "train an SAE with SAELens's runner (tsae / tsae_aip registered); SAELens's arguments"),
    "evaluate": ("sae_atoms.evals", "evaluate an SAE (or neurons) on an activation set: R^2, L0, mu, q*, monosemanticity"),
    "capacity": ("sae_atoms.capacity", "capacity sweep: width x data size, find the R^2 cliff"),
    "steer": ("sae_atoms.steering", "causal steering experiment: atoms vs features vs difference of means"),
    "bench": ("sae_atoms.bench", "speed benchmarks, as ratios to a baseline run in the same process"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(
        prog="sae-atoms",
        description="Atoms of language models (Atom Theory, arXiv 2509.20784) with SAELens and TransformerLens.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, object] = {}
    argv = sys.argv[1:]
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (modname, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if wanted is None or wanted == name:  # import only what is needed
            try:
                mod = importlib.import_module(modname)
            except ModuleNotFoundError as e:
                if e.name != modname:
                    raise
                continue
            mod.configure_parser(p)
            modules[name] = mod
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser, modules = build_parser()
    args, extra = parser.parse_known_args()
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
    return int(modules[args.command].run_cli(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
