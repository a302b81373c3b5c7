import contextlib
import subprocess
import sys

import datasets
import pytest
import torch

from sae_atoms.activations import ActivationSet, extract, subject_token_positions
from tests.conftest import REAL_HOOK


@pytest.mark.real_model
def test_subject_position_decodes_to_subject_end(real_model, real_acts):
    assert len(real_acts) > 400
    for r in real_acts.rows.select(range(0, len(real_acts), 13)):
        tok = r["token_str"].strip()
        assert tok and r["subject"].endswith(tok), (r["subject"], tok)
        # the next token is no longer part of the subject
        toks = real_model.to_str_tokens(r["prompt"])
        assert "".join(toks[1:r["token_pos"] + 1]).strip().endswith(r["subject"])


@pytest.mark.real_model
def test_batched_padded_extraction_equals_single_prompt_runs(real_model, fact_data):
    ds = fact_data.select([0, 5, 300, 301])  # different lengths -> padding inside the batch
    acts = extract(real_model, ds, [REAL_HOOK, "blocks.3.hook_resid_post"], batch_size=4, progress=False)
    # extraction cuts each prompt after the subject: these rows have tokens after it (the full prompt runs below)
    assert sum(acts.rows[i]["token_pos"] < real_model.to_tokens(ds[i]["prompt"]).shape[1] - 1 for i in range(len(ds))) >= 2
    for i in range(len(ds)):
        _, cache = real_model.run_with_cache(ds[i]["prompt"], names_filter=lambda n: n in (REAL_HOOK, "blocks.3.hook_resid_post"))
        p = acts.rows[i]["token_pos"]
        for h in acts.hook_names:
            assert torch.allclose(acts.x(h)[i], cache[h][0, p], atol=1e-3)


@pytest.mark.real_model
def test_last_and_all_positions(real_model, fact_data):
    ds = fact_data.select(range(3))
    last = extract(real_model, ds, REAL_HOOK, position="last", progress=False)
    allp = extract(real_model, ds, REAL_HOOK, position="all", progress=False)
    n_tok = sum(len(real_model.to_tokens(p)[0]) - 1 for p in ds["prompt"])
    assert len(allp) == n_tok
    for i in range(3):
        rows = [k for k, j in enumerate(allp.labels("prompt_idx")) if j == i]
        assert torch.allclose(allp.x()[rows[-1]], last.x()[i], atol=1e-4)


@pytest.mark.real_model
def test_save_load_roundtrip_keeps_labels_aligned(real_acts, tmp_path):
    real_acts.save(tmp_path / "acts")
    back = ActivationSet.load(tmp_path / "acts")
    assert torch.equal(back.x(), real_acts.x()) and back.labels("country") == real_acts.labels("country")
    held = back.select(split="heldout")
    assert set(held.labels("split")) == {"heldout"} and 0 < len(held) < len(back)
    assert not set(held.labels("subject")) & set(back.select(split="train").labels("subject"))


@pytest.mark.real_model
def test_bad_inputs(real_model):
    with pytest.raises(KeyError, match="Close names"):
        extract(real_model, [{"prompt": "a b", "subject_start": 0, "subject_end": 1}], "blocks.12.hook_resid_pots")
    with pytest.raises(ValueError, match="empty"):
        extract(real_model, datasets.Dataset.from_dict({"prompt": []}), REAL_HOOK)
    with pytest.raises(ValueError, match="outside the prompt"):
        subject_token_positions(real_model, ["Paris is nice"], [3], [40])
    with pytest.raises(ValueError, match="subject_start"):
        extract(real_model, [{"prompt": "Paris is nice"}], REAL_HOOK)


def test_load_of_a_foreign_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an activation set"):
        ActivationSet.load(tmp_path)


def test_activation_set_rejects_misaligned_rows():
    with pytest.raises(ValueError, match="rows"):
        ActivationSet({"h": torch.zeros(3, 2)}, datasets.Dataset.from_dict({"prompt": ["a", "b"]}))


@pytest.mark.real_model
def test_cli_extract_writes_a_loadable_set(tmp_path):
    out = tmp_path / "acts"
    res = subprocess.run([sys.executable, "-m", "sae_atoms.cli", "extract", "--hook", "blocks.2.hook_resid_post",
                          "--n-cities", "15", "--relations", "city_country", "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    acts = ActivationSet.load(out)
    assert len(acts) == 60 and acts.x().shape == (60, 576)


# --------------------------------------------------------------------------- issue 14: never lose data
def _tiny_set(n: int = 4) -> ActivationSet:
    rows = datasets.Dataset.from_dict({"prompt": [f"p{i}" for i in range(n)], "split": ["train"] * n})
    return ActivationSet({"h": torch.randn(n, 3)}, rows, {"position": "last"})


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sae_atoms.cli", *argv], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_extract_refuses_a_folder_it_did_not_write(tmp_path):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    res = _cli("extract", "--hook", "blocks.0.hook_resid_post", "--out", str(out))
    assert res.returncode == 2 and "--overwrite" in res.stderr and "Traceback" not in res.stderr
    assert (out / "notes.txt").read_text() == "keep me" and (out / "sub").is_dir()
    with pytest.raises(ValueError, match="did not write"):
        _tiny_set().save(out)
    _tiny_set().save(out, overwrite=True)
    assert not (out / "notes.txt").exists()
    _tiny_set().save(out)  # an activation set is ours: replaced without --overwrite


@contextlib.contextmanager
def _held_by_another_process(out):
    """A process that holds the output lock of ``out`` meanwhile (yields it)."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; from sae_atoms.io import output_lock\n"
                               f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_second_writer_fails_fast_naming_the_holder(tmp_path):
    from sae_atoms.io import output_lock

    out = tmp_path / "acts"
    with _held_by_another_process(out) as holder:
        with pytest.raises(ValueError, match=f"pid {holder.pid}"):
            _tiny_set().save(out)
        res = _cli("extract", "--hook", "blocks.0.hook_resid_post", "--out", str(out), "--n-cities", "5")
        assert res.returncode == 2 and f"pid {holder.pid}" in res.stderr and "dequantising" not in res.stderr
    with output_lock(out):  # released when the holder dies; re-entrant in one process
        _tiny_set().save(out)
    assert ActivationSet.load(out).x("h").shape == (4, 3)


@pytest.mark.slow
@pytest.mark.parametrize("argv,needle", [
    (["extract", "--hook", "h", "--out", "{tmp}/o", "--batch-size", "0"], "--batch-size"),
    (["extract", "--hook", "h", "--out", "{tmp}/o", "--n-cities", "-3"], "--n-cities"),
    (["extract", "--hook", "h", "--out", "/proc/forbidden/o"], "cannot be written"),
    (["train", "--architecture", "nosuch", "--d_in", "8"], "tsae_aip"),
    (["--threads", "0", "bench"], "threads"),
    (["extract", "--hook", "blocks.99.hook_resid_post", "--out", "{tmp}/o", "--n-cities", "5"], "blocks.99"),
])
def test_cli_user_errors_are_one_line_exit_2(tmp_path, argv, needle):
    res = _cli(*[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["geometry", "capacity", "reproduce", "steer"])
def test_every_out_is_locked_and_checked_before_compute(tmp_path, command, capsys):
    from sae_atoms.cli import main
    from sae_atoms.io import output_lock

    extra = {"capacity": ["--activations", str(tmp_path / "none")]}.get(command, [])
    assert main([command, "--out", "/proc/forbidden/o", *extra]) == 2
    assert "cannot be written" in capsys.readouterr().err
    out = tmp_path / "o"
    with _held_by_another_process(out) as holder:
        assert main([command, "--out", str(out), *extra]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
    with output_lock(out):
        pass
