"""The numbers on an atom card, for any SAELens SAE (atoms, features) at a model's hook.

Everything starts from :class:`Observations`: the codes ``delta = sae.encode(m)`` of ``n``
observed tokens (``[n, N]``, dense, on the CPU) and where each token sits (its row of token ids
and its position). Two sources fill it:

* a text corpus (:func:`observe_corpus`): packed rows of tokens streamed through the model to the
  SAE's hook; every token but the row's BOS is observed, so a context is shaded token by token;
* an activation set (:func:`observe_activations`): the saved subject-token activations of fact
  prompts; each prompt has one observed token (the subject's), with its labels.

From them, per unit: the firing rate ``P(delta_j != 0)``, the distribution of its non-zero codes,
its top-activating contexts (the argmax tokens), the label purity of its top samples
(``max_y share of label y``), its nearest units by ``|cos|`` of decoder rows (in the AIP
``<u, v>_S`` for an SAE that carries a metric, and raw), the units it fires with and whether those
meet the uniqueness bound ``mu < 1/(2K - 1)``, its direct effect on the logits (the decoder row
through the unembedding, ``W_dec[j] @ W_U``) and a steering preview.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sae_atoms.evals.geometry import per_sample_coherence, uniqueness_bound
from sae_atoms.evals.units import find_metric, unit_directions
from sae_atoms.forward import batches, n_batches, stop_layer

STEER_PROMPTS = ("The capital of France is", "My favourite thing to do on a Sunday is",
                 "The most important idea in science is", "She opened the door and saw")


@dataclass(frozen=True)
class CardConfig:
    """What the cards show and how much is computed for them.

    ``n_cards``: cards for the most frequently firing units, plus ``units``; ``top_k``: contexts per
    card; ``left`` / ``right``: tokens shown around a context's token; ``n_tokens``: corpus tokens
    observed; ``steer_quantile``: the clamp value of the steering preview, that quantile of the
    unit's non-zero codes.
    """

    n_cards: int = 32
    units: tuple[int, ...] = ()
    top_k: int = 8
    left: int = 12
    right: int = 4
    n_tokens: int = 8192
    context_size: int = 64
    batch_size: int = 16
    n_list: int = 8
    bins: int = 24
    steer_prompts: tuple[str, ...] = STEER_PROMPTS
    steer_quantile: float = 0.9
    device: str | None = None
    progress: bool = True


@dataclass
class Observations:
    """Codes ``[n, N]`` of ``n`` observed tokens; token ``t`` is ``rows[row_of[t]][pos_of[t]]``.

    ``labels``: label columns aligned with the observations (fact prompts), possibly empty.
    """

    codes: Tensor
    rows: list[list[int]]
    row_of: Tensor
    pos_of: Tensor
    labels: dict[str, list] = field(default_factory=dict)
    source: str = ""

    def index_table(self) -> Tensor:
        """``[n_rows, longest]``: the observation at each (row, position), -1 where none."""
        table = torch.full((len(self.rows), max(len(r) for r in self.rows)), -1, dtype=torch.long)
        table[self.row_of, self.pos_of] = torch.arange(len(self.row_of))
        return table


# --------------------------------------------------------------------------- observing
def _device_of(module: Any) -> torch.device:
    return next(iter(module.parameters())).device


@torch.no_grad()
def encode(sae: Any, x: Tensor, batch_size: int = 1024) -> Tensor:
    """``sae.encode`` of ``x`` ``[n, d]`` in batches on the SAE's device; float32 codes on the CPU."""
    dev, dt = _device_of(sae), sae.W_dec.dtype
    return torch.cat([sae.encode(x[s:s + batch_size].to(dev, dt)).float().cpu() for s in range(0, len(x), batch_size)])


@torch.no_grad()
def observe_rows(model: Any, sae: Any, hook: str, rows: Sequence[Sequence[int]], cfg: CardConfig = CardConfig(),
                 skip_first: bool = True) -> Observations:
    """Every token of ``rows`` (the first of each skipped with ``skip_first``: the BOS) run to
    ``hook`` and encoded by ``sae``; special tokens (a packed row's BOS between documents) are not
    observed, as ``run_evals`` leaves them out."""
    from sae_atoms.evals.downstream import special_ids

    special = torch.tensor(special_ids(model), dtype=torch.long)
    rows = [list(r) for r in rows]
    check_size(sum(len(r) for r in rows), int(sae.cfg.d_sae))
    codes, row_of, pos_of = [], [], []
    for b in tqdm(batches(model, rows, cfg.batch_size), total=n_batches(len(rows), cfg.batch_size),
                  desc="cards: encode tokens", unit="batch", disable=not cfg.progress):
        keep = b.mask.bool() & ~torch.isin(b.tokens, special.to(b.tokens.device))
        keep[:, 0] &= not skip_first
        store: dict[str, Tensor] = {}
        b.run(model, [(hook, lambda act, hook: store.__setitem__("a", act))], stop_at_layer=stop_layer([hook]),
              return_type=None)
        where = keep.nonzero().cpu()
        codes.append(encode(sae, store["a"][keep]))
        row_of.append(torch.tensor(b.rows)[where[:, 0]])
        pos_of.append(where[:, 1])
    return Observations(torch.cat(codes), rows, torch.cat(row_of), torch.cat(pos_of))


def check_size(n_tokens: int, n_units: int) -> None:
    """Refuse codes ``[n_tokens, n_units]`` (float32, kept dense) larger than ``evals.MAX_DENSE_CODES``."""
    from sae_atoms.evals.units import MAX_DENSE_CODES

    if 4 * n_tokens * n_units > MAX_DENSE_CODES:
        raise ValueError(f"{n_tokens} tokens x {n_units} units of codes exceed {MAX_DENSE_CODES / 2**30:.0f} GiB; "
                         "observe fewer tokens (--tokens)")


def observe_corpus(model: Any, sae: Any, hook: str, corpus: str = "human-en", cfg: CardConfig = CardConfig()) -> Observations:
    """``cfg.n_tokens`` tokens of a corpus (``corpus.load_corpus`` spec), packed into rows of
    ``cfg.context_size`` (each document after a BOS), observed at ``hook``."""
    from itertools import islice

    from sae_atoms.corpus import load_corpus, model_tokenizer, packed_rows

    tokenize, bos = model_tokenizer(model)
    n_rows = max(1, cfg.n_tokens // (cfg.context_size - 1))
    rows = list(islice(packed_rows(load_corpus(corpus).documents(), tokenize, cfg.context_size, bos), n_rows))
    if not rows:
        raise ValueError(f"the corpus {corpus!r} has fewer than {cfg.context_size} tokens; lower --context-size")
    obs = observe_rows(model, sae, hook, rows, cfg)
    obs.source = f"corpus {corpus}"
    return obs


def observe_activations(model: Any, sae: Any, acts: Any, hook: str | None = None, cfg: CardConfig = CardConfig()) -> Observations:
    """The saved subject-token activations of an ``ActivationSet``: one observed token per prompt
    (its ``token_pos``), the prompt's label columns kept."""
    from sae_atoms.data import LABEL_COLUMNS
    from sae_atoms.models import tokenize_prompts

    cols = acts.rows.column_names
    if "prompt" not in cols or "token_pos" not in cols:
        raise ValueError(f"the activation set has no 'prompt' / 'token_pos' columns (it has {cols}); "
                         "write it with `sae-atoms extract`")
    rows, _ = tokenize_prompts(model, acts.labels("prompt"))
    labels = {c: acts.labels(c) for c in LABEL_COLUMNS if c in cols}
    n = len(acts)
    check_size(n, int(sae.cfg.d_sae))
    return Observations(encode(sae, acts.x(hook)), rows, torch.arange(n), torch.tensor(acts.labels("token_pos")),
                        labels, "activation set")


# --------------------------------------------------------------------------- per unit, every unit
def geometries(sae: Any, metric: Any = None) -> dict[str, Tensor]:
    """Unit decoder rows in each geometry: ``"aip"`` (``metric``, an ``AIPMetric``, else the SAE's own
    when it carries one) and ``"raw"``."""
    D = sae.W_dec.detach().float().cpu()
    metric = metric if metric is not None else find_metric(sae)
    out = {"raw": unit_directions(D)}
    if metric is not None:
        out = {"aip": unit_directions(D, metric.to("cpu")), **out}
    return out


def max_abs_cos(Dn: Tensor, block: int = 1024) -> Tensor:
    """Per unit, ``max_{k != j} |cos(d_j, d_k)|`` of unit rows ``Dn`` (its coherence with the rest), blocked."""
    out = torch.empty(Dn.shape[0])
    for s in range(0, Dn.shape[0], block):
        G = (Dn[s:s + block] @ Dn.T).abs_()
        G[torch.arange(G.shape[0]), torch.arange(s, s + G.shape[0])] = 0
        out[s:s + block] = G.max(1).values
    return out


def purity(codes: Tensor, labels: dict[str, list], top_k: int = 20) -> dict[str, tuple[Tensor, list]]:
    """Per label column: ``(share [N], label [N])``, the share of the most common label among each
    unit's top-``top_k`` firing samples (unknown labels left out) and that label; share 0 for a
    unit that never fires on a labelled sample."""
    out = {}
    for col, labs in labels.items():
        known = torch.tensor([lab not in (None, "") for lab in labs])
        vocab = sorted({lab for lab in labs if lab not in (None, "")})
        ids = torch.tensor([vocab.index(lab) for lab in labs if lab not in (None, "")], dtype=torch.long)
        if not vocab:
            continue
        vals, idx = torch.topk(codes[known].T, min(top_k, int(known.sum())), dim=1)
        counts = torch.zeros(codes.shape[1], len(vocab))
        counts.scatter_add_(1, ids[idx], (vals > 0).float())
        share = counts.max(1).values / counts.sum(1).clamp_min(1)
        out[col] = (share, [vocab[int(k)] for k in counts.argmax(1)])
    return out


def unit_stats(obs: Observations, geo: dict[str, Tensor], pur: dict[str, tuple[Tensor, list]]) -> dict[str, Tensor]:
    """Every unit's firing rate, mean and max non-zero code, coherence (max ``|cos|`` with another
    unit, first geometry of ``geo``) and mean label purity over the columns of ``pur`` (:func:`purity`;
    nan without labels)."""
    fires = obs.codes != 0
    n_fire = fires.sum(0)
    return {"firing_rate": n_fire.float() / max(1, len(obs.codes)),
            "mean": obs.codes.abs().sum(0) / n_fire.clamp_min(1), "max": obs.codes.abs().max(0).values,
            "coherence": max_abs_cos(next(iter(geo.values()))),
            "purity": (torch.stack([s for s, _ in pur.values()]).mean(0) if pur
                       else torch.full((obs.codes.shape[1],), float("nan")))}


def choose_units(stats: dict[str, Tensor], n_cards: int, extra: Iterable[int] = ()) -> list[int]:
    """The ``n_cards`` most frequently firing live units, then ``extra`` (in order, no repeats)."""
    rate = stats["firing_rate"]
    N = len(rate)
    bad = [u for u in extra if not 0 <= u < N]
    if bad:
        raise ValueError(f"units {bad} are out of range: the SAE has {N} units (0..{N - 1})")
    top = [u for u in torch.argsort(rate, descending=True, stable=True)[:n_cards].tolist() if rate[u] > 0]
    return top + [u for u in dict.fromkeys(extra) if u not in top]


# --------------------------------------------------------------------------- one unit
def top_contexts(obs: Observations, unit: int, k: int) -> tuple[Tensor, Tensor]:
    """``(observations, codes)`` of the unit's top-``k`` firing tokens, highest first (the argmax)."""
    vals, idx = torch.topk(obs.codes[:, unit], min(k, len(obs.codes)))
    return idx[vals != 0], vals[vals != 0]


def window(obs: Observations, table: Tensor, t: int, unit: int, cfg: CardConfig) -> tuple[list[int], list[float], int]:
    """Token ids, the unit's code at each (0 where not observed) and the index of token ``t``
    within ``cfg.left`` / ``cfg.right`` tokens around it."""
    r, p = int(obs.row_of[t]), int(obs.pos_of[t])
    lo, hi = max(0, p - cfg.left), min(len(obs.rows[r]), p + cfg.right + 1)
    where = table[r, lo:hi]
    acts = torch.where(where >= 0, obs.codes[where.clamp_min(0), unit], torch.zeros(()))
    return obs.rows[r][lo:hi], acts.tolist(), p - lo


def bound_check(codes: Tensor, Dn: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample: ``(K, mu, ok)``: ``K`` active units, ``mu`` the max ``|cos|`` among them
    (rows ``Dn``), ``ok = mu < 1/(2K - 1)`` (every K-sparse code unique: Donoho & Elad 2003)."""
    k = (codes != 0).sum(1)
    mu = per_sample_coherence(codes, Dn, device="cpu")
    return k, mu, mu < uniqueness_bound(k)


def nearest(Dn: Tensor, unit: int, n: int) -> list[tuple[int, float]]:
    """The ``n`` units closest to ``unit`` by ``|cos|`` of the rows ``Dn``."""
    c = (Dn @ Dn[unit]).abs()
    c[unit] = -1
    vals, idx = torch.topk(c, min(n, len(c) - 1))
    return list(zip(idx.tolist(), vals.tolist()))


def cofiring(codes: Tensor, Dn: Tensor, unit: int, n: int) -> list[dict[str, Any]]:
    """The ``n`` units most often active with ``unit``: how often, their ``|cos|`` (rows ``Dn``),
    the mean L0 ``K`` of the tokens where both fire, and whether the pair meets the bound at that
    ``K`` (``|cos| < 1/(2K - 1)``: a pair above it breaks uniqueness for every such code)."""
    on = codes[codes[:, unit] != 0] != 0
    counts = on.sum(0)
    counts[unit] = 0
    vals, idx = torch.topk(counts, min(n, len(counts) - 1))
    out = []
    for j, c in zip(idx.tolist(), vals.tolist()):
        if c == 0:
            break
        k = float(on[on[:, j]].sum(1).float().mean())
        cos = float((Dn[unit] @ Dn[j]).abs())
        out.append({"unit": j, "count": int(c), "cos": cos, "k": k, "ok": bool(cos < uniqueness_bound(k))})
    return out


def logit_effects(sae: Any, model: Any, unit: int, n: int) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The ``n`` most promoted and most suppressed tokens: ``W_dec[unit] @ W_U`` (the decoder row
    through the unembedding, the final norm's scale left out), largest and smallest first."""
    w = sae.W_dec[unit].detach().to(model.W_U.device, model.W_U.dtype) @ model.W_U
    up, down = torch.topk(w, n), torch.topk(-w, n)
    return (list(zip(up.indices.tolist(), up.values.tolist())),
            list(zip(down.indices.tolist(), (-down.values).tolist())))


def histogram(values: Tensor, bins: int) -> tuple[list[int], float, float]:
    """``(counts, lo, hi)`` of the non-zero codes ``values`` in ``bins`` equal bins."""
    v = values[values != 0].float()
    if v.numel() == 0:
        return [0] * bins, 0.0, 0.0
    lo, hi = float(v.min()), float(v.max())
    hi = hi if hi > lo else lo + 1e-6
    return torch.histc(v, bins, lo, hi).long().tolist(), lo, hi


@torch.no_grad()
def steer_preview(model: Any, sae: Any, hook: str, unit: int, value: float | None,
                  prompts: Sequence[Sequence[int]]) -> list[int]:
    """The top next token after each prompt (token ids), clamping ``unit`` to ``value`` at each
    prompt's last token (through the SAE, its error term kept: ``steering.clamp_atoms``); the clean
    run with ``value`` None. One batch: right padding keeps each prompt's last token its own."""
    from sae_atoms.models import next_token_logits
    from sae_atoms.steering import clamp_atoms, fwd_hooks

    ids = [list(p) for p in prompts]

    def hooks(rows: list[int]) -> list:
        return fwd_hooks(model, clamp_atoms(sae, unit, value, positions=[len(ids[r]) - 1 for r in rows], hook_name=hook))

    return next_token_logits(model, ids, hooks if value is not None else None, batch_size=len(ids)).argmax(-1).tolist()


def steer_prompts(model: Any, obs: Observations, cfg: CardConfig) -> list[list[int]]:
    """Token ids of ``cfg.steer_prompts`` (BOS as the model prepends it); without a tokenizer, the
    first observed rows cut to 8 tokens."""
    if getattr(model, "tokenizer", None) is None or not cfg.steer_prompts:
        return [r[:8] for r in obs.rows[:len(cfg.steer_prompts) or 3]]
    from sae_atoms.models import tokenize_prompts

    return tokenize_prompts(model, list(cfg.steer_prompts))[0]


def token_text(model: Any) -> Callable[[int], str]:
    """A token id's text (``<id>`` for a model without a tokenizer)."""
    tok = getattr(model, "tokenizer", None)
    return (lambda t: tok.decode([t])) if tok is not None else (lambda t: f"<{t}>")
