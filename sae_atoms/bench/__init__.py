"""``sae-atoms bench``: speed targets measured as ratios against a baseline in the same process.

Each case is a function ``bench_<case>(quick: bool) -> dict`` in ``sae_cases`` (the SAE side)
or ``model_cases`` (on the embedded model), registered in ``CASES``; it imports the capability
it measures when it runs. It times our code and a baseline doing the same essential work in the
same process with ``timing``'s timers, so the figure does not depend on the machine's speed, and
returns ``timing.measured``'s dict: ``{"ratio", "target", "better", "seconds",
"baseline_seconds"}`` plus whatever else it measured (sizes, threads). ``passed`` is filled in
here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch

from sae_atoms.bench import model_cases, sae_cases
from sae_atoms.bench.timing import best_time, measured, ratio_of
from sae_atoms.io import check_output_file, write_json

__all__ = ["CASES", "run_cases", "best_time", "measured", "ratio_of"]

# case name -> function
CASES: dict[str, Callable[..., dict]] = {
    "extract_subject": model_cases.bench_extract_subject,
    "aip_fit": sae_cases.bench_aip_fit,
    "tsae_aip_step": sae_cases.bench_tsae_aip_step,
    "runner_step": sae_cases.bench_runner_step,
    "stability_step": sae_cases.bench_stability_step,
    "match_l0": sae_cases.bench_match_l0,
    "coherence": sae_cases.bench_coherence,
    "aip_stream": model_cases.bench_aip_stream,
    "under_load": sae_cases.bench_under_load,
    "steer_batched": model_cases.bench_steer_batched,
    "frontier_together": sae_cases.bench_frontier_together,
    "stacked_step": sae_cases.bench_stacked_step,
    "corpus_read": model_cases.bench_corpus_read,
    "model_forward": model_cases.bench_model_forward,
}


# --------------------------------------------------------------------------- runner and CLI
def run_cases(names: list[str] | None = None, quick: bool = False) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for name, target in CASES.items():
        if names and name not in names:
            continue
        try:
            res = dict(target(quick=quick))
        except ModuleNotFoundError as e:  # a capability whose optional dependency is missing
            results[name] = {"error": f"not available: {e}"}
            continue
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
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: sae_atoms.threads.choose_threads())")


def run_cli(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown bench case(s) {unknown}; available: {list(CASES)}")
    if args.json:
        check_output_file(args.json, "--json")  # before the bench, not after it
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
        write_json(results, args.json)
    return 0
