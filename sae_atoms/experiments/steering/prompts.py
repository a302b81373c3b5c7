"""Prompt rows of the experiment: their token ids, subject positions and next-token log-probabilities.

At a ``blocks.L.hook_resid_post`` hook, ``Prompts`` runs the model once up to the hook and keeps
that residual stream; the clean run and every steered run then resume from it with
TransformerLens's ``start_at_layer`` (the interventions applied to the kept stream), so
blocks ``0..L`` run once per prompt set. Elsewhere (or for interventions at another hook) every
run is a full forward pass with hooks (``sae_atoms.steering.next_token_logprobs``). Right
padding with the attention mask: padding never reaches a real token, so both paths give the
same log-probabilities.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch
from torch import Tensor

from sae_atoms.activations import subject_token_positions
from sae_atoms.data import reasoning_prompts, split_of
from sae_atoms.forward import Batch, batches, hook_layer
from sae_atoms.steering import Intervention, next_token_logprobs, prompt_token_ids

MakeInterventions = Callable[[list[int], list[int]], Sequence[Intervention]]


def resid_layer(model, hook: str | None) -> int | None:
    """``L`` when ``hook`` is ``blocks.L.hook_resid_post`` of ``model`` (the fast path), else None."""
    layer = hook_layer(hook or "")
    if layer is None or hook != f"blocks.{layer}.hook_resid_post" or layer >= model.cfg.n_layers:
        return None
    return layer


class Prompts:
    """Prompt rows with their token ids, subject positions and clean log-probabilities ``clean``.

    ``run(make)`` gives the next-token log-probabilities ``[n, vocab]`` (CPU, float32) under the
    interventions ``make(batch_positions, batch_rows)`` builds for each batch (``batch_positions``:
    the rows' subject positions; ``batch_rows``: indices into ``rows``). ``sources``: each row's
    source value, which a swap ablates (set by the caller).
    """

    def __init__(self, model, rows: list[dict], batch_size: int, hook: str | None = None):
        self.model, self.rows, self.hook, self.batch_size = model, rows, hook, batch_size
        self.sources: list[str] = []
        prompts = [r["prompt"] for r in rows]
        self.ids = prompt_token_ids(model, prompts)
        self.pos = subject_token_positions(model, prompts, [r["subject_start"] for r in rows], [r["subject_end"] for r in rows])
        self.layer = resid_layer(model, hook)
        self.cached: list[tuple[Batch, Tensor]] = []
        if self.layer is not None and rows:
            with torch.no_grad():
                self.cached = [(b, model(b.tokens, attention_mask=b.mask, stop_at_layer=self.layer + 1))
                               for b in batches(model, self.ids, batch_size)]
        self.clean = self.run(None) if rows else torch.zeros(0)

    def __len__(self) -> int:
        return len(self.rows)

    def run(self, make: MakeInterventions | None) -> Tensor:
        """Next-token log-probabilities of every row under ``make``'s interventions (None: clean)."""
        out = self._resume(make) if self.cached else None
        if out is None:
            return next_token_logprobs(self.model, self.ids, self.pos, make, self.batch_size)
        return out

    def subject_resid(self) -> Tensor | None:
        """The kept residual stream at each row's subject token ``[n, d_model]`` (None off the fast path)."""
        if not self.cached:
            return None
        out = torch.empty(len(self.rows), self.model.cfg.d_model)
        for b, x in self.cached:
            out[b.rows] = x[b.arange(), torch.tensor([self.pos[i] for i in b.rows], device=x.device)].to("cpu", torch.float32)
        return out

    @torch.no_grad()
    def _resume(self, make: MakeInterventions | None) -> Tensor | None:
        """The fast path; None when an intervention sits at another hook than the kept stream."""
        out = torch.empty(len(self.rows), self.model.cfg.d_vocab)
        for b, x in self.cached:
            ivs = list(make([self.pos[i] for i in b.rows], b.rows)) if make is not None else []
            if any(iv.hook_name != self.hook for iv in ivs):
                return None
            for iv in ivs:
                x = iv.hook_fn(x)
            logits = b.last_logits(self.model, resid=x, start_at_layer=self.layer + 1)  # blocks layer+1.. only
            out[b.rows] = logits.float().log_softmax(-1).cpu()
        return out


# --------------------------------------------------------------------------- rows
def split_rows(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Validation / test halves, by subject (a subject's prompts stay together)."""
    val = [r for r in rows if split_of(r["subject"], 0.5, seed + 101) == "train"]
    test = [r for r in rows if split_of(r["subject"], 0.5, seed + 101) == "heldout"]
    return val, test


def sample(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    return rows if len(rows) <= n else rng.sample(rows, n)


def relation_rows(all_rows: list[dict], relation: str, label: str) -> list[dict]:
    """The rows of ``relation`` that have a ``label`` value."""
    return [r for r in all_rows if r["relation"] == relation and r.get(label)]


def eval_rows(all_rows: list[dict], unrelated, cfg, rng: random.Random) -> tuple[list[dict], ...]:
    """``(val_rows, test_rows, u_val, u_test)``: the validation / test halves of the relation's
    held-out rows and the unrelated prompts of each half (sampled; default: the dataset's other
    relations and ``reasoning_prompts``, held-out split)."""
    held = [r for r in relation_rows(all_rows, cfg.relation, cfg.label) if r["split"] == "heldout"]
    if not held:
        raise ValueError(f"the dataset has no held-out prompts for {cfg.relation!r}")
    val_rows, test_rows = split_rows(held, cfg.seed)
    if unrelated is None:
        unrel = [r for r in all_rows if r["relation"] != cfg.relation and r["split"] == "heldout"]
        reason = [r for r in reasoning_prompts(400, seed=cfg.seed).to_list() if r["split"] == "heldout"]
        u_val, u_test = split_rows(unrel, cfg.seed)
        r_val, r_test = split_rows(reason, cfg.seed)
        h = cfg.n_unrelated // 2
        u_val = sample(u_val, cfg.n_unrelated - h, rng) + sample(r_val, h, rng)
        u_test = sample(u_test, cfg.n_unrelated - h, rng) + sample(r_test, h, rng)
    else:
        urows = unrelated.to_list() if hasattr(unrelated, "to_list") else list(unrelated)
        u_val, u_test = split_rows(urows, cfg.seed)
        u_val, u_test = sample(u_val, cfg.n_unrelated, rng), sample(u_test, cfg.n_unrelated, rng)
    if not u_val or not u_test:
        raise ValueError("not enough unrelated prompts for both validation and test; give more")
    return val_rows, test_rows, u_val, u_test


def prompt_sets(model, targets: list[str], rows: tuple[list[dict], ...], cfg, rng: random.Random,
                hook: str) -> tuple[dict[str, dict[str, Prompts]], dict[str, Prompts]]:
    """Evaluation sets per split and target (subjects with another value) and the unrelated sets,
    from ``rows = eval_rows(...)``."""
    val_rows, test_rows, u_val, u_test = rows
    ev: dict[str, dict[str, Prompts]] = {"val": {}, "test": {}}
    for split, pool in (("val", val_rows), ("test", test_rows)):
        for v in targets:
            ev[split][v] = Prompts(model, sample([r for r in pool if r[cfg.label] != v], cfg.n_eval, rng), cfg.batch_size, hook)
            ev[split][v].sources = [r[cfg.label] for r in ev[split][v].rows]
    unrel_p = {"val": Prompts(model, u_val, cfg.batch_size, hook), "test": Prompts(model, u_test, cfg.batch_size, hook)}
    for U in unrel_p.values():  # a source to ablate on each unrelated prompt: the targets in turn
        U.sources = [targets[i % len(targets)] for i in range(len(U))]
    return ev, unrel_p
