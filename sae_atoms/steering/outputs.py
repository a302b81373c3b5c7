"""What the model outputs under interventions: next-token log-probabilities, and the gradient of a
target's log-probability with respect to a hook's activations (for selection by effect).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from sae_atoms.forward import batches
from sae_atoms.models import next_token_logits, tokenize_prompts
from sae_atoms.steering.interventions import Intervention, _resolve_hook, fwd_hooks, position_mask


def output_gradient(model, hook_name: str, ids: Sequence[Sequence[int]], positions: Sequence[int],
                    target: int, answers: Sequence[int] | None = None, span: str = "from",
                    batch_size: int = 16) -> Tensor:
    """``g = mean_i sum_{p in P_i} d [log p_i(target) - log p_i(answer_i)] / d x_{i,p}`` at ``hook_name``.

    ``P_i``: the row's position ``positions[i]`` (``span="at"``) or it and every later one
    (``"from"``); ``answers`` (one token per row, optional) make it the gradient of the margin
    over each prompt's own answer, the quantity top-1 steering must flip. Right-padded batches;
    only the last real position of each row is read. Returns ``[d]`` (float32, CPU).
    """
    if len(ids) == 0 or len(ids) != len(positions) or (answers is not None and len(answers) != len(ids)):
        raise ValueError(f"need one position (and answer) per prompt: {len(ids)} prompts, {len(positions)} positions")
    hook = _resolve_hook(model, hook_name)
    g = None
    for b in batches(model, ids, batch_size, sort=False):  # in the caller's order: the same float sums
        store: dict[str, Tensor] = {}

        def grab(act: Tensor, hook: Any = None) -> Tensor:
            store["x"] = act.detach().requires_grad_(True)
            return store["x"]

        with torch.enable_grad():
            ar = b.arange()
            lp = b.last_logits(model, [(hook, grab)]).float().log_softmax(-1)  # only the last positions unembedded
            obj = lp[:, int(target)].sum()
            if answers is not None:
                obj = obj - lp[ar, torch.tensor([int(answers[i]) for i in b.rows], device=ar.device)].sum()
            grad, = torch.autograd.grad(obj, store["x"])
        pm = position_mask(len(b.rows), grad.shape[1], [int(positions[i]) for i in b.rows], span, grad.device)
        part = (grad * pm.unsqueeze(-1).to(grad.dtype)).sum((0, 1)).float().cpu()
        g = part if g is None else g + part
    return g / len(ids)


# =========================================================================== next-token log-probabilities
def prompt_token_ids(model, prompts: Sequence[str]) -> list[list[int]]:
    """The model's token ids of each prompt (BOS prepended when the model does)."""
    return tokenize_prompts(model, list(prompts))[0]


@torch.no_grad()
def next_token_logprobs(model, ids: Sequence[Sequence[int]], positions: Sequence[int],
                        make_interventions: Callable[[list[int], list[int]], Sequence[Intervention]] | None = None,
                        batch_size: int = 32) -> Tensor:
    """Log-probabilities ``[n, vocab]`` of the next token after each prompt, under interventions.

    ``make_interventions(batch_positions, batch_rows)`` builds the interventions of one batch:
    ``batch_positions`` are the rows' ``positions`` (e.g. the subject's last token) and
    ``batch_rows`` their indices into ``ids``, in batch row order; ``None`` is the clean run.
    Right-padded batches (causal attention: padding never reaches real tokens); only the last
    real position is unembedded.
    """
    def make_hooks(rows: list[int]) -> list:
        return fwd_hooks(model, *make_interventions([int(positions[i]) for i in rows], rows))

    return next_token_logits(model, [list(x) for x in ids], make_hooks if make_interventions else None,
                             batch_size).log_softmax(-1)
