"""Bench cases on the embedded model (SmolLM2-135M): subject-token extraction, the metric's
token stream, batched steering, a small forward pass, and reading the corpus. Each is
``bench_<case>(quick) -> dict`` (``timing.measured``)."""

from __future__ import annotations

import math

import torch

from sae_atoms.bench import timing


def bench_extract_subject(quick: bool = False) -> dict:
    """Subject-position extraction throughput / bare ``model(tokens, stop_at_layer)`` throughput.

    The baseline runs the whole prompts, sorted and padded as extraction batches them, through the
    truncated model with no hooks; extraction runs each prompt only up to its subject's last token.
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
    t_base, t_ours = timing.best_time(baseline, repeat=repeat), timing.best_time(ours, repeat=repeat)
    return timing.measured(t_ours, t_base, 1.3, "higher", n_prompts=len(ds), hook=hook,
                    note="throughput ratio (baseline time / extraction time); baseline: whole prompts, no hooks")


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
        t_base = min(t_base, timing.best_time(baseline, repeat=1, warmup=0))
        t_ours = min(t_ours, timing.best_time(ours, repeat=1, warmup=0))
    return timing.measured(t_ours, t_base, 0.9, "higher", tokens=n_rows * ctx, hooks=hooks,
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
    t_base = timing.best_time(lambda: pr.run_jobs(jobs, max_rows=0), repeat=repeat)
    t_ours = timing.best_time(lambda: pr.run_jobs(jobs), repeat=repeat)
    return timing.measured(t_ours, t_base, 3.0, "higher", jobs=len(jobs), rows=sum(len(j.prompts) for j in jobs),
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
        t_ours = timing.best_time(lambda: model(toks), repeat=repeat)
        for w in kept:
            w.data = w.data.contiguous()
        t_base = timing.best_time(lambda: model(toks), repeat=repeat)
        keep_transposes(model)
    return timing.measured(t_ours, t_base, 1.5, "higher", rows=8, tokens=1, weights=len(kept), threads=torch.get_num_threads())


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

    t_base = timing.best_time(baseline, repeat=2 if quick else 1, warmup=1 if quick else 0)
    t_ours = timing.best_time(ours, repeat=3 if quick else 2)
    return timing.measured(t_ours, t_base, 0.25, "lower", documents=len(texts), characters=sum(map(len, texts)))
