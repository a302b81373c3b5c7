"""Steered generation: does the concept show up in free text, and at what cost in fluency?

From prompts that name no place, language, continent or currency but invite one (``prompts_for``
the relation's answers: ``PROMPTS`` for places, ``LANGUAGE_PROMPTS``, ``CONTINENT_PROMPTS``,
``CURRENCY_PROMPTS``), each method steers the model toward each target while it generates
``n_tokens`` tokens greedily (TransformerLens's ``generate`` with its key-value cache). The edit
is applied at every position, the prompt's and each new token's (as activation-addition steering
does, Turner et al. 2023, arXiv 2308.10248), at the method's strength from the comparison at equal
KL (``equal_kl``; else its chosen strength) times each of ``scales``: a strength matched for one
edited position need not suit an edit at every position (weaker keeps the text fluent, stronger
may name the concept more), so each method gets a concept-perplexity curve, not one point.

* concept score: the share of continuations in which the target's name appears (case-insensitive);
* fluency: the perplexity of the continuation under the unsteered model,
  ``exp(mean over tokens of -log p_clean(token | prefix))`` per continuation, geometric mean
  over continuations (lower is more fluent). No judge model and no hub are needed.

Every method's and target's rows (methods x targets x prompts of one token length) go through
one ``generate`` call per scale: a hook applies each method's interventions toward each target to
its own block of rows.

At equal perplexity (``at_reference``): the reference (the difference of means) at scale 1
spends a perplexity ``p_ref``; each method's concept score at no more perplexity is the best
of its curve's points with perplexity <= ``p_ref`` (none: it never is as fluent). The curves are
also compared at every reference point: a method "dominates" when at each reference point's
perplexity it reaches that point's concept score.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sae_atoms.experiments.steering.config import check_gen_scales
from sae_atoms.experiments.steering.methods import Method
from sae_atoms.steering import prompt_token_ids

PPL_ROWS = 32  # rows of one perplexity pass: 32 x 30 positions x 49k vocabulary ~ 190 MB of logits
# one token length each (SmolLM2's tokenizer), so every target's rows share one ``generate`` call
PROMPTS = ("Last summer we travelled to", "The news today is about", "Our guide told us about", "The documentary was filmed in",
           "We spent our holiday in", "He told me all about", "I dream of living in", "The postcard came from")
# prompts that invite the answer's kind (a place, a language, a currency) without naming one;
# a relation's generation uses its label's set (``prompts_for``), places by default
LANGUAGE_PROMPTS = ("The letter was written in", "The subtitles were in", "He is learning to speak", "The menu was printed in",
                    "They sang a song in", "The book was translated into", "The film was dubbed into", "The sign was written in")
CURRENCY_PROMPTS = ("The price was given in", "He paid the bill in", "They changed their money into", "The salary is paid in",
                    "I exchanged my dollars for", "The rent is paid in", "She saved her wages in", "The fine was paid in")
# the place prompts invite a city or a country, so a continent seldom follows them, steered or not
# (a concept share of a few continuations in a hundred cannot tell methods apart); these name the
# kind ("the continent of") and leave the continent to the model
CONTINENT_PROMPTS = ("She backpacked across the continent of", "The migrants came from the continent of",
                     "Our tour covered the whole continent of", "His family emigrated from the continent of",
                     "The explorers sailed to the continent of", "The tribe lived on the continent of",
                     "The war spread across the continent of", "The team toured the continent of")
PROMPTS_BY_LABEL = {"language": LANGUAGE_PROMPTS, "currency": CURRENCY_PROMPTS, "continent": CONTINENT_PROMPTS}


def prompts_for(label: str) -> tuple[str, ...]:
    """The generation prompts of a relation whose answers are ``label`` (``config.RELATION_LABEL``):
    ``PROMPTS_BY_LABEL``'s set, else the place prompts ``PROMPTS`` (countries, capitals)."""
    return PROMPTS_BY_LABEL.get(label, PROMPTS)


def _hook_for(methods: Sequence[Method | None], targets: Sequence[str], per_target: int) -> Any:
    """A hook applying method ``a``'s interventions toward ``targets[b]`` to row block ``(a, b)``
    (``per_target`` rows each; None: rows left alone); the interventions are built once, for every
    forward step of the generation."""
    sources = SimpleNamespace(sources=[targets[i % len(targets)] for i in range(per_target)])  # what a swap ablates
    rows = list(range(per_target))
    ivs = [[] if m is None else m.interventions(v, sources, None, rows) for m in methods for v in targets]

    def fn(act: Tensor, hook: Any = None) -> Tensor:
        out = act.clone()
        for b, edits in enumerate(ivs):
            if edits:
                sub = act[b * per_target:(b + 1) * per_target]
                for iv in edits:
                    sub = iv.hook_fn(sub)
                out[b * per_target:(b + 1) * per_target] = sub
        return out
    return fn


@torch.no_grad()
def generate(model, methods: dict[str, Method | None], targets: Sequence[str], prompts: Sequence[str],
             n_tokens: int) -> dict[str, dict[str, list[list[int]]]]:
    """Per method (None: unsteered) and target, each prompt's greedy continuation (``n_tokens`` token
    ids). Every method's rows go through one ``generate`` call per prompt length (a forward step
    costs about as much for a few rows as for hundreds on a CPU)."""
    ids = prompt_token_ids(model, list(prompts))
    names = list(methods)
    hooks = {m.hook for m in methods.values() if m is not None}
    if len(hooks) > 1:
        raise ValueError(f"the methods edit different hooks {sorted(hooks)}; generate with one hook's methods at a time")
    out = {n: {v: [[] for _ in prompts] for v in targets} for n in names}
    for length in sorted({len(t) for t in ids}):
        group = [i for i, t in enumerate(ids) if len(t) == length]
        tokens = torch.tensor([ids[i] for i in group] * (len(targets) * len(names)), device=model.cfg.device)
        fwd = [(h, _hook_for([methods[n] for n in names], targets, len(group))) for h in hooks]
        with model.hooks(fwd_hooks=fwd):
            gen = model.generate(tokens, max_new_tokens=n_tokens, do_sample=False, stop_at_eos=False, verbose=False,
                                 use_past_kv_cache=True, return_type="tokens")
        for a, n in enumerate(names):
            for b, v in enumerate(targets):
                for j, i in enumerate(group):
                    out[n][v][i] = gen[(a * len(targets) + b) * len(group) + j, length:].tolist()
    return out


@torch.no_grad()
def log_perplexity(model, prompts: Sequence[str], continuations: Sequence[list[int]]) -> Tensor:
    """``mean -log p_clean(token | prefix)`` over each continuation's tokens, under the unsteered model
    (rows of one prompt and continuation length together, ``PPL_ROWS`` a pass: their logits over the
    vocabulary are the pass's memory)."""
    ids = prompt_token_ids(model, list(prompts))
    out = torch.empty(len(ids))
    for shape in {(len(p), len(c)) for p, c in zip(ids, continuations)}:
        same = [i for i, (p, c) in enumerate(zip(ids, continuations)) if (len(p), len(c)) == shape]
        for k in range(0, len(same), PPL_ROWS):
            rows = same[k:k + PPL_ROWS]
            t = torch.tensor([ids[i] + continuations[i] for i in rows], device=model.cfg.device)
            lp = model(t).float().log_softmax(-1)[:, shape[0] - 1:-1]
            out[rows] = -lp.gather(2, t[:, shape[0]:, None])[..., 0].mean(1).cpu()
    return out


def scores(model, targets: Sequence[str], prompts: Sequence[str], gen: dict[str, list[list[int]]]) -> dict[str, Any]:
    """Concept score (over every target's continuations, and per target: which targets carry it) and
    geometric-mean perplexity, and one example each."""
    hits, examples = {}, {}
    for v in targets:
        texts = [model.tokenizer.decode(c) for c in gen[v]]
        hits[v] = [v.lower() in t.lower() for t in texts]
        examples[v] = prompts[0] + texts[0]
    lp = log_perplexity(model, [p for _ in targets for p in prompts], [c for v in targets for c in gen[v]])
    n = sum(len(h) for h in hits.values())
    return {"concept": sum(sum(h) for h in hits.values()) / n, "perplexity": math.exp(float(lp.mean())), "n": n,
            "concept_by_target": {v: sum(h) / len(h) for v, h in hits.items()}, "examples": examples}


def steered_generation(model, methods: dict[str, Method], targets: Sequence[str], n_tokens: int,
                       prompts: Sequence[str] = PROMPTS, scales: Sequence[float] = (1.0,),
                       progress: bool = False) -> dict[str, dict]:
    """``scores`` per method at each of ``scales`` (ascending, 1 among them) x the strength it carries
    (scale 1's at the top level, every scale's point in ``curve``), and for the unsteered model
    (``"none"``, once); ``progress``: a bar over the scales."""
    check_gen_scales(tuple(scales))
    out: dict[str, dict] = {n: {"curve": []} for n in methods}
    for i, scale in enumerate(tqdm(sorted(scales), desc="steered generation (scales)", disable=not progress)):
        at = {n: m.at(m.strength * scale) for n, m in methods.items()}
        for n, g in generate(model, ({"none": None} if i == 0 else {}) | at, targets, prompts, n_tokens).items():
            s = scores(model, targets, prompts, g)
            if n not in at:
                out[n] = s
                continue
            point = {"scale": scale, "strength": at[n].strength,
                     **{k: s[k] for k in ("concept", "perplexity", "concept_by_target")}}
            out[n]["curve"].append(point)
            if scale == 1.0:
                out[n] |= s | point
    return out


def best_within(curve: Sequence[dict], perplexity: float) -> float | None:
    """The highest concept score among ``curve``'s points with perplexity <= ``perplexity`` (None: none is)."""
    return max((p["concept"] for p in curve if p["perplexity"] <= perplexity), default=None)


def _reaches(concept: float | None, goal: float) -> bool:
    return concept is not None and concept >= goal


def at_reference(curves: dict[str, Sequence[dict]], ref: str) -> dict[str, dict]:
    """Per method, its concept score at no more perplexity than ``ref`` at scale 1
    (``concept_equal_ppl``, with ``ref_concept`` / ``ref_perplexity``), and whether it reaches every
    ``ref`` point's concept at that point's perplexity (``dominates_ref``); {} without ``ref``."""
    if ref not in curves:
        return {}
    r0 = next(p for p in curves[ref] if p["scale"] == 1.0)
    return {m: {"concept_equal_ppl": best_within(c, r0["perplexity"]), "ref_concept": r0["concept"],
                "ref_perplexity": r0["perplexity"],
                "dominates_ref": all(_reaches(best_within(c, p["perplexity"]), p["concept"]) for p in curves[ref])}
            for m, c in curves.items()}
