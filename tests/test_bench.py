"""``sae-atoms bench``: every ratio is our time against a baseline's time, both measured here.

A spy on bench's timers (``timing.best_time``, ``timing.median_time``) records every time a case measures in
this process; a case passes when its ``seconds`` and ``baseline_seconds`` are two of those
times, taken of different functions, and its ``ratio`` is :func:`bench.ratio_of` of them.
"""

from __future__ import annotations

import pytest

from sae_atoms import bench
from sae_atoms.bench import timing

# the quick cases, with the marks their cost needs and what else each must report
CASES = {
    "aip_fit": ((), {"better": "lower", "target": 1.5, "n": 20_000, "d": 256}),
    "match_l0": ((), {"better": "lower", "target": 0.5, "n": 512, "d": 64, "d_sae": 512, "same_factor": True}),
    "coherence": ((pytest.mark.slow,), {"better": "lower", "target": 1.3, "N": 4096, "d": 576}),
    "tsae_aip_step": ((pytest.mark.slow,), {"better": "lower", "target": 1.05, "d_in": 64, "d_sae": 256}),
    "runner_step": ((pytest.mark.slow,), {"better": "lower", "target": 1.05, "d_in": 64, "d_sae": 256,
                                           "trainer": "MultiSAETrainer"}),
    "stability_step": ((pytest.mark.slow,), {"better": "lower", "target": 1.2, "d_in": 64, "d_sae": 64}),
    "under_load": ((pytest.mark.slow,), {"better": "lower", "target": 2.2, "competitors": 2}),
    "extract_subject": ((pytest.mark.real_model,), {"better": "higher", "target": 1.3}),
    "aip_stream": ((pytest.mark.real_model,), {"better": "higher", "target": 0.9, "tokens": 256}),
    "steer_batched": ((pytest.mark.real_model,), {"better": "higher", "target": 3.0, "jobs": 12, "rows": 72}),
    "frontier_together": ((pytest.mark.slow,), {"better": "higher", "target": 3.0, "saes": 4, "d_in": 64, "steps": 100}),
    "stacked_step": ((pytest.mark.slow,), {"better": "higher", "target": 3.0, "saes": 4, "d_in": 64, "batch": 256}),
    "corpus_read": ((pytest.mark.real_model,), {"better": "lower", "target": 0.25}),
    "model_forward": ((pytest.mark.real_model,), {"better": "higher", "target": 1.5, "rows": 8, "tokens": 1}),
}


@pytest.fixture
def timings(monkeypatch) -> list[tuple[object, float]]:
    """``(timed function, seconds)`` of every measurement bench's timers make during the test."""
    seen: list[tuple[object, float]] = []
    for name in ("best_time", "median_time"):
        timer = getattr(timing, name)

        def spy(fn, *args, _timer=timer, **kwargs):
            t = _timer(fn, *args, **kwargs)
            seen.append((fn, t))
            return t

        monkeypatch.setattr(timing, name, spy)
    return seen


def test_every_case_is_tested():
    assert set(CASES) == set(bench.CASES)


@pytest.mark.parametrize("case", [pytest.param(c, marks=m) for c, (m, _) in CASES.items()])
def test_each_ratio_is_measured_against_an_in_process_baseline(case, timings):
    res = bench.CASES[case](quick=True)
    ours, base = res["seconds"], res["baseline_seconds"]
    assert ours > 0 and base > 0
    want = ours / base if res["better"] == "lower" else base / ours
    assert res["ratio"] == pytest.approx(want, rel=1e-12)
    timed_ours = {id(fn) for fn, t in timings if t == ours}
    timed_base = {id(fn) for fn, t in timings if t == base}
    assert timed_ours and timed_base, "both times come from bench's timers in this process"
    assert not timed_ours & timed_base, "the baseline is a different function from ours"
    expected = CASES[case][1]
    assert {k: res[k] for k in expected} == expected
    if case == "tsae_aip_step":  # the metric's one-off cost is reported beside the step ratio
        assert res["metric_fit_s"] > 0 and res["metric_fit_in_steps"] == pytest.approx(res["metric_fit_s"] / base)
    if case == "stability_step":  # both geometries timed; the ratio is the larger
        assert res["ratio"] == pytest.approx(max(res["ratio_sae"], res["ratio_aip"]))
        assert res["ratio"] == pytest.approx(res[f"ratio_{res['geometry']}"])


def test_ratio_direction_follows_better():
    assert bench.ratio_of(3.0, 2.0, "lower") == 1.5  # time ratio: ours / baseline
    assert bench.ratio_of(3.0, 2.0, "higher") == 2.0 / 3.0  # throughput ratio: baseline / ours
    with pytest.raises(ValueError, match="better"):
        bench.ratio_of(1.0, 1.0, "faster")
    res = bench.measured(3.0, 2.0, 1.2, "lower", n=5)
    assert res == {"ratio": 1.5, "target": 1.2, "better": "lower", "seconds": 3.0, "baseline_seconds": 2.0, "n": 5}


def test_run_cases_judges_each_ratio_against_its_target_in_its_direction(monkeypatch, capsys):
    fake = {"slow_lower": lambda quick: bench.measured(3.0, 2.0, 1.2, "lower"),
            "fast_lower": lambda quick: bench.measured(1.0, 2.0, 1.2, "lower"),
            "slow_higher": lambda quick: bench.measured(3.0, 2.0, 0.9, "higher"),
            "fast_higher": lambda quick: bench.measured(2.0, 2.0, 0.9, "higher")}
    monkeypatch.setattr(bench, "CASES", fake)
    res = bench.run_cases(["slow_lower", "fast_lower", "slow_higher", "fast_higher"], quick=True)
    assert {n: r["passed"] for n, r in res.items()} == {"slow_lower": False, "fast_lower": True,
                                                        "slow_higher": False, "fast_higher": True}
    assert "MISSED" in capsys.readouterr().out
    assert list(bench.run_cases(["fast_lower"])) == ["fast_lower"]


@pytest.mark.slow
def test_under_load_also_times_the_idle_thread_count_when_the_load_cuts_threads(monkeypatch, timings):
    """When ``choose_threads`` gives up a thread under load, the loaded step is timed on both counts:
    the ratio stays the cut's, and ``ratio_idle_threads`` is the step on the idle count over the idle step."""
    from sae_atoms import threads

    picks = iter([2, 1])  # the idle phase's count, then the loaded phase's (quick: one round)
    monkeypatch.setattr(threads, "choose_threads", lambda: next(picks))
    counts: list[int] = []
    real_set = threads.torch.set_num_threads
    monkeypatch.setattr(threads.torch, "set_num_threads", lambda n: (counts.append(n), real_set(n))[1])
    res = bench.CASES["under_load"](quick=True)
    assert (res["idle_threads"], res["loaded_threads"]) == (2, 1)
    assert counts[:3] == [2, 1, 2], "idle on 2, loaded on the cut's 1 first (even round), then on the idle 2"
    t_idle, t_cut, t_kept = (t for _, t in timings)  # the three median times of the round, in their order
    assert (res["baseline_seconds"], res["seconds"]) == (t_idle, t_cut)
    assert res["ratio_idle_threads"] == pytest.approx(t_kept / t_idle)
    assert res["rounds_idle_threads"] == [round(t_kept / t_idle, 3)]
