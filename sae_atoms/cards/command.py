"""``sae-atoms cards SAE_DIR (--activations DIR | --corpus SPEC) --out DIR``: the atom cards of a saved SAE."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sae_atoms.argtypes import positive_int


def _units(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(u) for u in value.split(",") if u.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--units takes unit indices separated by commas (e.g. 3,17), not {value!r}") from None


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("sae_dir", type=Path, help="an SAE folder (any SAELens architecture; tsae / tsae_aip registered)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--activations", type=Path, help="an activation set (sae-atoms extract --out): fact prompts, labels")
    src.add_argument("--corpus", help="a text corpus (load_corpus spec: human-en, markov-draftjs, a .txt / .jsonl file)")
    p.add_argument("--out", type=Path, required=True, help="output folder (index.html, unit_<j>.html, cards.json)")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if it is not a cards folder")
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local HF folder or TransformerLens name")
    p.add_argument("--hook", default=None, help="hook (default: the SAE's cfg.metadata.hook_name)")
    p.add_argument("--metric", type=Path, default=None,
                   help="an AIP metric folder (AIPMetric.save, fit-metric) for |cos| in the AIP (default: the SAE's own)")
    p.add_argument("--n-cards", type=positive_int, default=32, help="cards for the most frequently firing units (default 32)")
    p.add_argument("--units", type=_units, default=(), help="also these units, e.g. 3,17")
    p.add_argument("--tokens", type=positive_int, default=8192, help="corpus tokens to observe (default 8192)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")


def run_cli(args: argparse.Namespace) -> int:
    from sae_atoms.cards.build import is_cards_dir, site_for, source_hook, write_cards
    from sae_atoms.cards.compute import CardConfig
    from sae_atoms.io import check_output_dir
    from sae_atoms.models import load_model, resolve_device
    from sae_atoms.saes import load_sae

    t0 = time.time()
    check_output_dir(args.out, is_cards_dir, args.overwrite)  # before any compute
    device = resolve_device(args.device)
    sae = load_sae(args.sae_dir, device=str(device))
    source = args.corpus
    if args.activations is not None:
        from sae_atoms.activations import ActivationSet

        source = ActivationSet.load(args.activations)
    hook = source_hook(sae, source, args.hook)  # before the model loads
    cfg = CardConfig(n_cards=args.n_cards, units=args.units, n_tokens=args.tokens, batch_size=args.batch_size)
    metric = None
    if args.metric is not None:
        from sae_atoms.aip import AIPMetric

        metric = AIPMetric.load(args.metric)
    model = load_model(args.model, device=device)
    site = site_for(model, sae, source, hook, cfg, name=Path(args.sae_dir).name, metric=metric)
    index = write_cards(site, args.out)
    print(f"sae-atoms cards: wrote {len(list(Path(args.out).glob('unit_*.html')))} cards and the index of "
          f"{sae.cfg.d_sae} units to {index} in {time.time() - t0:.0f} s")
    return 0
