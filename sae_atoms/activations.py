"""Activation sets: a model's activations at chosen hooks and token positions, with labels.

``extract(model, dataset, hooks, position)`` runs a ``HookedTransformer`` over prompt rows
(``sae_atoms.data``) and keeps, per prompt, the activation at

- ``"subject_last"``: the last token of the subject (the paper's setting; the token whose
  character offsets contain the subject's last character),
- ``"last"``: the prompt's last token,
- ``"all"``: every token (one activation row per token, BOS excluded).

Token positions come from the tokenizer's character offsets, so they are exact under BOS
prepending and right padding. Prompts are sorted by length and batched; the forward pass
stops after the deepest hook (``stop_at_layer``) and only the selected positions are copied
out of the hooks, so extraction costs about one truncated forward pass. For one position per
prompt, each prompt is also cut after that position: a causal model's activation at a token does
not depend on the tokens after it, so the tokens after the subject are not run at all (the same
activations up to float rounding, for fewer tokens).

An ``ActivationSet`` is saved as ``activations.safetensors`` (one tensor per hook) +
``rows/`` (a ``datasets.Dataset``, aligned row by row) + ``meta.json``, written to a
temporary folder and renamed into place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import datasets
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from sae_atoms.data import column_list
from sae_atoms.io import atomic_dir, check_output_dir, output_lock, read_json, readable
from sae_atoms.forward import batches, n_batches, stop_layer
from sae_atoms.models import check_hook_name, tokenize_prompts

POSITIONS = ("subject_last", "last", "all")


@dataclass
class ActivationSet:
    """Activations ``acts[hook]`` of shape ``[n, d]`` with ``rows`` (labels) aligned row by row."""

    acts: dict[str, torch.Tensor]
    rows: datasets.Dataset
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for h, a in self.acts.items():
            if a.shape[0] != len(self.rows):
                raise ValueError(f"activations for {h} have {a.shape[0]} rows but there are {len(self.rows)} label rows")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def hook_names(self) -> list[str]:
        return list(self.acts)

    def x(self, hook: str | None = None) -> torch.Tensor:
        """The ``[n, d]`` activations of ``hook`` (may be omitted when there is one hook)."""
        if hook is None:
            if len(self.acts) != 1:
                raise ValueError(f"this set has several hooks {self.hook_names}; name one")
            return next(iter(self.acts.values()))
        if hook not in self.acts:
            raise KeyError(f"no activations for hook {hook!r}; this set has {self.hook_names}")
        return self.acts[hook]

    def labels(self, column: str) -> list:
        if column not in self.rows.column_names:
            raise KeyError(f"no label column {column!r}; columns: {self.rows.column_names}")
        return column_list(self.rows, column)

    def select(self, split: str | None = None, indices: Sequence[int] | torch.Tensor | None = None) -> "ActivationSet":
        """Rows of one ``split`` ("train" / "heldout") and/or the given ``indices``."""
        idx = torch.arange(len(self))
        if split is not None:
            mask = torch.tensor([s == split for s in self.labels("split")], dtype=torch.bool)
            idx = idx[mask]
        if indices is not None:
            idx = idx[torch.as_tensor(indices, dtype=torch.long)]
        if len(idx) == 0:
            raise ValueError(f"selection is empty (split={split!r}); splits present: {sorted(set(self.labels('split')))}")
        il = idx.tolist()
        return ActivationSet({h: a[idx] for h, a in self.acts.items()}, self.rows.select(il), dict(self.meta))

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write to ``path`` atomically (temporary folder, then rename), under an output lock.

        An existing activation set (or empty folder) at ``path`` is replaced; any other non-empty
        folder is refused unless ``overwrite``. A concurrent save to the same path fails at once.
        """
        path = Path(path)
        check_output_dir(path, is_activation_set, overwrite)
        with output_lock(path), atomic_dir(path) as tmp:
            save_file({h: a.contiguous() for h, a in self.acts.items()}, str(tmp / "activations.safetensors"))
            self.rows.save_to_disk(str(tmp / "rows"))
            (tmp / "meta.json").write_text(json.dumps(self.meta | {"n": len(self), "hooks": self.hook_names}, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ActivationSet":
        path = Path(path)
        if not (path / "activations.safetensors").exists() or not (path / "meta.json").exists():
            raise FileNotFoundError(f"{path} is not an activation set (expected activations.safetensors, rows/, meta.json); "
                                    "write one with `sae-atoms extract --out DIR`.")
        fix = "write the activation set again with `sae-atoms extract --out DIR` (or ActivationSet.save)."
        with readable(path / "activations.safetensors", fix):
            acts = load_file(str(path / "activations.safetensors"))
        meta = read_json(path / "meta.json", fix)
        order = meta.get("hooks", list(acts))
        return cls({h: acts[h] for h in order}, datasets.load_from_disk(str(path / "rows")), meta)


def as_matrix(x: Any, hook: str | None = None, *, what: str = "activations", min_rows: int = 1) -> torch.Tensor:
    """``x`` as a floating ``[n, d]`` tensor: an ``ActivationSet``'s activations at ``hook`` (which
    may be omitted when the set has one hook), or a tensor / array of shape ``[..., d]``.

    Integer inputs become float32; floating inputs keep their dtype. ``min_rows``: the fewest
    rows the caller can work with.
    """
    if not isinstance(x, torch.Tensor) and callable(getattr(x, "x", None)):
        x = x.x(hook)
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as e:  # noqa: BLE001 - reported with the type
            raise TypeError(f"{what} must be a tensor of activations [n, d]; got {type(x).__name__}.") from e
    if x.dim() == 0:
        raise ValueError(f"{what} is a scalar; pass activations with shape [n, d] (or [..., d]).")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{what} has dtype {x.dtype}; pass floating-point activations.")
    x = x.reshape(-1, x.shape[-1])
    if x.shape[0] < min_rows:
        raise ValueError(f"{what} needs at least {min_rows} rows of shape [n, d]; got {x.shape[0]}.")
    return x if x.is_floating_point() else x.float()


def is_activation_set(path: str | Path) -> bool:
    """True if ``path`` holds an activation set this package wrote (meta.json + activations.safetensors)."""
    path = Path(path)
    return (path / "activations.safetensors").is_file() and (path / "meta.json").is_file()


def subject_token_positions(model, prompts: Sequence[str], starts: Sequence[int], ends: Sequence[int]) -> list[int]:
    """Index (in the model's token sequence, BOS included) of each subject's last token.

    The last token whose character span overlaps ``[start, end)``; an error names the prompt
    when the subject is not in it.
    """
    ids, offs = tokenize_prompts(model, list(prompts))
    out = []
    for p, s, e, off in zip(prompts, starts, ends, offs):
        if not (0 <= s < e <= len(p)):
            raise ValueError(f"subject span [{s}, {e}) is outside the prompt {p!r}")
        hits = [i for i, (a, b) in enumerate(off) if b > a and a < e and b > s]
        if not hits:
            raise ValueError(f"subject {p[s:e]!r} was not found among the tokens of prompt {p!r}")
        out.append(hits[-1])
    return out


def _tokens_and_positions(model, dataset, position: str) -> tuple[datasets.Dataset, list[list[int]], list[int]]:
    """The dataset (as a ``Dataset``), its prompts' token ids and the position to read in each."""
    if not isinstance(dataset, datasets.Dataset):
        dataset = datasets.Dataset.from_list(list(dataset))
    if len(dataset) == 0:
        raise ValueError("the prompt dataset is empty: nothing to extract")
    if "prompt" not in dataset.column_names:
        raise ValueError(f"the dataset needs a 'prompt' column; it has {dataset.column_names}")
    prompts = column_list(dataset, "prompt")
    ids, _ = tokenize_prompts(model, prompts)
    if position == "subject_last":
        for c in ("subject_start", "subject_end"):
            if c not in dataset.column_names:
                raise ValueError(f"position='subject_last' needs column {c!r} (a subject span); use position='last' otherwise")
        pos = subject_token_positions(model, prompts, column_list(dataset, "subject_start"), column_list(dataset, "subject_end"))
    else:
        pos = [len(x) - 1 for x in ids]
    n_ctx = model.cfg.n_ctx
    if max(len(x) for x in ids) > n_ctx:
        raise ValueError(f"a prompt is longer than the model's context ({n_ctx} tokens)")
    return dataset, ids, pos


def _check_finite(model, acts: dict[str, torch.Tensor]) -> None:
    for h, a in acts.items():
        bad = (~torch.isfinite(a)).sum().item()
        if bad:
            raise FloatingPointError(f"{bad} non-finite values in the activations at {h}; check the model's dtype "
                                     f"({next(model.parameters()).dtype}) and weights")


@torch.no_grad()
def extract(model, dataset: datasets.Dataset | Sequence[dict], hook_names: str | Sequence[str],
            position: str = "subject_last", batch_size: int = 32, device=None,
            progress: bool = True, dtype: torch.dtype = torch.float32) -> ActivationSet:
    """Collect activations of ``model`` at ``hook_names`` over ``dataset``'s prompts.

    Returns an ``ActivationSet`` whose rows are the dataset's rows (plus ``token_pos`` and
    ``token_str``), in the dataset's order; for ``position="all"`` one row per token with
    ``prompt_idx``.
    """
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, not {position!r}")
    hooks = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    if not hooks:
        raise ValueError("no hook names given")
    for h in hooks:
        check_hook_name(model, h)
    dataset, ids, pos = _tokens_and_positions(model, dataset, position)
    collected: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    row_index: list[int] = []
    token_pos: list[int] = []
    first = 1 if model.cfg.default_prepend_bos else 0
    run_ids = ids if position == "all" else [x[:p + 1] for x, p in zip(ids, pos)]  # causal: later tokens unused
    for b in tqdm(batches(model, run_ids, batch_size, device=device), total=n_batches(len(ids), batch_size),
                  desc=f"extract {position}", disable=not progress, unit="batch"):
        if position == "all":
            sel_b = torch.cat([torch.full((len(ids[i]) - first,), j) for j, i in enumerate(b.rows)])
            sel_p = torch.cat([torch.arange(first, len(ids[i])) for i in b.rows])
            row_index += [i for i in b.rows for _ in range(first, len(ids[i]))]
        else:
            sel_b, sel_p = torch.arange(len(b.rows)), torch.tensor([pos[i] for i in b.rows])
            row_index += b.rows
        token_pos += sel_p.tolist()
        sel_b, sel_p = sel_b.to(b.tokens.device), sel_p.to(b.tokens.device)

        def grab(act: torch.Tensor, hook) -> None:
            collected[hook.name].append(act[sel_b, sel_p].to("cpu", dtype))

        b.run(model, [(h, grab) for h in hooks], stop_at_layer=stop_layer(hooks), return_type=None)
    acts = {h: torch.cat(v) for h, v in collected.items()}
    # restore dataset order (rows were processed sorted by length)
    if position == "all":
        perm = sorted(range(len(row_index)), key=lambda k: (row_index[k], token_pos[k]))
    else:
        perm = sorted(range(len(row_index)), key=lambda k: row_index[k])
    perm_t = torch.tensor(perm, dtype=torch.long)
    acts = {h: a[perm_t] for h, a in acts.items()}
    row_index = [row_index[k] for k in perm]
    token_pos = [token_pos[k] for k in perm]
    _check_finite(model, acts)
    rows = dataset.select(row_index) if position == "all" else dataset
    tok_strs = [model.tokenizer.decode([ids[r][p]]) for r, p in zip(row_index, token_pos)]
    rows = rows.add_column("token_pos", token_pos).add_column("token_str", tok_strs)
    if position == "all":
        rows = rows.add_column("prompt_idx", row_index)
    meta = {"model": model.cfg.model_name, "position": position, "d_model": model.cfg.d_model,
            "dtype": str(dtype).replace("torch.", ""), "prepend_bos": bool(model.cfg.default_prepend_bos)}
    return ActivationSet(acts, rows, meta)
