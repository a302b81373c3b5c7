"""``sae-atoms bench``: speed targets measured as ratios against a baseline in the same process.

Each case is a function ``bench_<case>(quick: bool) -> dict`` defined here and registered in
``CASES``; it imports the capability it measures when it runs. It times our code and a baseline
doing the same essential work in the same process, so the figure does not depend on the
machine's speed, and returns :func:`measured`'s dict: ``{"ratio", "target", "better",
"seconds", "baseline_seconds"}`` plus whatever else it measured (sizes, threads). ``passed`` is
filled in here.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from sae_atoms.io import check_output_file, write_json

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


def ratio_of(seconds: float, baseline_seconds: float, better: str) -> float:
    """``seconds / baseline_seconds`` when lower is better (a time ratio), the inverse when higher
    is better (a throughput ratio: the same work per second, ours over the baseline's)."""
    if better == "lower":
        return seconds / baseline_seconds
    if better == "higher":
        return baseline_seconds / seconds
    raise ValueError(f"better must be 'lower' or 'higher', not {better!r}")


def measured(seconds: float, baseline_seconds: float, target: float, better: str, **extra: object) -> dict:
    """A case's result: our time, the baseline's time, their :func:`ratio_of` and its target."""
    return {"ratio": ratio_of(seconds, baseline_seconds, better), "target": target, "better": better,
            "seconds": seconds, "baseline_seconds": baseline_seconds, **extra}


# --------------------------------------------------------------------------- cases
def bench_extract_subject(quick: bool = False) -> dict:
    """Subject-position extraction throughput / bare ``model(tokens, stop_at_layer)`` throughput.

    The baseline runs the same padded token batches through the truncated model with no hooks.
    """
    from sae_atoms.activations import extract
    from sae_atoms.data import fact_prompts
    from sae_atoms.forward import pad_batch, pad_id
    from sae_atoms.models import load_model, tokenize_prompts

    model = load_model("smollm2-135m")
    ds = fact_prompts(n_cities=100 if quick else 400, relations=["city_country"])
    hook, bs = "blocks.12.hook_resid_post", 64
    ids, _ = tokenize_prompts(model, list(ds["prompt"]))
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = [pad_batch([ids[i] for i in order[k:k + bs]], pad_id(model)) for k in range(0, len(order), bs)]

    def baseline() -> None:
        with torch.no_grad():
            for t, m in batches:
                model(t, attention_mask=m, stop_at_layer=13)

    def ours() -> None:
        extract(model, ds, hook, batch_size=bs, progress=False)

    repeat = 2 if quick else 3
    t_base, t_ours = best_time(baseline, repeat=repeat), best_time(ours, repeat=repeat)
    return measured(t_ours, t_base, 0.9, "higher", n_prompts=len(ds), hook=hook,
                    note="throughput ratio (baseline time / extraction time), same tokens and batches")


def bench_aip_fit(quick: bool = False) -> dict:
    """Fitting the metric from N float32 activations vs one float64 ``x.T @ x`` of the same size.

    Ours: streaming float64 conversion + accumulation of ``sum x`` and ``x^T x`` + eigh + W, S.
    Baseline: ``x64.T @ x64`` alone (x already float64). Target ratio <= 1.5.
    """
    from sae_atoms.aip import AIPMetric

    n, d = (20_000, 256) if quick else (100_000, 576)
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    x = (torch.randn(n, d, generator=g) * torch.logspace(0, 1, d)) @ q.T + 0.3  # cond ~ 100, a mean
    x64 = x.double()
    repeat = 2 if quick else 3
    t_base = best_time(lambda: x64.T @ x64, repeat=repeat)
    t_fit = best_time(lambda: AIPMetric.fit(x), repeat=repeat)
    return measured(t_fit, t_base, 1.5, "lower", n=n, d=d, threads=torch.get_num_threads())


def bench_tsae_aip_step(quick: bool = False) -> dict:
    """One ``tsae_aip`` training step vs SAELens ``jumprelu`` (same width, batch, process).

    Full size: ``d_in=576`` (SmolLM2-135M), ``d_sae=2304`` (4x), batch 4096 (SAELens's default
    ``train_batch_size_tokens``); ``quick``: 64 / 256 / 256. Both run ``SAETrainer._train_step``
    (forward, loss, backward, clip, Adam) on the same batch, timed in alternating rounds (best of
    each) so load drifts hit both alike; the metric is estimated before timing and its cost is
    reported separately (``metric_fit_s`` on ``metric_fit_rows`` rows).
    """
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    from sae_atoms.models import resolve_device
    from sae_atoms.saes.tsae_aip import TSAEAIPTrainingSAE, TSAEAIPTrainingSAEConfig

    d, width, batch = (64, 256, 256) if quick else (576, 2304, 4096)
    dev = resolve_device(None)
    torch.manual_seed(0)
    mix = torch.eye(d) + torch.randn(d, d) / math.sqrt(d) * 0.5
    data = (torch.randn(4 * batch, d) @ mix + 0.5).to(dev)
    x = data[:batch]
    tcfg = _trainer_config(batch, dev)
    jr = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=d, d_sae=width, device=str(dev)))
    ta = TSAEAIPTrainingSAE(TSAEAIPTrainingSAEConfig(d_in=d, d_sae=width, device=str(dev)))
    t0 = time.perf_counter()
    ta.fit_metric(data)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    fit_s = time.perf_counter() - t0
    t_ta, t_jr = _step_times(ta, jr, x, tcfg, quick)
    return measured(t_ta, t_jr, 1.05, "lower", metric_fit_s=fit_s, metric_fit_rows=int(data.shape[0]),
                    metric_fit_in_steps=fit_s / t_jr, d_in=d, d_sae=width, batch=batch, device=str(dev))


def _step_times(ours: Any, base: Any, x: torch.Tensor, tcfg: Any, quick: bool) -> tuple[float, float]:
    """Best times of one ``SAETrainer._train_step`` of ``ours`` and of ``base`` on the batch ``x``."""
    from sae_lens.training.sae_trainer import SAETrainer

    tr_o, tr_b = SAETrainer(cfg=tcfg, sae=ours, data_provider=iter(())), SAETrainer(cfg=tcfg, sae=base, data_provider=iter(()))
    return _alternating(lambda: tr_o._train_step(ours, x), lambda: tr_b._train_step(base, x), quick)


def _alternating(ours: Callable[[], object], base: Callable[[], object], quick: bool) -> tuple[float, float]:
    """Best times of ``ours()`` and ``base()`` timed in alternating rounds (so load drifts hit both alike)."""
    t_o = t_b = float("inf")
    rounds, repeat = (2, 2) if quick else (4, 3)
    for r in range(rounds):
        t_b = min(t_b, best_time(base, repeat=repeat, warmup=1 if r == 0 else 0))
        t_o = min(t_o, best_time(ours, repeat=repeat, warmup=1 if r == 0 else 0))
    return t_o, t_b


def bench_runner_step(quick: bool = False) -> dict:
    """``tsae_aip``'s step vs ``jumprelu``'s inside one SAELens ``MultiSAETrainer`` (one stream).

    The token frontier's shape: ``d_in=576``, ``d_sae=2304`` (4x), 512 tokens a step; ``quick``:
    64 / 256 / 256. Each SAE's step is the coordinator's own per-SAE call, ``trainers[name].step``
    (activation scaler, forward, loss, backward, clip, Adam, sparsity tracking), on the same batch.
    """
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer

    from sae_atoms.saes.tsae_aip import TSAEAIPTrainingSAE, TSAEAIPTrainingSAEConfig

    d, width, batch = (64, 256, 256) if quick else (576, 2304, 512)
    torch.manual_seed(0)
    data = torch.randn(8 * batch, d) @ (torch.eye(d) + torch.randn(d, d) / math.sqrt(d) * 0.5) + 0.5
    ta = TSAEAIPTrainingSAE(TSAEAIPTrainingSAEConfig(d_in=d, d_sae=width))
    ta.fit_metric(data)
    saes = {"atoms": ta, "jumprelu": JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=d, d_sae=width))}
    hook = "blocks.0.hook_resid_post"
    multi = MultiSAETrainer(_trainer_config(batch, torch.device("cpu")), saes, dict.fromkeys(saes, hook),
                            iter(()))
    x = data[:batch]
    t_ta, t_jr = _alternating(lambda: multi.trainers["atoms"].step(x), lambda: multi.trainers["jumprelu"].step(x), quick)
    return measured(t_ta, t_jr, 1.05, "lower", d_in=d, d_sae=width, batch=batch, trainer="MultiSAETrainer")


def bench_stability_step(quick: bool = False) -> dict:
    """One ``tsae_aip`` step with the stability objective (``coactive``, default rows) vs without.

    The frontier's size: ``d_in=576``, 1x width, batch 256, L0 about 16 (thresholds set on the
    batch); ``quick``: 64 / 64 / 256. Target ratio <= 1.2 (issue: the objective's budget).
    """
    from sae_atoms.saes.tsae_aip import TSAEAIPTrainingSAE, TSAEAIPTrainingSAEConfig
    from sae_atoms.training import calibrate_thresholds

    d, width, batch = (64, 64, 256) if quick else (576, 576, 256)
    dev = torch.device("cpu")
    torch.manual_seed(0)
    data = torch.randn(4 * batch, d) @ (torch.eye(d) + torch.randn(d, d) / math.sqrt(d) * 0.5)
    saes = []
    for coef in (1.0, 0.0):
        sae = TSAEAIPTrainingSAE(TSAEAIPTrainingSAEConfig(d_in=d, d_sae=width, stability_coefficient=coef))
        sae.fit_metric(data)
        calibrate_thresholds(sae, data, min(16.0, width / 4))
        saes.append(sae)
    t_on, t_off = _step_times(saes[0], saes[1], data[:batch], _trainer_config(batch, dev), quick)
    return measured(t_on, t_off, 1.2, "lower", d_in=d, d_sae=width, batch=batch, design="coactive")


def _trainer_config(batch: int, dev: torch.device):
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    return SAETrainerConfig(total_training_samples=10**9, train_batch_size_samples=batch, device=str(dev), lr_end=3e-5,
                            logger=LoggingConfig(log_to_wandb=False))


def _median_time(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _competitors(n: int) -> list:
    import subprocess
    import sys

    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def bench_under_load(quick: bool = False) -> dict:
    """A ``tsae`` training step with two CPU-bound competitor processes / the same step without them.

    The case starts the competitors itself (busy loops) and stops them; the thread count is
    ``sae_atoms.threads.choose_threads()`` in both phases (it sees the competitors as runnable
    processes). Median step times; target loaded / idle <= 2.5 (the fair share is about 2x).
    """
    from sae_lens.training.sae_trainer import SAETrainer

    from sae_atoms.saes.tsae import TSAETrainingSAE, TSAETrainingSAEConfig
    from sae_atoms.threads import choose_threads

    d, width, batch = (64, 256, 512) if quick else (576, 2304, 1024)
    dev = torch.device("cpu")
    torch.manual_seed(0)
    x = torch.randn(batch, d)
    sae = TSAETrainingSAE(TSAETrainingSAEConfig(d_in=d, d_sae=width))
    trainer = SAETrainer(cfg=_trainer_config(batch, dev), sae=sae, data_provider=iter(()))
    repeat = 5 if quick else 15
    before = torch.get_num_threads()
    try:
        idle_threads = choose_threads()
        torch.set_num_threads(idle_threads)
        t_idle = _median_time(lambda: trainer._train_step(sae, x), repeat)
        procs = _competitors(2)
        try:
            time.sleep(1.0)
            loaded_threads = choose_threads()
            torch.set_num_threads(loaded_threads)
            t_loaded = _median_time(lambda: trainer._train_step(sae, x), repeat)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    finally:
        torch.set_num_threads(before)
    return measured(t_loaded, t_idle, 2.5, "lower", idle_threads=idle_threads, loaded_threads=loaded_threads,
                    competitors=2, d_in=d, d_sae=width, batch=batch)


def bench_coherence(quick: bool = False) -> dict:
    """Blocked coherence (max + histogram) at N = 16,384, d = 576 vs the same blocked products.

    The baseline does exactly the upper-triangle block products ``Dn[I] @ Dn[J].T`` that
    :func:`coherence` does, with nothing else; ``ratio = t(coherence) / t(products)``.
    """
    from sae_atoms.evals import coherence, coherence_block_size
    from sae_atoms.models import resolve_device

    N, d = (4096, 576) if quick else (16384, 576)
    dev = resolve_device(None)
    g = torch.Generator().manual_seed(0)
    D = torch.randn(N, d, generator=g).to(dev)
    B = coherence_block_size(N, d)
    Dn = D / D.norm(dim=1, keepdim=True)
    starts = list(range(0, N, B))

    def baseline() -> None:
        acc = 0.0
        for i in starts:
            for j in starts:
                if j >= i:
                    acc += float((Dn[i:i + B] @ Dn[j:j + B].T)[0, 0])

    def ours() -> None:
        coherence(D, device=dev, block=B)

    t_base = best_time(baseline, repeat=2 if quick else 3)
    t_ours = best_time(ours, repeat=2 if quick else 3)
    return measured(t_ours, t_base, 1.3, "lower", N=N, d=d, block=B, device=str(dev))


def bench_aip_stream(quick: bool = False) -> dict:
    """``fit-metric``'s streaming (``MomentStream.run``: corpus, tokenising, packing, forward with
    hooks, float64 moments) vs the bare ``model(tokens, stop_at_layer)`` over the same token rows.

    Hooks: ``blocks.12.hook_resid_post`` and ``blocks.12.mlp.hook_post`` (d 576 and 1536); 16 rows
    of 256 tokens in batches of 8 (``quick``: 4 rows of 64 in batches of 2). Ratio: throughput
    (baseline time / ours), target >= 0.9.
    """
    from sae_atoms.corpus import MomentStream, load_corpus, packed_rows
    from sae_atoms.models import load_model

    model = load_model("smollm2-135m")
    hooks = ["blocks.12.hook_resid_post", "blocks.12.mlp.hook_post"]
    n_rows, ctx, bs = (4, 64, 2) if quick else (16, 256, 8)
    corpus = load_corpus()
    probe = MomentStream(model, hooks, corpus.documents, n_rows * ctx, context_size=ctx, batch_size=bs)
    rows = list(packed_rows(corpus.documents(), probe.tokenize, ctx, probe.bos_id))[:n_rows]
    batches = [torch.tensor(rows[i:i + bs], device=model.cfg.device) for i in range(0, n_rows, bs)]

    def baseline() -> None:
        with torch.no_grad():
            for t in batches:
                model(t, return_type=None, stop_at_layer=13)

    def ours() -> None:
        MomentStream(model, hooks, corpus.documents, n_rows * ctx, context_size=ctx, batch_size=bs).run()

    rounds = 2 if quick else 3
    ours()  # warm-up
    t_base = t_ours = math.inf
    for _ in range(rounds):  # alternating rounds: load drifts hit both alike
        t_base = min(t_base, best_time(baseline, repeat=1, warmup=0))
        t_ours = min(t_ours, best_time(ours, repeat=1, warmup=0))
    return measured(t_ours, t_base, 0.9, "higher", tokens=n_rows * ctx, hooks=hooks,
                    tokens_per_s_ours=n_rows * ctx / t_ours, tokens_per_s_baseline=n_rows * ctx / t_base,
                    threads=torch.get_num_threads())


def bench_steer_batched(quick: bool = False) -> dict:
    """The steering sweep's resumes stacked, each row run from the first position its edit changed
    (``experiments.steering.prompts.run_jobs``: prefix reuse) vs one kept batch a pass, whole
    (``max_rows=0``: ``Prompts.run`` per target, the path before stacking).

    SmolLM2-135M from ``blocks.12.hook_resid_post``: per target an evaluation set (8 prompts) and
    the unrelated set (16), a direction added at 4 strengths, 8 targets (``quick``: 3 targets,
    4 + 8 prompts, 2 strengths); each run reduced to its per-prompt KL as the search does.
    Ratio: throughput (baseline time / ours), target >= 3. The study's module is loaded by
    name, as the CLI loads it (the library never imports ``experiments``).
    """
    import importlib

    from sae_atoms.data import fact_prompts, reasoning_prompts
    from sae_atoms.models import load_model
    from sae_atoms.steering import AddDirection

    pr = importlib.import_module("sae_atoms.experiments.steering.prompts")
    search = importlib.import_module("sae_atoms.experiments.steering.search")
    model = load_model("smollm2-135m")
    hook = "blocks.12.hook_resid_post"
    n_targets, n_eval, n_unrel, strengths = (3, 4, 8, (1.0, 2.0)) if quick else (8, 8, 16, (1.0, 2.0, 3.0, 4.0))
    rows = [r for r in fact_prompts(n_cities=150, relations=["city_country"]).to_list() if r["split"] == "heldout"]
    unrel = [r for r in reasoning_prompts(200, seed=0).to_list() if r["split"] == "heldout"][:n_unrel]
    evals = [pr.Prompts(model, rows[i * n_eval:(i + 1) * n_eval], 32, hook) for i in range(n_targets)]
    U = pr.Prompts(model, unrel, 32, hook)
    g = torch.Generator().manual_seed(0)
    dirs = [torch.randn(model.cfg.d_model, generator=g) * 3 for _ in range(n_targets)]

    def job(P, v: int, s: float):
        make = lambda pos, rows: [AddDirection(hook, dirs[v], s, positions=pos)]  # noqa: E731
        return pr.Job(P, make, lambda lp, rows: search.kl(P.clean[rows], lp))

    jobs = [job(P, v, s) for s in strengths for v in range(n_targets) for P in (evals[v], U)]
    repeat = 1 if quick else 2
    t_base = best_time(lambda: pr.run_jobs(jobs, max_rows=0), repeat=repeat)
    t_ours = best_time(lambda: pr.run_jobs(jobs), repeat=repeat)
    return measured(t_ours, t_base, 3.0, "higher", jobs=len(jobs), rows=sum(len(j.prompts) for j in jobs),
                    max_rows=pr.RESUME_ROWS, threads=torch.get_num_threads())


def bench_model_forward(quick: bool = False) -> dict:
    """A forward pass of the embedded model over a small batch (8 rows x 1 token: the size of a
    generation step or a steering resume) with the weights as ``load_model`` keeps them
    (``sae_atoms.transposes``) vs TransformerLens's own layout, whose every pass copies the MLP and
    unembedding transposes. Ratio: speed-up (baseline / ours), target >= 1.5."""
    from sae_atoms.models import load_model
    from sae_atoms.transposes import WEIGHTS, keep_transposes

    model = load_model("smollm2-135m")
    toks = torch.randint(0, 1000, (8, 1), generator=torch.Generator().manual_seed(0)).to(model.cfg.device)
    kept = [getattr(m, n) for m in model.modules() for n in WEIGHTS.get(type(m).__name__, ())]
    repeat = 3 if quick else 7
    with torch.no_grad():
        t_ours = best_time(lambda: model(toks), repeat=repeat)
        for w in kept:
            w.data = w.data.contiguous()
        t_base = best_time(lambda: model(toks), repeat=repeat)
        keep_transposes(model)
    return measured(t_ours, t_base, 1.5, "higher", rows=8, tokens=1, weights=len(kept), threads=torch.get_num_threads())


def bench_corpus_read(quick: bool = False) -> dict:
    """Reading ``human-en``'s documents from the installed packages (parsing, cutting, splitting) vs
    tokenising the same texts with SmolLM2's tokenizer: the reading must stay a small part of the
    text side of a token stream (the forward passes behind it are slower still).

    The whole train split (``quick``: the first 60 documents of each source, where the per-source
    lookup of the installed files weighs more). Ratio: time (ours / baseline), target <= 0.25.
    """
    import itertools

    from transformers import AutoTokenizer

    from sae_atoms import human_en
    from sae_atoms.models import embedded_model_path

    tok = AutoTokenizer.from_pretrained(str(embedded_model_path()))
    per_source = 60 if quick else None

    def ours() -> list[str]:
        return [t for src in human_en.SOURCES for _, t in human_en.split_documents(
            itertools.islice(((f"{src.name}/{k}", t) for k, t in src.read(human_en.source_files(src))), per_source),
            "train")]

    texts = ours()

    def baseline() -> None:
        for t in texts:
            tok(t, add_special_tokens=False)

    t_base = best_time(baseline, repeat=2 if quick else 1, warmup=1 if quick else 0)
    t_ours = best_time(ours, repeat=3 if quick else 2)
    return measured(t_ours, t_base, 0.25, "lower", documents=len(texts), characters=sum(map(len, texts)))


# case name -> function
CASES: dict[str, Callable[..., dict]] = {
    "extract_subject": bench_extract_subject,
    "aip_fit": bench_aip_fit,
    "tsae_aip_step": bench_tsae_aip_step,
    "runner_step": bench_runner_step,
    "stability_step": bench_stability_step,
    "coherence": bench_coherence,
    "aip_stream": bench_aip_stream,
    "under_load": bench_under_load,
    "steer_batched": bench_steer_batched,
    "corpus_read": bench_corpus_read,
    "model_forward": bench_model_forward,
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
