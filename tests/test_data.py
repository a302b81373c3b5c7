from collections import Counter

import pytest

from sae_atoms.data import FACT_RELATIONS, LABEL_COLUMNS, column_list, fact_prompts, reasoning_prompts


@pytest.fixture(scope="module")
def all_facts():
    return fact_prompts()


def test_at_least_20000_prompts_all_relations(all_facts):
    assert len(all_facts) >= 20_000
    assert set(all_facts["relation"]) == set(FACT_RELATIONS)


def test_subject_spans_are_exact(all_facts):
    for r in all_facts.select(range(0, len(all_facts), 97)):
        assert r["prompt"][r["subject_start"]:r["subject_end"]] == r["subject"]


def test_split_is_by_subject(all_facts):
    by_subject = {}
    for s, sp in zip(all_facts["subject"], all_facts["split"]):
        by_subject.setdefault(s, set()).add(sp)
    assert all(len(v) == 1 for v in by_subject.values())
    share = Counter(next(iter(v)) for v in by_subject.values())["heldout"] / len(by_subject)
    assert 0.15 < share < 0.25


def test_labels_are_ground_truth():
    d = fact_prompts(n_cities=200, relations=["city_country"])
    rows = {r["subject"]: r for r in d}
    assert rows["Tokyo"]["country"] == "Japan" and rows["Tokyo"]["continent"] == "Asia"
    assert rows["Tokyo"]["language"] == "Japanese" and rows["Tokyo"]["target"] == "Japan"
    assert all(c in d.column_names for c in LABEL_COLUMNS)
    assert len(d) == 200 * 4  # every template when n_cities is given


def test_unknown_relation_is_an_error():
    with pytest.raises(ValueError, match="unknown relation"):
        fact_prompts(relations=["city_mayor"])


def test_reasoning_prompts_answers_are_right():
    d = reasoning_prompts(300, seed=1)
    assert len(d) == 300 and set(d["task"]) == {"add", "sub", "compare", "chain"}
    for r in d:
        assert r["prompt"][r["subject_start"]:r["subject_end"]] == r["subject"]
        if r["task"] == "add":
            a, b = r["subject"].split(" plus ")
            assert int(r["target"]) == int(a) + int(b)
        assert r["answer_parity"] == ("even" if int(r["target"]) % 2 == 0 else "odd")


def test_column_list_reads_a_selected_column_in_row_order():
    ds = fact_prompts(n_cities=40, seed=3)
    picked = ds.select([7, 2, 2, 0, len(ds) - 1])  # out of order, with a repeat: an indices mapping
    for col in ("subject", "split", "subject_end"):
        assert column_list(picked, col) == [picked[i][col] for i in range(len(picked))]
