"""Atom cards from observations: one card's data (:func:`card`), the whole site
(:func:`write_cards`: ``index.html``, ``unit_<j>.html``, ``cards.json``) and one card inline in a
notebook (:func:`show`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_atoms.cards import compute as C
from sae_atoms.cards import render as R


@dataclass
class Site:
    """What every card of one SAE shares: the model and SAE, the observations and their index
    table, the unit rows in each geometry, every unit's stats and the steering prompts."""

    model: Any
    sae: Any
    hook: str
    obs: C.Observations
    cfg: C.CardConfig
    name: str = "SAE"
    metric: Any = None  # the AIP of the cards (an AIPMetric); None: the SAE's own, if it carries one

    def __post_init__(self) -> None:
        self.table = self.obs.index_table()
        self.geo = C.geometries(self.sae, self.metric)
        self.purity = C.purity(self.obs.codes, self.obs.labels)
        self.stats = C.unit_stats(self.obs, self.geo, self.purity)
        self.text = C.token_text(self.model)
        self.prompts = C.steer_prompts(self.model, self.obs, self.cfg)
        self.clean = C.steer_preview(self.model, self.sae, self.hook, 0, None, self.prompts) if self.prompts else []

    @property
    def geometry(self) -> str:
        """The geometry of the bound checks: the AIP when the SAE carries a metric, else raw."""
        return next(iter(self.geo))


def _contexts(site: Site, unit: int) -> list[dict[str, Any]]:
    obs, Dn = site.obs, site.geo[site.geometry]
    idx, vals = C.top_contexts(obs, unit, site.cfg.top_k)
    k, mu, ok = C.bound_check(obs.codes[idx], Dn) if len(idx) else (torch.zeros(0),) * 3
    out = []
    for n, t in enumerate(idx.tolist()):
        ids, acts, at = C.window(obs, site.table, t, unit, site.cfg)
        out.append({"tokens": [site.text(i) for i in ids], "acts": acts, "at": at, "value": float(vals[n]),
                    "k": int(k[n]), "mu": float(mu[n]), "ok": bool(ok[n])})
    return out


def _steering(site: Site, unit: int, values: torch.Tensor) -> dict[str, Any]:
    v = values[values != 0].abs()
    if v.numel() == 0 or not site.prompts:
        return {"value": None, "pairs": []}
    value = float(torch.quantile(v.float(), site.cfg.steer_quantile))
    after = C.steer_preview(site.model, site.sae, site.hook, unit, value, site.prompts)
    return {"value": value, "pairs": [(site.text(a), site.text(b)) for a, b in zip(site.clean, after)]}


def card(site: Site, unit: int) -> dict[str, Any]:
    """Everything on unit ``unit``'s card, as plain data (rendered by ``render.card_html``)."""
    values, n = site.obs.codes[:, unit], site.cfg.n_list
    up, down = C.logit_effects(site.sae, site.model, unit, n)
    counts, lo, hi = C.histogram(values, site.cfg.bins)
    return {
        "unit": unit, "name": site.name, "geometry": site.geometry, "source": site.obs.source,
        **{k: _number(v[unit]) for k, v in site.stats.items()}, "n_fires": int((values != 0).sum()),
        "hist": {"counts": counts, "lo": lo, "hi": hi},
        "contexts": _contexts(site, unit),
        "promoted": [(site.text(t), w) for t, w in up], "suppressed": [(site.text(t), w) for t, w in down],
        "labels": {c: (float(s[unit]), lab[unit]) for c, (s, lab) in site.purity.items()},
        "nearest": {g: C.nearest(Dn, unit, n) for g, Dn in site.geo.items()},
        "cofiring": C.cofiring(site.obs.codes, site.geo[site.geometry], unit, n),
        "steering": _steering(site, unit, values),
    }


def _number(v: torch.Tensor) -> float | None:
    x = float(v)
    return None if math.isnan(x) else x


def index_rows(site: Site) -> list[dict[str, Any]]:
    """One row per unit: its stats (the index's table)."""
    cols = {k: v.tolist() for k, v in site.stats.items()}
    return [{"unit": j, **{k: (None if isinstance(v[j], float) and math.isnan(v[j]) else v[j]) for k, v in cols.items()}}
            for j in range(len(site.stats["firing_rate"]))]


def write_cards(site: Site, out: str | Path) -> Path:
    """Write the site into ``out`` (replaced as a whole, atomically): ``index.html`` (every unit,
    sortable), one ``unit_<j>.html`` per chosen unit and ``cards.json`` (the same numbers)."""
    from sae_atoms.io import atomic_dir, write_json

    units = C.choose_units(site.stats, site.cfg.n_cards, site.cfg.units)
    cards = [card(site, u) for u in tqdm(units, desc="cards", unit="card", disable=not site.cfg.progress)]
    rows = index_rows(site)
    meta = {"name": site.name, "hook": site.hook, "source": site.obs.source, "n_observed": len(site.obs.codes),
            "geometry": site.geometry, "n_units": len(rows)}
    with atomic_dir(out) as tmp:
        (tmp / "index.html").write_text(R.index_html(meta, rows, set(units)), encoding="utf-8")
        for c in cards:
            (tmp / f"unit_{c['unit']}.html").write_text(R.page(f"{site.name}: unit {c['unit']}", R.card_html(c)),
                                                         encoding="utf-8")
        write_json({"meta": meta, "units": rows, "cards": cards}, tmp / "cards.json")
    return Path(out) / "index.html"


def is_cards_dir(path: str | Path) -> bool:
    """True for a folder :func:`write_cards` wrote (its ``cards.json`` and ``index.html``)."""
    return (Path(path) / "cards.json").is_file() and (Path(path) / "index.html").is_file()


@dataclass
class CardView:
    """One card as HTML; a notebook displays it inline (``_repr_html_``)."""

    data: dict[str, Any]

    def _repr_html_(self) -> str:
        return R.fragment(R.card_html(self.data))


def show(sae: Any, unit: int, model: Any = None, source: Any = "human-en", hook: str | None = None,
         cfg: C.CardConfig = C.CardConfig(progress=False)) -> CardView:
    """Unit ``unit``'s card, displayed inline in a notebook.

    ``source``: a corpus spec (``load_corpus``), an ``ActivationSet`` or ready ``Observations``;
    ``model``: a HookedTransformer (default: ``load_model("smollm2-135m")``); ``hook``: default the
    SAE's ``metadata.hook_name``.
    """
    from sae_atoms.models import load_model

    model = load_model("smollm2-135m", device=C._device_of(sae)) if model is None else model
    return CardView(card(site_for(model, sae, source, hook, cfg), unit))


def site_for(model: Any, sae: Any, source: Any, hook: str | None = None, cfg: C.CardConfig = C.CardConfig(),
             name: str = "SAE", metric: Any = None) -> Site:
    """A :class:`Site` observing ``source`` (corpus spec, ``ActivationSet`` or ``Observations``);
    ``metric``: the AIP of its geometry (default: the SAE's own, if it carries one)."""
    from sae_atoms.models import check_hook_name

    hook = source_hook(sae, source, hook)
    check_hook_name(model, hook)
    if isinstance(source, C.Observations):
        obs = source
    elif isinstance(source, (str, Path)):
        obs = C.observe_corpus(model, sae, hook, str(source), cfg)
    else:
        obs = C.observe_activations(model, sae, source, hook, cfg)
    return Site(model, sae, hook, obs, cfg, name, metric)


def source_hook(sae: Any, source: Any, hook: str | None = None) -> str:
    """The hook the cards read: ``hook``, else the SAE's ``cfg.metadata.hook_name``; an activation
    set must hold it."""
    hook = hook or getattr(getattr(sae.cfg, "metadata", None), "hook_name", None)
    if not hook:
        raise ValueError("the SAE names no hook (cfg.metadata.hook_name); pass hook= (--hook)")
    names = getattr(source, "hook_names", None)
    if names is not None and hook not in names:
        raise ValueError(f"the activation set holds {names}, not the SAE's hook {hook!r}; extract that hook "
                         "or pass --hook")
    return hook
