"""Steered generation: does the concept show up in free text, and at what cost in fluency?

From prompts that name no place, language or continent (``PROMPTS``), each method steers the
model toward each target while it generates ``n_tokens`` tokens greedily (TransformerLens's
``generate`` with its key-value cache). The edit is applied at every position, the prompt's and
each new token's (as activation-addition steering does, Turner et al. 2023, arXiv 2308.10248), at
the method's strength from the comparison at equal KL (``equal_kl``; else its chosen strength).

* concept score: the share of continuations in which the target's name appears (case-insensitive);
* fluency: the perplexity of the continuation under the unsteered model,
  ``exp(mean over tokens of -log p_clean(token | prefix))`` per continuation, geometric mean
  over continuations (lower is more fluent). No judge model and no hub are needed.

Every target's rows (targets x prompts of one token length) go through one ``generate`` call: a
hook applies each target's interventions to its own block of rows.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Sequence

import torch
from torch import Tensor

from sae_atoms.experiments.steering.methods import Method
from sae_atoms.steering import prompt_token_ids

PROMPTS = ("My favourite place in the world is", "Last summer we travelled to", "The food I like best comes from",
           "She was born and raised in", "The news today is about", "I want to learn more about",
           "Our guide told us about", "The documentary was filmed in")


def _hook_for(m: Method, targets: Sequence[str], per_target: int) -> Any:
    """A hook applying ``m``'s interventions toward ``targets[b]`` to row block ``b`` (``per_target`` rows each)."""
    sources = SimpleNamespace(sources=[targets[i % len(targets)] for i in range(per_target)])  # what a swap ablates

    def fn(act: Tensor, hook: Any = None) -> Tensor:
        out = act.clone()
        for b, v in enumerate(targets):
            rows = list(range(per_target))
            sub = act[b * per_target:(b + 1) * per_target]
            for iv in m.interventions(v, sources, None, rows):
                sub = iv.hook_fn(sub)
            out[b * per_target:(b + 1) * per_target] = sub
        return out
    return fn


@torch.no_grad()
def generate(model, m: Method | None, targets: Sequence[str], prompts: Sequence[str], n_tokens: int) -> dict[str, list[list[int]]]:
    """Per target, each prompt's greedy continuation (``n_tokens`` token ids) under ``m`` (None: unsteered)."""
    ids = prompt_token_ids(model, list(prompts))
    out: dict[str, list[list[int]]] = {v: [[] for _ in prompts] for v in targets}
    for length in sorted({len(t) for t in ids}):
        group = [i for i, t in enumerate(ids) if len(t) == length]
        tokens = torch.tensor([ids[i] for i in group] * len(targets), device=model.cfg.device)
        hooks = [] if m is None else [(m.hook, _hook_for(m, targets, len(group)))]
        with model.hooks(fwd_hooks=hooks):
            gen = model.generate(tokens, max_new_tokens=n_tokens, do_sample=False, stop_at_eos=False, verbose=False,
                                 use_past_kv_cache=True, return_type="tokens")
        for b, v in enumerate(targets):
            for j, i in enumerate(group):
                out[v][i] = gen[b * len(group) + j, length:].tolist()
    return out


@torch.no_grad()
def log_perplexity(model, prompts: Sequence[str], continuations: Sequence[list[int]]) -> Tensor:
    """``mean -log p_clean(token | prefix)`` over each continuation's tokens, under the unsteered model."""
    ids = prompt_token_ids(model, list(prompts))
    out = []
    for p, c in zip(ids, continuations):
        t = torch.tensor([p + c], device=model.cfg.device)
        lp = model(t).float().log_softmax(-1)[0, len(p) - 1:-1]
        out.append(-lp.gather(1, t[0, len(p):, None]).mean())
    return torch.stack(out).cpu()


def scores(model, targets: Sequence[str], prompts: Sequence[str], gen: dict[str, list[list[int]]]) -> dict[str, Any]:
    """Concept score and geometric-mean perplexity over every target's continuations, and one example each."""
    hits, logppl, examples = [], [], {}
    for v in targets:
        texts = [model.tokenizer.decode(c) for c in gen[v]]
        hits += [v.lower() in t.lower() for t in texts]
        logppl.append(log_perplexity(model, prompts, gen[v]))
        examples[v] = prompts[0] + texts[0]
    lp = torch.cat(logppl)
    return {"concept": sum(hits) / len(hits), "perplexity": math.exp(float(lp.mean())), "n": len(hits),
            "examples": examples}


def steered_generation(model, methods: dict[str, Method], targets: Sequence[str], n_tokens: int,
                       prompts: Sequence[str] = PROMPTS) -> dict[str, dict]:
    """``scores`` per method (each at the strength it carries) and for the unsteered model (``"none"``)."""
    out = {"none": scores(model, targets, prompts, generate(model, None, targets, prompts, n_tokens))}
    for name, m in methods.items():
        out[name] = scores(model, targets, prompts, generate(model, m, targets, prompts, n_tokens)) | {"strength": m.strength}
    return out
