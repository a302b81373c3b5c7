"""Massive activations: the rare tokens whose residual norm is tens to hundreds of times the median.

Language models turn a few tokens into attention sinks with a huge residual norm (Sun et al. 2024,
"Massive Activations in Large Language Models"). In SmolLM2-135M, besides BOS (a special token the
runners already drop), the first token after BOS is often one when a row starts mid-sentence. A
handful of them can hold most of a token stream's squared norm, so they weigh most in an SAE's MSE
loss and in explained variance's denominator. SAEBench's activation collection masks tokens whose
norm exceeds ``MASSIVE_RATIO`` times the median of their batch; the same rule is used here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

MASSIVE_RATIO = 10.0  # a token is massive when its norm > MASSIVE_RATIO x the median norm (SAEBench's rule)


def typical(x: Tensor, ratio: float = MASSIVE_RATIO) -> Tensor:
    """Boolean mask ``[n]`` of the rows of ``x`` ``[n, d]`` whose norm is at most ``ratio`` times the
    median row norm (all True for an empty ``x``)."""
    norms = x.float().norm(dim=-1)
    return norms <= ratio * norms.median() if len(norms) else torch.ones(0, dtype=torch.bool)


def massive_share(x: Tensor, ratio: float = MASSIVE_RATIO) -> dict[str, float]:
    """How many rows of ``x`` are massive (``frac``) and what share of the summed squared norm they hold
    (``sq_norm_share``): the weight they carry in an MSE or an explained variance."""
    sq = x.float().pow(2).sum(-1)
    mask = ~typical(x, ratio)
    return {"frac": float(mask.float().mean()), "sq_norm_share": float(sq[mask].sum() / sq.sum())}


def drop_massive_tokens(store: Any, ratio: float = MASSIVE_RATIO) -> None:
    """Make a SAELens ``ActivationsStore`` leave massive tokens out of every batch it reads from the
    model (after special tokens, before its mixing buffer, so training batches keep their size).
    In a multi-hook store a token is left out when it is massive at any of the hooks."""
    single, multi = store.get_filtered_llm_batch, store._get_filtered_multi_hook_llm_batch

    def get_filtered_llm_batch(*args: Any, **kwargs: Any) -> Tensor:
        acts = single(*args, **kwargs)
        return acts[typical(acts.reshape(acts.shape[0], -1), ratio)]

    def get_filtered_multi_hook_llm_batch(*args: Any, **kwargs: Any) -> dict[str, Tensor]:
        acts = multi(*args, **kwargs)
        keep = torch.stack([typical(a.reshape(a.shape[0], -1), ratio) for a in acts.values()]).all(0)
        return {h: a[keep] for h, a in acts.items()}

    store.get_filtered_llm_batch = get_filtered_llm_batch
    store._get_filtered_multi_hook_llm_batch = get_filtered_multi_hook_llm_batch
