"""Batched forward passes over token lists: sort by length, right-pad, run, read positions.

Every place that runs a model over many prompts (activation extraction, next-token
log-probabilities, output gradients, the steering sweep) goes through ``batches``: token lists
are sorted by length (so padding is short), right-padded with an attention mask and moved to
the model's device. Right padding keeps every real token's position ids and, under causal
attention, keeps padding out of real tokens, so a row's activations do not depend on its batch.

``stop_layer`` is the one rule for how far a forward pass must run for a set of hooks: through
the deepest block named (TransformerLens's ``stop_at_layer`` is exclusive), or the whole model
when a hook sits after the blocks (``ln_final``, ``unembed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

LAST_POSITION_HOOK = "ln_final.hook_normalized"  # the final norm's output, before its weights


def hook_layer(hook_name: str) -> int | None:
    """The block index in a hook name like ``blocks.12.hook_resid_post`` (None for embed hooks)."""
    parts = hook_name.split(".")
    if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


def stop_layer(hooks: Sequence[str]) -> int | None:
    """``stop_at_layer`` that still runs every hook in ``hooks`` (None: run the whole model)."""
    if any(h.startswith(("ln_final", "unembed")) for h in hooks):
        return None
    deepest = max((l for l in map(hook_layer, hooks) if l is not None), default=-1)
    return deepest + 1  # 0 runs the embedding only; n_layers still skips ln_final and the unembedding


def pad_batch(ids: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into ``(tokens, attention_mask)`` of shape ``[batch, longest]``."""
    width = max(len(x) for x in ids)
    toks = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for j, x in enumerate(ids):
        toks[j, :len(x)] = torch.tensor(x)
        mask[j, :len(x)] = 1
    return toks, mask


def pad_id(model) -> int:
    """The tokenizer's pad token (0 without a tokenizer or pad token; padded positions are masked anyway)."""
    tok = getattr(model, "tokenizer", None)
    return tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@dataclass
class Batch:
    """One padded batch: ``rows`` index the caller's token lists, in batch order."""

    rows: list[int]
    tokens: torch.Tensor  # [b, T] on the model's device
    mask: torch.Tensor  # [b, T] attention mask, 1 on real tokens
    last: torch.Tensor  # [b] position of each row's last real token

    def run(self, model, hooks: Sequence = (), **kwargs):
        """``model.run_with_hooks`` on this batch (``kwargs``: ``stop_at_layer``, ``return_type``, ...)."""
        return model.run_with_hooks(self.tokens, attention_mask=self.mask, fwd_hooks=list(hooks), **kwargs)

    def arange(self) -> torch.Tensor:
        return torch.arange(len(self.rows), device=self.tokens.device)

    def last_logits(self, model, hooks: Sequence = (), resid: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Next-token logits ``[b, vocab]`` at each row's last real token.

        ``resid``: start from this residual stream instead of the tokens (with ``start_at_layer``
        in ``kwargs``). The final norm acts per position, so a hook at its normalised output keeps
        only the last positions and TransformerLens's own norm weights and unembedding run on
        those alone (``b`` positions instead of ``b * T``).
        """
        x = self.tokens if resid is None else resid
        if LAST_POSITION_HOOK not in model.hook_dict:
            return model.run_with_hooks(x, attention_mask=self.mask, fwd_hooks=list(hooks), **kwargs)[self.arange(), self.last]

        def last_only(act: torch.Tensor, hook) -> torch.Tensor:
            return act[self.arange(), self.last].unsqueeze(1)

        hooks = [*hooks, (LAST_POSITION_HOOK, last_only)]
        return model.run_with_hooks(x, attention_mask=self.mask, fwd_hooks=hooks, **kwargs)[:, 0]


def batches(model, ids: Sequence[Sequence[int]], batch_size: int, *, sort: bool = True,
            device: torch.device | str | None = None) -> Iterator[Batch]:
    """Padded batches of ``ids`` on ``device`` (default: the model's), shortest first when ``sort``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    dev = model_device(model) if device is None else torch.device(device)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i])) if sort else list(range(len(ids)))
    pad = pad_id(model)
    for k in range(0, len(order), batch_size):
        rows = order[k:k + batch_size]
        toks, mask = pad_batch([list(ids[i]) for i in rows], pad)
        last = torch.tensor([len(ids[i]) - 1 for i in rows], device=dev)
        yield Batch(rows, toks.to(dev), mask.to(dev), last)


def n_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
