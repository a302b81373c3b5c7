"""fit-metric: the generic corpus, packing, BOS exclusion, streaming, resume, MLP site, 1 vs 2 processes."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae_atoms.aip import AIPMetric, AIPMoments
from sae_atoms.corpus import DEFAULT_CORPUS, MomentStream, load_corpus, packed_rows
from sae_atoms.experiments.fit_metric import MOMENTS_FILE, parse_hooks, run_fit_metric

REPO = Path(__file__).resolve().parents[2]
HOOKS = ["blocks.1.hook_resid_post", "blocks.1.mlp.hook_post"]
DIST_HOOKS = ["blocks.0.hook_resid_post", "blocks.0.mlp.hook_post"]  # one block: the processes' startup dominates


def test_default_corpus_is_offline_prose_with_provenance():
    c = load_corpus()
    docs = list(itertools.islice(c.documents(), 50))
    assert c.name == DEFAULT_CORPUS and len(docs) == 50
    assert sum(len(d) for d in docs) > 20_000 and all(isinstance(d, str) and d.strip() for d in docs)
    p = c.provenance
    assert p["package"] == "markov_draftjs" and p["version"] and len(p["sha256"]) == 64


def test_local_text_and_jsonl_corpora(tmp_path):
    (tmp_path / "a.txt").write_text("first doc line 1\nline 2\n\n\nsecond doc\n")
    assert list(load_corpus(tmp_path / "a.txt").documents()) == ["first doc line 1\nline 2", "second doc"]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["x y", "", "z"]))
    assert list(load_corpus(str(tmp_path / "b.jsonl")).documents()) == ["x y", "z"]


def test_packed_rows_start_with_bos_and_separate_documents():
    tok = lambda s: [ord(ch) for ch in s]  # noqa: E731
    rows = list(packed_rows(["abcde", "fg", "hijklmn"], tok, context_size=4, bos_id=0))
    # stream: 0 a b c d e 0 f g 0 h i j k l m n  ->  rows of [0] + 3 stream tokens; the tail is dropped
    flat = [t for r in rows for t in r[1:]]
    assert all(len(r) == 4 and r[0] == 0 for r in rows)
    assert flat == [0, 97, 98, 99, 100, 101, 0, 102, 103, 0, 104, 105, 106, 107, 108][:len(flat)]
    assert len(rows) == 17 // 3


def test_parse_hooks_expands_layer_templates():
    assert parse_hooks(["blocks.{layer}.mlp.hook_post", "blocks.0.mlp.hook_post"], 2) == [
        "blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]


def test_moments_state_dict_round_trip():
    m = AIPMoments().update(torch.randn(50, 7, dtype=torch.float64))
    r = AIPMoments.from_state_dict(m.state_dict())
    assert (r.n, r.d) == (50, 7) and torch.equal(r.s1, m.s1) and torch.equal(r.s2, m.s2)
    assert r.s1.data_ptr() != m.s1.data_ptr()


def _tiny_stream(tiny_model, **kw):
    docs = lambda: iter(["the quick brown fox jumps", "over the lazy dog", "again and again"] * 20)  # noqa: E731
    return MomentStream(tiny_model, ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"], docs, n_tokens=8 * 8,
                        context_size=8, batch_size=2, tokenize=lambda s: [1 + ord(c) % 48 for c in s], bos_id=0, **kw)


def test_a_checkpoint_resumes_to_the_sums_of_an_uninterrupted_run(tiny_model, tmp_path):
    full = _tiny_stream(tiny_model)
    assert full.run()
    first = _tiny_stream(tiny_model)
    assert not first.run(max_batches=2, checkpoint=tmp_path / "ck.safetensors")
    second = _tiny_stream(tiny_model)
    assert second.load_checkpoint(tmp_path / "ck.safetensors") and second.rows_done == 4
    assert second.run()
    for h in full.hooks:
        a, b = full.moments[h], second.moments[h]
        assert a.n == b.n > 0 and torch.equal(a.s1, b.s1) and torch.equal(a.s2, b.s2)


class _Planted:
    """Unpickling this runs ``open(marker, "w")``: what a planted checkpoint could do (os.system ...)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["rank0-of-1.safetensors", "rank0-of-1.pt"])
def test_a_planted_pickle_checkpoint_runs_no_code(tiny_model, tmp_path, name):
    from sae_atoms.experiments.fit_metric import checkpoint_path

    marker = tmp_path / "pwned"
    ck = tmp_path / ".fit_checkpoint" / name
    ck.parent.mkdir()
    torch.save({"x": _Planted(str(marker))}, ck)
    if name.endswith(".pt"):  # the old pickled name: never loaded, named in a warning
        with pytest.warns(UserWarning, match="not loaded"):
            path = checkpoint_path(tmp_path, 0, 1)
        assert not _tiny_stream(tiny_model).load_checkpoint(path)
    else:
        with pytest.raises(ValueError, match=f"{ck}.*delete it"):
            _tiny_stream(tiny_model).load_checkpoint(checkpoint_path(tmp_path, 0, 1))
    assert not marker.exists()


def test_a_garbled_checkpoint_names_the_file_and_what_to_do(tiny_model, tmp_path):
    ck = tmp_path / "ck.safetensors"
    s = _tiny_stream(tiny_model)
    s.run(max_batches=1, checkpoint=ck)
    ck.write_bytes(ck.read_bytes()[:40])  # truncated
    with pytest.raises(ValueError, match=r"ck.safetensors is not a fit-metric checkpoint.*delete it"):
        _tiny_stream(tiny_model).load_checkpoint(ck)


@pytest.mark.real_model
def test_bos_positions_are_excluded_and_sums_match_a_direct_computation(real_model):
    s = MomentStream(real_model, ["blocks.0.hook_resid_post"], load_corpus().documents, n_tokens=3 * 64,
                     context_size=64, batch_size=2)
    assert s.run()
    rows = list(itertools.islice(packed_rows(load_corpus().documents(), s.tokenize, 64, s.bos_id), 3))
    toks = torch.tensor(rows)
    n_bos = int((toks == s.bos_id).sum())
    assert n_bos >= 3 and s.n_bos_excluded == n_bos and s.rows_done == 3 and s.n_positions == 3 * 64
    m = s.moments["blocks.0.hook_resid_post"]
    assert m.n == 3 * 64 - n_bos
    _, cache = real_model.run_with_cache(toks, names_filter="blocks.0.hook_resid_post", stop_at_layer=1)
    x = cache["blocks.0.hook_resid_post"][toks != s.bos_id].double()
    torch.testing.assert_close(m.s1, x.sum(0), rtol=1e-5, atol=1e-4)
    kept = MomentStream(real_model, ["blocks.0.hook_resid_post"], load_corpus().documents, n_tokens=3 * 64,
                        context_size=64, batch_size=2, exclude_bos=False)
    kept.run()
    assert kept.moments["blocks.0.hook_resid_post"].n == 3 * 64 and kept.n_bos_excluded == 0


@pytest.mark.real_model
def test_streaming_reads_only_what_it_needs(real_model):
    read = []

    def endless():
        for i in itertools.count():
            read.append(i)
            yield f"Document number {i} says something about the weather and the sea. " * 3

    s = MomentStream(real_model, ["blocks.0.hook_resid_post"], endless, n_tokens=128, context_size=32, batch_size=2)
    assert s.run() and s.rows_done == 4
    assert len(read) < 10  # an infinite corpus: memory and reading stay bounded by the rows asked for


@pytest.mark.real_model
def test_resume_gives_the_moments_of_an_uninterrupted_run(real_model, tmp_path):
    kw = dict(n_tokens=6 * 32, context_size=32, batch_size=2)
    full = MomentStream(real_model, HOOKS, load_corpus().documents, **kw)
    full.run()
    first = MomentStream(real_model, HOOKS, load_corpus().documents, **kw)
    assert not first.run(max_batches=1, checkpoint=tmp_path / "ck.pt")  # "interrupted" after one batch
    second = MomentStream(real_model, HOOKS, load_corpus().documents, **kw)
    assert second.load_checkpoint(tmp_path / "ck.pt") and second.rows_done == 2
    assert second.run()
    for h in HOOKS:
        a, b = full.moments[h], second.moments[h]
        assert a.n == b.n and torch.equal(a.s1, b.s1) and torch.equal(a.s2, b.s2)
    other = MomentStream(real_model, HOOKS, load_corpus().documents, n_tokens=64, context_size=16, batch_size=2)
    with pytest.raises(ValueError, match="other settings"):
        other.load_checkpoint(tmp_path / "ck.pt")


@pytest.mark.real_model
def test_fit_metric_saves_loadable_metrics_at_both_sites(real_model, tmp_path):
    res = run_fit_metric(real_model, HOOKS, tmp_path, n_tokens=4 * 64, context_size=64, batch_size=2,
                         progress=False, shrinkage=0.01)
    resid, mlp = (AIPMetric.load(tmp_path / h) for h in HOOKS)
    assert resid.d == real_model.cfg.d_model == 576 and mlp.d == real_model.cfg.d_mlp == 1536
    md = AIPMetric.read_metadata(tmp_path / HOOKS[1])["metadata"]
    assert md["corpus"]["package"] == "markov_draftjs" and md["n_tokens_run"] == 256
    assert md["n_tokens_in_moments"] == 256 - md["n_bos_positions_excluded"] == mlp.n_samples
    assert res["finished"] and not (tmp_path / ".fit_checkpoint" / "rank0-of-1.safetensors").exists()
    x = torch.randn(5, 1536)
    assert mlp.whiten(x).shape == (5, 1536)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fit_cmd(out: Path, extra: list[str]) -> list[str]:
    return [*extra, "-m", "sae_atoms.cli", "fit-metric", "--hooks", *DIST_HOOKS, "--tokens", "256", "--context-size", "32",
            "--batch-size", "2", "--out", str(out), "--save-moments", "--no-progress", "--shrinkage", "0.01"]


@pytest.mark.real_model
def test_two_processes_equal_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    py = [sys.executable]
    one = subprocess.run(py + _fit_cmd(tmp_path / "one", []), env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(py + _fit_cmd(tmp_path / "two", ["-m", "torch.distributed.run", "--nproc-per-node", "2",
                                                           "--master-port", str(_free_port())]), env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    for h in DIST_HOOKS:
        a = torch.load(tmp_path / "one" / h / MOMENTS_FILE)
        b = torch.load(tmp_path / "two" / h / MOMENTS_FILE)
        assert int(a["n"]) == int(b["n"]) > 0
        for k in ("s1", "s2"):
            rel = float((a[k] - b[k]).norm() / a[k].norm())
            assert rel < 1e-9, (h, k, rel)
        md = AIPMetric.read_metadata(tmp_path / "two" / h)["metadata"]
        assert md["world_size"] == 2 and md["n_tokens_run"] == 256


@pytest.mark.parametrize("argv,needle", [
    (["--tokens", "-100"], "--tokens"),
    (["--context-size", "0"], "--context-size"),
    (["--context-size", "1"], "--context-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--alpha", "nan"], "alpha"),
    (["--shrinkage", "lots"], "--shrinkage"),
])
def test_cli_bad_sizes_fail_in_one_line_before_the_model_loads(argv, needle, tmp_path, monkeypatch, capsys):
    import sae_atoms.models
    from sae_atoms.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(sae_atoms.models, "load_model", no_model)
    args = {"--tokens": "1000", **dict(zip(argv[::2], argv[1::2]))}
    rc = main(["fit-metric", "--hooks", "blocks.0.hook_resid_post", "--out", str(tmp_path / "o"),
               *(a for kv in args.items() for a in kv)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert err.startswith("sae-atoms fit-metric: error:")


def test_run_fit_metric_checks_sizes_before_streaming(tmp_path):
    with pytest.raises(ValueError, match="n_tokens=-100 must be an integer >= 1"):
        run_fit_metric(None, HOOKS, tmp_path / "o", -100)
    with pytest.raises(ValueError, match="context_size=0 must be an integer >= 2"):
        run_fit_metric(None, HOOKS, tmp_path / "o", 1000, context_size=0)
