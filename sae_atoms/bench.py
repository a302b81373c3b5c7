"""``sae-atoms bench``: speed targets measured as ratios against a baseline in the same process.

Each case is a function ``case(quick: bool) -> dict`` registered in ``CASES`` by the module
that owns the capability. It returns at least ``{"ratio": r, "target": t, "better": "lower" |
"higher"}`` plus whatever it measured (seconds, sizes). ``ratio`` compares our code against a
baseline doing the same essential work in the same process, so the figure does not depend on
the machine's speed. ``passed`` is filled in here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import torch

# case name -> "module:function"
CASES: dict[str, str] = {
    "extract_subject": "sae_atoms.activations:bench_extract_subject",
    "aip_fit": "sae_atoms.aip:bench_aip_fit",
    "tsae_aip_step": "sae_atoms.training:bench_tsae_aip_step",
    "coherence": "sae_atoms.evals:bench_coherence",
}


def best_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Minimum wall time of ``fn()`` over ``repeat`` runs (after ``warmup``), CUDA-synchronised."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_cases(names: list[str] | None = None, quick: bool = False) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for name, target in CASES.items():
        if names and name not in names:
            continue
        modname, fname = target.split(":")
        try:
            fn = getattr(importlib.import_module(modname), fname)
        except (ModuleNotFoundError, AttributeError) as e:
            results[name] = {"error": f"not available: {e}"}
            continue
        res = dict(fn(quick=quick))
        r, t, better = res["ratio"], res["target"], res["better"]
        res["passed"] = bool(r <= t if better == "lower" else r >= t)
        results[name] = res
        print(f"{name:>18}: ratio {r:.3f} (target {'<=' if better == 'lower' else '>='} {t}) "
              f"{'ok' if res['passed'] else 'MISSED'}", flush=True)
    return results


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("cases", nargs="*", help=f"cases to run (default: all): {', '.join(CASES)}")
    p.add_argument("--json", type=Path, help="write {case: {ratio, target, better, ...}} to this file")
    p.add_argument("--quick", action="store_true", help="smaller sizes (for smoke tests)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def run_cli(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown bench case(s) {unknown}; available: {list(CASES)}")
    results = run_cases(args.cases or None, quick=args.quick)
    print()
    print(f"{'case':<18} {'ratio':>8} {'target':>10} {'result':>8}")
    for name, res in results.items():
        if "error" in res:
            print(f"{name:<18} {'-':>8} {'-':>10} {res['error']}")
            continue
        op = "<=" if res["better"] == "lower" else ">="
        print(f"{name:<18} {res['ratio']:>8.3f} {op + str(res['target']):>10} {'ok' if res['passed'] else 'MISSED':>8}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, args.json)
    return 0
