"""Bench cases of the SAE side: the metric's fit, training steps (alone, in SAELens's
``MultiSAETrainer``, with the stability objective, under load), matching L0, coherence, the
frontier's SAEs in worker processes, and N SAEs stepped as one stacked model. Each is
``bench_<case>(quick) -> dict`` (``timing.measured``)."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from sae_atoms.bench import timing


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
    t_base = timing.best_time(lambda: x64.T @ x64, repeat=repeat)
    t_fit = timing.best_time(lambda: AIPMetric.fit(x), repeat=repeat)
    return timing.measured(t_fit, t_base, 1.5, "lower", n=n, d=d, threads=torch.get_num_threads())


def bench_tsae_aip_step(quick: bool = False) -> dict:
    """One ``tsae_aip`` training step vs SAELens ``jumprelu`` (same width, batch, process).

    Full size: ``d_in=576`` (SmolLM2-135M), ``d_sae=2304`` (4x), batch 4096 (SAELens's default
    ``train_batch_size_tokens``); ``quick``: 64 / 256 / 256. Both run ``SAETrainer._train_step``
    (forward, loss, backward, clip, Adam) on the same batch, timed in alternating calls (median of
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
    return timing.measured(t_ta, t_jr, 1.05, "lower", metric_fit_s=fit_s, metric_fit_rows=int(data.shape[0]),
                    metric_fit_in_steps=fit_s / t_jr, d_in=d, d_sae=width, batch=batch, device=str(dev))


def _step_times(ours: Any, base: Any, x: torch.Tensor, tcfg: Any, quick: bool, steps: int = 1) -> tuple[float, float]:
    """Best times of ``steps`` consecutive ``SAETrainer._train_step`` calls (the step counter
    advancing, as in training) of ``ours`` and of ``base`` on the batch ``x``."""
    from sae_lens.training.sae_trainer import SAETrainer

    def run(sae: Any) -> Callable[[], None]:
        tr = SAETrainer(cfg=tcfg, sae=sae, data_provider=iter(()))

        def call() -> None:
            for _ in range(steps):
                tr._train_step(sae, x)
                tr.n_training_steps += 1
        return call

    return timing.alternating(run(ours), run(base), quick)


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
    t_ta, t_jr = timing.alternating(lambda: multi.trainers["atoms"].step(x), lambda: multi.trainers["jumprelu"].step(x), quick)
    return timing.measured(t_ta, t_jr, 1.05, "lower", d_in=d, d_sae=width, batch=batch, trainer="MultiSAETrainer")


def bench_stability_step(quick: bool = False) -> dict:
    """One ``tsae_aip`` step with the stability objective vs without, in both geometries it reads:
    the SAE's own (``"sae"``: the default config's objective at weight 1) and the full AIP from the
    atoms' partial whitening (``"aip"``: the frontier's ``atoms_stable`` config, the same config at
    weight 0 as the baseline). The ratio is the larger of the two (each is reported).

    The frontier's size: ``d_in=576``, 1x width, batch 256, L0 about 16 (thresholds set on the
    batch); ``quick``: 64 / 64 / 256. Target ratio <= 1.2 (issue: the objective's budget).
    """
    from sae_atoms.units import unit_config

    d, width, batch = (64, 64, 256) if quick else (576, 576, 256)
    torch.manual_seed(0)
    data = torch.randn(4 * batch, d) @ (torch.eye(d) + torch.randn(d, d) / math.sqrt(d) * 0.5)
    stable = unit_config("atoms_stable", d, width, 16.0).to_dict()
    times = {"sae": _stability_times(data, batch, quick, {"d_in": d, "d_sae": width, "stability_coefficient": 1.0}),
             "aip": _stability_times(data, batch, quick, stable)}
    g = max(times, key=lambda k: times[k][0] / times[k][1])
    return timing.measured(*times[g], 1.2, "lower", d_in=d, d_sae=width, batch=batch, geometry=g,
                           stability_every=stable["stability_every"], **{f"ratio_{k}": t[0] / t[1] for k, t in times.items()})


def _stability_times(data: torch.Tensor, batch: int, quick: bool, cfg: dict[str, Any]) -> tuple[float, float]:
    """Step times of ``tsae_aip`` with the config dict ``cfg`` as it is and with its objective at 0,
    thresholds set for L0 about 16 (per ``stability_every`` steps: its cost amortised)."""
    from sae_atoms.saes.tsae_aip import TSAEAIPTrainingSAE, TSAEAIPTrainingSAEConfig
    from sae_atoms.training import calibrate_thresholds

    saes = []
    for coef in (cfg["stability_coefficient"], 0.0):
        sae = TSAEAIPTrainingSAE(TSAEAIPTrainingSAEConfig.from_dict(cfg | {"stability_coefficient": coef}))
        sae.fit_metric(data)
        calibrate_thresholds(sae, data, min(16.0, sae.cfg.d_sae / 4))
        saes.append(sae)
    return _step_times(saes[0], saes[1], data[:batch], _trainer_config(batch, torch.device("cpu")), quick,
                       steps=saes[0].cfg.stability_every)  # an objective every n-th step: n steps a call


def _trainer_config(batch: int, dev: torch.device):
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    return SAETrainerConfig(total_training_samples=10**9, train_batch_size_samples=batch, device=str(dev), lr_end=3e-5,
                            logger=LoggingConfig(log_to_wandb=False))


def _competitors(n: int) -> list:
    import subprocess
    import sys

    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _times_on(step: Callable[[], object], repeat: int, counts: tuple[int, ...]) -> dict[int, float]:
    """Median times of ``step`` on each thread count of ``counts`` (once each, in their order)."""
    times: dict[int, float] = {}
    for n in dict.fromkeys(counts):
        torch.set_num_threads(n)
        times[n] = timing.median_time(step, repeat)
    return times


def bench_under_load(quick: bool = False) -> dict:
    """A ``tsae`` training step with two CPU-bound competitor processes / the same step without them.

    The case starts the competitors itself (busy loops) and stops them; the thread count is
    ``sae_atoms.threads.choose_threads()`` in both phases (it sees the competitors as runnable
    processes). Median step times of each phase, in ``rounds`` rounds (idle, then loaded, with new
    competitors each round); the round with the median ratio is reported (``rounds`` holds every
    round's). Why rounds: where the scheduler puts the competitors and our threads changes from one
    start to the next, and with it the loaded step time, so one round's ratio is a noisy draw.
    Target loaded / idle <= 2.2; the fair share is about 2x (our threads get half of the runnable
    threads' CPU time). When ``choose_threads`` gives up threads under load, each loaded round also
    times the step on the idle phase's thread count, in alternating order (``ratio_idle_threads``,
    ``rounds_idle_threads``): the trade its cut makes (one thread gets 2/3 of a core beside two
    competitors; two threads get more, and lose it at every operation's barrier when a partner
    waits for its core), read on this step.
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
    repeat, rounds = (5, 1) if quick else (15, 5)
    # the same step as two functions: a phase's times are told apart by which function they timed
    idle_step = lambda: trainer._train_step(sae, x)  # noqa: E731
    loaded_step = lambda: trainer._train_step(sae, x)  # noqa: E731
    before, pairs, kept = torch.get_num_threads(), [], []
    try:
        for r in range(rounds):
            idle_threads = choose_threads()
            torch.set_num_threads(idle_threads)
            t_idle = timing.median_time(idle_step, repeat)
            procs = _competitors(2)
            try:
                time.sleep(1.0)
                loaded_threads = choose_threads()
                order = (loaded_threads, idle_threads) if r % 2 == 0 else (idle_threads, loaded_threads)
                times = _times_on(loaded_step, repeat, order)  # the cut's count first in even rounds
                pairs.append((times[loaded_threads], t_idle))
                if loaded_threads != idle_threads:
                    kept.append(times[idle_threads] / t_idle)
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    finally:
        torch.set_num_threads(before)
    t_loaded, t_idle = sorted(pairs, key=lambda p: p[0] / p[1])[len(pairs) // 2]
    extra = ({"ratio_idle_threads": sorted(kept)[len(kept) // 2], "rounds_idle_threads": [round(k, 3) for k in kept]}
             if kept else {})
    return timing.measured(t_loaded, t_idle, 2.2, "lower", idle_threads=idle_threads, loaded_threads=loaded_threads,
                           competitors=2, d_in=d, d_sae=width, batch=batch,
                           rounds=[round(a / b, 3) for a, b in pairs], **extra)


def bench_match_l0(quick: bool = False) -> dict:
    """``training.match_l0`` (the pre-activations' matrix product once, ``training.l0_counter``) vs the
    same bisection encoding the rows at every step (``max_cached=0``), on a jumprelu SAE as wide as
    the rows are many, as in the paper regime (4,096 rows of d 576; ``quick``: 512 of 64), matched
    to L0 2 from thresholds that give far more. Ratio: time / baseline time, target <= 0.5.
    """
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig

    from sae_atoms.training import match_l0

    n, d = (512, 64) if quick else (4096, 576)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g) + 0.3
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d, d_sae=n))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, n, generator=g) / math.sqrt(d))
        sae.threshold.fill_(0.5)
    start = sae.threshold.detach().clone()
    factor: dict[int, float] = {}  # each path's threshold factor, from its timed runs

    def matched(max_cached: int) -> Callable[[], float]:
        def run() -> float:
            sae.threshold.data.copy_(start)
            factor[max_cached] = match_l0(sae, x, 2.0, max_cached=max_cached)
            return factor[max_cached]
        return run

    repeat = 2 if quick else 3
    t_base = timing.best_time(matched(0), repeat=repeat)
    t_ours = timing.best_time(matched(2 ** 26), repeat=repeat)
    same = factor[0] == factor[2 ** 26]  # the same threshold factor: the counts are encode's
    return timing.measured(t_ours, t_base, 0.5, "lower", n=n, d=d, d_sae=n, same_factor=same,
                           threads=torch.get_num_threads())


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

    t_base = timing.best_time(baseline, repeat=2 if quick else 3)
    t_ours = timing.best_time(ours, repeat=2 if quick else 3)
    return timing.measured(t_ours, t_base, 1.3, "lower", N=N, d=d, block=B, device=str(dev))


def bench_frontier_together(quick: bool = False) -> dict:
    """The frontier's SAEs in worker processes, one torch thread each (``run_frontier``'s default,
    ``sae_atoms.workers``) vs the same SAEs one after the other in this process with its threads.

    The frontier's shape: d 576, 1x width, batch 256, 200 steps, units ``atoms`` and
    ``features_topk`` at L0 8 and 16 (4 SAEs) on correlated Gaussian rows with a mean (``quick``:
    d 64, 100 steps). Training, L0 matching, evaluation and nothing saved. Ratio: throughput
    (baseline time / ours), target >= 3. The study's module is loaded by name, as the CLI loads it.
    """
    import importlib

    from sae_atoms.threads import choose_threads
    from sae_atoms.workers import choose_workers

    frontier = importlib.import_module("sae_atoms.experiments.frontier")
    d, steps = (64, 100) if quick else (576, 200)
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(d, d, generator=g) / math.sqrt(d)
    train, held = (torch.randn(n, d, generator=g) @ mix + 0.3 for n in (4000, 1000))
    cfg = frontier.FrontierConfig(targets=(8.0, 16.0), units=("atoms", "features_topk"), steps=steps)
    n_jobs = len(cfg.targets) * len(cfg.units)
    workers = choose_workers(None, n_jobs)
    run = lambda w: frontier.run_frontier(train, held, "h", cfg, workers=w, progress=False)  # noqa: E731
    t_base = timing.best_time(lambda: run(1), repeat=1, warmup=0)
    t_ours = timing.best_time(lambda: run(workers), repeat=1, warmup=0)
    return timing.measured(t_ours, t_base, 3.0, "higher", saes=n_jobs, workers=workers, baseline_threads=choose_threads(),
                    d_in=d, d_sae=d, steps=steps, batch=cfg.batch_size)


def bench_stacked_step(quick: bool = False) -> dict:
    """N ``standard`` SAEs of one shape stepped as one stacked model vs SAELens's ``SAETrainer`` steps
    of N such SAEs one after the other: the most a stacked trainer (the same SAEs' steps as batched
    matrix products) could gain over training them in turn, on this machine.

    Ours: ``baddbmm`` encode and decode of all N at once, the standard loss (squared error plus the
    L1 of decoder-norm-weighted codes), one Adam (``foreach``) over the stacked weights, and gradient
    clipping at 1 per SAE, as SAELens clips each SAE. It pays where per-SAE overhead dominates a step
    (small shapes, or an accelerator's launch cost); at the frontier's shape on a CPU the products and
    Adam's element-wise passes are most of a step, and N SAEs cost N times them either way.
    Shape: d 576, 1x width, batch 256, N 4 (``quick``: d 64). Ratio: throughput (baseline time /
    ours), target >= 3, the frontier's target for training SAEs together (``frontier_together``).
    """
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    d, n, batch = (64 if quick else 576), 4, 256
    torch.manual_seed(0)
    x = torch.randn(batch, d)
    saes = [StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=d)) for _ in range(n)]
    tcfg = _trainer_config(batch, torch.device("cpu"))
    stacked = _stacked_step([s.W_enc for s in saes], [s.W_dec for s in saes], x)
    t_ours, t_base = timing.alternating(stacked, _turns(saes, tcfg, x), quick)
    return timing.measured(t_ours, t_base, 3.0, "higher", saes=n, d_in=d, d_sae=d, batch=batch, threads=torch.get_num_threads())


def _turns(saes: list, tcfg: Any, x: torch.Tensor) -> Callable[[], None]:
    """One ``SAETrainer._train_step`` of each SAE, one after the other."""
    from sae_lens.training.sae_trainer import SAETrainer

    trainers = [SAETrainer(cfg=tcfg, sae=s, data_provider=iter(())) for s in saes]

    def turns() -> None:
        for t, s in zip(trainers, saes):
            t._train_step(s, x)
    return turns


def _stacked_step(enc: list, dec: list, x: torch.Tensor, l1: float = 1.0) -> Callable[[], None]:
    """One step of the SAEs with encoders ``enc`` and decoders ``dec`` (copies, stacked [N, ., .])."""
    n, d_sae = len(enc), enc[0].shape[1]
    W_enc, W_dec = (torch.stack([w.detach() for w in ws]).requires_grad_() for ws in (enc, dec))
    b_enc, b_dec = (torch.zeros(n, 1, w.shape[-1], requires_grad=True) for w in (W_enc, W_dec))
    params = [W_enc, W_dec, b_enc, b_dec]
    opt = torch.optim.Adam(params, lr=1e-4, foreach=True)

    def step() -> None:
        acts = torch.relu(torch.baddbmm(b_enc, x - b_dec, W_enc))            # [N, batch, d_sae]
        err = (torch.baddbmm(b_dec, acts, W_dec) - x).pow(2).sum(-1).mean(-1)  # [N]
        sparsity = (acts * W_dec.norm(dim=-1).view(n, 1, d_sae)).sum(-1).mean(-1)
        (err + l1 * sparsity).sum().backward()
        with torch.no_grad():  # clip each SAE's gradient norm at 1 (SAETrainer clips each SAE alone)
            norm = torch.stack([p.grad.reshape(n, -1).norm(dim=1) for p in params]).norm(dim=0)
            scale = (1.0 / (norm + 1e-6)).clamp(max=1.0)
            for p in params:
                p.grad.mul_(scale.view(n, *[1] * (p.dim() - 1)))
        opt.step()
        opt.zero_grad()
    return step
