"""Prompt rows of the experiment: their token ids, subject positions and next-token log-probabilities.

At a ``blocks.L.hook_resid_post`` hook, ``Prompts`` runs the model once up to the hook and keeps
that residual stream; the clean run and every steered run then resume from it with
TransformerLens's ``start_at_layer`` (the interventions applied to the kept stream), so
blocks ``0..L`` run once per prompt set. Elsewhere (or for interventions at another hook) every
run is a full forward pass with hooks (``sae_atoms.steering.next_token_logprobs``). Right
padding with the attention mask: padding never reaches a real token, so both paths give the
same log-probabilities.

``run_jobs`` resumes many runs together: each job (a prompt set under one method, strength and
target) edits its kept batches, and the edited rows of all jobs are stacked along the batch
dimension (at most ``max_rows`` rows a pass) and resumed together. The blocks after the hook act
on each row alone (attention is causal and masked), so a row's log-probabilities do not depend on
which rows share its pass, up to the last bits of float32 matrix products whose blocking changes
with the batch shape; ``max_rows=0`` resumes each kept batch alone, exactly as ``Prompts.run``
does.

Prefix reuse: an edit at position ``p`` (the subject's last token for ``span="at"``) leaves every
position before ``p`` as in the clean run, in every later block too (attention is causal). The
clean resume keeps each later block's attention keys and values (``hook_k``, ``hook_v``, before
the rotary embedding, as TransformerLens's key-value cache holds them), and a steered row runs
only its positions from the first one its edit changed (found by comparing the edited stream
with the kept one, so no assumption about the intervention is made), attending to the kept keys
and values of the positions before it through a frozen ``TransformerLensKeyValueCache``. Rows are
grouped into passes by that first position, so a pass computes ``rows x (longest - first)``
positions instead of ``rows x longest``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from sae_atoms.activations import subject_token_positions
from sae_atoms.data import reasoning_prompts, split_of
from sae_atoms.forward import Batch, batches, hook_layer
from sae_atoms.steering import Intervention, next_token_logprobs, prompt_token_ids

MakeInterventions = Callable[[list[int], list[int]], Sequence[Intervention]]
RowsOf = Callable[[Tensor, list[int]], Tensor]
RESUME_ROWS = 512  # rows of one stacked resume (memory: its activations and [rows, vocab] logits)


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
        self.ids = prompt_token_ids(model, prompts) if rows else []
        self.pos = subject_token_positions(model, prompts, [r["subject_start"] for r in rows],
                                           [r["subject_end"] for r in rows]) if rows else []
        self.layer = resid_layer(model, hook)
        self.cached: list[tuple[Batch, Tensor]] = []
        self.kv: list[list[tuple[Tensor, Tensor]]] = []  # per kept batch, per block after the hook: clean keys, values
        if self.layer is not None and rows:
            with torch.no_grad():
                self.cached = [(b, model(b.tokens, attention_mask=b.mask, stop_at_layer=self.layer + 1))
                               for b in batches(model, self.ids, batch_size)]
        self.clean = (self._clean_keeping_kv() if self.cached else self.run(None)) if rows else torch.zeros(0)

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

    def edits(self, make: MakeInterventions | None) -> list[list[Intervention]] | None:
        """Each kept batch's interventions; None when one sits at another hook than the kept stream."""
        ivs = [list(make([self.pos[i] for i in b.rows], b.rows)) if make is not None else [] for b, _ in self.cached]
        return None if any(iv.hook_name != self.hook for batch in ivs for iv in batch) else ivs

    @torch.no_grad()
    def _resume(self, make: MakeInterventions | None) -> Tensor | None:
        """The fast path; None when an intervention sits at another hook than the kept stream."""
        ivs = self.edits(make)
        if ivs is None:
            return None
        out = torch.empty(len(self.rows), self.model.cfg.d_vocab)
        for (b, x), edits in zip(self.cached, ivs):
            out[b.rows] = self.resume(b, edited(x, edits))
        return out

    def resume(self, b: Batch, x: Tensor, hooks: Sequence = (), **kwargs: Any) -> Tensor:
        """Log-probabilities ``[b, vocab]`` (CPU, float32) at each row's last token, blocks ``layer+1..`` only."""
        return b.last_logits(self.model, hooks, resid=x, start_at_layer=self.layer + 1, **kwargs).float().log_softmax(-1).cpu()

    @torch.no_grad()
    def _clean_keeping_kv(self) -> Tensor:
        """The clean log-probabilities; keeps every later block's keys and values of each kept batch."""
        names = [(f"blocks.{l}.attn.hook_k", f"blocks.{l}.attn.hook_v") for l in range(self.layer + 1, self.model.cfg.n_layers)]
        out = torch.empty(len(self.rows), self.model.cfg.d_vocab)
        for b, x in self.cached:
            got: dict[str, Tensor] = {}
            keep = lambda act, hook: got.__setitem__(hook.name, act)  # noqa: E731
            out[b.rows] = self.resume(b, x, [(n, keep) for pair in names for n in pair])
            self.kv.append([(got[k], got[v]) for k, v in names])
        return out


def edited(x: Tensor, ivs: Sequence[Intervention]) -> Tensor:
    """The kept stream ``x`` through ``ivs`` in turn."""
    for iv in ivs:
        x = iv.hook_fn(x)
    return x


# --------------------------------------------------------------------------- many runs, stacked
@dataclass
class Job:
    """One run to measure: ``prompts`` under ``make``'s interventions (None: clean); ``rows_of(lp,
    rows)`` reduces the log-probabilities ``[b, vocab]`` of the rows ``rows`` (indices into
    ``prompts``) to a small per-row tensor ``[b, ...]``, so no ``[n, vocab]`` output is kept."""

    prompts: Prompts
    make: MakeInterventions | None
    rows_of: RowsOf


@dataclass
class _Row:
    """One row of a job on the fast path: its edited stream and its clean keys and values."""

    job: int
    row: int  # index into the job's prompts
    first: int  # the first position the edit changed (the last position when it changed none)
    x: Tensor  # [length, d_model] the edited stream, real positions only
    kv: list[tuple[Tensor, Tensor]]  # per block after the hook: clean keys, values [length, heads, d_head]
    prompts: Prompts


@torch.no_grad()
def run_jobs(jobs: Sequence[Job], max_rows: int = RESUME_ROWS) -> list[Tensor]:
    """``rows_of`` of every row of every job, ``[n, ...]`` per job in its prompts' row order.

    Jobs on the fast path are resumed together: their edited rows are grouped by the first
    position their edit changed and stacked into passes of at most ``max_rows`` rows, each row
    run from that position on (module docstring: prefix reuse). ``max_rows=0``: every kept batch
    alone and whole, as ``Prompts.run``. Other jobs run alone (``Prompts.run``)."""
    out: list[Any] = [None] * len(jobs)
    rows: list[_Row] = []
    for j, job in enumerate(jobs):
        P = job.prompts
        ivs = P.edits(job.make) if P.cached and max_rows else None
        if ivs is None:
            out[j] = job.rows_of(P.run(job.make), list(range(len(P))))
        else:
            rows += _edited_rows(j, P, ivs)
    rows.sort(key=lambda r: (id(r.prompts.model), r.prompts.layer, r.first, len(r.x)))
    parts: dict[int, list[tuple[list[int], Tensor]]] = {}
    for group in _passes(rows, max_rows):
        lp = _resume_rows(group)
        for j in dict.fromkeys(r.job for r in group):
            idx = [i for i, r in enumerate(group) if r.job == j]
            mine = [group[i].row for i in idx]
            parts.setdefault(j, []).append((mine, jobs[j].rows_of(lp[idx], mine)))
    for j, got in parts.items():
        res = torch.cat([r for _, r in got])
        order = torch.tensor([i for rows_, _ in got for i in rows_])
        out[j] = torch.empty_like(res).index_copy_(0, order, res)
    return out


def _edited_rows(j: int, P: Prompts, ivs: list[list[Intervention]]) -> list[_Row]:
    """Job ``j``'s rows: each kept batch through its interventions, the first changed position per row."""
    out = []
    for (b, x), kv, edits in zip(P.cached, P.kv, ivs):
        y = edited(x, edits)
        changed = (y != x).any(-1)
        for i, r in enumerate(b.rows):
            n = int(b.last[i]) + 1
            hit = changed[i, :n].nonzero()
            out.append(_Row(j, r, int(hit[0, 0]) if len(hit) else n - 1, y[i, :n], [(k[i, :n], v[i, :n]) for k, v in kv], P))
    return out


def _passes(rows: list[_Row], max_rows: int) -> list[list[_Row]]:
    """Consecutive rows grouped into passes of at most ``max_rows`` rows; only rows with the same
    first changed position, model and layer share a pass."""
    groups: list[list[_Row]] = []
    for r in rows:
        g = groups[-1] if groups else None
        if (g is None or len(g) >= max_rows or r.first != g[0].first or r.prompts.model is not g[0].prompts.model
                or r.prompts.layer != g[0].prompts.layer):
            groups.append([])
        groups[-1].append(r)
    return groups


def _resume_rows(group: list[_Row]) -> Tensor:
    """Log-probabilities ``[rows, vocab]`` of a pass: positions ``first..`` of each row (right-padded)
    from the hook on, attending to the clean keys and values of the positions before ``first``."""
    P, first = group[0].prompts, group[0].first
    T = max(len(r.x) for r in group)
    dev = group[0].x.device
    resid = torch.stack([torch.nn.functional.pad(r.x[first:], (0, 0, 0, T - len(r.x))) for r in group])
    mask = torch.zeros(len(group), T, dtype=torch.long, device=dev)
    for i, r in enumerate(group):
        mask[i, :len(r.x)] = 1
    past = [TransformerLensKeyValueCacheEntry(torch.stack([r.kv[l][0][:first] for r in group]),
                                              torch.stack([r.kv[l][1][:first] for r in group]), frozen=True)
            for l in range(len(group[0].kv))]
    cache = TransformerLensKeyValueCache([None] * (P.layer + 1) + past, mask[:, :first], frozen=True)  # type: ignore[list-item]
    last = torch.tensor([len(r.x) - 1 - first for r in group], device=dev)
    return P.resume(Batch(list(range(len(group))), mask, mask, last), resid, past_kv_cache=cache)


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


def paraphrases(rows: list[dict], pool: list[dict], rng: random.Random) -> list[dict]:
    """For each row, one row of ``pool`` about the same subject in another template (CounterFact's
    paraphrase prompts); rows whose subject has no other template get none."""
    by_subject: dict[str, list[dict]] = {}
    for r in pool:
        by_subject.setdefault(r["subject"], []).append(r)
    out = []
    for r in rows:
        other = [q for q in by_subject.get(r["subject"], []) if q["template"] != r["template"]]
        if other:
            out.append(rng.choice(other))
    return out


def prompt_sets(model, targets: list[str], rows: tuple[list[dict], ...], cfg, rng: random.Random,
                hook: str) -> tuple[dict[str, dict[str, Prompts]], dict[str, Prompts]]:
    """Evaluation sets per split and target (subjects with another value; ``"paraphrase"``: the test
    subjects in other templates) and the unrelated sets, from ``rows = eval_rows(...)``."""
    val_rows, test_rows, u_val, u_test = rows
    ev: dict[str, dict[str, Prompts]] = {"val": {}, "test": {}, "paraphrase": {}}
    for split, pool in (("val", val_rows), ("test", test_rows)):
        for v in targets:
            ev[split][v] = Prompts(model, sample([r for r in pool if r[cfg.label] != v], cfg.n_eval, rng), cfg.batch_size, hook)
    para_rng = random.Random(cfg.seed + 303)  # its own draws: the other sets and the selection are as without it
    for v in targets:
        ev["paraphrase"][v] = Prompts(model, paraphrases(ev["test"][v].rows, test_rows, para_rng), cfg.batch_size, hook)
    for split in ev.values():
        for P in split.values():
            P.sources = [r[cfg.label] for r in P.rows]
    unrel_p = {"val": Prompts(model, u_val, cfg.batch_size, hook), "test": Prompts(model, u_test, cfg.batch_size, hook)}
    for U in unrel_p.values():  # a source to ablate on each unrelated prompt: the targets in turn
        U.sources = [targets[i % len(targets)] for i in range(len(U))]
    return ev, unrel_p
