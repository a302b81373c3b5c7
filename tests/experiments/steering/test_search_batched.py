"""The steering search in stacked passes (search.together / answer, prompts.run_jobs) gives the
numbers of one measurement at a time.

Tolerance: a stacked pass (rows run from the first position their edit changed, attending to the
clean keys and values before it) changes only the shapes of float32 matrix products, so log-probabilities
agree to 1e-4 (nats; measured differences are far smaller) and the decisions (chosen strengths,
success rates, ranks) are identical; ``max_rows=0`` (one kept batch a pass) equals
``Prompts.run`` bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from sae_atoms import steering as st
from sae_atoms.experiments import steering as steer_exp
from sae_atoms.experiments.steering import prompts, search
from sae_atoms.experiments.steering.methods import AddVector
from tests.conftest import REAL_HOOK

ATOL = 1e-4


def _echo(answers_seen: list) -> search.Steps:
    """A step generator: asks twice, returns what it got."""
    a = yield ["a1", "a2"]
    answers_seen.append(a)
    b = yield ["b1"]
    return a + b


def _short() -> search.Steps:
    x, = yield ["c1"]
    return x


def test_together_merges_rounds_and_routes_each_answer_back(monkeypatch):
    rounds = []

    def answer(run, asks):
        rounds.append(list(asks))
        return [f"ans:{a}" for a in asks]

    monkeypatch.setattr(search, "answer", answer)
    seen: list = []
    out = search.run_steps(None, search.together([_echo(seen), _short(), _echo([])]))
    assert rounds == [["a1", "a2", "c1", "a1", "a2"], ["b1", "b1"]]  # two rounds for three generators
    assert out == [["ans:a1", "ans:a2", "ans:b1"], "ans:c1", ["ans:a1", "ans:a2", "ans:b1"]]
    assert seen == [["ans:a1", "ans:a2"]]


def test_methods_side_by_side_sweep_as_each_alone(monkeypatch):
    """The rounds of several methods are shared; each method's sweep is what it is alone."""
    cfg = steer_exp.steer_config(kl_budget=1.0, grid_growth=2.0, n_bisect=2)
    run = search.Run(None, cfg, ["A"], {"A": 0}, {}, {})
    calls = []

    def answer(run_, asks):  # KL grows with strength / scale; success peaks at 3 * scale
        calls.append(len(asks))
        out = []
        for a in asks:
            s, c = a.m.strength, a.m.info["scale"]
            out.append(torch.tensor([s / (10 * c)]) if a.what == "kl" else
                       {"success_rate": 1 - abs(s - 3 * c) / (10 * c), "mean_rank": 1.0, "logprob_gain": s, "n_prompts": 1,
                        "per_target": {}})
        return out

    monkeypatch.setattr(search, "answer", answer)
    ms = [search.Method(name=f"m{c}", unit="u", grid=(1.0, 2.0), info={"scale": c}) for c in (1.0, 4.0, 0.5)]
    alone, rounds = [], []
    for m in ms:
        calls.clear()
        alone.append(search.val_sweep(run, m))
        rounds.append(len(calls))
    calls.clear()
    assert search.run_steps(run, search.together([search.sweep_steps(run, m) for m in ms])) == alone
    assert len(calls) == max(rounds) < sum(rounds)  # as many rounds as the longest sweep alone
    assert calls[0] == 6  # the first round: the grid's KL of every method at once


def _sets(model, fact_data):
    from sae_atoms.data import reasoning_prompts

    rows = [r for r in fact_data.to_list() if r["relation"] == "city_country" and r["split"] == "heldout"]
    reason = [r for r in reasoning_prompts(40, seed=0).to_list()][:3]
    return [prompts.Prompts(model, rows[:5], 3, REAL_HOOK), prompts.Prompts(model, rows[5:8], 3, REAL_HOOK),
            prompts.Prompts(model, reason, 3, REAL_HOOK)]  # 2 + 1 + 1 kept batches of different lengths


@pytest.mark.real_model
def test_stacked_resume_equals_one_batch_at_a_time(real_model, fact_data):
    sets = _sets(real_model, fact_data)
    g = torch.Generator().manual_seed(0)
    dirs = [torch.randn(real_model.cfg.d_model, generator=g) for _ in range(2)]
    make = lambda v, s: lambda pos, rows: [st.AddDirection(REAL_HOOK, dirs[v], s, positions=pos)]  # noqa: E731
    keep = lambda lp, rows: lp  # noqa: E731
    everywhere = lambda pos, rows: [st.AddDirection(REAL_HOOK, dirs[1], 2.0)]  # noqa: E731  (every position: no prefix)
    jobs = [prompts.Job(P, make(v, s), keep) for P in sets for v, s in ((0, 0.0), (0, 3.0), (1, 3.0))]
    jobs += [prompts.Job(P, everywhere, keep) for P in sets]
    jobs.append(prompts.Job(sets[0], None, keep))  # the clean run
    one = prompts.run_jobs(jobs, max_rows=0)
    for job, lp in zip(jobs, one):  # one kept batch a pass: Prompts.run, bit for bit
        assert torch.equal(lp, job.prompts.run(job.make))
    assert torch.equal(one[-1], sets[0].clean)
    for max_rows in (prompts.RESUME_ROWS, 7):  # all in one pass; passes that split the jobs
        stacked = prompts.run_jobs(jobs, max_rows=max_rows)
        for a, b in zip(one, stacked):
            torch.testing.assert_close(b, a, atol=ATOL, rtol=0)
    # prefix reuse: an edit at the subject starts there, an edit everywhere at 0, no edit at the last position
    rows = prompts._edited_rows(0, sets[0], sets[0].edits(make(0, 3.0)))
    assert [r.first for r in rows] == [sets[0].pos[r.row] for r in rows] and max(r.first for r in rows) > 0
    assert {r.first for r in prompts._edited_rows(0, sets[0], sets[0].edits(everywhere))} == {0}
    assert [r.first for r in prompts._edited_rows(0, sets[0], sets[0].edits(make(0, 0.0)))] == [len(r.x) - 1 for r in rows]
    # a job reduced per row comes back in its prompts' row order
    firsts = prompts.run_jobs([prompts.Job(P, make(0, 2.0), lambda lp, rows: torch.tensor(rows)) for P in sets])
    assert [f.tolist() for f in firsts] == [list(range(len(P))) for P in sets]


@pytest.mark.real_model
def test_answers_in_shared_passes_equal_one_ask_at_a_time(real_model, fact_data, monkeypatch):
    sets = _sets(real_model, fact_data)
    from sae_atoms.models import first_token_ids

    targets = ["France", "Japan"]
    first = dict(zip(targets, first_token_ids(real_model, targets)))
    ev = {"val": {"France": sets[0], "Japan": sets[1]}}
    cfg = steer_exp.steer_config()
    run = search.Run(real_model, cfg, targets, first, ev, {"val": sets[2]})
    g = torch.Generator().manual_seed(1)
    m = AddVector(name="v", unit="u", grid=(1.0,), hook=REAL_HOOK, vectors={v: torch.randn(576, generator=g) * 4 for v in targets})
    asks = [search.Ask(w, m.at(s), "val") for s in (0.5, 2.0) for w in ("kl", "success")]
    shared = search.answer(run, asks)
    real = prompts.run_jobs
    monkeypatch.setattr(search, "run_jobs", lambda jobs, max_rows: real(jobs, 0))
    alone = [search.answer(run, [a])[0] for a in asks]
    for a, x, y in zip(asks, shared, alone):
        if a.what == "kl":
            torch.testing.assert_close(x, y, atol=ATOL, rtol=0)
            continue
        for v in targets:
            px, py = x["per_target"][v], y["per_target"][v]
            assert (px["success_rate"], px["mean_rank"], px["n"]) == (py["success_rate"], py["mean_rank"], py["n"])
            assert px["logprob_gain"] == pytest.approx(py["logprob_gain"], abs=ATOL)
